//! The host's own forward firewall: the one place banger adds rules outside its table.
//!
//! banger's nftables table accepts the VMs' forwarded traffic explicitly, but in nftables an
//! `accept` ends evaluation only within its own base chain: a `drop` policy in another table on
//! the same hook still drops the packet. Docker (and ufw) set exactly that — iptables
//! `-P FORWARD DROP` — so on such a host VMs would reach their gateway and each other but
//! nothing beyond. The documented way through is an accept in that firewall itself: Docker
//! reserves its `DOCKER-USER` chain (jumped to first from `FORWARD`) for rules like these.
//!
//! [`HostForward::open`] therefore, and only when the `FORWARD` chain of the `filter` table
//! drops by default (a `DROP` policy, or a last rule that drops or rejects everything), inserts
//! two rules, each commented `banger:<bridge>`, at the top of `DOCKER-USER` when `FORWARD` jumps
//! to that chain and of `FORWARD` otherwise:
//!
//! ```text
//! -i BRIDGE -m comment --comment banger:BRIDGE -j ACCEPT
//! -o BRIDGE -m conntrack --ctstate RELATED,ESTABLISHED -m comment --comment banger:BRIDGE -j ACCEPT
//! ```
//!
//! It is idempotent (both rules already listed: nothing to do; a partial set is replaced), so
//! re-opening after Docker rebuilt its chains puts back what went missing. [`HostForward::close`] deletes every rule carrying that comment from
//! both chains, whatever its shape, and nothing else. Both go through the `iptables` binary, so
//! they work the same with the nft and the legacy backend; a host without `iptables` has no such
//! firewall to open and both are no-ops. The caller (`banger-net`'s bridge network) opens with
//! its table and closes when the table goes, including in the sweep after a daemon was killed.
//!
//! Native nftables base chains with a drop policy (firewalld, a hand-written `inet filter`) are
//! not touched: `banger doctor` names them with the two rules to add.
//!
//! [`RealHostForward`] runs `iptables` through [`crate::exec::execute`], inside the configured
//! network namespace; [`FakeHostForward`] models the chains in memory.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;

use crate::exec::{self, CommandError, CommandOutput, CommandSpec};

/// The usual name of the `iptables` binary.
pub const DEFAULT_IPTABLES_BINARY: &str = "iptables";
/// Docker's chain for the administrator's own forward rules.
pub const DOCKER_USER: &str = "DOCKER-USER";
/// The built-in forward chain of iptables' `filter` table.
pub const FORWARD: &str = "FORWARD";
/// How long one `iptables` invocation may take (it waits for the xtables lock).
const IPTABLES_TIMEOUT: Duration = Duration::from_secs(30);

/// The comment that marks banger's rules for `bridge`.
pub fn comment(bridge: &str) -> String {
    format!("banger:{bridge}")
}

/// The rule specifications banger inserts for `bridge`, in their final order: what comes from
/// the bridge, and replies going back to it; both end in the same comment and verdict.
pub fn accept_specs(bridge: &str) -> [Vec<String>; 2] {
    let comment = comment(bridge);
    let verdict = [
        "-m",
        "comment",
        "--comment",
        comment.as_str(),
        "-j",
        "ACCEPT",
    ];
    let from_bridge = ["-i", bridge];
    let replies = [
        "-o",
        bridge,
        "-m",
        "conntrack",
        "--ctstate",
        "RELATED,ESTABLISHED",
    ];
    [from_bridge.as_slice(), replies.as_slice()].map(|matches| {
        matches
            .iter()
            .chain(verdict.iter())
            .map(|w| (*w).to_string())
            .collect()
    })
}

/// Whether `iptables -S FORWARD` output says the chain drops what nothing accepted: a `DROP`
/// policy (Docker, ufw), or a last rule that drops or rejects everything (`-j DROP`, RHEL's
/// `-j REJECT --reject-with icmp-host-prohibited`).
pub fn forward_drops(listing: &str) -> bool {
    let lines: Vec<Vec<&str>> = listing
        .lines()
        .map(|line| line.split_whitespace().collect())
        .collect();
    let policy_drop = lines
        .iter()
        .any(|words| words.as_slice() == ["-P", FORWARD, "DROP"]);
    let last_rule = lines
        .iter()
        .rev()
        .find(|words| words.first() == Some(&"-A"));
    let catch_all = last_rule.is_some_and(|words| {
        matches!(words.as_slice(), ["-A", FORWARD, "-j", "DROP"])
            || matches!(words.as_slice(), ["-A", FORWARD, "-j", "REJECT", ..])
    });
    policy_drop || catch_all
}

/// From `iptables -S CHAIN` output, the `-D` arguments of every rule commented for `bridge`.
pub fn banger_rules(listing: &str, chain: &str, bridge: &str) -> Vec<Vec<String>> {
    let mark = comment(bridge);
    listing
        .lines()
        .filter_map(|line| {
            // iptables quotes comments; ours contain no spaces, so splitting on whitespace and
            // stripping the quotes gives back exactly the words it was added with.
            let words: Vec<String> = line
                .split_whitespace()
                .map(|w| w.trim_matches('"').to_string())
                .collect();
            let (first, rest) = words.split_first()?;
            if first != "-A" || rest.first().map(String::as_str) != Some(chain) {
                return None;
            }
            let marked = rest
                .windows(2)
                .any(|pair| pair[0] == "--comment" && pair[1] == mark);
            marked.then(|| {
                let mut args = vec!["-D".to_string()];
                args.extend(rest.iter().cloned());
                args
            })
        })
        .collect()
}

/// Whether iptables' stderr says the chain it was asked about does not exist. The legacy backend
/// says "No chain/target/match by that name"; the nft backend, for a chain it cannot find in a
/// table it manages, calls it "incompatible" or says "does not exist".
fn chain_absent(stderr: &str) -> bool {
    ["No chain/target/match", "does not exist", "incompatible"]
        .iter()
        .any(|sign| stderr.contains(sign))
}

/// Whether `FORWARD` jumps to Docker's `DOCKER-USER` (a chain left over without the jump would
/// never see banger's accepts).
pub fn forward_jumps_to_docker_user(forward_listing: &str) -> bool {
    forward_listing.lines().any(|line| {
        let words: Vec<&str> = line.split_whitespace().collect();
        words.first() == Some(&"-A")
            && words.get(1) == Some(&FORWARD)
            && words.windows(2).any(|w| w == ["-j", DOCKER_USER])
    })
}

/// Why opening or closing the host's forward firewall failed.
#[derive(Debug, thiserror::Error)]
pub enum HostForwardError {
    /// A bridge name iptables would read as a wildcard (`+`) or that could not be quoted.
    #[error("bridge name {bridge:?} cannot be used in an iptables rule (no '+' or quotes)")]
    BadBridgeName {
        /// The name.
        bridge: String,
    },
    /// `iptables` failed.
    #[error("could not {action}")]
    Command {
        /// What was being done, e.g. "list iptables chain FORWARD in netns X".
        action: String,
        /// The command's failure (argv, status, stderr).
        #[source]
        source: CommandError,
    },
    /// A failure a [`FakeHostForward`] was told to produce.
    #[error("injected failure")]
    Injected,
}

/// The host firewall's forward chain, as far as banger's VMs are concerned.
#[async_trait]
pub trait HostForward: Send + Sync {
    /// When `FORWARD` drops by default, makes sure banger's accepts for `bridge` are in it (or in
    /// `DOCKER-USER`). Returns the chain holding them; `None` when nothing needed opening.
    async fn open(&self, bridge: &str) -> Result<Option<String>, HostForwardError>;

    /// Deletes every rule commented for `bridge` from `DOCKER-USER` and `FORWARD`; returns how
    /// many there were.
    async fn close(&self, bridge: &str) -> Result<usize, HostForwardError>;
}

/// [`HostForward`] over the `iptables` binary, in one network namespace.
#[derive(Debug, Clone)]
pub struct RealHostForward {
    netns: Option<String>,
    iptables: PathBuf,
}

/// Refuses a bridge name iptables would not match literally.
fn check_bridge(bridge: &str) -> Result<(), HostForwardError> {
    if bridge.contains(['+', '"', '\'']) {
        return Err(HostForwardError::BadBridgeName {
            bridge: bridge.to_string(),
        });
    }
    Ok(())
}

/// `program` itself when it names a path, else the first match on `PATH`.
fn locate(program: &Path) -> Option<PathBuf> {
    if program.components().count() > 1 {
        return program.is_file().then(|| program.to_path_buf());
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

impl RealHostForward {
    /// Runs `iptables_binary` in `netns` (`None`: the current namespace).
    pub fn new(netns: Option<String>, iptables_binary: impl Into<PathBuf>) -> Self {
        Self {
            netns,
            iptables: iptables_binary.into(),
        }
    }

    fn action(&self, what: String) -> String {
        match &self.netns {
            Some(netns) => format!("{what} in netns {netns}"),
            None => what,
        }
    }

    async fn run(
        &self,
        binary: &Path,
        args: &[String],
        action: impl FnOnce() -> String,
    ) -> Result<CommandOutput, HostForwardError> {
        let spec = CommandSpec::new(binary)
            .arg("-w")
            .args(args)
            .in_netns(self.netns.as_deref())
            .timeout(IPTABLES_TIMEOUT);
        exec::execute(&spec)
            .await
            .map_err(|source| HostForwardError::Command {
                action: self.action(action()),
                source,
            })
    }

    /// `iptables -S CHAIN`. For a chain that may be absent (`DOCKER-USER`), `None` when
    /// iptables exits 1 and says so; `FORWARD` always exists, so any failure is an error.
    async fn list(
        &self,
        binary: &Path,
        chain: &str,
        may_be_absent: bool,
    ) -> Result<Option<String>, HostForwardError> {
        let args = ["-S".to_string(), chain.to_string()];
        match self
            .run(binary, &args, || format!("list iptables chain {chain}"))
            .await
        {
            Ok(output) => Ok(Some(output.stdout)),
            Err(HostForwardError::Command {
                source: CommandError::Failed { status, stderr, .. },
                ..
            }) if may_be_absent && status.code() == Some(1) && chain_absent(&stderr) => Ok(None),
            Err(err) => Err(err),
        }
    }
}

#[async_trait]
impl HostForward for RealHostForward {
    async fn open(&self, bridge: &str) -> Result<Option<String>, HostForwardError> {
        check_bridge(bridge)?;
        let Some(binary) = locate(&self.iptables) else {
            return Ok(None);
        };
        let forward = self
            .list(&binary, FORWARD, false)
            .await?
            .unwrap_or_default();
        if !forward_drops(&forward) {
            return Ok(None);
        }
        let docker_user = if forward_jumps_to_docker_user(&forward) {
            self.list(&binary, DOCKER_USER, true).await?
        } else {
            None
        };
        let (chain, listing) = match docker_user {
            Some(listing) => (DOCKER_USER, listing),
            None => (FORWARD, forward),
        };
        // Both rules there (the sweep re-opening): nothing to do. Anything else — none, or a
        // partial set someone edited — is replaced as a whole, so re-opening never piles up.
        let present = banger_rules(&listing, chain, bridge);
        let specs = accept_specs(bridge);
        if present.len() == specs.len() {
            return Ok(Some(chain.to_string()));
        }
        for delete in present {
            self.run(&binary, &delete, || {
                format!("delete a partial accept for {bridge} from iptables chain {chain}")
            })
            .await?;
        }
        // Inserting at the top in reverse order leaves the rules in their listed order.
        for spec in specs.iter().rev() {
            let mut insert = vec!["-I".to_string(), chain.to_string(), "1".to_string()];
            insert.extend(spec.iter().cloned());
            self.run(&binary, &insert, || {
                format!("insert an accept for {bridge} into iptables chain {chain}")
            })
            .await?;
        }
        tracing::debug!(%bridge, chain, netns = ?self.netns, "host FORWARD drops by default: accepts inserted");
        Ok(Some(chain.to_string()))
    }

    async fn close(&self, bridge: &str) -> Result<usize, HostForwardError> {
        let Some(binary) = locate(&self.iptables) else {
            return Ok(0);
        };
        let mut removed = 0;
        for chain in [DOCKER_USER, FORWARD] {
            let Some(listing) = self.list(&binary, chain, chain == DOCKER_USER).await? else {
                continue;
            };
            for delete in banger_rules(&listing, chain, bridge) {
                self.run(&binary, &delete, || {
                    format!("delete banger's accept for {bridge} from iptables chain {chain}")
                })
                .await?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}

/// What [`FakeHostForward`] holds.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FakeForwardState {
    /// `-P FORWARD DROP`.
    pub forward_drops: bool,
    /// Whether Docker's `DOCKER-USER` chain exists.
    pub docker_user: bool,
    /// banger's rules now present, as (chain, bridge), one entry per rule.
    pub rules: Vec<(String, String)>,
    /// Calls of `open` left to fail.
    pub fail_open: usize,
}

/// An in-memory [`HostForward`] modelling the two chains.
#[derive(Debug, Default)]
pub struct FakeHostForward {
    state: Mutex<FakeForwardState>,
}

impl FakeHostForward {
    /// A host whose `FORWARD` accepts by default (nothing to open).
    pub fn new() -> Self {
        Self::default()
    }

    /// A host that drops forwarded traffic by default, with or without Docker's chain.
    pub fn dropping(docker_user: bool) -> Self {
        let fake = Self::default();
        {
            let mut state = fake.state();
            state.forward_drops = true;
            state.docker_user = docker_user;
        }
        fake
    }

    /// The modelled chains, to inspect or change.
    pub fn state(&self) -> MutexGuard<'_, FakeForwardState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[async_trait]
impl HostForward for FakeHostForward {
    async fn open(&self, bridge: &str) -> Result<Option<String>, HostForwardError> {
        let mut state = self.state();
        if state.fail_open > 0 {
            state.fail_open -= 1;
            return Err(HostForwardError::Injected);
        }
        if !state.forward_drops {
            return Ok(None);
        }
        let chain = if state.docker_user {
            DOCKER_USER
        } else {
            FORWARD
        };
        let wanted = accept_specs(bridge).len();
        let present = state
            .rules
            .iter()
            .filter(|(c, b)| c == chain && b == bridge)
            .count();
        if present != wanted {
            // Like the real one: a partial set is replaced as a whole.
            state.rules.retain(|(c, b)| !(c == chain && b == bridge));
            for _ in 0..wanted {
                state.rules.push((chain.to_string(), bridge.to_string()));
            }
        }
        Ok(Some(chain.to_string()))
    }

    async fn close(&self, bridge: &str) -> Result<usize, HostForwardError> {
        let mut state = self.state();
        let before = state.rules.len();
        state.rules.retain(|(_, b)| b != bridge);
        Ok(before - state.rules.len())
    }
}

#[cfg(test)]
// In tests a panic is the failure report.
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn only_a_drop_policy_on_forward_counts_as_dropping() {
        assert!(forward_drops(
            "-P FORWARD DROP\n-A FORWARD -j DOCKER-USER\n"
        ));
        assert!(!forward_drops("-P FORWARD ACCEPT\n"));
        assert!(!forward_drops("-P INPUT DROP\n-P FORWARD ACCEPT\n"));
        assert!(!forward_drops(""));
        assert!(forward_drops(
            "-P FORWARD ACCEPT\n-A FORWARD -i lo -j ACCEPT\n\
             -A FORWARD -j REJECT --reject-with icmp-host-prohibited\n"
        ));
        assert!(forward_drops("-P FORWARD ACCEPT\n-A FORWARD -j DROP\n"));
        assert!(
            !forward_drops("-P FORWARD ACCEPT\n-A FORWARD -i eth9 -j DROP\n"),
            "a conditional drop is not a catch-all"
        );
        assert!(!forward_drops(
            "-P FORWARD ACCEPT\n-A FORWARD -j DROP\n-A FORWARD -j ACCEPT\n"
        ));
    }

    #[test]
    fn the_rules_to_delete_are_exactly_the_ones_commented_for_the_bridge() {
        let listing = "-N DOCKER-USER\n\
            -A DOCKER-USER -o br0 -m conntrack --ctstate RELATED,ESTABLISHED -m comment --comment \"banger:br0\" -j ACCEPT\n\
            -A DOCKER-USER -i br0 -m comment --comment \"banger:br0\" -j ACCEPT\n\
            -A DOCKER-USER -i br1 -m comment --comment \"banger:br1\" -j ACCEPT\n\
            -A DOCKER-USER -i br0 -m comment --comment \"someone else\" -j ACCEPT\n\
            -A DOCKER-USER -j RETURN\n";
        let deletes = banger_rules(listing, DOCKER_USER, "br0");
        assert_eq!(deletes.len(), 2);
        let [incoming, established] = accept_specs("br0");
        let expected = |spec: Vec<String>| {
            let mut args = vec!["-D".to_string(), DOCKER_USER.to_string()];
            args.extend(spec);
            args
        };
        assert_eq!(deletes[0], expected(established));
        assert_eq!(deletes[1], expected(incoming));
        assert!(banger_rules(listing, FORWARD, "br0").is_empty());
    }

    #[tokio::test]
    async fn the_fake_opens_once_in_docker_user_and_closes_everything() {
        let fake = FakeHostForward::dropping(true);
        assert_eq!(
            fake.open("br0").await.unwrap().as_deref(),
            Some(DOCKER_USER)
        );
        assert_eq!(
            fake.open("br0").await.unwrap().as_deref(),
            Some(DOCKER_USER)
        );
        assert_eq!(fake.state().rules.len(), 2, "idempotent");
        assert_eq!(fake.close("br0").await.unwrap(), 2);
        assert_eq!(fake.close("br0").await.unwrap(), 0);
        let open = FakeHostForward::new();
        assert_eq!(open.open("br0").await.unwrap(), None);
        assert!(open.state().rules.is_empty());
    }

    #[test]
    fn docker_user_counts_only_when_forward_jumps_to_it() {
        assert!(forward_jumps_to_docker_user(
            "-P FORWARD DROP\n-A FORWARD -j DOCKER-USER\n"
        ));
        assert!(!forward_jumps_to_docker_user(
            "-P FORWARD DROP\n-A FORWARD -j DROP\n"
        ));
        assert!(chain_absent(
            "iptables: No chain/target/match by that name.\n"
        ));
        assert!(!chain_absent(
            "iptables: Permission denied (you must be root)\n"
        ));
    }

    #[tokio::test]
    async fn a_wildcard_bridge_name_is_refused() {
        let real = RealHostForward::new(None, "/nonexistent/banger-iptables");
        assert!(matches!(
            real.open("br+").await,
            Err(HostForwardError::BadBridgeName { .. })
        ));
    }

    #[tokio::test]
    async fn a_missing_iptables_binary_means_nothing_to_open_or_close() {
        let real = RealHostForward::new(None, "/nonexistent/banger-iptables");
        assert_eq!(real.open("br0").await.unwrap(), None);
        assert_eq!(real.close("br0").await.unwrap(), 0);
    }
}

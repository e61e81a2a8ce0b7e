//! banger's nftables table: NAT for the VM subnet, explicit forward accepts, and port forwards.
//!
//! banger owns exactly one table (family `inet`, named [`DEFAULT_TABLE`] unless configured) and
//! never reads, changes or deletes any other. [`Nft::apply`] replaces that table as a whole in one
//! atomic `nft -j -f -` transaction: `add table; delete table; add table; chains…; rules…`. The
//! leading `add` makes the `delete` valid when the table is missing, so the same transaction works
//! on a first apply and on every later one, and a failed apply leaves the previous table intact.
//!
//! The rendered table ([`NatRuleset::to_nft_json`]), for subnet `S`, bridge `B` and one forward:
//!
//! ```text
//! table inet banger {
//!   chain postrouting { type nat hook postrouting priority srcnat (100); policy accept;
//!     ip saddr S oifname != B masquerade }
//!   chain forward { type filter hook forward priority filter - 1 (-1); policy accept;
//!     iifname B accept
//!     oifname B ct state established,related accept
//!     oifname B ct status dnat accept                 # only with port forwards
//!   }
//!   chain prerouting { type nat hook prerouting priority dstnat (-100); policy accept;
//!     meta nfproto ipv4 fib daddr type local tcp dport HOST dnat ip to GUEST:PORT }
//!   chain output { type nat hook output priority -100; policy accept;
//!     (same DNAT rules, for connections made from the host itself) }
//! }
//! ```
//!
//! The forward chain runs at priority -1, just before the usual `filter` chains, and its accepts
//! are explicit so a host whose policy is "drop what is not accepted" can see banger's traffic
//! accepted. Caveat: in nftables an `accept` ends evaluation only within its own base chain; a
//! `drop` in another table's chain on the same hook (iptables-nft `FORWARD DROP`, for instance)
//! still drops. Doctor is the place to detect that.
//!
//! DNAT matches only packets addressed to one of the host's own addresses (`fib daddr type
//! local`), so forwarded traffic to other hosts on the same port is left alone. Connections to
//! 127.0.0.1:HOST are not forwarded (that would need `route_localnet`).
//!
//! [`RealNft`] runs `nft` through [`crate::exec::execute`], inside the configured network namespace
//! (`ip netns exec`); [`FakeNft`] records what was applied and deleted.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::exec::{self, CommandError, CommandSpec};
use crate::links::ifname_problem;

/// The name of banger's table unless configured otherwise.
pub const DEFAULT_TABLE: &str = "banger";
/// The family of banger's table.
pub const FAMILY: &str = "inet";
/// The usual path of the `nft` binary.
pub const DEFAULT_NFT_BINARY: &str = "nft";

/// `priority srcnat`.
const PRIORITY_SRCNAT: i32 = 100;
/// `priority dstnat` (also the conventional priority of a nat `output` chain).
const PRIORITY_DSTNAT: i32 = -100;
/// `priority filter - 1`: before the usual filter chains at priority 0.
const PRIORITY_FORWARD: i32 = -1;
/// How long one `nft` invocation may take.
const NFT_TIMEOUT: Duration = Duration::from_secs(30);

/// The transport protocol of a port forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl Protocol {
    /// The protocol's name in nftables (and everywhere else).
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// Traffic to `host_port` on any of the host's addresses goes to `guest_ip:guest_port`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PortForward {
    /// TCP or UDP.
    pub proto: Protocol,
    /// The port on the host.
    pub host_port: u16,
    /// The guest's address on the bridge subnet.
    pub guest_ip: Ipv4Addr,
    /// The port in the guest.
    pub guest_port: u16,
}

/// Everything banger's table holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NatRuleset {
    /// The table name (family [`FAMILY`]).
    pub table: String,
    /// The VM subnet: network address (host bits are masked off when rendering) and prefix length.
    pub subnet: (Ipv4Addr, u8),
    /// The bridge the VMs' taps are attached to.
    pub bridge: String,
    /// Port forwards into guests.
    pub port_forwards: Vec<PortForward>,
}

/// Why an nftables operation failed.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    /// A table or bridge name that cannot be used.
    #[error("invalid {what} name {name:?}: {reason}")]
    InvalidName {
        /// "table" or "bridge".
        what: &'static str,
        /// The rejected name.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A subnet prefix length over 32.
    #[error("invalid subnet prefix length /{prefix}")]
    InvalidPrefix {
        /// The rejected length.
        prefix: u8,
    },
    /// Two port forwards claim the same host port.
    #[error("host port {proto:?} {host_port} is forwarded twice")]
    DuplicatePort {
        /// The protocol.
        proto: Protocol,
        /// The doubly claimed port.
        host_port: u16,
    },
    /// Port 0 on either side of a forward.
    #[error("port forward {proto:?} {host_port} -> {guest_ip}:{guest_port} uses port 0")]
    ZeroPort {
        /// The protocol.
        proto: Protocol,
        /// The host port.
        host_port: u16,
        /// The guest address.
        guest_ip: Ipv4Addr,
        /// The guest port.
        guest_port: u16,
    },
    /// `nft` failed.
    #[error("could not {action}")]
    Command {
        /// What was being done, e.g. "apply table inet banger in netns X".
        action: String,
        /// The command's failure (argv, status, stderr).
        #[source]
        source: CommandError,
    },
    /// `nft -j` printed something that is not the JSON expected.
    #[error("could not parse the output of {action}")]
    Output {
        /// What was being done.
        action: String,
        /// The parse failure.
        #[source]
        source: serde_json::Error,
    },
    /// A failure a [`FakeNft`] was told to produce.
    #[error("injected failure of {op:?}")]
    Injected {
        /// The operation that was told to fail.
        op: NftOp,
    },
}

/// The nftables operations, named for failure injection in [`FakeNft`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum NftOp {
    /// [`Nft::apply`].
    Apply,
    /// [`Nft::delete_table`].
    DeleteTable,
    /// [`Nft::list_table`].
    ListTable,
    /// [`Nft::list_tables`].
    ListTables,
}

/// Checks a table name: an nftables identifier (letter first, then letters, digits, `_`, `-`).
pub fn check_table_name(name: &str) -> Result<(), NftError> {
    let reason = if name.is_empty() {
        Some("empty")
    } else if name.len() > 64 {
        Some("longer than 64 bytes")
    } else if !name.starts_with(|c: char| c.is_ascii_alphabetic()) {
        Some("does not start with a letter")
    } else if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        Some("contains characters other than letters, digits, '_' and '-'")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(NftError::InvalidName {
            what: "table",
            name: name.to_string(),
            reason,
        }),
        None => Ok(()),
    }
}

fn table_object(table: &str) -> Value {
    json!({ "table": { "family": FAMILY, "name": table } })
}

/// The transaction that deletes `table` if it is there and does nothing otherwise.
pub fn delete_table_json(table: &str) -> Result<Value, NftError> {
    check_table_name(table)?;
    Ok(json!({ "nftables": [ { "add": table_object(table) }, { "delete": table_object(table) } ] }))
}

/// `meta KEY OP VALUE`.
fn meta_match(key: &str, op: &str, right: Value) -> Value {
    json!({ "match": { "op": op, "left": { "meta": { "key": key } }, "right": right } })
}

impl NatRuleset {
    /// banger's default table for `subnet` behind `bridge`, with no port forwards.
    pub fn new(subnet: (Ipv4Addr, u8), bridge: impl Into<String>) -> Self {
        Self {
            table: DEFAULT_TABLE.to_string(),
            subnet,
            bridge: bridge.into(),
            port_forwards: Vec::new(),
        }
    }

    /// Checks names, prefix and ports.
    pub fn validate(&self) -> Result<(), NftError> {
        check_table_name(&self.table)?;
        if let Some(reason) = ifname_problem(&self.bridge) {
            return Err(NftError::InvalidName {
                what: "bridge",
                name: self.bridge.clone(),
                reason,
            });
        }
        if self.subnet.1 > 32 {
            return Err(NftError::InvalidPrefix {
                prefix: self.subnet.1,
            });
        }
        let mut seen = BTreeSet::new();
        for forward in &self.port_forwards {
            let PortForward {
                proto,
                host_port,
                guest_ip,
                guest_port,
            } = *forward;
            if host_port == 0 || guest_port == 0 {
                return Err(NftError::ZeroPort {
                    proto,
                    host_port,
                    guest_ip,
                    guest_port,
                });
            }
            if !seen.insert((proto, host_port)) {
                return Err(NftError::DuplicatePort { proto, host_port });
            }
        }
        Ok(())
    }

    /// The subnet's network address (host bits cleared), as nftables requires for a prefix.
    fn network(&self) -> Ipv4Addr {
        let (address, prefix) = self.subnet;
        let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
        Ipv4Addr::from(u32::from(address) & mask)
    }

    fn chain(&self, name: &str, kind: &str, hook: &str, prio: i32) -> Value {
        json!({ "add": { "chain": {
            "family": FAMILY, "table": self.table, "name": name,
            "type": kind, "hook": hook, "prio": prio, "policy": "accept",
        } } })
    }

    fn rule(&self, chain: &str, comment: &str, expr: Vec<Value>) -> Value {
        json!({ "add": { "rule": {
            "family": FAMILY, "table": self.table, "chain": chain, "comment": comment, "expr": expr,
        } } })
    }

    fn dnat_rule(&self, chain: &str, forward: &PortForward) -> Value {
        let PortForward {
            proto,
            host_port,
            guest_ip,
            guest_port,
        } = *forward;
        let comment = format!(
            "banger: forward {} {host_port} to {guest_ip}:{guest_port}",
            proto.as_str()
        );
        self.rule(
            chain,
            &comment,
            vec![
                meta_match("nfproto", "==", json!("ipv4")),
                json!({ "match": { "op": "==",
                    "left": { "fib": { "result": "type", "flags": ["daddr"] } }, "right": "local" } }),
                json!({ "match": { "op": "==",
                    "left": { "payload": { "protocol": proto.as_str(), "field": "dport" } }, "right": host_port } }),
                json!({ "dnat": { "family": "ip", "addr": guest_ip.to_string(), "port": guest_port } }),
            ],
        )
    }

    /// The whole `nft -j -f -` transaction that replaces banger's table with this ruleset.
    pub fn to_nft_json(&self) -> Result<Value, NftError> {
        self.validate()?;
        let bridge = self.bridge.as_str();
        let mut commands = vec![
            json!({ "add": table_object(&self.table) }),
            json!({ "delete": table_object(&self.table) }),
            json!({ "add": table_object(&self.table) }),
            self.chain("postrouting", "nat", "postrouting", PRIORITY_SRCNAT),
            self.chain("forward", "filter", "forward", PRIORITY_FORWARD),
            self.chain("prerouting", "nat", "prerouting", PRIORITY_DSTNAT),
            self.chain("output", "nat", "output", PRIORITY_DSTNAT),
            self.rule(
                "postrouting",
                "banger: masquerade the VM subnet leaving the host",
                vec![
                    json!({ "match": { "op": "==",
                        "left": { "payload": { "protocol": "ip", "field": "saddr" } },
                        "right": { "prefix": { "addr": self.network().to_string(), "len": self.subnet.1 } } } }),
                    meta_match("oifname", "!=", json!(bridge)),
                    json!({ "masquerade": null }),
                ],
            ),
            self.rule(
                "forward",
                "banger: accept traffic from VMs",
                vec![meta_match("iifname", "==", json!(bridge)), json!({ "accept": null })],
            ),
            self.rule(
                "forward",
                "banger: accept replies to VMs",
                vec![
                    meta_match("oifname", "==", json!(bridge)),
                    json!({ "match": { "op": "in",
                        "left": { "ct": { "key": "state" } }, "right": ["established", "related"] } }),
                    json!({ "accept": null }),
                ],
            ),
        ];
        if !self.port_forwards.is_empty() {
            commands.push(self.rule(
                "forward",
                "banger: accept port-forwarded connections to VMs",
                vec![
                    meta_match("oifname", "==", json!(bridge)),
                    json!({ "match": { "op": "in", "left": { "ct": { "key": "status" } }, "right": "dnat" } }),
                    json!({ "accept": null }),
                ],
            ));
        }
        for forward in &self.port_forwards {
            commands.push(self.dnat_rule("prerouting", forward));
            commands.push(self.dnat_rule("output", forward));
        }
        Ok(json!({ "nftables": commands }))
    }
}

/// banger's nftables table in one network namespace.
#[async_trait]
pub trait Nft: Send + Sync {
    /// Replaces table `inet RULES.TABLE` with `rules`, atomically; other tables are untouched.
    async fn apply(&self, rules: &NatRuleset) -> Result<(), NftError>;

    /// Deletes table `inet TABLE`; a missing table is success.
    async fn delete_table(&self, table: &str) -> Result<(), NftError>;

    /// `nft -j list table inet TABLE`, or `None` when there is no such table.
    async fn list_table(&self, table: &str) -> Result<Option<Value>, NftError>;

    /// Every table of the namespace as (family, name), banger's or not.
    async fn list_tables(&self) -> Result<Vec<(String, String)>, NftError>;
}

/// [`Nft`] over the `nft` binary, in one network namespace.
#[derive(Debug, Clone)]
pub struct RealNft {
    netns: Option<String>,
    nft: PathBuf,
}

impl RealNft {
    /// Runs `nft_binary` in `netns` (`None`: the current namespace).
    pub fn new(netns: Option<String>, nft_binary: impl Into<PathBuf>) -> Self {
        Self {
            netns,
            nft: nft_binary.into(),
        }
    }

    /// The namespace the table lives in (`None`: the current one).
    pub fn netns(&self) -> Option<&str> {
        self.netns.as_deref()
    }

    fn command<I, S>(&self, args: I) -> CommandSpec
    where
        I: IntoIterator<Item = S>,
        S: Into<std::ffi::OsString>,
    {
        CommandSpec::new(&self.nft)
            .args(args)
            .in_netns(self.netns.as_deref())
            .timeout(NFT_TIMEOUT)
    }

    fn action(&self, what: String) -> String {
        match &self.netns {
            Some(netns) => format!("{what} in netns {netns}"),
            None => what,
        }
    }

    /// Feeds `transaction` to `nft -j -f -`.
    async fn run_transaction(&self, action: String, transaction: &Value) -> Result<(), NftError> {
        let bytes = serde_json::to_vec(transaction).map_err(|source| NftError::Output {
            action: action.clone(),
            source,
        })?;
        exec::execute(&self.command(["-j", "-f", "-"]).stdin(bytes))
            .await
            .map(drop)
            .map_err(|source| NftError::Command { action, source })
    }
}

#[derive(Deserialize)]
struct Listing {
    nftables: Vec<Value>,
}

#[derive(Deserialize)]
struct TableEntry {
    family: String,
    name: String,
}

fn parse_tables(stdout: &str) -> Result<Vec<(String, String)>, serde_json::Error> {
    let listing: Listing = serde_json::from_str(stdout)?;
    let mut tables = Vec::new();
    for item in listing.nftables {
        // Besides tables the listing carries a `metainfo` object, which is not ours to read.
        if let Some(table) = item.get("table") {
            let TableEntry { family, name } = serde_json::from_value(table.clone())?;
            tables.push((family, name));
        }
    }
    Ok(tables)
}

#[async_trait]
impl Nft for RealNft {
    async fn apply(&self, rules: &NatRuleset) -> Result<(), NftError> {
        let transaction = rules.to_nft_json()?;
        let action = self.action(format!("apply table {FAMILY} {}", rules.table));
        self.run_transaction(action, &transaction).await?;
        tracing::debug!(table = %rules.table, forwards = rules.port_forwards.len(), netns = ?self.netns, "nftables table applied");
        Ok(())
    }

    async fn delete_table(&self, table: &str) -> Result<(), NftError> {
        let transaction = delete_table_json(table)?;
        self.run_transaction(
            self.action(format!("delete table {FAMILY} {table}")),
            &transaction,
        )
        .await
    }

    async fn list_table(&self, table: &str) -> Result<Option<Value>, NftError> {
        check_table_name(table)?;
        // nft reports a missing table only as an error message; ask which tables exist instead
        // of matching its text. A table deleted between the two calls surfaces as an error.
        let present = self
            .list_tables()
            .await?
            .iter()
            .any(|(family, name)| family == FAMILY && name == table);
        if !present {
            return Ok(None);
        }
        let action = self.action(format!("list table {FAMILY} {table}"));
        let output = exec::execute(&self.command(["-j", "list", "table", FAMILY, table]))
            .await
            .map_err(|source| NftError::Command {
                action: action.clone(),
                source,
            })?;
        serde_json::from_str(&output.stdout)
            .map(Some)
            .map_err(|source| NftError::Output { action, source })
    }

    async fn list_tables(&self) -> Result<Vec<(String, String)>, NftError> {
        let action = self.action("list tables".to_string());
        let output = exec::execute(&self.command(["-j", "list", "tables"]))
            .await
            .map_err(|source| NftError::Command {
                action: action.clone(),
                source,
            })?;
        parse_tables(&output.stdout).map_err(|source| NftError::Output { action, source })
    }
}

#[derive(Debug, Default)]
struct FakeNftState {
    /// Present tables: (family, name) -> banger's ruleset, or `None` for a foreign table.
    tables: BTreeMap<(String, String), Option<NatRuleset>>,
    applied: Vec<NatRuleset>,
    deleted: Vec<String>,
    failures: HashMap<NftOp, usize>,
}

impl FakeNftState {
    fn enter(&mut self, op: NftOp) -> Result<(), NftError> {
        match self.failures.get_mut(&op) {
            Some(pending) if *pending > 0 => {
                *pending -= 1;
                Err(NftError::Injected { op })
            }
            _ => Ok(()),
        }
    }
}

/// An in-memory [`Nft`] that records every applied ruleset and deleted table.
///
/// `list_table` answers with the rendered transaction ([`NatRuleset::to_nft_json`]) rather than
/// nft's listing format; tests that need the real listing belong with [`RealNft`].
#[derive(Debug, Default)]
pub struct FakeNft {
    state: Mutex<FakeNftState>,
}

impl FakeNft {
    /// No tables at all.
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> MutexGuard<'_, FakeNftState> {
        // A poisoned lock only means another test thread panicked; the maps are still coherent.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Makes the next call of `op` fail with [`NftError::Injected`] (cumulative).
    pub fn fail_next(&self, op: NftOp) {
        *self.state().failures.entry(op).or_default() += 1;
    }

    /// Every ruleset successfully applied, in order.
    pub fn applied(&self) -> Vec<NatRuleset> {
        self.state().applied.clone()
    }

    /// Every table name passed to a successful `delete_table`, in order.
    pub fn deleted(&self) -> Vec<String> {
        self.state().deleted.clone()
    }

    /// The ruleset now in table `inet TABLE`, if banger applied one.
    pub fn current(&self, table: &str) -> Option<NatRuleset> {
        self.state()
            .tables
            .get(&(FAMILY.to_string(), table.to_string()))
            .cloned()
            .flatten()
    }

    /// Adds a table someone else owns, to check banger leaves it alone.
    pub fn insert_foreign_table(&self, family: &str, name: &str) {
        self.state()
            .tables
            .insert((family.to_string(), name.to_string()), None);
    }
}

#[async_trait]
impl Nft for FakeNft {
    async fn apply(&self, rules: &NatRuleset) -> Result<(), NftError> {
        let mut state = self.state();
        state.enter(NftOp::Apply)?;
        rules.validate()?;
        state.tables.insert(
            (FAMILY.to_string(), rules.table.clone()),
            Some(rules.clone()),
        );
        state.applied.push(rules.clone());
        Ok(())
    }

    async fn delete_table(&self, table: &str) -> Result<(), NftError> {
        let mut state = self.state();
        state.enter(NftOp::DeleteTable)?;
        check_table_name(table)?;
        state
            .tables
            .remove(&(FAMILY.to_string(), table.to_string()));
        state.deleted.push(table.to_string());
        Ok(())
    }

    async fn list_table(&self, table: &str) -> Result<Option<Value>, NftError> {
        let mut state = self.state();
        state.enter(NftOp::ListTable)?;
        check_table_name(table)?;
        match state.tables.get(&(FAMILY.to_string(), table.to_string())) {
            None => Ok(None),
            Some(Some(rules)) => rules.to_nft_json().map(Some),
            Some(None) => Ok(Some(json!({ "nftables": [ table_object(table) ] }))),
        }
    }

    async fn list_tables(&self) -> Result<Vec<(String, String)>, NftError> {
        let mut state = self.state();
        state.enter(NftOp::ListTables)?;
        Ok(state.tables.keys().cloned().collect())
    }
}

#[cfg(test)]
// In tests a panic is the failure report.
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn ruleset() -> NatRuleset {
        NatRuleset {
            table: "banger".into(),
            subnet: (Ipv4Addr::new(10, 77, 0, 1), 24),
            bridge: "br-banger".into(),
            port_forwards: vec![PortForward {
                proto: Protocol::Tcp,
                host_port: 8080,
                guest_ip: Ipv4Addr::new(10, 77, 0, 2),
                guest_port: 80,
            }],
        }
    }

    fn commands(value: &Value) -> Vec<Value> {
        value["nftables"].as_array().unwrap().clone()
    }

    fn rules_of(value: &Value, chain: &str) -> Vec<Value> {
        commands(value)
            .into_iter()
            .filter_map(|c| c["add"].get("rule").cloned())
            .filter(|r| r["chain"] == chain)
            .map(|r| r["expr"].clone())
            .collect()
    }

    #[test]
    fn transaction_replaces_only_bangers_table_add_delete_add() {
        let json = ruleset().to_nft_json().unwrap();
        let commands = commands(&json);
        let table = json!({ "table": { "family": "inet", "name": "banger" } });
        assert_eq!(commands[0], json!({ "add": table }));
        assert_eq!(commands[1], json!({ "delete": table }));
        assert_eq!(commands[2], json!({ "add": table }));
        for command in &commands[3..] {
            let (verb, object) = command.as_object().unwrap().iter().next().unwrap();
            assert_eq!(verb, "add", "only adds after the reset: {command}");
            let object = object.as_object().unwrap().values().next().unwrap();
            assert_eq!(object["family"], "inet");
            assert_eq!(
                object["table"], "banger",
                "everything lands in banger's table: {command}"
            );
        }
    }

    #[test]
    fn chains_have_the_documented_hooks_and_priorities() {
        let json = ruleset().to_nft_json().unwrap();
        let chains: Vec<(String, String, String, i64)> = commands(&json)
            .iter()
            .filter_map(|c| c["add"].get("chain"))
            .map(|c| {
                (
                    c["name"].as_str().unwrap().to_string(),
                    c["type"].as_str().unwrap().to_string(),
                    c["hook"].as_str().unwrap().to_string(),
                    c["prio"].as_i64().unwrap(),
                )
            })
            .collect();
        let expected = [
            ("postrouting", "nat", "postrouting", 100),
            ("forward", "filter", "forward", -1),
            ("prerouting", "nat", "prerouting", -100),
            ("output", "nat", "output", -100),
        ];
        let expected: Vec<_> = expected
            .iter()
            .map(|(n, t, h, p)| (n.to_string(), t.to_string(), h.to_string(), *p))
            .collect();
        assert_eq!(chains, expected);
    }

    #[test]
    fn masquerade_covers_the_subnet_leaving_by_any_other_interface() {
        let json = ruleset().to_nft_json().unwrap();
        let rules = rules_of(&json, "postrouting");
        assert_eq!(
            rules,
            vec![json!([
                { "match": { "op": "==", "left": { "payload": { "protocol": "ip", "field": "saddr" } },
                    "right": { "prefix": { "addr": "10.77.0.0", "len": 24 } } } },
                { "match": { "op": "!=", "left": { "meta": { "key": "oifname" } }, "right": "br-banger" } },
                { "masquerade": null },
            ])]
        );
    }

    #[test]
    fn forward_chain_accepts_from_bridge_replies_and_forwarded_connections() {
        let json = ruleset().to_nft_json().unwrap();
        let rules = rules_of(&json, "forward");
        assert_eq!(rules.len(), 3);
        assert_eq!(
            rules[0],
            json!([{ "match": { "op": "==", "left": { "meta": { "key": "iifname" } }, "right": "br-banger" } },
                   { "accept": null }])
        );
        assert_eq!(
            rules[1][1]["match"]["right"],
            json!(["established", "related"])
        );
        assert_eq!(rules[1][2], json!({ "accept": null }));
        assert_eq!(
            rules[2][1]["match"]["left"],
            json!({ "ct": { "key": "status" } })
        );

        let mut plain = ruleset();
        plain.port_forwards.clear();
        let json = plain.to_nft_json().unwrap();
        assert_eq!(
            rules_of(&json, "forward").len(),
            2,
            "no dnat accept without port forwards"
        );
        assert!(rules_of(&json, "prerouting").is_empty());
        assert!(rules_of(&json, "output").is_empty());
    }

    #[test]
    fn each_port_forward_is_a_dnat_in_prerouting_and_output() {
        let json = ruleset().to_nft_json().unwrap();
        for chain in ["prerouting", "output"] {
            let rules = rules_of(&json, chain);
            assert_eq!(rules.len(), 1, "{chain}");
            let expr = rules[0].as_array().unwrap();
            assert_eq!(
                expr[2]["match"]["left"],
                json!({ "payload": { "protocol": "tcp", "field": "dport" } })
            );
            assert_eq!(expr[2]["match"]["right"], 8080);
            assert_eq!(
                expr[3],
                json!({ "dnat": { "family": "ip", "addr": "10.77.0.2", "port": 80 } })
            );
        }
    }

    #[test]
    fn invalid_rulesets_are_refused_before_rendering() {
        let mut bad = ruleset();
        bad.table = "banger; flush ruleset".into();
        assert!(matches!(
            bad.to_nft_json(),
            Err(NftError::InvalidName { what: "table", .. })
        ));
        let mut bad = ruleset();
        bad.bridge = "a-bridge-name-too-long".into();
        assert!(matches!(
            bad.to_nft_json(),
            Err(NftError::InvalidName { what: "bridge", .. })
        ));
        let mut bad = ruleset();
        bad.subnet.1 = 33;
        assert!(matches!(
            bad.to_nft_json(),
            Err(NftError::InvalidPrefix { prefix: 33 })
        ));
        let mut bad = ruleset();
        bad.port_forwards.push(bad.port_forwards[0]);
        assert!(matches!(
            bad.to_nft_json(),
            Err(NftError::DuplicatePort {
                host_port: 8080,
                ..
            })
        ));
        let mut bad = ruleset();
        bad.port_forwards[0].guest_port = 0;
        assert!(matches!(bad.to_nft_json(), Err(NftError::ZeroPort { .. })));
    }

    #[test]
    fn subnet_prefix_zero_and_thirty_two_render() {
        let mut rules = ruleset();
        rules.subnet = (Ipv4Addr::new(10, 77, 0, 1), 0);
        assert_eq!(rules.network(), Ipv4Addr::UNSPECIFIED);
        rules.subnet = (Ipv4Addr::new(10, 77, 0, 1), 32);
        assert_eq!(rules.network(), Ipv4Addr::new(10, 77, 0, 1));
    }

    #[test]
    fn delete_transaction_is_add_then_delete() {
        let json = delete_table_json("banger").unwrap();
        let table = json!({ "table": { "family": "inet", "name": "banger" } });
        assert_eq!(
            json,
            json!({ "nftables": [ { "add": table }, { "delete": table } ] })
        );
    }

    #[test]
    fn table_listing_skips_metainfo() {
        let out = r#"{"nftables": [{"metainfo": {"version": "1.0.6", "json_schema_version": 1}},
            {"table": {"family": "inet", "name": "banger", "handle": 7}},
            {"table": {"family": "ip", "name": "nat", "handle": 2}}]}"#;
        assert_eq!(
            parse_tables(out).unwrap(),
            vec![
                ("inet".to_string(), "banger".to_string()),
                ("ip".to_string(), "nat".to_string())
            ]
        );
        assert!(parse_tables("not json").is_err());
    }

    #[tokio::test]
    async fn real_nft_failure_names_the_namespace_and_the_command() {
        let nft = RealNft::new(None, "/nonexistent/banger-nft");
        let err = nft.list_tables().await.unwrap_err();
        assert!(
            matches!(
                &err,
                NftError::Command {
                    source: CommandError::Spawn { .. },
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn fake_records_applies_and_leaves_foreign_tables_alone() {
        let nft = FakeNft::new();
        nft.insert_foreign_table("inet", "other");
        nft.apply(&ruleset()).await.unwrap();
        nft.apply(&ruleset()).await.unwrap();
        assert_eq!(nft.applied().len(), 2);
        assert_eq!(nft.current("banger"), Some(ruleset()));
        nft.delete_table("banger").await.unwrap();
        nft.delete_table("banger").await.unwrap();
        assert_eq!(
            nft.list_tables().await.unwrap(),
            vec![("inet".to_string(), "other".to_string())]
        );
        assert_eq!(nft.list_table("banger").await.unwrap(), None);
        nft.fail_next(NftOp::Apply);
        assert!(matches!(
            nft.apply(&ruleset()).await,
            Err(NftError::Injected { op: NftOp::Apply })
        ));
        assert_eq!(nft.applied().len(), 2, "a failed apply is not recorded");
    }
}

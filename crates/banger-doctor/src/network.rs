//! Network checks: tun, IPv4 forwarding, nftables, banger's bridge, vhost devices, whether
//! the VM subnet collides with a route the host already has, and whether a firewall's forward
//! chain would drop the VMs' traffic.
//!
//! All of these look at the namespace doctor runs in (the host's). When banger is configured to
//! keep its VMs in a network namespace, the bridge and subnet checks say so instead of judging
//! the host namespace's routes.

use std::path::{Path, PathBuf};

use crate::first_line;
use crate::probe::HostProbe;
use crate::report::Check;
use crate::route::{overlapping_routes, parse_route_table, Ipv4Net, Route};
use crate::DoctorInputs;

const DEV_TUN: &str = "/dev/net/tun";
const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";
const ROUTE_TABLE: &str = "/proc/net/route";
const SYS_CLASS_NET: &str = "/sys/class/net";

/// `/dev/net/tun` must open: every VM NIC is a tap.
pub(crate) fn tun_check(probe: &dyn HostProbe) -> Check {
    const NAME: &str = "tun";
    match probe.can_open_rw(Path::new(DEV_TUN)) {
        Ok(()) => Check::pass(NAME, "/dev/net/tun opens read-write"),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Check::fail(
            NAME,
            "/dev/net/tun is absent: VMs cannot get tap devices",
            "`sudo modprobe tun` (and add `tun` to /etc/modules-load.d/ to keep it)",
        ),
        Err(err) if err.kind() == std::io::ErrorKind::PermissionDenied => Check::warn(
            NAME,
            "/dev/net/tun exists but this user cannot open it read-write; bangerd runs as root",
            "run `sudo banger doctor` to check as root; in a container, pass /dev/net/tun through",
        ),
        Err(err) => Check::fail(
            NAME,
            format!("/dev/net/tun cannot be opened read-write ({err})"),
            "check `ls -l /dev/net/tun` (mode 0666 char device 10,200) and `sudo modprobe tun`",
        ),
    }
}

/// IPv4 forwarding is what lets VMs reach beyond the host through NAT.
pub(crate) fn ip_forward_check(probe: &dyn HostProbe, inputs: &DoctorInputs) -> Check {
    const NAME: &str = "ip_forward";
    let scope = match &inputs.netns {
        Some(netns) => format!(" in the host namespace (VMs live in netns {netns})"),
        None => String::new(),
    };
    match probe.read_to_string(Path::new(IP_FORWARD)) {
        Ok(text) if text.trim() == "1" => {
            Check::pass(NAME, format!("IPv4 forwarding is on{scope}"))
        }
        Ok(text) if text.trim() == "0" => Check::warn(
            NAME,
            format!("IPv4 forwarding is off{scope}; banger enables it when a VM needs NAT"),
            "to turn it on now: `sudo sysctl -w net.ipv4.ip_forward=1`; to keep it: \
             `echo net.ipv4.ip_forward=1 | sudo tee /etc/sysctl.d/99-banger.conf`",
        ),
        Ok(text) => Check::warn(
            NAME,
            format!("{IP_FORWARD} holds {:?}, expected 0 or 1", text.trim()),
            "`sudo sysctl -w net.ipv4.ip_forward=1`",
        ),
        Err(err) => Check::warn(
            NAME,
            format!("could not read {IP_FORWARD} ({err})"),
            "check that /proc is mounted; then `sudo sysctl -w net.ipv4.ip_forward=1`",
        ),
    }
}

/// banger's NAT and forwarding rules live in an nftables table it owns.
pub(crate) fn nftables_check(probe: &dyn HostProbe) -> Check {
    const NAME: &str = "nftables";
    let Some(nft) = probe.find_in_path("nft") else {
        return Check::fail(
            NAME,
            "nft not found on PATH: banger cannot set up NAT for VMs",
            "`sudo apt-get install nftables`",
        );
    };
    match probe.command_output(&nft, &["--version"]) {
        Ok(output) => {
            let version = first_line(&output);
            if version.is_empty() {
                Check::pass(NAME, format!("found at {}", nft.display()))
            } else {
                Check::pass(NAME, format!("{version} ({})", nft.display()))
            }
        }
        Err(err) => Check::warn(
            NAME,
            format!("{} found, but `--version` failed: {err}", nft.display()),
            format!("check that `{} --version` runs", nft.display()),
        ),
    }
}

/// Information about banger's bridge: absent is normal (bangerd creates it); a non-bridge link
/// with that name is in the way.
pub(crate) fn bridge_check(probe: &dyn HostProbe, inputs: &DoctorInputs) -> Check {
    const NAME: &str = "bridge";
    let bridge = &inputs.bridge;
    if let Some(netns) = &inputs.netns {
        return Check::pass(
            NAME,
            format!("bridge {bridge} lives in netns {netns}; bangerd creates it there"),
        );
    }
    let link: PathBuf = Path::new(SYS_CLASS_NET).join(bridge);
    if !probe.exists(&link) {
        return Check::pass(
            NAME,
            format!("{bridge} does not exist yet; bangerd creates it"),
        );
    }
    if probe.exists(&link.join("bridge")) {
        Check::pass(NAME, format!("{bridge} exists and is a bridge"))
    } else {
        Check::warn(
            NAME,
            format!("{bridge} exists but is not a bridge"),
            format!(
                "set bridge to an unused name in the config, or remove the link: \
                 `sudo ip link delete {bridge}`"
            ),
        )
    }
}

/// Information only: banger needs neither vhost device (vsock goes through firecracker or
/// vhost-device-vsock in user space, networking through plain taps).
pub(crate) fn vhost_check(probe: &dyn HostProbe) -> Check {
    let state = |path: &str| {
        if probe.exists(Path::new(path)) {
            format!("{path} present")
        } else {
            format!("{path} absent")
        }
    };
    Check::pass(
        "vhost",
        format!(
            "{}, {} (banger needs neither)",
            state("/dev/vhost-vsock"),
            state("/dev/vhost-net")
        ),
    )
}

/// Warns when the VM subnet overlaps a route of the host namespace (other than banger's own
/// bridge): traffic to those addresses would go to the wrong place.
pub(crate) fn subnet_check(probe: &dyn HostProbe, inputs: &DoctorInputs) -> Check {
    const NAME: &str = "subnet";
    let (addr, prefix) = inputs.subnet;
    let subnet = match Ipv4Net::new(addr, prefix) {
        Ok(subnet) => subnet,
        Err(err) => {
            return Check::fail(
                NAME,
                format!("subnet {addr}/{prefix} is not a valid IPv4 network ({err})"),
                "set subnet to a private range such as \"10.213.0.0/24\" in the config",
            )
        }
    };
    if let Some(netns) = &inputs.netns {
        return Check::pass(
            NAME,
            format!(
                "VMs live in netns {netns}: routes of the host namespace, where doctor runs, \
                 do not apply to {subnet}"
            ),
        );
    }
    let routes = match probe
        .read_to_string(Path::new(ROUTE_TABLE))
        .map_err(|err| err.to_string())
        .and_then(|text| parse_route_table(&text).map_err(|err| err.to_string()))
    {
        Ok(routes) => routes,
        Err(err) => {
            return Check::warn(
                NAME,
                format!("could not read the route table {ROUTE_TABLE} ({err})"),
                format!("compare `ip route` with subnet {subnet} by hand"),
            )
        }
    };
    let overlaps = overlapping_routes(subnet, &routes, &inputs.bridge);
    if overlaps.is_empty() {
        let checked = routes.iter().filter(|route| !route.is_default()).count();
        return Check::pass(
            NAME,
            format!("{subnet} overlaps no host route ({checked} checked)"),
        );
    }
    let listed: Vec<String> = overlaps
        .iter()
        .map(|route| format!("{} on {}", route.destination, route.iface))
        .collect();
    let suggestion = match free_subnet_like(subnet, &routes) {
        Some(free) => format!("set subnet = \"{free}\" in the config (no host route uses it)"),
        None => {
            "set subnet in the config to a range no host route uses (see `ip route`)".to_owned()
        }
    };
    Check::warn(
        NAME,
        format!("{subnet} overlaps host route {}", listed.join(", ")),
        suggestion,
    )
}

/// A forward chain that drops by default cuts VMs off from everything beyond the host: an
/// accept in banger's table does not override a drop in another table. iptables' `FORWARD`
/// (Docker, ufw) is opened by bangerd when `network.host_forward_accept` is on; native nftables
/// base chains (firewalld, a hand-written table) are only reported.
pub(crate) fn forward_firewall_check(probe: &dyn HostProbe, inputs: &DoctorInputs) -> Check {
    const NAME: &str = "forward firewall";
    let bridge = &inputs.bridge;
    if let Some(netns) = &inputs.netns {
        return Check::pass(
            NAME,
            format!(
                "VMs are forwarded inside netns {netns} (bangerd opens a dropping FORWARD there); \
                 this namespace's FORWARD matters only if you route that namespace through it"
            ),
        );
    }
    let mut notes = Vec::new();
    if let Some(iptables) = probe.find_in_path("iptables") {
        match probe.command_output(&iptables, &["-w", "-S", "FORWARD"]) {
            Ok(listing) if iptables_forward_drops(&listing) => {
                if !inputs.host_forward_accept {
                    return Check::warn(
                        NAME,
                        "iptables FORWARD drops by default (Docker, ufw, a final REJECT) and \
                         network.host_forward_accept = false: VMs cannot reach beyond the host",
                        format!(
                            "set network.host_forward_accept = true, or add \
                             `iptables -I DOCKER-USER -i {bridge} -j ACCEPT` and \
                             `iptables -I DOCKER-USER -o {bridge} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT` \
                             (FORWARD instead of DOCKER-USER without Docker)"
                        ),
                    );
                }
                notes.push(format!(
                    "iptables FORWARD drops by default (Docker, ufw, a final REJECT); bangerd adds two accepts \
                     for {bridge} (comment banger:{bridge}) while VMs run"
                ));
            }
            Ok(_) => {}
            Err(err) => {
                return Check::warn(
                    NAME,
                    format!("could not list iptables' FORWARD chain ({err})"),
                    "run `sudo banger doctor` to check as root",
                )
            }
        }
    }
    if let Some(nft) = probe.find_in_path("nft") {
        if let Ok(listing) = probe.command_output(&nft, &["-j", "list", "ruleset"]) {
            let dropping = dropping_forward_chains(&listing);
            if !dropping.is_empty() {
                return Check::warn(
                    NAME,
                    format!(
                        "{} drop(s) forwarded packets by default; VMs cannot reach beyond the host",
                        dropping.join(", ")
                    ),
                    format!(
                        "add `iifname {bridge} accept` and `oifname {bridge} ct state established,related accept` \
                         to that chain (banger changes no firewall but iptables' FORWARD)"
                    ),
                );
            }
        }
    }
    if notes.is_empty() {
        Check::pass(NAME, "no forward chain drops by default")
    } else {
        Check::pass(NAME, notes.join("; "))
    }
}

/// `iptables -S FORWARD` says `-P FORWARD DROP`, or its last rule drops or rejects everything
/// (the same test bangerd makes; this crate does not depend on banger-host).
fn iptables_forward_drops(listing: &str) -> bool {
    let lines: Vec<Vec<&str>> = listing
        .lines()
        .map(|line| line.split_whitespace().collect())
        .collect();
    let catch_all = lines
        .iter()
        .rev()
        .find(|words| words.first() == Some(&"-A"))
        .is_some_and(|words| {
            matches!(words.as_slice(), ["-A", "FORWARD", "-j", "DROP"])
                || matches!(words.as_slice(), ["-A", "FORWARD", "-j", "REJECT", ..])
        });
    catch_all
        || lines
            .iter()
            .any(|w| w.as_slice() == ["-P", "FORWARD", "DROP"])
}

/// From `nft -j list ruleset`: the forward-hook base chains that drop what nothing accepted —
/// a drop policy, or a last rule that drops or rejects unconditionally (firewalld ends its
/// `filter_FORWARD` with `reject`) — as `FAMILY TABLE CHAIN`, except iptables-nft's own
/// `ip filter FORWARD` (read through iptables) and banger's table.
fn dropping_forward_chains(listing: &str) -> Vec<String> {
    #[derive(serde::Deserialize)]
    struct Listing {
        nftables: Vec<serde_json::Value>,
    }
    let Ok(listing) = serde_json::from_str::<Listing>(listing) else {
        return Vec::new();
    };
    let key = |item: &serde_json::Value| {
        (
            item["family"].as_str().unwrap_or("").to_string(),
            item["table"].as_str().unwrap_or("").to_string(),
            item["name"]
                .as_str()
                .or(item["chain"].as_str())
                .unwrap_or("")
                .to_string(),
        )
    };
    // The last rule of each chain, in listing order.
    let mut last_rule = std::collections::HashMap::new();
    for rule in listing.nftables.iter().filter_map(|item| item.get("rule")) {
        last_rule.insert(key(rule), rule.clone());
    }
    let catch_all = |rule: &serde_json::Value| {
        let Some(expr) = rule["expr"].as_array() else {
            return false;
        };
        let verdict = expr.iter().all(|e| {
            e.get("counter").is_some() || e.get("drop").is_some() || e.get("reject").is_some()
        });
        verdict
            && expr
                .iter()
                .any(|e| e.get("drop").is_some() || e.get("reject").is_some())
    };
    listing
        .nftables
        .iter()
        .filter_map(|item| item.get("chain"))
        .filter(|chain| chain["hook"] == "forward")
        .filter(|chain| {
            chain["policy"] == "drop" || last_rule.get(&key(chain)).is_some_and(catch_all)
        })
        .filter_map(|chain| {
            let (family, table, name) = key(chain);
            let iptables =
                matches!(family.as_str(), "ip" | "ip6") && table == "filter" && name == "FORWARD";
            (!iptables && table != "banger").then(|| format!("{family} {table} {name}"))
        })
        .collect()
}

/// A network with `subnet`'s prefix length in 10.200.0.0–10.254.255.255 that no non-default
/// route overlaps, for the fix hint; `None` for prefixes shorter than /16.
fn free_subnet_like(subnet: Ipv4Net, routes: &[Route]) -> Option<Ipv4Net> {
    if subnet.prefix() < 16 {
        return None;
    }
    (200u8..=254)
        .filter_map(|second| {
            Ipv4Net::new(std::net::Ipv4Addr::new(10, second, 0, 0), subnet.prefix()).ok()
        })
        .find(|candidate| {
            routes
                .iter()
                .filter(|route| !route.is_default())
                .all(|route| !route.destination.overlaps(*candidate))
        })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap: a panic is the failure report
mod tests {
    use super::*;
    use crate::report::Status;
    use crate::FakeHost;
    use std::net::Ipv4Addr;

    fn inputs(subnet: (Ipv4Addr, u8), netns: Option<&str>) -> DoctorInputs {
        DoctorInputs {
            state_dir: "/var/lib/banger".into(),
            runtime_dir: "/run/banger".into(),
            vmm: "auto".into(),
            firecracker_bin: None,
            qemu_bin: None,
            vhost_vsock_bin: None,
            subnet,
            bridge: "banger0".into(),
            netns: netns.map(str::to_owned),
            host_forward_accept: true,
        }
    }

    const ROUTES: &str = "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\n\
                          eth0\t00000000\t0100A8C0\t0003\t0\t0\t0\t00000000\n\
                          eth0\t0000A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\n\
                          banger0\t00001EAC\t00000000\t0001\t0\t0\t0\t00FFFFFF\n";

    #[test]
    fn subnet_on_banger_s_own_bridge_is_not_a_conflict() {
        let host = FakeHost::new().with_file(ROUTE_TABLE, ROUTES);
        let check = subnet_check(&host, &inputs((Ipv4Addr::new(172, 30, 0, 0), 24), None));
        assert_eq!(check.status, Status::Pass, "{check:?}");
    }

    #[test]
    fn subnet_inside_a_host_route_warns_and_suggests_a_free_one() {
        let host = FakeHost::new().with_file(ROUTE_TABLE, ROUTES);
        let check = subnet_check(&host, &inputs((Ipv4Addr::new(192, 168, 0, 128), 25), None));
        assert_eq!(check.status, Status::Warn);
        assert_eq!(
            check.summary,
            "192.168.0.128/25 overlaps host route 192.168.0.0/24 on eth0"
        );
        assert_eq!(
            check.hint.as_deref(),
            Some("set subnet = \"10.200.0.0/25\" in the config (no host route uses it)")
        );
    }

    #[test]
    fn subnet_with_a_netns_is_not_judged_by_host_routes() {
        let host = FakeHost::new().with_file(ROUTE_TABLE, ROUTES);
        let check = subnet_check(
            &host,
            &inputs((Ipv4Addr::new(192, 168, 0, 0), 24), Some("banger")),
        );
        assert_eq!(check.status, Status::Pass);
        assert!(check.summary.contains("netns banger"));
        assert!(!host.asked().iter().any(|q| q.contains(ROUTE_TABLE)));
    }

    #[test]
    fn an_unreadable_route_table_warns_instead_of_passing() {
        let host = FakeHost::new().with_file(ROUTE_TABLE, "eth0 nonsense\n");
        let check = subnet_check(&host, &inputs((Ipv4Addr::new(10, 0, 0, 0), 24), None));
        assert_eq!(check.status, Status::Warn);
    }

    #[test]
    fn an_invalid_subnet_fails() {
        let check = subnet_check(
            &FakeHost::new(),
            &inputs((Ipv4Addr::new(10, 0, 0, 0), 40), None),
        );
        assert_eq!(check.status, Status::Fail);
    }

    #[test]
    fn ip_forward_off_warns_with_the_sysctl_to_run() {
        let host = FakeHost::new().with_file(IP_FORWARD, "0\n");
        let check = ip_forward_check(&host, &inputs((Ipv4Addr::new(10, 0, 0, 0), 24), None));
        assert_eq!(check.status, Status::Warn);
        assert!(check.hint.unwrap().contains("net.ipv4.ip_forward=1"));
    }

    #[test]
    fn a_link_named_like_the_bridge_that_is_not_a_bridge_warns() {
        let host = FakeHost::new().with_path("/sys/class/net/banger0");
        let check = bridge_check(&host, &inputs((Ipv4Addr::new(10, 0, 0, 0), 24), None));
        assert_eq!(check.status, Status::Warn);
        let host = FakeHost::new().with_path("/sys/class/net/banger0/bridge");
        let check = bridge_check(&host, &inputs((Ipv4Addr::new(10, 0, 0, 0), 24), None));
        assert_eq!(check.status, Status::Pass);
    }

    const IPTABLES: &str = "/usr/sbin/iptables";
    const NFT: &str = "/usr/sbin/nft";

    fn firewall_host(forward: &str, chains: &str) -> FakeHost {
        FakeHost::new()
            .with_binary("iptables", IPTABLES, "iptables v1.8.9 (nf_tables)")
            .with_binary("nft", NFT, "nftables v1.0.6")
            .with_output(IPTABLES, &["-w", "-S", "FORWARD"], Ok(forward.into()))
            .with_output(NFT, &["-j", "list", "ruleset"], Ok(chains.into()))
    }

    const NO_CHAINS: &str = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}}]}"#;

    #[test]
    fn a_docker_style_forward_drop_passes_when_bangerd_opens_it_and_warns_otherwise() {
        let host = firewall_host("-P FORWARD DROP\n-A FORWARD -j DOCKER-USER\n", NO_CHAINS);
        let mut given = inputs((Ipv4Addr::new(172, 30, 0, 0), 24), None);
        let check = forward_firewall_check(&host, &given);
        assert_eq!(check.status, Status::Pass, "{check:?}");
        assert!(check.summary.contains("banger:banger0"), "{check:?}");
        given.host_forward_accept = false;
        let check = forward_firewall_check(&host, &given);
        assert_eq!(check.status, Status::Warn, "{check:?}");
        assert!(check
            .hint
            .as_deref()
            .unwrap()
            .contains("DOCKER-USER -i banger0"));
    }

    #[test]
    fn a_final_catch_all_reject_counts_like_a_drop_policy() {
        assert!(iptables_forward_drops(
            "-P FORWARD ACCEPT\n-A FORWARD -j REJECT --reject-with icmp-host-prohibited\n"
        ));
        assert!(!iptables_forward_drops(
            "-P FORWARD ACCEPT\n-A FORWARD -o eth9 -j REJECT\n"
        ));
    }

    #[test]
    fn a_native_nft_chain_that_drops_is_named() {
        let chains = r#"{"nftables": [
            {"chain": {"family": "ip", "table": "filter", "name": "FORWARD", "hook": "forward", "prio": 0, "policy": "drop"}},
            {"chain": {"family": "inet", "table": "firewalld", "name": "filter_FORWARD", "hook": "forward", "prio": 10, "policy": "accept"}},
            {"rule": {"family": "inet", "table": "firewalld", "chain": "filter_FORWARD", "expr": [{"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["established", "related"]}}, {"accept": null}]}},
            {"rule": {"family": "inet", "table": "firewalld", "chain": "filter_FORWARD", "expr": [{"reject": {"type": "icmpx", "expr": "admin-prohibited"}}]}},
            {"chain": {"family": "inet", "table": "quiet", "name": "forward", "hook": "forward", "prio": 0, "policy": "accept"}},
            {"rule": {"family": "inet", "table": "quiet", "chain": "forward", "expr": [{"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "eth9"}}, {"drop": null}]}},
            {"chain": {"family": "inet", "table": "banger", "name": "forward", "hook": "forward", "prio": -1, "policy": "accept"}},
            {"chain": {"family": "inet", "table": "mine", "name": "input", "hook": "input", "prio": 0, "policy": "drop"}}
        ]}"#;
        let host = firewall_host("-P FORWARD ACCEPT\n", chains);
        let check =
            forward_firewall_check(&host, &inputs((Ipv4Addr::new(172, 30, 0, 0), 24), None));
        assert_eq!(check.status, Status::Warn, "{check:?}");
        assert!(
            check
                .summary
                .starts_with("inet firewalld filter_FORWARD drop"),
            "{check:?}"
        );
        assert!(check
            .hint
            .as_deref()
            .unwrap()
            .contains("iifname banger0 accept"));
        assert!(
            !check.summary.contains("quiet"),
            "a conditional drop is not a catch-all: {check:?}"
        );
    }

    #[test]
    fn an_accepting_host_or_a_netns_passes_and_an_unreadable_iptables_warns() {
        let host = firewall_host("-P FORWARD ACCEPT\n", NO_CHAINS);
        let subnet = (Ipv4Addr::new(172, 30, 0, 0), 24);
        assert_eq!(
            forward_firewall_check(&host, &inputs(subnet, None)).status,
            Status::Pass
        );
        let check = forward_firewall_check(&FakeHost::new(), &inputs(subnet, Some("vmns")));
        assert!(check.summary.contains("netns vmns"), "{check:?}");
        let denied = FakeHost::new()
            .with_binary("iptables", IPTABLES, "")
            .with_output(
                IPTABLES,
                &["-w", "-S", "FORWARD"],
                Err(std::io::Error::from(std::io::ErrorKind::PermissionDenied)),
            );
        let check = forward_firewall_check(&denied, &inputs(subnet, None));
        assert_eq!(check.status, Status::Warn, "{check:?}");
        assert!(check.hint.as_deref().unwrap().contains("sudo"));
    }
}

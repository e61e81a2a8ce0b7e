//! Network checks: tun, IPv4 forwarding, nftables, banger's bridge, vhost devices, and whether
//! the VM subnet collides with a route the host already has.
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
}

//! `RealLinks` against the real kernel, inside a network namespace each test creates and deletes.
//!
//! These need root: run with `cargo test -p banger-host -- --include-ignored` as root.
#![allow(clippy::unwrap_used)] // In tests a panic is the failure report.

mod netns_support;

use std::net::Ipv4Addr;

use banger_host::links::{delete_netns, ensure_netns, LinkError, LinkInfo, Links, RealLinks};
use netns_support::{run, thread_netns, TestNetns};

const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);

fn links_in(netns: &TestNetns) -> RealLinks {
    RealLinks::new(Some(netns.name().to_string()))
}

fn find<'a>(links: &'a [LinkInfo], name: &str) -> Option<&'a LinkInfo> {
    links.iter().find(|link| link.name == name)
}

#[tokio::test]
#[ignore = "needs root and netns; run with --include-ignored"]
async fn bridge_and_taps_are_created_in_the_namespace_only() {
    let netns = TestNetns::create();
    let links = links_in(&netns);
    let thread_ns_before = thread_netns();
    let root_before = RealLinks::new(None).list_links().await.unwrap();

    links.ensure_bridge("br-t", GATEWAY, 24).await.unwrap();
    links.ensure_bridge("br-t", GATEWAY, 24).await.unwrap();
    for tap in ["tap-t0", "tap-t1", "tap-t2"] {
        links.create_tap(tap, "br-t").await.unwrap();
    }

    let listed = links.list_links().await.unwrap();
    let bridges: Vec<_> = listed
        .iter()
        .filter(|l| l.kind.as_deref() == Some("bridge"))
        .collect();
    assert_eq!(
        bridges.len(),
        1,
        "ensure_bridge twice makes one bridge: {listed:?}"
    );
    assert!(bridges[0].up, "bridge is up");
    for tap in ["tap-t0", "tap-t1", "tap-t2"] {
        let info = find(&listed, tap).unwrap_or_else(|| panic!("{tap} missing from {listed:?}"));
        assert_eq!(info.kind.as_deref(), Some("tun"), "{info:?}");
        assert_eq!(info.master.as_deref(), Some("br-t"), "{info:?}");
        assert!(info.up, "{info:?}");
    }
    let addresses = netns.exec("ip", &["-4", "-o", "addr", "show", "dev", "br-t"]);
    assert_eq!(
        addresses.matches("10.77.0.1/24").count(),
        1,
        "one gateway address: {addresses}"
    );

    // The kernel's own view of a tap: the flags Firecracker and QEMU open it with, persistent.
    let details = netns.exec("ip", &["-d", "link", "show", "tap-t0"]);
    assert!(
        details.contains("tun type tap pi off vnet_hdr on persist on"),
        "{details}"
    );

    // Nothing leaked into the root namespace, and the test's thread never changed namespace.
    let root_after = RealLinks::new(None).list_links().await.unwrap();
    assert_eq!(root_before, root_after);
    assert!(find(&root_after, "br-t").is_none());
    assert_eq!(thread_netns(), thread_ns_before);
}

#[tokio::test]
#[ignore = "needs root and netns; run with --include-ignored"]
async fn creating_an_existing_tap_is_an_exists_error() {
    let netns = TestNetns::create();
    let links = links_in(&netns);
    links.ensure_bridge("br-t", GATEWAY, 24).await.unwrap();
    links.create_tap("tap-t0", "br-t").await.unwrap();

    let err = links.create_tap("tap-t0", "br-t").await.unwrap_err();
    assert!(
        matches!(&err, LinkError::Exists { name } if name == "tap-t0"),
        "{err:?}"
    );
    // A non-tap device of that name counts too.
    let err = links.create_tap("br-t", "br-t").await.unwrap_err();
    assert!(matches!(err, LinkError::Exists { .. }), "{err:?}");
    let listed = links.list_links().await.unwrap();
    assert_eq!(
        find(&listed, "tap-t0").unwrap().master.as_deref(),
        Some("br-t"),
        "the original is untouched"
    );
}

#[tokio::test]
#[ignore = "needs root and netns; run with --include-ignored"]
async fn create_tap_on_a_missing_or_non_bridge_fails_and_leaves_no_tap() {
    let netns = TestNetns::create();
    let links = links_in(&netns);
    let err = links.create_tap("tap-t0", "br-missing").await.unwrap_err();
    assert!(
        matches!(&err, LinkError::NotFound { name } if name == "br-missing"),
        "{err:?}"
    );
    let err = links.create_tap("tap-t0", "lo").await.unwrap_err();
    assert!(
        matches!(&err, LinkError::NotABridge { name, .. } if name == "lo"),
        "{err:?}"
    );
    assert!(find(&links.list_links().await.unwrap(), "tap-t0").is_none());
}

// On the daemon's runtime flavour: the netlink socket is made on a namespace thread and driven by
// whichever worker polls it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root and netns; run with --include-ignored"]
async fn delete_link_is_idempotent() {
    let netns = TestNetns::create();
    let links = links_in(&netns);
    links.ensure_bridge("br-t", GATEWAY, 24).await.unwrap();
    links.create_tap("tap-t0", "br-t").await.unwrap();

    links.delete_link("tap-t0").await.unwrap();
    links.delete_link("tap-t0").await.unwrap();
    links.delete_link("never-existed").await.unwrap();
    let listed = links.list_links().await.unwrap();
    assert!(find(&listed, "tap-t0").is_none(), "{listed:?}");
    assert!(find(&listed, "br-t").is_some(), "{listed:?}");
    // The name is free again.
    links.create_tap("tap-t0", "br-t").await.unwrap();
}

#[tokio::test]
#[ignore = "needs root and netns; run with --include-ignored"]
async fn ensure_bridge_refuses_a_link_that_is_not_a_bridge() {
    let netns = TestNetns::create();
    let links = links_in(&netns);
    netns.exec("ip", &["tuntap", "add", "dev", "tap-t", "mode", "tap"]);
    let err = links.ensure_bridge("tap-t", GATEWAY, 24).await.unwrap_err();
    assert!(
        matches!(&err, LinkError::NotABridge { kind: Some(kind), .. } if kind == "tun"),
        "{err:?}"
    );
    let lo = links.ensure_bridge("lo", GATEWAY, 24).await.unwrap_err();
    assert!(
        matches!(lo, LinkError::NotABridge { kind: None, .. }),
        "{lo:?}"
    );
}

#[tokio::test]
#[ignore = "needs root and netns; run with --include-ignored"]
async fn ensure_bridge_adds_a_missing_address_and_brings_the_bridge_up() {
    let netns = TestNetns::create();
    let links = links_in(&netns);
    netns.exec("ip", &["link", "add", "br-t", "type", "bridge"]);
    links.ensure_bridge("br-t", GATEWAY, 24).await.unwrap();
    let info = find(&links.list_links().await.unwrap(), "br-t")
        .cloned()
        .unwrap();
    assert!(info.up);
    let addresses = netns.exec("ip", &["-4", "-o", "addr", "show", "dev", "br-t"]);
    assert!(addresses.contains("10.77.0.1/24"), "{addresses}");
}

#[tokio::test]
#[ignore = "needs root and netns; run with --include-ignored"]
async fn the_bridge_mac_is_pinned_and_does_not_follow_its_ports() {
    let netns = TestNetns::create();
    let links = links_in(&netns);
    // An existing bridge with a kernel-chosen MAC gets the pinned one too.
    netns.exec("ip", &["link", "add", "br-t", "type", "bridge"]);
    links.ensure_bridge("br-t", GATEWAY, 24).await.unwrap();
    let mac = || {
        netns
            .exec("cat", &["/sys/class/net/br-t/address"])
            .trim()
            .to_string()
    };
    assert_eq!(mac(), "06:00:0a:4d:00:01");
    // Ports with lower MACs come and go; a bridge with an unassigned MAC would take theirs.
    for tap in ["tap-t0", "tap-t1"] {
        links.create_tap(tap, "br-t").await.unwrap();
    }
    netns.exec(
        "ip",
        &["link", "set", "tap-t0", "address", "02:00:00:00:00:01"],
    );
    links.delete_link("tap-t1").await.unwrap();
    assert_eq!(mac(), "06:00:0a:4d:00:01");
    links.delete_link("tap-t0").await.unwrap();
    assert_eq!(mac(), "06:00:0a:4d:00:01");

    // A bridge holding a non-tap port (a LAN bridge with the NIC) keeps its own MAC.
    netns.exec("ip", &["link", "add", "br-lan", "type", "bridge"]);
    netns.exec(
        "ip",
        &[
            "link", "add", "nic0", "type", "veth", "peer", "name", "nic1",
        ],
    );
    netns.exec("ip", &["link", "set", "nic0", "master", "br-lan"]);
    let lan_mac = netns
        .exec("cat", &["/sys/class/net/br-lan/address"])
        .trim()
        .to_string();
    links
        .ensure_bridge("br-lan", Ipv4Addr::new(10, 78, 0, 1), 24)
        .await
        .unwrap();
    assert_eq!(
        netns.exec("cat", &["/sys/class/net/br-lan/address"]).trim(),
        lan_mac
    );
}

#[test]
#[ignore = "needs root and netns; run with --include-ignored"]
fn ip_forward_is_per_namespace() {
    let netns = TestNetns::create();
    let links = links_in(&netns);
    let root_path = "/proc/sys/net/ipv4/ip_forward";
    let root_before = std::fs::read_to_string(root_path).unwrap();

    links.set_ip_forward(true).unwrap();
    assert!(links.ip_forward().unwrap());
    assert_eq!(
        netns.exec("cat", &[root_path]).trim(),
        "1",
        "the namespace's own value changed"
    );
    assert_eq!(
        std::fs::read_to_string(root_path).unwrap(),
        root_before,
        "root namespace untouched"
    );
    links.set_ip_forward(false).unwrap();
    assert!(!links.ip_forward().unwrap());
    assert_eq!(
        std::fs::read_to_string(root_path).unwrap(),
        root_before,
        "root namespace untouched"
    );
}

#[tokio::test]
#[ignore = "needs root and netns; run with --include-ignored"]
async fn ensure_and_delete_netns_are_idempotent() {
    let name = format!("banger-t-ens-{:x}", std::process::id());
    let _cleanup = TestNetns::cleanup_only(name.clone());
    let path = std::path::Path::new("/run/netns").join(&name);
    ensure_netns(&name).await.unwrap();
    ensure_netns(&name).await.unwrap();
    assert!(path.exists());
    let listing = run("ip", &["netns", "list"]);
    assert!(listing.contains(&name), "{listing}");
    delete_netns(&name).await.unwrap();
    delete_netns(&name).await.unwrap();
    assert!(!path.exists());
}

#[tokio::test]
#[ignore = "needs root and netns; run with --include-ignored"]
async fn link_counters_count_real_traffic_and_a_missing_link_is_none() {
    let netns = TestNetns::create();
    let peer = TestNetns::create();
    let links = links_in(&netns);
    netns.exec(
        "ip",
        &[
            "link",
            "add",
            "v0",
            "type",
            "veth",
            "peer",
            "name",
            "v1",
            "netns",
            peer.name(),
        ],
    );
    netns.exec("ip", &["addr", "add", "10.77.9.1/24", "dev", "v0"]);
    netns.exec("ip", &["link", "set", "v0", "up"]);
    peer.exec("ip", &["addr", "add", "10.77.9.2/24", "dev", "v1"]);
    peer.exec("ip", &["link", "set", "v1", "up"]);
    let before = links.link_counters("v0").await.unwrap().unwrap();
    // Three UDP datagrams (plus ARP) in, ARP and ICMP port-unreachable replies out.
    for _ in 0..3 {
        peer.exec("bash", &["-c", "echo counted > /dev/udp/10.77.9.1/9"]);
    }
    let after = links.link_counters("v0").await.unwrap().unwrap();
    assert!(
        after.rx_packets >= before.rx_packets + 3 && after.tx_packets > before.tx_packets,
        "{before:?} -> {after:?}"
    );
    assert!(after.rx_bytes >= before.rx_bytes + 3 * 42, "{after:?}");
    assert_eq!(links.link_counters("nothere0").await.unwrap(), None);
}

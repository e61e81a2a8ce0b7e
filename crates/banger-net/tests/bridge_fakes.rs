//! `BridgeNetwork` over the recording fakes of links and nftables: setup on first attach only,
//! the warm pool, rollback on injected failures, detach, reconcile and sweep, and the host
//! FORWARD accepts following banger's table.
#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use banger_api::{DesiredState, ImageId, PortForward, PortProto, VmId, VmName, VmState};
use banger_core::backends::{RunningVm, VmNetwork};
use banger_host::hostfw::{FakeHostForward, DOCKER_USER};
use banger_host::links::{FakeLinks, LinkCall, LinkCounters, LinkOp, Links};
use banger_host::nft::{FakeNft, Nft, NftOp};
use banger_net::{BridgeNetwork, NetworkSettings};
use banger_store::records::VmRecord;

const BRIDGE: &str = "br-test";

fn settings(pool: usize) -> NetworkSettings {
    NetworkSettings {
        bridge: BRIDGE.into(),
        subnet: (Ipv4Addr::new(172, 30, 0, 0), 24),
        domain: "vm".into(),
        netns: None,
        tap_pool_size: pool,
        tap_prefix: "bgt".into(),
        table: "banger".into(),
        publish_address: IpAddr::V4(Ipv4Addr::LOCALHOST),
        dns: None,
        host_forward_accept: true,
    }
}

fn vm(name: &str, last_octet: u8) -> VmRecord {
    let now = chrono::Utc::now();
    let ip = Ipv4Addr::new(172, 30, 0, last_octet);
    VmRecord {
        id: VmId::new(),
        name: VmName::parse(name).unwrap(),
        image_id: ImageId::new(),
        vcpus: 1,
        memory_mib: 256,
        disk_size_mib: 256,
        state: VmState::Creating,
        desired_state: DesiredState::Running,
        ip: Some(ip),
        mac: Some(format!("06:00:ac:1e:00:{last_octet:02x}")),
        vsock_cid: Some(3),
        vm_dir: "/nonexistent".into(),
        last_error: None,
        stage_timings: Vec::new(),
        root_clone_method: None,
        created_at: now,
        updated_at: now,
    }
}

struct Rig {
    links: Arc<FakeLinks>,
    nft: Arc<FakeNft>,
    host_forward: Arc<FakeHostForward>,
    net: BridgeNetwork,
}

fn rig(pool: usize) -> Rig {
    rig_with(settings(pool), FakeHostForward::new())
}

fn rig_with(settings: NetworkSettings, host_forward: FakeHostForward) -> Rig {
    let links = Arc::new(FakeLinks::new());
    let nft = Arc::new(FakeNft::new());
    let host_forward = Arc::new(host_forward);
    let net =
        BridgeNetwork::new(settings, links.clone(), nft.clone(), host_forward.clone()).unwrap();
    Rig {
        links,
        nft,
        host_forward,
        net,
    }
}

fn taps(links: &FakeLinks) -> Vec<String> {
    links
        .links()
        .into_iter()
        .filter(|l| l.kind.as_deref() == Some("tun"))
        .map(|l| l.name)
        .collect()
}

#[tokio::test]
async fn nothing_is_created_before_the_first_attach() {
    let r = rig(2);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(r.links.calls().is_empty(), "{:?}", r.links.calls());
    assert!(r.nft.applied().is_empty());
}

#[tokio::test]
async fn first_attach_sets_up_bridge_forwarding_rules_and_gives_kernel_args() {
    let r = rig(2);
    let a = vm("alpha", 2);
    let att = r.net.attach(&a).await.unwrap().unwrap();
    assert_eq!(
        r.links.calls()[0],
        LinkCall::EnsureBridge {
            name: BRIDGE.into(),
            gateway: Ipv4Addr::new(172, 30, 0, 1),
            prefix: 24
        }
    );
    assert!(r.links.ip_forward().unwrap());
    assert_eq!(
        att.kernel_args,
        vec![
            "banger.ip=172.30.0.2/24",
            "banger.gw=172.30.0.1",
            "banger.dns=172.30.0.1"
        ]
    );
    assert_eq!(att.iface.mac, "06:00:ac:1e:00:02");
    assert!(att.iface.tap.starts_with("bgt") && att.iface.tap.len() <= 15);
    let current = r.nft.current("banger").unwrap();
    assert_eq!(current.bridge, BRIDGE);
    assert_eq!(current.subnet, (Ipv4Addr::new(172, 30, 0, 0), 24));
    assert_eq!(
        r.net.dns_names(),
        vec![("alpha".to_string(), Ipv4Addr::new(172, 30, 0, 2))]
    );

    // The pool fills in the background; the next attach takes a pooled tap.
    assert!(r.net.wait_pool_full(Duration::from_secs(5)).await);
    let pooled = r.net.pooled_taps();
    let b = r.net.attach(&vm("beta", 3)).await.unwrap().unwrap();
    assert!(pooled.contains(&b.iface.tap), "{b:?} not from {pooled:?}");
    assert_eq!(
        r.nft.applied().len(),
        1,
        "rules are applied once, not per VM"
    );
}

#[tokio::test]
async fn detach_deletes_the_tap_name_and_rules_with_the_last_vm() {
    let r = rig(0);
    let (a, b) = (vm("alpha", 2), vm("beta", 3));
    let ta = r.net.attach(&a).await.unwrap().unwrap().iface.tap;
    let tb = r.net.attach(&b).await.unwrap().unwrap().iface.tap;
    r.net.detach(&a, Some(&ta)).await.unwrap();
    assert_eq!(taps(&r.links), vec![tb.clone()]);
    assert!(r.nft.current("banger").is_some(), "beta still runs");
    assert_eq!(r.net.dns_names().len(), 1);
    r.net.detach(&b, None).await.unwrap();
    assert!(taps(&r.links).is_empty());
    assert!(
        r.nft.current("banger").is_none(),
        "table gone with the last VM"
    );
    assert!(r.net.dns_names().is_empty());
    // Idempotent.
    r.net.detach(&b, Some(&tb)).await.unwrap();
    assert!(
        r.links.links().iter().any(|l| l.name == BRIDGE),
        "the bridge is kept"
    );
}

#[tokio::test]
async fn a_failed_tap_leaves_no_rule() {
    let r = rig(0);
    r.links.fail_next(LinkOp::CreateTap);
    let err = r.net.attach(&vm("alpha", 2)).await.unwrap_err();
    assert!(err.to_string().contains("could not create tap"), "{err}");
    assert!(r.nft.current("banger").is_none());
    assert!(r.nft.applied().is_empty());
    assert!(taps(&r.links).is_empty());
    assert!(r.net.dns_names().is_empty());
}

#[tokio::test]
async fn a_failed_rule_apply_leaves_no_tap() {
    let r = rig(0);
    r.nft.fail_next(NftOp::Apply);
    let err = r.net.attach(&vm("alpha", 2)).await.unwrap_err();
    assert!(err.to_string().contains("nftables"), "{err}");
    assert!(taps(&r.links).is_empty(), "{:?}", taps(&r.links));
    assert!(r.net.dns_names().is_empty());
    // The next attach works and applies the rules.
    r.net.attach(&vm("alpha", 2)).await.unwrap();
    assert!(r.nft.current("banger").is_some());
}

#[tokio::test]
async fn reconcile_adopts_running_vms_and_sweeps_orphan_taps_and_a_stale_table() {
    let r = rig(0);
    // What a killed daemon left: the bridge, the adopted VM's tap, a pooled tap, a tap of a VM
    // that died, and a table.
    r.links
        .ensure_bridge(BRIDGE, Ipv4Addr::new(172, 30, 0, 1), 24)
        .await
        .unwrap();
    for tap in ["bgtkeep0001", "bgtpool0002", "bgtdead0003"] {
        r.links.create_tap(tap, BRIDGE).await.unwrap();
    }
    r.links.insert_link("eth0", None, None);
    r.links.insert_link("other-tap", Some("tun"), None);
    let survivor = vm("survivor", 2);
    let running = vec![RunningVm {
        vm: survivor.clone(),
        tap: Some("bgtkeep0001".into()),
        forwards: vec![],
    }];
    let report = r.net.reconcile(&running).await.unwrap();
    assert_eq!(
        taps(&r.links)
            .into_iter()
            .filter(|t| t.starts_with("bgt"))
            .collect::<Vec<_>>(),
        vec!["bgtkeep0001".to_string()]
    );
    assert!(
        taps(&r.links).contains(&"other-tap".to_string()),
        "a tap that is neither on our bridge nor ours by name is left alone"
    );
    assert!(
        report.iter().any(|l| l.contains("bgtdead0003")),
        "{report:?}"
    );
    assert!(
        r.nft.current("banger").is_some(),
        "re-applied for the adopted VM"
    );
    assert_eq!(
        r.net.dns_names(),
        vec![("survivor".to_string(), Ipv4Addr::new(172, 30, 0, 2))]
    );

    // Nothing running: the stale table goes too.
    let r = rig(0);
    r.nft
        .apply(&banger_host::nft::NatRuleset::new(
            (Ipv4Addr::new(172, 30, 0, 0), 24),
            BRIDGE,
        ))
        .await
        .unwrap();
    r.nft.insert_foreign_table("inet", "filter");
    let report = r.net.reconcile(&[]).await.unwrap();
    assert!(r.nft.current("banger").is_none());
    assert_eq!(
        r.nft.list_tables().await.unwrap(),
        vec![("inet".to_string(), "filter".to_string())],
        "other tables untouched"
    );
    assert!(report.iter().any(|l| l.contains("nftables")), "{report:?}");
    assert!(
        !r.links
            .calls()
            .iter()
            .any(|c| matches!(c, LinkCall::EnsureBridge { .. })),
        "no bridge made when nothing runs"
    );
}

#[tokio::test]
async fn the_sweep_keeps_pooled_and_attached_taps() {
    let r = rig(2);
    let a = r.net.attach(&vm("alpha", 2)).await.unwrap().unwrap();
    assert!(r.net.wait_pool_full(Duration::from_secs(5)).await);
    r.links.create_tap("bgtstale0009", BRIDGE).await.unwrap();
    let report = r.net.sweep().await.unwrap();
    assert_eq!(report, vec!["removed orphan tap bgtstale0009".to_string()]);
    let mut want = r.net.pooled_taps();
    want.push(a.iface.tap.clone());
    want.sort();
    let mut have = taps(&r.links);
    have.sort();
    assert_eq!(have, want);
}

#[tokio::test]
async fn forwards_are_published_only_for_attached_vms_and_dropped_on_detach() {
    let r = rig(0);
    let a = vm("alpha", 2);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let forward = PortForward {
        host_port: port,
        guest_port: 80,
        proto: PortProto::Tcp,
    };
    // Not attached: accepted, nothing listens.
    r.net.publish(&a, &forward).await.unwrap();
    std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    r.net.attach(&a).await.unwrap();
    r.net.publish(&a, &forward).await.unwrap();
    assert!(std::net::TcpListener::bind(("127.0.0.1", port)).is_err());
    r.net.detach(&a, None).await.unwrap();
    std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
}

#[tokio::test]
async fn a_dropping_host_forward_chain_is_opened_with_the_table_and_closed_with_it() {
    let r = rig_with(settings(0), FakeHostForward::dropping(true));
    let (a, b) = (vm("alpha", 2), vm("beta", 3));
    let tap_a = r.net.attach(&a).await.unwrap().unwrap().iface.tap;
    let tap_b = r.net.attach(&b).await.unwrap().unwrap().iface.tap;
    let rules = r.host_forward.state().rules.clone();
    assert_eq!(rules.len(), 2, "{rules:?}");
    assert!(rules
        .iter()
        .all(|(chain, bridge)| chain == DOCKER_USER && bridge == BRIDGE));

    // Docker restarted and flushed DOCKER-USER: the sweep (re-applying the table) restores them.
    r.host_forward.state().rules.clear();
    r.net.sweep().await.unwrap();
    assert_eq!(r.host_forward.state().rules.len(), 2);

    r.net.detach(&a, Some(&tap_a)).await.unwrap();
    assert_eq!(r.host_forward.state().rules.len(), 2, "beta still runs");
    r.net.detach(&b, Some(&tap_b)).await.unwrap();
    assert!(
        r.host_forward.state().rules.is_empty(),
        "gone with the table"
    );
}

#[tokio::test]
async fn the_sweep_removes_accepts_a_killed_daemon_left_and_opt_out_never_opens() {
    let mut quiet = settings(0);
    quiet.host_forward_accept = false;
    let r = rig_with(quiet, FakeHostForward::dropping(false));
    r.host_forward
        .state()
        .rules
        .push(("FORWARD".into(), BRIDGE.into()));
    let report = r.net.sweep().await.unwrap();
    assert!(r.host_forward.state().rules.is_empty());
    assert!(
        report
            .iter()
            .any(|l| l.contains("accept rule(s) for br-test")),
        "{report:?}"
    );
    let a = vm("alpha", 2);
    r.net.attach(&a).await.unwrap().unwrap();
    assert!(r.nft.current("banger").is_some());
    assert!(
        r.host_forward.state().rules.is_empty(),
        "host_forward_accept = false leaves the host's firewall alone"
    );
}

#[tokio::test]
async fn a_failure_to_open_the_host_firewall_does_not_fail_the_attach() {
    let fw = FakeHostForward::dropping(true);
    fw.state().fail_open = 1;
    let r = rig_with(settings(0), fw);
    let a = vm("alpha", 2);
    assert!(r.net.attach(&a).await.unwrap().is_some());
    assert!(r.nft.current("banger").is_some());
}

#[tokio::test]
async fn nic_counters_are_the_tap_s_seen_from_the_guest() {
    let r = rig(0);
    let a = vm("alpha", 2);
    let tap = r.net.attach(&a).await.unwrap().unwrap().iface.tap;
    r.links.set_counters(
        &tap,
        LinkCounters {
            rx_bytes: 100,
            tx_bytes: 7,
            rx_packets: 2,
            tx_packets: 1,
        },
    );
    let nic = r.net.nic_counters(&tap).await.unwrap().unwrap();
    assert_eq!((nic.rx_bytes, nic.tx_bytes), (7, 100), "guest rx = tap tx");
    assert_eq!((nic.rx_packets, nic.tx_packets), (1, 2));
    assert_eq!(r.net.nic_counters("bgtmissing").await.unwrap(), None);
}

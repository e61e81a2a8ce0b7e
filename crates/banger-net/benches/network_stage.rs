//! `cargo bench -p banger-net --bench network_stage` (as root): the network stage of `vm create`
//! — `BridgeNetwork::attach` with the real netlink, nft and iptables layers — measured three ways,
//! each inside a network namespace the bench creates and deletes (no VM runs, so no packet flows):
//!
//! - first attach of a daemon: namespace, bridge, ip_forward, DNS responder, banger's table, and
//!   the host FORWARD check (with Docker's `FORWARD DROP` layout, so the accepts are inserted);
//! - warm: a tap taken from the pool (the pool is refilled between runs);
//! - cold: `tap_pool_size = 0`, the tap created and attached on the spot.
//!
//! Each attach is followed by a detach (outside the measurement). BANGER_BENCH_RUNS sets the
//! runs per case (default 30; first-attach uses a third of them, each in a fresh namespace).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, Ipv4Addr};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use banger_api::{DesiredState, ImageId, VmId, VmName, VmState};
use banger_core::backends::VmNetwork;
use banger_host::hostfw::{RealHostForward, DEFAULT_IPTABLES_BINARY};
use banger_host::links::RealLinks;
use banger_host::nft::{RealNft, DEFAULT_NFT_BINARY};
use banger_net::{BridgeNetwork, DnsSettings, NetworkSettings, Upstreams};
use banger_store::records::VmRecord;

const BRIDGE: &str = "bgbench0";

fn run(program: &str, args: &[&str]) {
    let status = Command::new(program).args(args).status().unwrap();
    assert!(status.success(), "{program} {args:?}");
}

/// A namespace deleted on drop.
struct Netns(String);

impl Netns {
    fn create(tag: &str) -> Self {
        let name = format!("bgbench-{tag}-{}", std::process::id());
        run("ip", &["netns", "add", &name]);
        Self(name)
    }

    /// Docker's firewall layout in the namespace.
    fn docker_firewall(&self) {
        for args in [
            &["-P", "FORWARD", "DROP"][..],
            &["-N", "DOCKER-USER"],
            &["-A", "FORWARD", "-j", "DOCKER-USER"],
            &["-A", "DOCKER-USER", "-j", "RETURN"],
        ] {
            let mut argv = vec!["netns", "exec", &self.0, "iptables", "-w"];
            argv.extend_from_slice(args);
            run("ip", &argv);
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.0])
            .status();
    }
}

fn settings(netns: &str, pool: usize) -> NetworkSettings {
    NetworkSettings {
        bridge: BRIDGE.into(),
        subnet: (Ipv4Addr::new(10, 251, 0, 0), 24),
        domain: "vm".into(),
        netns: Some(netns.to_string()),
        tap_pool_size: pool,
        tap_prefix: "bgt".into(),
        table: "banger".into(),
        publish_address: IpAddr::V4(Ipv4Addr::LOCALHOST),
        dns: Some(DnsSettings {
            port: 53,
            upstreams: Upstreams::Explicit(vec!["127.0.0.1:53".parse().unwrap()]),
        }),
        host_forward_accept: true,
    }
}

fn network(netns: &str, pool: usize) -> BridgeNetwork {
    let ns = Some(netns.to_string());
    BridgeNetwork::new(
        settings(netns, pool),
        Arc::new(RealLinks::new(ns.clone())),
        Arc::new(RealNft::new(ns.clone(), DEFAULT_NFT_BINARY)),
        Arc::new(RealHostForward::new(ns, DEFAULT_IPTABLES_BINARY)),
    )
    .unwrap()
}

fn vm(i: usize) -> VmRecord {
    let now = chrono::Utc::now();
    let last = u8::try_from(2 + i % 200).unwrap();
    VmRecord {
        id: VmId::new(),
        name: VmName::parse(&format!("bench{i}")).unwrap(),
        image_id: ImageId::new(),
        vcpus: 1,
        memory_mib: 256,
        disk_size_mib: 256,
        state: VmState::Creating,
        desired_state: DesiredState::Running,
        ip: Some(Ipv4Addr::new(10, 251, 0, last)),
        mac: None,
        vsock_cid: Some(3),
        vm_dir: "/nonexistent".into(),
        last_error: None,
        stage_timings: Vec::new(),
        root_clone_method: None,
        created_at: now,
        updated_at: now,
    }
}

/// One attach, timed; the detach after it is not.
async fn attach_ms(net: &BridgeNetwork, vm: &VmRecord) -> f64 {
    let started = Instant::now();
    let attachment = net.attach(vm).await.unwrap().unwrap();
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    net.detach(vm, Some(&attachment.iface.tap)).await.unwrap();
    ms
}

fn report(case: &str, mut ms: Vec<f64>) {
    ms.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let at = |p: f64| ms[((ms.len() as f64 - 1.0) * p).round() as usize];
    println!(
        "{case:<44} n={:<3} p50 {:>7.2} ms  p95 {:>7.2} ms  min {:>7.2} ms",
        ms.len(),
        at(0.5),
        at(0.95),
        ms[0]
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if !nix_is_root() {
        println!("network_stage: SKIPPED (needs root to create network namespaces)");
        return;
    }
    let runs: usize = std::env::var("BANGER_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);

    let mut first = Vec::new();
    for i in 0..runs.div_ceil(3) {
        let ns = Netns::create(&format!("first{i}"));
        ns.docker_firewall();
        let net = network(&ns.0, 0);
        first.push(attach_ms(&net, &vm(i)).await);
        drop(net);
    }
    report("first attach (bridge, DNS, table, FORWARD)", first);

    // A VM stays attached through the warm and cold runs, as on a daemon already serving VMs,
    // so the measured attaches do not apply or delete banger's table.
    let ns = Netns::create("warm");
    ns.docker_firewall();
    let net = network(&ns.0, 2);
    let resident = vm(1000);
    net.attach(&resident).await.unwrap().unwrap();
    let mut warm = Vec::new();
    for i in 0..runs {
        assert!(net.wait_pool_full(Duration::from_secs(10)).await);
        warm.push(attach_ms(&net, &vm(i)).await);
    }
    report("warm (tap from the pool)", warm);
    drop(net);
    drop(ns);

    let ns = Netns::create("cold");
    let net = network(&ns.0, 0);
    net.attach(&resident).await.unwrap().unwrap();
    let mut cold = Vec::new();
    for i in 0..runs {
        cold.push(attach_ms(&net, &vm(i)).await);
    }
    report("cold (tap created on the spot)", cold);
}

fn nix_is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

//! End to end with real guests on banger's VM network, always inside a network namespace the
//! test creates and deletes (`network.netns`): addresses, the gateway, DNS names and relaying,
//! port forwards from the root namespace's loopback into a guest, 409 on a taken port, and
//! nothing left behind after delete or after a SIGKILL of the daemon and a restart.
//!
//! Needs root, QEMU, vhost-device-vsock and the test guest; ignored by default, run with
//! `--include-ignored`. No packet leaves the machine: the only upstream resolver is a tiny one
//! the test runs inside the namespace.
#![allow(clippy::unwrap_used)]

use std::net::{Ipv4Addr, SocketAddr};
use std::process::Command;
use std::time::{Duration, Instant};

use banger_agent::client::{AgentClient, ExecOutput};
use banger_api::{ErrorCode, Operation, OperationStatus, PortForward};
use banger_cli::client::ClientError;
use banger_net::Netns;
use banger_testkit::{test_guest, DaemonProcess, RealDaemon, TestNetns};
use hyper::Method;
use serde_json::json;
use tokio::io::AsyncReadExt;

const SUBNET: &str = "10.250.7.0/24";
const GATEWAY: &str = "10.250.7.1";
const UPSTREAM_PORT: u16 = 5300;
/// What the in-namespace upstream answers for every A question.
const UPSTREAM_ANSWER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 77);

fn config(netns: &str, bridge: &str) -> String {
    format!(
        "vmm = \"qemu\"\nboot_timeout_secs = 90\nstop_timeout_secs = 10\n\n\
         [vm_defaults]\nvcpus = 1\nmemory_mib = 256\ndisk_size_mib = 256\n\n\
         [network]\nnetns = \"{netns}\"\nbridge = \"{bridge}\"\nsubnet = \"{SUBNET}\"\n\
         domain = \"vm\"\ntap_pool_size = 2\ndns_upstream = \"127.0.0.1:{UPSTREAM_PORT}\"\n"
    )
}

/// `ip -n NS ...`, asserting success; returns stdout.
fn ip_in(netns: &str, args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(["-n", netns])
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "ip -n {netns} {args:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// Tap (tun) devices in the namespace.
fn taps_in(netns: &str) -> Vec<String> {
    let links: serde_json::Value =
        serde_json::from_str(&ip_in(netns, &["-j", "-d", "link", "show"])).unwrap();
    links
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["linkinfo"]["info_kind"] == "tun")
        .map(|l| l["ifname"].as_str().unwrap().to_string())
        .collect()
}

/// Tables of nftables in the namespace, as `family name`.
fn nft_tables_in(netns: &str) -> Vec<String> {
    let out = Command::new("ip")
        .args(["netns", "exec", netns, "nft", "-j", "list", "tables"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let listing: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    listing["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|item| item.get("table"))
        .map(|t| {
            format!(
                "{} {}",
                t["family"].as_str().unwrap(),
                t["name"].as_str().unwrap()
            )
        })
        .collect()
}

/// A minimal upstream resolver on 127.0.0.1:UPSTREAM_PORT inside the namespace: every
/// question gets one A record, UPSTREAM_ANSWER.
async fn start_upstream(netns: &str) -> tokio::task::JoinHandle<()> {
    ip_in(netns, &["link", "set", "lo", "up"]);
    let socket = Netns::new(Some(netns.to_string()))
        .bind_udp(SocketAddr::from((Ipv4Addr::LOCALHOST, UPSTREAM_PORT)))
        .await
        .unwrap();
    tokio::spawn(async move {
        let mut buf = [0u8; 1500];
        while let Ok((len, from)) = socket.recv_from(&mut buf).await {
            if let Some(reply) = dns_reply(&buf[..len]) {
                let _ = socket.send_to(&reply, from).await;
            }
        }
    })
}

/// The question of `query` answered with one A record (any additional records dropped).
fn dns_reply(query: &[u8]) -> Option<Vec<u8>> {
    let mut end = 12;
    while *query.get(end)? != 0 {
        end += usize::from(query[end]) + 1;
    }
    end += 5; // root label + type + class
    let mut reply = query.get(..end)?.to_vec();
    reply[2] = 0x81; // QR, RD
    reply[3] = 0x80; // RA, NOERROR
    reply[6..12].copy_from_slice(&[0, 1, 0, 0, 0, 0]); // one answer, no authority/additional
    reply.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
    reply.extend_from_slice(&UPSTREAM_ANSWER.octets());
    Some(reply)
}

async fn agent_of(d: &RealDaemon, name: &str) -> AgentClient {
    let vm = d.vm(name).await;
    let handles: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            d.config
                .vms_dir()
                .join(vm.id.to_string())
                .join("handles.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let uds = handles["vmm"]["vsock_uds"].as_str().unwrap().to_string();
    AgentClient::connect(
        std::path::Path::new(&uds),
        banger_agent::AGENT_PORT,
        Duration::from_secs(30),
    )
    .await
    .unwrap()
}

async fn sh(agent: &AgentClient, script: &str) -> ExecOutput {
    agent.exec_collect(["sh", "-c", script]).await.unwrap()
}

fn text(out: &ExecOutput) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn api_code(err: ClientError) -> ErrorCode {
    match err {
        ClientError::Api(api) => api.code,
        other => panic!("expected an API error, got {other:?}"),
    }
}

fn stage_ms(op: &Operation, stage: &str) -> f64 {
    let stage = op.stages.iter().find(|s| s.name == stage).unwrap();
    match stage.ended_at {
        Some(end) => (end - stage.started_at).num_microseconds().unwrap_or(0) as f64 / 1000.0,
        None => f64::NAN,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root, qemu-system-x86_64, vhost-device-vsock and the Debian test guest; run with --include-ignored"]
async fn guests_get_addresses_names_dns_and_port_forwards_and_delete_leaves_nothing() {
    let ns = TestNetns::new("net");
    let dir = tempfile::tempdir().unwrap();
    let d = RealDaemon::start(dir.path(), &config(&ns.name, "bgtestbr0")).await;
    d.add_test_image("testguest", &test_guest().vmlinuz, vec![]);
    assert!(
        taps_in(&ns.name).is_empty(),
        "nothing made before the first VM"
    );

    let one = d
        .expect_ok(
            &d.post("/v1/vms", json!({"name": "one", "image": "testguest"}))
                .await,
        )
        .await;
    let upstream = start_upstream(&ns.name).await;
    // Give the pool a moment to fill, so the second create is a pool hit.
    let deadline = Instant::now() + Duration::from_secs(10);
    while taps_in(&ns.name).len() < 3 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let two = d
        .expect_ok(
            &d.post("/v1/vms", json!({"name": "two", "image": "testguest"}))
                .await,
        )
        .await;
    eprintln!(
        "network stage: first create (cold: bridge, DNS, tap, rules) {:.1} ms; second (pool hit) {:.1} ms",
        stage_ms(&one, "network"),
        stage_ms(&two, "network")
    );
    let (vm1, vm2) = (d.vm("one").await, d.vm("two").await);
    let (ip1, ip2) = (vm1.ip.clone().unwrap(), vm2.ip.clone().unwrap());
    assert_ne!(ip1, ip2);
    assert_eq!(nft_tables_in(&ns.name), vec!["inet banger"]);

    let agent = agent_of(&d, "one").await;
    let out = sh(&agent, &format!("ping -c1 -W3 {GATEWAY}")).await;
    assert!(out.status.success(), "gateway: {}", text(&out));
    let out = sh(&agent, &format!("ping -c1 -W3 {ip2}")).await;
    assert!(out.status.success(), "one -> two by IP: {}", text(&out));
    let out = sh(&agent, "cat /etc/resolv.conf; nslookup two.vm").await;
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains(&ip2),
        "two.vm: {}",
        text(&out)
    );
    let out = sh(
        &agent,
        "ping -c1 -W3 $(nslookup two.vm | awk '/^Address/ {a=$NF} END {print a}')",
    )
    .await;
    assert!(out.status.success(), "one -> two by name: {}", text(&out));
    let out = sh(&agent, "nslookup example.test").await;
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&UPSTREAM_ANSWER.to_string()),
        "relayed upstream: {}",
        text(&out)
    );

    // A TCP server in guest two, reached from 127.0.0.1 in the root namespace.
    let agent2 = agent_of(&d, "two").await;
    let server = agent2
        .exec(banger_agent::protocol::ExecRequest::new([
            "sh",
            "-c",
            "echo hello-from-guest | nc -l -p 8080",
        ]))
        .await
        .unwrap();
    let host_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let added: PortForward = d
        .client
        .call(
            Method::POST,
            "/v1/vms/two/ports",
            Some(&json!({"host_port": host_port, "guest_port": 8080})),
        )
        .await
        .unwrap();
    assert_eq!(added.host_port, host_port);
    let mut got = String::new();
    for _ in 0..50 {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", host_port))
            .await
            .unwrap();
        got.clear();
        let _ = tokio::time::timeout(Duration::from_secs(3), stream.read_to_string(&mut got)).await;
        if got.contains("hello-from-guest") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        got.contains("hello-from-guest"),
        "through the forward: {got:?}"
    );
    drop(server);

    // Taken host ports: 409, by banger or by anything else.
    let err = d
        .client
        .call::<PortForward>(
            Method::POST,
            "/v1/vms/one/ports",
            Some(&json!({"host_port": host_port, "guest_port": 22})),
        )
        .await
        .unwrap_err();
    assert_eq!(api_code(err), ErrorCode::Conflict);
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let held_port = held.local_addr().unwrap().port();
    let err = d
        .client
        .call::<PortForward>(
            Method::POST,
            "/v1/vms/one/ports",
            Some(&json!({"host_port": held_port, "guest_port": 22})),
        )
        .await
        .unwrap_err();
    assert_eq!(api_code(err), ErrorCode::Conflict);

    // Delete one: its tap goes, the table stays for two; delete two: nothing is left.
    d.expect_ok(&d.delete("/v1/vms/one?force=true").await).await;
    assert_eq!(nft_tables_in(&ns.name), vec!["inet banger"]);
    d.expect_ok(&d.delete("/v1/vms/two?force=true").await).await;
    let pool_deadline = Instant::now() + Duration::from_secs(5);
    let mut taps = taps_in(&ns.name);
    while taps.len() > 2 && Instant::now() < pool_deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        taps = taps_in(&ns.name);
    }
    assert!(taps.len() <= 2, "only the warm pool may remain: {taps:?}");
    assert!(
        nft_tables_in(&ns.name).is_empty(),
        "table gone with the last VM"
    );
    assert!(
        std::net::TcpListener::bind(("127.0.0.1", host_port)).is_ok(),
        "forward closed"
    );
    let vms: Vec<banger_api::Vm> = d.client.get("/v1/vms").await.unwrap();
    assert!(vms.is_empty());
    d.stop().await;
    upstream.abort();
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root, qemu-system-x86_64, vhost-device-vsock and the Debian test guest; run with --include-ignored"]
async fn after_a_daemon_sigkill_the_restart_sweeps_stale_taps_and_readopts_the_vm() {
    let ns = TestNetns::new("sweep");
    let dir = tempfile::tempdir().unwrap();
    let config = config(&ns.name, "bgtestbr1");
    let d = DaemonProcess::start(dir.path(), &config).await;
    let guest = test_guest();
    let image = banger_store::records::ImageRecord {
        id: banger_api::ImageId::new(),
        name: banger_api::VmName::parse("testguest").unwrap(),
        kernel_path: guest.vmlinuz.clone(),
        initrd_path: Some(guest.initramfs.clone()),
        modules_path: None,
        rootfs_path: guest.rootfs.clone(),
        work_seed_path: None,
        cmdline: "console=ttyS0 panic=-1 quiet".into(),
        readiness_ports: vec![],
        agent_version: None,
        parent_id: None,
        sha256: None,
        managed: false,
        size_bytes: 0,
        root_mode: banger_api::RootMode::default(),
        created_at: chrono::Utc::now(),
    };
    banger_store::Store::open(&d.config.db_path())
        .unwrap()
        .insert_image(&image)
        .unwrap();
    let op: Operation = d
        .client
        .call(
            Method::POST,
            "/v1/vms",
            Some(&json!({"name": "survivor", "image": "testguest"})),
        )
        .await
        .unwrap();
    let done = d.client.follow(op.id, |_| {}).await.unwrap();
    assert_eq!(done.status, OperationStatus::Succeeded, "{done:#?}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while taps_in(&ns.name).len() < 3 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let before = taps_in(&ns.name);
    assert_eq!(
        before.len(),
        3,
        "the VM's tap and a full pool of 2: {before:?}"
    );
    let vm_dir = d.config.vms_dir();
    d.kill9();

    // What the killed daemon left: two pooled taps nobody owns; add one more stale tap.
    ip_in(&ns.name, &["tuntap", "add", "bgtdeadbeef", "mode", "tap"]);
    ip_in(
        &ns.name,
        &["link", "set", "bgtdeadbeef", "master", "bgtestbr1"],
    );

    let d = RealDaemon::start(dir.path(), &config).await;
    let vm = d.vm("survivor").await;
    assert_eq!(vm.state, banger_api::VmState::Running, "re-adopted");
    let handles: serde_json::Value = serde_json::from_slice(
        &std::fs::read(vm_dir.join(vm.id.to_string()).join("handles.json")).unwrap(),
    )
    .unwrap();
    let tap = handles["tap"].as_str().unwrap().to_string();
    let after = taps_in(&ns.name);
    assert!(
        after.contains(&tap),
        "the running VM's tap is kept: {after:?}"
    );
    for stale in before
        .iter()
        .filter(|t| **t != tap)
        .chain(["bgtdeadbeef".to_string()].iter())
    {
        assert!(!after.contains(stale), "stale tap {stale} swept: {after:?}");
    }
    assert_eq!(nft_tables_in(&ns.name), vec!["inet banger"]);
    // The adopted VM still has its network.
    let agent = agent_of(&d, "survivor").await;
    let out = sh(&agent, &format!("ping -c1 -W3 {GATEWAY}")).await;
    assert!(
        out.status.success(),
        "gateway after restart: {}",
        text(&out)
    );

    d.expect_ok(&d.delete("/v1/vms/survivor?force=true").await)
        .await;
    assert!(nft_tables_in(&ns.name).is_empty());
    d.stop().await;
}

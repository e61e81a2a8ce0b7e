//! End to end with real guests on banger's VM network, always inside a network namespace the
//! test creates and deletes (`network.netns`): addresses, the gateway, DNS names and relaying,
//! port forwards from the root namespace's loopback into a guest, 409 on a taken port, NAT to an
//! "upstream" host in a second test-owned namespace through a Docker-style `FORWARD DROP`
//! firewall, and nothing left behind after delete or after a SIGKILL of the daemon (with a
//! create in flight) and a restart.
//!
//! Needs root, QEMU, vhost-device-vsock and the test guest; ignored by default, run with
//! `--include-ignored`. No packet leaves the machine: the only upstream resolver is a tiny one
//! the test runs inside the namespace, and the only "outside" is another test namespace.
#![allow(clippy::unwrap_used)]

use std::net::{Ipv4Addr, SocketAddr};
use std::process::Command;
use std::time::{Duration, Instant};

use banger_agent::client::{AgentClient, ExecOutput};
use banger_api::{ErrorCode, Operation, OperationStatus, PortForward};
use banger_cli::client::ClientError;
use banger_host::process::Processes;
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
        "vmm = \"qemu\"\nboot_timeout_secs = 90\nstop_timeout_secs = 10\nstats_poll_interval_secs = 1\n\n\
         [vm_defaults]\nvcpus = 1\nmemory_mib = 256\ndisk_size_mib = 256\n\n\
         [network]\nnetns = \"{netns}\"\nbridge = \"{bridge}\"\nsubnet = \"{SUBNET}\"\n\
         domain = \"vm\"\ntap_pool_size = 2\ndns_upstream = \"127.0.0.1:{UPSTREAM_PORT}\"\n"
    )
}

/// `ip netns exec NS iptables -w ...`, asserting success; returns stdout.
fn iptables_in(netns: &str, args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", netns, "iptables", "-w"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "iptables {args:?} in {netns}: {out:?}"
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The lines of `iptables -S` in the namespace that carry banger's comment.
fn banger_iptables_rules(netns: &str) -> Vec<String> {
    iptables_in(netns, &["-S"])
        .lines()
        .filter(|l| l.contains("banger:"))
        .map(str::to_string)
        .collect()
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
    // The stats loop counts the guest NIC's traffic from its tap (QEMU itself reports none).
    let deadline = Instant::now() + Duration::from_secs(15);
    let nic = loop {
        let stats: banger_api::VmStats = d.client.get("/v1/vms/one/stats").await.unwrap();
        let latest = stats.latest.clone();
        if let Some(s) = latest.filter(|s| s.net_rx_packets > 0 && s.net_tx_packets > 0) {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "no NIC traffic in the stats: {stats:#?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert!(
        nic.net_rx_bytes >= nic.net_rx_packets * 42 && nic.net_tx_bytes >= nic.net_tx_packets * 42,
        "{nic:#?}"
    );
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
async fn after_a_daemon_sigkill_mid_create_the_restart_sweeps_everything_no_vm_owns() {
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
    // A second create in flight when the daemon dies: SIGKILL it as soon as the VM's VMM
    // exists, i.e. after its network stage took a tap.
    let op: Operation = d
        .client
        .call(
            Method::POST,
            "/v1/vms",
            Some(&json!({"name": "inflight", "image": "testguest"})),
        )
        .await
        .unwrap();
    let inflight_run_dir = d
        .config
        .runtime_dir
        .join("vms")
        .join(op.vm_id.unwrap().to_string())
        .display()
        .to_string();
    let processes = banger_host::process::RealProcesses::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while processes.find_mentioning(&inflight_run_dir).is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let before = taps_in(&ns.name);
    assert!(
        before.len() >= 3,
        "both VMs' taps and what is left of the pool: {before:?}"
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
    let inflight = d.vm("inflight").await;
    assert_eq!(inflight.state, banger_api::VmState::Error, "{inflight:#?}");
    assert!(
        processes.find_mentioning(&inflight_run_dir).is_empty(),
        "the in-flight VM's processes are gone"
    );
    // The adopted VM still has its network.
    let agent = agent_of(&d, "survivor").await;
    let out = sh(&agent, &format!("ping -c1 -W3 {GATEWAY}")).await;
    assert!(
        out.status.success(),
        "gateway after restart: {}",
        text(&out)
    );

    // Its address goes with it; the survivor keeps its own.
    d.expect_ok(&d.delete("/v1/vms/inflight?force=true").await)
        .await;
    let vms: Vec<banger_api::Vm> = d.client.get("/v1/vms").await.unwrap();
    let addresses: Vec<_> = vms
        .iter()
        .map(|v| (v.name.to_string(), v.ip.clone()))
        .collect();
    assert_eq!(
        addresses,
        vec![("survivor".to_string(), vm.ip.clone())],
        "the address table holds only the survivor's"
    );
    d.expect_ok(&d.delete("/v1/vms/survivor?force=true").await)
        .await;
    assert!(nft_tables_in(&ns.name).is_empty());
    let ruleset = Command::new("ip")
        .args(["netns", "exec", &ns.name, "nft", "list", "ruleset"])
        .output()
        .unwrap();
    assert!(
        ruleset.stdout.is_empty(),
        "nft list ruleset: {}",
        String::from_utf8_lossy(&ruleset.stdout)
    );
    d.stop().await;
}

/// The "outer" address of banger's namespace on the link to the upstream namespace.
const OUTER: &str = "198.51.100.1";
/// The upstream host, in a second namespace.
const UPSTREAM: &str = "198.51.100.2";
const UPSTREAM_TCP: u16 = 7000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root, qemu-system-x86_64, vhost-device-vsock, iptables and the Debian test guest; run with --include-ignored"]
async fn guest_traffic_leaves_masqueraded_even_behind_a_docker_style_forward_drop() {
    // banger's namespace, wired to an "upstream" namespace that stands for the world.
    let ns = TestNetns::new("nat");
    let up = TestNetns::new("up");
    ip_in(
        &ns.name,
        &[
            "link", "add", "up0", "type", "veth", "peer", "name", "eth0", "netns", &up.name,
        ],
    );
    ip_in(
        &ns.name,
        &["addr", "add", &format!("{OUTER}/24"), "dev", "up0"],
    );
    ip_in(&ns.name, &["link", "set", "up0", "up"]);
    ip_in(
        &up.name,
        &["addr", "add", &format!("{UPSTREAM}/24"), "dev", "eth0"],
    );
    ip_in(&up.name, &["link", "set", "eth0", "up"]);
    ip_in(&up.name, &["link", "set", "lo", "up"]);
    // What Docker leaves in the namespace: FORWARD drops, DOCKER-USER first, then RETURN.
    iptables_in(&ns.name, &["-P", "FORWARD", "DROP"]);
    iptables_in(&ns.name, &["-N", "DOCKER-USER"]);
    iptables_in(&ns.name, &["-A", "FORWARD", "-j", "DOCKER-USER"]);
    iptables_in(&ns.name, &["-A", "DOCKER-USER", "-j", "RETURN"]);

    // The upstream host answers every TCP connection with the address it came from.
    let listener = Netns::new(Some(up.name.clone()))
        .bind_tcp(SocketAddr::from((
            UPSTREAM.parse::<Ipv4Addr>().unwrap(),
            UPSTREAM_TCP,
        )))
        .await
        .unwrap();
    let server = tokio::spawn(async move {
        while let Ok((mut stream, peer)) = listener.accept().await {
            use tokio::io::AsyncWriteExt;
            let _ = stream
                .write_all(format!("peer={}\n", peer.ip()).as_bytes())
                .await;
        }
    });

    let dir = tempfile::tempdir().unwrap();
    let d = RealDaemon::start(dir.path(), &config(&ns.name, "bgtestbr2")).await;
    d.add_test_image("testguest", &test_guest().vmlinuz, vec![]);
    d.expect_ok(
        &d.post("/v1/vms", json!({"name": "natted", "image": "testguest"}))
            .await,
    )
    .await;
    let guest_ip = d.vm("natted").await.ip.unwrap();
    let accepts = banger_iptables_rules(&ns.name);
    assert_eq!(accepts.len(), 2, "accepts in DOCKER-USER: {accepts:?}");
    assert!(
        accepts.iter().all(|l| l.starts_with("-A DOCKER-USER")),
        "{accepts:?}"
    );

    let agent = agent_of(&d, "natted").await;
    let fetch = format!("nc -w 5 {UPSTREAM} {UPSTREAM_TCP} </dev/null");
    let out = sh(&agent, &format!("ping -c1 -W3 {UPSTREAM} && {fetch}")).await;
    assert!(out.status.success(), "guest -> upstream: {}", text(&out));
    let seen = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        seen.contains(&format!("peer={OUTER}")) && !seen.contains(&guest_ip),
        "upstream saw the namespace's outer address, not the guest's {guest_ip}: {}",
        text(&out)
    );

    // Control: without banger's accepts, Docker's DROP policy does cut the guest off.
    for rule in &accepts {
        let args: Vec<String> = rule
            .replacen("-A ", "-D ", 1)
            .split_whitespace()
            .map(|w| w.trim_matches('"').to_string())
            .collect();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        iptables_in(&ns.name, &args);
    }
    let out = sh(
        &agent,
        &format!("nc -w 3 {UPSTREAM} {UPSTREAM_TCP} </dev/null"),
    )
    .await;
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("peer="),
        "FORWARD DROP without banger's accepts must drop: {}",
        text(&out)
    );
    let out = sh(&agent, &format!("ping -c1 -W3 {GATEWAY}")).await;
    assert!(
        out.status.success(),
        "the gateway is not forwarded: {}",
        text(&out)
    );

    // The next sweep (as after Docker flushed its chains) puts the accepts back; a daemon
    // restart runs one right after re-adopting the VM.
    let config_text = config(&ns.name, "bgtestbr2");
    d.stop().await;
    let d = RealDaemon::start(dir.path(), &config_text).await;
    assert_eq!(d.vm("natted").await.state, banger_api::VmState::Running);
    assert_eq!(banger_iptables_rules(&ns.name).len(), 2);
    // After the restart's sweep deleted the old daemon's pooled taps, the gateway still answers
    // at the MAC the guest cached (the bridge's MAC is pinned, not its lowest port's).
    let out = sh(&agent, &format!("ping -c1 -W3 {GATEWAY} && {fetch}")).await;
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("peer={OUTER}")),
        "restored: {}",
        text(&out)
    );

    d.expect_ok(&d.delete("/v1/vms/natted?force=true").await)
        .await;
    assert!(
        banger_iptables_rules(&ns.name).is_empty(),
        "accepts gone with the last VM"
    );
    assert_eq!(
        nft_tables_in(&ns.name),
        vec!["ip filter"],
        "only the test's own table"
    );
    assert_eq!(
        iptables_in(&ns.name, &["-S"]),
        "-P INPUT ACCEPT\n-P FORWARD DROP\n-P OUTPUT ACCEPT\n-N DOCKER-USER\n\
         -A FORWARD -j DOCKER-USER\n-A DOCKER-USER -j RETURN\n",
        "the test's firewall is as it was"
    );
    d.stop().await;
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root and the Debian test guest (no VM boots); run with --include-ignored"]
async fn a_bridge_name_taken_by_another_link_fails_the_create_and_changes_nothing_on_the_host() {
    let ns = TestNetns::new("taken");
    ip_in(
        &ns.name,
        &[
            "link",
            "add",
            "bgtestbr3",
            "type",
            "veth",
            "peer",
            "name",
            "bgpeer3",
        ],
    );
    let dir = tempfile::tempdir().unwrap();
    let d = RealDaemon::start(dir.path(), &config(&ns.name, "bgtestbr3")).await;
    d.add_test_image("testguest", &test_guest().vmlinuz, vec![]);
    let links_before = ip_in(&ns.name, &["-o", "link", "show"]);

    let op = d
        .post("/v1/vms", json!({"name": "nobridge", "image": "testguest"}))
        .await;
    let done = d.wait(&op).await;
    assert_eq!(done.status, OperationStatus::Failed, "{done:#?}");
    let message = format!("{:?}", done.error);
    assert!(
        message.contains("bgtestbr3") && message.contains("not a bridge"),
        "the error names the link and what is wrong: {message}"
    );
    // The VM stays, in error with the reason, for the user to see; everything it had is gone.
    let vm = d.vm("nobridge").await;
    assert_eq!(vm.state, banger_api::VmState::Error);
    assert!(vm.pid.is_none() && vm.vmm.is_none(), "{vm:#?}");
    assert!(
        vm.last_error
            .as_deref()
            .unwrap_or("")
            .contains("not a bridge"),
        "{vm:#?}"
    );
    assert_eq!(ip_in(&ns.name, &["-o", "link", "show"]), links_before);
    assert!(taps_in(&ns.name).is_empty());
    assert!(nft_tables_in(&ns.name).is_empty());
    d.expect_ok(&d.delete("/v1/vms/nobridge").await).await;
    let vms: Vec<banger_api::Vm> = d.client.get("/v1/vms").await.unwrap();
    assert!(vms.is_empty(), "{vms:?}");
    assert_eq!(ip_in(&ns.name, &["-o", "link", "show"]), links_before);
    d.stop().await;
}

//! `cargo bench -p banger-testkit --bench create`: VM create to running and to guest-ready with
//! the real host layer, compared in the same run with a bare VMM boot of the same kernel and
//! initramfs (the limit: no daemon, no stages, just the backend's launch and the agent answer).
//!
//! Reported: p50/p95 of create-to-ready, per-stage p50, the guest's own boot time (its uptime
//! when the agent first answered), banger's overhead = create-to-ready − guest boot, and the
//! bare-VMM boot for comparison, then BANGER_BENCH_PARALLEL (default 4; 0 skips) creates at once.
//! Environment: BANGER_BENCH_RUNS (default 10), BANGER_BENCH_VMM (qemu | firecracker; default
//! qemu), plus testkit's BANGER_TEST_CACHE.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use banger_agent::client::AgentClient;
use banger_agent::protocol::AGENT_PORT;
use banger_api::OperationStatus;
use banger_host::process::RealProcesses;
use banger_testkit::{test_guest, RealDaemon};
use banger_vmm::{LaunchSpec, Vmm};
use hyper::Method;
use serde_json::json;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

fn summary(mut values: Vec<f64>) -> (f64, f64) {
    values.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (percentile(&values, 0.5), percentile(&values, 0.95))
}

/// Guest uptime in ms, from the agent stage's detail ("agent X after 1.23 s of guest uptime").
fn guest_uptime_ms(detail: &str) -> Option<f64> {
    let secs = detail.split(" after ").nth(1)?.split(' ').next()?;
    secs.parse::<f64>().ok().map(|s| s * 1000.0)
}

async fn bare_boot(runs: usize) -> Vec<(f64, f64)> {
    let guest = test_guest();
    let processes = Arc::new(RealProcesses::new());
    let vmm = banger_vmm::qemu::QemuVmm::new(
        "qemu-system-x86_64",
        "vhost-device-vsock",
        processes,
        banger_vmm::qemu::Accel::Auto,
    );
    let mut out = Vec::new();
    for i in 0..runs {
        let dir = tempfile::tempdir().unwrap();
        let spec = LaunchSpec {
            name: format!("bare-{i}"),
            vcpus: 1,
            memory_mib: 256,
            kernel: guest.vmlinuz.clone(),
            initrd: Some(guest.initramfs.clone()),
            cmdline: "console=ttyS0 panic=-1 quiet banger.hostname=bare".into(),
            drives: vec![],
            net: None,
            vsock_cid: 100 + i as u32,
            run_dir: dir.path().join("run"),
            vsock_uds: dir.path().join("run/vsock.sock"),
            vmm_log: dir.path().join("vmm.log"),
            console_log: dir.path().join("console.log"),
            netns: None,
        };
        std::fs::create_dir_all(&spec.run_dir).unwrap();
        let started = Instant::now();
        let handles = vmm.launch(&spec).await.expect("bare launch");
        let client = AgentClient::connect(&spec.vsock_uds, AGENT_PORT, Duration::from_secs(120))
            .await
            .expect("bare agent");
        let health = client.health().await.unwrap();
        let total = started.elapsed().as_secs_f64() * 1000.0;
        out.push((total, health.uptime_secs * 1000.0));
        vmm.kill(&handles).await.unwrap();
    }
    out
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let runs: usize = std::env::var("BANGER_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let vmm = std::env::var("BANGER_BENCH_VMM").unwrap_or_else(|_| "qemu".into());
    let guest = test_guest();
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "vmm = \"{vmm}\"\nboot_timeout_secs = 300\n\n[vm_defaults]\nvcpus = 1\nmemory_mib = 256\ndisk_size_mib = 256\n"
    );
    let d = RealDaemon::start(dir.path(), &config).await;
    let kernel = if vmm == "firecracker" {
        guest.vmlinux.clone()
    } else {
        guest.vmlinuz.clone()
    };
    d.add_test_image("bench", &kernel, vec![]);
    // The same guest with sshd's port as a readiness port: create -> SSH-ready.
    d.add_test_image("bench-ssh", &kernel, vec![22]);

    let mut totals = Vec::new();
    let mut overheads = Vec::new();
    let mut guest_boots = Vec::new();
    let mut api_ms = Vec::new();
    let mut stages: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for i in 0..runs {
        let name = format!("bench-{i}");
        let started = Instant::now();
        let op: banger_api::Operation = d
            .client
            .call(
                Method::POST,
                "/v1/vms",
                Some(&json!({"name": name, "image": "bench"})),
            )
            .await
            .unwrap();
        api_ms.push(started.elapsed().as_secs_f64() * 1000.0);
        let done = d.wait(&op).await;
        let total = started.elapsed().as_secs_f64() * 1000.0;
        assert_eq!(done.status, OperationStatus::Succeeded, "{done:#?}");
        let uptime = done
            .stages
            .iter()
            .find(|s| s.name == "agent")
            .and_then(|s| s.detail.as_deref())
            .and_then(guest_uptime_ms)
            .expect("agent stage reports the guest uptime");
        for stage in &done.stages {
            stages
                .entry(stage.name.clone())
                .or_default()
                .push(stage.duration_ms.unwrap_or(0) as f64);
        }
        totals.push(total);
        guest_boots.push(uptime);
        overheads.push(total - uptime);
        let del = d.delete(&format!("/v1/vms/{name}?force=true")).await;
        d.expect_ok(&del).await;
    }

    // Create -> SSH-ready: the `services` stage waits (through the agent) for sshd on port 22.
    let mut ssh_ready = Vec::new();
    let mut services = Vec::new();
    for i in 0..runs {
        let name = format!("ssh-{i}");
        let started = Instant::now();
        let op: banger_api::Operation = d
            .client
            .call(
                Method::POST,
                "/v1/vms",
                Some(&json!({"name": name, "image": "bench-ssh"})),
            )
            .await
            .unwrap();
        let done = d.wait(&op).await;
        assert_eq!(done.status, OperationStatus::Succeeded, "{done:#?}");
        ssh_ready.push(started.elapsed().as_secs_f64() * 1000.0);
        if let Some(stage) = done.stages.iter().find(|s| s.name == "services") {
            services.push(stage.duration_ms.unwrap_or(0) as f64);
        }
        let del = d.delete(&format!("/v1/vms/{name}?force=true")).await;
        d.expect_ok(&del).await;
    }

    // N creates at once: wall time until every VM is running, and each one's create -> ready.
    let parallel: usize = std::env::var("BANGER_BENCH_PARALLEL")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    let mut parallel_ms = Vec::new();
    let mut parallel_wall = Duration::ZERO;
    if parallel > 0 {
        let started = Instant::now();
        let creates = (0..parallel).map(|i| {
            let client = d.client.clone();
            async move {
                let began = Instant::now();
                let op: banger_api::Operation = client
                    .call(
                        Method::POST,
                        "/v1/vms",
                        Some(&json!({"name": format!("par-{i}"), "image": "bench"})),
                    )
                    .await
                    .unwrap();
                let done = client.follow(op.id, |_| {}).await.unwrap();
                assert_eq!(done.status, OperationStatus::Succeeded, "{done:#?}");
                began.elapsed().as_secs_f64() * 1000.0
            }
        });
        parallel_ms = futures::future::join_all(creates).await;
        parallel_wall = started.elapsed();
        for i in 0..parallel {
            let del = d.delete(&format!("/v1/vms/par-{i}?force=true")).await;
            d.expect_ok(&del).await;
        }
    }
    d.stop().await;

    let bare = if vmm == "qemu" {
        bare_boot(runs).await
    } else {
        Vec::new()
    };

    let (p50, p95) = summary(totals.clone());
    println!("banger create benchmark: {runs} sequential creates, vmm={vmm}, 1 vCPU, 256 MiB, test guest (Debian cloud kernel + busybox initramfs + agent)");
    println!(
        "  POST /v1/vms answered (allocate done)   p50 {:7.1} ms  p95 {:7.1} ms",
        summary(api_ms.clone()).0,
        summary(api_ms).1
    );
    println!("  create -> agent ready (running)         p50 {p50:7.1} ms  p95 {p95:7.1} ms");
    let (g50, g95) = summary(guest_boots);
    println!("  guest's own boot (uptime at 1st answer) p50 {g50:7.1} ms  p95 {g95:7.1} ms");
    let (o50, o95) = summary(overheads);
    println!("  banger overhead (ready - guest boot)    p50 {o50:7.1} ms  p95 {o95:7.1} ms");
    println!("  per stage (p50 / p95 ms):");
    for (stage, values) in stages {
        let (a, b) = summary(values);
        println!("    {stage:<9} {a:8.1} / {b:8.1}");
    }
    if !ssh_ready.is_empty() && !services.is_empty() {
        let (s50, s95) = summary(ssh_ready);
        let (v50, v95) = summary(services);
        println!("  create -> SSH-ready (sshd on :22)       p50 {s50:7.1} ms  p95 {s95:7.1} ms  (stage services p50 {v50:.1} / p95 {v95:.1} ms)");
    }
    if !parallel_ms.is_empty() {
        let (p50, p95) = summary(parallel_ms.clone());
        println!(
            "  {} creates at once: all running after {:.1} ms; each create -> ready p50 {p50:7.1} ms  p95 {p95:7.1} ms",
            parallel_ms.len(),
            parallel_wall.as_secs_f64() * 1000.0
        );
    }
    if !bare.is_empty() {
        let (b50, b95) = summary(bare.iter().map(|(t, _)| *t).collect());
        let (bu50, _) = summary(bare.iter().map(|(_, u)| *u).collect());
        println!("  bare VMM (QemuVmm::launch + agent, no daemon): p50 {b50:7.1} ms  p95 {b95:7.1} ms (guest uptime p50 {bu50:.1} ms)");
        println!(
            "  banger's cost over the bare VMM boot:       p50 {:7.1} ms",
            p50 - b50
        );
    }
}

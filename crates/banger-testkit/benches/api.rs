//! `cargo bench -p banger-testkit --bench api`: banger's own cost with many VMs, the guests taken
//! out of the picture. The real daemon (`banger_daemon::run`, real SQLite file, real HTTP over
//! the Unix socket, the real CLI client) runs in-process over the fake host layer (fake VMM,
//! disks, network and agent, which answer at once), so what is measured is the daemon itself:
//!
//! - N creates in flight at once (BANGER_BENCH_PARALLEL, default 16) until BANGER_BENCH_VMS
//!   (default 300) VMs exist: wall time, creates per second, create→running p50/p95;
//! - API latency with all of them present: `GET /v1/vms`, `GET /v1/vms/{name}`, `GET /v1/stats`,
//!   `GET /v1/health`, each request on a fresh connection like the CLI's;
//! - memory: this process's resident set before the daemon starts and with every VM present
//!   (the difference is the daemon's memory for N VMs plus the client's small share).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use banger_api::{Operation, OperationStatus, Vm};
use banger_cli::client::Client;
use banger_testkit::{environment, register_fake_image};
use hyper::Method;
use serde_json::json;
use tokio::sync::Semaphore;

const CONFIG: &str = "stats_poll_interval_secs = 1\n\n[vm_defaults]\nvcpus = 1\nmemory_mib = 256\n\n[network]\nsubnet = \"10.88.0.0/22\"\n";

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn summary(name: &str, mut ms: Vec<f64>) {
    ms.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let at = |p: f64| ms[((ms.len() as f64 - 1.0) * p).round() as usize];
    println!(
        "{name:<40} n={:<4} p50 {:>8.2} ms  p95 {:>8.2} ms  max {:>8.2} ms",
        ms.len(),
        at(0.5),
        at(0.95),
        ms[ms.len() - 1]
    );
}

async fn timed_gets(client: &Client, path: &str, runs: usize) -> Vec<f64> {
    let mut ms = Vec::with_capacity(runs);
    for _ in 0..runs {
        let started = Instant::now();
        let _: serde_json::Value = client.get(path).await.unwrap();
        ms.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    ms
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let vms = env_or("BANGER_BENCH_VMS", 300);
    let parallel = env_or("BANGER_BENCH_PARALLEL", 16);
    let dir = tempfile::tempdir().unwrap();
    let config = banger_config::load(&environment(dir.path(), CONFIG))
        .unwrap()
        .config;
    std::fs::create_dir_all(&config.runtime_dir).unwrap();
    std::fs::create_dir_all(&config.state_dir).unwrap();
    register_fake_image(&config, "base", vec![]);
    let rss_before = rss_kib();

    let socket = config.socket_path();
    let listener = tokio::net::UnixListener::bind(&socket).unwrap();
    let (mut host, _fakes) = banger_daemon::Host::fake();
    host.proc_root = dir.path().join("proc");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let daemon = tokio::spawn(banger_daemon::run(
        listener,
        config.clone(),
        host,
        async move {
            let _ = stopped.await;
        },
    ));
    let client = Client::new(&socket);
    for _ in 0..500 {
        if client.get::<serde_json::Value>("/v1/health").await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // Creates, `parallel` in flight at a time.
    let gate = Arc::new(Semaphore::new(parallel));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..vms {
        let permit = gate.clone().acquire_owned().await.unwrap();
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let began = Instant::now();
            let op: Operation = client
                .call(
                    Method::POST,
                    "/v1/vms",
                    Some(&json!({"name": format!("vm{i}"), "image": "base"})),
                )
                .await
                .unwrap();
            let done = client.follow(op.id, |_| {}).await.unwrap();
            assert_eq!(done.status, OperationStatus::Succeeded, "{done:#?}");
            drop(permit);
            began.elapsed().as_secs_f64() * 1000.0
        }));
    }
    let mut create_ms = Vec::new();
    for task in tasks {
        create_ms.push(task.await.unwrap());
    }
    let wall = started.elapsed();
    let listed: Vec<Vm> = client.get("/v1/vms").await.unwrap();
    assert_eq!(listed.len(), vms);
    println!(
        "{vms} creates, {parallel} in flight: {:.2} s wall, {:.0} creates/s (fake VMM, disks, network, agent)",
        wall.as_secs_f64(),
        vms as f64 / wall.as_secs_f64()
    );
    summary("create -> running (POST + follow)", create_ms);

    // Let the stats loop take a sample of every VM so /v1/stats has something to serve.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    summary(
        &format!("GET /v1/vms ({vms} VMs)"),
        timed_gets(&client, "/v1/vms", 200).await,
    );
    summary(
        "GET /v1/vms/{name}",
        timed_gets(&client, &format!("/v1/vms/vm{}", vms / 2), 200).await,
    );
    summary(
        &format!("GET /v1/stats ({vms} VMs)"),
        timed_gets(&client, "/v1/stats", 200).await,
    );
    summary(
        "GET /v1/health",
        timed_gets(&client, "/v1/health", 200).await,
    );
    let rss_after = rss_kib();
    let db = std::fs::metadata(config.db_path())
        .map(|m| m.len())
        .unwrap_or(0);
    println!(
        "resident memory: {:.1} MiB before the daemon, {:.1} MiB with {vms} VMs (+{:.1} MiB, {:.1} KiB per VM); SQLite file {:.0} KiB",
        rss_before as f64 / 1024.0,
        rss_after as f64 / 1024.0,
        (rss_after.saturating_sub(rss_before)) as f64 / 1024.0,
        (rss_after.saturating_sub(rss_before)) as f64 / vms as f64,
        db as f64 / 1024.0
    );
    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(10), daemon).await;
}

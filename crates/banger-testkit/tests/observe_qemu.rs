//! Stats and logs of a real guest: QEMU microvm (TCG here) with the Debian test guest, the real
//! procfs and QMP. Proves the stats loop reads the real VMM's CPU time, RSS and block counters
//! and that the console log API serves what the guest printed.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use banger_api::{VmState, VmStats};
use banger_testkit::{test_guest, RealDaemon};
use hyper::Method;
use serde_json::json;

const CONFIG: &str = "vmm = \"qemu\"\nboot_timeout_secs = 90\nstop_timeout_secs = 10\nstats_poll_interval_secs = 1\n\n[vm_defaults]\nvcpus = 1\nmemory_mib = 256\ndisk_size_mib = 256\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs qemu-system-x86_64, vhost-device-vsock and the Debian test guest; run with --include-ignored"]
async fn a_real_guest_has_stats_and_a_console_log() {
    let dir = tempfile::tempdir().unwrap();
    let d = RealDaemon::start(dir.path(), CONFIG).await;
    d.add_test_image("testguest", &test_guest().vmlinuz, vec![]);
    d.expect_ok(
        &d.post("/v1/vms", json!({"name": "obs", "image": "testguest"}))
            .await,
    )
    .await;
    assert_eq!(d.vm("obs").await.state, VmState::Running);

    let mut stats: Option<VmStats> = None;
    for _ in 0..100 {
        let now: VmStats = d.client.get("/v1/vms/obs/stats").await.unwrap();
        if now.samples.len() >= 3 {
            stats = Some(now);
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let stats = stats.expect("three samples within 20 s");
    let latest = stats.latest.clone().unwrap();
    eprintln!("latest sample of a real QEMU guest: {latest:#?}");
    assert!(latest.process_known, "procfs of the real QEMU was read");
    assert!(
        latest.cpu_time_ms > 0 && latest.rss_bytes > 16 << 20,
        "{latest:?}"
    );
    assert_eq!(latest.guest_memory_bytes, 256 << 20);
    assert!(latest.io_known, "QMP answered query-blockstats");
    assert!(
        latest.block_read_bytes > 0 || latest.block_read_ops > 0,
        "the guest read its disks: {latest:?}"
    );
    assert!(stats.samples.iter().skip(1).any(|s| s.cpu_percent > 0.0));

    let (status, body) = d
        .client
        .raw(Method::GET, "/v1/vms/obs/logs?tail=1000", None, vec![])
        .await
        .unwrap();
    assert!(status.is_success());
    let console = String::from_utf8_lossy(&body);
    assert!(console.contains("banger-guest: init done"), "{console}");
    let (_, vmm_log) = d
        .client
        .raw(Method::GET, "/v1/vms/obs/logs?kind=vmm", None, vec![])
        .await
        .unwrap();
    eprintln!("vmm.log: {} bytes", vmm_log.len());

    d.expect_ok(&d.delete("/v1/vms/obs?force=true").await).await;
    d.stop().await;
}

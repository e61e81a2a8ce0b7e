//! The VM lifecycle through banger with the real Firecracker backend: every configuration call
//! accepted by a real `firecracker`, the guest agent answering over Firecracker's vsock, graceful
//! stop, delete leaving nothing.
//!
//! Needs a `firecracker` binary on PATH (or BANGER_FIRECRACKER), /dev/kvm and BANGER_FC_KERNEL
//! (on PVM-backed hosts like banger's CI, the PVM kernel of shared/testing/pvm-kernel: it needs
//! 1 vCPU and takes minutes to boot, hence the long timeouts). Ignored by default; `.ci/run`
//! runs it when a firecracker binary is present and says so when it is not.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use banger_api::{StageStatus, VmState};
use banger_testkit::{firecracker_kernel, pid_alive, pvm_kernel_args, test_guest, RealDaemon};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs firecracker, /dev/kvm and BANGER_FC_KERNEL; slow on PVM hosts; run with --include-ignored"]
async fn firecracker_lifecycle_through_banger() {
    let kernel = firecracker_kernel();
    let bin = std::env::var("BANGER_FIRECRACKER").unwrap_or_else(|_| "firecracker".into());
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "vmm = \"firecracker\"\nfirecracker_bin = \"{}\"\nboot_timeout_secs = 1200\nstop_timeout_secs = 60\nextra_kernel_args = \"{}\"\n\n[vm_defaults]\nvcpus = 1\nmemory_mib = 256\ndisk_size_mib = 256\n",
        which(&bin),
        pvm_kernel_args()
    );
    let d = RealDaemon::start(dir.path(), &config).await;
    d.add_test_image("fcguest", &kernel, vec![]);
    let _ = test_guest();

    let op = d
        .post("/v1/vms", json!({"name": "fc", "image": "fcguest"}))
        .await;
    let done = d.wait_for(&op, Duration::from_secs(1500)).await;
    let vmm_stage = done
        .stages
        .iter()
        .find(|s| s.name == "vmm")
        .expect("vmm stage");
    assert_eq!(
        vmm_stage.status,
        StageStatus::Done,
        "every Firecracker configuration call accepted: {done:#?}"
    );
    eprintln!(
        "firecracker create: {:#?}",
        done.stages
            .iter()
            .map(|s| (s.name.clone(), s.duration_ms, s.detail.clone()))
            .collect::<Vec<_>>()
    );
    let agent = done
        .stages
        .iter()
        .find(|s| s.name == "agent")
        .expect("agent stage");
    assert_eq!(
        agent.status,
        StageStatus::Done,
        "the guest agent answered over Firecracker's vsock: {done:#?}"
    );
    let vm = d.vm("fc").await;
    assert_eq!(vm.state, VmState::Running);
    assert!(vm.vmm.as_deref().unwrap_or("").starts_with("firecracker"));
    let pid = vm.pid.unwrap();
    assert!(pid_alive(pid));

    let stop = d.post("/v1/vms/fc/stop", json!(null)).await;
    let stopped = d.wait_for(&stop, Duration::from_secs(300)).await;
    assert_eq!(
        stopped.status,
        banger_api::OperationStatus::Succeeded,
        "{stopped:#?}"
    );
    assert!(!pid_alive(pid), "firecracker exited");
    let run_dir = d.config.runtime_dir.join("vms").join(vm.id.to_string());
    assert!(!run_dir.exists(), "API and vsock sockets removed");

    d.expect_ok(&d.delete("/v1/vms/fc").await).await;
    assert!(!d.config.vms_dir().join(vm.id.to_string()).exists());
    d.stop().await;
}

fn which(bin: &str) -> String {
    if bin.contains('/') {
        return bin.to_string();
    }
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|p| p.join(bin))
                .find(|p| p.is_file())
        })
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| {
            panic!("{bin} not found on PATH: install firecracker or set BANGER_FIRECRACKER")
        })
}

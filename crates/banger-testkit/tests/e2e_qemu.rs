//! End to end with real guests: the whole daemon with the real host layer, QEMU microvm (TCG on
//! hosts without usable hardware KVM), vhost-device-vsock, the Debian test guest and banger's
//! agent. The VMs have no NIC here (networked runs live in the network tests, inside a netns).
//!
//! Needs root-free QEMU + vhost-device-vsock + the test guest prerequisites; ignored by default,
//! run by `.ci/run` with `--include-ignored`.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use banger_api::Operation;
use banger_api::{OperationStatus, StageStatus, VmState};
use banger_testkit::{pid_alive, test_guest, DaemonProcess, RealDaemon};
use hyper::Method;
use serde_json::json;

const CONFIG: &str = "vmm = \"qemu\"\nboot_timeout_secs = 90\nstop_timeout_secs = 10\n\n[vm_defaults]\nvcpus = 1\nmemory_mib = 256\ndisk_size_mib = 256\n\n# No NIC: networked guests live in e2e_network.rs, inside a namespace.\n[network]\nenabled = false\n";

async fn wait_state(d: &RealDaemon, name: &str, want: VmState) -> banger_api::Vm {
    for _ in 0..600 {
        let vm = d.vm(name).await;
        if vm.state == want {
            return vm;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{name} never reached {want}: {:#?}", d.vm(name).await);
}

/// Processes whose command line mentions `needle` (our own children included).
fn processes_mentioning(needle: &str) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if pid == std::process::id() {
            continue;
        }
        if let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) {
            if String::from_utf8_lossy(&cmdline).contains(needle) && pid_alive(pid) {
                found.push(pid);
            }
        }
    }
    found
}

fn assert_nothing_left(d: &RealDaemon, vm_id: &str) {
    let run_dir = d.config.runtime_dir.join("vms").join(vm_id);
    let left = processes_mentioning(&run_dir.display().to_string());
    let described: Vec<String> = left
        .iter()
        .map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            format!(
                "{pid}: {} | {}",
                stat.chars().take(60).collect::<String>(),
                String::from_utf8_lossy(&cmd).replace('\0', " ")
            )
        })
        .collect();
    assert!(
        left.is_empty(),
        "processes of {vm_id} left running: {described:#?}"
    );
    assert!(
        !run_dir.exists(),
        "runtime dir {} left behind",
        run_dir.display()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs qemu-system-x86_64, vhost-device-vsock and the Debian test guest; run with --include-ignored"]
async fn lifecycle_create_stop_start_delete_with_a_real_guest() {
    let dir = tempfile::tempdir().unwrap();
    let d = RealDaemon::start(dir.path(), CONFIG).await;
    d.add_test_image("testguest", &test_guest().vmlinuz, vec![]);

    let done = d
        .expect_ok(
            &d.post("/v1/vms", json!({"name": "e2e", "image": "testguest"}))
                .await,
        )
        .await;
    let stages: Vec<_> = done.stages.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(stages, ["allocate", "disks", "network", "vmm", "agent"]);
    let agent = done.stages.iter().find(|s| s.name == "agent").unwrap();
    assert!(
        agent
            .detail
            .as_deref()
            .unwrap_or("")
            .contains("guest uptime"),
        "{agent:?}"
    );
    let vm = d.vm("e2e").await;
    assert_eq!(vm.state, VmState::Running);
    let pid = vm.pid.unwrap();
    assert!(pid_alive(pid));
    assert!(vm.vmm.as_deref().unwrap_or("").starts_with("qemu"));
    let vm_dir = d.config.vms_dir().join(vm.id.to_string());
    let console = std::fs::read_to_string(vm_dir.join("console.log")).unwrap();
    assert!(
        console.contains("banger-guest: init done"),
        "console: {console}"
    );
    assert!(vm_dir.join("handles.json").is_file());
    assert!(vm_dir.join("overlay.ext4").is_file() && vm_dir.join("work.ext4").is_file());

    // Graceful stop goes through the agent; the guest powers off and QEMU exits by itself.
    let stopped = d
        .expect_ok(&d.post("/v1/vms/e2e/stop", json!(null)).await)
        .await;
    assert!(
        !stopped.stages.iter().any(|s| s.name == "kill"),
        "graceful stop needed a kill: {stopped:#?}"
    );
    let vm = d.vm("e2e").await;
    assert_eq!((vm.state, vm.pid), (VmState::Stopped, None));
    assert!(!pid_alive(pid));
    assert!(!vm_dir.join("handles.json").exists());
    assert_nothing_left(&d, &vm.id.to_string());
    assert!(vm_dir.join("work.ext4").is_file(), "disks survive a stop");

    d.expect_ok(&d.post("/v1/vms/e2e/start", json!(null)).await)
        .await;
    let vm = d.vm("e2e").await;
    assert_eq!(vm.state, VmState::Running);
    let id = vm.id.to_string();

    d.expect_ok(&d.delete("/v1/vms/e2e?force=true").await).await;
    assert_nothing_left(&d, &id);
    assert!(!vm_dir.exists(), "VM dir left behind");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs qemu-system-x86_64, vhost-device-vsock and the Debian test guest; run with --include-ignored"]
async fn two_vms_at_once_and_a_vmm_killed_from_outside() {
    let dir = tempfile::tempdir().unwrap();
    let d = RealDaemon::start(dir.path(), CONFIG).await;
    d.add_test_image("testguest", &test_guest().vmlinuz, vec![]);
    let a = d
        .post("/v1/vms", json!({"name": "one", "image": "testguest"}))
        .await;
    let b = d
        .post("/v1/vms", json!({"name": "two", "image": "testguest"}))
        .await;
    let (a, b) = tokio::join!(d.expect_ok(&a), d.expect_ok(&b));
    assert_eq!(
        (a.status, b.status),
        (OperationStatus::Succeeded, OperationStatus::Succeeded)
    );
    let (one, two) = (d.vm("one").await, d.vm("two").await);
    assert_ne!(one.vsock_cid, two.vsock_cid);
    assert_ne!(one.pid, two.pid);

    // Kill one VMM from outside: the daemon notices, records why, and cleans up its helper.
    let pid = one.pid.unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let dead = wait_state(&d, "one", VmState::Error).await;
    let why = dead.last_error.unwrap();
    assert!(why.contains("signal 9"), "{why}");
    assert_nothing_left(&d, &one.id.to_string());
    assert_eq!(
        d.vm("two").await.state,
        VmState::Running,
        "the other VM is unaffected"
    );

    for name in ["one", "two"] {
        d.expect_ok(&d.delete(&format!("/v1/vms/{name}?force=true")).await)
            .await;
    }
    assert_nothing_left(&d, &two.id.to_string());
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs qemu-system-x86_64, vhost-device-vsock and the Debian test guest; run with --include-ignored"]
async fn create_failing_at_a_late_stage_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let config = CONFIG.replace("boot_timeout_secs = 90", "boot_timeout_secs = 45");
    let d = RealDaemon::start(dir.path(), &config).await;
    // Port 7 never answers in the test guest: the services stage must fail and roll back.
    d.add_test_image("noservice", &test_guest().vmlinuz, vec![7]);
    let done = d
        .wait(
            &d.post("/v1/vms", json!({"name": "late", "image": "noservice"}))
                .await,
        )
        .await;
    assert_eq!(done.status, OperationStatus::Failed);
    let last = done.stages.last().unwrap();
    assert_eq!(
        (last.name.as_str(), last.status),
        ("services", StageStatus::Failed),
        "{done:#?}"
    );
    let vm = d.vm("late").await;
    assert_eq!(vm.state, VmState::Error);
    assert!(vm.last_error.unwrap().contains("services"));
    let id = vm.id.to_string();
    assert_nothing_left(&d, &id);
    let vm_dir = d.config.vms_dir().join(&id);
    assert!(
        !vm_dir.join("overlay.ext4").exists() && !vm_dir.join("work.ext4").exists(),
        "disks rolled back"
    );
    assert!(!vm_dir.join("handles.json").exists());

    // A kernel that is not a kernel is refused before anything is created.
    let bogus = dir.path().join("not-a-kernel");
    std::fs::write(&bogus, b"this is not a kernel").unwrap();
    d.add_test_image("bogus", &bogus, vec![]);
    let err = d
        .client
        .call::<banger_api::Operation>(
            Method::POST,
            "/v1/vms",
            Some(&json!({"name": "bogus-vm", "image": "bogus"})),
        )
        .await
        .unwrap_err();
    match err {
        banger_cli::client::ClientError::Api(api) => {
            assert_eq!(api.code, banger_api::ErrorCode::Unsatisfiable);
            assert!(api.message.contains("not a kernel"), "{}", api.message);
        }
        other => panic!("{other:?}"),
    }
    assert!(
        d.client
            .get::<banger_api::Vm>("/v1/vms/bogus-vm")
            .await
            .is_err(),
        "no VM row"
    );
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs qemu-system-x86_64, vhost-device-vsock and the Debian test guest; run with --include-ignored"]
async fn daemon_sigkill_readopts_running_vms_and_reconciles_a_create_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let d = DaemonProcess::start(dir.path(), CONFIG).await;
    let image = add_image_to(&d.config, "testguest", vec![]);
    let post = |path: &str, body: serde_json::Value| {
        let client = d.client.clone();
        let path = path.to_string();
        async move {
            client
                .call::<Operation>(Method::POST, &path, Some(&body))
                .await
                .unwrap()
        }
    };
    let op = post("/v1/vms", json!({"name": "survivor", "image": image})).await;
    let done = d.client.follow(op.id, |_| {}).await.unwrap();
    assert_eq!(done.status, OperationStatus::Succeeded, "{done:#?}");
    let before: banger_api::Vm = d.client.get("/v1/vms/survivor").await.unwrap();

    // A create in flight when the daemon dies: SIGKILL it as soon as the VM's VMM exists.
    let op = post("/v1/vms", json!({"name": "inflight", "image": "testguest"})).await;
    let inflight_id = op.vm_id.unwrap().to_string();
    let run_dir = d.config.runtime_dir.join("vms").join(&inflight_id);
    for _ in 0..1000 {
        if !processes_mentioning(&run_dir.display().to_string()).is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    d.kill9();
    assert!(
        pid_alive(before.pid.unwrap()),
        "VMs keep running when the daemon dies"
    );

    let d = RealDaemon::start(dir.path(), CONFIG).await;
    let after = d.vm("survivor").await;
    assert_eq!(
        (after.state, after.pid),
        (VmState::Running, before.pid),
        "re-adopted"
    );
    let inflight = d.vm("inflight").await;
    assert_eq!(inflight.state, VmState::Error, "{inflight:#?}");
    assert_nothing_left(&d, &inflight_id);
    // The re-adopted VM is fully managed: stop it gracefully.
    d.expect_ok(&d.post("/v1/vms/survivor/stop", json!(null)).await)
        .await;
    assert!(!pid_alive(before.pid.unwrap()));
    for name in ["survivor", "inflight"] {
        d.expect_ok(&d.delete(&format!("/v1/vms/{name}?force=true")).await)
            .await;
    }
    assert!(
        std::fs::read_dir(d.config.vms_dir())
            .unwrap()
            .next()
            .is_none(),
        "every VM dir removed"
    );
    d.stop().await;
}

fn add_image_to(config: &banger_config::Config, name: &str, ports: Vec<u16>) -> String {
    banger_testkit::register_test_image(config, name, &test_guest().vmlinuz, ports);
    name.to_string()
}

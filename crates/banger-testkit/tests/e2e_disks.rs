//! Disks end to end with real guests: the daemon with the real host layer (`OverlayDisks` over
//! `RealDisks`), QEMU microvm, and the test guest whose initramfs mounts the overlay root over
//! the image's shared base (`tests/guest/init.sh`). Commands run in the guest through the agent
//! on the VM's vsock socket.
//!
//! The VMs have no network (`network.enabled = false`). Ignored by default; run with
//! `cargo test -p banger-testkit --test e2e_disks -- --include-ignored` (as root, with
//! vhost-device-vsock on PATH).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use banger_agent::client::AgentClient;
use banger_agent::AGENT_PORT;
use banger_api::{ImageId, RootCloneMethod, RootMode, Vm, VmName, VmState};
use banger_store::records::ImageRecord;
use banger_store::Store;
use banger_testkit::{test_guest, RealDaemon};
use hyper::Method;
use serde_json::json;

const CONFIG: &str = "vmm = \"qemu\"\nboot_timeout_secs = 90\nstop_timeout_secs = 15\n\n\
[vm_defaults]\nvcpus = 1\nmemory_mib = 256\ndisk_size_mib = 256\n\n[network]\nenabled = false\n";

/// Runs `script` with `sh -c` in the guest; panics unless it exits 0. Returns stdout.
async fn sh(d: &RealDaemon, vm: &Vm, script: &str) -> String {
    let uds = d
        .config
        .runtime_dir
        .join("vms")
        .join(vm.id.to_string())
        .join("vsock.sock");
    let client = AgentClient::connect(&uds, AGENT_PORT, Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("agent of {}: {e}", vm.name));
    let out = client
        .exec_collect(["sh", "-c", script])
        .await
        .unwrap_or_else(|e| panic!("exec in {}: {e}", vm.name));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        out.status.code,
        Some(0),
        "`{script}` in {}: stdout {stdout:?}, stderr {:?}",
        vm.name,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn sha256(path: &Path) -> String {
    let out = std::process::Command::new("sha256sum")
        .arg(path)
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()[..64].to_string()
}

async fn create(d: &RealDaemon, name: &str, image: &str) -> Vm {
    d.expect_ok(
        &d.post("/v1/vms", json!({"name": name, "image": image}))
            .await,
    )
    .await;
    let vm = d.vm(name).await;
    assert_eq!(vm.state, VmState::Running, "{vm:#?}");
    vm
}

async fn stop(d: &RealDaemon, name: &str) {
    d.expect_ok(&d.post(&format!("/v1/vms/{name}/stop"), json!(null)).await)
        .await;
}

async fn start(d: &RealDaemon, name: &str) -> Vm {
    d.expect_ok(&d.post(&format!("/v1/vms/{name}/start"), json!(null)).await)
        .await;
    d.vm(name).await
}

async fn delete(d: &RealDaemon, vm: &Vm) {
    d.expect_ok(&d.delete(&format!("/v1/vms/{}?force=true", vm.name)).await)
        .await;
}

fn vm_dir(d: &RealDaemon, vm: &Vm) -> PathBuf {
    d.config.vms_dir().join(vm.id.to_string())
}

/// Every file under `dir` (recursively), for "nothing left behind" checks.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                found.extend(files_under(&path));
            } else {
                found.push(path);
            }
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs qemu-system-x86_64, vhost-device-vsock and the Debian test guest; run with --include-ignored"]
async fn writes_to_root_and_work_disk_survive_stop_start_and_the_work_disk_grows() {
    let dir = tempfile::tempdir().unwrap();
    let d = RealDaemon::start(dir.path(), CONFIG).await;
    d.add_test_image("testguest", &test_guest().vmlinuz, vec![]);
    let vm = create(&d, "keeper", "testguest").await;

    // The root is the overlay over the image's base, and /root is the work disk.
    let mounts = sh(&d, &vm, "cat /proc/mounts").await;
    assert!(
        mounts
            .lines()
            .any(|l| l.starts_with("overlay / overlay") && l.contains("lowerdir=/lower")),
        "{mounts}"
    );
    assert!(
        mounts.lines().any(|l| l.starts_with("/dev/vdc /root ext4")),
        "{mounts}"
    );
    assert_eq!(sh(&d, &vm, "cat /etc/banger/root-origin").await, "base\n");
    assert_eq!(vm.root_mode, RootMode::Overlay);
    let names: Vec<&str> = vm.disks.iter().map(|disk| disk.name.as_str()).collect();
    assert_eq!(names, ["rootfs", "overlay", "work"]);
    let overlay = &vm.disks[1];
    assert_eq!(overlay.apparent_bytes, 8 << 30);
    assert!(
        overlay.allocated_bytes < 64 << 20,
        "the overlay is sparse: {overlay:?}"
    );

    sh(
        &d,
        &vm,
        "echo root-write >/etc/banger-test && echo work-write >/root/data && sync",
    )
    .await;
    stop(&d, "keeper").await;
    let vm = start(&d, "keeper").await;
    assert_eq!(
        sh(&d, &vm, "cat /etc/banger-test /root/data").await,
        "root-write\nwork-write\n"
    );

    // `vm edit --disk-size` grows the work disk while stopped; the guest's df sees it.
    let df_kib = |text: String| -> u64 {
        text.lines()
            .nth(1)
            .unwrap()
            .split_whitespace()
            .nth(1)
            .unwrap()
            .parse()
            .unwrap()
    };
    let before = df_kib(sh(&d, &vm, "df -k /root").await);
    assert!(before < 256 * 1024, "{before} KiB");
    stop(&d, "keeper").await;
    let edited: Vm = d
        .client
        .call(
            Method::PATCH,
            "/v1/vms/keeper",
            Some(&json!({"disk_size_mib": 512})),
        )
        .await
        .unwrap();
    assert_eq!(edited.disk_size_mib, 512);
    let work = edited
        .disks
        .iter()
        .find(|disk| disk.name == "work")
        .unwrap();
    assert_eq!(work.apparent_bytes, 512 << 20);
    let vm = start(&d, "keeper").await;
    let after = df_kib(sh(&d, &vm, "df -k /root").await);
    assert!(after > 400 * 1024, "df after growing: {after} KiB");
    assert_eq!(sh(&d, &vm, "cat /root/data").await, "work-write\n");

    // Delete removes every per-VM file.
    let own = vm_dir(&d, &vm);
    assert!(own.join("overlay.ext4").is_file() && own.join("work.ext4").is_file());
    delete(&d, &vm).await;
    assert!(!own.exists(), "left behind: {:?}", files_under(&own));
    assert!(
        files_under(&d.config.vms_dir()).is_empty(),
        "{:?}",
        files_under(&d.config.vms_dir())
    );
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs qemu-system-x86_64, vhost-device-vsock and the Debian test guest; run with --include-ignored"]
async fn two_vms_of_one_image_do_not_see_each_others_writes_and_the_base_is_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let d = RealDaemon::start(dir.path(), CONFIG).await;
    d.add_test_image("testguest", &test_guest().vmlinuz, vec![]);
    let base = test_guest().rootfs;
    let base_sum = sha256(&base);

    let one = create(&d, "one", "testguest").await;
    let two = create(&d, "two", "testguest").await;
    // Writes over files of the base, new files, a deletion of a base file.
    sh(
        &d,
        &one,
        "echo one >/etc/banger-test && echo one >/etc/hostname && rm /etc/banger/root-origin \
         && dd if=/dev/urandom of=/var/blob bs=1M count=4 2>/dev/null && sync",
    )
    .await;
    sh(&d, &two, "echo two >/etc/banger-test && sync").await;

    assert_eq!(
        sh(&d, &one, "cat /etc/banger-test /etc/hostname").await,
        "one\none\n"
    );
    assert_eq!(
        sh(
            &d,
            &two,
            "cat /etc/banger-test /etc/hostname /etc/banger/root-origin; ls /var"
        )
        .await,
        "two\nbanger-guest\nbase\n"
    );
    assert_eq!(
        sh(
            &d,
            &one,
            "test -e /etc/banger/root-origin && echo present || echo gone"
        )
        .await,
        "gone\n"
    );

    // One's writes landed in its own overlay disk, not in two's.
    let one_vm = d.vm("one").await;
    let two_vm = d.vm("two").await;
    let allocated = |vm: &Vm| {
        vm.disks
            .iter()
            .find(|disk| disk.name == "overlay")
            .unwrap()
            .allocated_bytes
    };
    assert!(
        allocated(&one_vm) >= allocated(&two_vm) + (3 << 20),
        "one {} vs two {}",
        allocated(&one_vm),
        allocated(&two_vm)
    );

    delete(&d, &one).await;
    delete(&d, &two).await;
    assert_eq!(sha256(&base), base_sum, "the shared base was written to");
    assert!(files_under(&d.config.vms_dir()).is_empty());
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs qemu-system-x86_64, vhost-device-vsock and the Debian test guest; run with --include-ignored"]
async fn a_clone_root_is_a_private_copy_of_the_base_that_survives_stop_start() {
    let dir = tempfile::tempdir().unwrap();
    let d = RealDaemon::start(dir.path(), CONFIG).await;
    let guest = test_guest();
    // An image that cannot take banger's overlay init: its own boot mounts `root=`.
    let record = ImageRecord {
        id: ImageId::new(),
        name: VmName::parse("foreign").unwrap(),
        kernel_path: guest.vmlinuz.clone(),
        initrd_path: Some(guest.initramfs.clone()),
        modules_path: None,
        rootfs_path: guest.rootfs.clone(),
        work_seed_path: None,
        cmdline: "console=ttyS0 panic=-1 quiet root=/dev/vda rw".into(),
        readiness_ports: vec![],
        agent_version: None,
        parent_id: None,
        sha256: None,
        managed: false,
        size_bytes: 0,
        root_mode: RootMode::Clone,
        created_at: chrono::Utc::now(),
    };
    Store::open(&d.config.db_path())
        .unwrap()
        .insert_image(&record)
        .unwrap();
    let base_sum = sha256(&guest.rootfs);

    let vm = create(&d, "cloned", "foreign").await;
    assert_eq!(vm.root_mode, RootMode::Clone);
    // The temp dir is on ext4 here: no reflink, so the copy keeps holes instead.
    assert!(vm.root_clone_method.is_some(), "{vm:#?}");
    if vm.root_clone_method == Some(RootCloneMethod::SparseCopy) {
        let root = vm.disks.iter().find(|disk| disk.name == "root").unwrap();
        assert!(root.allocated_bytes < root.apparent_bytes, "{root:?}");
    }
    let mounts = sh(&d, &vm, "cat /proc/mounts").await;
    assert!(
        mounts.lines().any(|l| l.starts_with("/dev/vda / ext4 rw")),
        "{mounts}"
    );
    assert!(
        mounts.lines().any(|l| l.starts_with("/dev/vdb /root ext4")),
        "{mounts}"
    );
    sh(&d, &vm, "echo cloned >/etc/banger-test && sync").await;
    stop(&d, "cloned").await;
    let vm = start(&d, "cloned").await;
    assert_eq!(sh(&d, &vm, "cat /etc/banger-test").await, "cloned\n");
    assert!(
        d.vm("cloned").await.root_clone_method.is_some(),
        "the clone method is kept across stop/start"
    );

    let own = vm_dir(&d, &vm);
    assert!(own.join("root.ext4").is_file());
    delete(&d, &vm).await;
    assert!(!own.exists());
    assert_eq!(
        sha256(&guest.rootfs),
        base_sum,
        "the shared base was written to"
    );
    d.stop().await;
}

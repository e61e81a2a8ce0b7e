//! Images end to end: a real Debian image bootstrapped from Debian's packages (debootstrap +
//! `mkfs.ext4 -d`), booted under QEMU (TCG on this PVM host) with banger's init, agent and sshd,
//! then built upon with `image build`. The VMs have no NIC (`network.enabled = false`).
//!
//! The debootstrap tree is cached in the test cache (`BANGER_TEST_CACHE`), so only the first run
//! on a machine downloads Debian (about 100 s); later runs configure and pack the cached tree.
//! Ignored by default; run with `--include-ignored` (as root: debootstrap and mkfs -d keep
//! owners).
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use banger_agent::client::AgentClient;
use banger_agent::protocol::AGENT_PORT;
use banger_api::{Image, OperationStatus, Vm, VmState};
use banger_testkit::{static_agent, test_cache, test_guest, RealDaemon};
use serde_json::json;

const CONFIG: &str = "vmm = \"qemu\"\nboot_timeout_secs = 180\nstop_timeout_secs = 20\n\n[vm_defaults]\nvcpus = 1\nmemory_mib = 256\ndisk_size_mib = 256\n\n[network]\nenabled = false\n";

#[test]
#[ignore = "builds the test guest (downloads Debian's cloud kernel); run with --include-ignored"]
fn vmlinux_is_extracted_from_debians_cloud_vmlinuz() {
    let guest = test_guest();
    let bzimage = std::fs::read(&guest.vmlinuz).unwrap();
    let started = Instant::now();
    let elf = banger_core::images::vmlinux::extract_vmlinux(&bzimage).unwrap();
    eprintln!(
        "extracted {} MiB of ELF from {} MiB of bzImage in {:?}",
        elf.len() >> 20,
        bzimage.len() >> 20,
        started.elapsed()
    );
    assert_eq!(&elf[..4], b"\x7fELF");
    // The test guest's own vmlinux was extracted by its build script another way.
    assert_eq!(elf, std::fs::read(&guest.vmlinux).unwrap());
}

/// Runs `argv` in the VM through its agent; returns stdout.
async fn guest_exec(d: &RealDaemon, vm: &Vm, argv: &[&str]) -> String {
    let uds = d
        .config
        .runtime_dir
        .join("vms")
        .join(vm.id.to_string())
        .join("vsock.sock");
    let client = AgentClient::connect(&uds, AGENT_PORT, Duration::from_secs(30))
        .await
        .unwrap();
    let out = client.exec_collect(argv.iter().copied()).await.unwrap();
    assert!(
        out.status.success(),
        "{argv:?}: {:?} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

async fn create(d: &RealDaemon, name: &str, image: &str) -> (Vm, Duration) {
    let started = Instant::now();
    let op = d
        .post("/v1/vms", json!({"name": name, "image": image}))
        .await;
    let done = d.wait_for(&op, Duration::from_secs(300)).await;
    assert_eq!(done.status, OperationStatus::Succeeded, "{done:#?}");
    let vm = d.vm(name).await;
    assert_eq!(vm.state, VmState::Running);
    (vm, started.elapsed())
}

async fn delete(d: &RealDaemon, name: &str) {
    let op = d.delete(&format!("/v1/vms/{name}?force=true")).await;
    d.expect_ok(&op).await;
}

/// Points the daemon's debootstrap cache at the machine's test cache.
fn share_debootstrap_cache(dir: &Path) {
    let shared = test_cache().join("debootstrap");
    std::fs::create_dir_all(&shared).unwrap();
    let cache = dir.join("cache");
    std::fs::create_dir_all(&cache).unwrap();
    std::os::unix::fs::symlink(&shared, cache.join("debootstrap")).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root, debootstrap + a Debian mirror, qemu-system-x86_64 and vhost-device-vsock; run with --include-ignored"]
async fn bootstrap_boot_and_build_a_debian_image() {
    std::env::set_var("BANGER_AGENT_BIN", static_agent());
    let dir = tempfile::tempdir().unwrap();
    share_debootstrap_cache(dir.path());
    let d = RealDaemon::start(dir.path(), CONFIG).await;

    // Bootstrap.
    let started = Instant::now();
    let op = d.post("/v1/images/bootstrap", json!({})).await;
    let done = d.wait_for(&op, Duration::from_secs(1800)).await;
    assert_eq!(done.status, OperationStatus::Succeeded, "{done:#?}");
    eprintln!("image bootstrap: {:?}", started.elapsed());
    for stage in &done.stages {
        eprintln!(
            "  {:<12} {:>7} ms  {}",
            stage.name,
            stage.duration_ms.unwrap_or(0),
            stage.detail.clone().unwrap_or_default()
        );
    }
    let image: Image = d.client.get("/v1/images/debian-12").await.unwrap();
    assert!(image.managed);
    assert_eq!(image.readiness_ports, vec![22]);
    let store = d.config.images_dir().join(image.id.to_string());
    let vmlinux = std::fs::read(store.join("vmlinux")).unwrap();
    assert_eq!(
        &vmlinux[..4],
        b"\x7fELF",
        "the Firecracker kernel is an ELF"
    );

    // Two VMs: each boots to agent + sshd with its own identity.
    let (a, took_a) = create(&d, "deb-a", "debian-12").await;
    let (b, took_b) = create(&d, "deb-b", "debian-12").await;
    eprintln!("create to sshd ready: {took_a:?} and {took_b:?}");
    let hostname = guest_exec(&d, &a, &["hostname"]).await;
    assert_eq!(hostname.trim(), "deb-a");
    let ids: Vec<String> = [
        guest_exec(&d, &a, &["cat", "/etc/machine-id"]).await,
        guest_exec(&d, &b, &["cat", "/etc/machine-id"]).await,
    ]
    .into_iter()
    .map(|s| s.trim().to_string())
    .collect();
    assert_eq!(ids[0].len(), 32, "{ids:?}");
    assert_ne!(ids[0], ids[1], "machine-ids must differ");
    let keys = [
        guest_exec(&d, &a, &["cat", "/etc/ssh/ssh_host_ed25519_key.pub"]).await,
        guest_exec(&d, &b, &["cat", "/etc/ssh/ssh_host_ed25519_key.pub"]).await,
    ];
    assert!(keys[0].starts_with("ssh-ed25519 "), "{keys:?}");
    assert_ne!(keys[0], keys[1], "SSH host keys must differ");
    let root = guest_exec(&d, &a, &["findmnt", "-n", "-o", "FSTYPE,OPTIONS", "/"]).await;
    assert!(root.starts_with("overlay") && root.contains("rw"), "{root}");
    let home = guest_exec(&d, &a, &["findmnt", "-n", "-o", "SOURCE", "/root"]).await;
    assert_eq!(home.trim(), "/dev/vdc");
    let sshd = guest_exec(&d, &a, &["systemctl", "is-active", "ssh"]).await;
    assert_eq!(sshd.trim(), "active");
    let key =
        std::fs::read_to_string(format!("{}.pub", d.config.ssh_key_path().display())).unwrap();
    let authorized = guest_exec(&d, &a, &["cat", "/etc/ssh/banger_authorized_keys"]).await;
    assert_eq!(authorized.trim(), key.trim());
    delete(&d, "deb-a").await;
    delete(&d, "deb-b").await;

    // Build on it: a script that writes a file.
    let started = Instant::now();
    let op = d
        .post(
            "/v1/images/build",
            json!({
                "from": "debian-12",
                "name": "debian-built",
                "script": "echo built-by-banger > /etc/banger-built\nmkdir -p /opt/tool && echo v1 > /opt/tool/VERSION\n",
            }),
        )
        .await;
    let built = d.wait_for(&op, Duration::from_secs(900)).await;
    assert_eq!(built.status, OperationStatus::Succeeded, "{built:#?}");
    eprintln!("image build: {:?}", started.elapsed());
    for stage in &built.stages {
        eprintln!(
            "  {:<10} {:>7} ms",
            stage.name,
            stage.duration_ms.unwrap_or(0)
        );
    }
    let child: Image = d.client.get("/v1/images/debian-built").await.unwrap();
    assert_eq!(child.parent_id, Some(image.id));
    let vms: Vec<Vm> = d.client.get("/v1/vms").await.unwrap();
    assert!(vms.is_empty(), "no builder VM left: {vms:?}");

    let (c, _) = create(&d, "deb-c", "debian-built").await;
    assert_eq!(
        guest_exec(&d, &c, &["cat", "/etc/banger-built"])
            .await
            .trim(),
        "built-by-banger"
    );
    assert_eq!(
        guest_exec(&d, &c, &["cat", "/opt/tool/VERSION"])
            .await
            .trim(),
        "v1"
    );
    let c_key = guest_exec(&d, &c, &["cat", "/etc/ssh/ssh_host_ed25519_key.pub"]).await;
    assert!(
        !keys.contains(&c_key),
        "a built image must not carry the builder's host key"
    );
    delete(&d, "deb-c").await;

    // The same build again: answered from the cache, no builder VM.
    let started = Instant::now();
    let op = d
        .post(
            "/v1/images/build",
            json!({
                "from": "debian-12",
                "name": "debian-built",
                "script": "echo built-by-banger > /etc/banger-built\nmkdir -p /opt/tool && echo v1 > /opt/tool/VERSION\n",
            }),
        )
        .await;
    let again = d.expect_ok(&op).await;
    assert_eq!(again.stages.len(), 1, "{again:#?}");
    eprintln!("cached build: {:?}", started.elapsed());

    // A failing script: no image, no builder VM, no staging files.
    let op = d
        .post(
            "/v1/images/build",
            json!({"from": "debian-12", "name": "debian-broken", "script": "echo about to fail\nfalse\n"}),
        )
        .await;
    let failed = d.wait_for(&op, Duration::from_secs(600)).await;
    assert_eq!(failed.status, OperationStatus::Failed, "{failed:#?}");
    let error = failed.error.unwrap();
    let text = format!("{} {}", error.message, error.causes.join(" "));
    assert!(
        text.contains("about to fail"),
        "the error shows the output: {text}"
    );
    assert!(d
        .client
        .get::<Image>("/v1/images/debian-broken")
        .await
        .is_err());
    let vms: Vec<Vm> = d.client.get("/v1/vms").await.unwrap();
    assert!(vms.is_empty(), "{vms:?}");
    let leftovers: Vec<_> = std::fs::read_dir(d.config.images_dir())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .map(|e| e.path())
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // Delete removes the managed files.
    let _: Image = d
        .client
        .call(
            hyper::Method::DELETE,
            "/v1/images/debian-built",
            None::<&()>,
        )
        .await
        .unwrap();
    assert!(!d.config.images_dir().join(child.id.to_string()).exists());
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root, debootstrap + a Debian mirror, the npm registry, qemu-system-x86_64 and vhost-device-vsock; run with --include-ignored"]
async fn bootstrap_with_opencode_serves_the_coding_agent_on_4096_before_create_returns() {
    std::env::set_var("BANGER_AGENT_BIN", static_agent());
    let dir = tempfile::tempdir().unwrap();
    share_debootstrap_cache(dir.path());
    let config = CONFIG
        .replace("boot_timeout_secs = 180", "boot_timeout_secs = 600")
        .replace("memory_mib = 256", "memory_mib = 1024");
    let d = RealDaemon::start(dir.path(), &config).await;
    let op = d
        .post(
            "/v1/images/bootstrap",
            json!({"name": "debian-oc", "with": ["opencode"]}),
        )
        .await;
    let done = d.wait_for(&op, Duration::from_secs(1800)).await;
    assert_eq!(done.status, OperationStatus::Succeeded, "{done:#?}");
    let image: Image = d.client.get("/v1/images/debian-oc").await.unwrap();
    assert_eq!(image.readiness_ports, vec![22, 4096]);

    // Create returns only once the declared services answer: sshd and opencode on 4096.
    let started = Instant::now();
    let op = d
        .post("/v1/vms", json!({"name": "oc", "image": "debian-oc"}))
        .await;
    let done = d.wait_for(&op, Duration::from_secs(900)).await;
    assert_eq!(done.status, OperationStatus::Succeeded, "{done:#?}");
    let services = done
        .stages
        .iter()
        .find(|s| s.name == "services")
        .expect("services stage");
    assert!(
        services.detail.as_deref().unwrap_or("").contains(":4096"),
        "{services:?}"
    );
    eprintln!("create to opencode answering: {:?}", started.elapsed());
    let vm = d.vm("oc").await;
    let listening = guest_exec(&d, &vm, &["sh", "-c", "ss -ltn | grep ':4096 '"]).await;
    assert!(listening.contains("4096"), "{listening}");
    delete(&d, "oc").await;
    d.stop().await;
}

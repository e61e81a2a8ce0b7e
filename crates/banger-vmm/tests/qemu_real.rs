//! The QEMU backend against the real `qemu-system-x86_64` and `vhost-device-vsock`, under TCG.
//!
//! The guest is Debian's cloud kernel (downloaded once with `apt-get download` and cached under
//! `$BANGER_TEST_CACHE/qemu-vmm`, default `/var/tmp/banger-test-cache/qemu-vmm`) and an
//! initramfs built here from the host's static busybox plus a few of the kernel's modules. Its
//! `/init` loads virtio and the ACPI power button, prints the sizes of `vda` and `vdb` (to pin
//! drive order), a marker, and powers off when the power button is pressed.
//!
//! Every process a test starts is SIGKILLed by a guard on the way out, pass or fail.
//! Run: `cargo test -p banger-vmm --test qemu_real -- --include-ignored --nocapture`.

#![allow(clippy::unwrap_used)] // tests may unwrap: a panic is the failure report

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use banger_host::process::{ProcessId, Processes, RealProcesses};
use banger_vmm::qemu::{Accel, QemuVmm};
use banger_vmm::{Drive, LaunchSpec, NetIface, Vmm, VmmError, VmmHandles};
use nix::sys::signal::Signal;

const MARKER: &str = "BANGER-QEMU-TEST-READY";
/// Kernel modules the initramfs loads (`/init` loads them in dependency order).
const MODULES: &[&str] = &[
    "drivers/virtio/virtio.ko",
    "drivers/virtio/virtio_ring.ko",
    "drivers/virtio/virtio_mmio.ko",
    "drivers/block/virtio_blk.ko",
    "net/core/failover.ko",
    "drivers/net/net_failover.ko",
    "drivers/net/virtio_net.ko",
    "drivers/acpi/button.ko",
    "drivers/input/evdev.ko",
];

const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox echo BANGER-INIT-STARTED
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in virtio_ring virtio virtio_mmio virtio_blk failover net_failover virtio_net button evdev; do
  insmod /modules/$m.ko
done
for i in $(seq 1 100); do [ -e /sys/block/vdb/size ] && break; sleep 0.1; done
echo "BANGER-DRIVES vda=$(cat /sys/block/vda/size) vdb=$(cat /sys/block/vdb/size)"
echo "BANGER-VIRTIO-IDS $(cat /sys/bus/virtio/devices/*/device | sort | tr '\n' ' ')"
echo "BANGER-NET $(cat /sys/class/net/eth0/address 2>/dev/null)"
PB=
for ev in /sys/class/input/event*; do
  grep -q "Power Button" "$ev/device/name" 2>/dev/null && PB=/dev/input/${ev##*/}
done
echo "BANGER-POWER-BUTTON $PB"
echo BANGER-QEMU-TEST-READY
if [ -n "$PB" ]; then dd if="$PB" of=/dev/null bs=24 count=1 2>/dev/null; else sleep 100000; fi
echo BANGER-POWERING-OFF
poweroff -f
"#;

fn cache_dir() -> PathBuf {
    std::env::var_os("BANGER_TEST_CACHE")
        .map_or_else(
            || PathBuf::from("/var/tmp/banger-test-cache"),
            PathBuf::from,
        )
        .join("qemu-vmm")
}

fn vhost_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("BANGER_VHOST_DEVICE_VSOCK") {
        return path.into();
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    let cargo_bin = home.join(".cargo/bin/vhost-device-vsock");
    if cargo_bin.exists() {
        cargo_bin
    } else {
        "vhost-device-vsock".into()
    }
}

fn run(command: &mut Command) -> String {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("{command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Debian's cloud kernel and the modules the initramfs needs, downloaded once and cached.
fn kernel() -> (PathBuf, PathBuf) {
    static PREPARE: Mutex<()> = Mutex::new(());
    let _serial = PREPARE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let cache = cache_dir();
    let (vmlinuz, modules) = (cache.join("vmlinuz"), cache.join("modules"));
    let cached = |m: &&str| {
        modules
            .join(Path::new(m).file_name().unwrap_or_default())
            .exists()
    };
    if vmlinuz.exists() && MODULES.iter().all(cached) {
        return (vmlinuz, modules);
    }
    std::fs::create_dir_all(&cache).unwrap();
    let work = tempfile::tempdir_in(&cache).unwrap();
    let depends = run(Command::new("apt-cache").args(["depends", "linux-image-cloud-amd64"]));
    let package = depends
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("Depends: ")
                .filter(|p| p.starts_with("linux-image-"))
        })
        .unwrap_or_else(|| panic!("no kernel package in {depends}"))
        .to_string();
    run(Command::new("apt-get")
        .arg("download")
        .arg(&package)
        .current_dir(work.path()));
    let deb = std::fs::read_dir(work.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .unwrap();
    let tree = work.path().join("tree");
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tree));
    let boot = std::fs::read_dir(tree.join("boot"))
        .unwrap()
        .map(|e| e.unwrap().path());
    let image = boot
        .into_iter()
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("vmlinuz-")
        })
        .unwrap();
    let release = image
        .file_name()
        .unwrap()
        .to_string_lossy()
        .trim_start_matches("vmlinuz-")
        .to_string();
    let staged = work.path().join("modules");
    std::fs::create_dir_all(&staged).unwrap();
    for module in MODULES {
        let from = tree
            .join("lib/modules")
            .join(&release)
            .join("kernel")
            .join(module);
        std::fs::copy(&from, staged.join(Path::new(module).file_name().unwrap()))
            .unwrap_or_else(|e| panic!("{}: {e}", from.display()));
    }
    std::fs::copy(&image, work.path().join("vmlinuz")).unwrap();
    let _ = std::fs::remove_dir_all(&modules);
    std::fs::rename(&staged, &modules).unwrap();
    std::fs::rename(work.path().join("vmlinuz"), &vmlinuz).unwrap();
    (vmlinuz, modules)
}

/// Appends one `newc` cpio entry.
fn cpio_entry(out: &mut Vec<u8>, ino: u32, name: &str, mode: u32, data: &[u8]) {
    let header = format!(
        "070701{ino:08x}{mode:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
        0,
        0,
        1,
        0,
        data.len(),
        0,
        0,
        0,
        0,
        name.len() + 1,
        0
    );
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    out.resize(out.len().next_multiple_of(4), 0);
    out.extend_from_slice(data);
    out.resize(out.len().next_multiple_of(4), 0);
}

/// An uncompressed initramfs: busybox, `/init`, the modules.
fn initramfs(dir: &Path, modules: &Path) -> PathBuf {
    let mut cpio = Vec::new();
    let mut ino = 1;
    let mut add = |name: &str, mode: u32, data: &[u8]| {
        cpio_entry(&mut cpio, ino, name, mode, data);
        ino += 1;
    };
    for d in ["bin", "dev", "proc", "sys", "modules"] {
        add(d, 0o040755, b"");
    }
    add(
        "bin/busybox",
        0o100755,
        &std::fs::read("/bin/busybox").expect("busybox-static at /bin/busybox"),
    );
    add("init", 0o100755, INIT.as_bytes());
    for module in std::fs::read_dir(modules).unwrap() {
        let module = module.unwrap().path();
        let name = format!("modules/{}", module.file_name().unwrap().to_string_lossy());
        add(&name, 0o100644, &std::fs::read(&module).unwrap());
    }
    add("TRAILER!!!", 0, b"");
    let path = dir.join("initramfs.cpio");
    std::fs::File::create(&path)
        .unwrap()
        .write_all(&cpio)
        .unwrap();
    path
}

fn sized_file(path: &Path, bytes: u64) -> PathBuf {
    std::fs::File::create(path).unwrap().set_len(bytes).unwrap();
    path.to_path_buf()
}

struct Guest {
    dir: tempfile::TempDir,
    spec: LaunchSpec,
}

fn guest(name: &str, cid: u32) -> Guest {
    let (vmlinuz, modules) = kernel();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let run_dir = root.join("run");
    let spec = LaunchSpec {
        name: name.into(),
        vcpus: 1,
        memory_mib: 256,
        kernel: vmlinuz,
        initrd: Some(initramfs(root, &modules)),
        cmdline: "panic=-1 quiet".into(),
        drives: vec![
            Drive {
                id: "first".into(),
                path: sized_file(&root.join("a.img"), 1 << 20),
                read_only: true,
            },
            Drive {
                id: "second".into(),
                path: sized_file(&root.join("b.img"), 2 << 20),
                read_only: false,
            },
        ],
        net: None,
        vsock_cid: cid,
        vsock_uds: run_dir.join("vsock.sock"),
        run_dir,
        vmm_log: root.join("vmm.log"),
        console_log: root.join("console.log"),
        netns: None,
    };
    Guest { dir, spec }
}

fn backend(processes: Arc<RealProcesses>) -> QemuVmm {
    QemuVmm::new("qemu-system-x86_64", vhost_bin(), processes, Accel::Tcg)
}

/// SIGKILLs every process of a VM when the test ends, however it ends.
struct KillOnDrop {
    processes: Arc<RealProcesses>,
    ids: Vec<ProcessId>,
}

impl KillOnDrop {
    fn new(processes: &Arc<RealProcesses>, handles: &VmmHandles) -> Self {
        let mut ids = vec![handles.process];
        ids.extend(&handles.helpers);
        Self {
            processes: processes.clone(),
            ids,
        }
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        for &id in &self.ids {
            let _ = self.processes.signal(id, Signal::SIGKILL);
        }
    }
}

async fn wait_for_console(path: &Path, needle: &str, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.contains(needle) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "no {needle:?} in console within {timeout:?}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Pids of processes whose command line mentions `needle` (the test's private temp dir).
fn processes_mentioning(needle: &Path) -> Vec<u32> {
    let needle = needle.to_string_lossy().into_owned();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&needle))
        })
        .collect()
}

fn socket_files(spec: &LaunchSpec) -> Vec<PathBuf> {
    std::fs::read_dir(&spec.run_dir)
        .map(|entries| entries.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs qemu-system-x86_64 and vhost-device-vsock; run with --include-ignored"]
async fn tcg_guest_boots_answers_qmp_and_powers_off_on_request() {
    let guest = guest("qemu-real-boot", 41);
    let processes = Arc::new(RealProcesses::new());
    let vmm = backend(processes.clone());
    eprintln!("probe: {}", vmm.probe().await.unwrap());

    let started = Instant::now();
    let handles = vmm.launch(&guest.spec).await.unwrap();
    let launch_time = started.elapsed();
    let _guard = KillOnDrop::new(&processes, &handles);
    assert!(handles.emulated);

    wait_for_console(
        &guest.spec.console_log,
        "BANGER-INIT-STARTED",
        Duration::from_secs(60),
    )
    .await;
    let init_time = started.elapsed();
    let console = wait_for_console(&guest.spec.console_log, MARKER, Duration::from_secs(60)).await;
    let marker_time = started.elapsed();
    eprintln!(
        "launch (spawn to QMP running): {launch_time:?}; launch to /init: {init_time:?}; \
         launch to marker (modules loaded, devices probed): {marker_time:?}"
    );
    assert!(
        console.contains("BANGER-DRIVES vda=2048 vdb=4096"),
        "drive order:\n{console}"
    );
    // Two virtio-blk (2) and the vhost-user vsock device (0x13, served by the helper).
    let ids = console
        .lines()
        .find_map(|l| l.strip_prefix("BANGER-VIRTIO-IDS "))
        .map(str::trim);
    assert_eq!(
        ids,
        Some("0x0002 0x0002 0x0013"),
        "virtio devices:\n{console}"
    );
    assert!(vmm.is_alive(&handles).await);
    let counters = vmm.counters(&handles).await.unwrap();
    assert!(counters.block_read_ops > 0, "{counters:?}");

    assert!(
        console.contains("BANGER-POWER-BUTTON /dev/input/"),
        "no power button:\n{console}"
    );
    let asked = Instant::now();
    vmm.request_shutdown(&handles).await.unwrap();
    let exited = vmm.wait_exit(&handles, Duration::from_secs(30)).await;
    let console = std::fs::read_to_string(&guest.spec.console_log).unwrap();
    assert!(exited, "guest did not power off:\n{console}");
    eprintln!("power button to QEMU exit: {:?}", asked.elapsed());
    assert!(console.contains("BANGER-POWERING-OFF"), "{console}");
    assert!(
        !processes.state(handles.helpers[0]).is_running(),
        "helper outlived QEMU"
    );

    vmm.kill(&handles).await.unwrap();
    assert!(
        socket_files(&guest.spec).is_empty(),
        "{:?}",
        socket_files(&guest.spec)
    );
    assert!(processes_mentioning(guest.dir.path()).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs qemu-system-x86_64 and vhost-device-vsock; run with --include-ignored"]
async fn kill_ends_qemu_and_helper_and_removes_sockets() {
    let guest = guest("qemu-real-kill", 42);
    let processes = Arc::new(RealProcesses::new());
    let vmm = backend(processes.clone());
    let handles = vmm.launch(&guest.spec).await.unwrap();
    let _guard = KillOnDrop::new(&processes, &handles);
    assert!(vmm.is_alive(&handles).await);
    assert!(
        guest.spec.vsock_uds.exists(),
        "vhost-device-vsock did not create {}",
        guest.spec.vsock_uds.display()
    );
    assert_eq!(processes_mentioning(guest.dir.path()).len(), 2);

    vmm.kill(&handles).await.unwrap();
    assert!(!processes.state(handles.process).is_running());
    assert!(!processes.state(handles.helpers[0]).is_running());
    assert!(processes_mentioning(guest.dir.path()).is_empty());
    assert!(
        socket_files(&guest.spec).is_empty(),
        "{:?}",
        socket_files(&guest.spec)
    );
    assert!(!vmm.is_alive(&handles).await);
}

#[tokio::test]
#[ignore = "needs qemu-system-x86_64 and vhost-device-vsock; run with --include-ignored"]
async fn missing_kernel_fails_clearly_and_starts_nothing() {
    let mut guest = guest("qemu-real-nokernel", 43);
    guest.spec.kernel = guest.dir.path().join("missing-vmlinuz");
    let vmm = backend(Arc::new(RealProcesses::new()));
    let err = vmm.launch(&guest.spec).await.unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, VmmError::InvalidSpec { .. }), "{err:?}");
    assert!(text.contains("missing-vmlinuz"), "{text}");
    assert!(processes_mentioning(guest.dir.path()).is_empty());
    assert!(socket_files(&guest.spec).is_empty());
}

#[tokio::test]
#[ignore = "needs qemu-system-x86_64 and vhost-device-vsock; run with --include-ignored"]
async fn unbootable_kernel_reports_qemus_words_and_leaves_nothing() {
    let mut guest = guest("qemu-real-badkernel", 44);
    guest.spec.kernel = guest.dir.path().join("garbage-vmlinuz");
    std::fs::write(&guest.spec.kernel, vec![0x5a; 4096]).unwrap();
    let vmm = backend(Arc::new(RealProcesses::new()));
    let err = vmm.launch(&guest.spec).await.unwrap_err();
    eprintln!("{err}");
    match &err {
        // QEMU's own complaint, e.g. "qemu: linux kernel too old to load a ram disk".
        VmmError::Died { tail, .. } => assert!(tail.contains("kernel"), "{tail}"),
        other => panic!("unexpected {other:?}"),
    }
    assert!(processes_mentioning(guest.dir.path()).is_empty());
    assert!(
        socket_files(&guest.spec).is_empty(),
        "{:?}",
        socket_files(&guest.spec)
    );
}

/// A network namespace made for one test, deleted when the test ends.
struct Netns(String);

impl Netns {
    fn new(name: &str) -> Self {
        run(Command::new("ip").args(["netns", "add", name]));
        Self(name.to_string())
    }

    fn run(&self, args: &[&str]) {
        run(Command::new("ip")
            .args(["netns", "exec", &self.0])
            .args(args));
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs qemu-system-x86_64 and vhost-device-vsock; run with --include-ignored"]
async fn guest_nic_is_the_tap_in_the_vms_netns_with_the_specs_mac() {
    let mut guest = guest("qemu-real-net", 45);
    let netns = Netns::new(&format!("banger-qemu-{}", std::process::id()));
    netns.run(&["ip", "tuntap", "add", "dev", "bgtest0", "mode", "tap"]);
    netns.run(&["ip", "link", "set", "bgtest0", "up"]);
    guest.spec.netns = Some(netns.0.clone());
    guest.spec.net = Some(NetIface {
        tap: "bgtest0".into(),
        mac: "02:bb:00:00:00:45".into(),
    });
    let processes = Arc::new(RealProcesses::new());
    let vmm = backend(processes.clone());
    let handles = vmm.launch(&guest.spec).await.unwrap();
    let _guard = KillOnDrop::new(&processes, &handles);
    let console = wait_for_console(&guest.spec.console_log, MARKER, Duration::from_secs(60)).await;
    assert!(
        console.contains("BANGER-NET 02:bb:00:00:00:45"),
        "{console}"
    );
    vmm.kill(&handles).await.unwrap();
    assert!(processes_mentioning(guest.dir.path()).is_empty());
}

//! The Firecracker backend against a real `firecracker` binary and `/dev/kvm`.
//!
//! Ignored by default; run with `cargo test -p banger-vmm --test firecracker_real -- --ignored
//! --nocapture`. Inputs (environment):
//! - `BANGER_FIRECRACKER`: the binary (else `firecracker` on PATH). Missing: the tests fail, saying so.
//! - `BANGER_FC_KERNEL`: an ELF vmlinux, or an `.xz` of one (unpacked once into the target dir).
//!   Needed by the boot test only; missing: it fails, saying so.
//! - `BANGER_FC_INITRD`: an initramfs whose init prints `BANGER-FC-INIT-MARKER`; else one is built
//!   from the static `/bin/busybox`.
//! - `BANGER_FC_BOOT_TIMEOUT`: seconds to wait for the marker on the console (default 180).
//! - `BANGER_FC_CMDLINE`: extra kernel command-line options.
//!
//! On a host whose `/dev/kvm` is PVM (`/sys/module/kvm_pvm` exists) the guest gets 1 vCPU and the
//! extra options the PVM test kernel needs (see shared/testing/pvm-kernel/README.md).
//!
//! The boot test runs Firecracker inside a network namespace it creates (with a tap in it) and
//! deletes afterwards; nothing touches the root namespace. A guest that does not reach init in
//! time is reported, not failed: these hosts boot slowly, and what is under test is the backend.
#![allow(clippy::unwrap_used)] // tests may unwrap: a panic is the failure report

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use banger_host::process::{Processes, RealProcesses};
use banger_vmm::firecracker::models::InstanceState;
use banger_vmm::firecracker::FirecrackerVmm;
use banger_vmm::{Drive, LaunchSpec, NetIface, Vmm, VmmError};

const NEEDS: &str = "needs a firecracker binary (BANGER_FIRECRACKER or PATH) and /dev/kvm";
const MARKER: &str = "BANGER-FC-INIT-MARKER";
/// Printed by the test initramfs after it read 64 KiB from the first drive.
const VDA_READ: &str = "BANGER-FC-VDA-READ";
const PVM_CMDLINE: &str = "mitigations=off noxsave clearcpuid=141,151,154,156,158,150,153,129,288,291,293,296,298,304,306,307,308,311,312,515,534,197,137,147,148,140,157 initcall_blacklist=ptp_kvm_init,jent_mod_init cryptomgr.notests nowatchdog quiet";

/// The firecracker binary, or a panic that says how to provide one.
fn firecracker_bin() -> PathBuf {
    assert!(
        Path::new("/dev/kvm").exists(),
        "/dev/kvm is missing: this test {NEEDS}"
    );
    if let Some(path) = std::env::var_os("BANGER_FIRECRACKER") {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "BANGER_FIRECRACKER={} is not a file",
            path.display()
        );
        return path;
    }
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("firecracker"))
            .find(|candidate| candidate.is_file())
    });
    found.unwrap_or_else(|| {
        panic!("no firecracker binary: set BANGER_FIRECRACKER or put firecracker on PATH (this test {NEEDS})")
    })
}

fn is_pvm_host() -> bool {
    Path::new("/sys/module/kvm_pvm").exists()
}

/// The guest kernel from BANGER_FC_KERNEL, unpacking an `.xz` once into the target dir.
fn guest_kernel() -> PathBuf {
    let Some(path) = std::env::var_os("BANGER_FC_KERNEL").map(PathBuf::from) else {
        panic!(
            "BANGER_FC_KERNEL is not set: point it at an ELF vmlinux (or a .xz of one), e.g. \
             shared/testing/pvm-kernel/vmlinux-6.1.192-fcpvm.xz on a PVM host"
        );
    };
    assert!(
        path.is_file(),
        "BANGER_FC_KERNEL={} is not a file",
        path.display()
    );
    if path.extension().is_none_or(|ext| ext != "xz") {
        return path;
    }
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("banger-fc-kernel");
    std::fs::create_dir_all(&cache).unwrap();
    let unpacked = cache.join(path.file_stem().unwrap());
    if !unpacked.exists() {
        let partial = unpacked.with_extension("partial");
        let output = Command::new("xz").arg("-dc").arg(&path).output().unwrap();
        assert!(
            output.status.success(),
            "xz -dc {} failed: {}",
            path.display(),
            String::from_utf8_lossy(&output.stderr)
        );
        std::fs::write(&partial, output.stdout).unwrap();
        std::fs::rename(&partial, &unpacked).unwrap();
    }
    unpacked
}

/// Appends one `newc` cpio entry.
fn cpio_entry(out: &mut Vec<u8>, ino: u32, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]) {
    let nlink = if mode & 0o170000 == 0o040000 { 2 } else { 1 };
    let header = format!(
        "070701{ino:08x}{mode:08x}{:08x}{:08x}{nlink:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
        0,
        0,
        0,
        data.len(),
        0,
        0,
        rdev.0,
        rdev.1,
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

/// An initramfs (uncompressed newc cpio) whose /init prints the marker and sleeps.
fn busybox_initramfs(dir: &Path) -> PathBuf {
    let busybox = std::fs::read("/bin/busybox")
        .unwrap_or_else(|e| panic!("building the test initramfs needs a static /bin/busybox (or set BANGER_FC_INITRD): {e}"));
    let init = format!(
        "#!/bin/busybox sh\n\
         /bin/busybox mount -t devtmpfs dev /dev\n\
         /bin/busybox dd if=/dev/vda of=/dev/null bs=4096 count=16 && /bin/busybox echo {VDA_READ}\n\
         /bin/busybox echo {MARKER}\n\
         while true; do /bin/busybox sleep 3600; done\n"
    );
    let mut cpio = Vec::new();
    cpio_entry(&mut cpio, 1, "bin", 0o040755, (0, 0), b"");
    cpio_entry(&mut cpio, 2, "bin/busybox", 0o100755, (0, 0), &busybox);
    cpio_entry(&mut cpio, 3, "dev", 0o040755, (0, 0), b"");
    cpio_entry(&mut cpio, 4, "dev/console", 0o020600, (5, 1), b"");
    cpio_entry(&mut cpio, 5, "proc", 0o040755, (0, 0), b"");
    cpio_entry(&mut cpio, 6, "init", 0o100755, (0, 0), init.as_bytes());
    cpio_entry(&mut cpio, 7, "TRAILER!!!", 0, (0, 0), b"");
    let path = dir.join("initramfs.cpio");
    std::fs::write(&path, cpio).unwrap();
    path
}

fn run(argv: &[&str]) {
    let output = Command::new(argv[0]).args(&argv[1..]).output().unwrap();
    assert!(
        output.status.success(),
        "{argv:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A network namespace with one tap in it, deleted on drop (with everything in it).
struct TestNetns {
    name: String,
}

impl TestNetns {
    fn with_tap(tap: &str) -> Self {
        let name = format!("banger-fct-{}", std::process::id());
        run(&["ip", "netns", "add", &name]);
        let netns = Self { name };
        run(&[
            "ip",
            "-n",
            &netns.name,
            "tuntap",
            "add",
            "dev",
            tap,
            "mode",
            "tap",
        ]);
        run(&["ip", "-n", &netns.name, "link", "set", tap, "up"]);
        netns
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn backend(processes: &Arc<RealProcesses>) -> FirecrackerVmm {
    let processes: Arc<dyn Processes> = processes.clone();
    FirecrackerVmm::new(firecracker_bin(), processes)
}

fn base_spec(dir: &Path, kernel: PathBuf, initrd: PathBuf) -> LaunchSpec {
    let run_dir = dir.join("run");
    let mut cmdline = "rdinit=/init".to_string();
    let mut vcpus = 2;
    if is_pvm_host() {
        cmdline.push(' ');
        cmdline.push_str(PVM_CMDLINE);
        vcpus = 1;
    }
    if let Ok(extra) = std::env::var("BANGER_FC_CMDLINE") {
        cmdline.push(' ');
        cmdline.push_str(&extra);
    }
    let scratch = dir.join("scratch.img");
    std::fs::write(&scratch, vec![0u8; 1 << 20]).unwrap();
    LaunchSpec {
        name: "banger-fc-real".into(),
        vcpus,
        memory_mib: 256,
        kernel,
        initrd: Some(initrd),
        cmdline,
        drives: vec![Drive {
            id: "scratch".into(),
            path: scratch,
            read_only: true,
        }],
        net: None,
        vsock_cid: 3,
        vsock_uds: run_dir.join("vsock.sock"),
        run_dir,
        vmm_log: dir.join("vmm.log"),
        console_log: dir.join("console.log"),
        netns: None,
    }
}

#[tokio::test]
#[ignore = "needs a firecracker binary (BANGER_FIRECRACKER or PATH) and /dev/kvm"]
async fn real_firecracker_probe_reports_a_1_x_version() {
    let processes = Arc::new(RealProcesses::new());
    let line = backend(&processes).probe().await.unwrap();
    eprintln!("probe: {line}");
    assert!(line.starts_with("Firecracker v1."), "{line}");
}

#[tokio::test]
#[ignore = "needs a firecracker binary (BANGER_FIRECRACKER or PATH) and /dev/kvm"]
async fn real_firecracker_refusal_carries_its_fault_message_and_cleans_up() {
    let dir = tempfile::tempdir().unwrap();
    let processes = Arc::new(RealProcesses::new());
    let vmm = backend(&processes);
    // Any ELF file passes banger's own check; Firecracker only reads it at InstanceStart, and
    // the vsock call fails before that: its socket directory does not exist.
    let kernel = dir.path().join("vmlinux");
    std::fs::write(&kernel, b"\x7fELF-not-really").unwrap();
    let initrd = dir.path().join("initrd");
    std::fs::write(&initrd, b"").unwrap();
    let mut spec = base_spec(dir.path(), kernel, initrd);
    spec.vsock_uds = dir.path().join("no-such-dir").join("v.sock");

    let err = vmm.launch(&spec).await.unwrap_err();
    eprintln!("refusal: {err}");
    match &err {
        VmmError::Rejected { call, message, .. } => {
            assert_eq!(call, "PUT /vsock");
            assert!(!message.is_empty());
        }
        other => panic!("expected a rejection of PUT /vsock, got {other:?}"),
    }
    assert!(
        !spec.run_dir.join("firecracker.sock").exists(),
        "API socket left behind"
    );
    let console = std::fs::read_to_string(&spec.console_log).unwrap_or_default();
    assert!(console.contains("Running Firecracker v1."), "{console}");
}

#[tokio::test]
#[ignore = "needs a firecracker binary (BANGER_FIRECRACKER or PATH) and /dev/kvm"]
async fn real_firecracker_boots_reports_counters_and_is_killed_cleanly() {
    let bin = firecracker_bin();
    let kernel = guest_kernel();
    let dir = tempfile::tempdir().unwrap();
    let initrd = match std::env::var_os("BANGER_FC_INITRD") {
        Some(path) => PathBuf::from(path),
        None => busybox_initramfs(dir.path()),
    };
    let boot_timeout = Duration::from_secs(
        std::env::var("BANGER_FC_BOOT_TIMEOUT")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(180),
    );
    let netns = TestNetns::with_tap("tap0");
    let processes = Arc::new(RealProcesses::new());
    let vmm = backend(&processes);
    eprintln!("binary: {} ({})", bin.display(), vmm.probe().await.unwrap());

    let mut spec = base_spec(dir.path(), kernel, initrd);
    spec.netns = Some(netns.name.clone());
    spec.net = Some(NetIface {
        tap: "tap0".into(),
        mac: "02:fc:00:00:00:01".into(),
    });

    let launched = Instant::now();
    let (handles, timings) = vmm.launch_timed(&spec).await.unwrap_or_else(|e| {
        let console = std::fs::read_to_string(&spec.console_log).unwrap_or_default();
        let log = std::fs::read_to_string(&spec.vmm_log).unwrap_or_default();
        panic!("launch failed: {e}\n--- console ---\n{console}\n--- vmm log ---\n{log}")
    });
    eprintln!(
        "launch to API socket: {:?}; to configured: {:?}; to InstanceStart accepted: {:?}",
        timings.api_socket, timings.configured, timings.started
    );
    assert!(timings.api_socket <= timings.configured && timings.configured <= timings.started);

    // Launch returning Ok means every PUT (logger, metrics, machine-config, boot-source,
    // drive, network interface, vsock) and InstanceStart answered 2xx; double-check the state.
    let info = vmm.client(&handles).instance_info().await.unwrap();
    assert_eq!(info.state, InstanceState::Running);
    assert_eq!(info.id, "banger-fc-real");
    assert!(processes.state(handles.process).is_running());
    assert!(vmm.is_alive(&handles).await);
    assert!(handles.control_socket.exists());
    assert!(
        handles.vsock_uds.exists(),
        "Firecracker binds the vsock socket"
    );
    let cmdline = processes.cmdline(handles.process).unwrap();
    assert!(
        cmdline.iter().any(|arg| arg.ends_with("firecracker.sock")),
        "{cmdline:?}"
    );

    let counters = vmm.counters(&handles).await.unwrap();
    eprintln!("counters right after start: {counters:?}");

    let deadline = Instant::now() + boot_timeout;
    let mut reached_init = false;
    while Instant::now() < deadline {
        let console = std::fs::read_to_string(&spec.console_log).unwrap_or_default();
        if console.contains(MARKER) {
            reached_init = true;
            break;
        }
        assert!(
            processes.state(handles.process).is_running(),
            "firecracker exited while booting; console:\n{console}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    if reached_init {
        eprintln!(
            "guest reached init after {:?} (marker on the console)",
            launched.elapsed()
        );
        let console = std::fs::read_to_string(&spec.console_log).unwrap();
        assert!(console.contains(MARKER));
        let later = vmm.counters(&handles).await.unwrap();
        eprintln!("counters after boot: {later:?}");
        if console.contains(VDA_READ) {
            assert!(
                later.block_read_bytes >= 16 * 4096 && later.block_read_ops >= 1,
                "the guest read 64 KiB from vda but the counters say {later:?}"
            );
        } else {
            eprintln!("NOTE: the guest's init did not report reading /dev/vda");
        }
    } else {
        let console = std::fs::read_to_string(&spec.console_log).unwrap_or_default();
        let tail: Vec<&str> = console.lines().rev().take(10).collect();
        eprintln!(
            "NOTE: the guest did not reach init within {boot_timeout:?} (not a failure); last console lines: {:?}",
            tail.into_iter().rev().collect::<Vec<_>>()
        );
    }
    assert!(vmm.is_alive(&handles).await);

    vmm.kill(&handles).await.unwrap();
    assert!(
        !processes.state(handles.process).is_running(),
        "process still there after kill"
    );
    assert!(
        std::fs::metadata(format!("/proc/{}", handles.process.pid)).is_err()
            || processes.cmdline(handles.process).is_none()
    );
    assert!(!handles.control_socket.exists(), "API socket left behind");
    assert!(!handles.vsock_uds.exists(), "vsock socket left behind");
    assert!(!vmm.is_alive(&handles).await);
    vmm.kill(&handles).await.unwrap();
    drop(netns);
}

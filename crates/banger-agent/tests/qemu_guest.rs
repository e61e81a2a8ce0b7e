//! End to end: the static agent in a real guest (QEMU microvm under TCG, Debian cloud kernel,
//! busybox initramfs from `tests/guest/build-test-guest.sh`), reached through vhost-device-vsock
//! with the same `CONNECT` protocol banger uses for Firecracker.
//!
//! Needs qemu-system-x86_64, vhost-device-vsock (`cargo install vhost-device-vsock --locked`),
//! Debian apt sources, lz4 and cpio. Run with `cargo test -p banger-agent --test qemu_guest --
//! --include-ignored`. Environment:
//! - `BANGER_AGENT_BIN`: a static agent binary to use instead of building one;
//! - `BANGER_TEST_CACHE`: where the test guest is cached (default `/var/tmp/banger-test-cache`).
//!
//! Every process the test starts is killed by pid when the guard drops; the temp dir goes too.

#![allow(clippy::unwrap_used)] // tests may unwrap: a panic is the failure report

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use banger_agent::{AgentClient, ExecRequest, AGENT_PORT, AGENT_VERSION};

const GUEST_HOSTNAME: &str = "banger-e2e";

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("workspace root")
}

/// The static agent: `BANGER_AGENT_BIN`, or a fresh `+crt-static` release build.
fn static_agent() -> PathBuf {
    if let Some(bin) = std::env::var_os("BANGER_AGENT_BIN") {
        return PathBuf::from(bin);
    }
    let root = workspace_root();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(&root)
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .args([
            "build",
            "--release",
            "--target",
            "x86_64-unknown-linux-gnu",
            "-p",
            "banger-agent",
        ])
        .status()
        .expect("running cargo build for the static agent");
    assert!(status.success(), "static agent build failed: {status}");
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    target_dir.join("x86_64-unknown-linux-gnu/release/banger-agent")
}

/// Runs the guest builder and returns its `name=path` outputs.
fn test_guest(agent: &Path) -> HashMap<String, PathBuf> {
    let cache = std::env::var_os("BANGER_TEST_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/banger-test-cache"));
    let script = workspace_root().join("tests/guest/build-test-guest.sh");
    let output = Command::new("bash")
        .arg(&script)
        .arg(&cache)
        .arg(agent)
        .stderr(Stdio::inherit())
        .output()
        .expect("running build-test-guest.sh");
    assert!(
        output.status.success(),
        "build-test-guest.sh failed: {}",
        output.status
    );
    String::from_utf8(output.stdout)
        .expect("utf-8 output")
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(k, v)| (k.to_owned(), PathBuf::from(v)))
        .collect()
}

fn find_vhost_device_vsock() -> PathBuf {
    let on_path = std::env::var_os("PATH").into_iter().flat_map(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("vhost-device-vsock"))
            .collect::<Vec<_>>()
    });
    let in_cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo")))
        .map(|home| home.join("bin/vhost-device-vsock"));
    on_path
        .chain(in_cargo_home)
        .find(|candidate| candidate.is_file())
        .expect("vhost-device-vsock not found on PATH or in ~/.cargo/bin (cargo install vhost-device-vsock --locked)")
}

/// Owns the VM's processes and files: kills the processes by pid, prints the console on failure.
struct Vm {
    dir: tempfile::TempDir,
    vhost: Option<Child>,
    qemu: Option<Child>,
}

impl Vm {
    fn console(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("console.log")).unwrap_or_default()
    }

    fn uds(&self) -> PathBuf {
        self.dir.path().join("vm.vsock")
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        for child in [self.qemu.as_mut(), self.vhost.as_mut()]
            .into_iter()
            .flatten()
        {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- guest console ---\n{}", self.console());
            for log in ["vhost.log", "qemu.log"] {
                let text = std::fs::read_to_string(self.dir.path().join(log)).unwrap_or_default();
                eprintln!("--- {log} ---\n{text}");
            }
        }
    }
}

fn boot(guest: &HashMap<String, PathBuf>) -> Vm {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut vm = Vm {
        dir,
        vhost: None,
        qemu: None,
    };
    let path = |name: &str| vm.dir.path().join(name);
    let log = |name: &str| std::fs::File::create(vm.dir.path().join(name)).expect("log file");

    let vhost_sock = path("vhost.sock");
    vm.vhost = Some(
        Command::new(find_vhost_device_vsock())
            .arg("--vm")
            .arg(format!(
                "guest-cid=3,socket={},uds-path={}",
                vhost_sock.display(),
                vm.uds().display()
            ))
            .stdin(Stdio::null())
            .stdout(log("vhost.log"))
            .stderr(log("vhost.log"))
            .spawn()
            .expect("starting vhost-device-vsock"),
    );
    // QEMU must find the vhost-user socket when it starts.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !vhost_sock.exists() {
        assert!(
            Instant::now() < deadline,
            "vhost-device-vsock made no socket"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    let append = format!(
        "console=ttyS0 tsc_early_khz=2600000 panic=-1 quiet banger.hostname={GUEST_HOSTNAME}"
    );
    vm.qemu = Some(
        Command::new("qemu-system-x86_64")
            .args([
                "-M",
                "microvm,acpi=on,pit=on,pic=on,rtc=on,memory-backend=mem",
                "-object",
                "memory-backend-memfd,id=mem,size=256M,share=on",
                "-accel",
                "tcg",
                "-m",
                "256M",
                "-nodefaults",
                "-no-user-config",
                "-nographic",
                "-no-reboot",
            ])
            .arg("-serial")
            .arg(format!("file:{}", path("console.log").display()))
            .arg("-kernel")
            .arg(&guest["vmlinuz"])
            .arg("-initrd")
            .arg(&guest["initramfs"])
            .arg("-append")
            .arg(append)
            .arg("-chardev")
            .arg(format!("socket,id=vs,path={}", vhost_sock.display()))
            .args(["-device", "vhost-user-vsock-device,chardev=vs"])
            .stdin(Stdio::null())
            .stdout(log("qemu.log"))
            .stderr(log("qemu.log"))
            .spawn()
            .expect("starting qemu-system-x86_64"),
    );
    vm
}

fn pseudo_random_bytes(len: usize) -> Vec<u8> {
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs qemu-system-x86_64, vhost-device-vsock and the test guest; run with --include-ignored"]
async fn agent_in_a_qemu_guest_serves_health_info_exec_and_shutdown() {
    let agent = static_agent();
    let guest = test_guest(&agent);
    let mut vm = boot(&guest);

    let client = AgentClient::connect(&vm.uds(), AGENT_PORT, Duration::from_secs(90))
        .await
        .unwrap_or_else(|err| panic!("{}", banger_agent::error_chain(&err)));
    assert!(vm.console().contains("banger-guest: init done"));

    let health = client.health().await.expect("health");
    assert_eq!(health.agent_version, AGENT_VERSION);
    assert!(health.uptime_secs > 0.0);

    let info = client.info().await.expect("info");
    assert_eq!(info.hostname, GUEST_HOSTNAME);
    assert_eq!(Some(info.kernel.as_str()), guest["kernel_release"].to_str());
    assert_eq!(info.boot_id, health.boot_id);

    let out = client
        .exec_collect(["sh", "-c", "echo out; echo err >&2; exit 3"])
        .await
        .expect("exec");
    assert_eq!(out.stdout, b"out\n");
    assert_eq!(out.stderr, b"err\n");
    assert_eq!(out.status.code, Some(3));

    let input = pseudo_random_bytes(1024 * 1024);
    let out = client
        .exec_with_stdin(ExecRequest::new(["cat"]), &input)
        .await
        .expect("exec cat");
    assert!(out.status.success(), "{:?}", out.status);
    assert_eq!(out.stdout.len(), input.len());
    assert!(out.stdout == input, "1 MiB through cat came back altered");

    let out = client
        .exec_collect(["sh", "-c", "head -c 12000000 /dev/zero | tr '\\0' x"])
        .await
        .expect("exec large output");
    assert!(out.status.success(), "{:?}", out.status);
    assert_eq!(out.stdout.len(), 12_000_000);
    assert!(out.stdout.iter().all(|&b| b == b'x'));

    client.shutdown(false).await.expect("shutdown");
    let deadline = Instant::now() + Duration::from_secs(60);
    let qemu = vm.qemu.as_mut().expect("qemu child");
    let status = loop {
        if let Some(status) = qemu.try_wait().expect("polling qemu") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "qemu still running 60 s after shutdown"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(status.success(), "qemu exited with {status}");
}

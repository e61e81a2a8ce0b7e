//! Test support shared by the end-to-end tests of several crates.
//!
//! - [`static_agent`]: the guest agent as a static binary (built once per test run).
//! - [`test_guest`]: the cached Debian test guest from `tests/guest/build-test-guest.sh`.
//! - [`RealDaemon`]: the whole daemon (`banger_daemon::run`) with the **real** host layer, in a
//!   temp dir, optionally with its VM network inside a network namespace the test owns.
//!
//! Everything here panics with a clear message when a prerequisite is missing: end-to-end tests
//! are `#[ignore]`d by default and run by CI with `--include-ignored`, so a missing tool must
//! fail loudly, never pass silently.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::missing_panics_doc)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use banger_api::{ImageId, Operation, OperationStatus, Vm, VmName};
use banger_cli::client::Client;
use banger_config::{Config, Environment};
use banger_store::records::ImageRecord;
use banger_store::Store;
use hyper::Method;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The repository root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("workspace root")
}

/// The cache directory for test guests (`BANGER_TEST_CACHE`, default
/// `/var/tmp/banger-test-cache`): it survives between runs on one machine.
pub fn test_cache() -> PathBuf {
    std::env::var_os("BANGER_TEST_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/banger-test-cache"))
}

/// The static guest agent: `BANGER_AGENT_BIN`, or a `+crt-static` release build (once per process).
pub fn static_agent() -> PathBuf {
    static AGENT: OnceLock<PathBuf> = OnceLock::new();
    AGENT
        .get_or_init(|| {
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
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| root.join("target"));
            target.join("x86_64-unknown-linux-gnu/release/banger-agent")
        })
        .clone()
}

/// The test guest's files.
#[derive(Debug, Clone)]
pub struct TestGuest {
    /// bzImage, for QEMU.
    pub vmlinuz: PathBuf,
    /// ELF vmlinux, for Firecracker.
    pub vmlinux: PathBuf,
    /// Busybox initramfs with the modules, the agent and banger's early init (overlay root).
    pub initramfs: PathBuf,
    /// The image's base rootfs: an ext4 with busybox, the agent and `/sbin/init`, mounted
    /// read-only under each VM's overlay root by the initramfs.
    pub rootfs: PathBuf,
}

/// Builds (or finds cached) the Debian test guest.
pub fn test_guest() -> TestGuest {
    static GUEST: OnceLock<TestGuest> = OnceLock::new();
    GUEST
        .get_or_init(|| {
            let agent = static_agent();
            let cache = test_cache();
            let script = workspace_root().join("tests/guest/build-test-guest.sh");
            let output = Command::new("bash")
                .arg(&script)
                .arg(&cache)
                .arg(&agent)
                .stderr(Stdio::inherit())
                .output()
                .expect("running build-test-guest.sh");
            assert!(
                output.status.success(),
                "build-test-guest.sh failed: {}",
                output.status
            );
            let paths: HashMap<String, PathBuf> = String::from_utf8(output.stdout)
                .expect("utf-8")
                .lines()
                .filter_map(|line| line.split_once('='))
                .map(|(k, v)| (k.to_string(), PathBuf::from(v)))
                .collect();
            TestGuest {
                vmlinuz: paths["vmlinuz"].clone(),
                vmlinux: paths["vmlinux"].clone(),
                initramfs: paths["initramfs"].clone(),
                rootfs: paths["rootfs"].clone(),
            }
        })
        .clone()
}

/// The kernel for Firecracker tests: `BANGER_FC_KERNEL` (an ELF vmlinux, or `.xz` of one, which
/// is unpacked once into the test cache). On PVM hosts use the PVM kernel from
/// `shared/testing/pvm-kernel/`.
pub fn firecracker_kernel() -> PathBuf {
    let path = PathBuf::from(
        std::env::var_os("BANGER_FC_KERNEL")
            .expect("BANGER_FC_KERNEL must name a Firecracker guest kernel (ELF vmlinux or .xz)"),
    );
    if path.extension().is_some_and(|ext| ext == "xz") {
        let out = test_cache()
            .join("fc-kernel")
            .join(path.file_stem().expect("file name"));
        if !out.exists() {
            std::fs::create_dir_all(out.parent().expect("parent")).unwrap();
            let tmp = out.with_extension("tmp");
            let file = std::fs::File::create(&tmp).unwrap();
            let status = Command::new("xz")
                .arg("-dc")
                .arg(&path)
                .stdout(file)
                .status()
                .expect("xz");
            assert!(status.success(), "xz -d {} failed", path.display());
            std::fs::rename(&tmp, &out).unwrap();
        }
        out
    } else {
        path
    }
}

/// Kernel arguments a PVM-backed /dev/kvm needs for the PVM guest kernel (from
/// `shared/testing/pvm-kernel/README.md`); empty on hosts with hardware KVM.
pub fn pvm_kernel_args() -> &'static str {
    if Path::new("/sys/module/kvm_pvm").exists() {
        "mitigations=off noxsave clearcpuid=141,151,154,156,158,150,153,129,288,291,293,296,298,304,306,307,308,311,312,515,534,197,137,147,148,140,157 initcall_blacklist=ptp_kvm_init,jent_mod_init cryptomgr.notests nowatchdog"
    } else {
        ""
    }
}

/// Environment for a daemon (or CLI) rooted in `dir`.
///
/// Network safety: a config that sets no `network.netns` gets `network.enabled = false` (VMs
/// without a NIC), so no test ever makes a bridge, tap or rule in the root namespace; one that
/// asks for a network without a namespace fails here.
pub fn environment(dir: &Path, config_toml: &str) -> Environment {
    let config_toml = confine_network(config_toml);
    std::fs::write(dir.join("config.toml"), config_toml).unwrap();
    Environment::user([
        ("HOME", dir.join("home").display().to_string()),
        ("BANGER_STATE_DIR", dir.join("state").display().to_string()),
        ("BANGER_RUNTIME_DIR", dir.join("run").display().to_string()),
        ("BANGER_CACHE_DIR", dir.join("cache").display().to_string()),
        ("BANGER_DATA_DIR", dir.join("data").display().to_string()),
        (
            "BANGER_CONFIG",
            dir.join("config.toml").display().to_string(),
        ),
    ])
}

/// `config_toml` with the VM network off unless it lives in a test-owned namespace.
fn confine_network(config_toml: &str) -> String {
    let mut table: toml::Table = config_toml.parse().expect("test config is TOML");
    let network = table
        .entry("network")
        .or_insert_with(|| toml::Value::Table(toml::Table::new()))
        .as_table_mut()
        .expect("[network] is a table");
    if network.contains_key("netns") {
        return config_toml.to_string();
    }
    assert!(
        network.get("enabled").and_then(toml::Value::as_bool) != Some(true),
        "a test config enables the VM network without `network.netns`: tests must never \
         create links or rules in the root namespace (use TestNetns)"
    );
    network.insert("enabled".into(), toml::Value::Boolean(false));
    toml::to_string(&table).expect("re-serializing the test config")
}

/// The whole daemon with the real host layer, serving on a socket in a temp dir.
#[derive(Debug)]
pub struct RealDaemon {
    /// Client of its socket.
    pub client: Client,
    /// Its effective config.
    pub config: Config,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), banger_daemon::DaemonError>>>,
    /// Whether dropping it kills the VMs it started (not after a deliberate stop or kill: the
    /// next daemon of the test re-adopts them, and its drop cleans up).
    sweep_on_drop: bool,
}

impl RealDaemon {
    /// Starts it with `config_toml` as its config file.
    pub async fn start(dir: &Path, config_toml: &str) -> RealDaemon {
        let config = banger_config::load(&environment(dir, config_toml))
            .expect("test config")
            .config;
        std::fs::create_dir_all(&config.runtime_dir).unwrap();
        let socket = config.socket_path();
        let _ = std::fs::remove_file(&socket);
        let listener = tokio::net::UnixListener::bind(&socket).unwrap();
        let host = banger_daemon::Host::real(&config).await;
        assert!(
            host.backends.vmm.is_some(),
            "no usable VMM: {:?}",
            host.backends.vmm_unavailable
        );
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(banger_daemon::run(
            listener,
            config.clone(),
            host,
            async move {
                let _ = stopped.await;
            },
        ));
        let client = Client::new(socket);
        for _ in 0..500 {
            if client.get::<banger_api::Health>("/v1/health").await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        RealDaemon {
            client,
            config,
            stop: Some(stop),
            task: Some(task),
            sweep_on_drop: true,
        }
    }

    /// Graceful stop (VMs keep running).
    pub async fn stop(mut self) {
        self.sweep_on_drop = false;
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
    }

    /// Like SIGKILL of the daemon: the server task is aborted, VMMs keep running.
    pub async fn kill(mut self) {
        self.sweep_on_drop = false;
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }

    /// Registers the test guest as image `name` (directly in the store).
    pub fn add_test_image(&self, name: &str, kernel: &Path, ports: Vec<u16>) -> ImageId {
        register_test_image(&self.config, name, kernel, ports)
    }

    /// POST a JSON body, expecting an operation.
    pub async fn post(&self, path: &str, body: serde_json::Value) -> Operation {
        self.client
            .call(Method::POST, path, Some(&body))
            .await
            .unwrap_or_else(|e| panic!("POST {path}: {e:?}"))
    }

    /// DELETE, expecting an operation.
    pub async fn delete(&self, path: &str) -> Operation {
        self.client
            .call(Method::DELETE, path, None::<&()>)
            .await
            .unwrap_or_else(|e| panic!("DELETE {path}: {e:?}"))
    }

    /// Follows an operation to its end (3 minutes at most).
    pub async fn wait(&self, op: &Operation) -> Operation {
        self.wait_for(op, Duration::from_secs(180)).await
    }

    /// Follows an operation to its end, `limit` at most.
    pub async fn wait_for(&self, op: &Operation, limit: Duration) -> Operation {
        tokio::time::timeout(limit, self.client.follow(op.id, |_| {}))
            .await
            .unwrap_or_else(|_| panic!("operation did not finish in {limit:?}"))
            .expect("following the operation")
    }

    /// Follows an operation and asserts it succeeded.
    pub async fn expect_ok(&self, op: &Operation) -> Operation {
        let done = self.wait(op).await;
        assert_eq!(done.status, OperationStatus::Succeeded, "{done:#?}");
        done
    }

    /// One VM.
    pub async fn vm(&self, name: &str) -> Vm {
        self.client.get(&format!("/v1/vms/{name}")).await.unwrap()
    }
}

/// Registers the test guest (with `kernel`) as image `name` directly in the store of `config`.
pub fn register_test_image(config: &Config, name: &str, kernel: &Path, ports: Vec<u16>) -> ImageId {
    let guest = test_guest();
    let record = ImageRecord {
        id: ImageId::new(),
        name: VmName::parse(name).unwrap(),
        kernel_path: kernel.to_path_buf(),
        initrd_path: Some(guest.initramfs.clone()),
        modules_path: None,
        rootfs_path: guest.rootfs.clone(),
        work_seed_path: None,
        cmdline: "console=ttyS0 panic=-1 quiet".into(),
        readiness_ports: ports,
        agent_version: None,
        parent_id: None,
        sha256: None,
        managed: false,
        size_bytes: 0,
        root_mode: banger_api::RootMode::Overlay,
        created_at: chrono::Utc::now(),
    };
    Store::open(&config.db_path())
        .unwrap()
        .insert_image(&record)
        .unwrap();
    record.id
}

/// Records image `name` for a daemon over the fake host (`banger_daemon::Host::fake`): stand-in
/// kernel and rootfs files under the state dir (the fake VMM never reads them), readiness ports
/// `ports`, managed.
pub fn register_fake_image(config: &Config, name: &str, ports: Vec<u16>) -> ImageId {
    let dir = config.state_dir.join("images").join(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("vmlinux"), b"\x7fELF fake kernel for the fake VMM").unwrap();
    std::fs::write(dir.join("rootfs.ext4"), b"rootfs").unwrap();
    let record = ImageRecord {
        id: ImageId::new(),
        name: VmName::parse(name).unwrap(),
        kernel_path: dir.join("vmlinux"),
        initrd_path: None,
        modules_path: None,
        rootfs_path: dir.join("rootfs.ext4"),
        work_seed_path: None,
        cmdline: "console=ttyS0".into(),
        readiness_ports: ports,
        agent_version: None,
        parent_id: None,
        sha256: None,
        managed: true,
        size_bytes: 730 << 20,
        root_mode: banger_api::RootMode::Overlay,
        created_at: chrono::Utc::now(),
    };
    Store::open(&config.db_path())
        .unwrap()
        .insert_image(&record)
        .unwrap();
    record.id
}

/// The `bangerd` binary of this workspace (built once per test process).
pub fn bangerd_binary() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| workspace_binary("banger-daemon", "bangerd"))
        .clone()
}

/// The `banger` CLI binary of this workspace (built once per test process).
pub fn banger_binary() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| workspace_binary("banger-cli", "banger"))
        .clone()
}

/// Builds binary `bin` of `package` (debug profile) and returns its path.
fn workspace_binary(package: &str, bin: &str) -> PathBuf {
    let root = workspace_root();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(&root)
        .args(["build", "-p", package, "--bin", bin])
        .status()
        .unwrap_or_else(|e| panic!("running cargo build for {bin}: {e}"));
    assert!(status.success(), "building {bin} failed: {status}");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    target.join("debug").join(bin)
}

/// The real `bangerd` binary as a separate process, so a test can SIGKILL it for real.
#[derive(Debug)]
pub struct DaemonProcess {
    /// Client of its socket.
    pub client: Client,
    /// Its config.
    pub config: Config,
    child: Option<std::process::Child>,
    sweep_on_drop: bool,
}

impl DaemonProcess {
    /// Starts `bangerd` with the environment of [`environment`].
    // The child is owned by the returned value, which waits for it on drop; on the panic path
    // the test is failing anyway and the harness reaps it.
    #[allow(clippy::zombie_processes)]
    pub async fn start(dir: &Path, config_toml: &str) -> DaemonProcess {
        let env = environment(dir, config_toml);
        let config = banger_config::load(&env).expect("test config").config;
        std::fs::create_dir_all(&config.state_dir).unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("bangerd.log"))
            .unwrap();
        let mut command = Command::new(bangerd_binary());
        command
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default());
        for (key, value) in &env.vars {
            command.env(key, value);
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawning bangerd");
        let client = Client::new(config.socket_path());
        for _ in 0..1000 {
            if client.get::<banger_api::Health>("/v1/health").await.is_ok() {
                return DaemonProcess {
                    client,
                    config,
                    child: Some(child),
                    sweep_on_drop: true,
                };
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!(
            "bangerd did not answer; log: {}",
            std::fs::read_to_string(dir.join("bangerd.log")).unwrap_or_default()
        );
    }

    /// SIGKILL: nothing in the daemon gets to clean up.
    pub fn kill9(mut self) {
        self.sweep_on_drop = false;
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait.
    pub fn terminate(mut self) {
        self.sweep_on_drop = false;
        if let Some(mut child) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = child.wait();
        }
    }
}

impl Drop for DaemonProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if self.sweep_on_drop {
            kill_vm_processes(&self.config);
        }
    }
}

impl Drop for RealDaemon {
    fn drop(&mut self) {
        if self.sweep_on_drop {
            kill_vm_processes(&self.config);
        }
    }
}

/// SIGKILLs every process (VMMs, vhost helpers) that names this daemon's runtime directory, so
/// a failing test never leaves guests running. Only processes the test's daemon started match:
/// the runtime directory is a fresh temp dir.
pub fn kill_vm_processes(config: &Config) {
    use banger_host::process::{Processes, RealProcesses};
    let processes = RealProcesses::new();
    let needle = config.runtime_dir.join("vms").display().to_string();
    for id in processes.find_mentioning(&needle) {
        let _ = processes.signal(id, nix::sys::signal::Signal::SIGKILL);
    }
}

/// A network namespace the test creates and deletes on drop.
#[derive(Debug)]
pub struct TestNetns {
    /// Its name.
    pub name: String,
}

impl TestNetns {
    /// Creates `banger-t-<pid>-<n>`.
    pub fn new(tag: &str) -> TestNetns {
        let name = format!("bt-{tag}-{}", std::process::id());
        let status = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .expect("ip netns add");
        assert!(status.success(), "ip netns add {name} failed");
        TestNetns { name }
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .status();
    }
}

/// Whether process `pid` exists.
pub fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| s.contains(") Z "))
            .unwrap_or(true)
}

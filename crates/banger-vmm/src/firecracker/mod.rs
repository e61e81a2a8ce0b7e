//! The Firecracker backend: one `firecracker` process per VM, configured through its API socket.
//!
//! [`FirecrackerVmm`] owns nothing per VM: everything it needs later is in the [`VmmHandles`] it
//! returns (the process id, the API socket `RUN_DIR/firecracker.sock`, the vsock socket), plus
//! files at fixed names in the VM's runtime directory (`metrics.json` beside the API socket). So a
//! restarted daemon can drive a VMM an earlier daemon launched from its handles alone. The only
//! in-memory state is the metrics ledger (how far each process's metrics file has been summed),
//! which rebuilds itself from the file when missing.
//!
//! Launch, in order (each step timed, see [`LaunchTimings`]):
//!
//! ```text
//! check spec ─► remove stale sockets, create metrics file, empty vmm_log
//!   ─► spawn `firecracker --api-sock RUN_DIR/firecracker.sock --id NAME`
//!        (stdout+stderr ─► console_log: the guest's serial console and Firecracker's early output)
//!   ─► wait for the API socket (fail fast with the output tail if the process exits)
//!   ─► PUT /logger (─► vmm_log) ─► PUT /metrics ─► PUT /machine-config ─► PUT /boot-source
//!   ─► PUT /drives/ID … ─► PUT /network-interfaces/eth0 ─► PUT /vsock ─► PUT /actions InstanceStart
//! ```
//!
//! Any failure after the spawn kills the process (SIGKILL, then waits for it) and removes both
//! sockets before the error is returned; if the launch future is dropped midway, a guard sends
//! the SIGKILL and removes the sockets synchronously. No half-launched VMM survives `launch`.
//!
//! Firecracker's logger opens its file at offset 0 without `O_APPEND`, so `vmm_log` cannot be
//! appended to across boots: launch empties it and it holds the log of the current process.
//!
//! Concurrency: every method takes `&self` and may run concurrently for different VMs; calls for
//! the same VM are serialised by the daemon's per-VM task, and Firecracker's API server itself
//! handles one request at a time.

pub mod client;
mod metrics;
pub mod models;

use std::ffi::OsString;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use banger_host::exec::{execute, CommandError, CommandSpec};
use banger_host::process::{ExitInfo, ProcessError, ProcessId, ProcessState, Processes, SpawnSpec};
use nix::sys::signal::Signal;

use self::client::{ApiError, FirecrackerClient};
use self::metrics::MetricsLedger;
use self::models::{
    ActionType, BootSource, Drive, LogLevel, Logger, MachineConfiguration, Metrics,
    NetworkInterface, VmState, Vsock,
};
use crate::{LaunchSpec, Vmm, VmmCounters, VmmError, VmmHandles, VmmKind};

/// File name of the API socket inside the VM's runtime directory.
pub const API_SOCKET_NAME: &str = "firecracker.sock";
/// File name of the metrics file inside the VM's runtime directory.
pub const METRICS_FILE_NAME: &str = "metrics.json";
/// Guest interface id used for the VM's one network interface.
pub const GUEST_IFACE_ID: &str = "eth0";
/// Kernel command-line options added when the spec's command line does not set them: serial
/// console on ttyS0 (Firecracker's only UART), reboot through the keyboard controller so a
/// guest reboot ends the VMM, panic -> reboot after 1 s, and no PCI probing.
pub const DEFAULT_BOOT_ARGS: [(&str, &str); 4] = [
    ("console", "ttyS0"),
    ("reboot", "k"),
    ("panic", "1"),
    ("pci", "off"),
];
/// The oldest Firecracker major version this backend drives.
pub const MIN_MAJOR_VERSION: u32 = 1;

/// Default for how long launch waits for the API socket.
pub const DEFAULT_SOCKET_TIMEOUT: Duration = Duration::from_secs(2);
/// Default for how long kill waits for the process to be gone after SIGKILL.
pub const DEFAULT_KILL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long `is_alive` waits for `GET /`.
const LIVENESS_TIMEOUT: Duration = Duration::from_secs(1);
/// How long `probe` lets `firecracker --version` run.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often launch looks for the API socket.
const SOCKET_POLL: Duration = Duration::from_millis(5);
/// Unix socket paths longer than this do not fit `sockaddr_un.sun_path` (108 bytes with NUL).
const MAX_SOCKET_PATH: usize = 107;
/// Firecracker's limit on `--id` (`validate_instance_id`).
const MAX_INSTANCE_ID_LEN: usize = 64;
/// Lines of output quoted when the process dies.
const TAIL_LINES: usize = 15;

/// A Firecracker release number, as printed by `firecracker --version`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ReleaseVersion {
    /// Major.
    pub major: u32,
    /// Minor.
    pub minor: u32,
    /// Patch.
    pub patch: u32,
}

impl ReleaseVersion {
    /// Finds `Firecracker vX.Y.Z` (a `-suffix` after Z is allowed) in `--version` output.
    pub fn from_version_output(output: &str) -> Option<Self> {
        output.lines().find_map(|line| {
            let rest = line.trim().strip_prefix("Firecracker v")?;
            let mut parts = rest.splitn(3, '.');
            let major = parts.next()?.parse().ok()?;
            let minor = parts.next()?.parse().ok()?;
            let patch_text = parts.next()?;
            let digits = patch_text
                .find(|c: char| !c.is_ascii_digit())
                .map_or(patch_text, |end| &patch_text[..end]);
            let patch = digits.parse().ok()?;
            Some(Self {
                major,
                minor,
                patch,
            })
        })
    }
}

impl fmt::Display for ReleaseVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// How long each part of one launch took, from just before the spawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LaunchTimings {
    /// Spawn until the API socket accepted a connection.
    pub api_socket: Duration,
    /// Spawn until every configuration call was accepted.
    pub configured: Duration,
    /// Spawn until `InstanceStart` was accepted.
    pub started: Duration,
}

/// The API socket path for a runtime directory.
pub fn api_socket_path(run_dir: &Path) -> PathBuf {
    run_dir.join(API_SOCKET_NAME)
}

/// The metrics file of the VMM whose API socket is `api_socket` (they share a directory).
pub fn metrics_path_for(api_socket: &Path) -> PathBuf {
    api_socket.parent().map_or_else(
        || PathBuf::from(METRICS_FILE_NAME),
        |dir| dir.join(METRICS_FILE_NAME),
    )
}

/// The kernel command line Firecracker boots with: `cmdline` plus each of
/// [`DEFAULT_BOOT_ARGS`] whose key it does not already set.
pub fn boot_args(cmdline: &str) -> String {
    let mut args: Vec<String> = cmdline.split_whitespace().map(str::to_string).collect();
    for (key, value) in DEFAULT_BOOT_ARGS {
        let prefix = format!("{key}=");
        if !args.iter().any(|arg| arg.starts_with(&prefix)) {
            args.push(format!("{key}={value}"));
        }
    }
    args.join(" ")
}

/// The drive bodies for `spec`, in order. None is marked as root: the command line (`root=…`)
/// or the initrd decides what the guest mounts.
pub fn drive_models(spec: &LaunchSpec) -> Vec<Drive> {
    spec.drives
        .iter()
        .map(|drive| Drive {
            drive_id: drive.id.clone(),
            path_on_host: drive.path.clone(),
            is_root_device: false,
            is_read_only: drive.read_only,
            partuuid: None,
            cache_type: None,
            io_engine: None,
        })
        .collect()
}

/// The Firecracker [`Vmm`] backend.
pub struct FirecrackerVmm {
    bin: PathBuf,
    processes: Arc<dyn Processes>,
    socket_timeout: Duration,
    api_timeout: Duration,
    kill_timeout: Duration,
    metrics: Arc<MetricsLedger>,
}

impl fmt::Debug for FirecrackerVmm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FirecrackerVmm")
            .field("bin", &self.bin)
            .field("socket_timeout", &self.socket_timeout)
            .field("api_timeout", &self.api_timeout)
            .field("kill_timeout", &self.kill_timeout)
            .finish_non_exhaustive()
    }
}

impl FirecrackerVmm {
    /// A backend running the `firecracker` binary `bin` (a path, or a name looked up on PATH)
    /// through `processes`.
    pub fn new(bin: impl Into<PathBuf>, processes: Arc<dyn Processes>) -> Self {
        Self {
            bin: bin.into(),
            processes,
            socket_timeout: DEFAULT_SOCKET_TIMEOUT,
            api_timeout: client::DEFAULT_API_TIMEOUT,
            kill_timeout: DEFAULT_KILL_TIMEOUT,
            metrics: Arc::default(),
        }
    }

    /// How long launch waits for the API socket to appear.
    pub fn with_socket_timeout(mut self, timeout: Duration) -> Self {
        self.socket_timeout = timeout;
        self
    }

    /// How long each API call may take.
    pub fn with_api_timeout(mut self, timeout: Duration) -> Self {
        self.api_timeout = timeout;
        self
    }

    /// How long kill waits for the process to be gone after SIGKILL.
    pub fn with_kill_timeout(mut self, timeout: Duration) -> Self {
        self.kill_timeout = timeout;
        self
    }

    /// The binary this backend runs.
    pub fn bin(&self) -> &Path {
        &self.bin
    }

    /// An API client for the VMM behind `handles`.
    pub fn client(&self, handles: &VmmHandles) -> FirecrackerClient {
        FirecrackerClient::new(&handles.control_socket).with_timeout(self.api_timeout)
    }

    /// Runs `firecracker --version` and parses it; refuses versions older than 1.0.
    pub async fn version(&self) -> Result<(ReleaseVersion, String), VmmError> {
        let what = format!("firecracker ({})", self.bin.display());
        let spec = CommandSpec::new(&self.bin)
            .arg("--version")
            .timeout(PROBE_TIMEOUT);
        let output = execute(&spec)
            .await
            .map_err(|error| VmmError::Unavailable {
                what: what.clone(),
                reason: match &error {
                    CommandError::Spawn { source, .. } => format!(
                    "could not run it ({source}); install Firecracker {MIN_MAJOR_VERSION}.x or \
                     newer, or point the firecracker binary setting at it"
                ),
                    other => format!("`--version` failed: {other}"),
                },
            })?;
        let Some(version) = ReleaseVersion::from_version_output(&output.stdout) else {
            return Err(VmmError::Unavailable {
                what,
                reason: format!(
                    "`--version` printed no `Firecracker vX.Y.Z` line: {:?}",
                    output.stdout.trim()
                ),
            });
        };
        if version.major < MIN_MAJOR_VERSION {
            return Err(VmmError::Unavailable {
                what,
                reason: format!(
                    "version {version} is too old: banger needs Firecracker \
                     {MIN_MAJOR_VERSION}.0 or newer"
                ),
            });
        }
        Ok((version, format!("Firecracker v{version}")))
    }

    /// Launches like [`Vmm::launch`] and also reports how long each part took.
    pub async fn launch_timed(
        &self,
        spec: &LaunchSpec,
    ) -> Result<(VmmHandles, LaunchTimings), VmmError> {
        check_spec(spec)?;
        let api_socket = api_socket_path(&spec.run_dir);
        let metrics_path = spec.run_dir.join(METRICS_FILE_NAME);
        prepare_files(spec, &api_socket, &metrics_path)?;
        let console_start = file_len(&spec.console_log);

        let spawn = SpawnSpec {
            program: self.bin.clone(),
            args: vec![
                OsString::from("--api-sock"),
                api_socket.clone().into_os_string(),
                OsString::from("--id"),
                OsString::from(&spec.name),
            ],
            env: Vec::new(),
            cwd: Some(spec.run_dir.clone()),
            stdout: Some(spec.console_log.clone()),
            stderr: Some(spec.console_log.clone()),
            netns: spec.netns.clone(),
        };
        let started_at = Instant::now();
        let process = self
            .processes
            .spawn(&spawn)
            .await
            .map_err(|source| VmmError::Spawn {
                vm: spec.name.clone(),
                what: "firecracker".to_string(),
                source,
            })?;
        let mut guard = LaunchGuard {
            processes: Arc::clone(&self.processes),
            process,
            sockets: vec![api_socket.clone(), spec.vsock_uds.clone()],
            armed: true,
        };
        let launch = Launch {
            vmm: self,
            spec,
            process,
            client: FirecrackerClient::new(&api_socket).with_timeout(self.api_timeout),
            metrics_path,
            console_start,
            started_at,
        };
        match launch.run().await {
            Ok(timings) => {
                guard.armed = false;
                tracing::info!(
                    vm = %spec.name,
                    %process,
                    api_socket_ms = timings.api_socket.as_millis() as u64,
                    started_ms = timings.started.as_millis() as u64,
                    "firecracker started"
                );
                let handles = VmmHandles {
                    kind: VmmKind::Firecracker,
                    process,
                    helpers: Vec::new(),
                    control_socket: api_socket,
                    vsock_uds: spec.vsock_uds.clone(),
                    emulated: false,
                };
                Ok((handles, timings))
            }
            Err(error) => {
                tracing::warn!(vm = %spec.name, %process, %error, "firecracker launch failed; killing it");
                guard.clean_up(self.kill_timeout).await;
                Err(error)
            }
        }
    }

    /// Pauses the guest's vCPUs (`PATCH /vm`).
    pub async fn pause(&self, handles: &VmmHandles) -> Result<(), VmmError> {
        self.client(handles)
            .patch_vm(VmState::Paused)
            .await
            .map_err(|e| e.into_vmm_error(&vm_label(handles), &handles.control_socket))
    }

    /// Resumes the guest's vCPUs (`PATCH /vm`).
    pub async fn resume(&self, handles: &VmmHandles) -> Result<(), VmmError> {
        self.client(handles)
            .patch_vm(VmState::Resumed)
            .await
            .map_err(|e| e.into_vmm_error(&vm_label(handles), &handles.control_socket))
    }
}

/// One launch in progress, after the spawn.
struct Launch<'a> {
    vmm: &'a FirecrackerVmm,
    spec: &'a LaunchSpec,
    process: ProcessId,
    client: FirecrackerClient,
    metrics_path: PathBuf,
    console_start: u64,
    started_at: Instant,
}

impl Launch<'_> {
    async fn run(&self) -> Result<LaunchTimings, VmmError> {
        self.wait_for_socket().await?;
        let api_socket = self.started_at.elapsed();
        self.configure().await?;
        let configured = self.started_at.elapsed();
        self.call(self.client.action(ActionType::InstanceStart))
            .await?;
        Ok(LaunchTimings {
            api_socket,
            configured,
            started: self.started_at.elapsed(),
        })
    }

    async fn wait_for_socket(&self) -> Result<(), VmmError> {
        let socket = self.client.socket();
        let deadline = Instant::now() + self.vmm.socket_timeout;
        loop {
            if let ProcessState::Exited(exit) = self.vmm.processes.state(self.process) {
                return Err(self.died("startup", exit));
            }
            if tokio::net::UnixStream::connect(socket).await.is_ok() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(VmmError::Timeout {
                    vm: self.spec.name.clone(),
                    what: format!("firecracker's API socket {}", socket.display()),
                    timeout: self.vmm.socket_timeout,
                });
            }
            tokio::time::sleep(SOCKET_POLL).await;
        }
    }

    async fn configure(&self) -> Result<(), VmmError> {
        let spec = self.spec;
        let client = &self.client;
        self.call(client.put_logger(&Logger {
            log_path: spec.vmm_log.clone(),
            level: Some(LogLevel::Info),
            show_level: Some(true),
            show_log_origin: None,
        }))
        .await?;
        self.call(client.put_metrics(&Metrics {
            metrics_path: self.metrics_path.clone(),
        }))
        .await?;
        self.call(client.put_machine_config(&MachineConfiguration {
            vcpu_count: spec.vcpus,
            mem_size_mib: spec.memory_mib,
            smt: None,
            track_dirty_pages: None,
        }))
        .await?;
        self.call(client.put_boot_source(&BootSource {
            kernel_image_path: spec.kernel.clone(),
            initrd_path: spec.initrd.clone(),
            boot_args: Some(boot_args(&spec.cmdline)),
        }))
        .await?;
        for drive in drive_models(spec) {
            self.call(client.put_drive(&drive)).await?;
        }
        if let Some(net) = &spec.net {
            self.call(client.put_network_interface(&NetworkInterface {
                iface_id: GUEST_IFACE_ID.to_string(),
                host_dev_name: net.tap.clone(),
                guest_mac: Some(net.mac.clone()),
            }))
            .await?;
        }
        self.call(client.put_vsock(&Vsock {
            guest_cid: spec.vsock_cid,
            uds_path: spec.vsock_uds.clone(),
        }))
        .await
    }

    /// Runs one API call; a failure that coincides with the process dying is reported as
    /// [`VmmError::Died`] with the output tail, which says more than "connection reset".
    async fn call<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, ApiError>>,
    ) -> Result<T, VmmError> {
        match call.await {
            Ok(value) => Ok(value),
            Err(error) => {
                let phase = error.call().to_string();
                if !matches!(error, ApiError::Rejected { .. }) {
                    // Give a crashing process a moment to be reaped before deciding.
                    let state = self
                        .vmm
                        .processes
                        .wait_exit(self.process, Duration::from_millis(200))
                        .await;
                    if let ProcessState::Exited(exit) = state {
                        return Err(self.died(&phase, exit));
                    }
                }
                Err(error.into_vmm_error(&self.spec.name, self.client.socket()))
            }
        }
    }

    fn died(&self, phase: &str, exit: Option<ExitInfo>) -> VmmError {
        let mut tail = tail_lines(&self.spec.console_log, self.console_start, TAIL_LINES);
        let log_tail = tail_lines(&self.spec.vmm_log, 0, TAIL_LINES);
        if !log_tail.is_empty() {
            if !tail.is_empty() {
                tail.push_str(" | ");
            }
            tail.push_str(&log_tail);
        }
        if tail.is_empty() {
            tail = "(none)".to_string();
        }
        VmmError::Died {
            vmm: VmmKind::Firecracker,
            vm: self.spec.name.clone(),
            phase: phase.to_string(),
            exit: exit.map_or_else(|| "exited".to_string(), |info| info.to_string()),
            tail,
        }
    }
}

/// Kills a VMM whose launch did not finish and removes its sockets. The async path
/// ([`LaunchGuard::clean_up`]) also waits for the process; `Drop` covers a cancelled launch.
struct LaunchGuard {
    processes: Arc<dyn Processes>,
    process: ProcessId,
    sockets: Vec<PathBuf>,
    armed: bool,
}

impl LaunchGuard {
    async fn clean_up(&mut self, kill_timeout: Duration) {
        // Stays armed until done, so a cancellation while waiting still kills in `Drop`.
        kill_and_wait(self.processes.as_ref(), self.process, kill_timeout).await;
        remove_sockets(&self.sockets);
        self.armed = false;
    }
}

impl Drop for LaunchGuard {
    fn drop(&mut self) {
        if self.armed {
            if let Err(error) = self.processes.signal(self.process, Signal::SIGKILL) {
                tracing::debug!(process = %self.process, %error, "SIGKILL after a cancelled launch");
            }
            remove_sockets(&self.sockets);
        }
    }
}

/// SIGKILLs `process` (unless already gone) and waits for it; `false` if it is still there.
async fn kill_and_wait(processes: &dyn Processes, process: ProcessId, timeout: Duration) -> bool {
    if processes.state(process).is_running() {
        match processes.signal(process, Signal::SIGKILL) {
            Ok(()) | Err(ProcessError::Gone { .. }) => {}
            Err(error) => tracing::warn!(%process, %error, "could not SIGKILL firecracker"),
        }
    }
    !processes.wait_exit(process, timeout).await.is_running()
}

/// Removes each socket, ignoring ones already gone.
fn remove_sockets(sockets: &[PathBuf]) {
    for socket in sockets {
        if let Err(error) = remove_if_present(socket) {
            tracing::warn!(socket = %socket.display(), %error, "could not remove socket");
        }
    }
}

fn remove_if_present(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(error) if error.kind() != io::ErrorKind::NotFound => Err(error),
        _ => Ok(()),
    }
}

/// A name for the VM behind `handles` in errors: its runtime directory's name (handles carry no
/// VM name, and the daemon names runtime directories after VMs).
fn vm_label(handles: &VmmHandles) -> String {
    handles
        .control_socket
        .parent()
        .and_then(Path::file_name)
        .map_or_else(
            || handles.control_socket.display().to_string(),
            |name| name.to_string_lossy().into_owned(),
        )
}

/// Refuses specs Firecracker would refuse less clearly (or crash on).
fn check_spec(spec: &LaunchSpec) -> Result<(), VmmError> {
    let invalid = |reason: String| VmmError::InvalidSpec {
        vm: spec.name.clone(),
        reason,
    };
    let id_ok = !spec.name.is_empty()
        && spec.name.len() <= MAX_INSTANCE_ID_LEN
        && spec
            .name
            .chars()
            .all(|c| c == '-' || c.is_ascii_alphanumeric());
    if !id_ok {
        return Err(invalid(format!(
            "firecracker --id needs 1 to {MAX_INSTANCE_ID_LEN} letters, digits or '-'"
        )));
    }
    if !(1..=32).contains(&spec.vcpus) {
        return Err(invalid(format!(
            "{} vCPUs: firecracker runs 1 to 32",
            spec.vcpus
        )));
    }
    if spec.memory_mib == 0 {
        return Err(invalid("0 MiB of memory".to_string()));
    }
    if spec.vsock_cid < 3 {
        return Err(invalid(format!(
            "vsock CID {} is reserved (guests use 3 and up)",
            spec.vsock_cid
        )));
    }
    for socket in [api_socket_path(&spec.run_dir), spec.vsock_uds.clone()] {
        let len = socket.as_os_str().len();
        if len > MAX_SOCKET_PATH {
            return Err(invalid(format!(
                "socket path {} is {len} bytes, more than a Unix socket address holds \
                 ({MAX_SOCKET_PATH}); use a shorter runtime directory",
                socket.display()
            )));
        }
    }
    check_kernel(&spec.kernel).map_err(invalid)?;
    for path in spec
        .initrd
        .iter()
        .chain(spec.drives.iter().map(|d| &d.path))
    {
        if let Err(error) = std::fs::metadata(path) {
            return Err(invalid(format!("{}: {error}", path.display())));
        }
    }
    Ok(())
}

/// Firecracker on x86_64 boots an uncompressed ELF `vmlinux` only.
fn check_kernel(kernel: &Path) -> Result<(), String> {
    use std::io::Read;
    let mut magic = [0u8; 4];
    let read = std::fs::File::open(kernel).and_then(|mut file| file.read_exact(&mut magic));
    if let Err(error) = read {
        return Err(format!("kernel {}: {error}", kernel.display()));
    }
    if cfg!(target_arch = "x86_64") && magic != *b"\x7fELF" {
        return Err(format!(
            "kernel {} is not an ELF vmlinux (Firecracker cannot boot a bzImage; \
             extract it with the kernel's scripts/extract-vmlinux)",
            kernel.display()
        ));
    }
    Ok(())
}

/// Clears what a previous run left and creates the files Firecracker expects to exist.
fn prepare_files(spec: &LaunchSpec, api_socket: &Path, metrics: &Path) -> Result<(), VmmError> {
    let io_error = |what: String| move |source| VmmError::Io { what, source };
    std::fs::create_dir_all(&spec.run_dir).map_err(io_error(format!(
        "creating runtime directory {}",
        spec.run_dir.display()
    )))?;
    for socket in [api_socket, spec.vsock_uds.as_path()] {
        remove_if_present(socket).map_err(io_error(format!(
            "removing stale socket {}",
            socket.display()
        )))?;
    }
    // Firecracker's metrics writer needs the file to exist; a fresh one per process, since the
    // totals are the sum of all its lines.
    std::fs::File::create(metrics).map_err(io_error(format!(
        "creating metrics file {}",
        metrics.display()
    )))?;
    std::fs::File::create(&spec.vmm_log).map_err(io_error(format!(
        "emptying VMM log {}",
        spec.vmm_log.display()
    )))?;
    Ok(())
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |meta| meta.len())
}

/// The last `lines` lines written to `path` after byte `from`, joined with " / ".
fn tail_lines(path: &Path, from: u64, lines: usize) -> String {
    let Ok(bytes) = std::fs::read(path) else {
        return String::new();
    };
    let start = usize::try_from(from).unwrap_or(usize::MAX).min(bytes.len());
    let text = String::from_utf8_lossy(&bytes[start..]);
    let kept: Vec<&str> = text
        .lines()
        .map(str::trim_end)
        .filter(|line| !line.is_empty())
        .collect();
    kept[kept.len().saturating_sub(lines)..].join(" / ")
}

#[async_trait::async_trait]
impl Vmm for FirecrackerVmm {
    fn kind(&self) -> VmmKind {
        VmmKind::Firecracker
    }

    async fn probe(&self) -> Result<String, VmmError> {
        self.version().await.map(|(_, line)| line)
    }

    async fn launch(&self, spec: &LaunchSpec) -> Result<VmmHandles, VmmError> {
        self.launch_timed(spec).await.map(|(handles, _)| handles)
    }

    async fn request_shutdown(&self, handles: &VmmHandles) -> Result<(), VmmError> {
        self.client(handles)
            .action(ActionType::SendCtrlAltDel)
            .await
            .map_err(|e| e.into_vmm_error(&vm_label(handles), &handles.control_socket))
    }

    async fn kill(&self, handles: &VmmHandles) -> Result<(), VmmError> {
        let process = handles.process;
        if !kill_and_wait(self.processes.as_ref(), process, self.kill_timeout).await {
            return Err(VmmError::Timeout {
                vm: vm_label(handles),
                what: format!("exit of firecracker {process} after SIGKILL"),
                timeout: self.kill_timeout,
            });
        }
        self.metrics.forget(process);
        for socket in [&handles.control_socket, &handles.vsock_uds] {
            remove_if_present(socket).map_err(|source| VmmError::Io {
                what: format!("removing socket {}", socket.display()),
                source,
            })?;
        }
        Ok(())
    }

    async fn is_alive(&self, handles: &VmmHandles) -> bool {
        self.processes.state(handles.process).is_running()
            && FirecrackerClient::new(&handles.control_socket)
                .with_timeout(LIVENESS_TIMEOUT)
                .instance_info()
                .await
                .is_ok()
    }

    async fn wait_exit(&self, handles: &VmmHandles, timeout: Duration) -> bool {
        !self
            .processes
            .wait_exit(handles.process, timeout)
            .await
            .is_running()
    }

    fn exit_info(&self, handles: &VmmHandles) -> Option<ExitInfo> {
        match self.processes.state(handles.process) {
            ProcessState::Exited(exit) => exit,
            ProcessState::Running => None,
        }
    }

    async fn counters(&self, handles: &VmmHandles) -> Result<VmmCounters, VmmError> {
        let flushed = self.client(handles).action(ActionType::FlushMetrics).await;
        if let Err(error) = flushed {
            // A VMM that has exited cannot flush, but its file still holds its final numbers.
            if self.processes.state(handles.process).is_running() {
                return Err(error.into_vmm_error(&vm_label(handles), &handles.control_socket));
            }
        }
        let path = metrics_path_for(&handles.control_socket);
        let ledger = Arc::clone(&self.metrics);
        let process = handles.process;
        let read_path = path.clone();
        let read = tokio::task::spawn_blocking(move || ledger.read(process, &read_path)).await;
        let read = read.unwrap_or_else(|join| Err(io::Error::other(join)));
        read.map_err(|source| VmmError::Io {
            what: format!("reading Firecracker metrics {}", path.display()),
            source,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap: a panic is the failure report
mod tests {
    use super::*;

    #[test]
    fn version_line_is_found_and_suffixes_are_ignored() {
        let out = "Firecracker v1.16.1\n\n2026-01-01 [anonymous-instance:main] exiting\n";
        assert_eq!(
            ReleaseVersion::from_version_output(out),
            Some(ReleaseVersion {
                major: 1,
                minor: 16,
                patch: 1
            })
        );
        assert_eq!(
            ReleaseVersion::from_version_output("Firecracker v1.16.0-dev\n").map(|v| v.to_string()),
            Some("1.16.0".to_string())
        );
        assert_eq!(
            ReleaseVersion::from_version_output("Firecracker v0.25.2"),
            Some(ReleaseVersion {
                major: 0,
                minor: 25,
                patch: 2
            })
        );
        assert_eq!(ReleaseVersion::from_version_output("qemu 8.0"), None);
        assert_eq!(ReleaseVersion::from_version_output("Firecracker vX"), None);
    }

    #[test]
    fn boot_args_add_only_missing_defaults() {
        assert_eq!(
            boot_args("root=/dev/vda rw"),
            "root=/dev/vda rw console=ttyS0 reboot=k panic=1 pci=off"
        );
        assert_eq!(
            boot_args("console=hvc0  panic=0 quiet"),
            "console=hvc0 panic=0 quiet reboot=k pci=off"
        );
        assert_eq!(boot_args(""), "console=ttyS0 reboot=k panic=1 pci=off");
    }

    #[test]
    fn metrics_file_lives_beside_the_api_socket() {
        assert_eq!(
            metrics_path_for(Path::new("/run/banger/vm1/firecracker.sock")),
            PathBuf::from("/run/banger/vm1/metrics.json")
        );
    }

    #[test]
    fn tail_skips_output_from_before_the_launch() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        std::fs::write(&path, "old boot\n").unwrap();
        let from = file_len(&path);
        std::fs::write(&path, "old boot\nline 1\n\nline 2\nline 3\n").unwrap();
        assert_eq!(tail_lines(&path, from, 2), "line 2 / line 3");
        assert_eq!(tail_lines(&path, from, 10), "line 1 / line 2 / line 3");
        assert_eq!(tail_lines(&dir.path().join("absent"), 0, 3), "");
    }
}

//! The QEMU backend: `qemu-system-x86_64 -M microvm` plus a `vhost-device-vsock` helper.
//!
//! One VM is two processes, both spawned through [`Processes`] (own session, so they outlive the
//! daemon) and both in the spec's network namespace:
//!
//! ```text
//!   host client ──CONNECT <port>──▶ vsock_uds ◀── vhost-device-vsock ◀─vhost-user─▶ QEMU ◀─QMP── banger
//!                                                  (helper, listens on            (VMM, listens on
//!                                                   run_dir/vhost-vsock.sock)      run_dir/qmp.sock)
//! ```
//!
//! The helper serves the guest's vsock device and speaks Firecracker's `CONNECT <port>` protocol
//! on the host side. Its death kills the VM's vsock for good, so it is supervised as part of the
//! VM: [`VmmHandles::helpers`] lists it, [`Vmm::is_alive`] requires it, [`Vmm::wait_exit`] kills
//! QEMU when it dies (and kills it when QEMU exits), and [`Vmm::kill`] kills both.
//!
//! QEMU runs with `-no-reboot`, so a guest reboot, poweroff or (with `panic=-1`) kernel panic ends
//! the process, as under Firecracker. [`Vmm::request_shutdown`] presses the ACPI power button
//! (QMP `system_powerdown`); the guest must act on it (systemd-logind does).
//! [`Vmm::counters`] has block I/O only (QMP `query-blockstats`): network counters stay 0.
//!
//! `launch` order matters: the helper first (QEMU connects to its socket at start-up and does
//! not reconnect), wait for its socket, then QEMU, wait for the QMP socket, negotiate QMP and
//! check `query-status` is `running`. Every process started and every socket created is owned by
//! a `LaunchRollback` until the launch succeeds: an error kills and removes them all (and a
//! cancelled launch at least SIGKILLs them, synchronously, on drop).
//!
//! The backend holds no per-VM state: everything it needs after launch is in [`VmmHandles`], so a
//! new daemon can adopt VMs a previous one launched. Methods may run concurrently for different
//! VMs; for one VM the daemon's per-VM task serializes them (QEMU serves one QMP client at a time
//! anyway; further connections wait their turn).

pub mod accel;
pub mod argv;
pub mod qmp;

use std::ffi::OsString;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use banger_host::exec::{execute, CommandError, CommandSpec};
use banger_host::process::{ExitInfo, ProcessId, ProcessState, Processes, SpawnSpec};
use nix::sys::signal::Signal;

pub use self::accel::{choose_accel, Accel, AccelChoice, ChosenAccel, HostPaths};
pub use self::argv::{qemu_argv, vhost_vsock_argv, QemuSockets};
use self::qmp::{QmpClient, QmpError};
use crate::{LaunchSpec, Vmm, VmmCounters, VmmError, VmmHandles, VmmKind};

/// How long the helper may take to create its vhost-user socket.
const VHOST_SOCKET_TIMEOUT: Duration = Duration::from_secs(5);
/// How long QEMU may take to create its QMP socket.
const QMP_SOCKET_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on each QMP reply during launch and control calls.
const QMP_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on the QMP round trip of a liveness check.
const ALIVE_QMP_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a SIGKILLed process may take to be gone.
const KILL_WAIT: Duration = Duration::from_secs(5);
/// How long a process that broke its QMP connection may take to show as exited.
const DYING_GRACE: Duration = Duration::from_millis(500);
/// Poll interval while waiting for a socket file.
const SOCKET_POLL: Duration = Duration::from_millis(10);
/// Slice of [`Vmm::wait_exit`] between checks of the helpers.
const SUPERVISE_SLICE: Duration = Duration::from_millis(250);
/// `sun_path` holds 108 bytes including the terminating NUL.
const MAX_SOCKET_PATH: usize = 107;
/// Room left in the vsock socket path for the `_<port>` suffix of guest-initiated listeners.
const VSOCK_PORT_SUFFIX: usize = 11;
/// Lines of the VMM log quoted in a launch error.
const TAIL_LINES: usize = 12;

/// The QEMU microvm backend. Cheap to share; holds no per-VM state.
#[derive(Clone)]
pub struct QemuVmm {
    qemu_bin: PathBuf,
    vhost_vsock_bin: PathBuf,
    processes: Arc<dyn Processes>,
    accel: Accel,
    host: HostPaths,
}

impl std::fmt::Debug for QemuVmm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QemuVmm")
            .field("qemu_bin", &self.qemu_bin)
            .field("vhost_vsock_bin", &self.vhost_vsock_bin)
            .field("accel", &self.accel)
            .field("host", &self.host)
            .finish_non_exhaustive()
    }
}

impl QemuVmm {
    /// A backend running `qemu_bin` and `vhost_vsock_bin` (names on PATH or paths) through
    /// `processes`, with the accelerator resolved against the real host.
    pub fn new(
        qemu_bin: impl Into<PathBuf>,
        vhost_vsock_bin: impl Into<PathBuf>,
        processes: Arc<dyn Processes>,
        accel: Accel,
    ) -> Self {
        Self::with_host(
            qemu_bin,
            vhost_vsock_bin,
            processes,
            accel,
            HostPaths::system(),
        )
    }

    /// Like [`QemuVmm::new`], with `/dev/kvm` and `/sys/module` looked up in `host`.
    pub fn with_host(
        qemu_bin: impl Into<PathBuf>,
        vhost_vsock_bin: impl Into<PathBuf>,
        processes: Arc<dyn Processes>,
        accel: Accel,
        host: HostPaths,
    ) -> Self {
        Self {
            qemu_bin: qemu_bin.into(),
            vhost_vsock_bin: vhost_vsock_bin.into(),
            processes,
            accel,
            host,
        }
    }

    /// The accelerator a VM launched now would get, and why.
    pub fn accel_choice(&self) -> AccelChoice {
        choose_accel(self.accel, &self.host)
    }

    async fn version_line(&self, program: &Path, hint: &str) -> Result<String, VmmError> {
        let spec = CommandSpec::new(program)
            .arg("--version")
            .timeout(Duration::from_secs(10));
        let unavailable = |reason: String| VmmError::Unavailable {
            what: program.display().to_string(),
            reason,
        };
        match execute(&spec).await {
            Ok(output) => match output
                .stdout
                .lines()
                .map(str::trim)
                .find(|line| !line.is_empty())
            {
                Some(line) => Ok(line.to_string()),
                None => Err(unavailable(format!("`--version` printed nothing; {hint}"))),
            },
            Err(CommandError::Spawn { source, .. }) => {
                Err(unavailable(format!("cannot be run ({source}); {hint}")))
            }
            Err(error) => Err(unavailable(format!("{error}; {hint}"))),
        }
    }

    /// The VM's name for error messages: QEMU's `-name`, else the runtime directory's name.
    fn vm_label(&self, handles: &VmmHandles) -> String {
        if let Some(argv) = self.processes.cmdline(handles.process) {
            if let Some(pair) = argv.windows(2).find(|pair| pair[0] == "-name") {
                return pair[1].clone();
            }
        }
        handles
            .control_socket
            .parent()
            .and_then(Path::file_name)
            .map_or_else(
                || handles.control_socket.display().to_string(),
                |n| n.to_string_lossy().into_owned(),
            )
    }

    async fn qmp(&self, handles: &VmmHandles, timeout: Duration) -> Result<QmpClient, VmmError> {
        QmpClient::connect(&handles.control_socket, timeout)
            .await
            .map_err(|e| qmp_error(e, &self.vm_label(handles), &handles.control_socket))
    }

    async fn launch_inner(
        &self,
        spec: &LaunchSpec,
        choice: &AccelChoice,
        rollback: &mut LaunchRollback,
        log_start: u64,
    ) -> Result<VmmHandles, VmmError> {
        let sockets = QemuSockets::in_run_dir(&spec.run_dir);
        let vm = spec.name.as_str();
        let started = Instant::now();

        let helper = self
            .processes
            .spawn(&SpawnSpec {
                program: self.vhost_vsock_bin.clone(),
                args: vhost_vsock_argv(spec, &sockets),
                env: Vec::new(),
                cwd: None,
                stdout: Some(spec.vmm_log.clone()),
                stderr: Some(spec.vmm_log.clone()),
                netns: spec.netns.clone(),
            })
            .await
            .map_err(|source| VmmError::Spawn {
                vm: vm.into(),
                what: "vhost-device-vsock".into(),
                source,
            })?;
        rollback.processes.push(helper);
        let watch = Watch {
            processes: &*self.processes,
            spec,
            log_start,
        };
        watch
            .socket(
                &sockets.vhost_vsock,
                &[("vhost-device-vsock", helper)],
                VHOST_SOCKET_TIMEOUT,
                "vsock helper startup",
            )
            .await?;

        let qemu_args = qemu_argv(spec, choice.accel, &sockets);
        tracing::debug!(vm, argv = %printable_argv(&self.qemu_bin, &qemu_args), "starting QEMU");
        let qemu = self
            .processes
            .spawn(&SpawnSpec {
                program: self.qemu_bin.clone(),
                args: qemu_args,
                env: Vec::new(),
                cwd: None,
                stdout: Some(spec.vmm_log.clone()),
                stderr: Some(spec.vmm_log.clone()),
                netns: spec.netns.clone(),
            })
            .await
            .map_err(|source| VmmError::Spawn {
                vm: vm.into(),
                what: "qemu-system-x86_64".into(),
                source,
            })?;
        rollback.processes.push(qemu);
        let both = [("qemu-system-x86_64", qemu), ("vhost-device-vsock", helper)];
        watch
            .socket(&sockets.qmp, &both, QMP_SOCKET_TIMEOUT, "startup")
            .await?;

        let handshake = async {
            let mut client = QmpClient::connect(&sockets.qmp, QMP_TIMEOUT).await?;
            client.query_status().await
        };
        let status = match handshake.await {
            Ok(status) => status,
            // A QMP failure while QEMU is dying is reported as the death, which says more. QEMU
            // drops the connection a moment before it is gone, so give it that moment.
            Err(error) => {
                self.processes.wait_exit(qemu, DYING_GRACE).await;
                watch.exited(&both, "QMP handshake")?;
                return Err(qmp_error(error, vm, &sockets.qmp));
            }
        };
        if status.status != "running" {
            watch.exited(&both, "QMP handshake")?;
            return Err(VmmError::Rejected {
                vmm: VmmKind::Qemu,
                vm: vm.into(),
                call: "query-status".into(),
                message: format!("the VM is {} instead of running", status.status),
            });
        }
        tracing::info!(
            vm,
            qemu_pid = qemu.pid,
            helper_pid = helper.pid,
            accel = %choice.accel,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "QEMU microvm running"
        );
        Ok(VmmHandles {
            kind: VmmKind::Qemu,
            process: qemu,
            helpers: vec![helper],
            control_socket: sockets.qmp,
            vsock_uds: spec.vsock_uds.clone(),
            emulated: choice.accel.is_emulated(),
        })
    }
}

#[async_trait::async_trait]
impl Vmm for QemuVmm {
    fn kind(&self) -> VmmKind {
        VmmKind::Qemu
    }

    async fn probe(&self) -> Result<String, VmmError> {
        let qemu = self
            .version_line(
                &self.qemu_bin,
                "install it with `apt-get install qemu-system-x86`",
            )
            .await?;
        let vhost = self
            .version_line(
                &self.vhost_vsock_bin,
                "install it with `cargo install vhost-device-vsock --locked`",
            )
            .await?;
        Ok(format!("{qemu}; {vhost}"))
    }

    async fn launch(&self, spec: &LaunchSpec) -> Result<VmmHandles, VmmError> {
        check_spec(spec)?;
        let choice = self.accel_choice();
        tracing::debug!(vm = %spec.name, accel = %choice.accel, reason = %choice.reason, "QEMU accelerator");
        for dir in [
            Some(spec.run_dir.as_path()),
            spec.vmm_log.parent(),
            spec.console_log.parent(),
        ]
        .into_iter()
        .flatten()
        {
            std::fs::create_dir_all(dir).map_err(|source| VmmError::Io {
                what: format!("creating directory {} for VM {}", dir.display(), spec.name),
                source,
            })?;
        }
        let sockets = QemuSockets::in_run_dir(&spec.run_dir);
        let files = runtime_files(&sockets.qmp, &sockets.vhost_vsock, &spec.vsock_uds);
        // Sockets left by a previous run would make the waits below succeed at once and make the
        // helper fail to bind.
        remove_files(&files).map_err(|(path, source)| VmmError::Io {
            what: format!(
                "removing stale socket {} of VM {}",
                path.display(),
                spec.name
            ),
            source,
        })?;
        let log_start = std::fs::metadata(&spec.vmm_log).map_or(0, |m| m.len());

        let mut rollback = LaunchRollback {
            processes: Vec::new(),
            files,
            owner: Arc::clone(&self.processes),
        };
        match self
            .launch_inner(spec, &choice, &mut rollback, log_start)
            .await
        {
            Ok(handles) => {
                rollback.disarm();
                Ok(handles)
            }
            Err(error) => {
                rollback.run().await;
                Err(error)
            }
        }
    }

    async fn request_shutdown(&self, handles: &VmmHandles) -> Result<(), VmmError> {
        let mut client = self.qmp(handles, QMP_TIMEOUT).await?;
        client
            .system_powerdown()
            .await
            .map_err(|e| qmp_error(e, &self.vm_label(handles), &handles.control_socket))
    }

    async fn kill(&self, handles: &VmmHandles) -> Result<(), VmmError> {
        let vm = self.vm_label(handles);
        let all: Vec<ProcessId> = std::iter::once(handles.process)
            .chain(handles.helpers.iter().copied())
            .collect();
        for &id in &all {
            kill_process(&*self.processes, id);
        }
        let mut survivors = Vec::new();
        for &id in &all {
            if let ProcessState::Running = self.processes.wait_exit(id, KILL_WAIT).await {
                survivors.push(id.pid);
            }
        }
        let vhost_socket = handles
            .control_socket
            .parent()
            .map(|dir| dir.join(QemuSockets::VHOST_VSOCK))
            .unwrap_or_else(|| PathBuf::from(QemuSockets::VHOST_VSOCK));
        let mut files = runtime_files(&handles.control_socket, &vhost_socket, &handles.vsock_uds);
        files.extend(vsock_listener_files(&handles.vsock_uds));
        remove_files(&files).map_err(|(path, source)| VmmError::Io {
            what: format!("removing socket {} of VM {vm}", path.display()),
            source,
        })?;
        if survivors.is_empty() {
            Ok(())
        } else {
            Err(VmmError::Timeout {
                vm,
                what: format!("exit of pids {survivors:?} after SIGKILL"),
                timeout: KILL_WAIT,
            })
        }
    }

    async fn is_alive(&self, handles: &VmmHandles) -> bool {
        let running = |id: ProcessId| matches!(self.processes.state(id), ProcessState::Running);
        if !running(handles.process) || !handles.helpers.iter().all(|&id| running(id)) {
            return false;
        }
        let status = async {
            let mut client = QmpClient::connect(&handles.control_socket, ALIVE_QMP_TIMEOUT).await?;
            client.query_status().await
        };
        match status.await {
            Ok(status) => !matches!(
                status.status.as_str(),
                "shutdown" | "internal-error" | "guest-panicked"
            ),
            Err(error) => {
                tracing::debug!(socket = %handles.control_socket.display(), error = %error, "QMP liveness check failed");
                false
            }
        }
    }

    async fn wait_exit(&self, handles: &VmmHandles, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let slice = deadline
                .saturating_duration_since(Instant::now())
                .min(SUPERVISE_SLICE);
            if let ProcessState::Exited(exit) =
                self.processes.wait_exit(handles.process, slice).await
            {
                tracing::debug!(pid = handles.process.pid, exit = ?exit, "QEMU exited");
                // Without its VMM the helper serves nothing; do not leave it behind.
                for &helper in &handles.helpers {
                    kill_process(&*self.processes, helper);
                    if self
                        .processes
                        .wait_exit(helper, KILL_WAIT)
                        .await
                        .is_running()
                    {
                        tracing::warn!(pid = helper.pid, "vsock helper survived SIGKILL");
                    }
                }
                return true;
            }
            if let Some(dead) = handles
                .helpers
                .iter()
                .find(|&&id| matches!(self.processes.state(id), ProcessState::Exited(_)))
            {
                // The vsock helper is gone for good, and with it the guest's vsock: the VM is dead.
                tracing::warn!(
                    qemu_pid = handles.process.pid,
                    helper_pid = dead.pid,
                    "vsock helper died; killing QEMU"
                );
                kill_process(&*self.processes, handles.process);
                return !matches!(
                    self.processes.wait_exit(handles.process, KILL_WAIT).await,
                    ProcessState::Running
                );
            }
            if Instant::now() >= deadline {
                return false;
            }
        }
    }

    /// Block counters come from QMP `query-blockstats`. Network counters are 0: QMP has none for
    /// a microvm's virtio-net; the daemon's stats loop fills them from the tap (in the VMs'
    /// namespace, rx/tx swapped) through `VmNetwork::nic_counters`.
    async fn counters(&self, handles: &VmmHandles) -> Result<VmmCounters, VmmError> {
        let mut client = self.qmp(handles, QMP_TIMEOUT).await?;
        let block = client
            .query_blockstats()
            .await
            .map_err(|e| qmp_error(e, &self.vm_label(handles), &handles.control_socket))?;
        Ok(VmmCounters {
            block_read_bytes: block.read_bytes,
            block_write_bytes: block.write_bytes,
            block_read_ops: block.read_ops,
            block_write_ops: block.write_ops,
            ..VmmCounters::default()
        })
    }

    fn exit_info(&self, handles: &VmmHandles) -> Option<ExitInfo> {
        match self.processes.state(handles.process) {
            ProcessState::Exited(exit) => exit,
            ProcessState::Running => None,
        }
    }
}

/// Rejects a spec QEMU could not run, before anything is started.
fn check_spec(spec: &LaunchSpec) -> Result<(), VmmError> {
    let invalid = |reason: String| VmmError::InvalidSpec {
        vm: spec.name.clone(),
        reason,
    };
    if spec.vcpus == 0 {
        return Err(invalid("it needs at least one vCPU".into()));
    }
    if spec.memory_mib < 32 {
        return Err(invalid(format!(
            "{} MiB of memory is too little (at least 32)",
            spec.memory_mib
        )));
    }
    if spec.vsock_cid < 3 {
        return Err(invalid(format!(
            "vsock CID {} is reserved (guests start at 3)",
            spec.vsock_cid
        )));
    }
    let mut files: Vec<(&str, &Path)> = vec![("kernel", &spec.kernel)];
    if let Some(initrd) = &spec.initrd {
        files.push(("initrd", initrd));
    }
    for drive in &spec.drives {
        files.push(("drive", &drive.path));
    }
    for (what, path) in files {
        match std::fs::metadata(path) {
            Ok(meta) if meta.is_file() => {}
            Ok(_) => {
                return Err(invalid(format!(
                    "{what} {} is not a regular file",
                    path.display()
                )))
            }
            Err(error) => {
                return Err(invalid(format!(
                    "{what} {} cannot be read: {error}",
                    path.display()
                )))
            }
        }
    }
    let mut ids = std::collections::HashSet::new();
    for drive in &spec.drives {
        let valid = drive
            .id
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic())
            && drive
                .id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !valid {
            return Err(invalid(format!(
                "drive id {:?} is not a QEMU id (a letter, then letters, digits, -_.)",
                drive.id
            )));
        }
        if !ids.insert(drive.id.as_str()) {
            return Err(invalid(format!("drive id {:?} is used twice", drive.id)));
        }
    }
    if let Some(net) = &spec.net {
        let plain = |s: &str| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))
        };
        if !plain(&net.tap) || !plain(&net.mac) {
            return Err(invalid(format!(
                "tap {:?} / MAC {:?} contain characters QEMU options cannot carry",
                net.tap, net.mac
            )));
        }
    }
    let sockets = QemuSockets::in_run_dir(&spec.run_dir);
    for (path, limit) in [
        (&sockets.qmp, MAX_SOCKET_PATH),
        (&sockets.vhost_vsock, MAX_SOCKET_PATH),
        (&spec.vsock_uds, MAX_SOCKET_PATH - VSOCK_PORT_SUFFIX),
    ] {
        if path.as_os_str().len() > limit {
            return Err(invalid(format!(
                "socket path {} is longer than {limit} bytes",
                path.display()
            )));
        }
    }
    Ok(())
}

/// Watches the processes of a launch in progress.
struct Watch<'a> {
    processes: &'a dyn Processes,
    spec: &'a LaunchSpec,
    log_start: u64,
}

impl Watch<'_> {
    /// Waits until `socket` exists, failing as soon as one of `watched` exits.
    async fn socket(
        &self,
        socket: &Path,
        watched: &[(&str, ProcessId)],
        timeout: Duration,
        phase: &str,
    ) -> Result<(), VmmError> {
        let deadline = Instant::now() + timeout;
        loop {
            if is_socket(socket) {
                return Ok(());
            }
            self.exited(watched, phase)?;
            if Instant::now() >= deadline {
                return Err(VmmError::Timeout {
                    vm: self.spec.name.clone(),
                    what: format!("socket {} ({phase})", socket.display()),
                    timeout,
                });
            }
            tokio::time::sleep(SOCKET_POLL).await;
        }
    }

    /// `Died` if one of `watched` has exited.
    fn exited(&self, watched: &[(&str, ProcessId)], phase: &str) -> Result<(), VmmError> {
        for &(name, id) in watched {
            if let ProcessState::Exited(exit) = self.processes.state(id) {
                return Err(VmmError::Died {
                    vmm: VmmKind::Qemu,
                    vm: self.spec.name.clone(),
                    phase: if name == "qemu-system-x86_64" {
                        phase.to_string()
                    } else {
                        format!("{phase} ({name} exited)")
                    },
                    exit: exit.map_or_else(|| "exit status unknown".to_string(), |e| e.to_string()),
                    tail: log_tail(&self.spec.vmm_log, self.log_start),
                });
            }
        }
        Ok(())
    }
}

fn is_socket(path: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket())
}

/// What a failed launch must undo: the processes it started and the sockets they made.
///
/// [`LaunchRollback::run`] kills, waits and removes; if the launch future is dropped instead
/// (cancelled), `Drop` still SIGKILLs the processes and removes the files, without waiting.
struct LaunchRollback {
    owner: Arc<dyn Processes>,
    processes: Vec<ProcessId>,
    files: Vec<PathBuf>,
}

impl LaunchRollback {
    async fn run(mut self) {
        // QEMU (started last) first, so it does not log the helper's death.
        for &id in self.processes.iter().rev() {
            kill_process(&*self.owner, id);
        }
        for &id in self.processes.iter().rev() {
            if let ProcessState::Running = self.owner.wait_exit(id, KILL_WAIT).await {
                tracing::warn!(pid = id.pid, "process of a failed launch survived SIGKILL");
            }
        }
        self.processes.clear();
        self.remove();
    }

    fn disarm(mut self) {
        self.processes.clear();
        self.files.clear();
    }

    fn remove(&mut self) {
        if let Err((path, error)) = remove_files(&self.files) {
            tracing::warn!(path = %path.display(), %error, "could not remove a socket of a failed launch");
        }
        self.files.clear();
    }
}

impl Drop for LaunchRollback {
    fn drop(&mut self) {
        for &id in self.processes.iter().rev() {
            kill_process(&*self.owner, id);
        }
        self.remove();
    }
}

/// SIGKILLs `id` if it is still running; a process that is already gone is not an error.
fn kill_process(processes: &dyn Processes, id: ProcessId) {
    if let ProcessState::Running = processes.state(id) {
        if let Err(error) = processes.signal(id, Signal::SIGKILL) {
            if let ProcessState::Running = processes.state(id) {
                tracing::warn!(pid = id.pid, %error, "could not SIGKILL a VMM process");
            }
        }
    }
}

/// The sockets a VM's processes create: QMP, vhost-user and the host side of vsock.
fn runtime_files(qmp: &Path, vhost_vsock: &Path, vsock_uds: &Path) -> Vec<PathBuf> {
    vec![
        qmp.to_path_buf(),
        vhost_vsock.to_path_buf(),
        vsock_uds.to_path_buf(),
    ]
}

/// `<vsock_uds>_<port>` listeners for guest-initiated connections, next to the vsock socket.
fn vsock_listener_files(vsock_uds: &Path) -> Vec<PathBuf> {
    let (Some(dir), Some(name)) = (vsock_uds.parent(), vsock_uds.file_name()) else {
        return Vec::new();
    };
    let mut prefix = name.to_os_string();
    prefix.push("_");
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter(|entry| {
            let file_name = entry.file_name();
            let Some(port) = file_name.as_bytes().strip_prefix(prefix.as_bytes()) else {
                return false;
            };
            !port.is_empty() && port.iter().all(u8::is_ascii_digit)
        })
        .map(|entry| entry.path())
        .collect()
}

/// Removes each file; a file already gone is fine.
fn remove_files(files: &[PathBuf]) -> Result<(), (PathBuf, std::io::Error)> {
    for path in files {
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => return Err((path.clone(), error)),
        }
    }
    Ok(())
}

/// The last lines the VMM processes wrote to `log` since byte `from` (this launch only).
fn log_tail(log: &Path, from: u64) -> String {
    const MAX_BYTES: u64 = 8 * 1024;
    let read = || -> std::io::Result<String> {
        let mut file = std::fs::File::open(log)?;
        let len = file.metadata()?.len();
        let start = from.max(len.saturating_sub(MAX_BYTES)).min(len);
        file.seek(SeekFrom::Start(start))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    };
    match read() {
        Ok(text) => {
            let lines: Vec<&str> = text
                .lines()
                .map(str::trim_end)
                .filter(|l| !l.is_empty())
                .collect();
            let tail = lines[lines.len().saturating_sub(TAIL_LINES)..].join(" / ");
            if tail.is_empty() {
                "(nothing)".to_string()
            } else {
                tail
            }
        }
        Err(error) => format!("(cannot read {}: {error})", log.display()),
    }
}

/// A QMP failure as the trait's error.
fn qmp_error(error: QmpError, vm: &str, socket: &Path) -> VmmError {
    let control = |source: std::io::Error| VmmError::Control {
        vmm: VmmKind::Qemu,
        vm: vm.to_string(),
        socket: socket.to_path_buf(),
        source,
    };
    match error {
        QmpError::Rejected { call, class, desc } => VmmError::Rejected {
            vmm: VmmKind::Qemu,
            vm: vm.into(),
            call,
            message: format!("{class}: {desc}"),
        },
        QmpError::Timeout { call, timeout, .. } => VmmError::Timeout {
            vm: vm.into(),
            what: format!("QMP reply to {call}"),
            timeout,
        },
        QmpError::Connect { source, .. } | QmpError::Io { source, .. } => control(source),
        other @ QmpError::Closed { .. } => control(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            other,
        )),
        other @ QmpError::Protocol { .. } => {
            control(std::io::Error::new(std::io::ErrorKind::InvalidData, other))
        }
    }
}

/// `program argv…` as one printable line, for the debug log.
fn printable_argv(program: &Path, args: &[OsString]) -> String {
    let mut argv = vec![program.as_os_str().to_os_string()];
    argv.extend(args.iter().cloned());
    banger_host::exec::Argv(argv).to_string()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap: a panic is the failure report
mod tests {
    use super::*;

    #[test]
    fn log_tail_quotes_only_this_launchs_output() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("vmm.log");
        std::fs::write(&log, "old run failed\n").unwrap();
        let start = std::fs::metadata(&log).unwrap().len();
        std::fs::write(&log, "old run failed\nqemu: could not load kernel '/x'\n\n").unwrap();
        assert_eq!(log_tail(&log, start), "qemu: could not load kernel '/x'");
        assert_eq!(
            log_tail(&log, std::fs::metadata(&log).unwrap().len()),
            "(nothing)"
        );
    }

    #[test]
    fn listener_files_are_the_vsock_socket_with_a_port_suffix() {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("vsock.sock");
        for name in [
            "vsock.sock",
            "vsock.sock_1024",
            "vsock.sock_52",
            "vsock.sock_x",
            "vsock.sock_",
            "other_1",
        ] {
            std::fs::write(dir.path().join(name), b"").unwrap();
        }
        let mut found: Vec<String> = vsock_listener_files(&uds)
            .into_iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        found.sort();
        assert_eq!(found, ["vsock.sock_1024", "vsock.sock_52"]);
    }

    #[test]
    fn qmp_rejection_becomes_a_rejected_vmm_error() {
        let error = QmpError::Rejected {
            call: "system_powerdown".into(),
            class: "GenericError".into(),
            desc: "no".into(),
        };
        match qmp_error(error, "devbox", Path::new("/run/q.sock")) {
            VmmError::Rejected {
                vmm,
                vm,
                call,
                message,
            } => {
                assert_eq!(
                    (vmm, vm.as_str(), call.as_str()),
                    (VmmKind::Qemu, "devbox", "system_powerdown")
                );
                assert_eq!(message, "GenericError: no");
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

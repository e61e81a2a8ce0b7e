//! Long-lived child processes (VMM processes) that must outlive the daemon.
//!
//! [`Processes::spawn`] starts a program in a session of its own (so a signal to the daemon's
//! process group or the daemon's terminal going away does not reach it), with stdin on
//! `/dev/null` and stdout/stderr appended to log files. Nothing ties the child's life to the
//! daemon: when the daemon exits the VMM keeps running, and the next daemon re-adopts it by its
//! [`ProcessId`] — a pid plus the kernel's start time of that pid, which tells a recycled pid apart
//! from the process banger started.
//!
//! Ownership and reaping: [`RealProcesses`] keeps the [`std::process::Child`] of every process it
//! spawned in a map shared with one small tokio task per child. The task wakes when the child
//! exits (a pidfd, or polling where pidfds are unavailable), reaps it and records its
//! [`ExitInfo`], so no zombie lingers even if nobody asks. [`Processes::state`] consults the map
//! first (and reaps too, so it is exact even before the task runs), then `/proc/PID/stat` for
//! processes another daemon instance started: those can only be known as "gone", not how they
//! ended ([`ProcessState::Exited`]`(None)`). Exit records of own children are kept for the life
//! of the [`RealProcesses`] (a few dozen bytes each).
//!
//! Concurrency: every method takes `&self`; the map is behind a mutex held only for
//! non-blocking `waitpid(WNOHANG)` calls and `kill`s. While a child is in the map and not yet
//! reaped its pid cannot be reused, so signalling it under the lock is race-free; a process of
//! another instance is signalled through a pidfd opened *before* checking its start time where the
//! kernel has them.
//!
//! ```text
//! spawn ──► Running ──(exits; reaped by its task or by state())──► Exited(Some(ExitInfo))
//!             │
//!  other daemon's process: Running ──(gone, zombie, or pid reused)──► Exited(None)
//! ```

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use nix::errno::Errno;
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use tokio::io::unix::AsyncFd;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

use crate::exec::{Argv, CommandSpec};

/// How often a wait re-checks a process when no exit notification can be had.
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// How long a reaper task trusts its pidfd before checking anyway (a safety net, not latency).
const REAPER_RECHECK: Duration = Duration::from_secs(1);

/// What to run and how to wire it up.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpawnSpec {
    /// Program name (looked up on PATH) or path.
    pub program: PathBuf,
    /// Arguments.
    pub args: Vec<OsString>,
    /// Variables added to (or replacing those of) the daemon's environment.
    pub env: Vec<(OsString, OsString)>,
    /// Working directory; the daemon's when `None`.
    pub cwd: Option<PathBuf>,
    /// File stdout is appended to (created if absent); `/dev/null` when `None`.
    pub stdout: Option<PathBuf>,
    /// File stderr is appended to (created if absent; may be the stdout file); `/dev/null` when
    /// `None`.
    pub stderr: Option<PathBuf>,
    /// Network namespace to run in, through `ip netns exec NAME`, which execs the program in
    /// place: the pid returned is the program's.
    pub netns: Option<String>,
}

impl SpawnSpec {
    /// `program` with no arguments, output discarded.
    pub fn new(program: impl Into<PathBuf>) -> Self {
        Self {
            program: program.into(),
            ..Self::default()
        }
    }

    /// Appends arguments.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// The full argv as it will run, `ip netns exec` prefix included.
    pub fn argv(&self) -> Vec<OsString> {
        CommandSpec {
            program: self.program.clone(),
            args: self.args.clone(),
            netns: self.netns.clone(),
            ..CommandSpec::default()
        }
        .argv()
    }
}

/// A process as banger knows it across daemon restarts: the pid and the pid's start time (field
/// 22 of `/proc/PID/stat`, clock ticks since boot), which differs for a recycled pid.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ProcessId {
    /// The kernel's process id.
    pub pid: u32,
    /// When that pid's process started, in clock ticks since boot.
    pub start_time: u64,
}

impl fmt::Display for ProcessId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "process {} (started at tick {})",
            self.pid, self.start_time
        )
    }
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitInfo {
    /// Exit status, when it exited by itself.
    pub code: Option<i32>,
    /// Signal number, when a signal killed it.
    pub signal: Option<i32>,
}

impl From<ExitStatus> for ExitInfo {
    fn from(status: ExitStatus) -> Self {
        Self {
            code: status.code(),
            signal: status.signal(),
        }
    }
}

impl fmt::Display for ExitInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.code, self.signal) {
            (Some(code), _) => write!(f, "exited with status {code}"),
            (None, Some(number)) => match Signal::try_from(number) {
                Ok(signal) => write!(f, "killed by signal {number} ({})", signal.as_str()),
                Err(_) => write!(f, "killed by signal {number}"),
            },
            (None, None) => f.write_str("exited"),
        }
    }
}

/// Whether a process is still there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcessState {
    /// Alive (possibly stopped), and still the process that was started.
    Running,
    /// Gone. `Some` with how it ended for a child of this [`Processes`]; `None` for a process it
    /// did not start (re-adopted), or whose pid now belongs to another process.
    Exited(Option<ExitInfo>),
}

impl ProcessState {
    /// `true` for [`ProcessState::Running`].
    pub fn is_running(&self) -> bool {
        matches!(self, ProcessState::Running)
    }
}

/// One operation of [`Processes`] that can fail, used to tell [`FakeProcesses`] what to fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProcessOp {
    /// [`Processes::spawn`].
    Spawn,
    /// [`Processes::signal`].
    Signal,
}

impl fmt::Display for ProcessOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ProcessOp::Spawn => "spawn",
            ProcessOp::Signal => "signal",
        })
    }
}

/// Why a process operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// A log file could not be opened for appending.
    #[error("could not open log file {}", .path.display())]
    OpenLog {
        /// The log file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
    /// The program could not be started.
    #[error("could not start `{argv}`")]
    Spawn {
        /// What was run.
        argv: Argv,
        /// Why it did not start.
        #[source]
        source: io::Error,
    },
    /// The program started but its `/proc` entry could not be read, so it cannot be tracked
    /// across restarts; it was killed.
    #[error("started `{argv}` as pid {pid} but could not read its start time; killed it")]
    Identify {
        /// What was run.
        argv: Argv,
        /// Its pid.
        pid: u32,
        /// Why `/proc/PID/stat` did not answer.
        #[source]
        source: io::Error,
    },
    /// The process has exited, or its pid now belongs to another process.
    #[error("{id} is gone")]
    Gone {
        /// The process.
        id: ProcessId,
    },
    /// Sending the signal failed (other than because the process is gone).
    #[error("could not send {signal} to {id}")]
    Signal {
        /// The process.
        id: ProcessId,
        /// The signal.
        signal: Signal,
        /// What the kernel said.
        #[source]
        source: Errno,
    },
    /// A failure [`FakeProcesses`] was told to produce.
    #[error("{operation} failed (injected by FakeProcesses)")]
    Injected {
        /// The operation.
        operation: ProcessOp,
    },
}

/// Starting, watching and signalling long-lived processes.
#[async_trait]
pub trait Processes: Send + Sync + std::fmt::Debug {
    /// Starts `spec` in a new session with stdin on `/dev/null`. The process is not killed when
    /// the daemon exits.
    async fn spawn(&self, spec: &SpawnSpec) -> Result<ProcessId, ProcessError>;

    /// Whether `id` is still running. Zombies count as exited (own children are reaped here).
    fn state(&self, id: ProcessId) -> ProcessState;

    /// Sends `signal` to `id`; [`ProcessError::Gone`] when it has exited or its pid was reused.
    fn signal(&self, id: ProcessId, signal: Signal) -> Result<(), ProcessError>;

    /// Waits until `id` exits or `timeout` passes; [`ProcessState::Running`] at the timeout.
    async fn wait_exit(&self, id: ProcessId, timeout: Duration) -> ProcessState;

    /// The command line of `id`, or `None` when it is gone (or has none, as a zombie).
    fn cmdline(&self, id: ProcessId) -> Option<Vec<String>>;

    /// Every live process (not this one) with an argument containing `needle`. This is how the
    /// daemon rediscovers VMM processes after a SIGKILL left no handles: every process of a VM
    /// names a socket inside that VM's runtime directory.
    fn find_mentioning(&self, needle: &str) -> Vec<ProcessId>;
}

/// A child this instance spawned, until forever: after reaping, `child.try_wait()` keeps
/// answering with the recorded status.
#[derive(Debug)]
struct OwnChild {
    child: Child,
    exited: watch::Sender<Option<ExitInfo>>,
}

type ChildMap = Arc<Mutex<HashMap<ProcessId, OwnChild>>>;

/// [`Processes`] on the host.
#[derive(Debug, Clone)]
pub struct RealProcesses {
    proc_root: PathBuf,
    children: ChildMap,
}

impl Default for RealProcesses {
    fn default() -> Self {
        Self::new()
    }
}

impl RealProcesses {
    /// Reads process information from `/proc`.
    pub fn new() -> Self {
        Self::with_proc_root("/proc")
    }

    /// Reads process information from `proc_root` instead of `/proc` (tests, or a host whose
    /// procfs is mounted elsewhere). `spawn` reads the new child's start time from there too, so
    /// a `proc_root` that does not show this host's processes makes every spawn fail
    /// ([`ProcessError::Identify`]).
    pub fn with_proc_root(proc_root: impl Into<PathBuf>) -> Self {
        Self {
            proc_root: proc_root.into(),
            children: Arc::default(),
        }
    }

    fn exit_receiver(&self, id: ProcessId) -> Option<watch::Receiver<Option<ExitInfo>>> {
        lock(&self.children)
            .get(&id)
            .map(|own| own.exited.subscribe())
    }

    /// The state of a process this instance did not spawn (or could not reap), from `/proc`.
    fn state_from_proc(&self, id: ProcessId) -> ProcessState {
        match read_stat(&self.proc_root, id.pid) {
            Ok(Some(stat)) if stat.start_time == id.start_time && !stat.is_dead() => {
                ProcessState::Running
            }
            Ok(_) => ProcessState::Exited(None),
            Err(error) => {
                // Saying "exited" would make callers tear down a VM that may be running.
                tracing::warn!(%id, %error, "cannot read the process status; assuming it runs");
                ProcessState::Running
            }
        }
    }

    fn proc_matches(&self, id: ProcessId) -> bool {
        matches!(read_stat(&self.proc_root, id.pid), Ok(Some(stat)) if stat.start_time == id.start_time && !stat.is_dead())
    }
}

fn lock(
    children: &Mutex<HashMap<ProcessId, OwnChild>>,
) -> MutexGuard<'_, HashMap<ProcessId, OwnChild>> {
    // Every update under this lock is a single insert or a reap; a panic elsewhere cannot leave
    // the map half-changed.
    children.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Reaps `id` if it is an own child that has exited. `None` when it is not an own child (or
/// cannot be waited for, e.g. someone else reaped it).
fn poll_own_child(
    children: &Mutex<HashMap<ProcessId, OwnChild>>,
    id: ProcessId,
) -> Option<ProcessState> {
    let mut map = lock(children);
    let own = map.get_mut(&id)?;
    match own.child.try_wait() {
        Ok(Some(status)) => {
            let info = ExitInfo::from(status);
            own.exited.send_if_modified(|slot| {
                let changed = slot.is_none();
                *slot = Some(info);
                changed
            });
            Some(ProcessState::Exited(Some(info)))
        }
        Ok(None) => Some(ProcessState::Running),
        Err(error) => {
            tracing::warn!(%id, %error, "cannot wait for own child");
            None
        }
    }
}

/// Reaps `id` as soon as it exits, so it never lingers as a zombie.
async fn reap_on_exit(children: ChildMap, id: ProcessId) {
    let pidfd = pidfd_open(id.pid).ok().and_then(watch_pidfd);
    loop {
        if poll_own_child(&children, id) != Some(ProcessState::Running) {
            return;
        }
        match &pidfd {
            Some(fd) => {
                if let Ok(Ok(mut ready)) = tokio::time::timeout(REAPER_RECHECK, fd.readable()).await
                {
                    // A pidfd stays readable once the process is gone; clearing makes the next
                    // round wait (up to the recheck) instead of spinning if it is not reapable yet.
                    ready.clear_ready();
                }
            }
            None => tokio::time::sleep(POLL_INTERVAL).await,
        }
    }
}

/// Opens the log files of `spec`; one open file description when both name the same file.
fn open_logs(spec: &SpawnSpec) -> Result<(Stdio, Stdio), ProcessError> {
    let open = |path: &Path| {
        OpenOptions::new()
            .append(true)
            .create(true)
            .open(path)
            .map_err(|source| ProcessError::OpenLog {
                path: path.to_path_buf(),
                source,
            })
    };
    let stdout = spec.stdout.as_deref().map(open).transpose()?;
    let stderr = match (&spec.stderr, &stdout) {
        (Some(path), Some(out)) if Some(path) == spec.stdout.as_ref() => {
            Some(out.try_clone().map_err(|source| ProcessError::OpenLog {
                path: path.clone(),
                source,
            })?)
        }
        (Some(path), _) => Some(open(path)?),
        (None, _) => None,
    };
    let to_stdio = |file: Option<File>| file.map_or_else(Stdio::null, Stdio::from);
    Ok((to_stdio(stdout), to_stdio(stderr)))
}

#[async_trait]
impl Processes for RealProcesses {
    async fn spawn(&self, spec: &SpawnSpec) -> Result<ProcessId, ProcessError> {
        let argv = spec.argv();
        let printable = Argv(argv.clone());
        let (stdout, stderr) = open_logs(spec)?;
        let Some((program, args)) = argv.split_first() else {
            return Err(ProcessError::Spawn {
                argv: printable,
                source: io::Error::new(io::ErrorKind::InvalidInput, "empty argv"),
            });
        };
        let mut command = std::process::Command::new(program);
        command
            .args(args)
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        if let Some(cwd) = &spec.cwd {
            command.current_dir(cwd);
        }
        // SAFETY: the closure runs in the forked child before exec, where only
        // async-signal-safe functions may be called. setsid(2) is one, and the closure neither
        // allocates nor takes locks (an io::Error from a raw errno is a plain integer).
        unsafe {
            command.pre_exec(|| match nix::unistd::setsid() {
                Ok(_) => Ok(()),
                Err(errno) => Err(io::Error::from_raw_os_error(errno as i32)),
            });
        }
        let mut child = command.spawn().map_err(|source| ProcessError::Spawn {
            argv: printable.clone(),
            source,
        })?;
        let pid = child.id();

        // The child is not reaped yet, so its /proc entry exists even if it already exited.
        let start_time = match read_stat(&self.proc_root, pid) {
            Ok(Some(stat)) => stat.start_time,
            failed => {
                let source = match failed {
                    Err(error) => error,
                    _ => io::Error::new(io::ErrorKind::NotFound, "no /proc entry"),
                };
                // Untrackable means unkillable later: stop it now. Killing and reaping our own
                // unreaped child cannot hit another process.
                let _ = child.kill();
                let _ = child.wait();
                return Err(ProcessError::Identify {
                    argv: printable,
                    pid,
                    source,
                });
            }
        };
        let id = ProcessId { pid, start_time };
        let (exited, _) = watch::channel(None);
        lock(&self.children).insert(id, OwnChild { child, exited });
        tokio::spawn(reap_on_exit(Arc::clone(&self.children), id));
        tracing::debug!(argv = %printable, %id, "spawned");
        Ok(id)
    }

    fn state(&self, id: ProcessId) -> ProcessState {
        match poll_own_child(&self.children, id) {
            Some(state) => state,
            None => self.state_from_proc(id),
        }
    }

    fn signal(&self, id: ProcessId, signal: Signal) -> Result<(), ProcessError> {
        let send_error = |source| ProcessError::Signal { id, signal, source };
        {
            let mut map = lock(&self.children);
            if let Some(own) = map.get_mut(&id) {
                // Unreaped, so the pid is still ours: no race with pid reuse while we hold the lock.
                return match own.child.try_wait() {
                    Ok(Some(_)) => Err(ProcessError::Gone { id }),
                    Ok(None) => match nix::sys::signal::kill(to_pid(id)?, signal) {
                        Ok(()) => Ok(()),
                        Err(Errno::ESRCH) => Err(ProcessError::Gone { id }),
                        Err(errno) => Err(send_error(errno)),
                    },
                    Err(error) => {
                        tracing::warn!(%id, %error, "cannot wait for own child");
                        Err(ProcessError::Gone { id })
                    }
                };
            }
        }
        // Another instance's process: pin it with a pidfd first, then check that the pid is
        // still that process; the signal then cannot reach a newcomer with the recycled pid.
        let pidfd = match pidfd_open(id.pid) {
            Ok(fd) => Some(fd),
            Err(Errno::ESRCH) => return Err(ProcessError::Gone { id }),
            Err(_) => None,
        };
        if !self.proc_matches(id) {
            return Err(ProcessError::Gone { id });
        }
        let sent = match &pidfd {
            Some(fd) => pidfd_send_signal(fd, signal),
            None => nix::sys::signal::kill(to_pid(id)?, signal),
        };
        match sent {
            Ok(()) => Ok(()),
            Err(Errno::ESRCH) => Err(ProcessError::Gone { id }),
            Err(errno) => Err(send_error(errno)),
        }
    }

    async fn wait_exit(&self, id: ProcessId, timeout: Duration) -> ProcessState {
        let deadline = Instant::now() + timeout;
        if let Some(mut exited) = self.exit_receiver(id) {
            loop {
                let state = self.state(id);
                if !state.is_running() {
                    return state;
                }
                let now = Instant::now();
                if now >= deadline {
                    return state;
                }
                // The reaper task announces the exit; the interval guards against a reaper that
                // is not running (a RealProcesses used from another runtime).
                let _ = tokio::time::timeout((deadline - now).min(POLL_INTERVAL), exited.changed())
                    .await;
            }
        }
        let pidfd = pidfd_open(id.pid).ok().and_then(watch_pidfd);
        loop {
            let state = self.state(id);
            if !state.is_running() {
                return state;
            }
            let now = Instant::now();
            if now >= deadline {
                return state;
            }
            let step = (deadline - now).min(POLL_INTERVAL);
            match &pidfd {
                Some(fd) => {
                    if let Ok(Ok(mut ready)) = tokio::time::timeout(step, fd.readable()).await {
                        ready.clear_ready();
                    }
                }
                None => tokio::time::sleep(step).await,
            }
        }
    }

    fn cmdline(&self, id: ProcessId) -> Option<Vec<String>> {
        if !self.state(id).is_running() || !self.proc_matches(id) {
            return None;
        }
        let raw = std::fs::read(self.proc_root.join(id.pid.to_string()).join("cmdline")).ok()?;
        let args: Vec<String> = raw
            .split(|byte| *byte == 0)
            .filter(|arg| !arg.is_empty())
            .map(|arg| String::from_utf8_lossy(arg).into_owned())
            .collect();
        // Check again: the pid may have been recycled between the check and the read.
        (!args.is_empty() && self.proc_matches(id)).then_some(args)
    }

    fn find_mentioning(&self, needle: &str) -> Vec<ProcessId> {
        let Ok(entries) = std::fs::read_dir(&self.proc_root) else {
            return Vec::new();
        };
        let me = std::process::id();
        let mut found = Vec::new();
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|name| name.parse::<u32>().ok())
            else {
                continue;
            };
            if pid == me {
                continue;
            }
            let Ok(Some(stat)) = read_stat(&self.proc_root, pid) else {
                continue;
            };
            if stat.state == 'Z' {
                continue;
            }
            let Ok(raw) = std::fs::read(entry.path().join("cmdline")) else {
                continue;
            };
            let mentions = raw
                .split(|byte| *byte == 0)
                .any(|arg| String::from_utf8_lossy(arg).contains(needle));
            if mentions {
                found.push(ProcessId {
                    pid,
                    start_time: stat.start_time,
                });
            }
        }
        found
    }
}

fn to_pid(id: ProcessId) -> Result<Pid, ProcessError> {
    libc::pid_t::try_from(id.pid)
        .map(Pid::from_raw)
        .map_err(|_| ProcessError::Gone { id })
}

/// A pidfd for `pid` (Linux 5.3+): a handle that keeps meaning this process even after the pid
/// is recycled, and that becomes readable when the process exits.
fn pidfd_open(pid: u32) -> Result<OwnedFd, Errno> {
    let pid = libc::pid_t::try_from(pid).map_err(|_| Errno::ESRCH)?;
    let flags: libc::c_uint = 0;
    // SAFETY: pidfd_open(2) takes a pid and flags by value and returns a new descriptor or -1;
    // no memory of ours is involved.
    let rc = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, flags) };
    let fd = RawFd::try_from(Errno::result(rc)?).map_err(|_| Errno::EBADF)?;
    // SAFETY: the kernel just returned this descriptor (close-on-exec) and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Registers a pidfd with the tokio reactor, so a task can await the process's exit. `None`
/// when the reactor refuses it (the caller then polls).
fn watch_pidfd(pidfd: OwnedFd) -> Option<AsyncFd<OwnedFd>> {
    // SAFETY: the descriptor is valid and open, and the `OwnedFd` moves into the `AsyncFd`, which
    // owns it until it is dropped: nothing else can close or replace it while it is registered.
    unsafe { AsyncFd::register(pidfd) }.ok()
}

fn pidfd_send_signal(pidfd: &OwnedFd, signal: Signal) -> Result<(), Errno> {
    let flags: libc::c_uint = 0;
    // SAFETY: pidfd_send_signal(2) with a null siginfo behaves like kill(2); the descriptor is
    // borrowed and open for the call, and no other memory is passed.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal as libc::c_int,
            std::ptr::null::<libc::siginfo_t>(),
            flags,
        )
    };
    Errno::result(rc).map(drop)
}

/// The two fields of `/proc/PID/stat` banger needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ProcStat {
    /// Field 3: R, S, D, T, Z, X, ...
    state: char,
    /// Field 22: start time in clock ticks since boot.
    start_time: u64,
}

impl ProcStat {
    /// Zombie or dead: it has exited, whether or not it was reaped.
    fn is_dead(&self) -> bool {
        matches!(self.state, 'Z' | 'X' | 'x')
    }
}

/// Parses `/proc/PID/stat`. The command name (field 2) is in parentheses and may itself hold
/// spaces and parentheses, so fields are counted from the last `)`.
fn parse_stat(text: &str) -> Option<ProcStat> {
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    // After field 3, field 22 is the 19th.
    let start_time = fields.nth(18)?.parse().ok()?;
    Some(ProcStat { state, start_time })
}

/// `Ok(None)` when there is no such process.
fn read_stat(proc_root: &Path, pid: u32) -> io::Result<Option<ProcStat>> {
    match std::fs::read(proc_root.join(pid.to_string()).join("stat")) {
        Ok(bytes) => parse_stat(&String::from_utf8_lossy(&bytes))
            .map(Some)
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("unparsable stat of pid {pid}"),
                )
            }),
        Err(error)
            if error.kind() == io::ErrorKind::NotFound
                || error.raw_os_error() == Some(libc::ESRCH) =>
        {
            Ok(None)
        }
        Err(error) => Err(error),
    }
}

/// One call made on a [`FakeProcesses`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProcessCall {
    /// [`Processes::spawn`]; `id` is `None` when the spawn was made to fail.
    Spawn {
        /// What was asked for.
        spec: SpawnSpec,
        /// What was returned.
        id: Option<ProcessId>,
    },
    /// [`Processes::signal`] (recorded even when it failed).
    Signal {
        /// The target.
        id: ProcessId,
        /// The signal.
        signal: Signal,
    },
}

#[derive(Debug)]
struct FakeProcess {
    cmdline: Vec<String>,
    state: ProcessState,
    /// Spawned by this fake (so it would know the exit status), as opposed to adopted.
    own: bool,
}

#[derive(Debug, Default)]
struct FakeProcessesState {
    next: u32,
    calls: Vec<ProcessCall>,
    processes: HashMap<ProcessId, FakeProcess>,
    failing: HashSet<ProcessOp>,
    stubborn: bool,
}

/// A recording [`Processes`] for tests of callers. Nothing is started.
///
/// Behaviour:
/// - `spawn` returns increasing fake pids (from 4000) and a process that is `Running` until
///   [`FakeProcesses::mark_exited`] or a signal ends it; its cmdline is the program and
///   arguments (what the real one shows after `ip netns exec` has exec'ed).
/// - `signal` records the signal; SIGTERM, SIGINT, SIGQUIT, SIGHUP and SIGKILL end the process as
///   "killed by" that signal, unless [`FakeProcesses::set_stubborn`] is on, in which case only
///   SIGKILL does (a VMM that ignores polite requests). Signalling an exited or unknown process
///   is [`ProcessError::Gone`].
/// - `wait_exit` returns as soon as the process is exited, else after the timeout (tokio time:
///   a test on a paused clock does not wait for real).
/// - An operation marked with [`FakeProcesses::fail`] returns [`ProcessError::Injected`] (it is
///   still recorded) until [`FakeProcesses::heal`].
/// - [`FakeProcesses::adopt`] makes a running process the fake did not spawn, as one left by a
///   previous daemon: its exit is reported as `Exited(None)`.
#[derive(Debug, Default)]
pub struct FakeProcesses {
    state: Mutex<FakeProcessesState>,
    changed: Notify,
}

impl FakeProcesses {
    /// A fake with no processes.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<ProcessCall> {
        self.lock().calls.clone()
    }

    /// The successful spawns so far, in order.
    pub fn spawned(&self) -> Vec<(ProcessId, SpawnSpec)> {
        self.lock()
            .calls
            .iter()
            .filter_map(|call| match call {
                ProcessCall::Spawn { spec, id: Some(id) } => Some((*id, spec.clone())),
                _ => None,
            })
            .collect()
    }

    /// The signals sent so far, in order.
    pub fn signals(&self) -> Vec<(ProcessId, Signal)> {
        self.lock()
            .calls
            .iter()
            .filter_map(|call| match call {
                ProcessCall::Signal { id, signal } => Some((*id, *signal)),
                _ => None,
            })
            .collect()
    }

    /// Ends `id` with `exit` (reported as `Exited(None)` for an adopted process).
    pub fn mark_exited(&self, id: ProcessId, exit: ExitInfo) {
        let mut state = self.lock();
        if let Some(process) = state.processes.get_mut(&id) {
            process.state = ProcessState::Exited(process.own.then_some(exit));
        }
        drop(state);
        self.changed.notify_waiters();
    }

    /// Adds a running process this fake did not spawn, as a previous daemon's VMM.
    pub fn adopt(&self, cmdline: Vec<String>) -> ProcessId {
        let mut state = self.lock();
        let id = state.next_id();
        state.processes.insert(
            id,
            FakeProcess {
                cmdline,
                state: ProcessState::Running,
                own: false,
            },
        );
        id
    }

    /// Makes every later call of `operation` fail with [`ProcessError::Injected`].
    pub fn fail(&self, operation: ProcessOp) {
        self.lock().failing.insert(operation);
    }

    /// Undoes [`FakeProcesses::fail`] for `operation`.
    pub fn heal(&self, operation: ProcessOp) {
        self.lock().failing.remove(&operation);
    }

    /// When `true`, only SIGKILL ends a process.
    pub fn set_stubborn(&self, stubborn: bool) {
        self.lock().stubborn = stubborn;
    }

    fn lock(&self) -> MutexGuard<'_, FakeProcessesState> {
        // Updates are single pushes/inserts: a poisoned lock still guards consistent data.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl FakeProcessesState {
    fn next_id(&mut self) -> ProcessId {
        self.next += 1;
        ProcessId {
            pid: 4000 + self.next,
            start_time: 100_000 + u64::from(self.next),
        }
    }
}

#[async_trait]
impl Processes for FakeProcesses {
    async fn spawn(&self, spec: &SpawnSpec) -> Result<ProcessId, ProcessError> {
        let mut state = self.lock();
        if state.failing.contains(&ProcessOp::Spawn) {
            state.calls.push(ProcessCall::Spawn {
                spec: spec.clone(),
                id: None,
            });
            return Err(ProcessError::Injected {
                operation: ProcessOp::Spawn,
            });
        }
        let id = state.next_id();
        let cmdline = std::iter::once(spec.program.as_os_str())
            .chain(spec.args.iter().map(OsString::as_os_str))
            .map(|arg| arg.to_string_lossy().into_owned())
            .collect();
        state.processes.insert(
            id,
            FakeProcess {
                cmdline,
                state: ProcessState::Running,
                own: true,
            },
        );
        state.calls.push(ProcessCall::Spawn {
            spec: spec.clone(),
            id: Some(id),
        });
        Ok(id)
    }

    fn state(&self, id: ProcessId) -> ProcessState {
        self.lock()
            .processes
            .get(&id)
            .map_or(ProcessState::Exited(None), |process| process.state)
    }

    fn signal(&self, id: ProcessId, signal: Signal) -> Result<(), ProcessError> {
        let mut state = self.lock();
        state.calls.push(ProcessCall::Signal { id, signal });
        if state.failing.contains(&ProcessOp::Signal) {
            return Err(ProcessError::Injected {
                operation: ProcessOp::Signal,
            });
        }
        let stubborn = state.stubborn;
        let Some(process) = state
            .processes
            .get_mut(&id)
            .filter(|process| process.state.is_running())
        else {
            return Err(ProcessError::Gone { id });
        };
        let ends = match signal {
            Signal::SIGKILL => true,
            Signal::SIGTERM | Signal::SIGINT | Signal::SIGQUIT | Signal::SIGHUP => !stubborn,
            _ => false,
        };
        if ends {
            let exit = ExitInfo {
                code: None,
                signal: Some(signal as i32),
            };
            process.state = ProcessState::Exited(process.own.then_some(exit));
            drop(state);
            self.changed.notify_waiters();
        }
        Ok(())
    }

    async fn wait_exit(&self, id: ProcessId, timeout: Duration) -> ProcessState {
        let deadline = Instant::now() + timeout;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            // Register before looking, so an exit between the look and the wait is not missed.
            notified.as_mut().enable();
            let state = self.state(id);
            if !state.is_running() {
                return state;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.state(id);
            }
        }
    }

    fn cmdline(&self, id: ProcessId) -> Option<Vec<String>> {
        self.lock()
            .processes
            .get(&id)
            .filter(|process| process.state.is_running())
            .map(|process| process.cmdline.clone())
    }

    fn find_mentioning(&self, needle: &str) -> Vec<ProcessId> {
        let mut found: Vec<ProcessId> = self
            .lock()
            .processes
            .iter()
            .filter(|(_, p)| {
                p.state.is_running() && p.cmdline.iter().any(|arg| arg.contains(needle))
            })
            .map(|(id, _)| *id)
            .collect();
        found.sort_by_key(|id| id.pid);
        found
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_from_the_last_parenthesis() {
        let text = "4242 (evil) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        assert_eq!(
            parse_stat(text),
            Some(ProcStat {
                state: 'S',
                start_time: 987_654
            })
        );
    }

    #[test]
    fn truncated_stat_does_not_parse() {
        assert_eq!(parse_stat("12 (x) S 1 2 3"), None);
        assert_eq!(parse_stat("no parenthesis"), None);
    }

    #[test]
    fn zombie_and_dead_states_count_as_exited() {
        assert!(ProcStat {
            state: 'Z',
            start_time: 1
        }
        .is_dead());
        assert!(ProcStat {
            state: 'X',
            start_time: 1
        }
        .is_dead());
        assert!(!ProcStat {
            state: 'T',
            start_time: 1
        }
        .is_dead());
    }

    #[test]
    fn exit_info_reads_like_a_shell_would_say_it() {
        assert_eq!(
            ExitInfo {
                code: Some(1),
                signal: None
            }
            .to_string(),
            "exited with status 1"
        );
        assert_eq!(
            ExitInfo {
                code: None,
                signal: Some(9)
            }
            .to_string(),
            "killed by signal 9 (SIGKILL)"
        );
    }

    #[test]
    fn netns_spec_runs_through_ip_netns_exec() {
        let spec = SpawnSpec {
            netns: Some("vm1".into()),
            ..SpawnSpec::new("firecracker").args(["--api-sock", "s"])
        };
        assert_eq!(
            Argv(spec.argv()).to_string(),
            "ip netns exec vm1 firecracker --api-sock s"
        );
    }
}

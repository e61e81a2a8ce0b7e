//! Guest side of `Exec`: starts the process, streams its output, feeds its stdin, delivers
//! signals and resizes, and reports how it ended.
//!
//! Tasks and ownership, for one exec connection:
//!
//! ```text
//!  client frames ──▶ input loop (this task) ──▶ child stdin / pty master / kill(-pgid)
//!  child stdout ──▶ pump task ─┐
//!  child stderr ──▶ pump task ─┼─▶ mpsc ──▶ writer task (owns the frame sink) ──▶ client
//!  (pty master  ──▶ pump task)─┘                      ▲
//!  child.wait() ─────────────────────── Exit ─────────┘  (after the pumps finished)
//! ```
//!
//! Reading client frames never waits on the client reading output, and the other way round, so
//! piping data through `cat` cannot deadlock as long as the client also reads while it writes.
//! The process runs in its own process group (its own session with a TTY); signals, the timeout
//! and a vanished client all act on the whole group, so no orphan is left behind.
//! After the process exits, output is still drained until every pipe reports end-of-file, but a
//! pipe held open by a background process is abandoned after [`DRAIN_GRACE`] of silence.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use futures::{Sink, SinkExt, Stream, StreamExt};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::{mpsc, watch};

use crate::protocol::{
    ClientMessage, ErrorCode, ExecRequest, ExitStatus, FrameError, ServerMessage, TtySize,
    IO_CHUNK_LEN,
};

/// How long output pipes may stay silent after the process exited before they are abandoned.
pub const DRAIN_GRACE: Duration = Duration::from_millis(500);

/// `PATH` given to processes when neither the agent nor the request has one (a bare initramfs
/// starts the agent with an empty environment).
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The process could not be started; sent to the client as an `Error` frame.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("argv is empty")]
    EmptyArgv,
    #[error("opening a pseudo-terminal")]
    OpenPty(#[source] nix::Error),
    #[error("setting up the pseudo-terminal")]
    PtySetup(#[source] io::Error),
    #[error("starting {program:?}")]
    Spawn {
        program: String,
        #[source]
        source: io::Error,
    },
}

/// Writing to the client failed mid-exec (it went away); the process group has been killed.
#[derive(Debug, thiserror::Error)]
#[error("sending exec output to the client failed")]
pub struct ExecStreamError(#[source] pub FrameError);

/// The master side of a pseudo-terminal, non-blocking, registered with tokio.
#[derive(Debug)]
struct PtyMaster {
    fd: AsyncFd<OwnedFd>,
}

impl PtyMaster {
    fn new(fd: OwnedFd) -> io::Result<Self> {
        set_nonblocking_cloexec(&fd)?;
        // SAFETY: `fd` is an open descriptor owned by the `OwnedFd` we move into the `AsyncFd`;
        // nothing else closes it, so it stays valid and `as_raw_fd` returns the same number for
        // the `AsyncFd`'s whole life.
        let fd = unsafe { AsyncFd::register(fd) }?;
        Ok(PtyMaster { fd })
    }

    /// Reads output; end-of-file is reported as `Ok(0)` (Linux reports EIO once every slave
    /// descriptor is closed).
    async fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut guard = self.fd.readable().await?;
            match guard.try_io(|fd| {
                nix::unistd::read(fd.get_ref().as_raw_fd(), buf).map_err(io::Error::from)
            }) {
                Ok(Ok(n)) => return Ok(n),
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Ok(0),
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
    }

    async fn write_all(&self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let mut guard = self.fd.writable().await?;
            match guard.try_io(|fd| nix::unistd::write(fd.get_ref(), data).map_err(io::Error::from))
            {
                Ok(Ok(n)) => data = &data[n..],
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
        Ok(())
    }

    fn resize(&self, size: TtySize) -> io::Result<()> {
        let winsize = libc::winsize {
            ws_row: size.rows,
            ws_col: size.cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads one `winsize` through the pointer, which points to a live,
        // initialized local for the duration of the call; the fd is owned by `self`.
        let rc = unsafe {
            libc::ioctl(
                self.fd.get_ref().as_raw_fd(),
                libc::TIOCSWINSZ,
                &winsize as *const libc::winsize,
            )
        };
        if rc == -1 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

fn set_nonblocking_cloexec(fd: &OwnedFd) -> io::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let raw = fd.as_raw_fd();
    let flags = OFlag::from_bits_truncate(fcntl(raw, FcntlArg::F_GETFL)?);
    fcntl(raw, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    set_cloexec(fd)
}

fn set_cloexec(fd: &impl AsFd) -> io::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, FdFlag};
    fcntl(
        fd.as_fd().as_raw_fd(),
        FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC),
    )?;
    Ok(())
}

/// Where stdin data for the process goes.
enum StdinTarget {
    Pipe(ChildStdin),
    Pty(Arc<PtyMaster>),
    Closed,
}

/// A started process and the ends of its stdio the agent holds.
struct Started {
    child: Child,
    pid: u32,
    stdin: StdinTarget,
    pty: Option<Arc<PtyMaster>>,
    stdout: Option<tokio::process::ChildStdout>,
    stderr: Option<tokio::process::ChildStderr>,
}

fn base_command(req: &ExecRequest) -> Result<Command, SpawnError> {
    let program = req.argv.first().ok_or(SpawnError::EmptyArgv)?;
    let mut cmd = Command::new(program);
    cmd.args(&req.argv[1..]);
    let request_has_path = req.env.iter().any(|(k, _)| k == "PATH");
    if !request_has_path && std::env::var_os("PATH").is_none() {
        cmd.env("PATH", DEFAULT_PATH);
    }
    if req.tty.is_some()
        && !req.env.iter().any(|(k, _)| k == "TERM")
        && std::env::var_os("TERM").is_none()
    {
        cmd.env("TERM", "xterm-256color");
    }
    for (key, value) in &req.env {
        cmd.env(key, value);
    }
    if let Some(cwd) = &req.cwd {
        cmd.current_dir(cwd);
    }
    cmd.kill_on_drop(true);
    Ok(cmd)
}

fn spawn(req: &ExecRequest) -> Result<Started, SpawnError> {
    let mut cmd = base_command(req)?;
    let program = req.argv[0].clone();
    let spawn_err = |source| SpawnError::Spawn {
        program: program.clone(),
        source,
    };
    match req.tty {
        None => {
            cmd.stdin(if req.stdin {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
            let mut child = cmd.spawn().map_err(spawn_err)?;
            let pid = child.id().unwrap_or(0);
            let stdin = match child.stdin.take() {
                Some(pipe) => StdinTarget::Pipe(pipe),
                None => StdinTarget::Closed,
            };
            Ok(Started {
                stdout: child.stdout.take(),
                stderr: child.stderr.take(),
                child,
                pid,
                stdin,
                pty: None,
            })
        }
        Some(size) => {
            let winsize = nix::pty::Winsize {
                ws_row: size.rows,
                ws_col: size.cols,
                ws_xpixel: 0,
                ws_ypixel: 0,
            };
            let pty = nix::pty::openpty(&winsize, None).map_err(SpawnError::OpenPty)?;
            let master = PtyMaster::new(pty.master).map_err(SpawnError::PtySetup)?;
            // The child gets the slave as fds 0-2 (dup2 clears close-on-exec on those); the
            // original descriptor must not leak into it.
            set_cloexec(&pty.slave).map_err(SpawnError::PtySetup)?;
            let slave_out = pty.slave.try_clone().map_err(SpawnError::PtySetup)?;
            let slave_err = pty.slave.try_clone().map_err(SpawnError::PtySetup)?;
            cmd.stdin(Stdio::from(pty.slave))
                .stdout(Stdio::from(slave_out))
                .stderr(Stdio::from(slave_err));
            // SAFETY: the closure runs in the forked child before exec and only calls
            // async-signal-safe functions (setsid, ioctl); it touches no memory of the parent
            // beyond its own stack.
            unsafe {
                cmd.pre_exec(|| {
                    if libc::setsid() == -1 {
                        return Err(io::Error::last_os_error());
                    }
                    if libc::ioctl(0, libc::TIOCSCTTY, 0) == -1 {
                        return Err(io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            // `cmd` holds the parent's copies of the slave; dropping it after spawn closes them,
            // which is what lets the master see end-of-file when the process exits.
            let child = cmd.spawn().map_err(spawn_err)?;
            drop(cmd);
            let pid = child.id().unwrap_or(0);
            let master = Arc::new(master);
            Ok(Started {
                child,
                pid,
                stdin: StdinTarget::Pty(Arc::clone(&master)),
                pty: Some(master),
                stdout: None,
                stderr: None,
            })
        }
    }
}

/// Sends a signal to the process group led by `pid`. Errors (group already gone) are ignored:
/// the caller only wants the group not to outlive the exec.
fn signal_group(pid: u32, signal: Signal) {
    let Ok(raw) = i32::try_from(pid) else { return };
    if raw <= 0 {
        return;
    }
    if let Err(err) = killpg(Pid::from_raw(raw), signal) {
        tracing::debug!(pid, %signal, %err, "signalling process group");
    }
}

/// Waits until `exited` turns true, then for [`DRAIN_GRACE`].
async fn silent_after_exit(exited: &mut watch::Receiver<bool>) {
    if exited.wait_for(|done| *done).await.is_err() {
        // The sender is gone only when the exec ended; nothing more to drain.
        return;
    }
    tokio::time::sleep(DRAIN_GRACE).await;
}

async fn pump_reader<R: AsyncRead + Unpin>(
    mut reader: R,
    to_client: mpsc::Sender<ServerMessage>,
    wrap: fn(Vec<u8>) -> ServerMessage,
    mut exited: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; IO_CHUNK_LEN];
    loop {
        let read = tokio::select! {
            read = reader.read(&mut buf) => read,
            () = silent_after_exit(&mut exited) => return,
        };
        match read {
            Ok(0) => return,
            Ok(n) => {
                if to_client.send(wrap(buf[..n].to_vec())).await.is_err() {
                    return;
                }
            }
            Err(err) => {
                tracing::debug!(%err, "reading process output");
                return;
            }
        }
    }
}

async fn pump_pty(
    master: Arc<PtyMaster>,
    to_client: mpsc::Sender<ServerMessage>,
    mut exited: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; IO_CHUNK_LEN];
    loop {
        let read = tokio::select! {
            read = master.read(&mut buf) => read,
            () = silent_after_exit(&mut exited) => return,
        };
        match read {
            Ok(0) => return,
            Ok(n) => {
                let data = buf[..n].to_vec();
                if to_client
                    .send(ServerMessage::Stdout { data })
                    .await
                    .is_err()
                {
                    return;
                }
            }
            Err(err) => {
                tracing::debug!(%err, "reading terminal output");
                return;
            }
        }
    }
}

/// Applies client frames to the process until the client goes away. Returns only then.
async fn apply_input<St>(
    mut frames: St,
    mut stdin: StdinTarget,
    pid: u32,
    pty: Option<Arc<PtyMaster>>,
) where
    St: Stream<Item = Result<ClientMessage, FrameError>> + Unpin,
{
    while let Some(frame) = frames.next().await {
        let msg = match frame {
            Ok(msg) => msg,
            Err(err) => {
                tracing::warn!(%err, "bad frame from client during exec");
                return;
            }
        };
        match msg {
            ClientMessage::Stdin { data } => {
                let written = match &mut stdin {
                    StdinTarget::Pipe(pipe) => pipe.write_all(&data).await,
                    StdinTarget::Pty(master) => master.write_all(&data).await,
                    StdinTarget::Closed => {
                        tracing::debug!("stdin data for a process without stdin; dropped");
                        Ok(())
                    }
                };
                if let Err(err) = written {
                    // The process closed its stdin (or exited): drop the rest, as a pipe would.
                    tracing::debug!(%err, "writing process stdin");
                    stdin = StdinTarget::Closed;
                }
            }
            ClientMessage::StdinEof => {
                if let StdinTarget::Pipe(_) = stdin {
                    stdin = StdinTarget::Closed;
                }
            }
            ClientMessage::Signal { signal } => match Signal::try_from(signal) {
                Ok(signal) => signal_group(pid, signal),
                Err(err) => tracing::warn!(signal, %err, "ignoring unknown signal"),
            },
            ClientMessage::Resize(size) => match &pty {
                Some(master) => {
                    if let Err(err) = master.resize(size) {
                        tracing::warn!(%err, "resizing terminal");
                    }
                }
                None => tracing::debug!("resize for an exec without a TTY; ignored"),
            },
            other => {
                tracing::warn!(kind = other.kind(), "unexpected frame during exec; ignored");
            }
        }
    }
}

fn exit_status(status: std::process::ExitStatus, timed_out: bool) -> ExitStatus {
    ExitStatus {
        code: status.code(),
        signal: status.signal(),
        timed_out,
    }
}

/// Runs `req` and streams it over `sink`/`frames` (the connection, after the `Exec` frame).
///
/// Spawn failures are reported to the client as an `Error` frame and are not an error of this
/// function; the `Err` case means the client could not be written to.
pub async fn run<Si, St>(sink: Si, frames: St, req: ExecRequest) -> Result<(), ExecStreamError>
where
    Si: Sink<ServerMessage, Error = FrameError> + Unpin + Send + 'static,
    St: Stream<Item = Result<ClientMessage, FrameError>> + Unpin,
{
    let mut sink = sink;
    let started = match spawn(&req) {
        Ok(started) => started,
        Err(err) => {
            let code = match &err {
                SpawnError::EmptyArgv => ErrorCode::BadRequest,
                // No such program (or cwd): `not_found`, so hosts can answer 127 like a shell.
                SpawnError::Spawn { source, .. } if source.kind() == io::ErrorKind::NotFound => {
                    ErrorCode::NotFound
                }
                _ => ErrorCode::SpawnFailed,
            };
            let message = crate::error_chain(&err);
            sink.send(ServerMessage::Error { code, message })
                .await
                .map_err(ExecStreamError)?;
            return Ok(());
        }
    };
    let Started {
        mut child,
        pid,
        stdin,
        pty,
        stdout,
        stderr,
    } = started;
    tracing::debug!(pid, argv = ?req.argv, tty = req.tty.is_some(), "exec started");

    sink.send(ServerMessage::ExecStarted { pid })
        .await
        .map_err(ExecStreamError)?;

    let (to_client, mut outbox) = mpsc::channel::<ServerMessage>(16);
    let writer = tokio::spawn(async move {
        while let Some(msg) = outbox.recv().await {
            sink.send(msg).await?;
        }
        Ok::<(), FrameError>(())
    });

    let (exited_tx, exited_rx) = watch::channel(false);
    let mut pumps = Vec::new();
    if let Some(out) = stdout {
        pumps.push(tokio::spawn(pump_reader(
            out,
            to_client.clone(),
            |data| ServerMessage::Stdout { data },
            exited_rx.clone(),
        )));
    }
    if let Some(err) = stderr {
        pumps.push(tokio::spawn(pump_reader(
            err,
            to_client.clone(),
            |data| ServerMessage::Stderr { data },
            exited_rx.clone(),
        )));
    }
    if let Some(master) = &pty {
        pumps.push(tokio::spawn(pump_pty(
            Arc::clone(master),
            to_client.clone(),
            exited_rx.clone(),
        )));
    }

    // Boxed so it can be dropped (closing the stdin pipe it owns) once the process exited.
    let mut input = Box::pin(apply_input(frames, stdin, pid, pty));
    let deadline = req
        .timeout_ms
        .map(|ms| tokio::time::Instant::now() + Duration::from_millis(ms));
    let mut client_gone = false;
    let mut timed_out = false;
    let waited = loop {
        tokio::select! {
            status = child.wait() => break status,
            () = &mut input, if !client_gone => {
                tracing::debug!(pid, "client went away during exec; killing process group");
                client_gone = true;
                signal_group(pid, Signal::SIGKILL);
            }
            () = sleep_until_opt(deadline), if !timed_out => {
                tracing::debug!(pid, "exec timed out; killing process group");
                timed_out = true;
                signal_group(pid, Signal::SIGKILL);
            }
        }
    };
    // Stop applying client frames; the input loop owns the stdin pipe, so this closes it.
    drop(input);
    let _ = exited_tx.send(true);
    for pump in pumps {
        if let Err(err) = pump.await {
            tracing::warn!(%err, "output pump task failed");
        }
    }
    // Processes left in the group after the leader exited must not outlive the exec.
    signal_group(pid, Signal::SIGKILL);

    let status = match waited {
        Ok(status) => ServerMessage::Exit(exit_status(status, timed_out)),
        Err(err) => ServerMessage::Error {
            code: ErrorCode::Internal,
            message: format!("waiting for process {pid}: {err}"),
        },
    };
    // A send failure here means the writer already stopped; its own result says why.
    let _ = to_client.send(status).await;
    drop(to_client);
    match writer.await {
        Ok(result) => result.map_err(ExecStreamError),
        Err(join) => Err(ExecStreamError(FrameError::Io(io::Error::other(join)))),
    }
}

async fn sleep_until_opt(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

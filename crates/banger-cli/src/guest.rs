//! The commands that reach inside a running guest: `vm exec`, `vm cp`, `vm run`, `vm ssh`,
//! the hidden `vm proxy` (ssh's ProxyCommand) and `ssh-config`.
//!
//! Exec and the port pipe are WebSockets on the daemon's Unix socket (`tokio-tungstenite`
//! over a `UnixStream`); file copies are streamed HTTP bodies, never held in memory. Local
//! stdin is read by a plain thread (a blocking read on a terminal must not keep the process
//! alive after the command ended) and handed over a channel. With `-t` the local terminal is
//! put in raw mode for the session and restored by a guard, even on error paths.
//!
//! `vm ssh` runs the system OpenSSH with banger's key and a known_hosts file banger writes from
//! the host key the agent reported (`NAME ssh-ed25519 AAAA…`, matched through
//! `HostKeyAlias=NAME`), with `StrictHostKeyChecking=yes`: no trust-on-first-use prompt, and a
//! guest presenting another key is refused. The transport is `banger vm proxy NAME %p`, a byte
//! pipe through the agent, so SSH needs no guest NIC.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use banger_api::guest::{
    ExecControl, ExecEvent, ExecStart, FileWritten, SshHostKey, TermSize, FILE_MODE_HEADER,
    STREAM_STDERR, STREAM_STDIN, STREAM_STDOUT,
};
use banger_api::{ApiError, CreateVmRequest, ErrorCode, Operation, Vm, VmState};
use banger_config::Config;
use bytes::Bytes;
use clap::{Args, Subcommand};
use futures::{SinkExt, StreamExt};
use http_body_util::BodyExt;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::WebSocketStream;

use crate::client::Client;
use crate::{exit, exit_code_for, follow_operation, output, Failure};

/// Guest commands, flattened into `banger vm`.
#[derive(Debug, Subcommand)]
pub enum GuestCommand {
    /// Run a command in a running VM (stdin/stdout/stderr streamed; exits with its code).
    Exec(ExecArgs),
    /// Copy a file or a directory tree into or out of a VM: `vm cp ./f NAME:/path` or
    /// `vm cp NAME:/path ./f` (`docker cp` semantics: a directory lands inside an existing
    /// destination directory, else becomes the destination).
    Cp {
        /// Source: a local path or NAME:/absolute/path (a file or a directory).
        src: String,
        /// Destination: a local path or NAME:/absolute/path (a trailing / means "into").
        dst: String,
    },
    /// Create (or start, or reuse) a VM, run a command in it, exit with its code.
    Run(RunArgs),
    /// Open an SSH session (or run a command over SSH) with the system OpenSSH.
    Ssh {
        /// Name, id or unique prefix.
        name: String,
        /// Command to run instead of a login shell.
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// Pipe stdin/stdout to a TCP port inside the VM (ssh's ProxyCommand).
    #[command(hide = true)]
    Proxy {
        /// Name, id or unique prefix.
        name: String,
        /// Guest TCP port.
        port: u16,
    },
}

/// How to run a command in the guest.
#[derive(Debug, Clone, Args)]
pub struct ExecOptions {
    /// Allocate a pseudo-terminal (raw local terminal, window size forwarded).
    #[arg(short = 't', long)]
    pub tty: bool,
    /// Environment variable for the command (repeatable).
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE", value_parser = parse_env)]
    pub env: Vec<(String, String)>,
    /// Working directory in the guest.
    #[arg(short = 'w', long = "workdir", value_name = "DIR")]
    pub workdir: Option<String>,
    /// Kill the command after this many seconds (exit status 124, like `timeout`).
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout: Option<u64>,
}

/// `banger vm exec` arguments.
#[derive(Debug, Args)]
pub struct ExecArgs {
    /// Name, id or unique prefix.
    pub name: String,
    #[command(flatten)]
    pub options: ExecOptions,
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

/// `banger vm run` arguments.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// VM name; an existing stopped VM of that name is started and reused.
    #[arg(long)]
    pub name: Option<String>,
    /// Image name, id or unique prefix.
    #[arg(long)]
    pub image: Option<String>,
    /// Delete the VM afterwards (also when the command or the create failed).
    #[arg(long)]
    pub rm: bool,
    /// vCPUs.
    #[arg(long)]
    pub vcpus: Option<u32>,
    /// Memory, e.g. 1G.
    #[arg(long, value_parser = crate::parse_size)]
    pub memory: Option<u64>,
    /// Work disk size, e.g. 10G.
    #[arg(long, value_parser = crate::parse_size)]
    pub disk_size: Option<u64>,
    /// Show the create stages on stderr.
    #[arg(short = 'v', long)]
    pub verbose: bool,
    #[command(flatten)]
    pub options: ExecOptions,
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

fn parse_env(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_string(), value.to_string())),
        _ => Err(format!("{text:?} is not KEY=VALUE")),
    }
}

/// Runs one guest command.
pub async fn execute(
    command: GuestCommand,
    client: &Client,
    config: &Config,
    out: &mut impl Write,
) -> Result<(), Failure> {
    match command {
        GuestCommand::Exec(args) => {
            let status = exec(client, &args.name, args.command, &args.options).await?;
            status_result(status)
        }
        GuestCommand::Cp { src, dst } => copy(client, &src, &dst).await,
        GuestCommand::Run(args) => run(client, args).await,
        GuestCommand::Ssh { name, command } => ssh(client, config, &name, &command).await,
        GuestCommand::Proxy { name, port } => proxy(client, &name, port).await,
    }
    .map(|()| {
        let _ = out.flush();
    })
}

/// `Ok` for status 0, else a silent failure with the status as the exit code.
fn status_result(status: i32) -> Result<(), Failure> {
    if status == 0 {
        Ok(())
    } else {
        Err(Failure {
            code: u8::try_from(status & 0xff).unwrap_or(exit::FAILED),
            text: String::new(),
        })
    }
}

fn fail(code: u8, text: impl Into<String>) -> Failure {
    let mut text = text.into();
    if !text.ends_with('\n') {
        text.push('\n');
    }
    Failure { code, text }
}

fn api_failure(api: &ApiError) -> Failure {
    fail(exit_code_for(api.code), output::api_error(api))
}

/// Percent-encodes `text` for a URL path segment or query value.
pub fn encode(text: &str, keep_slash: bool) -> String {
    text.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            b'/' if keep_slash => "/".to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}

fn vm_route(name: &str, rest: &str) -> String {
    format!("/v1/vms/{}{rest}", encode(name, false))
}

// ---------------------------------------------------------------------------------------------
// WebSockets

type Ws = WebSocketStream<UnixStream>;

/// Opens a WebSocket on the daemon's socket; an HTTP error answer becomes its API error.
async fn websocket(client: &Client, path: &str) -> Result<Ws, Failure> {
    let stream = UnixStream::connect(client.socket()).await.map_err(|e| {
        fail(
            exit::DAEMON,
            format!(
                "error: cannot reach bangerd at {}: {e}",
                client.socket().display()
            ),
        )
    })?;
    match tokio_tungstenite::client_async(format!("ws://localhost{path}"), stream).await {
        Ok((ws, _response)) => Ok(ws),
        Err(tungstenite::Error::Http(response)) => {
            let body = response.body().clone().unwrap_or_default();
            match serde_json::from_slice::<ApiError>(&body) {
                Ok(api) => Err(api_failure(&api)),
                Err(_) => Err(fail(
                    exit::DAEMON,
                    format!(
                        "error: bangerd refused the WebSocket ({}): {}",
                        response.status(),
                        String::from_utf8_lossy(&body)
                    ),
                )),
            }
        }
        Err(err) => Err(fail(
            exit::DAEMON,
            format!("error: opening a WebSocket to bangerd: {err}"),
        )),
    }
}

/// Local stdin, read by a thread: `Some(bytes)` per read, `None` at end-of-file.
fn stdin_reader() -> mpsc::Receiver<Option<Vec<u8>>> {
    let (tx, rx) = mpsc::channel(4);
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => {
                    let _ = tx.blocking_send(None);
                    return;
                }
                Ok(n) => {
                    if tx.blocking_send(Some(buf[..n].to_vec())).is_err() {
                        return;
                    }
                }
            }
        }
    });
    rx
}

fn write_out(stream: u8, data: &[u8]) -> std::io::Result<()> {
    if stream == STREAM_STDERR {
        let mut err = std::io::stderr().lock();
        err.write_all(data)?;
        err.flush()
    } else {
        let mut out = std::io::stdout().lock();
        out.write_all(data)?;
        out.flush()
    }
}

/// The size of the terminal on stdin (or stdout), if either is a terminal.
fn terminal_size() -> Option<TermSize> {
    for fd in [libc::STDIN_FILENO, libc::STDOUT_FILENO] {
        let mut size = libc::winsize {
            ws_row: 0,
            ws_col: 0,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCGWINSZ writes one `winsize` through the pointer, which points to a live
        // local; `fd` is one of the process's standard descriptors (failure returns -1).
        let rc = unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut size as *mut libc::winsize) };
        if rc == 0 && size.ws_row > 0 && size.ws_col > 0 {
            return Some(TermSize {
                rows: size.ws_row,
                cols: size.ws_col,
            });
        }
    }
    None
}

/// Puts the local terminal in raw mode until dropped.
struct RawMode {
    saved: nix::sys::termios::Termios,
}

impl RawMode {
    fn enable() -> Option<RawMode> {
        use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};
        let stdin = std::io::stdin();
        let saved = tcgetattr(stdin.as_fd()).ok()?;
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw).ok()?;
        Some(RawMode { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        use nix::sys::termios::{tcsetattr, SetArg};
        let _ = tcsetattr(std::io::stdin().as_fd(), SetArg::TCSANOW, &self.saved);
    }
}

/// Runs `argv` in VM `name`, streaming stdio; returns the shell-style exit status.
pub async fn exec(
    client: &Client,
    name: &str,
    argv: Vec<String>,
    options: &ExecOptions,
) -> Result<i32, Failure> {
    let stdin_is_tty = std::io::stdin().is_terminal();
    // A terminal without -t has nothing to send (and reading it would steal keystrokes).
    let send_stdin = options.tty || !stdin_is_tty;
    let tty = options
        .tty
        .then(|| terminal_size().unwrap_or(TermSize { rows: 24, cols: 80 }));
    let start = ExecStart {
        argv,
        env: options.env.iter().cloned().collect::<BTreeMap<_, _>>(),
        cwd: options.workdir.clone(),
        tty,
        stdin: send_stdin,
        timeout_secs: options.timeout,
    };
    let _raw = if options.tty && stdin_is_tty {
        RawMode::enable()
    } else {
        None
    };
    let stdin = send_stdin.then(stdin_reader);
    let interrupt_locally = !options.tty || !stdin_is_tty;
    exec_with(client, name, &start, stdin, write_out, interrupt_locally).await
}

/// The exec session behind [`exec`] and `vm cp` of directories: sends `start`, forwards `stdin`
/// chunks (`None`: end of file), hands every stdout/stderr chunk to `write`, and returns the
/// shell-style exit status. With `interrupt_locally`, Ctrl-C here is forwarded as SIGINT.
async fn exec_with(
    client: &Client,
    name: &str,
    start: &ExecStart,
    mut stdin: Option<mpsc::Receiver<Option<Vec<u8>>>>,
    mut write: impl FnMut(u8, &[u8]) -> std::io::Result<()>,
    interrupt_locally: bool,
) -> Result<i32, Failure> {
    let ws = websocket(client, &vm_route(name, "/exec")).await?;
    let (mut sink, mut incoming) = ws.split();
    let text = serde_json::to_string(start)
        .map_err(|e| fail(exit::FAILED, format!("error: encoding the request: {e}")))?;
    sink.send(Message::text(text)).await.map_err(|e| {
        fail(
            exit::DAEMON,
            format!("error: sending the exec request: {e}"),
        )
    })?;

    let mut winch = if start.tty.is_some() {
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change()).ok()
    } else {
        None
    };
    let lost = || {
        fail(
            exit::DAEMON,
            "error: the exec connection closed before the command ended",
        )
    };

    loop {
        tokio::select! {
            msg = incoming.next() => {
                let msg = match msg {
                    Some(Ok(msg)) => msg,
                    Some(Err(err)) => return Err(fail(exit::DAEMON, format!("error: exec connection: {err}"))),
                    None => return Err(lost()),
                };
                match msg {
                    Message::Binary(data) => {
                        if let Some((&stream, rest)) = data.split_first() {
                            if stream == STREAM_STDOUT || stream == STREAM_STDERR {
                                if let Err(err) = write(stream, rest) {
                                    if err.kind() == std::io::ErrorKind::BrokenPipe {
                                        return Ok(141); // like a shell pipeline: 128 + SIGPIPE
                                    }
                                    return Err(fail(exit::FAILED, format!("error: writing output: {err}")));
                                }
                            }
                        }
                    }
                    Message::Text(text) => match serde_json::from_str::<ExecEvent>(&text) {
                        Ok(ExecEvent::Started { .. }) => {}
                        Ok(ExecEvent::Exit { timed_out: true, .. }) => {
                            let secs = start.timeout_secs.unwrap_or_default();
                            let _ = write(STREAM_STDERR, format!("banger: timed out after {secs} s\n").as_bytes());
                            return Ok(TIMED_OUT);
                        }
                        Ok(ExecEvent::Exit { code, signal, .. }) => {
                            return Ok(ExecEvent::shell_status(code, signal));
                        }
                        Ok(ExecEvent::Error { error }) => return Err(api_failure(&error)),
                        Err(err) => return Err(fail(exit::DAEMON, format!("error: unexpected message from bangerd: {err}"))),
                    },
                    Message::Close(_) => return Err(lost()),
                    _ => {}
                }
            }
            chunk = async { match stdin.as_mut() { Some(rx) => rx.recv().await, None => std::future::pending().await } } => {
                match chunk.flatten() {
                    Some(data) => {
                        let mut framed = Vec::with_capacity(data.len() + 1);
                        framed.push(STREAM_STDIN);
                        framed.extend_from_slice(&data);
                        if sink.send(Message::binary(framed)).await.is_err() {
                            stdin = None;
                        }
                    }
                    None => {
                        stdin = None;
                        let _ = send_control(&mut sink, ExecControl::StdinEof).await;
                    }
                }
            }
            _ = tokio::signal::ctrl_c(), if interrupt_locally => {
                let _ = send_control(&mut sink, ExecControl::Signal { signal: libc::SIGINT }).await;
            }
            _ = async { match winch.as_mut() { Some(w) => { w.recv().await; } None => std::future::pending().await } } => {
                if let Some(size) = terminal_size() {
                    let _ = send_control(&mut sink, ExecControl::Resize { rows: size.rows, cols: size.cols }).await;
                }
            }
        }
    }
}

async fn send_control(
    sink: &mut futures::stream::SplitSink<Ws, Message>,
    control: ExecControl,
) -> Result<(), tungstenite::Error> {
    let text = serde_json::to_string(&control).unwrap_or_default();
    sink.send(Message::text(text)).await
}

// ---------------------------------------------------------------------------------------------
// cp

/// One side of `vm cp`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopyEnd {
    /// A path on this host.
    Local(PathBuf),
    /// `NAME:/path` in a VM.
    Remote {
        /// VM name or prefix.
        vm: String,
        /// Path in the guest.
        path: String,
    },
}

/// Parses `NAME:/path` (remote) or anything else (local). A colon after a slash is local
/// (`./a:b`), as with scp.
pub fn parse_copy_end(text: &str) -> CopyEnd {
    match text.split_once(':') {
        Some((vm, path)) if !vm.is_empty() && !vm.contains('/') => CopyEnd::Remote {
            vm: vm.to_string(),
            path: path.to_string(),
        },
        _ => CopyEnd::Local(PathBuf::from(text)),
    }
}

fn file_name_of(path: &str) -> Option<&str> {
    path.rsplit('/').find(|part| !part.is_empty())
}

async fn copy(client: &Client, src: &str, dst: &str) -> Result<(), Failure> {
    match (parse_copy_end(src), parse_copy_end(dst)) {
        (CopyEnd::Local(local), CopyEnd::Remote { vm, path }) if local.is_dir() => {
            upload_dir(client, &local, &vm, &path).await
        }
        (CopyEnd::Local(local), CopyEnd::Remote { vm, path }) => {
            upload(client, &local, &vm, &path).await.map(|_| ())
        }
        (CopyEnd::Remote { vm, path }, CopyEnd::Local(local)) => {
            download(client, &vm, &path, &local).await
        }
        (CopyEnd::Local(_), CopyEnd::Local(_)) => Err(fail(
            exit::USAGE,
            "error: one side of `vm cp` must be NAME:/path in a VM",
        )),
        (CopyEnd::Remote { .. }, CopyEnd::Remote { .. }) => Err(fail(
            exit::USAGE,
            "error: copying between two VMs is not supported; copy through this host",
        )),
    }
}

async fn http_connect(
    client: &Client,
) -> Result<
    hyper::client::conn::http1::SendRequest<
        http_body_util::combinators::BoxBody<Bytes, std::io::Error>,
    >,
    Failure,
> {
    let stream = UnixStream::connect(client.socket()).await.map_err(|e| {
        fail(
            exit::DAEMON,
            format!(
                "error: cannot reach bangerd at {}: {e}",
                client.socket().display()
            ),
        )
    })?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| fail(exit::DAEMON, format!("error: talking to bangerd: {e}")))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

async fn error_body(response: hyper::Response<hyper::body::Incoming>) -> Failure {
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    match serde_json::from_slice::<ApiError>(&body) {
        Ok(api) => api_failure(&api),
        Err(_) => fail(
            exit::DAEMON,
            format!("error: HTTP {status}: {}", String::from_utf8_lossy(&body)),
        ),
    }
}

/// Streams local file `local` to `path` in VM `vm` (keeping its mode).
pub async fn upload(
    client: &Client,
    local: &Path,
    vm: &str,
    path: &str,
) -> Result<FileWritten, Failure> {
    let file = tokio::fs::File::open(local).await.map_err(|e| {
        fail(
            exit::FAILED,
            format!("error: opening {}: {e}", local.display()),
        )
    })?;
    let meta = file.metadata().await.map_err(|e| {
        fail(
            exit::FAILED,
            format!("error: inspecting {}: {e}", local.display()),
        )
    })?;
    if !meta.is_file() {
        return Err(fail(
            exit::USAGE,
            format!("error: {} is not a regular file", local.display()),
        ));
    }
    let mut target = path.to_string();
    if target.ends_with('/') {
        let name = local
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        target.push_str(&name);
    }
    let mode = meta.permissions().mode() & 0o7777;
    let uri = format!(
        "{}?path={}&mode={:04o}",
        vm_route(vm, "/files"),
        encode(&target, true),
        mode
    );
    let body = http_body_util::StreamBody::new(
        tokio_util::io::ReaderStream::with_capacity(file, 256 * 1024)
            .map(|chunk| chunk.map(hyper::body::Frame::data)),
    );
    let request = Request::builder()
        .method(Method::PUT)
        .uri(uri)
        .header("host", "bangerd")
        .header("content-type", "application/octet-stream")
        .header("content-length", meta.len())
        .body(BodyExt::boxed(body))
        .map_err(|e| fail(exit::FAILED, format!("error: {e}")))?;
    let mut sender = http_connect(client).await?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| fail(exit::DAEMON, format!("error: uploading to bangerd: {e}")))?;
    if response.status() != StatusCode::OK {
        return Err(error_body(response).await);
    }
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| {
            fail(
                exit::DAEMON,
                format!("error: reading bangerd's answer: {e}"),
            )
        })?
        .to_bytes();
    serde_json::from_slice(&body).map_err(|e| {
        fail(
            exit::DAEMON,
            format!("error: unexpected answer from bangerd: {e}"),
        )
    })
}

/// Streams `path` from VM `vm` into local `local` (a directory means "into it"), keeping the
/// mode; written to a temporary file beside the target and renamed when complete.
pub async fn download(client: &Client, vm: &str, path: &str, local: &Path) -> Result<(), Failure> {
    let uri = format!("{}?path={}", vm_route(vm, "/files"), encode(path, true));
    let request = Request::builder()
        .method(Method::GET)
        .uri(uri)
        .header("host", "bangerd")
        .body(BodyExt::boxed(
            http_body_util::Empty::<Bytes>::new().map_err(|never| match never {}),
        ))
        .map_err(|e| fail(exit::FAILED, format!("error: {e}")))?;
    let mut sender = http_connect(client).await?;
    let response = sender.send_request(request).await.map_err(|e| {
        fail(
            exit::DAEMON,
            format!("error: downloading from bangerd: {e}"),
        )
    })?;
    if response.status() == StatusCode::BAD_REQUEST && path.starts_with('/') {
        // Not a regular file: perhaps a directory, which comes as a tar stream over exec. If it
        // is not one either, the file API's own error stands.
        let refused = error_body(response).await;
        return match download_dir(client, vm, path, local).await? {
            DirCopy::Done => Ok(()),
            DirCopy::NotADirectory => Err(refused),
        };
    }
    if response.status() != StatusCode::OK {
        return Err(error_body(response).await);
    }
    let mode = response
        .headers()
        .get(FILE_MODE_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| banger_api::guest::parse_mode(v).ok())
        .unwrap_or(0o644);
    let target = if local.is_dir() {
        local.join(file_name_of(path).unwrap_or("file"))
    } else {
        local.to_path_buf()
    };
    let dir = match target.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let temp = dir.join(format!(
        ".{}.banger-cp-{}",
        target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        std::process::id()
    ));
    let io_err = |what: &str, e: std::io::Error| fail(exit::FAILED, format!("error: {what}: {e}"));
    let mut file = tokio::fs::File::create(&temp)
        .await
        .map_err(|e| io_err(&format!("creating {}", temp.display()), e))?;
    let mut body = response.into_body();
    let result: Result<(), Failure> = async {
        use tokio::io::AsyncWriteExt;
        while let Some(frame) = body.frame().await {
            let frame = frame
                .map_err(|e| fail(exit::DAEMON, format!("error: the download broke off: {e}")))?;
            if let Some(data) = frame.data_ref() {
                file.write_all(data)
                    .await
                    .map_err(|e| io_err(&format!("writing {}", temp.display()), e))?;
            }
        }
        file.flush()
            .await
            .map_err(|e| io_err(&format!("writing {}", temp.display()), e))?;
        std::fs::set_permissions(&temp, std::fs::Permissions::from_mode(mode))
            .map_err(|e| io_err(&format!("setting the mode of {}", temp.display()), e))?;
        std::fs::rename(&temp, &target)
            .map_err(|e| io_err(&format!("renaming to {}", target.display()), e))
    }
    .await;
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    result
}

// ---------------------------------------------------------------------------------------------
// cp of directories: a tar stream through an exec of the guest's own `tar`

/// The exit status of a command killed by `--timeout` (what coreutils' `timeout` uses).
pub const TIMED_OUT: i32 = 124;

/// The exit status the remote side of [`download_dir`] uses for "not a directory".
const NOT_A_DIRECTORY: i32 = 86;

/// How a directory download ended.
enum DirCopy {
    Done,
    NotADirectory,
}

/// A `Write` feeding an exec's stdin channel (from a plain thread).
struct ChannelWriter(mpsc::Sender<Option<Vec<u8>>>);

impl Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .blocking_send(Some(buf.to_vec()))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the exec ended"))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A `Read` over chunks an exec's stdout handed over (on a plain thread).
struct ChannelReader {
    chunks: mpsc::UnboundedReceiver<Vec<u8>>,
    current: Vec<u8>,
    at: usize,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.at == self.current.len() {
            match self.chunks.blocking_recv() {
                Some(chunk) => {
                    self.current = chunk;
                    self.at = 0;
                }
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len() - self.at);
        buf[..n].copy_from_slice(&self.current[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

fn shell(script: &str, args: &[&str]) -> ExecStart {
    let mut argv = vec![
        "sh".to_string(),
        "-c".to_string(),
        script.to_string(),
        "sh".to_string(),
    ];
    argv.extend(args.iter().map(|a| (*a).to_string()));
    ExecStart {
        argv,
        env: BTreeMap::new(),
        cwd: None,
        tty: None,
        stdin: false,
        timeout_secs: None,
    }
}

fn base_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "dir".into())
}

/// Copies local directory `local` to `target` in VM `vm`, like `docker cp`: into `target/NAME`
/// when `target` is an existing directory or ends with `/`, else to `target` itself (created).
/// Modes, mtimes and symlinks are kept; files belong to the exec user in the guest.
async fn upload_dir(client: &Client, local: &Path, vm: &str, target: &str) -> Result<(), Failure> {
    if !target.starts_with('/') {
        return Err(fail(
            exit::USAGE,
            format!("error: the path in the VM must be absolute, not {target:?}"),
        ));
    }
    let (tx, rx) = mpsc::channel(8);
    let root = local.to_path_buf();
    let packer = std::thread::spawn(move || -> std::io::Result<()> {
        let writer = std::io::BufWriter::with_capacity(256 * 1024, ChannelWriter(tx.clone()));
        let mut builder = tar::Builder::new(writer);
        builder.follow_symlinks(false);
        builder.append_dir_all(".", &root)?;
        builder.into_inner()?.flush()?;
        let _ = tx.blocking_send(None);
        Ok(())
    });
    let script = r#"case "$1" in */) d="$1$2" ;; *) if [ -d "$1" ]; then d="$1/$2"; else d="$1"; fi ;; esac
mkdir -p -- "$d" && exec tar -x -o -f - -C "$d""#;
    let mut start = shell(script, &[target, &base_name(local)]);
    start.stdin = true;
    let mut stderr = Vec::new();
    let status = exec_with(
        client,
        vm,
        &start,
        Some(rx),
        |stream, data| {
            if stream == STREAM_STDERR {
                stderr.extend_from_slice(data);
            }
            Ok(())
        },
        true,
    )
    .await?;
    let packed = packer
        .join()
        .unwrap_or_else(|_| Err(std::io::Error::other("the tar writer panicked")));
    // The guest's failure first: when its tar stops early, the packer only sees a broken pipe.
    if status != 0 {
        return Err(fail(
            exit::FAILED,
            format!(
                "error: unpacking into {vm}:{target} failed (status {status}): {}",
                String::from_utf8_lossy(&stderr).trim()
            ),
        ));
    }
    if let Err(err) = packed {
        return Err(fail(
            exit::FAILED,
            format!("error: reading {}: {err}", local.display()),
        ));
    }
    Ok(())
}

/// Copies directory `path` of VM `vm` to `local`, like `docker cp`: into `local/NAME` when
/// `local` is an existing directory, else to `local` itself (created).
async fn download_dir(
    client: &Client,
    vm: &str,
    path: &str,
    local: &Path,
) -> Result<DirCopy, Failure> {
    let target = if local.is_dir() {
        local.join(file_name_of(path).unwrap_or("dir"))
    } else {
        local.to_path_buf()
    };
    let (tx, rx) = mpsc::unbounded_channel();
    let dest = target.clone();
    let unpacker = std::thread::spawn(move || -> std::io::Result<bool> {
        let mut reader = ChannelReader {
            chunks: rx,
            current: Vec::new(),
            at: 0,
        };
        // Nothing at all on stdout: the remote side refused (not a directory); create nothing.
        let mut first = [0u8; 1];
        if reader.read(&mut first)? == 0 {
            return Ok(false);
        }
        let chained = std::io::Cursor::new(first.to_vec()).chain(reader);
        std::fs::create_dir_all(&dest)?;
        let mut archive = tar::Archive::new(chained);
        // Permission bits are kept, but not setuid/setgid/sticky: the guest's files must not
        // become privileged programs here (tar's default).
        archive.set_preserve_mtime(true);
        archive.set_overwrite(true);
        archive.unpack(&dest)?;
        // tar stops reading at the first end-of-archive block; take the padding after it too, so
        // the exec never writes into a closed pipe.
        std::io::copy(&mut archive.into_inner(), &mut std::io::sink())?;
        Ok(true)
    });
    let script = format!(r#"cd -- "$1" 2>/dev/null || exit {NOT_A_DIRECTORY}; exec tar -c -f - ."#);
    let mut stderr = Vec::new();
    let status = exec_with(
        client,
        vm,
        &shell(&script, &[path]),
        None,
        |stream, data| {
            if stream == STREAM_STDERR {
                stderr.extend_from_slice(data);
                return Ok(());
            }
            tx.send(data.to_vec())
                .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "unpacker ended"))
        },
        true,
    )
    .await;
    drop(tx);
    let unpacked = unpacker
        .join()
        .unwrap_or_else(|_| Err(std::io::Error::other("the tar reader panicked")));
    let status = status?;
    if status == NOT_A_DIRECTORY {
        return Ok(DirCopy::NotADirectory);
    }
    if let Err(err) = unpacked {
        return Err(fail(
            exit::FAILED,
            format!("error: unpacking into {}: {err}", target.display()),
        ));
    }
    if status != 0 {
        return Err(fail(
            exit::FAILED,
            format!(
                "error: packing {vm}:{path} failed (status {status}): {}",
                String::from_utf8_lossy(&stderr).trim()
            ),
        ));
    }
    Ok(DirCopy::Done)
}

// ---------------------------------------------------------------------------------------------
// run

async fn run(client: &Client, args: RunArgs) -> Result<(), Failure> {
    let quiet = !args.verbose;
    let mut created_name: Option<String> = None;
    let prepared: Result<String, Failure> = async {
        if let Some(name) = &args.name {
            match client.get::<Vm>(&vm_route(name, "")).await {
                Ok(vm) => {
                    match vm.state {
                        VmState::Running => {}
                        VmState::Stopped | VmState::Error => {
                            let op: Operation = client
                                .call(
                                    Method::POST,
                                    &vm_route(&vm.name.to_string(), "/start"),
                                    None::<&()>,
                                )
                                .await?;
                            follow_operation(client, op, quiet).await?;
                        }
                        other => {
                            return Err(fail(
                                exit::CONFLICT,
                                format!(
                                "error: VM {} is {other}; try again when it is running or stopped",
                                vm.name
                            ),
                            ))
                        }
                    }
                    return Ok(vm.name.to_string());
                }
                Err(crate::client::ClientError::Api(api)) if api.code == ErrorCode::NotFound => {}
                Err(err) => return Err(err.into()),
            }
        }
        let req = CreateVmRequest {
            name: args.name.clone(),
            image: args.image.clone(),
            vcpus: args.vcpus,
            memory_mib: args.memory,
            disk_size_mib: args.disk_size,
            no_start: false,
            ..CreateVmRequest::default()
        };
        let op: Operation = client.call(Method::POST, "/v1/vms", Some(&req)).await?;
        let name = op
            .vm_name
            .clone()
            .ok_or_else(|| fail(exit::DAEMON, "error: bangerd did not name the new VM"))?;
        created_name = Some(name.clone());
        if !quiet {
            let _ = writeln!(std::io::stderr(), "Creating VM {name}");
        }
        follow_operation(client, op, quiet).await?;
        Ok(name)
    }
    .await;
    let status = match prepared {
        Ok(name) => {
            let result = exec(client, &name, args.command, &args.options).await;
            if args.rm {
                remove(client, &name).await;
            }
            result?
        }
        Err(failure) => {
            if args.rm {
                if let Some(name) = created_name.or(args.name) {
                    remove(client, &name).await;
                }
            }
            return Err(failure);
        }
    };
    status_result(status)
}

/// `--rm`: deletes the VM (stopping it first) and waits; failures are reported, not fatal.
async fn remove(client: &Client, name: &str) {
    let path = format!("{}?force=true", vm_route(name, ""));
    match client
        .call::<Operation>(Method::DELETE, &path, None::<&()>)
        .await
    {
        Ok(op) => {
            if let Err(failure) = follow_operation(client, op, true).await {
                eprint!("removing {name}: {}", failure.text);
            }
        }
        Err(crate::client::ClientError::Api(api)) if api.code == ErrorCode::NotFound => {}
        Err(err) => eprint!("removing {name}: {}", Failure::from(err).text),
    }
}

// ---------------------------------------------------------------------------------------------
// ssh

/// Where `vm ssh` keeps the known_hosts file of VM `name`.
pub fn known_hosts_path(config: &Config, name: &str) -> PathBuf {
    config.data_dir.join("ssh").join("known_hosts.d").join(name)
}

/// The known_hosts line for `name` with `key` (`type base64 [comment]`), comment dropped.
pub fn known_hosts_line(name: &str, key: &str) -> Option<String> {
    let mut parts = key.split_whitespace();
    let kind = parts.next()?;
    let blob = parts.next()?;
    Some(format!("{name} {kind} {blob}\n"))
}

/// Asks the agent of `vm` for its host key and writes the VM's known_hosts file.
async fn learn_host_key(client: &Client, config: &Config, vm: &str) -> Result<PathBuf, Failure> {
    let key: SshHostKey = client.get(&vm_route(vm, "/ssh-host-key")).await?;
    let line = known_hosts_line(vm, &key.key).ok_or_else(|| {
        fail(
            exit::FAILED,
            format!(
                "error: the guest reported a malformed host key: {:?}",
                key.key
            ),
        )
    })?;
    let path = known_hosts_path(config, vm);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| {
            fail(
                exit::FAILED,
                format!("error: creating {}: {e}", dir.display()),
            )
        })?;
    }
    let temp = path.with_extension("tmp");
    std::fs::write(&temp, line)
        .and_then(|()| std::fs::rename(&temp, &path))
        .map_err(|e| {
            fail(
                exit::FAILED,
                format!("error: writing {}: {e}", path.display()),
            )
        })?;
    Ok(path)
}

/// Quotes `text` for the shell ssh runs ProxyCommand with.
fn shell_quote(text: &str) -> String {
    if !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-+:@".contains(&b))
    {
        text.to_string()
    } else {
        format!("'{}'", text.replace('\'', "'\\''"))
    }
}

fn banger_exe() -> String {
    std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "banger".into())
}

/// The OpenSSH options that reach VM `name` (as `Key=Value` pairs).
pub fn ssh_options(config: &Config, name: &str, exe: &str) -> Vec<(String, String)> {
    vec![
        (
            "IdentityFile".into(),
            config.ssh_key_path().display().to_string(),
        ),
        ("IdentitiesOnly".into(), "yes".into()),
        (
            "UserKnownHostsFile".into(),
            known_hosts_path(config, name).display().to_string(),
        ),
        ("GlobalKnownHostsFile".into(), "/dev/null".into()),
        ("HostKeyAlias".into(), name.into()),
        ("StrictHostKeyChecking".into(), "yes".into()),
        (
            "ProxyCommand".into(),
            format!("{} vm proxy {} %p", shell_quote(exe), shell_quote(name)),
        ),
    ]
}

async fn ssh(
    client: &Client,
    config: &Config,
    name: &str,
    command: &[String],
) -> Result<(), Failure> {
    let vm: Vm = client.get(&vm_route(name, "")).await?;
    let name = vm.name.to_string();
    learn_host_key(client, config, &name).await?;
    let mut cmd = std::process::Command::new("ssh");
    for (key, value) in ssh_options(config, &name, &banger_exe()) {
        cmd.arg("-o").arg(format!("{key}={value}"));
    }
    // ssh stops parsing options at the destination; `--` keeps a command from being read as
    // ssh options, and everything after the destination goes to the guest verbatim.
    cmd.arg("--").arg(format!("root@{name}")).args(command);
    use std::os::unix::process::CommandExt;
    let err = cmd.exec();
    Err(fail(
        exit::FAILED,
        format!("error: running ssh: {err} (is OpenSSH's client installed?)"),
    ))
}

async fn proxy(client: &Client, name: &str, port: u16) -> Result<(), Failure> {
    let ws = websocket(client, &vm_route(name, &format!("/connect/{port}"))).await?;
    let (mut sink, mut incoming) = ws.split();
    let mut stdin = Some(stdin_reader());
    loop {
        tokio::select! {
            msg = incoming.next() => match msg {
                Some(Ok(Message::Binary(data))) => {
                    let mut out = std::io::stdout().lock();
                    if out.write_all(&data).and_then(|()| out.flush()).is_err() {
                        return Ok(());
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return Ok(()),
                Some(Ok(_)) => {}
            },
            chunk = async { match stdin.as_mut() { Some(rx) => rx.recv().await, None => std::future::pending().await } } => {
                match chunk.flatten() {
                    Some(data) => {
                        if sink.send(Message::binary(data)).await.is_err() {
                            return Ok(());
                        }
                    }
                    // No half-close through vsock: keep reading until the guest end closes.
                    None => stdin = None,
                }
            }
        }
    }
}

/// `banger ssh-config`: a `Host` block per VM; running VMs get their known_hosts refreshed.
pub async fn ssh_config(
    client: &Client,
    config: &Config,
    out: &mut impl Write,
) -> Result<(), Failure> {
    let vms: Vec<Vm> = client.get("/v1/vms").await?;
    let exe = banger_exe();
    let mut text =
        String::from("# Generated by `banger ssh-config`; include it from ~/.ssh/config.\n");
    for vm in &vms {
        let name = vm.name.to_string();
        if vm.state == VmState::Running {
            if let Err(failure) = learn_host_key(client, config, &name).await {
                eprint!("{name}: {}", failure.text);
            }
        }
        text.push_str(&ssh_config_block(config, &name, &exe));
    }
    out.write_all(text.as_bytes())
        .map_err(|e| fail(exit::FAILED, format!("error: writing output: {e}")))
}

/// One `Host` block.
pub fn ssh_config_block(config: &Config, name: &str, exe: &str) -> String {
    let mut block = format!("\nHost {name}\n  HostName {name}\n  User root\n");
    for (key, value) in ssh_options(config, name, exe) {
        if value.contains(' ') && key != "ProxyCommand" {
            block.push_str(&format!("  {key} \"{value}\"\n"));
        } else {
            block.push_str(&format!("  {key} {value}\n"));
        }
    }
    block
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_ends_are_remote_only_with_a_name_before_the_colon() {
        assert_eq!(
            parse_copy_end("box:/etc/hosts"),
            CopyEnd::Remote {
                vm: "box".into(),
                path: "/etc/hosts".into()
            }
        );
        assert_eq!(parse_copy_end("./a:b"), CopyEnd::Local("./a:b".into()));
        assert_eq!(parse_copy_end("/tmp/x"), CopyEnd::Local("/tmp/x".into()));
        assert_eq!(parse_copy_end(":x"), CopyEnd::Local(":x".into()));
    }

    #[test]
    fn known_hosts_line_uses_the_vm_name_and_drops_the_comment() {
        assert_eq!(
            known_hosts_line("box", "ssh-ed25519 AAAAC3Nz root@banger-guest").as_deref(),
            Some("box ssh-ed25519 AAAAC3Nz\n")
        );
        assert_eq!(known_hosts_line("box", "garbage"), None);
    }

    #[test]
    fn proxy_command_quotes_paths_with_spaces() {
        assert_eq!(shell_quote("/usr/bin/banger"), "/usr/bin/banger");
        assert_eq!(
            shell_quote("/opt/my tools/banger"),
            "'/opt/my tools/banger'"
        );
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
    }

    #[test]
    fn env_arguments_need_a_key() {
        assert_eq!(parse_env("A=b=c"), Ok(("A".into(), "b=c".into())));
        assert!(parse_env("=x").is_err());
        assert!(parse_env("novalue").is_err());
    }

    #[test]
    fn paths_are_percent_encoded_but_keep_slashes_in_queries() {
        assert_eq!(encode("/a b/c&d", true), "/a%20b/c%26d");
        assert_eq!(encode("a/b", false), "a%2Fb");
    }
}

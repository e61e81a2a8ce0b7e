//! Host side: talks to one guest's agent through its VMM's vsock Unix socket.
//!
//! Every request opens its own connection: connect to `uds_path`, write `CONNECT <port>\n`, read
//! one `OK …` line (Firecracker answers with a host port, vhost-device-vsock with the guest port,
//! so only the prefix is checked), exchange `Hello`/`HelloOk`, then send one request. A connection
//! costs a few milliseconds and lets an exec stream without blocking other requests.
//! [`AgentClient`] is cheap to clone and holds no connection, so it can be shared by tasks freely.
//!
//! Early connections to a booting guest are reset or closed before the agent listens, so
//! [`AgentClient::connect`] retries the whole opening sequence until its deadline; later requests
//! retry within a shorter window ([`DEFAULT_RECONNECT_WINDOW`]) to ride out an agent restart.
//! A version mismatch is never retried. The client never shuts down its write side: the VMMs do
//! not pass a half-close through (see `docs/agent-protocol.md`).

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio_util::codec::Framed;

use crate::protocol::{
    ClientCodec, ClientMessage, ErrorCode, ExecRequest, ExitStatus, FileInfo, FilePutRequest,
    FrameError, GuestInfo, Health, ServerMessage, TtySize, Version, IO_CHUNK_LEN, PROTOCOL_VERSION,
};

/// How long one connection attempt (Unix connect, `CONNECT` line, `Hello`) may take.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long requests after the first connection retry opening a connection.
pub const DEFAULT_RECONNECT_WINDOW: Duration = Duration::from_secs(2);

/// How long a short request (health, info, shutdown) may wait for its answer.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

type Connection = Framed<UnixStream, ClientCodec>;

/// What the client was doing when it failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Connect,
    Health,
    Info,
    Shutdown,
    WaitPort { port: u16 },
    Exec,
    HostKey,
    FilePut,
    FileGet,
    PortPipe { port: u16 },
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Operation::Connect => f.write_str("connect"),
            Operation::Health => f.write_str("health"),
            Operation::Info => f.write_str("info"),
            Operation::Shutdown => f.write_str("shutdown"),
            Operation::WaitPort { port } => write!(f, "wait for guest port {port}"),
            Operation::Exec => f.write_str("exec"),
            Operation::HostKey => f.write_str("read the SSH host key"),
            Operation::FilePut => f.write_str("file put"),
            Operation::FileGet => f.write_str("file get"),
            Operation::PortPipe { port } => write!(f, "connect to guest port {port}"),
        }
    }
}

/// A request to the guest agent failed. Carries which socket, which vsock port and which
/// operation; [`AgentError::kind`] says what went wrong.
#[derive(Debug, thiserror::Error)]
#[error("guest agent via {uds_path} (vsock port {port}): {op} failed")]
pub struct AgentError {
    pub uds_path: PathBuf,
    pub port: u32,
    pub op: Operation,
    #[source]
    pub kind: AgentErrorKind,
}

impl AgentError {
    pub fn kind(&self) -> &AgentErrorKind {
        &self.kind
    }
}

/// What went wrong talking to the agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentErrorKind {
    #[error("connecting to the VMM's vsock socket")]
    Connect(#[source] io::Error),
    #[error("CONNECT handshake with the VMM")]
    Handshake(#[source] io::Error),
    #[error("the VMM answered CONNECT with {reply:?} instead of \"OK …\"")]
    HandshakeRefused { reply: String },
    #[error(
        "protocol version mismatch: this host speaks {host}, the agent (version {agent_version}) \
         speaks {agent}; major versions must match"
    )]
    VersionMismatch {
        host: Version,
        agent: Version,
        agent_version: String,
    },
    #[error("connection closed while waiting for {expected}")]
    Closed { expected: &'static str },
    #[error("no {expected} within {after:?}")]
    TimedOut {
        expected: &'static str,
        after: Duration,
    },
    #[error("sending or receiving a frame")]
    Frame(#[source] FrameError),
    #[error("expected {expected}, the agent sent {got}")]
    Unexpected {
        expected: &'static str,
        got: &'static str,
    },
    #[error("the agent answered {code}: {message}")]
    Remote { code: ErrorCode, message: String },
    #[error("reading the data to send")]
    LocalRead(#[source] io::Error),
    #[error("gave up after {attempts} attempts in {waited:?}")]
    GaveUp {
        attempts: u32,
        waited: Duration,
        #[source]
        last: Box<AgentErrorKind>,
    },
}

impl AgentErrorKind {
    /// Whether another connection attempt may succeed (the guest may still be booting, or the
    /// agent restarting).
    fn is_retryable(&self) -> bool {
        matches!(
            self,
            AgentErrorKind::Connect(_)
                | AgentErrorKind::Handshake(_)
                | AgentErrorKind::HandshakeRefused { .. }
                | AgentErrorKind::Closed { .. }
                | AgentErrorKind::TimedOut { .. }
                | AgentErrorKind::Frame(FrameError::Io(_))
        )
    }
}

/// Which agent: the VMM's vsock socket and the guest port.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Endpoint {
    uds_path: PathBuf,
    port: u32,
}

impl Endpoint {
    fn error(&self, op: Operation, kind: AgentErrorKind) -> AgentError {
        AgentError {
            uds_path: self.uds_path.clone(),
            port: self.port,
            op,
            kind,
        }
    }
}

/// A handle on one guest's agent. See the module docs.
#[derive(Debug, Clone)]
pub struct AgentClient {
    endpoint: Arc<Endpoint>,
    agent_version: String,
    agent_protocol: Version,
    reconnect_window: Duration,
}

impl AgentClient {
    /// Reaches the agent behind `uds_path` on vsock `port`, retrying until `deadline` has passed,
    /// and checks that it speaks a compatible protocol version.
    pub async fn connect(
        uds_path: &Path,
        port: u32,
        deadline: Duration,
    ) -> Result<AgentClient, AgentError> {
        let endpoint = Arc::new(Endpoint {
            uds_path: uds_path.to_owned(),
            port,
        });
        let opened = open_with_retry(&endpoint, deadline)
            .await
            .map_err(|kind| endpoint.error(Operation::Connect, kind))?;
        Ok(AgentClient {
            endpoint,
            agent_version: opened.agent_version,
            agent_protocol: opened.agent_protocol,
            reconnect_window: DEFAULT_RECONNECT_WINDOW,
        })
    }

    /// Changes how long later requests retry opening their connection.
    pub fn with_reconnect_window(mut self, window: Duration) -> Self {
        self.reconnect_window = window;
        self
    }

    /// The agent's version, as it reported it when [`AgentClient::connect`] succeeded.
    pub fn agent_version(&self) -> &str {
        &self.agent_version
    }

    /// The agent's protocol version.
    pub fn agent_protocol(&self) -> Version {
        self.agent_protocol
    }

    pub fn uds_path(&self) -> &Path {
        &self.endpoint.uds_path
    }

    pub fn port(&self) -> u32 {
        self.endpoint.port
    }

    async fn request(&self, op: Operation, msg: ClientMessage) -> Result<Connection, AgentError> {
        let mut conn = open_with_retry(&self.endpoint, self.reconnect_window)
            .await
            .map_err(|kind| self.endpoint.error(op, kind))?
            .conn;
        conn.send(msg)
            .await
            .map_err(|e| self.endpoint.error(op, AgentErrorKind::Frame(e)))?;
        Ok(conn)
    }

    async fn call(
        &self,
        op: Operation,
        msg: ClientMessage,
        expected: &'static str,
        timeout: Duration,
    ) -> Result<ServerMessage, AgentError> {
        let mut conn = self.request(op, msg).await?;
        read_reply(&mut conn, expected, timeout)
            .await
            .map_err(|kind| self.endpoint.error(op, kind))
    }

    /// Agent version, guest uptime and boot id.
    pub async fn health(&self) -> Result<Health, AgentError> {
        let op = Operation::Health;
        match self
            .call(op, ClientMessage::Health, "health_ok", REPLY_TIMEOUT)
            .await?
        {
            ServerMessage::HealthOk(health) => Ok(health),
            other => Err(self.unexpected(op, "health_ok", other)),
        }
    }

    /// Hostname, kernel, addresses and boot id of the guest.
    pub async fn info(&self) -> Result<GuestInfo, AgentError> {
        let op = Operation::Info;
        match self
            .call(op, ClientMessage::Info, "info_ok", REPLY_TIMEOUT)
            .await?
        {
            ServerMessage::InfoOk(info) => Ok(info),
            other => Err(self.unexpected(op, "info_ok", other)),
        }
    }

    /// Asks the guest to power off (or reboot). Returns once the agent acknowledged; the guest
    /// goes down shortly after, so the caller should then wait for the VMM to exit.
    pub async fn shutdown(&self, reboot: bool) -> Result<(), AgentError> {
        let op = Operation::Shutdown;
        match self
            .call(
                op,
                ClientMessage::Shutdown { reboot },
                "shutdown_ok",
                REPLY_TIMEOUT,
            )
            .await?
        {
            ServerMessage::ShutdownOk => Ok(()),
            other => Err(self.unexpected(op, "shutdown_ok", other)),
        }
    }

    /// Waits until something in the guest accepts TCP connections on `127.0.0.1:port`.
    /// Returns how long the agent waited.
    pub async fn wait_port(&self, port: u16, timeout: Duration) -> Result<Duration, AgentError> {
        let op = Operation::WaitPort { port };
        let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        // The agent enforces `timeout`; the margin covers its last attempt and the round trip.
        let reply_timeout = timeout.saturating_add(Duration::from_secs(5));
        match self
            .call(
                op,
                ClientMessage::WaitPort { port, timeout_ms },
                "wait_port_ok",
                reply_timeout,
            )
            .await?
        {
            ServerMessage::WaitPortOk { waited_ms } => Ok(Duration::from_millis(waited_ms)),
            other => Err(self.unexpected(op, "wait_port_ok", other)),
        }
    }

    /// Starts a process in the guest and returns the session streaming its I/O.
    pub async fn exec(&self, req: ExecRequest) -> Result<ExecSession, AgentError> {
        let op = Operation::Exec;
        let mut conn = self.request(op, ClientMessage::Exec(req)).await?;
        let pid = match read_reply(&mut conn, "exec_started", REPLY_TIMEOUT)
            .await
            .map_err(|kind| self.endpoint.error(op, kind))?
        {
            ServerMessage::ExecStarted { pid } => pid,
            other => return Err(self.unexpected(op, "exec_started", other)),
        };
        let (sink, stream) = conn.split();
        Ok(ExecSession {
            pid,
            input: ExecInput {
                endpoint: Arc::clone(&self.endpoint),
                sink,
            },
            events: ExecEvents {
                endpoint: Arc::clone(&self.endpoint),
                stream,
                finished: false,
            },
        })
    }

    /// Runs `argv` without stdin and collects its output and exit status.
    pub async fn exec_collect<I, S>(&self, argv: I) -> Result<ExecOutput, AgentError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.exec(ExecRequest::new(argv)).await?.collect().await
    }

    /// Runs `req` with `stdin` as its standard input (sent while output is read, so any size
    /// works) and collects its output and exit status. `req.stdin` is set for you.
    pub async fn exec_with_stdin(
        &self,
        mut req: ExecRequest,
        stdin: &[u8],
    ) -> Result<ExecOutput, AgentError> {
        req.stdin = true;
        let (mut input, events) = self.exec(req).await?.split();
        let feed = async {
            input.write_stdin(stdin).await?;
            input.close_stdin().await
        };
        let collect = events.collect();
        tokio::pin!(feed, collect);
        let mut feeding = true;
        // The process may exit without reading all of its stdin (as with a pipe), and the agent
        // stops reading it then: the exit status ends the exec whether or not feeding finished.
        loop {
            tokio::select! {
                fed = &mut feed, if feeding => {
                    feeding = false;
                    if let Err(err) = fed {
                        tracing::debug!(error = %crate::error_chain(&err), "feeding exec stdin stopped early");
                    }
                }
                output = &mut collect => return output,
            }
        }
    }

    /// The guest's SSH host public key, as one OpenSSH line (`ssh-ed25519 AAAA… comment`).
    pub async fn host_key(&self) -> Result<String, AgentError> {
        let op = Operation::HostKey;
        match self
            .call(op, ClientMessage::HostKey, "host_key_ok", REPLY_TIMEOUT)
            .await?
        {
            ServerMessage::HostKeyOk { key } => Ok(key),
            other => Err(self.unexpected(op, "host_key_ok", other)),
        }
    }

    /// Writes everything `data` yields to `req.path` in the guest (atomically: the agent
    /// renames a complete temporary file into place). Returns the number of bytes written.
    pub async fn put_file<R: AsyncRead + Unpin>(
        &self,
        req: FilePutRequest,
        mut data: R,
    ) -> Result<u64, AgentError> {
        let op = Operation::FilePut;
        let err = |kind| self.endpoint.error(op, kind);
        let mut conn = self.request(op, ClientMessage::FilePut(req)).await?;
        match read_reply(&mut conn, "file_put_ready", REPLY_TIMEOUT)
            .await
            .map_err(err)?
        {
            ServerMessage::FilePutReady => {}
            other => return Err(self.unexpected(op, "file_put_ready", other)),
        }
        let mut buf = vec![0u8; IO_CHUNK_LEN];
        loop {
            let n = data
                .read(&mut buf)
                .await
                .map_err(|e| err(AgentErrorKind::LocalRead(e)))?;
            let msg = if n == 0 {
                ClientMessage::FileEnd
            } else {
                ClientMessage::FileData {
                    data: buf[..n].to_vec(),
                }
            };
            if let Err(e) = conn.send(msg).await {
                // The agent may have failed the put (disk full, …) and closed: its reason is
                // worth more than our broken pipe.
                return match tokio::time::timeout(Duration::from_secs(1), conn.next()).await {
                    Ok(Some(Ok(ServerMessage::Error { code, message }))) => {
                        Err(err(AgentErrorKind::Remote { code, message }))
                    }
                    _ => Err(err(AgentErrorKind::Frame(e))),
                };
            }
            if n == 0 {
                break;
            }
        }
        match read_reply(&mut conn, "file_put_ok", REPLY_TIMEOUT)
            .await
            .map_err(err)?
        {
            ServerMessage::FilePutOk { size } => Ok(size),
            other => Err(self.unexpected(op, "file_put_ok", other)),
        }
    }

    /// Starts reading `path` from the guest: the answer carries its size and mode, and yields
    /// its contents chunk by chunk.
    pub async fn get_file(&self, path: &str) -> Result<FileDownload, AgentError> {
        let op = Operation::FileGet;
        let mut conn = self
            .request(op, ClientMessage::FileGet { path: path.into() })
            .await?;
        match read_reply(&mut conn, "file_info", REPLY_TIMEOUT)
            .await
            .map_err(|kind| self.endpoint.error(op, kind))?
        {
            ServerMessage::FileInfo(info) => Ok(FileDownload {
                info,
                endpoint: Arc::clone(&self.endpoint),
                conn,
                done: false,
            }),
            other => Err(self.unexpected(op, "file_info", other)),
        }
    }

    /// Opens a byte pipe to TCP `127.0.0.1:port` inside the guest.
    pub async fn connect_port(&self, port: u16) -> Result<(PipeSender, PipeReceiver), AgentError> {
        let op = Operation::PortPipe { port };
        let mut conn = self.request(op, ClientMessage::Connect { port }).await?;
        match read_reply(&mut conn, "connected", REPLY_TIMEOUT)
            .await
            .map_err(|kind| self.endpoint.error(op, kind))?
        {
            ServerMessage::Connected => {
                let (sink, stream) = conn.split();
                Ok((
                    PipeSender {
                        endpoint: Arc::clone(&self.endpoint),
                        port,
                        sink,
                    },
                    PipeReceiver {
                        endpoint: Arc::clone(&self.endpoint),
                        port,
                        stream,
                        closed: false,
                    },
                ))
            }
            other => Err(self.unexpected(op, "connected", other)),
        }
    }

    fn unexpected(&self, op: Operation, expected: &'static str, got: ServerMessage) -> AgentError {
        self.endpoint.error(op, unexpected_kind(expected, got))
    }
}

fn unexpected_kind(expected: &'static str, got: ServerMessage) -> AgentErrorKind {
    match got {
        ServerMessage::Error { code, message } => AgentErrorKind::Remote { code, message },
        other => AgentErrorKind::Unexpected {
            expected,
            got: other.kind(),
        },
    }
}

async fn read_reply(
    conn: &mut Connection,
    expected: &'static str,
    timeout: Duration,
) -> Result<ServerMessage, AgentErrorKind> {
    match tokio::time::timeout(timeout, conn.next()).await {
        Err(_) => Err(AgentErrorKind::TimedOut {
            expected,
            after: timeout,
        }),
        Ok(None) => Err(AgentErrorKind::Closed { expected }),
        Ok(Some(Err(e))) => Err(AgentErrorKind::Frame(e)),
        Ok(Some(Ok(msg))) => Ok(msg),
    }
}

/// A connection past `Hello`, with what the agent said about itself.
struct Opened {
    conn: Connection,
    agent_version: String,
    agent_protocol: Version,
}

async fn open_with_retry(endpoint: &Endpoint, window: Duration) -> Result<Opened, AgentErrorKind> {
    let started = Instant::now();
    let mut attempts = 0u32;
    let mut pause = Duration::from_millis(20);
    loop {
        attempts += 1;
        let remaining = window.saturating_sub(started.elapsed());
        let attempt_timeout = remaining.clamp(Duration::from_millis(100), ATTEMPT_TIMEOUT);
        let result = match tokio::time::timeout(attempt_timeout, open(endpoint)).await {
            Ok(result) => result,
            Err(_) => Err(AgentErrorKind::TimedOut {
                expected: "CONNECT answer and hello",
                after: attempt_timeout,
            }),
        };
        match result {
            Ok(opened) => return Ok(opened),
            Err(kind) if !kind.is_retryable() => return Err(kind),
            Err(kind) => {
                if started.elapsed() + pause >= window {
                    return Err(AgentErrorKind::GaveUp {
                        attempts,
                        waited: started.elapsed(),
                        last: Box::new(kind),
                    });
                }
                tracing::trace!(attempts, error = %kind, "agent not reachable yet; retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(250));
            }
        }
    }
}

/// One attempt: Unix connect, `CONNECT` line, `Hello`.
async fn open(endpoint: &Endpoint) -> Result<Opened, AgentErrorKind> {
    let mut stream = UnixStream::connect(&endpoint.uds_path)
        .await
        .map_err(AgentErrorKind::Connect)?;
    stream
        .write_all(format!("CONNECT {}\n", endpoint.port).as_bytes())
        .await
        .map_err(AgentErrorKind::Handshake)?;
    // Byte by byte, so nothing after the newline is consumed before the codec takes over.
    let mut reply = Vec::with_capacity(16);
    loop {
        let byte = match stream.read_u8().await {
            Ok(byte) => byte,
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                return Err(AgentErrorKind::Closed {
                    expected: "the VMM's answer to CONNECT",
                })
            }
            Err(e) => return Err(AgentErrorKind::Handshake(e)),
        };
        if byte == b'\n' {
            break;
        }
        reply.push(byte);
        if reply.len() > 64 {
            break;
        }
    }
    let reply = String::from_utf8_lossy(&reply).into_owned();
    if !reply.starts_with("OK ") {
        return Err(AgentErrorKind::HandshakeRefused { reply });
    }

    let mut conn = Framed::new(stream, ClientCodec::new());
    conn.send(ClientMessage::Hello {
        version: PROTOCOL_VERSION,
    })
    .await
    .map_err(AgentErrorKind::Frame)?;
    match read_reply(&mut conn, "hello_ok", ATTEMPT_TIMEOUT).await? {
        ServerMessage::HelloOk {
            agent_version,
            protocol,
        } => {
            if !PROTOCOL_VERSION.is_compatible_with(protocol) {
                return Err(AgentErrorKind::VersionMismatch {
                    host: PROTOCOL_VERSION,
                    agent: protocol,
                    agent_version,
                });
            }
            Ok(Opened {
                conn,
                agent_version,
                agent_protocol: protocol,
            })
        }
        ServerMessage::HelloRefused {
            agent_version,
            protocol,
        } => Err(AgentErrorKind::VersionMismatch {
            host: PROTOCOL_VERSION,
            agent: protocol,
            agent_version,
        }),
        other => Err(unexpected_kind("hello_ok", other)),
    }
}

/// Something a running exec produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecEvent {
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    /// The process ended; no event follows.
    Exit(ExitStatus),
}

/// Everything an exec produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

/// A running process in the guest. Read its events, feed its input, or [`ExecSession::split`]
/// it to do both from separate tasks (needed when stdin and stdout are both large: the agent
/// stops reading stdin while its output is not read).
///
/// Dropping the session closes the connection, and the agent kills the process group.
#[derive(Debug)]
pub struct ExecSession {
    pid: u32,
    input: ExecInput,
    events: ExecEvents,
}

impl ExecSession {
    /// The process's pid inside the guest.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn split(self) -> (ExecInput, ExecEvents) {
        (self.input, self.events)
    }

    pub async fn next_event(&mut self) -> Result<Option<ExecEvent>, AgentError> {
        self.events.next_event().await
    }

    pub async fn write_stdin(&mut self, data: &[u8]) -> Result<(), AgentError> {
        self.input.write_stdin(data).await
    }

    pub async fn close_stdin(&mut self) -> Result<(), AgentError> {
        self.input.close_stdin().await
    }

    pub async fn signal(&mut self, signal: i32) -> Result<(), AgentError> {
        self.input.signal(signal).await
    }

    pub async fn resize(&mut self, size: TtySize) -> Result<(), AgentError> {
        self.input.resize(size).await
    }

    /// Reads events until the process exits.
    pub async fn collect(self) -> Result<ExecOutput, AgentError> {
        self.events.collect().await
    }
}

/// The sending half of an exec.
#[derive(Debug)]
pub struct ExecInput {
    endpoint: Arc<Endpoint>,
    sink: SplitSink<Connection, ClientMessage>,
}

impl ExecInput {
    async fn send(&mut self, msg: ClientMessage) -> Result<(), AgentError> {
        self.sink.send(msg).await.map_err(|e| {
            self.endpoint
                .error(Operation::Exec, AgentErrorKind::Frame(e))
        })
    }

    /// Sends bytes to the process's stdin (in frames of at most [`IO_CHUNK_LEN`]).
    pub async fn write_stdin(&mut self, data: &[u8]) -> Result<(), AgentError> {
        for chunk in data.chunks(IO_CHUNK_LEN) {
            self.sink
                .feed(ClientMessage::Stdin {
                    data: chunk.to_vec(),
                })
                .await
                .map_err(|e| {
                    self.endpoint
                        .error(Operation::Exec, AgentErrorKind::Frame(e))
                })?;
        }
        self.sink.flush().await.map_err(|e| {
            self.endpoint
                .error(Operation::Exec, AgentErrorKind::Frame(e))
        })
    }

    /// Closes the process's stdin (it reads end-of-file). The connection stays open.
    pub async fn close_stdin(&mut self) -> Result<(), AgentError> {
        self.send(ClientMessage::StdinEof).await
    }

    /// Sends `signal` to the process group.
    pub async fn signal(&mut self, signal: i32) -> Result<(), AgentError> {
        self.send(ClientMessage::Signal { signal }).await
    }

    /// Resizes the process's terminal (TTY execs only).
    pub async fn resize(&mut self, size: TtySize) -> Result<(), AgentError> {
        self.send(ClientMessage::Resize(size)).await
    }
}

/// The receiving half of an exec.
#[derive(Debug)]
pub struct ExecEvents {
    endpoint: Arc<Endpoint>,
    stream: SplitStream<Connection>,
    finished: bool,
}

impl ExecEvents {
    /// The next event; `None` once `Exit` was returned.
    pub async fn next_event(&mut self) -> Result<Option<ExecEvent>, AgentError> {
        if self.finished {
            return Ok(None);
        }
        let err = |kind| self.endpoint.error(Operation::Exec, kind);
        let msg = match self.stream.next().await {
            None => {
                return Err(err(AgentErrorKind::Closed {
                    expected: "exec output or exit",
                }))
            }
            Some(Err(e)) => return Err(err(AgentErrorKind::Frame(e))),
            Some(Ok(msg)) => msg,
        };
        match msg {
            ServerMessage::Stdout { data } => Ok(Some(ExecEvent::Stdout(data))),
            ServerMessage::Stderr { data } => Ok(Some(ExecEvent::Stderr(data))),
            ServerMessage::Exit(status) => {
                self.finished = true;
                Ok(Some(ExecEvent::Exit(status)))
            }
            other => Err(err(unexpected_kind("exec output or exit", other))),
        }
    }

    /// Reads events until the process exits.
    pub async fn collect(mut self) -> Result<ExecOutput, AgentError> {
        let mut stdout = Vec::new();
        let mut stderr = Vec::new();
        loop {
            match self.next_event().await? {
                Some(ExecEvent::Stdout(data)) => stdout.extend_from_slice(&data),
                Some(ExecEvent::Stderr(data)) => stderr.extend_from_slice(&data),
                Some(ExecEvent::Exit(status)) => {
                    return Ok(ExecOutput {
                        status,
                        stdout,
                        stderr,
                    })
                }
                None => {
                    return Err(self
                        .endpoint
                        .error(Operation::Exec, AgentErrorKind::Closed { expected: "exit" }))
                }
            }
        }
    }
}

/// A file being read from the guest ([`AgentClient::get_file`]).
#[derive(Debug)]
pub struct FileDownload {
    info: FileInfo,
    endpoint: Arc<Endpoint>,
    conn: Connection,
    done: bool,
}

impl FileDownload {
    /// Size and mode of the file when the transfer started.
    pub fn info(&self) -> FileInfo {
        self.info
    }

    /// The next chunk; `None` once the whole file was received.
    pub async fn next_chunk(&mut self) -> Result<Option<Vec<u8>>, AgentError> {
        if self.done {
            return Ok(None);
        }
        let op = Operation::FileGet;
        match read_reply(&mut self.conn, "file_data or file_end", REPLY_TIMEOUT)
            .await
            .map_err(|kind| self.endpoint.error(op, kind))?
        {
            ServerMessage::FileData { data } => Ok(Some(data)),
            ServerMessage::FileEnd => {
                self.done = true;
                Ok(None)
            }
            other => Err(self
                .endpoint
                .error(op, unexpected_kind("file_data or file_end", other))),
        }
    }

    /// Reads the rest of the file into memory.
    pub async fn collect(mut self) -> Result<Vec<u8>, AgentError> {
        let mut out = Vec::with_capacity(usize::try_from(self.info.size).unwrap_or(0));
        while let Some(chunk) = self.next_chunk().await? {
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    }
}

/// The sending half of a port pipe ([`AgentClient::connect_port`]). Dropping both halves
/// closes the pipe (and the guest's TCP connection).
#[derive(Debug)]
pub struct PipeSender {
    endpoint: Arc<Endpoint>,
    port: u16,
    sink: SplitSink<Connection, ClientMessage>,
}

impl PipeSender {
    /// Sends bytes to the guest end (in frames of at most [`IO_CHUNK_LEN`]).
    pub async fn send(&mut self, data: &[u8]) -> Result<(), AgentError> {
        let op = Operation::PortPipe { port: self.port };
        for chunk in data.chunks(IO_CHUNK_LEN) {
            self.sink
                .feed(ClientMessage::Data {
                    data: chunk.to_vec(),
                })
                .await
                .map_err(|e| self.endpoint.error(op, AgentErrorKind::Frame(e)))?;
        }
        self.sink
            .flush()
            .await
            .map_err(|e| self.endpoint.error(op, AgentErrorKind::Frame(e)))
    }
}

/// The receiving half of a port pipe.
#[derive(Debug)]
pub struct PipeReceiver {
    endpoint: Arc<Endpoint>,
    port: u16,
    stream: SplitStream<Connection>,
    closed: bool,
}

impl PipeReceiver {
    /// The next bytes from the guest end; `None` once the guest end closed.
    pub async fn recv(&mut self) -> Result<Option<Vec<u8>>, AgentError> {
        if self.closed {
            return Ok(None);
        }
        let err = |kind| {
            self.endpoint
                .error(Operation::PortPipe { port: self.port }, kind)
        };
        match self.stream.next().await {
            None => Err(err(AgentErrorKind::Closed {
                expected: "data or connection_closed",
            })),
            Some(Err(e)) => Err(err(AgentErrorKind::Frame(e))),
            Some(Ok(ServerMessage::Data { data })) => Ok(Some(data)),
            Some(Ok(ServerMessage::ConnectionClosed)) => {
                self.closed = true;
                Ok(None)
            }
            Some(Ok(other)) => Err(err(unexpected_kind("data or connection_closed", other))),
        }
    }
}

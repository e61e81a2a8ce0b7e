//! Guest side: serves the agent protocol on vsock (the binary) or on any byte stream (tests).
//!
//! [`AgentServer`] is shared (`Arc`) by all connections and holds no mutable state: every
//! accepted connection runs in its own task, performs the `Hello` exchange, answers exactly one
//! request and closes. A failed connection is logged and never takes the listener down.
//!
//! [`serve_vmm_socket`] plays the VMM's part for tests: it accepts on a Unix socket, answers the
//! `CONNECT <port>` line the way Firecracker and vhost-device-vsock do, and hands the rest of the
//! stream to the agent, so the real [`crate::client::AgentClient`] can be tested without a VM.

use std::io;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixListener};
use tokio_util::codec::Framed;

use crate::guest::{GuestProbe, PowerAction, PowerControl};
use crate::protocol::{
    ClientMessage, ErrorCode, FrameError, ServerCodec, ServerMessage, AGENT_VERSION,
    PROTOCOL_VERSION,
};

/// How long a client may take to send `Hello` and then its request.
pub const REQUEST_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Pause between answering `Shutdown` and acting on it, so the answer leaves the guest.
pub const SHUTDOWN_DELAY: Duration = Duration::from_millis(200);

/// Where `HostKey` reads the guest's SSH host public key.
pub const SSH_HOST_KEY_PATH: &str = "/etc/ssh/ssh_host_ed25519_key.pub";

/// One connection could not be served to the end.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    #[error("reading the client's {expected} frame")]
    Read {
        expected: &'static str,
        #[source]
        source: FrameError,
    },
    #[error("client sent no {expected} frame within {timeout:?}")]
    ReadTimeout {
        expected: &'static str,
        timeout: Duration,
    },
    #[error("client closed the connection before its {expected} frame")]
    ClosedEarly { expected: &'static str },
    #[error("answering a {request} request")]
    Write {
        request: &'static str,
        #[source]
        source: FrameError,
    },
    #[error("streaming an exec")]
    Exec(#[source] crate::exec::ExecStreamError),
    #[error("serving a {request} request")]
    Transfer {
        request: &'static str,
        #[source]
        source: crate::files::TransferError,
    },
}

/// A listener could not be set up or failed.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("binding vsock port {port}")]
    BindVsock {
        port: u32,
        #[source]
        source: io::Error,
    },
    #[error("accepting a vsock connection on port {port}")]
    AcceptVsock {
        port: u32,
        #[source]
        source: io::Error,
    },
    #[error("accepting a connection on the Unix socket {path}")]
    AcceptUnix {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The agent: answers requests about and inside the guest it runs in.
#[derive(Debug)]
pub struct AgentServer {
    probe: GuestProbe,
    power: Arc<dyn PowerControl>,
    shutdown_delay: Duration,
    ssh_host_key: PathBuf,
}

impl AgentServer {
    pub fn new(probe: GuestProbe, power: Arc<dyn PowerControl>) -> Self {
        AgentServer {
            probe,
            power,
            shutdown_delay: SHUTDOWN_DELAY,
            ssh_host_key: PathBuf::from(SSH_HOST_KEY_PATH),
        }
    }

    /// Reads the SSH host public key from `path` instead of [`SSH_HOST_KEY_PATH`].
    pub fn with_ssh_host_key(mut self, path: impl Into<PathBuf>) -> Self {
        self.ssh_host_key = path.into();
        self
    }

    fn host_key(&self) -> ServerMessage {
        match std::fs::read_to_string(&self.ssh_host_key) {
            Ok(text) => match text.lines().map(str::trim).find(|l| !l.is_empty()) {
                Some(key) => ServerMessage::HostKeyOk {
                    key: key.to_owned(),
                },
                None => ServerMessage::Error {
                    code: ErrorCode::Internal,
                    message: format!("{} is empty", self.ssh_host_key.display()),
                },
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => ServerMessage::Error {
                code: ErrorCode::NotFound,
                message: format!(
                    "the guest has no SSH host key at {} (is sshd set up?)",
                    self.ssh_host_key.display()
                ),
            },
            Err(e) => ServerMessage::Error {
                code: ErrorCode::Internal,
                message: format!("reading {}: {e}", self.ssh_host_key.display()),
            },
        }
    }

    /// Serves one connection: `Hello`, one request, done. `stream` is any byte stream (a vsock
    /// connection in the guest, a Unix socket in tests).
    pub async fn serve_connection<S>(self: Arc<Self>, stream: S) -> Result<(), ConnectionError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let mut framed = Framed::new(stream, ServerCodec::new());

        let hello = read_frame(&mut framed, "hello").await?;
        let ClientMessage::Hello { version } = hello else {
            let message = format!("expected hello, got {}", hello.kind());
            return send_error(&mut framed, "hello", ErrorCode::BadRequest, message).await;
        };
        if !PROTOCOL_VERSION.is_compatible_with(version) {
            tracing::warn!(client = %version, agent = %PROTOCOL_VERSION, "refusing client protocol");
            let refused = ServerMessage::HelloRefused {
                agent_version: AGENT_VERSION.to_owned(),
                protocol: PROTOCOL_VERSION,
            };
            return send(&mut framed, "hello", refused).await;
        }
        let ok = ServerMessage::HelloOk {
            agent_version: AGENT_VERSION.to_owned(),
            protocol: PROTOCOL_VERSION,
        };
        send(&mut framed, "hello", ok).await?;

        let request = read_frame(&mut framed, "request").await?;
        let kind = request.kind();
        tracing::debug!(request = kind, "serving request");
        match request {
            ClientMessage::Health => {
                let reply = match self.probe.health() {
                    Ok(health) => ServerMessage::HealthOk(health),
                    Err(err) => internal_error(&err),
                };
                send(&mut framed, kind, reply).await
            }
            ClientMessage::Info => {
                let reply = match self.probe.info() {
                    Ok(info) => ServerMessage::InfoOk(info),
                    Err(err) => internal_error(&err),
                };
                send(&mut framed, kind, reply).await
            }
            ClientMessage::Shutdown { reboot } => {
                let action = if reboot {
                    PowerAction::Reboot
                } else {
                    PowerAction::PowerOff
                };
                send(&mut framed, kind, ServerMessage::ShutdownOk).await?;
                self.schedule_power(action);
                Ok(())
            }
            ClientMessage::WaitPort { port, timeout_ms } => {
                let reply = wait_port(port, Duration::from_millis(timeout_ms)).await;
                send(&mut framed, kind, reply).await
            }
            ClientMessage::Exec(req) => {
                let (sink, frames) = framed.split();
                crate::exec::run(sink, frames, req)
                    .await
                    .map_err(ConnectionError::Exec)
            }
            ClientMessage::HostKey => {
                let reply = self.host_key();
                send(&mut framed, kind, reply).await
            }
            ClientMessage::FilePut(req) => {
                let (sink, frames) = framed.split();
                crate::files::put(sink, frames, req)
                    .await
                    .map_err(|source| ConnectionError::Transfer {
                        request: kind,
                        source,
                    })
            }
            ClientMessage::FileGet { path } => {
                let (sink, _frames) = framed.split();
                crate::files::get(sink, path)
                    .await
                    .map_err(|source| ConnectionError::Transfer {
                        request: kind,
                        source,
                    })
            }
            ClientMessage::Connect { port } => {
                let (sink, frames) = framed.split();
                crate::files::connect(sink, frames, port)
                    .await
                    .map_err(|source| ConnectionError::Transfer {
                        request: kind,
                        source,
                    })
            }
            other => {
                let message = format!("{} is not a request", other.kind());
                send_error(&mut framed, kind, ErrorCode::BadRequest, message).await
            }
        }
    }

    fn schedule_power(&self, action: PowerAction) {
        let power = Arc::clone(&self.power);
        let delay = self.shutdown_delay;
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            tracing::info!(%action, "guest going down on request");
            match tokio::task::spawn_blocking(move || power.perform(action)).await {
                Ok(Ok(())) => {}
                Ok(Err(err)) => {
                    tracing::error!(error = %crate::error_chain(&err), "power action failed")
                }
                Err(err) => tracing::error!(%err, "power action task failed"),
            }
        });
    }

    /// Accepts connections on vsock `port` (any CID) forever.
    pub async fn serve_vsock(self: Arc<Self>, port: u32) -> Result<(), ServeError> {
        let addr = tokio_vsock::VsockAddr::new(tokio_vsock::VMADDR_CID_ANY, port);
        let listener = tokio_vsock::VsockListener::bind(addr)
            .map_err(|source| ServeError::BindVsock { port, source })?;
        tracing::info!(port, version = AGENT_VERSION, "agent listening on vsock");
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(source) if is_transient_accept_error(&source) => {
                    tracing::warn!(%source, "accept failed; retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
                Err(source) => return Err(ServeError::AcceptVsock { port, source }),
            };
            let server = Arc::clone(&self);
            tokio::spawn(async move {
                if let Err(err) = server.serve_connection(stream).await {
                    tracing::warn!(peer = %peer, error = %crate::error_chain(&err), "connection failed");
                }
            });
        }
    }
}

fn is_transient_accept_error(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::ECONNABORTED | libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    ) || err.kind() == io::ErrorKind::Interrupted
}

/// Plays the VMM's host-side vsock socket on `listener`: answers `CONNECT <port>\n` with
/// `OK <port>\n` when `port` is `agent_port` and serves the agent on the rest of the stream;
/// other ports are closed without an answer (as Firecracker does). Runs until accept fails.
pub async fn serve_vmm_socket(
    listener: UnixListener,
    agent_port: u32,
    server: Arc<AgentServer>,
) -> Result<(), ServeError> {
    let path = listener
        .local_addr()
        .ok()
        .and_then(|addr| addr.as_pathname().map(PathBuf::from))
        .unwrap_or_default();
    loop {
        let (mut stream, _) = listener
            .accept()
            .await
            .map_err(|source| ServeError::AcceptUnix {
                path: path.clone(),
                source,
            })?;
        let server = Arc::clone(&server);
        tokio::spawn(async move {
            let line = match read_connect_line(&mut stream).await {
                Ok(line) => line,
                Err(err) => {
                    tracing::debug!(%err, "reading CONNECT line");
                    return;
                }
            };
            let wanted = line
                .strip_prefix("CONNECT ")
                .and_then(|p| p.trim().parse::<u32>().ok());
            if wanted != Some(agent_port) {
                tracing::debug!(line, "CONNECT to a port nobody listens on");
                return;
            }
            if stream
                .write_all(format!("OK {agent_port}\n").as_bytes())
                .await
                .is_err()
            {
                return;
            }
            if let Err(err) = server.serve_connection(stream).await {
                tracing::debug!(error = %crate::error_chain(&err), "connection failed");
            }
        });
    }
}

async fn read_connect_line<S: AsyncRead + Unpin>(stream: &mut S) -> io::Result<String> {
    let mut line = Vec::new();
    loop {
        let byte = stream.read_u8().await?;
        if byte == b'\n' {
            break;
        }
        line.push(byte);
        if line.len() > 64 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "CONNECT line too long",
            ));
        }
    }
    String::from_utf8(line).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

async fn wait_port(port: u16, timeout: Duration) -> ServerMessage {
    let started = Instant::now();
    loop {
        let attempt = tokio::time::timeout(
            Duration::from_secs(1),
            TcpStream::connect((Ipv4Addr::LOCALHOST, port)),
        )
        .await;
        if let Ok(Ok(_stream)) = attempt {
            let waited_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
            return ServerMessage::WaitPortOk { waited_ms };
        }
        if started.elapsed() >= timeout {
            return ServerMessage::Error {
                code: ErrorCode::Timeout,
                message: format!("nothing accepted on 127.0.0.1:{port} within {timeout:?}"),
            };
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn internal_error(err: &(dyn std::error::Error + 'static)) -> ServerMessage {
    ServerMessage::Error {
        code: ErrorCode::Internal,
        message: crate::error_chain(err),
    }
}

async fn read_frame<S>(
    framed: &mut Framed<S, ServerCodec>,
    expected: &'static str,
) -> Result<ClientMessage, ConnectionError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    match tokio::time::timeout(REQUEST_READ_TIMEOUT, framed.next()).await {
        Err(_) => Err(ConnectionError::ReadTimeout {
            expected,
            timeout: REQUEST_READ_TIMEOUT,
        }),
        Ok(None) => Err(ConnectionError::ClosedEarly { expected }),
        Ok(Some(Err(source))) => {
            // Tell the client why before giving up on the connection; ignore a failure to.
            let message = crate::error_chain(&source);
            let _ = framed
                .send(ServerMessage::Error {
                    code: ErrorCode::BadRequest,
                    message,
                })
                .await;
            Err(ConnectionError::Read { expected, source })
        }
        Ok(Some(Ok(msg))) => Ok(msg),
    }
}

async fn send<S>(
    framed: &mut Framed<S, ServerCodec>,
    request: &'static str,
    msg: ServerMessage,
) -> Result<(), ConnectionError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    framed
        .send(msg)
        .await
        .map_err(|source| ConnectionError::Write { request, source })
}

async fn send_error<S>(
    framed: &mut Framed<S, ServerCodec>,
    request: &'static str,
    code: ErrorCode,
    message: String,
) -> Result<(), ConnectionError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    send(framed, request, ServerMessage::Error { code, message }).await
}

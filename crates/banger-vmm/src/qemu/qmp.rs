//! A small client for QEMU's QMP control protocol on a Unix socket.
//!
//! QMP is line-delimited JSON: on connect QEMU sends a greeting (`{"QMP": {...}}`), the client
//! must send `qmp_capabilities` before anything else, then each command gets exactly one reply,
//! `{"return": ...}` or `{"error": {"class", "desc"}}`. Asynchronous events (`{"event": ...}`) may
//! arrive at any time, also between a command and its reply; [`QmpClient`] skips them (logging
//! them at debug level) while it waits for the reply.
//!
//! A client is one connection, used by one task at a time (`&mut self`). QEMU serves one QMP
//! connection per socket at a time and queues the others, so callers open a connection per
//! operation and drop it promptly. Every read is bounded by the timeout given at connect, so a
//! wedged QEMU cannot hang the caller.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;

/// Longest reply line accepted; `query-*` replies of a microvm are a few KiB.
const MAX_LINE: usize = 1 << 20;

/// Why a QMP exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    /// The socket could not be connected.
    #[error("could not connect to QMP socket {socket}")]
    Connect {
        /// The socket.
        socket: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Reading or writing failed mid-conversation.
    #[error("QMP I/O on {socket} during {call}")]
    Io {
        /// The socket.
        socket: PathBuf,
        /// The command in flight (`greeting` before the first).
        call: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// QEMU closed the connection before replying.
    #[error("QMP socket {socket} closed before the reply to {call}")]
    Closed {
        /// The socket.
        socket: PathBuf,
        /// The command in flight.
        call: String,
    },
    /// QEMU sent something that is not QMP.
    #[error("unexpected QMP message on {socket} during {call}: {message}")]
    Protocol {
        /// The socket.
        socket: PathBuf,
        /// The command in flight.
        call: String,
        /// What was wrong, with (the start of) the offending line.
        message: String,
    },
    /// QEMU answered with an error.
    #[error("QMP rejected {call}: {class}: {desc}")]
    Rejected {
        /// The command.
        call: String,
        /// QMP error class (`GenericError`, `CommandNotFound`, ...).
        class: String,
        /// QEMU's description.
        desc: String,
    },
    /// No reply in time.
    #[error("no QMP reply to {call} on {socket} within {timeout:?}")]
    Timeout {
        /// The socket.
        socket: PathBuf,
        /// The command in flight.
        call: String,
        /// The limit.
        timeout: Duration,
    },
}

/// The VM's run state (`query-status`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct QmpStatus {
    /// `running`, `paused`, `shutdown`, `internal-error`, `guest-panicked`, ...
    pub status: String,
    /// Whether the vCPUs are running.
    pub running: bool,
}

/// Block I/O summed over every block device (`query-blockstats`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BlockTotals {
    /// Bytes read.
    pub read_bytes: u64,
    /// Bytes written.
    pub write_bytes: u64,
    /// Read requests.
    pub read_ops: u64,
    /// Write requests.
    pub write_ops: u64,
}

#[derive(Deserialize)]
struct BlockStatsEntry {
    stats: BlockStatsCounters,
}

#[derive(Deserialize)]
struct BlockStatsCounters {
    rd_bytes: u64,
    wr_bytes: u64,
    rd_operations: u64,
    wr_operations: u64,
}

/// One QMP connection, past the capabilities negotiation.
#[derive(Debug)]
pub struct QmpClient {
    socket: PathBuf,
    lines: Lines<BufReader<OwnedReadHalf>>,
    writer: OwnedWriteHalf,
    timeout: Duration,
}

impl QmpClient {
    /// Connects to `socket`, reads the greeting and negotiates capabilities. Every later read is
    /// bounded by `timeout`.
    pub async fn connect(socket: &Path, timeout: Duration) -> Result<Self, QmpError> {
        let stream = match tokio::time::timeout(timeout, UnixStream::connect(socket)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(source)) => {
                return Err(QmpError::Connect {
                    socket: socket.to_path_buf(),
                    source,
                })
            }
            Err(_) => {
                return Err(QmpError::Timeout {
                    socket: socket.to_path_buf(),
                    call: "connect".into(),
                    timeout,
                })
            }
        };
        let (read, writer) = stream.into_split();
        let mut client = Self {
            socket: socket.to_path_buf(),
            lines: BufReader::new(read).lines(),
            writer,
            timeout,
        };
        let greeting = client.read_message("greeting").await?;
        if greeting.get("QMP").is_none() {
            return Err(client.protocol("greeting", "expected {\"QMP\": ...}", &greeting));
        }
        client.execute("qmp_capabilities", None).await?;
        Ok(client)
    }

    /// Runs `command` with optional `arguments` and returns the `return` value.
    pub async fn execute(
        &mut self,
        command: &str,
        arguments: Option<Value>,
    ) -> Result<Value, QmpError> {
        let mut request = json!({ "execute": command });
        if let Some(arguments) = arguments {
            request["arguments"] = arguments;
        }
        let mut line = request.to_string();
        line.push('\n');
        self.writer
            .write_all(line.as_bytes())
            .await
            .map_err(|source| QmpError::Io {
                socket: self.socket.clone(),
                call: command.into(),
                source,
            })?;
        loop {
            let mut message = self.read_message(command).await?;
            if let Some(event) = message.get("event") {
                tracing::debug!(socket = %self.socket.display(), %event, "QMP event while awaiting {command}");
                continue;
            }
            if let Some(value) = message.get_mut("return") {
                return Ok(value.take());
            }
            if let Some(error) = message.get("error") {
                let field = |name: &str| {
                    error
                        .get(name)
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string()
                };
                return Err(QmpError::Rejected {
                    call: command.into(),
                    class: field("class"),
                    desc: field("desc"),
                });
            }
            return Err(self.protocol(command, "neither return, error nor event", &message));
        }
    }

    /// `query-status`.
    pub async fn query_status(&mut self) -> Result<QmpStatus, QmpError> {
        let value = self.execute("query-status", None).await?;
        serde_json::from_value(value.clone())
            .map_err(|e| self.protocol("query-status", &e.to_string(), &value))
    }

    /// `system_powerdown`: presses the ACPI power button. Returns once QEMU has pressed it, not
    /// when the guest has acted on it.
    pub async fn system_powerdown(&mut self) -> Result<(), QmpError> {
        self.execute("system_powerdown", None).await.map(drop)
    }

    /// `quit`: QEMU exits at once, without asking the guest.
    pub async fn quit(&mut self) -> Result<(), QmpError> {
        self.execute("quit", None).await.map(drop)
    }

    /// `query-blockstats`, summed over every block backend.
    pub async fn query_blockstats(&mut self) -> Result<BlockTotals, QmpError> {
        let value = self.execute("query-blockstats", None).await?;
        let entries: Vec<BlockStatsEntry> = serde_json::from_value(value.clone())
            .map_err(|e| self.protocol("query-blockstats", &e.to_string(), &value))?;
        Ok(entries
            .iter()
            .fold(BlockTotals::default(), |sum, entry| BlockTotals {
                read_bytes: sum.read_bytes.saturating_add(entry.stats.rd_bytes),
                write_bytes: sum.write_bytes.saturating_add(entry.stats.wr_bytes),
                read_ops: sum.read_ops.saturating_add(entry.stats.rd_operations),
                write_ops: sum.write_ops.saturating_add(entry.stats.wr_operations),
            }))
    }

    async fn read_message(&mut self, call: &str) -> Result<Value, QmpError> {
        let line = match tokio::time::timeout(self.timeout, self.lines.next_line()).await {
            Err(_) => {
                return Err(QmpError::Timeout {
                    socket: self.socket.clone(),
                    call: call.into(),
                    timeout: self.timeout,
                })
            }
            Ok(Err(source)) => {
                return Err(QmpError::Io {
                    socket: self.socket.clone(),
                    call: call.into(),
                    source,
                })
            }
            Ok(Ok(None)) => {
                return Err(QmpError::Closed {
                    socket: self.socket.clone(),
                    call: call.into(),
                })
            }
            Ok(Ok(Some(line))) => line,
        };
        if line.len() > MAX_LINE {
            return Err(QmpError::Protocol {
                socket: self.socket.clone(),
                call: call.into(),
                message: format!("a {}-byte line", line.len()),
            });
        }
        match serde_json::from_str::<Value>(&line) {
            Ok(value) if value.is_object() => Ok(value),
            Ok(_) | Err(_) => Err(QmpError::Protocol {
                socket: self.socket.clone(),
                call: call.into(),
                message: format!("not a JSON object: {}", truncate(&line)),
            }),
        }
    }

    fn protocol(&self, call: &str, what: &str, message: &Value) -> QmpError {
        QmpError::Protocol {
            socket: self.socket.clone(),
            call: call.into(),
            message: format!("{what}: {}", truncate(&message.to_string())),
        }
    }
}

fn truncate(text: &str) -> String {
    const LIMIT: usize = 200;
    match text.char_indices().nth(LIMIT) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_string(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap: a panic is the failure report
mod tests {
    use super::*;
    use tokio::net::UnixListener;

    const GREETING: &str = r#"{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "Debian"}, "capabilities": []}}"#;

    /// A scripted QMP server: sends the greeting, then for each request line it reads, checks the
    /// command name and sends the scripted reply lines. Returns the commands it saw.
    fn serve(
        script: Vec<(&'static str, Vec<String>)>,
    ) -> (
        tempfile::TempDir,
        PathBuf,
        tokio::task::JoinHandle<Vec<String>>,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let task = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let (read, mut write) = stream.into_split();
            let mut lines = BufReader::new(read).lines();
            write
                .write_all(format!("{GREETING}\n").as_bytes())
                .await
                .unwrap();
            let mut seen = Vec::new();
            for (expected, replies) in script {
                let Some(line) = lines.next_line().await.unwrap() else {
                    break;
                };
                let request: Value = serde_json::from_str(&line).unwrap();
                let command = request["execute"].as_str().unwrap().to_string();
                assert_eq!(command, expected, "request {line}");
                seen.push(line);
                for reply in replies {
                    write
                        .write_all(format!("{reply}\n").as_bytes())
                        .await
                        .unwrap();
                }
            }
            seen
        });
        (dir, path, task)
    }

    fn ok() -> Vec<String> {
        vec![r#"{"return": {}}"#.to_string()]
    }

    const EVENT: &str = r#"{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "RESUME"}"#;

    #[tokio::test]
    async fn connect_negotiates_capabilities_after_the_greeting() {
        let (_dir, path, server) = serve(vec![("qmp_capabilities", ok())]);
        QmpClient::connect(&path, Duration::from_secs(5))
            .await
            .unwrap();
        let seen = server.await.unwrap();
        assert_eq!(seen, [r#"{"execute":"qmp_capabilities"}"#]);
    }

    #[tokio::test]
    async fn events_before_the_reply_are_skipped() {
        let status = r#"{"return": {"status": "running", "singlestep": false, "running": true}}"#;
        let (_dir, path, server) = serve(vec![
            ("qmp_capabilities", ok()),
            (
                "query-status",
                vec![EVENT.into(), EVENT.into(), status.into()],
            ),
        ]);
        let mut client = QmpClient::connect(&path, Duration::from_secs(5))
            .await
            .unwrap();
        let status = client.query_status().await.unwrap();
        assert_eq!(
            status,
            QmpStatus {
                status: "running".into(),
                running: true
            }
        );
        server.await.unwrap();
    }

    #[tokio::test]
    async fn error_reply_is_rejected_with_class_and_description() {
        let error = r#"{"error": {"class": "CommandNotFound", "desc": "The command system_powerdown has not been found"}}"#;
        let (_dir, path, server) = serve(vec![
            ("qmp_capabilities", ok()),
            ("system_powerdown", vec![EVENT.into(), error.into()]),
        ]);
        let mut client = QmpClient::connect(&path, Duration::from_secs(5))
            .await
            .unwrap();
        let err = client.system_powerdown().await.unwrap_err();
        match &err {
            QmpError::Rejected { call, class, desc } => {
                assert_eq!(call, "system_powerdown");
                assert_eq!(class, "CommandNotFound");
                assert!(desc.contains("has not been found"), "{desc}");
            }
            other => panic!("unexpected {other:?}"),
        }
        server.await.unwrap();
    }

    #[tokio::test]
    async fn blockstats_are_summed_over_every_device() {
        let stats = r#"{"return": [
            {"device": "rootfs", "qdev": "/machine/peripheral-anon/device[0]/virtio-backend",
             "stats": {"rd_bytes": 1000, "wr_bytes": 0, "rd_operations": 10, "wr_operations": 0, "flush_operations": 0}},
            {"device": "work", "stats": {"rd_bytes": 24, "wr_bytes": 4096, "rd_operations": 1, "wr_operations": 2}}
        ]}"#
        .replace('\n', " ");
        let (_dir, path, server) = serve(vec![
            ("qmp_capabilities", ok()),
            ("query-blockstats", vec![stats]),
        ]);
        let mut client = QmpClient::connect(&path, Duration::from_secs(5))
            .await
            .unwrap();
        let totals = client.query_blockstats().await.unwrap();
        assert_eq!(
            totals,
            BlockTotals {
                read_bytes: 1024,
                write_bytes: 4096,
                read_ops: 11,
                write_ops: 2
            }
        );
        server.await.unwrap();
    }

    #[tokio::test]
    async fn arguments_are_sent_with_the_command() {
        let (_dir, path, server) = serve(vec![
            ("qmp_capabilities", ok()),
            ("human-monitor-command", ok()),
        ]);
        let mut client = QmpClient::connect(&path, Duration::from_secs(5))
            .await
            .unwrap();
        client
            .execute(
                "human-monitor-command",
                Some(json!({"command-line": "info version"})),
            )
            .await
            .unwrap();
        let seen = server.await.unwrap();
        let request: Value = serde_json::from_str(&seen[1]).unwrap();
        assert_eq!(request["arguments"]["command-line"], "info version");
    }

    #[tokio::test]
    async fn a_server_that_closes_mid_command_is_reported_as_closed() {
        let (_dir, path, server) = serve(vec![("qmp_capabilities", ok()), ("quit", vec![])]);
        let mut client = QmpClient::connect(&path, Duration::from_secs(5))
            .await
            .unwrap();
        let result = client.quit().await;
        server.await.unwrap();
        assert!(
            matches!(result, Err(QmpError::Closed { ref call, .. }) if call == "quit"),
            "{result:?}"
        );
    }

    #[tokio::test]
    async fn a_silent_server_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let server = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(2)).await;
            drop(stream);
        });
        let err = QmpClient::connect(&path, Duration::from_millis(100))
            .await
            .unwrap_err();
        assert!(
            matches!(err, QmpError::Timeout { ref call, .. } if call == "greeting"),
            "{err:?}"
        );
        server.abort();
    }

    #[tokio::test]
    async fn a_non_qmp_greeting_is_a_protocol_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let server = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            stream
                .write_all(b"HTTP/1.1 400 Bad Request\r\n")
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(500)).await;
        });
        let err = QmpClient::connect(&path, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(matches!(err, QmpError::Protocol { .. }), "{err:?}");
        server.abort();
    }

    #[tokio::test]
    async fn a_missing_socket_is_a_connect_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = QmpClient::connect(&dir.path().join("absent.sock"), Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(matches!(err, QmpError::Connect { .. }), "{err:?}");
    }
}

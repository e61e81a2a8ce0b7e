//! The HTTP/JSON client of bangerd's Unix-socket API.
//!
//! One HTTP/1.1 connection per request (the socket is local; connecting costs microseconds),
//! typed bodies from `banger-api`, and [`ClientError`] that keeps the daemon's [`ApiError`]
//! whole so callers branch on its code, never on its text.

use std::path::{Path, PathBuf};

use banger_api::{ApiError, Operation, OperationId};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::net::UnixStream;

/// Why a request did not produce a value.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing answers on the socket (no daemon, or a stale socket file).
    #[error("cannot reach bangerd at {}", socket.display())]
    Unreachable {
        /// The socket tried.
        socket: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The daemon answered with an error body.
    #[error("{}", .0.message)]
    Api(ApiError),
    /// The exchange itself broke (connection reset, unreadable body).
    #[error("talking to bangerd: {0}")]
    Protocol(String),
}

impl ClientError {
    /// Whether the daemon is simply not there (so it can be started).
    pub fn is_unreachable(&self) -> bool {
        matches!(self, ClientError::Unreachable { .. })
    }
}

/// A client of one daemon socket.
#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
}

impl Client {
    /// A client of the daemon listening on `socket`.
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            socket: socket.into(),
        }
    }

    /// The socket path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Sends raw bytes with an explicit content type and returns status and body unparsed
    /// (for tests of malformed input).
    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        let response = self
            .send_with(method, path, content_type, Some(body))
            .await?;
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| ClientError::Protocol(e.to_string()))?
            .to_bytes();
        Ok((status, bytes))
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Response<Incoming>, ClientError> {
        let content_type = body.as_ref().map(|_| "application/json");
        self.send_with(method, path, content_type, body).await
    }

    async fn send_with(
        &self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        body: Option<Vec<u8>>,
    ) -> Result<Response<Incoming>, ClientError> {
        let stream =
            UnixStream::connect(&self.socket)
                .await
                .map_err(|source| ClientError::Unreachable {
                    socket: self.socket.clone(),
                    source,
                })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "bangerd");
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        let request = request
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        sender
            .send_request(request)
            .await
            .map_err(|e| ClientError::Protocol(e.to_string()))
    }

    /// Sends a request and decodes a JSON answer (or the daemon's error).
    pub async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&(impl Serialize + ?Sized)>,
    ) -> Result<T, ClientError> {
        let body = match body {
            Some(value) => {
                Some(serde_json::to_vec(value).map_err(|e| ClientError::Protocol(e.to_string()))?)
            }
            None => None,
        };
        let response = self.send(method, path, body).await?;
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| ClientError::Protocol(e.to_string()))?
            .to_bytes();
        decode(status, &bytes)
    }

    /// `GET path`.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.call(Method::GET, path, None::<&()>).await
    }

    /// `GET path` and hands every chunk of the body to `on_chunk` as it arrives (a followed
    /// log); returns when the daemon ends the body.
    pub async fn stream(
        &self,
        path: &str,
        mut on_chunk: impl FnMut(&[u8]),
    ) -> Result<(), ClientError> {
        let response = self.send(Method::GET, path, None).await?;
        let status = response.status();
        if !status.is_success() {
            let bytes = response
                .into_body()
                .collect()
                .await
                .map_err(|e| ClientError::Protocol(e.to_string()))?;
            return decode(status, &bytes.to_bytes());
        }
        let mut body = response.into_body();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| ClientError::Protocol(e.to_string()))?;
            if let Some(data) = frame.data_ref() {
                on_chunk(data);
            }
        }
        Ok(())
    }

    /// Follows an operation's event stream, calling `on_update` with every snapshot, and
    /// returns the final one.
    pub async fn follow(
        &self,
        id: OperationId,
        mut on_update: impl FnMut(&Operation),
    ) -> Result<Operation, ClientError> {
        let response = self
            .send(Method::GET, &format!("/v1/operations/{id}/events"), None)
            .await?;
        let status = response.status();
        if !status.is_success() {
            let bytes = response
                .into_body()
                .collect()
                .await
                .map_err(|e| ClientError::Protocol(e.to_string()))?;
            return decode(status, &bytes.to_bytes());
        }
        let mut body = response.into_body();
        let mut parser = SseParser::default();
        let mut last = None;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| ClientError::Protocol(e.to_string()))?;
            let Some(data) = frame.data_ref() else {
                continue;
            };
            for event in parser.push(data) {
                if event.name == "operation" {
                    let op: Operation = serde_json::from_str(&event.data)
                        .map_err(|e| ClientError::Protocol(e.to_string()))?;
                    on_update(&op);
                    let finished = op.is_finished();
                    last = Some(op);
                    if finished {
                        return last.ok_or_else(|| ClientError::Protocol("empty stream".into()));
                    }
                }
            }
        }
        // The stream ended early (daemon restarted?): fall back to one poll.
        match last {
            Some(op) if op.is_finished() => Ok(op),
            _ => self.get(&format!("/v1/operations/{id}")).await,
        }
    }
}

fn decode<T: DeserializeOwned>(status: StatusCode, bytes: &[u8]) -> Result<T, ClientError> {
    if status.is_success() {
        let bytes = if bytes.is_empty() {
            b"null".as_slice()
        } else {
            bytes
        };
        serde_json::from_slice(bytes)
            .map_err(|e| ClientError::Protocol(format!("unexpected answer ({status}): {e}")))
    } else {
        match serde_json::from_slice::<ApiError>(bytes) {
            Ok(api) => Err(ClientError::Api(api)),
            Err(_) => Err(ClientError::Protocol(format!(
                "HTTP {status}: {}",
                String::from_utf8_lossy(bytes)
                    .chars()
                    .take(200)
                    .collect::<String>()
            ))),
        }
    }
}

/// One server-sent event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// `event:` field (`message` when absent).
    pub name: String,
    /// `data:` lines joined with `\n`.
    pub data: String,
}

/// Incremental parser of a `text/event-stream` body.
#[derive(Debug, Default)]
pub struct SseParser {
    buffer: String,
}

impl SseParser {
    /// Feeds bytes; returns the events completed by them.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<SseEvent> {
        self.buffer.push_str(&String::from_utf8_lossy(bytes));
        let mut events = Vec::new();
        while let Some(end) = self.buffer.find("\n\n") {
            let block: String = self.buffer.drain(..end + 2).collect();
            let mut name = String::from("message");
            let mut data: Vec<&str> = Vec::new();
            for line in block.lines() {
                if let Some(value) = line.strip_prefix("event:") {
                    name = value.trim_start().to_string();
                } else if let Some(value) = line.strip_prefix("data:") {
                    data.push(value.strip_prefix(' ').unwrap_or(value));
                }
            }
            if !data.is_empty() {
                events.push(SseEvent {
                    name,
                    data: data.join("\n"),
                });
            }
        }
        events
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_parser_handles_split_frames_comments_and_multiline_data() {
        let mut parser = SseParser::default();
        assert!(parser.push(b"event: operation\ndata: {\"a\":").is_empty());
        let events = parser.push(b"1}\n\n: keep-alive\n\ndata: x\ndata: y\n\n");
        assert_eq!(
            events,
            vec![
                SseEvent {
                    name: "operation".into(),
                    data: "{\"a\":1}".into()
                },
                SseEvent {
                    name: "message".into(),
                    data: "x\ny".into()
                },
            ]
        );
    }
}

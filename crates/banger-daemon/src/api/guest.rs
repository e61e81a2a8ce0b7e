//! Routes that reach inside a running guest through its agent: exec (WebSocket), file put/get
//! (streamed bodies), the SSH host key, and a WebSocket byte pipe to a guest TCP port (the
//! transport of `banger vm ssh`, so SSH needs no NIC and works inside a network namespace).
//!
//! Each request resolves the VM, checks it runs (409 otherwise, before any upgrade), and opens
//! its own [`AgentClient`] on the VM's vsock socket. The handlers only proxy: the agent does
//! the work, and its errors come back as API errors (`not_found` → 404, `bad_request` → 400).
//! A WebSocket session runs two halves concurrently — client → agent and agent → client —
//! so neither direction can stall the other; when one ends the other is dropped, which closes
//! the agent connection (and kills an exec'd process group). Malformed client messages end
//! the session with an error message, never a panic.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body as HttpBody;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::Response;
use axum::routing::get;
use axum::{Json, Router};
use banger_agent::client::{AgentClient, AgentError, AgentErrorKind};
use banger_agent::protocol::{ErrorCode as AgentCode, AGENT_PORT};
use banger_agent::{ExecEvent as AgentEvent, ExecRequest, FilePutRequest, TtySize};
use banger_api::guest::{
    parse_mode, ExecControl, ExecEvent, ExecStart, FileWritten, SshHostKey, FILE_MODE_HEADER,
    MAX_FILE_BYTES, STREAM_STDERR, STREAM_STDIN, STREAM_STDOUT,
};
use banger_api::{ApiError, ErrorCode, VmState};
use futures::stream::SplitSink;
use futures::{SinkExt, StreamExt, TryStreamExt};
use serde::Deserialize;
use tokio::sync::Mutex;
use utoipa::OpenApi;

use super::{failure, ApiResult, AppState, Failure, Params};

/// How long opening the agent connection of a running VM may take.
const AGENT_CONNECT: Duration = Duration::from_secs(5);

/// The OpenAPI fragment of these routes.
#[derive(Debug, OpenApi)]
#[openapi(
    paths(exec, put_file, get_file, ssh_host_key, connect),
    components(schemas(
        ExecStart,
        ExecControl,
        ExecEvent,
        banger_api::guest::TermSize,
        SshHostKey,
        FileWritten
    ))
)]
pub struct Doc;

/// Routes of this module, for the OpenAPI completeness test.
pub const ROUTES: &[(&str, &str)] = &[
    ("get", "/v1/vms/{vm}/exec"),
    ("put", "/v1/vms/{vm}/files"),
    ("get", "/v1/vms/{vm}/files"),
    ("get", "/v1/vms/{vm}/ssh-host-key"),
    ("get", "/v1/vms/{vm}/connect/{port}"),
];

/// The routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/vms/{vm}/exec", get(exec))
        .route(
            "/v1/vms/{vm}/files",
            get(get_file)
                .put(put_file)
                // Files stream through; the API's small JSON body limit does not apply.
                .layer(DefaultBodyLimit::disable()),
        )
        .route("/v1/vms/{vm}/ssh-host-key", get(ssh_host_key))
        .route("/v1/vms/{vm}/connect/{port}", get(connect))
}

/// Resolves `vm`, checks that it runs, and opens its agent.
async fn running_agent(state: &AppState, vm: &str) -> Result<AgentClient, Failure> {
    let record = state.manager.resolve_vm(vm)?;
    let not_running = || {
        failure(
            ErrorCode::Conflict,
            format!(
                "VM {} is {}; it must be running (banger vm start {})",
                record.name, record.state, record.name
            ),
        )
    };
    if record.state != VmState::Running {
        return Err(not_running());
    }
    let handles = state
        .manager
        .runtime_handles(record.id)
        .ok_or_else(not_running)?;
    AgentClient::connect(&handles.vmm.vsock_uds, AGENT_PORT, AGENT_CONNECT)
        .await
        .map_err(|err| {
            let prefix = format!("the guest agent of {} does not answer", record.name);
            Failure(prefixed(ErrorCode::Internal, &prefix, &err))
        })
}

/// `err` as an API error whose message starts with `prefix`.
fn prefixed(code: ErrorCode, prefix: &str, err: &(dyn std::error::Error + 'static)) -> ApiError {
    let mut api = ApiError::from_error(code, err);
    api.message = format!("{prefix}: {}", api.message);
    api
}

/// The API error for a failed agent request.
fn agent_error(err: &AgentError) -> ApiError {
    let code = match err.kind() {
        AgentErrorKind::Remote { code, .. } => match code {
            AgentCode::NotFound => ErrorCode::NotFound,
            AgentCode::BadRequest => ErrorCode::InvalidInput,
            _ => ErrorCode::Internal,
        },
        _ => ErrorCode::Internal,
    };
    let mut api = ApiError::from_error(code, err);
    // The agent's own words say what went wrong; lead with them.
    if let AgentErrorKind::Remote { message, .. } = err.kind() {
        api.message = message.clone();
    }
    api
}

/// `?path=/abs/path[&mode=0644]`
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct FileQuery {
    /// Absolute path in the guest.
    pub path: String,
    /// Octal mode for a put (default 0644).
    #[serde(default)]
    pub mode: Option<String>,
}

fn absolute_path(path: &str) -> Result<(), Failure> {
    if !path.starts_with('/') {
        return Err(Failure(
            ApiError::new(
                ErrorCode::InvalidInput,
                format!("path {path:?} must be absolute (start with /)"),
            )
            .with_field("path"),
        ));
    }
    if path.ends_with('/') || path.split('/').any(|part| part == "..") {
        return Err(Failure(
            ApiError::new(
                ErrorCode::InvalidInput,
                format!("path {path:?} must name a file, without `..`"),
            )
            .with_field("path"),
        ));
    }
    Ok(())
}

/// Writes the request body to a file in the guest (atomically: temp file + rename).
#[utoipa::path(put, path = "/v1/vms/{vm}/files", params(("vm" = String, Path), FileQuery),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 200, body = FileWritten), (status = 400, body = ApiError),
        (status = 404, body = ApiError, description = "no such VM, or the directory does not exist"),
        (status = 409, body = ApiError, description = "VM not running"), (status = 413, body = ApiError)))]
async fn put_file(
    State(state): State<AppState>,
    Path(vm): Path<String>,
    Params(query): Params<FileQuery>,
    headers: HeaderMap,
    body: HttpBody,
) -> ApiResult<Json<FileWritten>> {
    state.manager.resolve_vm(&vm)?;
    absolute_path(&query.path)?;
    let mode = match &query.mode {
        Some(text) => parse_mode(text).map_err(|message| {
            Failure(ApiError::new(ErrorCode::InvalidInput, message).with_field("mode"))
        })?,
        None => 0o644,
    };
    let announced = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|len| len > MAX_FILE_BYTES) {
        return Err(too_large());
    }
    let agent = running_agent(&state, &vm).await?;
    let mut seen: u64 = 0;
    let stream = body.into_data_stream().map(move |chunk| {
        let chunk = chunk.map_err(std::io::Error::other)?;
        seen += chunk.len() as u64;
        if seen > MAX_FILE_BYTES {
            return Err(std::io::Error::other(format!(
                "the file is larger than {MAX_FILE_BYTES} bytes"
            )));
        }
        Ok::<_, std::io::Error>(chunk)
    });
    let reader = tokio_util::io::StreamReader::new(stream);
    let req = FilePutRequest {
        path: query.path.clone(),
        mode,
        ..FilePutRequest::default()
    };
    let size = agent.put_file(req, reader).await.map_err(|err| {
        if let AgentErrorKind::LocalRead(source) = err.kind() {
            if source.to_string().contains("larger than") {
                return too_large();
            }
            return Failure(prefixed(
                ErrorCode::InvalidInput,
                "reading the request body",
                &err,
            ));
        }
        Failure(agent_error(&err))
    })?;
    Ok(Json(FileWritten {
        path: query.path,
        size,
        mode,
    }))
}

fn too_large() -> Failure {
    failure(
        ErrorCode::PayloadTooLarge,
        format!("files larger than {MAX_FILE_BYTES} bytes are refused"),
    )
}

/// Streams a file out of the guest (`Content-Length` and `X-Banger-Mode` set).
#[utoipa::path(get, path = "/v1/vms/{vm}/files", params(("vm" = String, Path), FileQuery),
    responses((status = 200, content_type = "application/octet-stream", body = Vec<u8>,
        headers(("x-banger-mode" = String, description = "octal mode, e.g. 0644"))),
        (status = 400, body = ApiError), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
async fn get_file(
    State(state): State<AppState>,
    Path(vm): Path<String>,
    Params(query): Params<FileQuery>,
) -> ApiResult<Response> {
    state.manager.resolve_vm(&vm)?;
    absolute_path(&query.path)?;
    let agent = running_agent(&state, &vm).await?;
    let download = agent
        .get_file(&query.path)
        .await
        .map_err(|err| Failure(agent_error(&err)))?;
    let info = download.info();
    let chunks = futures::stream::try_unfold(download, |mut download| async move {
        match download.next_chunk().await {
            Ok(Some(chunk)) => Ok(Some((bytes::Bytes::from(chunk), download))),
            Ok(None) => Ok(None),
            Err(err) => {
                tracing::warn!(error = %banger_agent::error_chain(&err), "file download broke off");
                Err(std::io::Error::other(banger_agent::error_chain(&err)))
            }
        }
    });
    let mut response = Response::new(HttpBody::from_stream(chunks.into_stream()));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(info.size));
    if let Ok(mode) = HeaderValue::from_str(&format!("{:04o}", info.mode)) {
        headers.insert(FILE_MODE_HEADER, mode);
    }
    Ok(response)
}

/// The guest's SSH host public key, as its agent reports it.
#[utoipa::path(get, path = "/v1/vms/{vm}/ssh-host-key", params(("vm" = String, Path)),
    responses((status = 200, body = SshHostKey), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
async fn ssh_host_key(
    State(state): State<AppState>,
    Path(vm): Path<String>,
) -> ApiResult<Json<SshHostKey>> {
    let agent = running_agent(&state, &vm).await?;
    let key = agent
        .host_key()
        .await
        .map_err(|err| Failure(agent_error(&err)))?;
    Ok(Json(SshHostKey { key }))
}

fn needs_upgrade(rejection: WebSocketUpgradeRejection) -> Failure {
    failure(
        ErrorCode::InvalidInput,
        format!(
            "this route is a WebSocket; send an upgrade request ({})",
            rejection.body_text()
        ),
    )
}

/// Runs a command in the guest over a WebSocket (see `banger_api::guest` for the messages).
#[utoipa::path(get, path = "/v1/vms/{vm}/exec", params(("vm" = String, Path)),
    responses((status = 101, description = "WebSocket: ExecStart, then stdin/control; output and ExecEvent back"),
        (status = 400, body = ApiError, description = "not a WebSocket upgrade"),
        (status = 404, body = ApiError), (status = 409, body = ApiError, description = "VM not running")))]
async fn exec(
    State(state): State<AppState>,
    Path(vm): Path<String>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> ApiResult<Response> {
    let agent = running_agent(&state, &vm).await?;
    let upgrade = upgrade.map_err(needs_upgrade)?;
    Ok(upgrade.on_upgrade(move |socket| exec_session(socket, agent)))
}

type WsSink = Arc<Mutex<SplitSink<WebSocket, Message>>>;

async fn send_json(sink: &WsSink, value: &impl serde::Serialize) -> bool {
    let Ok(text) = serde_json::to_string(value) else {
        return false;
    };
    sink.lock()
        .await
        .send(Message::Text(text.into()))
        .await
        .is_ok()
}

async fn send_error_and_close(sink: &WsSink, error: ApiError) {
    let _ = send_json(sink, &ExecEvent::Error { error }).await;
    let _ = sink.lock().await.close().await;
}

fn bad_message(message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::InvalidInput, message)
}

async fn exec_session(socket: WebSocket, agent: AgentClient) {
    let (sink, mut incoming) = socket.split();
    let sink: WsSink = Arc::new(Mutex::new(sink));

    let start = match tokio::time::timeout(Duration::from_secs(30), incoming.next()).await {
        Ok(Some(Ok(Message::Text(text)))) => match serde_json::from_str::<ExecStart>(&text) {
            Ok(start) => start,
            Err(err) => {
                let error = bad_message(format!("the first message must be an ExecStart: {err}"));
                return send_error_and_close(&sink, error).await;
            }
        },
        Ok(Some(Ok(_))) => {
            let error = bad_message("the first message must be an ExecStart JSON text message");
            return send_error_and_close(&sink, error).await;
        }
        _ => return,
    };
    if start.argv.is_empty() {
        return send_error_and_close(&sink, bad_message("argv is empty")).await;
    }
    let req = ExecRequest {
        argv: start.argv.clone(),
        env: start.env.into_iter().collect(),
        cwd: start.cwd,
        stdin: start.stdin,
        tty: start.tty.map(|t| TtySize {
            rows: t.rows,
            cols: t.cols,
        }),
        timeout_ms: start.timeout_secs.map(|secs| secs.saturating_mul(1000)),
    };
    let session = match agent.exec(req).await {
        Ok(session) => session,
        Err(err) => {
            // A program that cannot be started answers like a shell: a message on stderr and
            // 127 (not found) or 126 (cannot run), so scripts behave the same in and out.
            if let AgentErrorKind::Remote { code, message } = err.kind() {
                if matches!(code, AgentCode::NotFound | AgentCode::SpawnFailed) {
                    let status = if *code == AgentCode::NotFound {
                        127
                    } else {
                        126
                    };
                    let mut line = vec![STREAM_STDERR];
                    line.extend_from_slice(format!("banger: {message}\n").as_bytes());
                    let _ = sink.lock().await.send(Message::Binary(line.into())).await;
                    let _ = send_json(
                        &sink,
                        &ExecEvent::Exit {
                            code: Some(status),
                            signal: None,
                            timed_out: false,
                        },
                    )
                    .await;
                    let _ = sink.lock().await.close().await;
                    return;
                }
            }
            return send_error_and_close(&sink, agent_error(&err)).await;
        }
    };
    if !send_json(&sink, &ExecEvent::Started { pid: session.pid() }).await {
        return;
    }
    let (mut input, mut events) = session.split();

    // Client -> agent. Returns Err with a reason when the client misbehaved.
    let client_to_agent = async {
        while let Some(msg) = incoming.next().await {
            let msg = match msg {
                Ok(msg) => msg,
                Err(_) => return Ok(()),
            };
            let sent = match msg {
                Message::Binary(data) => match data.split_first() {
                    Some((&STREAM_STDIN, rest)) => input.write_stdin(rest).await,
                    _ => {
                        return Err(bad_message(
                            "binary messages must start with stream id 0 (stdin)",
                        ))
                    }
                },
                Message::Text(text) => match serde_json::from_str::<ExecControl>(&text) {
                    Ok(ExecControl::StdinEof) => input.close_stdin().await,
                    Ok(ExecControl::Resize { rows, cols }) => {
                        input.resize(TtySize { rows, cols }).await
                    }
                    Ok(ExecControl::Signal { signal }) => input.signal(signal).await,
                    Err(err) => return Err(bad_message(format!("invalid control message: {err}"))),
                },
                Message::Close(_) => return Ok(()),
                Message::Ping(_) | Message::Pong(_) => Ok(()),
            };
            if let Err(err) = sent {
                // The agent stopped reading (the process exited): the output side ends it.
                tracing::debug!(error = %banger_agent::error_chain(&err), "exec input ended");
                std::future::pending::<()>().await;
            }
        }
        Ok(())
    };

    // Agent -> client. Returns once the exit status was sent (or the exec broke).
    let agent_to_client = async {
        loop {
            match events.next_event().await {
                Ok(Some(AgentEvent::Stdout(data))) | Ok(Some(AgentEvent::Stderr(data)))
                    if data.is_empty() =>
                {
                    continue
                }
                Ok(Some(AgentEvent::Stdout(data))) => {
                    if !send_stream(&sink, STREAM_STDOUT, &data).await {
                        return;
                    }
                }
                Ok(Some(AgentEvent::Stderr(data))) => {
                    if !send_stream(&sink, STREAM_STDERR, &data).await {
                        return;
                    }
                }
                Ok(Some(AgentEvent::Exit(status))) => {
                    let _ = send_json(
                        &sink,
                        &ExecEvent::Exit {
                            code: status.code,
                            signal: status.signal,
                            timed_out: status.timed_out,
                        },
                    )
                    .await;
                    let _ = sink.lock().await.close().await;
                    return;
                }
                Ok(None) => return,
                Err(err) => {
                    send_error_and_close(&sink, agent_error(&err)).await;
                    return;
                }
            }
        }
    };

    tokio::select! {
        () = agent_to_client => {}
        client = client_to_agent => {
            if let Err(error) = client {
                send_error_and_close(&sink, error).await;
            }
            // The client left or misbehaved: dropping the exec closes the agent connection,
            // and the agent kills the process group.
        }
    }
}

async fn send_stream(sink: &WsSink, stream: u8, data: &[u8]) -> bool {
    let mut message = Vec::with_capacity(data.len() + 1);
    message.push(stream);
    message.extend_from_slice(data);
    sink.lock()
        .await
        .send(Message::Binary(message.into()))
        .await
        .is_ok()
}

/// A byte pipe to TCP `127.0.0.1:{port}` inside the guest, over a WebSocket (Binary messages
/// both ways). `banger vm ssh` uses it as ssh's ProxyCommand transport.
#[utoipa::path(get, path = "/v1/vms/{vm}/connect/{port}", params(("vm" = String, Path), ("port" = u16, Path)),
    responses((status = 101, description = "WebSocket byte pipe"), (status = 400, body = ApiError),
        (status = 404, body = ApiError, description = "no such VM, or nothing listens on the port"),
        (status = 409, body = ApiError)))]
async fn connect(
    State(state): State<AppState>,
    Path((vm, port)): Path<(String, String)>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> ApiResult<Response> {
    let port: u16 = port.parse().map_err(|_| {
        Failure(
            ApiError::new(
                ErrorCode::InvalidInput,
                format!("port {port:?} is not a number from 0 to 65535"),
            )
            .with_field("port"),
        )
    })?;
    let agent = running_agent(&state, &vm).await?;
    let upgrade = upgrade.map_err(needs_upgrade)?;
    let (mut to_guest, mut from_guest) = agent
        .connect_port(port)
        .await
        .map_err(|err| Failure(agent_error(&err)))?;
    Ok(upgrade.on_upgrade(move |socket| async move {
        let (mut sink, mut incoming) = socket.split();
        let upstream = async {
            while let Some(Ok(msg)) = incoming.next().await {
                match msg {
                    Message::Binary(data) => {
                        if to_guest.send(&data).await.is_err() {
                            break;
                        }
                    }
                    Message::Close(_) => break,
                    Message::Text(_) => {
                        tracing::debug!(port, "text message on a port pipe; closing it");
                        break;
                    }
                    Message::Ping(_) | Message::Pong(_) => {}
                }
            }
        };
        let downstream = async {
            loop {
                match from_guest.recv().await {
                    Ok(Some(data)) => {
                        if sink.send(Message::Binary(data.into())).await.is_err() {
                            return;
                        }
                    }
                    Ok(None) => break,
                    Err(err) => {
                        tracing::debug!(port, error = %banger_agent::error_chain(&err), "port pipe broke");
                        break;
                    }
                }
            }
            let _ = sink.close().await;
        };
        tokio::select! {
            () = upstream => {}
            () = downstream => {}
        }
    }))
}

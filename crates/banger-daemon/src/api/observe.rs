//! Observability routes: stats samples, log files, and how to reach the web UI.
//!
//! - `GET /v1/stats`: the latest sample of every running VM (`?last=N` adds history).
//! - `GET /v1/vms/{vm}/stats`: one VM's ring of samples (`?last=N` limits it).
//! - `GET /v1/vms/{vm}/logs`: the last lines of the console or VMM log, then (`follow=true`) a
//!   chunked `text/plain` stream of everything appended while the client stays.
//! - `GET /v1/web`: the web listener's URL and token. Answered on the Unix socket only: the web
//!   listener marks its requests with [`ViaWeb`] and this route refuses them.

use axum::body::Body as HttpBody;
use axum::extract::{Path, State};
use axum::http::{header, Extensions, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use banger_api::{ApiError, ErrorCode, VmStats, WebAccess};
use banger_core::stats::RING_CAPACITY;
use futures::StreamExt;
use serde::Deserialize;
use utoipa::OpenApi;

use super::{failure, ApiResult, AppState, Params};
use crate::logs::{self, LogKind};

/// The OpenAPI fragment of these routes.
#[derive(Debug, OpenApi)]
#[openapi(
    paths(all_stats, vm_stats, vm_logs, web_access),
    components(schemas(VmStats, banger_api::VmStatsSample, WebAccess, LogKind))
)]
pub struct Doc;

/// Routes of this module.
pub const ROUTES: &[(&str, &str)] = &[
    ("get", "/v1/stats"),
    ("get", "/v1/vms/{vm}/stats"),
    ("get", "/v1/vms/{vm}/logs"),
    ("get", "/v1/web"),
];

/// Lines sent before following when `tail` is absent.
pub const DEFAULT_TAIL_LINES: usize = 200;

/// Largest `tail`.
pub const MAX_TAIL_LINES: usize = 100_000;

/// How often a followed log is checked for new bytes.
const FOLLOW_POLL: std::time::Duration = std::time::Duration::from_millis(200);

/// Marks a request that arrived on the web (TCP) listener.
#[derive(Debug, Clone, Copy)]
pub struct ViaWeb;

/// The routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/stats", get(all_stats))
        .route("/v1/vms/{vm}/stats", get(vm_stats))
        .route("/v1/vms/{vm}/logs", get(vm_logs))
        .route("/v1/web", get(web_access))
}

/// `?last=N`.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct StatsQuery {
    /// How many of the newest samples to include (per VM).
    #[serde(default)]
    pub last: Option<usize>,
}

/// Latest stats of every running VM, by name.
#[utoipa::path(get, path = "/v1/stats", params(StatsQuery),
    responses((status = 200, body = Vec<VmStats>), (status = 400, body = ApiError)))]
async fn all_stats(
    State(state): State<AppState>,
    Params(query): Params<StatsQuery>,
) -> Json<Vec<VmStats>> {
    Json(state.stats.all(query.last.unwrap_or(0)))
}

/// One VM's recent samples, oldest first (empty while it is not running).
#[utoipa::path(get, path = "/v1/vms/{vm}/stats", params(("vm" = String, Path), StatsQuery),
    responses((status = 200, body = VmStats), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
async fn vm_stats(
    State(state): State<AppState>,
    Path(vm): Path<String>,
    Params(query): Params<StatsQuery>,
) -> ApiResult<Json<VmStats>> {
    let record = state.manager.resolve_vm(&vm)?;
    Ok(Json(state.stats.get(
        record.id,
        record.name.as_str(),
        query.last.unwrap_or(RING_CAPACITY),
    )))
}

/// `?kind=console|vmm&follow=true&tail=N`.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct LogsQuery {
    /// Which log: `console` (default) or `vmm`.
    #[serde(default)]
    pub kind: LogKind,
    /// Keep the response open and send what is appended.
    #[serde(default)]
    pub follow: bool,
    /// How many of the last lines to send first (default 200).
    #[serde(default)]
    pub tail: Option<usize>,
}

/// A VM's console or VMM log: the last `tail` lines, then, with `follow`, every byte appended
/// until the client disconnects or the VM is deleted.
#[utoipa::path(get, path = "/v1/vms/{vm}/logs", params(("vm" = String, Path), LogsQuery),
    responses((status = 200, description = "the log as text/plain (chunked while following)", content_type = "text/plain"),
        (status = 400, body = ApiError), (status = 404, body = ApiError)))]
async fn vm_logs(
    State(state): State<AppState>,
    Path(vm): Path<String>,
    Params(query): Params<LogsQuery>,
) -> ApiResult<Response> {
    let lines = query.tail.unwrap_or(DEFAULT_TAIL_LINES);
    if lines > MAX_TAIL_LINES {
        return Err(super::Failure(
            ApiError::new(
                ErrorCode::InvalidInput,
                format!("tail must be at most {MAX_TAIL_LINES} lines"),
            )
            .with_field("tail"),
        ));
    }
    let record = state.manager.resolve_vm(&vm)?;
    let path = record.vm_dir.join(query.kind.file_name());
    let (head, offset) = logs::tail(&path, lines).map_err(|err| {
        super::Failure(ApiError::from_error(
            ErrorCode::Internal,
            &LogReadError {
                path: path.clone(),
                source: err,
            },
        ))
    })?;
    let body = if query.follow {
        let first = futures::stream::once(async move { Ok(bytes::Bytes::from(head)) });
        let mut closing = state.closing.clone();
        let closed = async move {
            let _ = closing.wait_for(|closing| *closing).await;
        };
        HttpBody::from_stream(
            first
                .chain(logs::follow(path, offset, FOLLOW_POLL))
                .take_until(closed),
        )
    } else {
        HttpBody::from(head)
    };
    Ok((
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response())
}

/// Reading a log failed.
#[derive(Debug, thiserror::Error)]
#[error("reading {}", path.display())]
struct LogReadError {
    path: std::path::PathBuf,
    #[source]
    source: std::io::Error,
}

/// Where the web UI listens and its token (Unix socket only).
#[utoipa::path(get, path = "/v1/web", responses((status = 200, body = WebAccess),
    (status = 404, body = ApiError, description = "the web UI is disabled, or asked over the web listener")))]
async fn web_access(
    State(state): State<AppState>,
    extensions: Extensions,
) -> ApiResult<Json<WebAccess>> {
    if extensions.get::<ViaWeb>().is_some() {
        return Err(failure(
            ErrorCode::NotFound,
            "the web access token is only given on the Unix socket (`banger web`)",
        ));
    }
    state.web.clone().map(Json).ok_or_else(|| {
        failure(
            ErrorCode::NotFound,
            "the web UI is disabled; set `web.enabled = true` in the config and restart bangerd",
        )
    })
}

//! Operation routes: poll and stream long operations.

use std::convert::Infallible;

use axum::extract::{Path, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::routing::get;
use axum::{Json, Router};
use banger_api::{ApiError, ErrorCode, Operation, OperationId};
use futures::Stream;
use utoipa::OpenApi;

use super::{failure, ApiResult, AppState};

/// The OpenAPI fragment of these routes.
#[derive(Debug, OpenApi)]
#[openapi(paths(list_operations, get_operation, operation_events))]
pub struct Doc;

/// Routes of this module.
pub const ROUTES: &[(&str, &str)] = &[
    ("get", "/v1/operations"),
    ("get", "/v1/operations/{id}"),
    ("get", "/v1/operations/{id}/events"),
];

/// The routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/operations", get(list_operations))
        .route("/v1/operations/{id}", get(get_operation))
        .route("/v1/operations/{id}/events", get(operation_events))
}

/// Recent operations, newest first.
#[utoipa::path(get, path = "/v1/operations", responses((status = 200, body = Vec<Operation>)))]
async fn list_operations(State(state): State<AppState>) -> Json<Vec<Operation>> {
    Json(state.manager.operations().list())
}

fn parse_op_id(id: &str) -> ApiResult<OperationId> {
    id.parse()
        .map_err(|_| failure(ErrorCode::NotFound, format!("no operation `{id}`")))
}

/// One operation's current snapshot.
#[utoipa::path(get, path = "/v1/operations/{id}", params(("id" = String, Path)),
    responses((status = 200, body = Operation), (status = 404, body = ApiError)))]
async fn get_operation(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<Operation>> {
    let id = parse_op_id(&id)?;
    state
        .manager
        .operations()
        .get(id)
        .map(Json)
        .ok_or_else(|| failure(ErrorCode::NotFound, format!("no operation `{id}`")))
}

/// Server-sent events: one `operation` event with the whole snapshot per change; the stream
/// ends after the event that shows the operation finished.
#[utoipa::path(get, path = "/v1/operations/{id}/events", params(("id" = String, Path)),
    responses((status = 200, description = "text/event-stream of `operation` events", content_type = "text/event-stream"), (status = 404, body = ApiError)))]
async fn operation_events(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    let id = parse_op_id(&id)?;
    let rx = state
        .manager
        .operations()
        .subscribe(id)
        .ok_or_else(|| failure(ErrorCode::NotFound, format!("no operation `{id}`")))?;
    let stream = futures::stream::unfold((rx, true, false), |(mut rx, first, done)| async move {
        if done {
            return None;
        }
        if !first {
            // An error means the writer is gone; the snapshot we hold is then final.
            let _ = rx.changed().await;
        }
        let op = rx.borrow_and_update().clone();
        let finished = op.is_finished();
        let event = Event::default()
            .event("operation")
            .json_data(&op)
            .unwrap_or_else(|_| Event::default().comment("unserializable"));
        Some((Ok(event), (rx, false, finished)))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

//! The REST API (`/v1/...`): routes, handlers, error bodies and the OpenAPI document.
//!
//! Handlers are thin: they parse and validate the request shape, call the [`Manager`], and turn
//! its result or [`CoreError`] into JSON. Every failure leaves as an [`ApiError`] body with a
//! machine-readable code, the message and the whole cause chain. Long operations answer
//! `202 Accepted` with an [`Operation`] whose progress is at `/v1/operations/{id}` (poll) and
//! `/v1/operations/{id}/events` (server-sent events).

pub mod daemon;
pub mod guest;
pub mod images;
pub mod observe;
pub mod ops;
pub mod ports;
pub mod vms;

use std::sync::Arc;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use banger_api::{ApiError, ErrorCode, Health, Operation, MAX_BODY_BYTES};
use banger_core::{CoreError, Manager};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use utoipa::OpenApi;

/// Shared state of every handler.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The lifecycle manager.
    pub manager: Manager,
    /// Daemon identity for `/v1/health`.
    pub health: Health,
    /// Asks the daemon to shut down (used by `POST /v1/daemon/stop`).
    pub stop: Arc<tokio::sync::Notify>,
    /// Recent stats samples of running VMs, written by the stats loop.
    pub stats: banger_core::stats::StatsBook,
    /// How to reach the web UI, when it is enabled (`GET /v1/web`).
    pub web: Option<banger_api::WebAccess>,
    /// Becomes `true` when the daemon shuts down (ends followed logs).
    pub closing: tokio::sync::watch::Receiver<bool>,
}

/// An API failure: an [`ApiError`] body with the matching HTTP status.
#[derive(Debug)]
pub struct Failure(pub ApiError);

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.0.code.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if status.is_server_error() {
            tracing::error!(code = %self.0.code, message = %self.0.message, causes = ?self.0.causes, "request failed");
        }
        (status, Json(self.0)).into_response()
    }
}

impl From<CoreError> for Failure {
    fn from(err: CoreError) -> Self {
        Failure(err.to_api())
    }
}

pub(crate) fn failure(code: ErrorCode, message: impl Into<String>) -> Failure {
    Failure(ApiError::new(code, message))
}

/// A JSON body whose rejections are API errors: 415 without `application/json`, 413 above
/// [`MAX_BODY_BYTES`], 400 for syntax errors, unknown fields and wrong types.
#[derive(Debug)]
pub struct Body<T>(pub T);

impl<S, T> FromRequest<S> for Body<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Failure;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(value)) => Ok(Body(value)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

fn json_rejection(rejection: JsonRejection) -> Failure {
    match rejection {
        JsonRejection::MissingJsonContentType(_) => failure(
            ErrorCode::UnsupportedMediaType,
            "the body must be JSON with `Content-Type: application/json`",
        ),
        JsonRejection::JsonDataError(err) => {
            let text = err.body_text();
            let detail = text
                .trim_start_matches("Failed to deserialize the JSON body into the target type: ");
            let mut api = ApiError::new(
                ErrorCode::InvalidInput,
                format!("invalid request body: {detail}"),
            );
            if let Some((field, _)) = detail.split_once(": ") {
                if !field.contains(' ') {
                    api = api.with_field(field);
                }
            }
            Failure(api)
        }
        JsonRejection::JsonSyntaxError(err) => failure(
            ErrorCode::InvalidInput,
            format!("malformed JSON: {}", err.body_text()),
        ),
        other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => failure(
            ErrorCode::PayloadTooLarge,
            format!("the body is larger than {MAX_BODY_BYTES} bytes"),
        ),
        other => failure(ErrorCode::InvalidInput, other.body_text()),
    }
}

/// Query parameters whose rejections are API errors.
#[derive(Debug)]
pub struct Params<T>(pub T);

impl<S, T> FromRequestParts<S> for Params<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Failure;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(value)) => Ok(Params(value)),
            Err(QueryRejection::FailedToDeserializeQueryString(err)) => Err(failure(
                ErrorCode::InvalidInput,
                format!("invalid query: {}", err.body_text()),
            )),
            Err(other) => Err(failure(ErrorCode::InvalidInput, other.body_text())),
        }
    }
}

/// `?force=true` on stop and delete.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ForceQuery {
    /// Skip the graceful path (stop) / stop a running VM first (delete).
    #[serde(default)]
    pub force: bool,
}

/// The schemas every route shares.
#[derive(Debug, OpenApi)]
#[openapi(
    info(
        title = "banger",
        description = "banger daemon API: developer sandboxes as microVMs"
    ),
    components(schemas(
        ApiError,
        ErrorCode,
        Health,
        banger_api::Vm,
        banger_api::CreateVmRequest,
        banger_api::EditVmRequest,
        banger_api::Image,
        Operation,
        banger_api::Stage,
        banger_api::StageStatus,
        banger_api::OperationKind,
        banger_api::OperationStatus,
        banger_api::VmState,
        banger_api::DesiredState,
        banger_api::StageTiming
    ))
)]
struct Schemas;

/// The OpenAPI document: every module's fragment merged, generated from the handlers.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let mut doc = Schemas::openapi();
    doc.merge(daemon::Doc::openapi());
    doc.merge(vms::Doc::openapi());
    doc.merge(images::Doc::openapi());
    doc.merge(ops::Doc::openapi());
    doc.merge(observe::Doc::openapi());
    doc.merge(guest::Doc::openapi());
    doc.merge(ports::Doc::openapi());
    doc
}

/// Every route of the API, for the test that checks the OpenAPI document lists them all.
pub fn all_routes() -> Vec<(&'static str, &'static str)> {
    [
        daemon::ROUTES,
        vms::ROUTES,
        images::ROUTES,
        ops::ROUTES,
        observe::ROUTES,
        guest::ROUTES,
        ports::ROUTES,
    ]
    .concat()
}

/// The whole API router.
pub fn router(state: AppState) -> Router {
    Router::new()
        .merge(daemon::routes())
        .merge(vms::routes())
        .merge(images::routes())
        .merge(ops::routes())
        .merge(observe::routes())
        .merge(guest::routes())
        .merge(ports::routes())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

async fn not_found() -> Failure {
    failure(
        ErrorCode::NotFound,
        "no such route; the API is described at /v1/openapi.json",
    )
}

async fn method_not_allowed() -> Failure {
    failure(
        ErrorCode::MethodNotAllowed,
        "method not allowed on this route",
    )
}

/// What every handler returns.
pub type ApiResult<T> = Result<T, Failure>;

/// `202 Accepted` with the operation to follow.
pub fn accepted(op: Operation) -> (StatusCode, Json<Operation>) {
    (StatusCode::ACCEPTED, Json(op))
}

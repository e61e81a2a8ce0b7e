//! Daemon routes: health, the OpenAPI document, shutdown.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use banger_api::Health;
use utoipa::OpenApi;

use super::AppState;

/// The OpenAPI fragment of these routes.
#[derive(Debug, OpenApi)]
#[openapi(paths(health, openapi_json, stop_daemon))]
pub struct Doc;

/// Routes of this module.
pub const ROUTES: &[(&str, &str)] = &[
    ("get", "/v1/health"),
    ("get", "/v1/openapi.json"),
    ("post", "/v1/daemon/stop"),
];

/// The routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/health", get(health))
        .route("/v1/openapi.json", get(openapi_json))
        .route("/v1/daemon/stop", post(stop_daemon))
}

/// Who is serving.
#[utoipa::path(get, path = "/v1/health", responses((status = 200, body = Health)))]
async fn health(State(state): State<AppState>) -> Json<Health> {
    Json(state.health.clone())
}

/// This document.
#[utoipa::path(get, path = "/v1/openapi.json", responses((status = 200, description = "OpenAPI 3.1 document")))]
async fn openapi_json() -> Json<utoipa::openapi::OpenApi> {
    let mut doc = super::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_string();
    Json(doc)
}

/// Asks the daemon to shut down gracefully. VMs keep running.
#[utoipa::path(post, path = "/v1/daemon/stop", responses((status = 202, description = "shutting down")))]
async fn stop_daemon(State(state): State<AppState>) -> StatusCode {
    state.stop.notify_one();
    StatusCode::ACCEPTED
}

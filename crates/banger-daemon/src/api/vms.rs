//! VM routes: list, create, show, edit, delete, start, stop, restart.

use axum::extract::{Path, State};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use banger_api::{ApiError, CreateVmRequest, EditVmRequest, Operation, Vm};
use utoipa::OpenApi;

use super::{accepted, ApiResult, AppState, Body, ForceQuery, Params};

/// The OpenAPI fragment of these routes.
#[derive(Debug, OpenApi)]
#[openapi(paths(
    list_vms, create_vm, get_vm, edit_vm, delete_vm, start_vm, stop_vm, restart_vm
))]
pub struct Doc;

/// Routes of this module, for the OpenAPI completeness test.
pub const ROUTES: &[(&str, &str)] = &[
    ("get", "/v1/vms"),
    ("post", "/v1/vms"),
    ("get", "/v1/vms/{vm}"),
    ("patch", "/v1/vms/{vm}"),
    ("delete", "/v1/vms/{vm}"),
    ("post", "/v1/vms/{vm}/start"),
    ("post", "/v1/vms/{vm}/stop"),
    ("post", "/v1/vms/{vm}/restart"),
];

/// The routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/vms", get(list_vms).post(create_vm))
        .route("/v1/vms/{vm}", get(get_vm).patch(edit_vm).delete(delete_vm))
        .route("/v1/vms/{vm}/start", post(start_vm))
        .route("/v1/vms/{vm}/stop", post(stop_vm))
        .route("/v1/vms/{vm}/restart", post(restart_vm))
}

/// Every VM.
#[utoipa::path(get, path = "/v1/vms", responses((status = 200, body = Vec<Vm>), (status = 500, body = ApiError)))]
async fn list_vms(State(state): State<AppState>) -> ApiResult<Json<Vec<Vm>>> {
    Ok(Json(state.manager.list_vms()?))
}

/// Creates a VM (and starts it unless `no_start`).
#[utoipa::path(post, path = "/v1/vms", request_body = CreateVmRequest, responses(
    (status = 202, body = Operation, description = "create started; follow the operation"),
    (status = 400, body = ApiError), (status = 404, body = ApiError, description = "no such image"),
    (status = 409, body = ApiError, description = "name taken"), (status = 413, body = ApiError),
    (status = 415, body = ApiError), (status = 422, body = ApiError, description = "host cannot satisfy")
))]
async fn create_vm(
    State(state): State<AppState>,
    Body(req): Body<CreateVmRequest>,
) -> ApiResult<impl IntoResponse> {
    Ok(accepted(state.manager.create_vm(req).await?))
}

/// One VM by id, name or unique name prefix.
#[utoipa::path(get, path = "/v1/vms/{vm}", params(("vm" = String, Path, description = "id, name or unique prefix")),
    responses((status = 200, body = Vm), (status = 404, body = ApiError), (status = 409, body = ApiError, description = "ambiguous prefix")))]
async fn get_vm(State(state): State<AppState>, Path(vm): Path<String>) -> ApiResult<Json<Vm>> {
    Ok(Json(state.manager.get_vm(&vm)?))
}

/// Changes vCPUs, memory or work disk size of a stopped VM.
#[utoipa::path(patch, path = "/v1/vms/{vm}", request_body = EditVmRequest, params(("vm" = String, Path)),
    responses((status = 200, body = Vm), (status = 400, body = ApiError), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
async fn edit_vm(
    State(state): State<AppState>,
    Path(vm): Path<String>,
    Body(req): Body<EditVmRequest>,
) -> ApiResult<Json<Vm>> {
    Ok(Json(state.manager.edit_vm(&vm, req).await?))
}

/// Deletes a VM and everything it owns (`force` stops it first).
#[utoipa::path(delete, path = "/v1/vms/{vm}", params(("vm" = String, Path), ForceQuery),
    responses((status = 202, body = Operation), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
async fn delete_vm(
    State(state): State<AppState>,
    Path(vm): Path<String>,
    Params(query): Params<ForceQuery>,
) -> ApiResult<impl IntoResponse> {
    Ok(accepted(state.manager.delete_vm(&vm, query.force)?))
}

/// Starts a stopped or failed VM.
#[utoipa::path(post, path = "/v1/vms/{vm}/start", params(("vm" = String, Path)),
    responses((status = 202, body = Operation), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
async fn start_vm(
    State(state): State<AppState>,
    Path(vm): Path<String>,
) -> ApiResult<impl IntoResponse> {
    Ok(accepted(state.manager.start_vm(&vm)?))
}

/// Stops a running VM (graceful, then forced after the stop timeout; `force` kills at once).
#[utoipa::path(post, path = "/v1/vms/{vm}/stop", params(("vm" = String, Path), ForceQuery),
    responses((status = 202, body = Operation), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
async fn stop_vm(
    State(state): State<AppState>,
    Path(vm): Path<String>,
    Params(query): Params<ForceQuery>,
) -> ApiResult<impl IntoResponse> {
    Ok(accepted(state.manager.stop_vm(&vm, query.force)?))
}

/// Stops and starts a running VM.
#[utoipa::path(post, path = "/v1/vms/{vm}/restart", params(("vm" = String, Path)),
    responses((status = 202, body = Operation), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
async fn restart_vm(
    State(state): State<AppState>,
    Path(vm): Path<String>,
) -> ApiResult<impl IntoResponse> {
    Ok(accepted(state.manager.restart_vm(&vm)?))
}

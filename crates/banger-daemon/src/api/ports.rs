//! Port-forward routes: list, add and remove the forwards of one VM.
//!
//! A forward is stored with its VM and applied while the VM runs; a host port already taken (by
//! another forward or by any program on the host) is `409 Conflict` and nothing is kept.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{delete, get};
use axum::{Json, Router};
use banger_api::{ApiError, ErrorCode, PortForward, PortProto};
use serde::Deserialize;
use utoipa::OpenApi;

use super::{failure, ApiResult, AppState, Body, Params};

/// The OpenAPI fragment of these routes.
#[derive(Debug, OpenApi)]
#[openapi(
    paths(list_ports, add_port, remove_port),
    components(schemas(PortForward, PortProto))
)]
pub struct Doc;

/// Routes of this module, for the OpenAPI completeness test.
pub const ROUTES: &[(&str, &str)] = &[
    ("get", "/v1/vms/{vm}/ports"),
    ("post", "/v1/vms/{vm}/ports"),
    ("delete", "/v1/vms/{vm}/ports/{host_port}"),
];

/// The routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/vms/{vm}/ports", get(list_ports).post(add_port))
        .route("/v1/vms/{vm}/ports/{host_port}", delete(remove_port))
}

/// `?proto=udp` on delete (TCP when absent).
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ProtoQuery {
    /// `tcp` (default) or `udp`.
    #[serde(default)]
    pub proto: PortProto,
}

/// The forwards of one VM.
#[utoipa::path(get, path = "/v1/vms/{vm}/ports", params(("vm" = String, Path, description = "id, name or unique prefix")),
    responses((status = 200, body = Vec<PortForward>), (status = 404, body = ApiError)))]
async fn list_ports(
    State(state): State<AppState>,
    Path(vm): Path<String>,
) -> ApiResult<Json<Vec<PortForward>>> {
    Ok(Json(state.manager.list_port_forwards(&vm)?))
}

/// Forwards a host port (on the publish address) to a guest port; applied now if the VM runs.
#[utoipa::path(post, path = "/v1/vms/{vm}/ports", request_body = PortForward, params(("vm" = String, Path)),
    responses((status = 201, body = PortForward), (status = 400, body = ApiError), (status = 404, body = ApiError),
        (status = 409, body = ApiError, description = "host port already in use"),
        (status = 422, body = ApiError, description = "VM networking is disabled")))]
async fn add_port(
    State(state): State<AppState>,
    Path(vm): Path<String>,
    Body(forward): Body<PortForward>,
) -> ApiResult<(StatusCode, Json<PortForward>)> {
    let added = state.manager.add_port_forward(&vm, forward).await?;
    Ok((StatusCode::CREATED, Json(added)))
}

/// Stops and forgets one forward; answers the removed forward.
#[utoipa::path(delete, path = "/v1/vms/{vm}/ports/{host_port}", params(("vm" = String, Path), ("host_port" = String, Path), ProtoQuery),
    responses((status = 200, body = PortForward), (status = 400, body = ApiError), (status = 404, body = ApiError)))]
async fn remove_port(
    State(state): State<AppState>,
    Path((vm, host_port)): Path<(String, String)>,
    Params(query): Params<ProtoQuery>,
) -> ApiResult<Json<PortForward>> {
    let port = match host_port.parse::<u16>() {
        Ok(port) if port > 0 => port,
        _ => {
            return Err(failure(
                ErrorCode::InvalidInput,
                format!("`{host_port}` is not a port 1..=65535"),
            ))
        }
    };
    Ok(Json(
        state
            .manager
            .remove_port_forward(&vm, query.proto, port)
            .await?,
    ))
}

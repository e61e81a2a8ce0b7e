//! Image routes: list, show, delete, register, promote, bootstrap, build.
//!
//! Register and promote answer when done (`201`/`200` with the image); bootstrap and build are
//! long operations (`202` with an operation to follow, stages and all).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use banger_api::{
    ApiError, BootstrapImageRequest, BuildImageRequest, Image, Operation, RegisterImageRequest,
};
use utoipa::OpenApi;

use super::{accepted, ApiResult, AppState, Body};

/// The OpenAPI fragment of these routes.
#[derive(Debug, OpenApi)]
#[openapi(
    paths(
        list_images,
        get_image,
        delete_image,
        register_image,
        promote_image,
        bootstrap_image,
        build_image
    ),
    components(schemas(RegisterImageRequest, BootstrapImageRequest, BuildImageRequest))
)]
pub struct Doc;

/// Routes of this module.
pub const ROUTES: &[(&str, &str)] = &[
    ("get", "/v1/images"),
    ("post", "/v1/images"),
    ("get", "/v1/images/{image}"),
    ("delete", "/v1/images/{image}"),
    ("post", "/v1/images/{image}/promote"),
    ("post", "/v1/images/bootstrap"),
    ("post", "/v1/images/build"),
];

/// The routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/images", get(list_images).post(register_image))
        .route("/v1/images/bootstrap", post(bootstrap_image))
        .route("/v1/images/build", post(build_image))
        .route("/v1/images/{image}", get(get_image).delete(delete_image))
        .route("/v1/images/{image}/promote", post(promote_image))
}

/// Every image.
#[utoipa::path(get, path = "/v1/images", responses((status = 200, body = Vec<Image>)))]
async fn list_images(State(state): State<AppState>) -> ApiResult<Json<Vec<Image>>> {
    Ok(Json(state.manager.list_images()?))
}

/// One image by id, name or unique prefix.
#[utoipa::path(get, path = "/v1/images/{image}", params(("image" = String, Path)),
    responses((status = 200, body = Image), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
async fn get_image(
    State(state): State<AppState>,
    Path(image): Path<String>,
) -> ApiResult<Json<Image>> {
    Ok(Json(state.manager.resolve_image(&image)?.to_api()))
}

/// Deletes an image and the files banger keeps for it; refused while a VM uses it.
#[utoipa::path(delete, path = "/v1/images/{image}", params(("image" = String, Path)),
    responses((status = 200, body = Image), (status = 404, body = ApiError), (status = 409, body = ApiError, description = "in use")))]
async fn delete_image(
    State(state): State<AppState>,
    Path(image): Path<String>,
) -> ApiResult<Json<Image>> {
    Ok(Json(state.manager.delete_image(&image)?))
}

/// Registers the user's boot set as an unmanaged image after validating every artifact.
#[utoipa::path(post, path = "/v1/images", request_body = RegisterImageRequest,
    responses((status = 201, body = Image),
        (status = 400, body = ApiError, description = "an artifact is missing or invalid; `field` names it"),
        (status = 409, body = ApiError, description = "name taken")))]
async fn register_image(
    State(state): State<AppState>,
    Body(req): Body<RegisterImageRequest>,
) -> ApiResult<(StatusCode, Json<Image>)> {
    Ok((
        StatusCode::CREATED,
        Json(state.manager.register_image(req).await?),
    ))
}

/// Copies an unmanaged image's files into banger's image store and marks it managed.
#[utoipa::path(post, path = "/v1/images/{image}/promote", params(("image" = String, Path)),
    responses((status = 200, body = Image), (status = 404, body = ApiError)))]
async fn promote_image(
    State(state): State<AppState>,
    Path(image): Path<String>,
) -> ApiResult<Json<Image>> {
    Ok(Json(state.manager.promote_image(&image).await?))
}

/// Builds a Debian image from Debian's packages (debootstrap), as an operation.
#[utoipa::path(post, path = "/v1/images/bootstrap", request_body = BootstrapImageRequest,
    responses((status = 202, body = Operation), (status = 400, body = ApiError),
        (status = 409, body = ApiError), (status = 422, body = ApiError)))]
async fn bootstrap_image(
    State(state): State<AppState>,
    Body(req): Body<BootstrapImageRequest>,
) -> ApiResult<(StatusCode, Json<Operation>)> {
    Ok(accepted(state.manager.bootstrap_image(req)?))
}

/// Builds a new image from a VM of a base image after a script and/or packages, as an
/// operation (an identical earlier build answers at once).
#[utoipa::path(post, path = "/v1/images/build", request_body = BuildImageRequest,
    responses((status = 202, body = Operation), (status = 400, body = ApiError),
        (status = 409, body = ApiError)))]
async fn build_image(
    State(state): State<AppState>,
    Body(req): Body<BuildImageRequest>,
) -> ApiResult<(StatusCode, Json<Operation>)> {
    Ok(accepted(state.manager.build_image(req).await?))
}

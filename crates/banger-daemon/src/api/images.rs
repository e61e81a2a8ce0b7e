//! Image routes.

use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Json, Router};
use banger_api::{ApiError, Image};
use utoipa::OpenApi;

use super::{ApiResult, AppState};

/// The OpenAPI fragment of these routes.
#[derive(Debug, OpenApi)]
#[openapi(paths(list_images, get_image, delete_image))]
pub struct Doc;

/// Routes of this module.
pub const ROUTES: &[(&str, &str)] = &[
    ("get", "/v1/images"),
    ("get", "/v1/images/{image}"),
    ("delete", "/v1/images/{image}"),
];

/// The routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/images", get(list_images))
        .route("/v1/images/{image}", get(get_image).delete(delete_image))
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

/// Deletes an image; refused while a VM uses it.
#[utoipa::path(delete, path = "/v1/images/{image}", params(("image" = String, Path)),
    responses((status = 200, body = Image), (status = 404, body = ApiError), (status = 409, body = ApiError, description = "in use")))]
async fn delete_image(
    State(state): State<AppState>,
    Path(image): Path<String>,
) -> ApiResult<Json<Image>> {
    Ok(Json(state.manager.delete_image(&image)?))
}

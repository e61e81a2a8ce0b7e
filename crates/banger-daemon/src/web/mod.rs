//! The web listener: the web UI's pages and assets, `/metrics`, and the whole API, on loopback
//! TCP behind a per-start token (see [`auth`] and docs/web.md).
//!
//! It exists only when `web.enabled = true`: [`crate::run`] binds it with [`WebListener::bind`]
//! and serves [`router`] beside the Unix socket until the daemon stops. Every request passes
//! `guard_layer` first (Host, token, Origin); requests it lets through are marked
//! [`crate::api::observe::ViaWeb`] so routes meant for the Unix socket only can refuse
//! them. Pages are server-rendered ([`pages`]); one small script and one stylesheet, embedded
//! in the binary, make them live through the public API.

pub mod auth;
pub mod metrics;
pub mod pages;

use std::net::SocketAddr;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::{Json, Router};
use banger_api::{ApiError, ErrorCode, WebAccess};
use serde::Deserialize;

use crate::api::observe::ViaWeb;
use crate::api::{AppState, Params};
use auth::{Denied, Origins, WebToken};

const APP_JS: &str = include_str!("assets/app.js");
const APP_CSS: &str = include_str!("assets/app.css");

/// Content-Security-Policy of every answer: only our own script, styles and connections.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// Why the web listener could not start.
#[derive(Debug, thiserror::Error)]
#[error("binding the web UI listener on {addr}")]
pub struct BindError {
    /// The configured address.
    pub addr: SocketAddr,
    /// Why.
    #[source]
    pub source: std::io::Error,
}

/// A bound web listener and the secret that guards it.
#[derive(Debug)]
pub struct WebListener {
    /// The TCP listener.
    pub listener: tokio::net::TcpListener,
    /// The token of this start.
    pub token: WebToken,
    /// Which names it answers to.
    pub origins: Origins,
    /// What `GET /v1/web` answers.
    pub access: WebAccess,
}

impl WebListener {
    /// Binds `addr` (port 0 picks a free port) and makes a fresh token.
    pub async fn bind(addr: SocketAddr) -> Result<Self, BindError> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| BindError { addr, source })?;
        let local = listener
            .local_addr()
            .map_err(|source| BindError { addr, source })?;
        let token = WebToken::generate();
        let host = if local.ip().is_unspecified() {
            format!("127.0.0.1:{}", local.port())
        } else {
            local.to_string()
        };
        let url = format!("http://{host}");
        let access = WebAccess {
            login_url: format!("{url}/login?token={}", token.as_str()),
            url,
            token: token.as_str().to_string(),
        };
        Ok(Self {
            listener,
            token,
            origins: Origins::for_listener(local),
            access,
        })
    }
}

#[derive(Debug, Clone)]
struct Guard {
    token: WebToken,
    origins: Origins,
}

/// The web listener's router: pages, assets, `/metrics` and the API, all behind `guard_layer`.
pub fn router(state: AppState, token: WebToken, origins: Origins) -> Router {
    let guard = Guard { token, origins };
    let ui = Router::new()
        .route("/", get(pages::vm_list))
        .route("/vms/new", get(pages::create_form))
        .route("/vms/{vm}", get(pages::vm_page))
        .route("/images", get(pages::images_page))
        .route("/metrics", get(metrics_text))
        .route("/assets/app.js", get(app_js))
        .route("/assets/app.css", get(app_css))
        .with_state(state.clone());
    let login = Router::new()
        .route("/login", get(login))
        .with_state(guard.clone());
    ui.merge(login)
        .merge(crate::api::router(state))
        .layer(axum::middleware::from_fn_with_state(guard, guard_layer))
}

/// The Host/token/Origin check of every request (`/login` and `/assets/` need only the Host
/// check), plus the
/// headers that keep pages out of frames and tokens out of referrers.
async fn guard_layer(State(guard): State<Guard>, mut request: Request, next: Next) -> Response {
    // `/login` checks the token itself; the assets are the same for everyone (the sign-in
    // page needs the stylesheet before there is a session).
    let path = request.uri().path();
    let verdict = if path == "/login" || path.starts_with("/assets/") {
        auth::check_host(&guard.origins, request.headers())
    } else {
        auth::check(
            &guard.token,
            &guard.origins,
            request.method(),
            request.headers(),
        )
        .map(|_| ())
    };
    let mut response = match verdict {
        Ok(()) => {
            request.extensions_mut().insert(ViaWeb);
            next.run(request).await
        }
        Err(denied) => refuse(request.uri().path(), &denied),
    };
    let headers = response.headers_mut();
    for (name, value) in [
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::CONTENT_SECURITY_POLICY, CSP),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

/// A refusal: JSON [`ApiError`] for API paths, a short HTML page for a browser.
fn refuse(path: &str, denied: &Denied) -> Response {
    let status = StatusCode::from_u16(denied.status()).unwrap_or(StatusCode::FORBIDDEN);
    if path.starts_with("/v1/") || path == "/metrics" {
        let body = ApiError::new(ErrorCode::Unauthorized, denied.to_string());
        return (status, Json(body)).into_response();
    }
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>banger: sign in</title>\
         <link rel=\"stylesheet\" href=\"/assets/app.css\"></head><body><main class=\"signin\"><h1>banger</h1>\
         <p class=\"error shown\">{}</p><p>Run <code>banger web</code> on the host and open the link it prints \
         (the token changes every time bangerd starts).</p></main></body></html>",
        pages::esc(&denied.to_string())
    );
    (status, Html(html)).into_response()
}

#[derive(Debug, Deserialize)]
struct LoginQuery {
    #[serde(default)]
    token: String,
}

/// `GET /login?token=T`: sets the session cookie and goes to the VM list.
async fn login(State(guard): State<Guard>, Params(query): Params<LoginQuery>) -> Response {
    if !guard.token.matches(&query.token) {
        return refuse("/login", &Denied::NoToken);
    }
    let mut response = Redirect::to("/").into_response();
    if let Ok(cookie) = HeaderValue::from_str(&guard.token.session_cookie()) {
        response.headers_mut().insert(header::SET_COOKIE, cookie);
    }
    response
}

async fn app_js() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        APP_JS,
    )
}

async fn app_css() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], APP_CSS)
}

/// `GET /metrics`.
async fn metrics_text(State(state): State<AppState>) -> Response {
    let vms = state.manager.list_vms().unwrap_or_default();
    let images = state.manager.list_images().map(|i| i.len()).unwrap_or(0);
    let text = metrics::render(&state.health.version, &vms, images, &state.stats.all(0));
    ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], text).into_response()
}

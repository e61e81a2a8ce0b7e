//! Who may use the web listener: the per-start token, the session cookie, and the Host and
//! Origin rules that keep other web sites out.
//!
//! The model (see docs/web.md):
//! - bangerd makes a random [`WebToken`] (32 bytes, hex) at every start. Only the Unix socket
//!   gives it out (`GET /v1/web`, `banger web`), so reaching the token needs the socket's
//!   permissions.
//! - `GET /login?token=T` exchanges it for an `HttpOnly; SameSite=Strict` cookie. Every other
//!   request needs that cookie or `Authorization: Bearer T`.
//! - State-changing requests (anything but GET/HEAD/OPTIONS) carried by the cookie also need an
//!   `Origin` equal to the listener's own origin: a browser attaches cookies by itself, so the
//!   Origin is what proves the page making the request is ours (no CSRF). A bearer token is
//!   never attached by a browser on its own, so bearer requests need no Origin, but a foreign
//!   one is still refused.
//! - The `Host` header must name the listener (`127.0.0.1:PORT` or `localhost:PORT`), which
//!   defeats DNS rebinding; a listener on an unspecified address (`0.0.0.0`, with
//!   `web.allow_remote`) cannot know its names and checks Origin against Host instead.

use std::net::SocketAddr;

use axum::http::{header, HeaderMap, Method};
use rand::RngCore;

/// Name of the session cookie.
pub const COOKIE_NAME: &str = "banger_session";

/// The secret of one daemon start: 64 lowercase hex digits.
#[derive(Clone, PartialEq, Eq)]
pub struct WebToken(String);

impl std::fmt::Debug for WebToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebToken(..)")
    }
}

impl WebToken {
    /// 32 random bytes from the OS, hex-encoded.
    pub fn generate() -> Self {
        let mut bytes = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        Self(bytes.iter().map(|b| format!("{b:02x}")).collect())
    }

    /// The token text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `candidate` is this token, in time independent of where they differ.
    pub fn matches(&self, candidate: &str) -> bool {
        let (a, b) = (self.0.as_bytes(), candidate.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }

    /// The `Set-Cookie` value that logs a browser in.
    pub fn session_cookie(&self) -> String {
        format!(
            "{COOKIE_NAME}={}; HttpOnly; SameSite=Strict; Path=/",
            self.0
        )
    }
}

/// Which names the listener answers to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origins {
    /// Only these `host:port` authorities (Host header and Origin).
    Fixed(Vec<String>),
    /// Any Host; Origin must equal `http://` + Host.
    SameAsHost,
}

impl Origins {
    /// The rules for a listener bound to `addr`.
    pub fn for_listener(addr: SocketAddr) -> Self {
        let port = addr.port();
        if addr.ip().is_unspecified() {
            return Origins::SameAsHost;
        }
        let mut hosts = vec![match addr {
            SocketAddr::V4(v4) => format!("{}:{port}", v4.ip()),
            SocketAddr::V6(v6) => format!("[{}]:{port}", v6.ip()),
        }];
        if addr.ip().is_loopback() {
            hosts.push(format!("localhost:{port}"));
        }
        Origins::Fixed(hosts)
    }
}

/// How a request proved it may be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential {
    /// The session cookie.
    Cookie,
    /// `Authorization: Bearer`.
    Bearer,
}

/// Why a request is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// The Host header names something else (DNS rebinding, or a wrong URL). HTTP 403.
    #[error("this listener does not answer to host `{0}`")]
    WrongHost(String),
    /// No valid cookie or bearer token. HTTP 401.
    #[error("missing or invalid token; run `banger web` for a login link")]
    NoToken,
    /// A state-changing request without our Origin. HTTP 403.
    #[error("cross-origin request refused (Origin: {})", .0.as_deref().unwrap_or("none"))]
    BadOrigin(Option<String>),
}

impl Denied {
    /// The HTTP status to answer with.
    pub fn status(&self) -> u16 {
        match self {
            Denied::NoToken => 401,
            Denied::WrongHost(_) | Denied::BadOrigin(_) => 403,
        }
    }
}

fn header_str(headers: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The session cookie's value, if the request has one.
pub fn cookie_token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE_NAME)
        .map(|(_, value)| value)
}

/// The bearer token, if the request has one.
pub fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    header_str(headers, header::AUTHORIZATION)?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

/// Checks only the Host header (also for `/login`, which needs no token yet).
pub fn check_host(origins: &Origins, headers: &HeaderMap) -> Result<(), Denied> {
    let host = header_str(headers, header::HOST).unwrap_or("");
    match origins {
        Origins::Fixed(hosts) if !hosts.iter().any(|h| h.eq_ignore_ascii_case(host)) => {
            Err(Denied::WrongHost(host.to_string()))
        }
        _ => Ok(()),
    }
}

/// Decides whether a request may be served: Host, then token, then Origin for writes.
pub fn check(
    token: &WebToken,
    origins: &Origins,
    method: &Method,
    headers: &HeaderMap,
) -> Result<Credential, Denied> {
    check_host(origins, headers)?;
    let credential = if bearer_token(headers).is_some_and(|t| token.matches(t)) {
        Credential::Bearer
    } else if cookie_token(headers).is_some_and(|t| token.matches(t)) {
        Credential::Cookie
    } else {
        return Err(Denied::NoToken);
    };
    let origin = header_str(headers, header::ORIGIN);
    let ours = |origin: &str| {
        let Some(authority) = origin.strip_prefix("http://") else {
            return false;
        };
        match origins {
            Origins::Fixed(hosts) => hosts.iter().any(|h| h.eq_ignore_ascii_case(authority)),
            Origins::SameAsHost => header_str(headers, header::HOST)
                .is_some_and(|host| host.eq_ignore_ascii_case(authority)),
        }
    };
    let writes = !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS);
    match origin {
        Some(origin) if !ours(origin) => Err(Denied::BadOrigin(Some(origin.to_string()))),
        None if writes && credential == Credential::Cookie => Err(Denied::BadOrigin(None)),
        _ => Ok(credential),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn token() -> WebToken {
        WebToken("ab".repeat(32))
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        map.insert(header::HOST, HeaderValue::from_static("127.0.0.1:7777"));
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    fn loopback() -> Origins {
        Origins::for_listener("127.0.0.1:7777".parse().unwrap())
    }

    fn cookie() -> String {
        format!("theme=dark; {COOKIE_NAME}={}", "ab".repeat(32))
    }

    #[test]
    fn generated_tokens_are_64_hex_digits_and_differ() {
        let (a, b) = (WebToken::generate(), WebToken::generate());
        assert_eq!(a.as_str().len(), 64);
        assert!(a.as_str().chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
        assert!(a.matches(a.as_str()) && !a.matches(b.as_str()) && !a.matches(""));
        assert_eq!(format!("{a:?}"), "WebToken(..)", "never logged");
    }

    #[test]
    fn session_cookie_is_http_only_and_strict() {
        let cookie = token().session_cookie();
        assert!(cookie.starts_with(&format!("{COOKIE_NAME}={}", "ab".repeat(32))));
        assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"));
    }

    #[test]
    fn requests_without_a_valid_token_are_unauthorized() {
        let t = token();
        for h in [
            headers(&[]),
            headers(&[("cookie", "banger_session=nope")]),
            headers(&[("authorization", "Bearer nope")]),
            headers(&[("authorization", "Basic abab")]),
        ] {
            assert_eq!(
                check(&t, &loopback(), &Method::GET, &h),
                Err(Denied::NoToken)
            );
        }
    }

    #[test]
    fn reads_need_only_the_cookie_or_bearer() {
        let t = token();
        let h = headers(&[("cookie", &cookie())]);
        assert_eq!(
            check(&t, &loopback(), &Method::GET, &h),
            Ok(Credential::Cookie)
        );
        let h = headers(&[("authorization", &format!("Bearer {}", "ab".repeat(32)))]);
        assert_eq!(
            check(&t, &loopback(), &Method::GET, &h),
            Ok(Credential::Bearer)
        );
    }

    #[test]
    fn cookie_writes_need_our_origin() {
        let t = token();
        let ok = headers(&[("cookie", &cookie()), ("origin", "http://127.0.0.1:7777")]);
        assert_eq!(
            check(&t, &loopback(), &Method::POST, &ok),
            Ok(Credential::Cookie)
        );
        let localhost = headers(&[("cookie", &cookie()), ("origin", "http://localhost:7777")]);
        assert!(check(&t, &loopback(), &Method::DELETE, &localhost).is_ok());
        let none = headers(&[("cookie", &cookie())]);
        assert_eq!(
            check(&t, &loopback(), &Method::POST, &none),
            Err(Denied::BadOrigin(None))
        );
        for foreign in [
            "http://evil.example",
            "http://127.0.0.1:8888",
            "https://127.0.0.1:7777",
            "null",
        ] {
            let h = headers(&[("cookie", &cookie()), ("origin", foreign)]);
            assert_eq!(
                check(&t, &loopback(), &Method::PATCH, &h),
                Err(Denied::BadOrigin(Some(foreign.to_string()))),
                "{foreign}"
            );
        }
    }

    #[test]
    fn bearer_writes_need_no_origin_but_refuse_a_foreign_one() {
        let t = token();
        let bearer = format!("Bearer {}", "ab".repeat(32));
        let h = headers(&[("authorization", &bearer)]);
        assert_eq!(
            check(&t, &loopback(), &Method::POST, &h),
            Ok(Credential::Bearer)
        );
        let h = headers(&[
            ("authorization", &bearer),
            ("origin", "http://evil.example"),
        ]);
        assert!(matches!(
            check(&t, &loopback(), &Method::POST, &h),
            Err(Denied::BadOrigin(_))
        ));
    }

    #[test]
    fn a_foreign_host_header_is_refused_before_the_token() {
        let t = token();
        let mut h = headers(&[("cookie", &cookie())]);
        h.insert(
            header::HOST,
            HeaderValue::from_static("rebound.evil.example:7777"),
        );
        assert!(matches!(
            check(&t, &loopback(), &Method::GET, &h),
            Err(Denied::WrongHost(_))
        ));
    }

    #[test]
    fn an_unspecified_listener_compares_origin_with_host() {
        let t = token();
        let any = Origins::for_listener("0.0.0.0:7777".parse().unwrap());
        assert_eq!(any, Origins::SameAsHost);
        let mut h = headers(&[("cookie", &cookie()), ("origin", "http://box.lan:7777")]);
        h.insert(header::HOST, HeaderValue::from_static("box.lan:7777"));
        assert!(check(&t, &any, &Method::POST, &h).is_ok());
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://evil.example"),
        );
        assert!(check(&t, &any, &Method::POST, &h).is_err());
    }
}

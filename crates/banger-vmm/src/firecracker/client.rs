//! A typed client for one Firecracker process's HTTP API on its Unix socket.
//!
//! [`FirecrackerClient`] holds only the socket path and a per-call timeout; every call opens its
//! own HTTP/1.1 connection (hyper's low-level `client::conn::http1` over a tokio `UnixStream`),
//! sends one request and reads one answer. Firecracker serves its API from a single thread, so
//! there is nothing to gain from pooling, and a fresh connection per call means a client can be
//! created from a persisted socket path after a daemon restart and shared freely between tasks
//! (it is `Clone` and stateless).
//!
//! A 2xx answer is success; any other status becomes [`ApiError::Rejected`] carrying
//! Firecracker's `fault_message`. [`ApiError::into_vmm_error`] turns a client error into the
//! crate's [`VmmError`] once the caller knows which VM it was talking to.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{ACCEPT, CONTENT_TYPE, HOST};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::net::UnixStream;

use super::models::{
    ActionType, ApiFault, BootSource, Drive, FirecrackerVersion, InstanceActionInfo, InstanceInfo,
    Logger, MachineConfiguration, Metrics, NetworkInterface, Vm, VmState, Vsock,
};
use crate::{VmmError, VmmKind};

/// How long one API call may take by default. Configuration calls answer in milliseconds;
/// `InstanceStart` loads the kernel and initrd before answering.
pub const DEFAULT_API_TIMEOUT: Duration = Duration::from_secs(30);

/// One API call, as `METHOD /path`, for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiCall {
    /// HTTP method.
    pub method: Method,
    /// Request path.
    pub path: String,
}

impl fmt::Display for ApiCall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.method, self.path)
    }
}

/// Why one API call failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A path parameter (drive or interface id) cannot be put in a URL.
    #[error("{call}: id {id:?} may only hold ASCII letters, digits, '_' and '-'")]
    InvalidId {
        /// The call.
        call: ApiCall,
        /// The offending id.
        id: String,
    },
    /// The socket did not accept a connection (missing, or nobody listening).
    #[error("could not connect to {socket} for {call}")]
    Connect {
        /// The call.
        call: ApiCall,
        /// The API socket.
        socket: PathBuf,
        /// The connect error.
        #[source]
        source: io::Error,
    },
    /// The HTTP exchange broke (connection reset, malformed answer).
    #[error("HTTP exchange for {call} failed")]
    Http {
        /// The call.
        call: ApiCall,
        /// hyper's error.
        #[source]
        source: hyper::Error,
    },
    /// The request could not be built.
    #[error("could not build the request for {call}")]
    Request {
        /// The call.
        call: ApiCall,
        /// The builder's error.
        #[source]
        source: hyper::http::Error,
    },
    /// A request body could not be encoded.
    #[error("could not encode the body of {call}")]
    Encode {
        /// The call.
        call: ApiCall,
        /// serde's error.
        #[source]
        source: serde_json::Error,
    },
    /// Firecracker answered a non-2xx status.
    #[error("{call} was rejected with HTTP {status}: {message}")]
    Rejected {
        /// The call.
        call: ApiCall,
        /// HTTP status.
        status: u16,
        /// Firecracker's `fault_message`, or the raw body when it sent none.
        message: String,
    },
    /// A 2xx answer's body was not the JSON the swagger promises.
    #[error("{call} answered a body that is not the expected JSON: {body:?}")]
    Decode {
        /// The call.
        call: ApiCall,
        /// The body as received (lossy UTF-8).
        body: String,
        /// serde's error.
        #[source]
        source: serde_json::Error,
    },
    /// No answer in time.
    #[error("{call} got no answer within {timeout:?}")]
    Timeout {
        /// The call.
        call: ApiCall,
        /// The limit.
        timeout: Duration,
    },
}

impl ApiError {
    /// The call that failed.
    pub fn call(&self) -> &ApiCall {
        match self {
            ApiError::InvalidId { call, .. }
            | ApiError::Connect { call, .. }
            | ApiError::Http { call, .. }
            | ApiError::Request { call, .. }
            | ApiError::Encode { call, .. }
            | ApiError::Rejected { call, .. }
            | ApiError::Decode { call, .. }
            | ApiError::Timeout { call, .. } => call,
        }
    }

    /// Firecracker's own message when it refused the call.
    pub fn fault_message(&self) -> Option<&str> {
        match self {
            ApiError::Rejected { message, .. } => Some(message),
            _ => None,
        }
    }

    /// The crate error for this failure on VM `vm`, whose API socket is `socket`.
    ///
    /// A refusal becomes [`VmmError::Rejected`], a missing answer [`VmmError::Timeout`], a bad
    /// request [`VmmError::InvalidSpec`], and anything on the wire [`VmmError::Control`] with this
    /// error as its source.
    pub fn into_vmm_error(self, vm: &str, socket: &Path) -> VmmError {
        match self {
            ApiError::Rejected { call, message, .. } => VmmError::Rejected {
                vmm: VmmKind::Firecracker,
                vm: vm.to_string(),
                call: call.to_string(),
                message,
            },
            ApiError::Timeout { call, timeout } => VmmError::Timeout {
                vm: vm.to_string(),
                what: format!("an answer to {call} from {}", socket.display()),
                timeout,
            },
            ApiError::InvalidId { .. } => VmmError::InvalidSpec {
                vm: vm.to_string(),
                reason: self.to_string(),
            },
            other => VmmError::Control {
                vmm: VmmKind::Firecracker,
                vm: vm.to_string(),
                socket: socket.to_path_buf(),
                source: io::Error::other(other),
            },
        }
    }
}

/// Client for one Firecracker API socket. Cheap to clone; holds no connection.
#[derive(Debug, Clone)]
pub struct FirecrackerClient {
    socket: PathBuf,
    timeout: Duration,
}

impl FirecrackerClient {
    /// A client for the API socket at `socket`, with [`DEFAULT_API_TIMEOUT`] per call.
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            socket: socket.into(),
            timeout: DEFAULT_API_TIMEOUT,
        }
    }

    /// The same client with a different per-call timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The API socket path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// `PUT /machine-config`.
    pub async fn put_machine_config(&self, config: &MachineConfiguration) -> Result<(), ApiError> {
        self.put("/machine-config".to_string(), config).await
    }

    /// `PUT /boot-source`.
    pub async fn put_boot_source(&self, boot: &BootSource) -> Result<(), ApiError> {
        self.put("/boot-source".to_string(), boot).await
    }

    /// `PUT /drives/{drive_id}`, the id taken from `drive`.
    pub async fn put_drive(&self, drive: &Drive) -> Result<(), ApiError> {
        let path = id_path("/drives/", &drive.drive_id)?;
        self.put(path, drive).await
    }

    /// `PUT /network-interfaces/{iface_id}`, the id taken from `iface`.
    pub async fn put_network_interface(&self, iface: &NetworkInterface) -> Result<(), ApiError> {
        let path = id_path("/network-interfaces/", &iface.iface_id)?;
        self.put(path, iface).await
    }

    /// `PUT /vsock`.
    pub async fn put_vsock(&self, vsock: &Vsock) -> Result<(), ApiError> {
        self.put("/vsock".to_string(), vsock).await
    }

    /// `PUT /logger`.
    pub async fn put_logger(&self, logger: &Logger) -> Result<(), ApiError> {
        self.put("/logger".to_string(), logger).await
    }

    /// `PUT /metrics`.
    pub async fn put_metrics(&self, metrics: &Metrics) -> Result<(), ApiError> {
        self.put("/metrics".to_string(), metrics).await
    }

    /// `PUT /actions` with `action`.
    pub async fn action(&self, action: ActionType) -> Result<(), ApiError> {
        let body = InstanceActionInfo {
            action_type: action,
        };
        self.put("/actions".to_string(), &body).await
    }

    /// `PATCH /vm`: pause or resume the vCPUs.
    pub async fn patch_vm(&self, state: VmState) -> Result<(), ApiError> {
        let call = ApiCall {
            method: Method::PATCH,
            path: "/vm".to_string(),
        };
        let body = encode(&call, &Vm { state })?;
        self.exchange(call, Some(body)).await.map(drop)
    }

    /// `GET /`: instance id, state and version.
    pub async fn instance_info(&self) -> Result<InstanceInfo, ApiError> {
        self.get("/").await
    }

    /// `GET /version`.
    pub async fn version(&self) -> Result<FirecrackerVersion, ApiError> {
        self.get("/version").await
    }

    async fn put<B: Serialize>(&self, path: String, body: &B) -> Result<(), ApiError> {
        let call = ApiCall {
            method: Method::PUT,
            path,
        };
        let body = encode(&call, body)?;
        self.exchange(call, Some(body)).await.map(drop)
    }

    async fn get<R: DeserializeOwned>(&self, path: &str) -> Result<R, ApiError> {
        let call = ApiCall {
            method: Method::GET,
            path: path.to_string(),
        };
        let body = self.exchange(call.clone(), None).await?;
        serde_json::from_slice(&body).map_err(|source| ApiError::Decode {
            call,
            body: String::from_utf8_lossy(&body).into_owned(),
            source,
        })
    }

    /// Sends one request on a fresh connection and returns the body of a 2xx answer.
    async fn exchange(&self, call: ApiCall, body: Option<Vec<u8>>) -> Result<Bytes, ApiError> {
        let timeout = self.timeout;
        match tokio::time::timeout(timeout, self.exchange_unbounded(&call, body)).await {
            Ok(result) => result,
            Err(_) => Err(ApiError::Timeout { call, timeout }),
        }
    }

    async fn exchange_unbounded(
        &self,
        call: &ApiCall,
        body: Option<Vec<u8>>,
    ) -> Result<Bytes, ApiError> {
        let stream =
            UnixStream::connect(&self.socket)
                .await
                .map_err(|source| ApiError::Connect {
                    call: call.clone(),
                    socket: self.socket.clone(),
                    source,
                })?;
        let http_error = |source| ApiError::Http {
            call: call.clone(),
            source,
        };
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(http_error)?;
        // The connection future drives the socket; it ends once `sender` is dropped. Its own
        // error, if any, also surfaces through `send_request`, so it is not reported twice.
        let driver = tokio::spawn(connection);

        let mut request = Request::builder()
            .method(call.method.clone())
            .uri(call.path.as_str())
            .header(HOST, "localhost")
            .header(ACCEPT, "application/json");
        if body.is_some() {
            request = request.header(CONTENT_TYPE, "application/json");
        }
        let request = request
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|source| ApiError::Request {
                call: call.clone(),
                source,
            })?;
        let outcome = async {
            let response = sender.send_request(request).await.map_err(http_error)?;
            let status = response.status();
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(http_error)?
                .to_bytes();
            Ok::<_, ApiError>((status, body))
        }
        .await;
        drop(sender);
        driver.abort();
        let (status, body) = outcome?;
        if status.is_success() {
            Ok(body)
        } else {
            Err(ApiError::Rejected {
                call: call.clone(),
                status: status.as_u16(),
                message: fault_message(status, &body),
            })
        }
    }
}

fn encode<B: Serialize>(call: &ApiCall, body: &B) -> Result<Vec<u8>, ApiError> {
    serde_json::to_vec(body).map_err(|source| ApiError::Encode {
        call: call.clone(),
        source,
    })
}

/// `prefix` + `id`, refusing ids that would need escaping (Firecracker allows only
/// alphanumerics and `_` anyway, and says so in its own fault message for the rest).
fn id_path(prefix: &str, id: &str) -> Result<String, ApiError> {
    let path = format!("{prefix}{id}");
    let url_safe = !id.is_empty()
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if url_safe {
        Ok(path)
    } else {
        Err(ApiError::InvalidId {
            call: ApiCall {
                method: Method::PUT,
                path,
            },
            id: id.to_string(),
        })
    }
}

/// Firecracker's `fault_message`, or a readable stand-in when the body has none.
fn fault_message(status: StatusCode, body: &[u8]) -> String {
    match serde_json::from_slice::<ApiFault>(body) {
        Ok(ApiFault {
            fault_message: Some(message),
        }) => message,
        _ if body.is_empty() => format!("no fault message ({status})"),
        _ => String::from_utf8_lossy(body).trim().to_string(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap: a panic is the failure report
mod tests {
    use super::*;

    #[test]
    fn fault_message_prefers_firecrackers_text_then_raw_body() {
        assert_eq!(
            fault_message(
                StatusCode::BAD_REQUEST,
                br#"{"fault_message":"Invalid kernel"}"#
            ),
            "Invalid kernel"
        );
        assert_eq!(
            fault_message(StatusCode::INTERNAL_SERVER_ERROR, b"boom\n"),
            "boom"
        );
        assert_eq!(
            fault_message(StatusCode::BAD_REQUEST, b""),
            "no fault message (400 Bad Request)"
        );
    }

    #[test]
    fn ids_that_need_escaping_are_refused_before_sending() {
        assert_eq!(id_path("/drives/", "rootfs_1").unwrap(), "/drives/rootfs_1");
        for bad in ["", "a/b", "a b", "é", "x?y"] {
            let err = id_path("/drives/", bad).unwrap_err();
            assert!(matches!(err, ApiError::InvalidId { .. }), "{bad:?}");
        }
    }

    #[test]
    fn rejection_maps_to_vmm_rejected_with_call_and_message() {
        let err = ApiError::Rejected {
            call: ApiCall {
                method: Method::PUT,
                path: "/boot-source".into(),
            },
            status: 400,
            message: "Invalid kernel".into(),
        };
        let vmm = err.into_vmm_error("vm1", Path::new("/run/x.sock"));
        match vmm {
            VmmError::Rejected {
                vmm,
                vm,
                call,
                message,
            } => {
                assert_eq!(vmm, VmmKind::Firecracker);
                assert_eq!(vm, "vm1");
                assert_eq!(call, "PUT /boot-source");
                assert_eq!(message, "Invalid kernel");
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

//! The error body every failed API call returns.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Machine-readable class of an API error. Clients branch on this, never on the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request was malformed or a value was out of range (HTTP 400).
    InvalidInput,
    /// The body was larger than [`crate::MAX_BODY_BYTES`] (HTTP 413).
    PayloadTooLarge,
    /// The body was not `application/json` (HTTP 415).
    UnsupportedMediaType,
    /// No such VM, image, operation or route (HTTP 404).
    NotFound,
    /// The request conflicts with current state: a duplicate name, a VM in the wrong state,
    /// an image still in use (HTTP 409).
    Conflict,
    /// A name prefix matched more than one object (HTTP 409).
    Ambiguous,
    /// The request needs a resource the host does not have: no VMM binary, not enough memory
    /// or disk (HTTP 422).
    Unsatisfiable,
    /// The method is not allowed on this route (HTTP 405).
    MethodNotAllowed,
    /// Missing or wrong token / origin on the web listener (HTTP 401/403).
    Unauthorized,
    /// The daemon failed while doing what was asked (HTTP 500).
    Internal,
}

impl ErrorCode {
    /// The HTTP status this code travels with.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::InvalidInput => 400,
            ErrorCode::Unauthorized => 401,
            ErrorCode::NotFound => 404,
            ErrorCode::MethodNotAllowed => 405,
            ErrorCode::Conflict | ErrorCode::Ambiguous => 409,
            ErrorCode::PayloadTooLarge => 413,
            ErrorCode::UnsupportedMediaType => 415,
            ErrorCode::Unsatisfiable => 422,
            ErrorCode::Internal => 500,
        }
    }

    /// The snake_case name used on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidInput => "invalid_input",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::UnsupportedMediaType => "unsupported_media_type",
            ErrorCode::NotFound => "not_found",
            ErrorCode::Conflict => "conflict",
            ErrorCode::Ambiguous => "ambiguous",
            ErrorCode::Unsatisfiable => "unsatisfiable",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Internal => "internal",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The body of every non-2xx answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    /// What kind of failure this is.
    pub code: ErrorCode,
    /// One sentence for a human.
    pub message: String,
    /// The chain of underlying causes, outermost first (may be empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub causes: Vec<String>,
    /// The request field the error is about, when there is one (forms show it next to the field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl ApiError {
    /// An error with no causes.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            causes: Vec::new(),
            field: None,
        }
    }

    /// An error built from a Rust error: its `Display` is the message and its `source()` chain
    /// becomes `causes`.
    pub fn from_error(code: ErrorCode, err: &(dyn std::error::Error + 'static)) -> Self {
        let mut causes = Vec::new();
        let mut next = err.source();
        while let Some(cause) = next {
            causes.push(cause.to_string());
            next = cause.source();
        }
        Self {
            code,
            message: err.to_string(),
            causes,
            field: None,
        }
    }

    /// Names the request field this error is about.
    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }
}

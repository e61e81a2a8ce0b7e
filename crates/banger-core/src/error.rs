//! Errors of lifecycle operations, each mapped to one API [`ErrorCode`].

use banger_api::{ErrorCode, InvalidTransition};
use banger_store::StoreError;

use crate::backends::{BoxError, DiskCheckError};

/// Why a lifecycle request failed.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    /// A request value is invalid; nothing was created.
    #[error("invalid {field}: {message}")]
    InvalidInput {
        /// The request field.
        field: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// No object matches the reference.
    #[error("no {kind} matches `{reference}`")]
    NotFound {
        /// `VM`, `image` or `operation`.
        kind: &'static str,
        /// What the user typed.
        reference: String,
    },
    /// A prefix matched several objects.
    #[error("`{reference}` matches several {kind}s: {}", matches.join(", "))]
    Ambiguous {
        /// `VM` or `image`.
        kind: &'static str,
        /// What the user typed.
        reference: String,
        /// The names it matched.
        matches: Vec<String>,
    },
    /// The request conflicts with the object's current state.
    #[error("{0}")]
    Conflict(String),
    /// The host cannot satisfy the request (no VMM, not enough CPUs, memory or disk).
    #[error("{0}")]
    Unsatisfiable(String),
    /// A lifecycle stage failed; everything it and earlier stages built was undone.
    #[error("VM {vm}: {stage} stage failed")]
    Stage {
        /// VM name.
        vm: String,
        /// Stage name.
        stage: &'static str,
        /// The backend's error.
        #[source]
        source: BoxError,
    },
    /// The state machine refused a transition.
    #[error(transparent)]
    Transition(#[from] InvalidTransition),
    /// The database failed.
    #[error("database")]
    Store(#[from] StoreError),
    /// The VM's disks cannot be made or grown as asked; nothing was created or changed.
    #[error(transparent)]
    Disks(#[from] DiskCheckError),
    /// A step of an image operation (register, promote, bootstrap, build, a derived artifact)
    /// failed; nothing half-made was kept.
    #[error("image {image}: {step} failed")]
    Image {
        /// Image name.
        image: String,
        /// What was being done.
        step: &'static str,
        /// Why.
        #[source]
        source: BoxError,
    },
    /// The VM's actor is gone (the VM was deleted meanwhile, or the daemon is shutting down).
    #[error("VM {0} is no longer managed (deleted or daemon shutting down)")]
    ActorGone(String),
}

impl CoreError {
    /// The API error code this error travels with.
    pub fn code(&self) -> ErrorCode {
        match self {
            CoreError::InvalidInput { .. } => ErrorCode::InvalidInput,
            CoreError::NotFound { .. } => ErrorCode::NotFound,
            CoreError::Ambiguous { .. } => ErrorCode::Ambiguous,
            CoreError::Conflict(_) | CoreError::Transition(_) | CoreError::ActorGone(_) => {
                ErrorCode::Conflict
            }
            CoreError::Unsatisfiable(_) => ErrorCode::Unsatisfiable,
            CoreError::Disks(DiskCheckError::BelowSeed { .. }) => ErrorCode::InvalidInput,
            CoreError::Disks(DiskCheckError::NoSpace { .. } | DiskCheckError::Image { .. }) => {
                ErrorCode::Unsatisfiable
            }
            CoreError::Disks(DiskCheckError::Host(_)) => ErrorCode::Internal,
            CoreError::Stage { .. } | CoreError::Image { .. } => ErrorCode::Internal,
            CoreError::Store(StoreError::Conflict { .. })
            | CoreError::Store(StoreError::InUse { .. }) => ErrorCode::Conflict,
            CoreError::Store(StoreError::NotFound { .. }) => ErrorCode::NotFound,
            CoreError::Store(_) => ErrorCode::Internal,
        }
    }

    /// The API error body for this error, cause chain included.
    pub fn to_api(&self) -> banger_api::ApiError {
        let api = banger_api::ApiError::from_error(self.code(), self);
        match self {
            CoreError::InvalidInput { field, .. } => api.with_field(*field),
            CoreError::Disks(DiskCheckError::BelowSeed { .. } | DiskCheckError::NoSpace { .. }) => {
                api.with_field("disk_size_mib")
            }
            _ => api,
        }
    }

    /// The whole chain as one line, for `last_error`.
    pub fn chain(&self) -> String {
        let mut text = self.to_string();
        let mut next = std::error::Error::source(self);
        while let Some(cause) = next {
            text.push_str(": ");
            text.push_str(&cause.to_string());
            next = cause.source();
        }
        text
    }
}

/// `err` and its causes as one line.
pub fn chain_of(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut next = err.source();
    while let Some(cause) = next {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        next = cause.source();
    }
    text
}

//! Wire types of banger's REST API (`/v1/...`).
//!
//! Every client (the `banger` CLI, the web UI, tests) and the daemon share these types, so no
//! client ever parses an error string: errors carry an [`ErrorCode`], names are validated
//! newtypes ([`VmName`]) that cannot exist in an invalid form, and the VM state machine
//! ([`VmState::transition`]) is defined once, here, beside the enum it governs.

pub mod disk;
pub mod error;
pub mod guest;
pub mod image;
pub mod operation;
pub mod port;
pub mod size;
pub mod stats;
pub mod vm;

pub use disk::{RootCloneMethod, RootMode, VmDisk};
pub use error::{ApiError, ErrorCode};
pub use image::{
    BootstrapImageRequest, BuildImageRequest, Image, ImageId, ImageName, RegisterImageRequest,
};
pub use operation::{Operation, OperationId, OperationKind, OperationStatus, Stage, StageStatus};
pub use port::{PortForward, PortProto, PortSpecError};
pub use size::{parse_size_mib, SizeError};
pub use stats::{VmStats, VmStatsSample, WebAccess};
pub use vm::{
    CreateVmRequest, DesiredState, EditVmRequest, InvalidTransition, NameError, StageTiming, Vm,
    VmId, VmName, VmState,
};

/// The API version prefix every route lives under.
pub const API_PREFIX: &str = "/v1";

/// Largest request body the daemon accepts, in bytes.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Answer of `GET /v1/health`: who is serving and since when.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Health {
    /// Version of the daemon binary.
    pub version: String,
    /// Process id of the daemon.
    pub pid: u32,
    /// When the daemon started serving.
    pub started_at: chrono::DateTime<chrono::Utc>,
}

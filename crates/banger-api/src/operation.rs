//! Long operations (create, start, stop, delete, image build): the seed's begin/status flow.
//!
//! A `POST` that starts one answers `202 Accepted` with an [`Operation`]; its progress is polled
//! with `GET /v1/operations/{id}` or streamed as server-sent events from
//! `GET /v1/operations/{id}/events` (one `operation` event with the whole snapshot per change).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::ApiError;

/// An operation's identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(transparent)]
#[schema(value_type = String, format = Uuid)]
pub struct OperationId(pub uuid::Uuid);

impl OperationId {
    /// A fresh random id.
    pub fn new() -> Self {
        Self(uuid::Uuid::new_v4())
    }
}

impl Default for OperationId {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Display for OperationId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::str::FromStr for OperationId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        uuid::Uuid::parse_str(s).map(Self)
    }
}

/// What an operation does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OperationKind {
    /// `vm create`.
    CreateVm,
    /// `vm start`.
    StartVm,
    /// `vm stop`.
    StopVm,
    /// `vm restart`.
    RestartVm,
    /// `vm delete`.
    DeleteVm,
    /// `image bootstrap`.
    BootstrapImage,
    /// `image build`.
    BuildImage,
}

/// Where an operation is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OperationStatus {
    /// Still going.
    Running,
    /// Finished well.
    Succeeded,
    /// Finished with `error` set.
    Failed,
}

/// Where one stage is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StageStatus {
    /// Started, not finished.
    Running,
    /// Finished well.
    Done,
    /// Failed; the operation's `error` says why.
    Failed,
}

/// One timed stage of an operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Stage {
    /// Stage name, e.g. `allocate`, `disks`, `network`, `vmm`, `boot`, `agent`, `services`.
    pub name: String,
    /// Where it is.
    pub status: StageStatus,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// When it ended.
    pub ended_at: Option<DateTime<Utc>>,
    /// `ended_at - started_at` in milliseconds, once ended.
    pub duration_ms: Option<u64>,
    /// A short note (e.g. `tap-pool-3`, `pid 4242`).
    pub detail: Option<String>,
}

/// A long operation and its progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Operation {
    /// Identity.
    pub id: OperationId,
    /// What it does.
    pub kind: OperationKind,
    /// The VM it acts on.
    pub vm_id: Option<crate::VmId>,
    /// That VM's name.
    pub vm_name: Option<String>,
    /// Where it is.
    pub status: OperationStatus,
    /// Stages so far, in order.
    pub stages: Vec<Stage>,
    /// Why it failed.
    pub error: Option<ApiError>,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// When it ended.
    pub ended_at: Option<DateTime<Utc>>,
}

impl Operation {
    /// Whether it has finished, well or not.
    pub fn is_finished(&self) -> bool {
        self.status != OperationStatus::Running
    }
}

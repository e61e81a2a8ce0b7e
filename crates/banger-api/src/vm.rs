//! VMs on the wire: identity, validated names, the state machine, and request bodies.
//!
//! ```text
//!                 +-----------+   --no-start    +---------+
//!   create -----> | creating  |---------------->| stopped |<------------------+
//!                 +-----------+                 +---------+                   |
//!                   |     |                      |   ^    \ delete            |
//!            booted |     | failed        start  |   |     v                  |
//!                   v     v                      v   |   +----------+         |
//!              +---------+    +-------+   +----------+   | deleting |--> gone |
//!              | running |<---| error |   | starting |   +----------+         |
//!              +---------+    +-------+   +----------+        |failed         |
//!               |   ^  ^        ^  ^  |     |     |           v               |
//!          stop |   |  +--------|--|--|-----+     | failed  error             |
//!               v   |  booted   |  |  +--> starting/deleting                  |
//!           +----------+ failed |  |                                          |
//!           | stopping |--------+  +-- VMM died with a failure (running)      |
//!           +----------+------------------------------------------------------+
//! ```
//! The table in [`VmState::can_transition`] is the single source of truth; the diagram is a
//! reading aid.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A VM's stable identity (a UUID), independent of its name.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema,
)]
#[serde(transparent)]
#[schema(value_type = String, format = Uuid)]
pub struct VmId(pub uuid::Uuid);

impl VmId {
    /// A fresh random id.
    pub fn new() -> Self {
        Self(uuid::Uuid::new_v4())
    }
}

impl Default for VmId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for VmId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for VmId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        uuid::Uuid::parse_str(s).map(Self)
    }
}

/// Why a string is not a valid VM name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// Empty string.
    #[error("a name cannot be empty")]
    Empty,
    /// Longer than a DNS label allows.
    #[error("`{0}` is longer than 63 characters")]
    TooLong(String),
    /// A character outside `a-z`, `0-9` and `-`.
    #[error("`{name}` contains `{ch}`: names use lowercase letters, digits and `-` (they are DNS labels)")]
    BadChar {
        /// The whole name.
        name: String,
        /// The first offending character.
        ch: char,
    },
    /// Starts or ends with `-`, or starts with a digit.
    #[error("`{0}` must start with a letter and not end with `-`")]
    BadEdge(String),
}

/// A VM name: a DNS label (lowercase letters, digits, `-`, 1–63 characters, starting with a
/// letter), so `NAME.<domain>` always resolves. A `VmName` that exists is valid.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(try_from = "String", into = "String")]
#[schema(value_type = String, pattern = "^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$")]
pub struct VmName(String);

impl VmName {
    /// Validates `name`.
    pub fn parse(name: &str) -> Result<Self, NameError> {
        if name.is_empty() {
            return Err(NameError::Empty);
        }
        if name.len() > 63 {
            return Err(NameError::TooLong(name.to_string()));
        }
        if let Some(ch) = name
            .chars()
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
        {
            return Err(NameError::BadChar {
                name: name.to_string(),
                ch,
            });
        }
        let first = name.as_bytes()[0];
        if !first.is_ascii_lowercase() || name.ends_with('-') {
            return Err(NameError::BadEdge(name.to_string()));
        }
        Ok(Self(name.to_string()))
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for VmName {
    type Error = NameError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<VmName> for String {
    fn from(value: VmName) -> Self {
        value.0
    }
}

impl fmt::Display for VmName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where a VM is in its life. Changed only through [`VmState::transition`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum VmState {
    /// Being allocated, provisioned and booted for the first time.
    Creating,
    /// The VMM process runs and the guest booted.
    Running,
    /// Shutting down (graceful first, forced after a timeout).
    Stopping,
    /// No VMM process; disks kept.
    Stopped,
    /// Booting again from stopped or error.
    Starting,
    /// Being torn down; the row disappears when done.
    Deleting,
    /// A stage failed; `last_error` says why. Start or delete it.
    Error,
}

/// A transition the state machine does not allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a VM cannot go from {from} to {to}")]
pub struct InvalidTransition {
    /// Current state.
    pub from: VmState,
    /// Requested state.
    pub to: VmState,
}

impl VmState {
    /// Every state, for exhaustive tests and docs.
    pub const ALL: [VmState; 7] = [
        VmState::Creating,
        VmState::Running,
        VmState::Stopping,
        VmState::Stopped,
        VmState::Starting,
        VmState::Deleting,
        VmState::Error,
    ];

    /// Whether `self -> to` is allowed. The one table of the state machine.
    pub fn can_transition(self, to: VmState) -> bool {
        use VmState::*;
        matches!(
            (self, to),
            (Creating, Running | Stopped | Error)
                | (Starting, Running | Stopped | Error)
                | (Running, Stopping | Stopped | Error)
                | (Stopping, Stopped | Error)
                | (Stopped, Starting | Deleting)
                | (Error, Starting | Stopped | Deleting)
                | (Deleting, Error)
        )
    }

    /// Moves to `to` if the table allows it.
    pub fn transition(self, to: VmState) -> Result<VmState, InvalidTransition> {
        if self.can_transition(to) {
            Ok(to)
        } else {
            Err(InvalidTransition { from: self, to })
        }
    }

    /// The snake_case name used on the wire and in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            VmState::Creating => "creating",
            VmState::Running => "running",
            VmState::Stopping => "stopping",
            VmState::Stopped => "stopped",
            VmState::Starting => "starting",
            VmState::Deleting => "deleting",
            VmState::Error => "error",
        }
    }

    /// A state in which a VMM process is expected to exist.
    pub fn has_process(self) -> bool {
        matches!(self, VmState::Running | VmState::Stopping)
    }
}

impl fmt::Display for VmState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for VmState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        VmState::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| format!("unknown VM state `{s}`"))
    }
}

/// What the user last asked a VM to be; the daemon's startup reconcile restores it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DesiredState {
    /// Should have a running VMM.
    Running,
    /// Should not.
    Stopped,
}

impl DesiredState {
    /// The snake_case name used on the wire and in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            DesiredState::Running => "running",
            DesiredState::Stopped => "stopped",
        }
    }
}

impl FromStr for DesiredState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "running" => Ok(DesiredState::Running),
            "stopped" => Ok(DesiredState::Stopped),
            other => Err(format!("unknown desired state `{other}`")),
        }
    }
}

/// How long one stage of the last create or start took.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct StageTiming {
    /// Stage name (`allocate`, `disks`, `network`, `vmm`, `boot`, `agent`, `services`).
    pub stage: String,
    /// Milliseconds.
    pub duration_ms: u64,
}

/// A VM as the API shows it: durable record plus what is known about its process right now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Vm {
    /// Stable identity.
    pub id: VmId,
    /// Unique DNS-label name.
    pub name: VmName,
    /// Id of the image it was created from.
    pub image_id: String,
    /// Name of that image.
    pub image_name: String,
    /// Virtual CPUs.
    pub vcpus: u32,
    /// Guest memory in MiB.
    pub memory_mib: u64,
    /// Work disk size in MiB.
    pub disk_size_mib: u64,
    /// Current state.
    pub state: VmState,
    /// What the user last asked for.
    pub desired_state: DesiredState,
    /// Guest IPv4 address, once allocated.
    pub ip: Option<String>,
    /// Guest MAC address, once allocated.
    pub mac: Option<String>,
    /// vsock context id.
    pub vsock_cid: Option<u32>,
    /// `NAME.<domain>`.
    pub dns_name: Option<String>,
    /// Why the last operation failed, if it did.
    pub last_error: Option<String>,
    /// Stage timings of the last create/start.
    pub stage_timings: Vec<StageTiming>,
    /// Process id of the VMM, when one runs (not durable).
    pub pid: Option<u32>,
    /// Which VMM runs it (`firecracker` or `qemu`), when known.
    pub vmm: Option<String>,
    /// How its writable root is made (from its image).
    #[serde(default)]
    pub root_mode: crate::RootMode,
    /// How a `clone` root was copied, once it exists.
    #[serde(default)]
    pub root_clone_method: Option<crate::RootCloneMethod>,
    /// Its disk files and the space each takes on the host (the ones that exist now).
    #[serde(default)]
    pub disks: Vec<crate::VmDisk>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last change of the durable record.
    pub updated_at: DateTime<Utc>,
}

/// Body of `POST /v1/vms`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateVmRequest {
    /// Name; a readable random name when absent.
    #[serde(default)]
    pub name: Option<String>,
    /// Image name, id or unique prefix; the configured default image when absent.
    #[serde(default)]
    pub image: Option<String>,
    /// Virtual CPUs (config default when absent).
    #[serde(default)]
    pub vcpus: Option<u32>,
    /// Memory in MiB (config default when absent).
    #[serde(default)]
    pub memory_mib: Option<u64>,
    /// Work disk in MiB (config default when absent).
    #[serde(default)]
    pub disk_size_mib: Option<u64>,
    /// Create without starting (`--no-start`).
    #[serde(default)]
    pub no_start: bool,
    /// Port forwards to set up with the VM (`--publish HOST:GUEST`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub publish: Vec<crate::port::PortForward>,
}

/// Body of `PATCH /v1/vms/{vm}`: only while stopped.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EditVmRequest {
    /// New vCPU count.
    #[serde(default)]
    pub vcpus: Option<u32>,
    /// New memory in MiB.
    #[serde(default)]
    pub memory_mib: Option<u64>,
    /// New work disk size in MiB (grow only).
    #[serde(default)]
    pub disk_size_mib: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_dns_labels() {
        assert!(VmName::parse("dev-box-1").is_ok());
        assert!(VmName::parse("a").is_ok());
        assert_eq!(VmName::parse(""), Err(NameError::Empty));
        assert!(matches!(
            VmName::parse("Dev"),
            Err(NameError::BadChar { ch: 'D', .. })
        ));
        assert!(matches!(
            VmName::parse("a_b"),
            Err(NameError::BadChar { ch: '_', .. })
        ));
        assert!(matches!(
            VmName::parse("a.b"),
            Err(NameError::BadChar { ch: '.', .. })
        ));
        assert!(matches!(VmName::parse("-a"), Err(NameError::BadEdge(_))));
        assert!(matches!(VmName::parse("1a"), Err(NameError::BadEdge(_))));
        assert!(matches!(VmName::parse("a-"), Err(NameError::BadEdge(_))));
        assert!(matches!(
            VmName::parse(&"a".repeat(64)),
            Err(NameError::TooLong(_))
        ));
        assert!(VmName::parse(&"a".repeat(63)).is_ok());
    }

    #[test]
    fn names_are_validated_when_deserialized() {
        assert!(serde_json::from_str::<VmName>("\"ok\"").is_ok());
        assert!(serde_json::from_str::<VmName>("\"NOT OK\"").is_err());
    }

    /// Every pair of states, against the table written out by hand.
    #[test]
    fn transition_table_covers_every_pair() {
        use VmState::*;
        let allowed: &[(VmState, VmState)] = &[
            (Creating, Running),
            (Creating, Stopped),
            (Creating, Error),
            (Starting, Running),
            (Starting, Stopped),
            (Starting, Error),
            (Running, Stopping),
            (Running, Stopped),
            (Running, Error),
            (Stopping, Stopped),
            (Stopping, Error),
            (Stopped, Starting),
            (Stopped, Deleting),
            (Error, Starting),
            (Error, Stopped),
            (Error, Deleting),
            (Deleting, Error),
        ];
        for from in VmState::ALL {
            for to in VmState::ALL {
                let expected = allowed.contains(&(from, to));
                let got = from.transition(to);
                assert_eq!(got.is_ok(), expected, "{from} -> {to}");
                if !expected {
                    assert_eq!(got, Err(InvalidTransition { from, to }));
                }
            }
        }
    }

    #[test]
    fn states_round_trip_through_strings() {
        for state in VmState::ALL {
            assert_eq!(state.as_str().parse::<VmState>(), Ok(state));
            assert_eq!(
                serde_json::to_string(&state).unwrap_or_default(),
                format!("\"{state}\"")
            );
        }
    }
}

//! Images on the wire: a named, immutable boot set.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// An image's stable identity.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema,
)]
#[serde(transparent)]
#[schema(value_type = String, format = Uuid)]
pub struct ImageId(pub uuid::Uuid);

impl ImageId {
    /// A fresh random id.
    pub fn new() -> Self {
        Self(uuid::Uuid::new_v4())
    }
}

impl Default for ImageId {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Display for ImageId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::str::FromStr for ImageId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        uuid::Uuid::parse_str(s).map(Self)
    }
}

/// An image name: same rules as a VM name (a DNS label), so both read alike in lists.
pub type ImageName = crate::VmName;

/// An image as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Image {
    /// Stable identity.
    pub id: ImageId,
    /// Unique name.
    pub name: ImageName,
    /// Kernel (ELF vmlinux or bzImage).
    pub kernel_path: String,
    /// Initial ramdisk, if any.
    pub initrd_path: Option<String>,
    /// Kernel modules directory or archive, if any.
    pub modules_path: Option<String>,
    /// Base root filesystem (ext4), shared read-only by every VM of this image.
    pub rootfs_path: String,
    /// Seed of each VM's work disk (ext4), if any.
    pub work_seed_path: Option<String>,
    /// Default kernel command line.
    pub cmdline: String,
    /// Guest TCP ports that must answer before a VM counts as ready.
    pub readiness_ports: Vec<u16>,
    /// Version of the guest agent baked in, if known.
    pub agent_version: Option<String>,
    /// Image this one was built from.
    pub parent_id: Option<ImageId>,
    /// sha256 over the boot set.
    pub sha256: Option<String>,
    /// Whether banger owns the files (in its image store) or points at the user's.
    pub managed: bool,
    /// Sum of the artifacts' sizes in bytes.
    pub size_bytes: u64,
    /// Registration time.
    pub created_at: DateTime<Utc>,
}

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
    /// How its VMs get their writable root: `overlay` (default) or `clone`.
    #[serde(default)]
    pub root_mode: crate::RootMode,
    /// Registration time.
    pub created_at: DateTime<Utc>,
}

/// Body of `POST /v1/images`: register the user's own boot set. Every path must be absolute
/// and readable by the daemon; nothing is recorded unless every artifact validates.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterImageRequest {
    /// Unique name (a DNS label).
    pub name: String,
    /// Kernel: an ELF vmlinux or a bzImage.
    pub kernel: String,
    /// Base root filesystem (ext4).
    pub rootfs: String,
    /// Initial ramdisk.
    #[serde(default)]
    pub initrd: Option<String>,
    /// Kernel modules (directory or archive), kept with the boot set.
    #[serde(default)]
    pub modules: Option<String>,
    /// Seed of each VM's work disk (ext4); an empty one is made the first time a VM needs it.
    #[serde(default)]
    pub work_seed: Option<String>,
    /// Kernel command line (default: `root=/dev/vda ro console=ttyS0`).
    #[serde(default)]
    pub cmdline: Option<String>,
    /// Guest TCP ports that must answer before a VM counts as ready.
    #[serde(default)]
    pub readiness_ports: Vec<u16>,
    /// How VMs get their writable root: `overlay` (default; the image's boot runs banger's
    /// early init) or `clone` (a per-VM reflink/sparse copy of the base, for images that
    /// cannot run banger's early init).
    #[serde(default)]
    pub root_mode: Option<crate::RootMode>,
}

/// Body of `POST /v1/images/bootstrap`: build a Debian image from Debian's packages.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BootstrapImageRequest {
    /// Debian release (default `bookworm`).
    #[serde(default)]
    pub suite: Option<String>,
    /// Image name (default `debian-12` for bookworm, else `debian-<suite>`).
    #[serde(default)]
    pub name: Option<String>,
    /// Extra Debian packages to include.
    #[serde(default)]
    pub packages: Vec<String>,
    /// Optional services to install: `opencode` (the opencode server on port 4096).
    #[serde(default)]
    pub with: Vec<String>,
    /// Size of the base rootfs in MiB (default 2048).
    #[serde(default)]
    pub rootfs_size_mib: Option<u64>,
}

/// Body of `POST /v1/images/build`: a new image from a VM of `from` after a recipe ran in it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BuildImageRequest {
    /// Base image (name, id or unique prefix).
    pub from: String,
    /// Name of the new image.
    pub name: String,
    /// Shell script run as root inside the builder VM (`sh -e`).
    #[serde(default)]
    pub script: Option<String>,
    /// Debian packages installed in the builder VM (downloaded on the host; the VM needs no
    /// network).
    #[serde(default)]
    pub packages: Vec<String>,
    /// Size of the new base rootfs in MiB (default: the base's data plus room to spare).
    #[serde(default)]
    pub rootfs_size_mib: Option<u64>,
}

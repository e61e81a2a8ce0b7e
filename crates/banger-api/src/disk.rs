//! Disks on the wire: how a VM gets its writable root, and what its disk files take on the host.
//!
//! Every VM of an image shares the image's base rootfs read-only. Its own writes go to a per-VM
//! layer made one of two ways ([`RootMode`]): an overlay the guest's early init mounts over the
//! base (the default; creating a VM copies nothing), or, for images that cannot take banger's
//! early init, a whole-file clone of the base ([`RootCloneMethod`]: a reflink where the host
//! filesystem shares extents, else a copy that keeps holes).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// How the VMs of an image get their writable root.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RootMode {
    /// The base attached read-only plus a per-VM sparse ext4 holding an overlayfs upper layer,
    /// mounted by banger's early init in the guest (`banger.overlay=`, `banger.work=`).
    #[default]
    Overlay,
    /// A per-VM copy of the base attached read-write as the root; for images whose boot
    /// cannot run banger's early init.
    Clone,
}

impl RootMode {
    /// The name used on the wire, in the store and in `vm show`.
    pub fn as_str(self) -> &'static str {
        match self {
            RootMode::Overlay => "overlay",
            RootMode::Clone => "clone",
        }
    }
}

impl fmt::Display for RootMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A root mode name that is neither `overlay` nor `clone`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown root mode `{0}`: expected overlay or clone")]
pub struct UnknownRootMode(pub String);

impl FromStr for RootMode {
    type Err = UnknownRootMode;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "overlay" => Ok(RootMode::Overlay),
            "clone" => Ok(RootMode::Clone),
            other => Err(UnknownRootMode(other.to_string())),
        }
    }
}

/// How a [`RootMode::Clone`] root was copied from the base (chosen automatically).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RootCloneMethod {
    /// The host filesystem shares the base's extents (FICLONE): instant, no space until written.
    Reflink,
    /// Data regions copied, holes kept: time and space grow with the base's data.
    SparseCopy,
}

impl RootCloneMethod {
    /// The name used on the wire, in the store and in `vm show`.
    pub fn as_str(self) -> &'static str {
        match self {
            RootCloneMethod::Reflink => "reflink",
            RootCloneMethod::SparseCopy => "sparse_copy",
        }
    }
}

impl fmt::Display for RootCloneMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A clone method name that is neither `reflink` nor `sparse_copy`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown clone method `{0}`: expected reflink or sparse_copy")]
pub struct UnknownCloneMethod(pub String);

impl FromStr for RootCloneMethod {
    type Err = UnknownCloneMethod;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "reflink" => Ok(RootCloneMethod::Reflink),
            "sparse_copy" => Ok(RootCloneMethod::SparseCopy),
            other => Err(UnknownCloneMethod(other.to_string())),
        }
    }
}

/// One disk file of a VM and the space it takes on the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct VmDisk {
    /// What the disk is: `rootfs` (the shared base, read-only), `overlay` (the per-VM
    /// writable root layer), `root` (a per-VM clone of the base) or `work` (`/root`).
    pub name: String,
    /// The file on the host.
    pub path: String,
    /// Whether the VM can write to it.
    pub read_only: bool,
    /// The file's length: the disk size the guest sees.
    pub apparent_bytes: u64,
    /// What the host filesystem really allocated for it (files are sparse).
    pub allocated_bytes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_mode_names_round_trip() {
        for mode in [RootMode::Overlay, RootMode::Clone] {
            assert_eq!(mode.as_str().parse::<RootMode>(), Ok(mode));
            assert_eq!(
                serde_json::to_value(mode).ok(),
                Some(serde_json::json!(mode.as_str()))
            );
        }
        assert!("dm-snapshot".parse::<RootMode>().is_err());
    }

    #[test]
    fn clone_method_names_round_trip() {
        for method in [RootCloneMethod::Reflink, RootCloneMethod::SparseCopy] {
            assert_eq!(method.as_str().parse::<RootCloneMethod>(), Ok(method));
            assert_eq!(
                serde_json::to_value(method).ok(),
                Some(serde_json::json!(method.as_str()))
            );
        }
        assert!("copy".parse::<RootCloneMethod>().is_err());
    }
}

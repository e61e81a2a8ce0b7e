//! The durable rows: what an image and a VM *are*.
//!
//! Nothing transient lives here — no pid, tap, vsock socket or loop device. Those are kernel
//! handles owned by the daemon in memory and in each VM's `handles.json`, rediscovered from the
//! OS at startup. A record is plain data; the store decodes and validates it at the boundary,
//! so a record that exists has valid names, ids and states.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use banger_api::{
    DesiredState, Image, ImageId, ImageName, RootCloneMethod, RootMode, StageTiming, VmId, VmName,
    VmState,
};
use chrono::{DateTime, Utc};

/// A registered image: a named, immutable boot set.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageRecord {
    /// Stable identity.
    pub id: ImageId,
    /// Unique name.
    pub name: ImageName,
    /// Kernel (ELF vmlinux or bzImage).
    pub kernel_path: PathBuf,
    /// Initial ramdisk, if any.
    pub initrd_path: Option<PathBuf>,
    /// Kernel modules directory or archive, if any.
    pub modules_path: Option<PathBuf>,
    /// Base root filesystem, shared read-only by every VM of this image.
    pub rootfs_path: PathBuf,
    /// Seed of each VM's work disk, if any.
    pub work_seed_path: Option<PathBuf>,
    /// Default kernel command line.
    pub cmdline: String,
    /// Guest TCP ports that must answer before a VM counts as ready.
    pub readiness_ports: Vec<u16>,
    /// Version of the guest agent baked in, if known.
    pub agent_version: Option<String>,
    /// Image this one was built from (cleared if that image is deleted).
    pub parent_id: Option<ImageId>,
    /// sha256 over the boot set.
    pub sha256: Option<String>,
    /// Whether banger owns the files.
    pub managed: bool,
    /// Sum of the artifacts' sizes in bytes.
    pub size_bytes: u64,
    /// How its VMs get their writable root.
    pub root_mode: RootMode,
    /// Registration time.
    pub created_at: DateTime<Utc>,
}

impl ImageRecord {
    /// The image as the API shows it.
    pub fn to_api(&self) -> Image {
        Image {
            id: self.id,
            name: self.name.clone(),
            kernel_path: path_text(&self.kernel_path),
            initrd_path: self.initrd_path.as_deref().map(path_text),
            modules_path: self.modules_path.as_deref().map(path_text),
            rootfs_path: path_text(&self.rootfs_path),
            work_seed_path: self.work_seed_path.as_deref().map(path_text),
            cmdline: self.cmdline.clone(),
            readiness_ports: self.readiness_ports.clone(),
            agent_version: self.agent_version.clone(),
            parent_id: self.parent_id,
            sha256: self.sha256.clone(),
            managed: self.managed,
            size_bytes: self.size_bytes,
            root_mode: self.root_mode,
            created_at: self.created_at,
        }
    }
}

/// A VM's durable record: identity, spec, image, derived paths, last known and desired state.
#[derive(Debug, Clone, PartialEq)]
pub struct VmRecord {
    /// Stable identity.
    pub id: VmId,
    /// Unique DNS-label name.
    pub name: VmName,
    /// The image it was created from.
    pub image_id: ImageId,
    /// Virtual CPUs.
    pub vcpus: u32,
    /// Guest memory in MiB.
    pub memory_mib: u64,
    /// Work disk size in MiB.
    pub disk_size_mib: u64,
    /// Last known state.
    pub state: VmState,
    /// What the user last asked for; the startup reconcile restores it.
    pub desired_state: DesiredState,
    /// Guest IPv4 address, once allocated (unique across VMs).
    pub ip: Option<Ipv4Addr>,
    /// Guest MAC address, once allocated (unique across VMs).
    pub mac: Option<String>,
    /// vsock context id, once allocated (unique across VMs, at least 3).
    pub vsock_cid: Option<u32>,
    /// The VM's deterministic directory (disks, logs, `handles.json`).
    pub vm_dir: PathBuf,
    /// Why the last operation failed, if it did.
    pub last_error: Option<String>,
    /// Stage timings of the last create/start.
    pub stage_timings: Vec<StageTiming>,
    /// How its `clone` root was copied from the image's base, once made (`None` for an
    /// overlay root).
    pub root_clone_method: Option<RootCloneMethod>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last change of this record.
    pub updated_at: DateTime<Utc>,
}

/// Paths in records are stored as UTF-8 (the store refuses others), so this is lossless for
/// any record read back from the store.
fn path_text(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

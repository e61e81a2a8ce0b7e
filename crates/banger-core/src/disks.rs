//! Per-VM disks over a shared read-only base: the default [`VmDisks`] implementation.
//!
//! Every VM of an image shares the image's base rootfs, and gets its own writable root layer and
//! work disk, all regular files in the VM's directory. The image's [`RootMode`] says how the
//! root layer is made:
//!
//! ```text
//! overlay (default)                          clone (images that cannot run banger's init)
//!   /dev/vda  base rootfs, read-only, shared   /dev/vda  root.ext4: a per-VM copy of the base,
//!   /dev/vdb  overlay.ext4: sparse ext4 with             reflinked where the host filesystem
//!             upper/ and work/ of overlayfs              can, else copied keeping holes
//!   /dev/vdc  work.ext4 -> /root               /dev/vdb  work.ext4 -> /root
//!   kernel args: banger.overlay=/dev/vdb       kernel args: banger.work=/dev/vdb
//!                banger.work=/dev/vdc
//! ```
//!
//! In overlay mode the guest's early init mounts overlayfs (lower = the base, upper on the
//! per-VM disk) and switches root into it, so creating a VM never reads or copies the base: the
//! overlay is a fresh sparse filesystem whose making costs the same whatever the base's size.
//! The `banger.` prefix matters: the kernel would swallow `overlay.*` arguments as overlayfs
//! module parameters. The work disk is the image's work seed cloned and grown to the VM's
//! `disk_size_mib` (`resize2fs`), or a fresh ext4 when the image has no seed.
//!
//! Ownership: the files belong to the VM. [`OverlayDisks::prepare`] is idempotent (a stopped VM
//! keeps its disks), and on failure removes every file *this call* made, so a failed create
//! leaves nothing behind and a failed start never loses a VM's data. [`VmDisks::remove`] removes
//! them all on delete. [`VmDisks::check`] runs before a VM is persisted: it reads the base's and
//! the seed's superblocks and the free space of the state dir, and creates nothing.
//!
//! Concurrency: no state of its own; the VM's actor serializes calls for one VM.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use banger_api::{RootCloneMethod, RootMode, VmDisk};
use banger_host::disks::{CloneMethod, DiskError, Disks};
use banger_store::records::{ImageRecord, VmRecord};
use banger_vmm::Drive;

use crate::backends::{BoxError, DiskCheckError, PreparedDisks, VmDisks};

/// File name of the per-VM overlay disk (upper and work dirs of the overlay root).
pub const OVERLAY_FILE: &str = "overlay.ext4";
/// File name of the per-VM clone of the base (clone root mode).
pub const ROOT_FILE: &str = "root.ext4";
/// File name of the per-VM work disk.
pub const WORK_FILE: &str = "work.ext4";
/// Label of the overlay disk's filesystem.
pub const OVERLAY_LABEL: &str = "banger-upper";
/// Label of a fresh work disk's filesystem.
pub const WORK_LABEL: &str = "banger-work";

const MIB: u64 = 1 << 20;

/// Why [`OverlayDisks::prepare`] failed. Nothing it made is left behind.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    /// The VM's directory could not be made.
    #[error("could not create {}", .dir.display())]
    VmDir {
        /// The directory.
        dir: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The image's base rootfs cannot be used (missing, or not ext4).
    #[error("image {image}: base rootfs {} is unusable", .path.display())]
    Base {
        /// The image.
        image: String,
        /// The base file.
        path: PathBuf,
        /// What is wrong.
        #[source]
        source: DiskError,
    },
    /// The image's work seed cannot be used (missing, or not ext4).
    #[error("image {image}: work seed {} is unusable", .path.display())]
    Seed {
        /// The image.
        image: String,
        /// The seed file.
        path: PathBuf,
        /// What is wrong.
        #[source]
        source: DiskError,
    },
    /// The work disk asked for is smaller than the seed.
    #[error(transparent)]
    BelowSeed(DiskCheckError),
    /// Making one of the VM's disks failed.
    #[error("could not make the {disk} disk")]
    Make {
        /// `overlay`, `root` or `work`.
        disk: &'static str,
        /// The failed operation.
        #[source]
        source: DiskError,
    },
}

/// Per-VM overlay (or clone) root and work disk, through a [`Disks`] tool.
#[derive(Clone)]
pub struct OverlayDisks {
    disks: Arc<dyn Disks>,
    vms_dir: PathBuf,
    overlay_size_mib: u64,
}

impl std::fmt::Debug for OverlayDisks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OverlayDisks")
            .field("vms_dir", &self.vms_dir)
            .field("overlay_size_mib", &self.overlay_size_mib)
            .finish_non_exhaustive()
    }
}

impl OverlayDisks {
    /// Per-VM disks in directories under `vms_dir` (whose filesystem's free space bounds what a
    /// create may ask for), with writable root layers of `overlay_size_mib` (sparse: only
    /// written blocks use space).
    pub fn new(disks: Arc<dyn Disks>, vms_dir: impl Into<PathBuf>, overlay_size_mib: u64) -> Self {
        Self {
            disks,
            vms_dir: vms_dir.into(),
            overlay_size_mib,
        }
    }

    fn overlay_path(vm: &VmRecord) -> PathBuf {
        vm.vm_dir.join(OVERLAY_FILE)
    }

    fn root_path(vm: &VmRecord) -> PathBuf {
        vm.vm_dir.join(ROOT_FILE)
    }

    fn work_path(vm: &VmRecord) -> PathBuf {
        vm.vm_dir.join(WORK_FILE)
    }

    /// The free space of the filesystem holding the VM directories (the nearest existing
    /// ancestor of `vms_dir`, which a first create has not made yet).
    fn available_bytes(&self) -> Result<(PathBuf, u64), DiskError> {
        let mut dir = self.vms_dir.as_path();
        while !dir.exists() {
            match dir.parent() {
                Some(parent) => dir = parent,
                None => break,
            }
        }
        let available = self.disks.available_bytes(dir)?;
        Ok((self.vms_dir.clone(), available))
    }

    /// The seed's filesystem size in MiB (rounded up), or why the seed is unusable.
    async fn seed_mib(&self, seed: &Path) -> Result<u64, DiskError> {
        let info = self.disks.check_ext4(seed).await?;
        Ok(info.size_bytes().div_ceil(MIB))
    }

    /// Makes whatever of the VM's disks is missing; pushes each file it made onto `made`.
    async fn make_missing(
        &self,
        vm: &VmRecord,
        image: &ImageRecord,
        made: &mut Vec<PathBuf>,
    ) -> Result<PreparedDisks, PrepareError> {
        // Reading the superblock is constant time, and names a broken base before a guest
        // fails to mount it.
        self.disks
            .check_ext4(&image.rootfs_path)
            .await
            .map_err(|source| PrepareError::Base {
                image: image.name.to_string(),
                path: image.rootfs_path.clone(),
                source,
            })?;

        let mut root_clone_method = None;
        let root_drives = match image.root_mode {
            RootMode::Overlay => {
                let overlay = Self::overlay_path(vm);
                if !overlay.exists() {
                    made.push(overlay.clone());
                    self.disks
                        .mkfs_ext4(&overlay, self.overlay_size_mib * MIB, None, OVERLAY_LABEL)
                        .await
                        .map_err(|source| PrepareError::Make {
                            disk: "overlay",
                            source,
                        })?;
                }
                vec![
                    Drive {
                        id: "rootfs".into(),
                        path: image.rootfs_path.clone(),
                        read_only: true,
                    },
                    Drive {
                        id: "overlay".into(),
                        path: overlay,
                        read_only: false,
                    },
                ]
            }
            RootMode::Clone => {
                let root = Self::root_path(vm);
                if !root.exists() {
                    // clone_file never leaves a partial destination, but a completed one is ours.
                    let method = self
                        .disks
                        .clone_file(&image.rootfs_path, &root)
                        .await
                        .map_err(|source| PrepareError::Make {
                            disk: "root",
                            source,
                        })?;
                    made.push(root.clone());
                    root_clone_method = Some(match method {
                        CloneMethod::Reflink => RootCloneMethod::Reflink,
                        CloneMethod::SparseCopy => RootCloneMethod::SparseCopy,
                    });
                }
                vec![Drive {
                    id: "root".into(),
                    path: root,
                    read_only: false,
                }]
            }
        };

        let work = Self::work_path(vm);
        if !work.exists() {
            let size = vm.disk_size_mib * MIB;
            match &image.work_seed_path {
                Some(seed) => {
                    let seed_mib =
                        self.seed_mib(seed)
                            .await
                            .map_err(|source| PrepareError::Seed {
                                image: image.name.to_string(),
                                path: seed.clone(),
                                source,
                            })?;
                    if seed_mib > vm.disk_size_mib {
                        return Err(PrepareError::BelowSeed(DiskCheckError::BelowSeed {
                            image: image.name.to_string(),
                            requested_mib: vm.disk_size_mib,
                            seed_mib,
                        }));
                    }
                    let make = |source| PrepareError::Make {
                        disk: "work",
                        source,
                    };
                    self.disks.clone_file(seed, &work).await.map_err(make)?;
                    made.push(work.clone());
                    self.disks.grow_ext4(&work, size).await.map_err(make)?;
                }
                None => {
                    made.push(work.clone());
                    self.disks
                        .mkfs_ext4(&work, size, None, WORK_LABEL)
                        .await
                        .map_err(|source| PrepareError::Make {
                            disk: "work",
                            source,
                        })?;
                }
            }
        }

        let work_device = format!("/dev/vd{}", char::from(b'a' + root_drives.len() as u8));
        let mut kernel_args = Vec::new();
        if image.root_mode == RootMode::Overlay {
            kernel_args.push("banger.overlay=/dev/vdb".to_string());
        }
        kernel_args.push(format!("banger.work={work_device}"));
        let mut drives = root_drives;
        drives.push(Drive {
            id: "work".into(),
            path: work,
            read_only: false,
        });
        Ok(PreparedDisks {
            drives,
            kernel_args,
            root_clone_method,
        })
    }
}

#[async_trait::async_trait]
impl VmDisks for OverlayDisks {
    async fn prepare(&self, vm: &VmRecord, image: &ImageRecord) -> Result<PreparedDisks, BoxError> {
        std::fs::create_dir_all(&vm.vm_dir).map_err(|source| PrepareError::VmDir {
            dir: vm.vm_dir.clone(),
            source,
        })?;
        let mut made = Vec::new();
        match self.make_missing(vm, image, &mut made).await {
            Ok(prepared) => Ok(prepared),
            Err(err) => {
                for path in made.iter().rev() {
                    if let Err(error) = self.disks.remove(path).await {
                        tracing::warn!(vm = %vm.name, %error, "removing a half-made disk");
                    }
                }
                Err(Box::new(err))
            }
        }
    }

    async fn grow_work(&self, vm: &VmRecord, new_size_mib: u64) -> Result<(), BoxError> {
        let work = Self::work_path(vm);
        if work.exists() {
            self.disks.grow_ext4(&work, new_size_mib * MIB).await?;
        }
        Ok(())
    }

    async fn remove(&self, vm: &VmRecord) -> Result<(), BoxError> {
        for path in [
            Self::overlay_path(vm),
            Self::root_path(vm),
            Self::work_path(vm),
        ] {
            self.disks.remove(&path).await?;
        }
        Ok(())
    }

    /// Space rule: the work disk may fill up to its full size, so all of it must fit; a clone
    /// root may take as much as the base's allocated data (a sparse copy); the overlay grows
    /// only with what the guest writes to its root and is not reserved.
    async fn check(&self, image: &ImageRecord, work_size_mib: u64) -> Result<(), DiskCheckError> {
        let image_error = |source: DiskError| DiskCheckError::Image {
            image: image.name.to_string(),
            source: Box::new(source),
        };
        self.disks
            .check_ext4(&image.rootfs_path)
            .await
            .map_err(image_error)?;
        if let Some(seed) = &image.work_seed_path {
            let seed_mib = self.seed_mib(seed).await.map_err(image_error)?;
            if seed_mib > work_size_mib {
                return Err(DiskCheckError::BelowSeed {
                    image: image.name.to_string(),
                    requested_mib: work_size_mib,
                    seed_mib,
                });
            }
        }
        let mut needed_bytes = work_size_mib * MIB;
        if image.root_mode == RootMode::Clone {
            let base = self.disks.usage(&image.rootfs_path).map_err(image_error)?;
            needed_bytes += base.allocated_bytes;
        }
        let (dir, available_bytes) = self
            .available_bytes()
            .map_err(|err| DiskCheckError::Host(Box::new(err)))?;
        if needed_bytes > available_bytes {
            return Err(DiskCheckError::NoSpace {
                dir,
                needed_bytes,
                available_bytes,
            });
        }
        Ok(())
    }

    async fn check_grow(&self, vm: &VmRecord, new_size_mib: u64) -> Result<(), DiskCheckError> {
        let needed_bytes = new_size_mib.saturating_sub(vm.disk_size_mib) * MIB;
        let (dir, available_bytes) = self
            .available_bytes()
            .map_err(|err| DiskCheckError::Host(Box::new(err)))?;
        if needed_bytes > available_bytes {
            return Err(DiskCheckError::NoSpace {
                dir,
                needed_bytes,
                available_bytes,
            });
        }
        Ok(())
    }

    fn usage(&self, vm: &VmRecord, image: Option<&ImageRecord>) -> Vec<VmDisk> {
        let mut disks: Vec<(&str, PathBuf, bool)> = Vec::new();
        if let Some(image) = image {
            disks.push(("rootfs", image.rootfs_path.clone(), true));
        }
        disks.push(("overlay", Self::overlay_path(vm), false));
        disks.push(("root", Self::root_path(vm), false));
        disks.push(("work", Self::work_path(vm), false));
        disks
            .into_iter()
            .filter(|(_, path, _)| path.exists())
            .filter_map(|(name, path, read_only)| {
                let usage = self.disks.usage(&path).ok()?;
                Some(VmDisk {
                    name: name.to_string(),
                    path: path.to_string_lossy().into_owned(),
                    read_only,
                    apparent_bytes: usage.apparent_bytes,
                    allocated_bytes: usage.allocated_bytes,
                })
            })
            .collect()
    }
}

//! Per-VM disks over a shared read-only base: the default [`VmDisks`] implementation.
//!
//! Every VM of an image attaches the image's base rootfs read-only (drive 0, `/dev/vda`), a
//! per-VM sparse ext4 that holds the overlay's upper and work directories (drive 1,
//! `/dev/vdb`), and its work disk for `/root` (drive 2, `/dev/vdc`), cloned from the image's
//! work seed and grown to the requested size (or made fresh when the image has no seed). The
//! guest's early init mounts the overlay, so creating a VM never copies the base: its cost does
//! not grow with the image's size. The kernel arguments `banger.overlay=` and `banger.work=`
//! tell the init which device is which (a `banger.` prefix, because the kernel would swallow
//! `overlay.*` as overlayfs module parameters).

use std::path::PathBuf;
use std::sync::Arc;

use banger_host::disks::Disks;
use banger_store::records::{ImageRecord, VmRecord};
use banger_vmm::Drive;

use crate::backends::{BoxError, PreparedDisks, VmDisks};

/// File name of the per-VM writable root layer.
pub const OVERLAY_FILE: &str = "overlay.ext4";
/// File name of the per-VM work disk.
pub const WORK_FILE: &str = "work.ext4";

/// Per-VM overlay + work disks through a [`Disks`] tool.
#[derive(Clone)]
pub struct OverlayDisks {
    disks: Arc<dyn Disks>,
    overlay_size_mib: u64,
}

impl std::fmt::Debug for OverlayDisks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OverlayDisks")
            .field("overlay_size_mib", &self.overlay_size_mib)
            .finish_non_exhaustive()
    }
}

impl OverlayDisks {
    /// Per-VM writable layers of `overlay_size_mib` (sparse: only written blocks use space).
    pub fn new(disks: Arc<dyn Disks>, overlay_size_mib: u64) -> Self {
        Self {
            disks,
            overlay_size_mib,
        }
    }

    fn overlay_path(vm: &VmRecord) -> PathBuf {
        vm.vm_dir.join(OVERLAY_FILE)
    }

    fn work_path(vm: &VmRecord) -> PathBuf {
        vm.vm_dir.join(WORK_FILE)
    }
}

#[async_trait::async_trait]
impl VmDisks for OverlayDisks {
    async fn prepare(&self, vm: &VmRecord, image: &ImageRecord) -> Result<PreparedDisks, BoxError> {
        std::fs::create_dir_all(&vm.vm_dir)?;
        let overlay = Self::overlay_path(vm);
        if !overlay.exists() {
            self.disks
                .mkfs_ext4(
                    &overlay,
                    self.overlay_size_mib * 1024 * 1024,
                    None,
                    "banger-upper",
                )
                .await?;
        }
        let work = Self::work_path(vm);
        if !work.exists() {
            let size = vm.disk_size_mib * 1024 * 1024;
            let made = match &image.work_seed_path {
                Some(seed) => match self.disks.clone_file(seed, &work).await {
                    Ok(_) => self.disks.grow_ext4(&work, size).await,
                    Err(err) => Err(err),
                },
                None => self.disks.mkfs_ext4(&work, size, None, "banger-work").await,
            };
            if let Err(err) = made {
                let _ = self.disks.remove(&work).await;
                return Err(Box::new(err));
            }
        }
        Ok(PreparedDisks {
            drives: vec![
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
                Drive {
                    id: "work".into(),
                    path: work,
                    read_only: false,
                },
            ],
            kernel_args: vec![
                "banger.overlay=/dev/vdb".into(),
                "banger.work=/dev/vdc".into(),
            ],
        })
    }

    async fn grow_work(&self, vm: &VmRecord, new_size_mib: u64) -> Result<(), BoxError> {
        let work = Self::work_path(vm);
        if work.exists() {
            self.disks
                .grow_ext4(&work, new_size_mib * 1024 * 1024)
                .await?;
        }
        Ok(())
    }

    async fn remove(&self, vm: &VmRecord) -> Result<(), BoxError> {
        self.disks.remove(&Self::overlay_path(vm)).await?;
        self.disks.remove(&Self::work_path(vm)).await?;
        Ok(())
    }
}

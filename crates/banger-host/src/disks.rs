//! Disk images: sparse files, ext4 filesystems in them, clones of them.
//!
//! Every VM disk banger makes is a regular file: the per-VM writable root layer (a sparse ext4),
//! the work disk (cloned from the image's work seed, then grown), the images' base root
//! filesystems (made with `mkfs.ext4 -d` from a directory tree). [`Disks`] is the one narrow
//! interface to all of that; [`RealDisks`] does it on the host, [`FakeDisks`] records it for tests
//! of callers.
//!
//! Ownership: this module owns no state. A file it creates belongs to the caller, who removes it
//! with [`Disks::remove`] on rollback or delete. The only file this module removes on its own is
//! its own staging file, when a clone fails half-way: a clone is written to a hidden staging file
//! beside the destination (`.NAME.partial-PID-N`) and renamed into place only when complete, so
//! a failed clone never leaves a partial destination (a killed process can leave a staging file;
//! its name says what it is).
//!
//! Concurrency: the methods take `&self` and keep no shared state, so one [`RealDisks`] serves
//! any number of concurrent callers. Operations on the *same* path are the caller's to serialize
//! (banger's per-VM task does). File work that can take long (copying, reading) runs on tokio's
//! blocking pool; external programs run through [`exec::execute`].
//!
//! ```text
//! create_sparse ──► (raw sparse file)
//! mkfs_ext4 ──────► ext4 image ──clone_file──► per-VM copy ──grow_ext4──► bigger ext4
//!                       │
//!                       └─check_ext4──► Ext4Info (read from the superblock, no program run)
//! ```

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use nix::errno::Errno;
use nix::unistd::Whence;

use crate::exec::{self, CommandError, CommandSpec};

/// Where the ext4 superblock starts in an image.
const SUPERBLOCK_OFFSET: u64 = 1024;
/// How many superblock bytes [`parse_superblock`] reads.
const SUPERBLOCK_LEN: usize = 1024;
/// `s_magic` of the ext2/3/4 family.
const EXT4_MAGIC: u16 = 0xEF53;
/// `s_feature_incompat` bit that says the block counts have high 32 bits.
const INCOMPAT_64BIT: u32 = 0x80;
/// Chunk size of the sparse copy; all-zero chunks are skipped, so holes stay holes.
const COPY_CHUNK: usize = 1 << 20;

/// One operation of [`Disks`], used to name what failed and to tell [`FakeDisks`] what to fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DiskOp {
    /// [`Disks::create_sparse`].
    CreateSparse,
    /// [`Disks::mkfs_ext4`].
    MkfsExt4,
    /// [`Disks::grow_ext4`].
    GrowExt4,
    /// [`Disks::check_ext4`].
    CheckExt4,
    /// [`Disks::clone_file`].
    CloneFile,
    /// [`Disks::usage`].
    Usage,
    /// [`Disks::available_bytes`].
    AvailableBytes,
    /// [`Disks::remove`].
    Remove,
}

impl fmt::Display for DiskOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DiskOp::CreateSparse => "create_sparse",
            DiskOp::MkfsExt4 => "mkfs_ext4",
            DiskOp::GrowExt4 => "grow_ext4",
            DiskOp::CheckExt4 => "check_ext4",
            DiskOp::CloneFile => "clone_file",
            DiskOp::Usage => "usage",
            DiskOp::AvailableBytes => "available_bytes",
            DiskOp::Remove => "remove",
        })
    }
}

/// Why a disk operation failed. Each variant names the file(s) involved.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// The file to create already exists; banger never overwrites a disk it did not make now.
    #[error("{} already exists; refusing to overwrite it", .path.display())]
    AlreadyExists {
        /// The existing file.
        path: PathBuf,
    },
    /// Creating or sizing a new file failed.
    #[error("could not create {} with {size_bytes} bytes", .path.display())]
    Create {
        /// The file.
        path: PathBuf,
        /// The size asked for.
        size_bytes: u64,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
    /// A filesystem size that `mkfs.ext4` cannot take.
    #[error("cannot make a {size_bytes}-byte filesystem in {}: the size must be a non-zero multiple of 1024", .path.display())]
    InvalidSize {
        /// The image.
        path: PathBuf,
        /// The size asked for.
        size_bytes: u64,
    },
    /// `mkfs.ext4` failed.
    #[error("could not make an ext4 filesystem in {}", .path.display())]
    Mkfs {
        /// The image.
        path: PathBuf,
        /// The failed command.
        #[source]
        source: CommandError,
    },
    /// A grow that would make the image smaller.
    #[error("refusing to shrink {} from {current_bytes} to {requested_bytes} bytes", .path.display())]
    Shrink {
        /// The image.
        path: PathBuf,
        /// Its size now.
        current_bytes: u64,
        /// The smaller size asked for.
        requested_bytes: u64,
    },
    /// Extending the image file failed.
    #[error("could not extend {} to {size_bytes} bytes", .path.display())]
    Extend {
        /// The image.
        path: PathBuf,
        /// The size asked for.
        size_bytes: u64,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
    /// `e2fsck` found problems it could not fix (or could not run).
    #[error("filesystem check of {} failed", .path.display())]
    Fsck {
        /// The image.
        path: PathBuf,
        /// The failed command.
        #[source]
        source: CommandError,
    },
    /// `resize2fs` failed.
    #[error("could not resize the filesystem in {}", .path.display())]
    Resize {
        /// The image.
        path: PathBuf,
        /// The failed command.
        #[source]
        source: CommandError,
    },
    /// Asking the filesystem holding a directory for its free space failed.
    #[error("could not read the free space of the filesystem holding {}", .path.display())]
    Statvfs {
        /// The directory asked about.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
    /// Reading or stat-ing a file failed.
    #[error("could not read {}", .path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
    /// The file holds no ext2/3/4 superblock.
    #[error("{} does not hold an ext4 filesystem", .path.display())]
    NotExt4 {
        /// The file.
        path: PathBuf,
    },
    /// Cloning failed; no partial destination was left behind.
    #[error("could not clone {} to {}", .src.display(), .dst.display())]
    Clone {
        /// The source file.
        src: PathBuf,
        /// The destination asked for.
        dst: PathBuf,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
    /// Removing a file failed (a missing file is not a failure).
    #[error("could not remove {}", .path.display())]
    Remove {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
    /// The blocking worker running the operation went away (the runtime is shutting down).
    #[error("{operation} on {} was abandoned", .path.display())]
    Abandoned {
        /// The operation.
        operation: DiskOp,
        /// The file.
        path: PathBuf,
        /// Why the worker ended.
        #[source]
        source: tokio::task::JoinError,
    },
    /// A failure [`FakeDisks`] was told to produce.
    #[error("{operation} on {} failed (injected by FakeDisks)", .path.display())]
    Injected {
        /// The operation.
        operation: DiskOp,
        /// The file.
        path: PathBuf,
    },
}

/// What the superblock of an ext2/3/4 image says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ext4Info {
    /// Volume label (`mkfs.ext4 -L`), empty when none.
    pub label: String,
    /// Filesystem block size in bytes.
    pub block_size: u64,
    /// Number of blocks in the filesystem.
    pub block_count: u64,
    /// Number of free blocks.
    pub free_blocks: u64,
}

impl Ext4Info {
    /// The filesystem's size: what `resize2fs` last made it, not the file's length.
    pub fn size_bytes(&self) -> u64 {
        self.block_count.saturating_mul(self.block_size)
    }

    /// Free space in bytes (reserved blocks included).
    pub fn free_bytes(&self) -> u64 {
        self.free_blocks.saturating_mul(self.block_size)
    }
}

/// How [`Disks::clone_file`] made the copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloneMethod {
    /// The filesystem shares the extents (FICLONE): instant, no space used until written.
    Reflink,
    /// Data regions were copied and holes kept: time and space grow with the data, not the size.
    SparseCopy,
}

/// Space a file takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskUsage {
    /// The file's length (what the guest sees as the disk size).
    pub apparent_bytes: u64,
    /// Bytes the host filesystem really allocated for it.
    pub allocated_bytes: u64,
}

/// Disk image operations banger needs. Paths are regular files on the host.
#[async_trait]
pub trait Disks: Send + Sync {
    /// Creates a new sparse file of `size_bytes`. Refuses an existing path
    /// ([`DiskError::AlreadyExists`]).
    async fn create_sparse(&self, path: &Path, size_bytes: u64) -> Result<(), DiskError>;

    /// Makes an ext4 filesystem of `size_bytes` in the file at `path` (created if absent, made
    /// sparse and resized if present), labelled `label`, owned by root, filled with the tree under
    /// `source_dir` when given. The result is sparse.
    async fn mkfs_ext4(
        &self,
        path: &Path,
        size_bytes: u64,
        source_dir: Option<&Path>,
        label: &str,
    ) -> Result<(), DiskError>;

    /// Grows the image file and its ext4 filesystem to `new_size_bytes`. Growing to the current
    /// size is a no-op; shrinking is refused ([`DiskError::Shrink`]).
    async fn grow_ext4(&self, path: &Path, new_size_bytes: u64) -> Result<(), DiskError>;

    /// Reads the ext4 superblock of the image ([`DiskError::NotExt4`] when there is none).
    async fn check_ext4(&self, path: &Path) -> Result<Ext4Info, DiskError>;

    /// Copies `src` to the new file `dst`, by reflink where the filesystem can, else by a copy
    /// that keeps holes. Refuses an existing `dst`; leaves no partial `dst` on failure.
    async fn clone_file(&self, src: &Path, dst: &Path) -> Result<CloneMethod, DiskError>;

    /// The apparent and allocated size of a file.
    fn usage(&self, path: &Path) -> Result<DiskUsage, DiskError>;

    /// Bytes that may still be allocated on the filesystem holding `path` by an unprivileged
    /// writer (`statvfs`: available blocks times fragment size).
    fn available_bytes(&self, path: &Path) -> Result<u64, DiskError>;

    /// Removes a file. A missing file is fine: removing twice succeeds.
    async fn remove(&self, path: &Path) -> Result<(), DiskError>;
}

/// The e2fsprogs programs [`RealDisks`] runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ext4Programs {
    /// `mkfs.ext4`.
    pub mkfs_ext4: PathBuf,
    /// `e2fsck`.
    pub e2fsck: PathBuf,
    /// `resize2fs`.
    pub resize2fs: PathBuf,
}

impl Default for Ext4Programs {
    /// The plain names, looked up on PATH.
    fn default() -> Self {
        Self {
            mkfs_ext4: "mkfs.ext4".into(),
            e2fsck: "e2fsck".into(),
            resize2fs: "resize2fs".into(),
        }
    }
}

/// [`Disks`] on the host filesystem, with e2fsprogs.
#[derive(Debug, Clone, Default)]
pub struct RealDisks {
    programs: Ext4Programs,
}

impl RealDisks {
    /// Runs the e2fsprogs programs found on PATH.
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs the given e2fsprogs programs (for a host where they are not on PATH).
    pub fn with_programs(programs: Ext4Programs) -> Self {
        Self { programs }
    }
}

#[async_trait]
impl Disks for RealDisks {
    async fn create_sparse(&self, path: &Path, size_bytes: u64) -> Result<(), DiskError> {
        let owned = path.to_path_buf();
        blocking(DiskOp::CreateSparse, path, move || {
            create_sparse_blocking(&owned, size_bytes)
        })
        .await
    }

    async fn mkfs_ext4(
        &self,
        path: &Path,
        size_bytes: u64,
        source_dir: Option<&Path>,
        label: &str,
    ) -> Result<(), DiskError> {
        if size_bytes == 0 || !size_bytes.is_multiple_of(1024) {
            return Err(DiskError::InvalidSize {
                path: path.to_path_buf(),
                size_bytes,
            });
        }
        // Size the file ourselves, dropping any old blocks, so the image is exactly this long
        // and sparse whatever was there before; mkfs.ext4 then writes only metadata.
        let owned = path.to_path_buf();
        let created = blocking(DiskOp::MkfsExt4, path, move || {
            let created = !owned.exists();
            let file = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&owned)
                .and_then(|file| file.set_len(size_bytes).map(|()| file));
            match file {
                Ok(_) => Ok(created),
                Err(source) => {
                    if created {
                        let _ = std::fs::remove_file(&owned);
                    }
                    Err(DiskError::Create {
                        path: owned,
                        size_bytes,
                        source,
                    })
                }
            }
        })
        .await?;

        let mut args: Vec<OsString> = vec!["-q".into(), "-F".into()];
        if let Some(dir) = source_dir {
            args.extend(["-d".into(), dir.as_os_str().to_owned()]);
        }
        // The file was just emptied, so its inode tables and journal already read as zeros:
        // skipping their zeroing keeps an 8 GiB filesystem at ~4 MiB allocated instead of ~69
        // MiB (guests mount such disks with `noinit_itable` so the kernel does not zero them
        // in the background either).
        args.extend([
            "-L".into(),
            label.into(),
            "-E".into(),
            "root_owner=0:0,lazy_itable_init=1,lazy_journal_init=1".into(),
        ]);
        args.push(path.as_os_str().to_owned());
        args.push(format!("{}k", size_bytes / 1024).into());
        let spec = CommandSpec::new(&self.programs.mkfs_ext4).args(args);
        if let Err(source) = exec::execute(&spec).await {
            if created {
                // Best effort: the caller gets the mkfs error, which is the one that matters.
                let _ = tokio::fs::remove_file(path).await;
            }
            return Err(DiskError::Mkfs {
                path: path.to_path_buf(),
                source,
            });
        }
        Ok(())
    }

    async fn grow_ext4(&self, path: &Path, new_size_bytes: u64) -> Result<(), DiskError> {
        let current_bytes = tokio::fs::metadata(path)
            .await
            .map_err(|source| DiskError::Read {
                path: path.to_path_buf(),
                source,
            })?
            .len();
        if new_size_bytes < current_bytes {
            return Err(DiskError::Shrink {
                path: path.to_path_buf(),
                current_bytes,
                requested_bytes: new_size_bytes,
            });
        }
        if new_size_bytes == current_bytes {
            return Ok(());
        }
        set_len(path, new_size_bytes).await?;

        // resize2fs insists on a freshly checked filesystem. e2fsck exits 1 when it fixed
        // something, which leaves a good filesystem; anything else means it is not safe to grow.
        let fsck = CommandSpec::new(&self.programs.e2fsck).arg("-fy").arg(path);
        match exec::execute(&fsck).await {
            Ok(_) => {}
            Err(CommandError::Failed { status, .. }) if status.code() == Some(1) => {
                tracing::info!(path = %path.display(), "e2fsck fixed errors before resize");
            }
            Err(source) => {
                // Give the file its old length back: the filesystem never used the new tail.
                if let Err(error) = set_len(path, current_bytes).await {
                    tracing::warn!(path = %path.display(), %error, "could not undo the extension");
                }
                return Err(DiskError::Fsck {
                    path: path.to_path_buf(),
                    source,
                });
            }
        }
        let resize = CommandSpec::new(&self.programs.resize2fs).arg(path);
        exec::execute(&resize)
            .await
            .map_err(|source| DiskError::Resize {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(())
    }

    async fn check_ext4(&self, path: &Path) -> Result<Ext4Info, DiskError> {
        let owned = path.to_path_buf();
        blocking(DiskOp::CheckExt4, path, move || read_ext4_info(&owned)).await
    }

    async fn clone_file(&self, src: &Path, dst: &Path) -> Result<CloneMethod, DiskError> {
        let (src_owned, dst_owned) = (src.to_path_buf(), dst.to_path_buf());
        blocking(DiskOp::CloneFile, dst, move || {
            clone_blocking(&src_owned, &dst_owned)
        })
        .await
    }

    fn usage(&self, path: &Path) -> Result<DiskUsage, DiskError> {
        let meta = std::fs::metadata(path).map_err(|source| DiskError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(DiskUsage {
            apparent_bytes: meta.len(),
            allocated_bytes: meta.blocks().saturating_mul(512),
        })
    }

    fn available_bytes(&self, path: &Path) -> Result<u64, DiskError> {
        let stat = nix::sys::statvfs::statvfs(path).map_err(|errno| DiskError::Statvfs {
            path: path.to_path_buf(),
            source: io::Error::from(errno),
        })?;
        Ok(stat.blocks_available().saturating_mul(stat.fragment_size()))
    }

    async fn remove(&self, path: &Path) -> Result<(), DiskError> {
        match tokio::fs::remove_file(path).await {
            Ok(()) => Ok(()),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(DiskError::Remove {
                path: path.to_path_buf(),
                source,
            }),
        }
    }
}

/// Runs file work that may take long on tokio's blocking pool.
async fn blocking<T, F>(operation: DiskOp, path: &Path, work: F) -> Result<T, DiskError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, DiskError> + Send + 'static,
{
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result,
        Err(join) if join.is_panic() => std::panic::resume_unwind(join.into_panic()),
        Err(source) => Err(DiskError::Abandoned {
            operation,
            path: path.to_path_buf(),
            source,
        }),
    }
}

async fn set_len(path: &Path, size_bytes: u64) -> Result<(), DiskError> {
    let extend_error = |source| DiskError::Extend {
        path: path.to_path_buf(),
        size_bytes,
        source,
    };
    let file = tokio::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .await
        .map_err(extend_error)?;
    file.set_len(size_bytes).await.map_err(extend_error)
}

fn create_sparse_blocking(path: &Path, size_bytes: u64) -> Result<(), DiskError> {
    let file = match OpenOptions::new().write(true).create_new(true).open(path) {
        Ok(file) => file,
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {
            return Err(DiskError::AlreadyExists {
                path: path.to_path_buf(),
            });
        }
        Err(source) => {
            return Err(DiskError::Create {
                path: path.to_path_buf(),
                size_bytes,
                source,
            })
        }
    };
    if let Err(source) = file.set_len(size_bytes) {
        drop(file);
        // We made it a moment ago and it is useless at the wrong size.
        let _ = std::fs::remove_file(path);
        return Err(DiskError::Create {
            path: path.to_path_buf(),
            size_bytes,
            source,
        });
    }
    Ok(())
}

fn read_ext4_info(path: &Path) -> Result<Ext4Info, DiskError> {
    let read_error = |source| DiskError::Read {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(read_error)?;
    let mut superblock = [0u8; SUPERBLOCK_LEN];
    match file.read_exact_at(&mut superblock, SUPERBLOCK_OFFSET) {
        Ok(()) => {}
        Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => {
            return Err(DiskError::NotExt4 {
                path: path.to_path_buf(),
            });
        }
        Err(source) => return Err(read_error(source)),
    }
    parse_superblock(&superblock).ok_or_else(|| DiskError::NotExt4 {
        path: path.to_path_buf(),
    })
}

/// Decodes the fields banger needs from an ext2/3/4 superblock (the 1024 bytes at offset 1024).
/// `None` when the magic is wrong or the block size is impossible.
pub fn parse_superblock(superblock: &[u8; SUPERBLOCK_LEN]) -> Option<Ext4Info> {
    let u16_at = |offset: usize| u16::from_le_bytes([superblock[offset], superblock[offset + 1]]);
    let u32_at = |offset: usize| {
        u32::from_le_bytes([
            superblock[offset],
            superblock[offset + 1],
            superblock[offset + 2],
            superblock[offset + 3],
        ])
    };
    if u16_at(0x38) != EXT4_MAGIC {
        return None;
    }
    // s_log_block_size: ext4 blocks are 1 KiB << n, at most 64 KiB.
    let log_block_size = u32_at(0x18);
    if log_block_size > 6 {
        return None;
    }
    let block_size = 1024u64 << log_block_size;
    let is_64bit = u32_at(0x60) & INCOMPAT_64BIT != 0;
    let wide = |lo: usize, hi: usize| {
        let high = if is_64bit { u64::from(u32_at(hi)) } else { 0 };
        (high << 32) | u64::from(u32_at(lo))
    };
    let label_bytes = &superblock[0x78..0x78 + 16];
    let label_len = label_bytes
        .iter()
        .position(|b| *b == 0)
        .unwrap_or(label_bytes.len());
    Some(Ext4Info {
        label: String::from_utf8_lossy(&label_bytes[..label_len]).into_owned(),
        block_size,
        block_count: wide(0x04, 0x150),
        free_blocks: wide(0x0C, 0x158),
    })
}

/// Tells staging files of concurrent clones in one process apart.
static STAGING_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Removes the staging file when dropped, unless it was renamed into place.
struct Staging {
    path: PathBuf,
    armed: bool,
}

impl Drop for Staging {
    fn drop(&mut self) {
        if self.armed {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn clone_blocking(src: &Path, dst: &Path) -> Result<CloneMethod, DiskError> {
    let clone_error = |source| DiskError::Clone {
        src: src.to_path_buf(),
        dst: dst.to_path_buf(),
        source,
    };
    if dst.symlink_metadata().is_ok() {
        return Err(DiskError::AlreadyExists {
            path: dst.to_path_buf(),
        });
    }
    let (Some(dir), Some(name)) = (dst.parent(), dst.file_name()) else {
        return Err(clone_error(io::Error::new(
            io::ErrorKind::InvalidInput,
            "destination has no file name",
        )));
    };
    let source = File::open(src).map_err(clone_error)?;
    let source_meta = source.metadata().map_err(clone_error)?;
    if !source_meta.is_file() {
        return Err(clone_error(io::Error::new(
            io::ErrorKind::InvalidInput,
            "source is not a regular file",
        )));
    }

    let mut staging_name = OsString::from(".");
    staging_name.push(name);
    staging_name.push(format!(
        ".partial-{}-{}",
        std::process::id(),
        STAGING_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let mut staging = Staging {
        path: dir.join(staging_name),
        armed: true,
    };
    let target = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&staging.path)
        .map_err(|source| {
            // Nothing was created: do not let the guard remove someone else's file of that name.
            staging.armed = false;
            clone_error(source)
        })?;

    let method = match reflink(&source, &target) {
        Ok(()) => CloneMethod::Reflink,
        Err(errno) if reflink_unsupported(errno) => {
            sparse_copy(&source, &target, source_meta.len()).map_err(clone_error)?;
            CloneMethod::SparseCopy
        }
        Err(errno) => return Err(clone_error(io::Error::from(errno))),
    };
    drop(target);

    match nix::fcntl::renameat2(
        None,
        &staging.path,
        None,
        dst,
        nix::fcntl::RenameFlags::RENAME_NOREPLACE,
    ) {
        Ok(()) => {
            staging.armed = false;
            Ok(method)
        }
        Err(Errno::EEXIST) => Err(DiskError::AlreadyExists {
            path: dst.to_path_buf(),
        }),
        Err(errno) => Err(clone_error(io::Error::from(errno))),
    }
}

/// Shares `source`'s extents with the empty `target` (FICLONE).
fn reflink(source: &File, target: &File) -> Result<(), Errno> {
    // SAFETY: FICLONE takes the source descriptor as its integer argument and touches no memory
    // of ours; both descriptors are open for the duration of the call (borrowed `File`s).
    let rc = unsafe { libc::ioctl(target.as_raw_fd(), libc::FICLONE, source.as_raw_fd()) };
    Errno::result(rc).map(drop)
}

/// The errors with which a filesystem says "no reflink here" rather than "something broke".
fn reflink_unsupported(errno: Errno) -> bool {
    matches!(
        errno,
        Errno::EOPNOTSUPP | Errno::EXDEV | Errno::EINVAL | Errno::ENOTTY | Errno::ENOSYS
    )
}

/// Copies the data regions of `source` into `target` and leaves the holes as holes: regions are
/// found with SEEK_DATA/SEEK_HOLE, and all-zero chunks inside data regions are not written
/// either (so a fully allocated but mostly zero image still comes out sparse).
fn sparse_copy(source: &File, target: &File, len: u64) -> io::Result<()> {
    let len = i64::try_from(len)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "file too large"))?;
    let fd = source.as_raw_fd();
    let mut buffer = vec![0u8; COPY_CHUNK];
    let mut offset: i64 = 0;
    while offset < len {
        let data_start = match nix::unistd::lseek(fd, offset, Whence::SeekData) {
            Ok(start) => start,
            // No data after `offset`: the rest is one hole.
            Err(Errno::ENXIO) => break,
            // A filesystem without SEEK_DATA: treat everything as data (zero chunks are skipped).
            Err(Errno::EINVAL) => offset,
            Err(errno) => return Err(errno.into()),
        };
        let data_end = match nix::unistd::lseek(fd, data_start, Whence::SeekHole) {
            Ok(end) => end.min(len),
            Err(Errno::ENXIO | Errno::EINVAL) => len,
            Err(errno) => return Err(errno.into()),
        };
        copy_region(source, target, data_start, data_end, &mut buffer)?;
        offset = data_end.max(data_start + 1);
    }
    target.set_len(len.unsigned_abs())
}

fn copy_region(
    source: &File,
    target: &File,
    start: i64,
    end: i64,
    buffer: &mut [u8],
) -> io::Result<()> {
    let mut position = start.unsigned_abs();
    let end = end.unsigned_abs();
    while position < end {
        let want =
            usize::try_from(end - position).map_or(buffer.len(), |left| left.min(buffer.len()));
        let read = source.read_at(&mut buffer[..want], position)?;
        if read == 0 {
            // The source got shorter under us; its new end is where the copy ends.
            break;
        }
        let chunk = &buffer[..read];
        if chunk.iter().any(|byte| *byte != 0) {
            target.write_all_at(chunk, position)?;
        }
        position += read as u64;
    }
    Ok(())
}

/// One call made on a [`FakeDisks`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskCall {
    /// [`Disks::create_sparse`].
    CreateSparse {
        /// The file.
        path: PathBuf,
        /// The size asked for.
        size_bytes: u64,
    },
    /// [`Disks::mkfs_ext4`].
    MkfsExt4 {
        /// The image.
        path: PathBuf,
        /// The size asked for.
        size_bytes: u64,
        /// The tree to copy in.
        source_dir: Option<PathBuf>,
        /// The label.
        label: String,
    },
    /// [`Disks::grow_ext4`].
    GrowExt4 {
        /// The image.
        path: PathBuf,
        /// The size asked for.
        new_size_bytes: u64,
    },
    /// [`Disks::check_ext4`].
    CheckExt4 {
        /// The image.
        path: PathBuf,
    },
    /// [`Disks::clone_file`].
    CloneFile {
        /// The source.
        src: PathBuf,
        /// The destination.
        dst: PathBuf,
    },
    /// [`Disks::usage`].
    Usage {
        /// The file.
        path: PathBuf,
    },
    /// [`Disks::available_bytes`].
    AvailableBytes {
        /// The directory asked about.
        path: PathBuf,
    },
    /// [`Disks::remove`].
    Remove {
        /// The file.
        path: PathBuf,
    },
}

impl DiskCall {
    /// Which operation this call was.
    pub fn operation(&self) -> DiskOp {
        match self {
            DiskCall::CreateSparse { .. } => DiskOp::CreateSparse,
            DiskCall::MkfsExt4 { .. } => DiskOp::MkfsExt4,
            DiskCall::GrowExt4 { .. } => DiskOp::GrowExt4,
            DiskCall::CheckExt4 { .. } => DiskOp::CheckExt4,
            DiskCall::CloneFile { .. } => DiskOp::CloneFile,
            DiskCall::Usage { .. } => DiskOp::Usage,
            DiskCall::AvailableBytes { .. } => DiskOp::AvailableBytes,
            DiskCall::Remove { .. } => DiskOp::Remove,
        }
    }
}

/// What the fake believes a file holds: its logical size and, once "formatted", a label.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FakeImage {
    size_bytes: u64,
    label: Option<String>,
}

#[derive(Debug)]
struct FakeDisksState {
    calls: Vec<DiskCall>,
    failing: HashSet<DiskOp>,
    images: HashMap<PathBuf, FakeImage>,
    clone_method: CloneMethod,
    available_bytes: u64,
}

/// A recording [`Disks`] for tests of callers.
///
/// Behaviour:
/// - Every call is recorded (see [`FakeDisks::calls`]) before anything else, failing ones too.
/// - An operation marked with [`FakeDisks::fail`] returns [`DiskError::Injected`] and does
///   nothing else, until [`FakeDisks::heal`].
/// - `create_sparse`, `mkfs_ext4` and `clone_file` write a small real file (a one-line marker,
///   not the requested size) so that callers' "is it there / is it gone" checks work;
///   `create_sparse` and `clone_file` refuse an existing path like the real one does.
///   `remove` deletes the real file (a missing one is fine).
/// - Sizes and labels live in the fake's memory: `check_ext4` answers for files made by
///   `mkfs_ext4` (or cloned from one) and says [`DiskError::NotExt4`] otherwise; `grow_ext4`
///   refuses to shrink; `usage` reports the logical size as apparent and the marker's length as
///   allocated (or the real metadata for a file the fake never made).
/// - `clone_file` returns [`CloneMethod::SparseCopy`] unless told otherwise
///   ([`FakeDisks::set_clone_method`]).
/// - `available_bytes` answers 1 TiB for any path unless told otherwise
///   ([`FakeDisks::set_available_bytes`]).
#[derive(Debug)]
pub struct FakeDisks {
    state: Mutex<FakeDisksState>,
}

impl Default for FakeDisks {
    fn default() -> Self {
        Self {
            state: Mutex::new(FakeDisksState {
                calls: Vec::new(),
                failing: HashSet::new(),
                images: HashMap::new(),
                clone_method: CloneMethod::SparseCopy,
                available_bytes: FAKE_AVAILABLE_BYTES,
            }),
        }
    }
}

/// What [`FakeDisks::available_bytes`] answers until told otherwise: 1 TiB.
const FAKE_AVAILABLE_BYTES: u64 = 1 << 40;

/// What the fake writes into the files it "creates".
const FAKE_MARKER: &[u8] = b"banger FakeDisks image\n";

impl FakeDisks {
    /// An empty fake: no calls, nothing failing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<DiskCall> {
        self.lock().calls.clone()
    }

    /// Makes every later call of `operation` fail with [`DiskError::Injected`].
    pub fn fail(&self, operation: DiskOp) {
        self.lock().failing.insert(operation);
    }

    /// Undoes [`FakeDisks::fail`] for `operation`.
    pub fn heal(&self, operation: DiskOp) {
        self.lock().failing.remove(&operation);
    }

    /// What later `clone_file` calls report.
    pub fn set_clone_method(&self, method: CloneMethod) {
        self.lock().clone_method = method;
    }

    /// What later `available_bytes` calls answer, whatever the path.
    pub fn set_available_bytes(&self, bytes: u64) {
        self.lock().available_bytes = bytes;
    }

    fn lock(&self) -> MutexGuard<'_, FakeDisksState> {
        // A test that panicked while holding the lock leaves consistent data: every update below
        // is a single push or insert.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records `call`; fails it when its operation is marked failing.
    fn record(
        &self,
        call: DiskCall,
        path: &Path,
    ) -> Result<MutexGuard<'_, FakeDisksState>, DiskError> {
        let operation = call.operation();
        let mut state = self.lock();
        state.calls.push(call);
        if state.failing.contains(&operation) {
            return Err(DiskError::Injected {
                operation,
                path: path.to_path_buf(),
            });
        }
        Ok(state)
    }
}

fn write_marker(path: &Path, create_new: bool, size_bytes: u64) -> Result<(), DiskError> {
    let mut options = OpenOptions::new();
    options.write(true);
    if create_new {
        options.create_new(true);
    } else {
        options.create(true).truncate(true);
    }
    let file = match options.open(path) {
        Ok(file) => file,
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {
            return Err(DiskError::AlreadyExists {
                path: path.to_path_buf(),
            });
        }
        Err(source) => {
            return Err(DiskError::Create {
                path: path.to_path_buf(),
                size_bytes,
                source,
            })
        }
    };
    file.write_all_at(FAKE_MARKER, 0)
        .map_err(|source| DiskError::Create {
            path: path.to_path_buf(),
            size_bytes,
            source,
        })
}

#[async_trait]
impl Disks for FakeDisks {
    async fn create_sparse(&self, path: &Path, size_bytes: u64) -> Result<(), DiskError> {
        let mut state = self.record(
            DiskCall::CreateSparse {
                path: path.to_path_buf(),
                size_bytes,
            },
            path,
        )?;
        write_marker(path, true, size_bytes)?;
        state.images.insert(
            path.to_path_buf(),
            FakeImage {
                size_bytes,
                label: None,
            },
        );
        Ok(())
    }

    async fn mkfs_ext4(
        &self,
        path: &Path,
        size_bytes: u64,
        source_dir: Option<&Path>,
        label: &str,
    ) -> Result<(), DiskError> {
        let call = DiskCall::MkfsExt4 {
            path: path.to_path_buf(),
            size_bytes,
            source_dir: source_dir.map(Path::to_path_buf),
            label: label.to_string(),
        };
        let mut state = self.record(call, path)?;
        if size_bytes == 0 || !size_bytes.is_multiple_of(1024) {
            return Err(DiskError::InvalidSize {
                path: path.to_path_buf(),
                size_bytes,
            });
        }
        write_marker(path, false, size_bytes)?;
        state.images.insert(
            path.to_path_buf(),
            FakeImage {
                size_bytes,
                label: Some(label.to_string()),
            },
        );
        Ok(())
    }

    async fn grow_ext4(&self, path: &Path, new_size_bytes: u64) -> Result<(), DiskError> {
        let mut state = self.record(
            DiskCall::GrowExt4 {
                path: path.to_path_buf(),
                new_size_bytes,
            },
            path,
        )?;
        let Some(image) = state
            .images
            .get_mut(path)
            .filter(|image| image.label.is_some())
        else {
            return Err(DiskError::NotExt4 {
                path: path.to_path_buf(),
            });
        };
        if new_size_bytes < image.size_bytes {
            return Err(DiskError::Shrink {
                path: path.to_path_buf(),
                current_bytes: image.size_bytes,
                requested_bytes: new_size_bytes,
            });
        }
        image.size_bytes = new_size_bytes;
        Ok(())
    }

    async fn check_ext4(&self, path: &Path) -> Result<Ext4Info, DiskError> {
        let state = self.record(
            DiskCall::CheckExt4 {
                path: path.to_path_buf(),
            },
            path,
        )?;
        match state.images.get(path) {
            Some(FakeImage {
                size_bytes,
                label: Some(label),
            }) => Ok(Ext4Info {
                label: label.clone(),
                block_size: 4096,
                block_count: size_bytes / 4096,
                free_blocks: size_bytes / 4096,
            }),
            _ => Err(DiskError::NotExt4 {
                path: path.to_path_buf(),
            }),
        }
    }

    async fn clone_file(&self, src: &Path, dst: &Path) -> Result<CloneMethod, DiskError> {
        let mut state = self.record(
            DiskCall::CloneFile {
                src: src.to_path_buf(),
                dst: dst.to_path_buf(),
            },
            dst,
        )?;
        let clone_error = |source| DiskError::Clone {
            src: src.to_path_buf(),
            dst: dst.to_path_buf(),
            source,
        };
        if dst.symlink_metadata().is_ok() {
            return Err(DiskError::AlreadyExists {
                path: dst.to_path_buf(),
            });
        }
        std::fs::copy(src, dst).map_err(clone_error)?;
        let image = match state.images.get(src) {
            Some(image) => image.clone(),
            None => FakeImage {
                size_bytes: std::fs::metadata(src).map_err(clone_error)?.len(),
                label: None,
            },
        };
        state.images.insert(dst.to_path_buf(), image);
        Ok(state.clone_method)
    }

    fn usage(&self, path: &Path) -> Result<DiskUsage, DiskError> {
        let state = self.record(
            DiskCall::Usage {
                path: path.to_path_buf(),
            },
            path,
        )?;
        let meta = std::fs::metadata(path).map_err(|source| DiskError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(match state.images.get(path) {
            Some(image) => DiskUsage {
                apparent_bytes: image.size_bytes,
                allocated_bytes: meta.len(),
            },
            None => DiskUsage {
                apparent_bytes: meta.len(),
                allocated_bytes: meta.blocks().saturating_mul(512),
            },
        })
    }

    fn available_bytes(&self, path: &Path) -> Result<u64, DiskError> {
        let state = self.record(
            DiskCall::AvailableBytes {
                path: path.to_path_buf(),
            },
            path,
        )?;
        Ok(state.available_bytes)
    }

    async fn remove(&self, path: &Path) -> Result<(), DiskError> {
        let mut state = self.record(
            DiskCall::Remove {
                path: path.to_path_buf(),
            },
            path,
        )?;
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(DiskError::Remove {
                    path: path.to_path_buf(),
                    source,
                })
            }
        }
        state.images.remove(path);
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    fn superblock(
        magic: u16,
        log_block_size: u32,
        blocks_lo: u32,
        blocks_hi: u32,
        incompat: u32,
    ) -> [u8; 1024] {
        let mut sb = [0u8; 1024];
        sb[0x38..0x3A].copy_from_slice(&magic.to_le_bytes());
        sb[0x18..0x1C].copy_from_slice(&log_block_size.to_le_bytes());
        sb[0x04..0x08].copy_from_slice(&blocks_lo.to_le_bytes());
        sb[0x150..0x154].copy_from_slice(&blocks_hi.to_le_bytes());
        sb[0x60..0x64].copy_from_slice(&incompat.to_le_bytes());
        sb[0x0C..0x10].copy_from_slice(&7u32.to_le_bytes());
        sb[0x78..0x78 + 5].copy_from_slice(b"rootf");
        sb
    }

    #[test]
    fn superblock_without_magic_is_not_ext4() {
        assert_eq!(parse_superblock(&superblock(0x1234, 2, 10, 0, 0)), None);
    }

    #[test]
    fn superblock_with_impossible_block_size_is_not_ext4() {
        assert_eq!(
            parse_superblock(&superblock(EXT4_MAGIC, 30, 10, 0, 0)),
            None
        );
    }

    #[test]
    fn superblock_decodes_label_block_size_and_count() {
        let info = parse_superblock(&superblock(EXT4_MAGIC, 2, 262_144, 0, 0)).unwrap();
        assert_eq!(info.label, "rootf");
        assert_eq!(info.block_size, 4096);
        assert_eq!(info.block_count, 262_144);
        assert_eq!(info.free_blocks, 7);
        assert_eq!(info.size_bytes(), 1 << 30);
    }

    #[test]
    fn high_block_count_counts_only_with_64bit_feature() {
        let narrow = parse_superblock(&superblock(EXT4_MAGIC, 2, 5, 1, 0)).unwrap();
        assert_eq!(narrow.block_count, 5);
        let wide = parse_superblock(&superblock(EXT4_MAGIC, 2, 5, 1, INCOMPAT_64BIT)).unwrap();
        assert_eq!(wide.block_count, (1u64 << 32) + 5);
    }

    #[test]
    fn unsupported_reflink_errors_fall_back_but_io_errors_do_not() {
        assert!(reflink_unsupported(Errno::EOPNOTSUPP));
        assert!(reflink_unsupported(Errno::EXDEV));
        assert!(reflink_unsupported(Errno::EINVAL));
        assert!(!reflink_unsupported(Errno::EIO));
        assert!(!reflink_unsupported(Errno::ENOSPC));
    }
}

//! Images: named, immutable boot sets, and everything that makes or changes one.
//!
//! An image is a kernel, an optional initrd and modules, a base rootfs (ext4, shared read-only
//! by every VM of the image), a work seed (ext4, cloned into each VM's `/root` disk), a kernel
//! command line, readiness ports, a parent and a sha256 fingerprint over the boot set.
//!
//! - `register` ([`Manager::register_image`]) validates the user's files (kernel: ELF or
//!   bzImage; rootfs and work seed: ext4 superblock; every file readable and non-empty) and
//!   records an *unmanaged* image pointing at them. Nothing is recorded unless all validate.
//! - `promote` ([`Manager::promote_image`]) copies them into banger's image store
//!   (`<images_dir>/<id>/`, sparse-aware) and marks the image managed.
//! - Derived artifacts are made lazily by [`prepare_for_boot`], which the manager calls before
//!   a VM's disks stage: a work seed (an empty ext4) when the image has none, and, for
//!   Firecracker, the ELF vmlinux extracted from a bzImage ([`vmlinux`]). They live in
//!   `<images_dir>/<id>/` whether or not the image is managed; the fingerprint is updated.
//! - `bootstrap` ([`bootstrap`]) builds a Debian image from Debian's packages with debootstrap
//!   and `mkfs.ext4 -d` (nothing mounted on the host).
//! - `build` ([`build`]) boots a builder VM from a base image, provisions it through the guest
//!   agent, captures its root and registers the result, cached by (base fingerprint, recipe).
//! - Deleting an image removes `<images_dir>/<id>/` (never the user's own files).
//!
//! Concurrency: derived artifacts of one image are made under a per-image lock, written to a
//! temporary name and renamed, so two VMs starting together never see half a file. Long work
//! (hashing, copying, extracting) runs on the blocking pool, off the async runtime.

pub mod bootstrap;
pub mod build;
pub mod guest;
pub mod vmlinux;

use std::collections::HashMap;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use banger_api::{Image, ImageId, RegisterImageRequest, VmName};
use banger_host::build_tools::BuildTools;
use banger_host::disks::Disks;
use banger_store::records::ImageRecord;
use banger_store::Store;
use banger_vmm::VmmKind;
use sha2::{Digest, Sha256};

use crate::backends::BoxError;
use crate::error::CoreError;
use crate::manager::Manager;

/// Name of the image `banger image bootstrap` makes by default and `vm create` falls back to.
pub const DEFAULT_IMAGE_NAME: &str = "debian-12";
/// Size of a generated (empty) work seed.
pub const WORK_SEED_BYTES: u64 = 64 * 1024 * 1024;
/// Command line of a registered image that names none.
pub const DEFAULT_CMDLINE: &str = "root=/dev/vda ro console=ttyS0 panic=-1";
/// Longest kernel command line x86 takes.
const MAX_CMDLINE: usize = 2048;

/// File names inside `<images_dir>/<id>/`.
pub mod files {
    /// The kernel as registered (bzImage or ELF).
    pub const KERNEL: &str = "kernel";
    /// The ELF vmlinux extracted from a bzImage (Firecracker).
    pub const VMLINUX: &str = "vmlinux";
    /// The initrd.
    pub const INITRD: &str = "initrd.img";
    /// The modules file or directory.
    pub const MODULES: &str = "modules";
    /// The base rootfs.
    pub const ROOTFS: &str = "rootfs.ext4";
    /// The work seed.
    pub const WORK_SEED: &str = "work-seed.ext4";
}

/// Where the image pipeline keeps things, and what it puts into images.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ImageSettings {
    /// banger's image store: `<images_dir>/<id>/`.
    pub images_dir: PathBuf,
    /// Rebuildable caches (debootstrap trees, apt lists, build scratch).
    pub cache_dir: PathBuf,
    /// banger's public SSH key, authorized for root in bootstrapped images.
    pub ssh_public_key: PathBuf,
    /// The static guest agent binary installed into bootstrapped images; `None` when the
    /// daemon found none (bootstrap then refuses with how to fix it).
    pub agent_bin: Option<PathBuf>,
    /// The host's apt sources (`sources.list` files and `.sources` deb822 files), read for
    /// the Debian mirror debootstrap uses.
    pub apt_sources: Vec<PathBuf>,
}

/// The host tools of the image pipeline.
#[derive(Clone)]
pub struct ImageHost {
    /// Disk images (mkfs, ext4 checks, sparse copies).
    pub disks: Arc<dyn Disks>,
    /// debootstrap, apt, npm, tar.
    pub tools: Arc<dyn BuildTools>,
}

impl fmt::Debug for ImageHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ImageHost")
            .field("tools", &self.tools)
            .finish_non_exhaustive()
    }
}

/// An error with a sentence of context, for the cause chain.
#[derive(Debug, thiserror::Error)]
#[error("{what}")]
pub(crate) struct Context {
    pub(crate) what: String,
    #[source]
    pub(crate) source: BoxError,
}

/// Wraps `source` in `what`.
pub(crate) fn context(what: impl Into<String>, source: impl Into<BoxError>) -> BoxError {
    Box::new(Context {
        what: what.into(),
        source: source.into(),
    })
}

/// Bytes the regular files of a tree take (apparent sizes), plus 4 KiB per entry.
pub(crate) fn tree_bytes(root: &Path) -> std::io::Result<u64> {
    let mut total = 0;
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let meta = entry.metadata()?;
            total += 4096;
            if meta.is_dir() {
                stack.push(entry.path());
            } else if meta.is_file() {
                total += meta.len();
            }
        }
    }
    Ok(total)
}

/// Ends an image operation (bootstrap, build): the new image named in the last stage, or the
/// failure logged with its cause chain and carried in the operation.
pub(crate) fn finish_image_op(
    mut op: crate::ops::OpTracker,
    result: Result<ImageRecord, CoreError>,
    what: &str,
    name: &str,
) {
    match result {
        Ok(image) => {
            op.detail(format!("image {} ({})", image.name, image.id));
            op.succeed();
        }
        Err(err) => {
            tracing::warn!(image = %name, error = %err.chain(), "{what} failed");
            op.fail(err.to_api());
        }
    }
}

/// An I/O error naming the file.
pub(crate) fn io_context(what: &str, path: &Path, source: std::io::Error) -> BoxError {
    context(format!("{what} {}", path.display()), source)
}

fn invalid(field: &'static str, message: impl Into<String>) -> CoreError {
    CoreError::InvalidInput {
        field,
        message: message.into(),
    }
}

/// Runs `work` on the blocking pool.
pub(crate) async fn blocking<T, F>(work: F) -> Result<T, BoxError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, BoxError> + Send + 'static,
{
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|join| context("a blocking image task ended abnormally", join))?
}

/// The artifacts of a boot set that its fingerprint covers, by role.
pub fn artifacts(image: &ImageRecord) -> Vec<(&'static str, PathBuf)> {
    let mut out = vec![("kernel", image.kernel_path.clone())];
    if let Some(p) = &image.initrd_path {
        out.push(("initrd", p.clone()));
    }
    if let Some(p) = &image.modules_path {
        out.push(("modules", p.clone()));
    }
    out.push(("rootfs", image.rootfs_path.clone()));
    if let Some(p) = &image.work_seed_path {
        out.push(("work_seed", p.clone()));
    }
    out
}

fn hash_path(hasher: &mut Sha256, path: &Path) -> std::io::Result<u64> {
    let meta = std::fs::metadata(path)?;
    if meta.is_dir() {
        let mut entries: Vec<_> = std::fs::read_dir(path)?
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .map(|e| e.path())
            .collect();
        entries.sort();
        let mut total = 0;
        for entry in entries {
            hasher.update(entry.file_name().unwrap_or_default().as_encoded_bytes());
            hasher.update([0]);
            total += hash_path(hasher, &entry)?;
        }
        return Ok(total);
    }
    hash_file_blocks(hasher, path, meta.len())?;
    Ok(meta.len())
}

/// Block size of the canonical file hash.
const HASH_BLOCK: u64 = 64 * 1024;

/// Hashes a file as its length plus each block that is not all zeros, with its index. Holes
/// read as zeros, so a sparse file and a full copy of it hash alike; holes are skipped with
/// `SEEK_DATA`/`SEEK_HOLE` instead of being read, so a 2 GiB rootfs with 450 MiB of data
/// costs 450 MiB of reading.
fn hash_file_blocks(hasher: &mut Sha256, path: &Path, len: u64) -> std::io::Result<()> {
    use nix::unistd::{lseek, Whence};
    use std::io::{Seek, SeekFrom};
    use std::os::fd::AsRawFd;

    hasher.update(len.to_le_bytes());
    let mut file = std::fs::File::open(path)?;
    let mut block = vec![0u8; HASH_BLOCK as usize];
    let mut next_block = 0u64;
    let mut offset = 0u64;
    while offset < len {
        // Where the next data is; the whole rest is a hole when there is none.
        let data = match lseek(file.as_raw_fd(), offset as i64, Whence::SeekData) {
            Ok(at) => at as u64,
            Err(nix::errno::Errno::ENXIO) => break,
            // A filesystem without hole support: everything is data.
            Err(_) => offset,
        };
        let hole = match lseek(file.as_raw_fd(), data as i64, Whence::SeekHole) {
            Ok(at) => (at as u64).min(len),
            Err(_) => len,
        };
        let first = (data / HASH_BLOCK).max(next_block);
        let last = hole.div_ceil(HASH_BLOCK);
        for index in first..last {
            let start = index * HASH_BLOCK;
            let size = HASH_BLOCK.min(len - start) as usize;
            file.seek(SeekFrom::Start(start))?;
            file.read_exact(&mut block[..size])?;
            if block[..size].iter().any(|b| *b != 0) {
                hasher.update(index.to_le_bytes());
                hasher.update(&block[..size]);
            }
        }
        next_block = last;
        offset = last * HASH_BLOCK;
    }
    Ok(())
}

/// The sha256 fingerprint of a boot set (each artifact's role and contents, in order) and the
/// sum of the artifacts' sizes. Blocking: reads every byte.
pub fn fingerprint_blocking(
    artifacts: &[(&'static str, PathBuf)],
) -> Result<(String, u64), BoxError> {
    let mut outer = Sha256::new();
    let mut total = 0;
    for (role, path) in artifacts {
        let mut inner = Sha256::new();
        total += hash_path(&mut inner, path).map_err(|e| io_context("hashing", path, e))?;
        outer.update(role.as_bytes());
        outer.update(b"=");
        outer.update(inner.finalize());
        outer.update(b"\n");
    }
    Ok((hex(&outer.finalize()), total))
}

/// Fingerprint off the async runtime.
pub async fn fingerprint(image: &ImageRecord) -> Result<(String, u64), BoxError> {
    let list = artifacts(image);
    blocking(move || fingerprint_blocking(&list)).await
}

/// Removes a tree banger made without ever crossing into another filesystem: a mount left
/// inside (the `/proc` of a killed debootstrap) is skipped, never emptied. A missing path is
/// fine.
pub(crate) fn remove_tree(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    fn walk(dir: &Path, dev: u64) -> std::io::Result<()> {
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let meta = entry.metadata()?;
            if meta.is_dir() {
                if meta.dev() == dev {
                    walk(&entry.path(), dev)?;
                    std::fs::remove_dir(entry.path())?;
                }
            } else {
                std::fs::remove_file(entry.path())?;
            }
        }
        Ok(())
    }
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(err) => return Err(err),
    };
    if !meta.is_dir() {
        return std::fs::remove_file(path);
    }
    walk(path, meta.dev())?;
    std::fs::remove_dir(path)
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// sha256 of `text`, as hex.
pub fn sha256_text(text: &str) -> String {
    hex(&Sha256::digest(text.as_bytes()))
}

/// A user-given artifact path: absolute, an existing readable regular file (a directory for
/// `modules`), not empty. Returns its size.
fn check_readable(field: &'static str, text: &str, dir_ok: bool) -> Result<PathBuf, CoreError> {
    let path = PathBuf::from(text);
    if text.is_empty() || !path.is_absolute() {
        return Err(invalid(field, format!("`{text}` is not an absolute path")));
    }
    let meta =
        std::fs::metadata(&path).map_err(|e| invalid(field, format!("{}: {e}", path.display())))?;
    if meta.is_dir() {
        if dir_ok {
            std::fs::read_dir(&path)
                .map_err(|e| invalid(field, format!("{}: {e}", path.display())))?;
            return Ok(path);
        }
        return Err(invalid(field, format!("{} is a directory", path.display())));
    }
    if !meta.is_file() {
        return Err(invalid(
            field,
            format!("{} is not a regular file", path.display()),
        ));
    }
    std::fs::File::open(&path)
        .map_err(|e| invalid(field, format!("{} is not readable: {e}", path.display())))?;
    if meta.len() == 0 {
        return Err(invalid(field, format!("{} is empty", path.display())));
    }
    Ok(path)
}

/// Checks that `path` holds an ext4 filesystem that fits in the file.
async fn check_ext4(disks: &dyn Disks, field: &'static str, path: &Path) -> Result<(), CoreError> {
    let info = disks
        .check_ext4(path)
        .await
        .map_err(|e| invalid(field, crate::error::chain_of(&e)))?;
    let len = disks.usage(path).map(|u| u.apparent_bytes).unwrap_or(0);
    if info.size_bytes() > len {
        return Err(invalid(
            field,
            format!(
                "{}: the ext4 filesystem claims {} bytes but the file has {len} (truncated?)",
                path.display(),
                info.size_bytes()
            ),
        ));
    }
    Ok(())
}

/// Per-image locks for derived artifacts and promotion. Process-wide: image ids are unique, so
/// several managers in one process (tests) never share a lock by accident.
fn image_lock(id: ImageId) -> Arc<tokio::sync::Mutex<()>> {
    static LOCKS: OnceLock<Mutex<HashMap<ImageId, Arc<tokio::sync::Mutex<()>>>>> = OnceLock::new();
    let mut locks = LOCKS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    locks.entry(id).or_default().clone()
}

/// `<images_dir>/<id>`.
pub fn image_dir(settings: &ImageSettings, id: ImageId) -> PathBuf {
    settings.images_dir.join(id.to_string())
}

/// Makes sure every artifact a VM of `image` needs exists, generating missing derived ones
/// (see the module docs), and returns the record as this boot should use it (for Firecracker
/// with a bzImage kernel: the extracted vmlinux as its kernel). Called by the manager before
/// a VM's disks stage.
pub async fn prepare_for_boot(
    store: &Store,
    host: &ImageHost,
    settings: &ImageSettings,
    vmm: Option<VmmKind>,
    image: &ImageRecord,
) -> Result<ImageRecord, BoxError> {
    let lock = image_lock(image.id);
    let _held = lock.lock().await;
    // Another VM may have derived something meanwhile: work from the stored record.
    let mut record = store.get_image(image.id)?.unwrap_or_else(|| image.clone());
    let dir = image_dir(settings, record.id);
    let mut changed = false;
    if record.work_seed_path.is_none() {
        std::fs::create_dir_all(&dir).map_err(|e| io_context("creating", &dir, e))?;
        let seed = dir.join(files::WORK_SEED);
        let tmp = dir.join(format!("{}.tmp", files::WORK_SEED));
        let _ = host.disks.remove(&tmp).await;
        host.disks
            .mkfs_ext4(&tmp, WORK_SEED_BYTES, None, "banger-work")
            .await
            .map_err(|e| context(format!("making a work seed for image {}", record.name), e))?;
        std::fs::rename(&tmp, &seed).map_err(|e| io_context("renaming", &tmp, e))?;
        record.work_seed_path = Some(seed);
        changed = true;
    }
    if changed {
        let (sha, size) = fingerprint(&record).await?;
        record.sha256 = Some(sha);
        record.size_bytes = size;
        store.update_image_artifacts(&record)?;
        tracing::info!(image = %record.name, "derived a missing work seed");
    }
    let mut boot = record.clone();
    if vmm == Some(VmmKind::Firecracker) {
        let kernel = record.kernel_path.clone();
        let format = tokio::task::spawn_blocking(move || vmlinux::detect_file(&kernel))
            .await
            .map_err(|e| context("reading the kernel", e))?;
        if let Ok(Ok(vmlinux::KernelFormat::BzImage)) = format {
            let target = dir.join(files::VMLINUX);
            if !target.exists() {
                extract_vmlinux_to(&record.kernel_path, &target)
                    .await
                    .map_err(|e| {
                        context(format!("extracting vmlinux for image {}", record.name), e)
                    })?;
                tracing::info!(image = %record.name, "extracted the ELF vmlinux for Firecracker");
            }
            boot.kernel_path = target;
        }
    }
    Ok(boot)
}

/// Extracts the ELF vmlinux of bzImage `kernel` to `target` (via a temporary file).
pub async fn extract_vmlinux_to(kernel: &Path, target: &Path) -> Result<(), BoxError> {
    let kernel = kernel.to_path_buf();
    let target = target.to_path_buf();
    blocking(move || {
        let bytes = std::fs::read(&kernel).map_err(|e| io_context("reading", &kernel, e))?;
        let elf = vmlinux::extract_vmlinux(&bytes)?;
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(|e| io_context("creating", parent, e))?;
        }
        let tmp = target.with_extension("tmp");
        std::fs::write(&tmp, elf).map_err(|e| io_context("writing", &tmp, e))?;
        std::fs::rename(&tmp, &target).map_err(|e| io_context("renaming", &tmp, e))
    })
    .await
}

/// Whether a Firecracker VM can boot `image`: an ELF kernel, or an LZ4 bzImage banger can
/// extract one from (checked from the header, without decompressing).
pub fn firecracker_can_boot(image: &ImageRecord) -> bool {
    std::fs::read(&image.kernel_path)
        .map(|bytes| match vmlinux::detect(&bytes) {
            Ok(vmlinux::KernelFormat::Elf) => true,
            Ok(vmlinux::KernelFormat::BzImage) => vmlinux::has_lz4_payload(&bytes),
            Err(_) => false,
        })
        .unwrap_or(false)
}

/// Copies every artifact of `image` into `dir` (sparse-aware). Returns the record with the
/// new paths. Removes `dir` on failure.
async fn copy_artifacts(
    disks: &dyn Disks,
    image: &ImageRecord,
    dir: &Path,
) -> Result<ImageRecord, BoxError> {
    std::fs::create_dir_all(dir).map_err(|e| io_context("creating", dir, e))?;
    let mut copy = image.clone();
    let result = async {
        copy.kernel_path = copy_one(disks, &image.kernel_path, &dir.join(files::KERNEL)).await?;
        if let Some(p) = &image.initrd_path {
            copy.initrd_path = Some(copy_one(disks, p, &dir.join(files::INITRD)).await?);
        }
        if let Some(p) = &image.modules_path {
            copy.modules_path = Some(copy_one(disks, p, &dir.join(files::MODULES)).await?);
        }
        copy.rootfs_path = copy_one(disks, &image.rootfs_path, &dir.join(files::ROOTFS)).await?;
        if let Some(p) = &image.work_seed_path {
            copy.work_seed_path = Some(copy_one(disks, p, &dir.join(files::WORK_SEED)).await?);
        }
        Ok::<_, BoxError>(())
    }
    .await;
    match result {
        Ok(()) => Ok(copy),
        Err(err) => {
            let _ = remove_tree(dir);
            Err(err)
        }
    }
}

/// Copies one artifact to `dst` unless it already is `dst`.
async fn copy_one(disks: &dyn Disks, src: &Path, dst: &Path) -> Result<PathBuf, BoxError> {
    if src == dst {
        return Ok(dst.to_path_buf());
    }
    if src.is_dir() {
        let (src, dst) = (src.to_path_buf(), dst.to_path_buf());
        return blocking(move || {
            copy_tree(&src, &dst).map_err(|e| io_context("copying", &src, e))?;
            Ok(dst)
        })
        .await;
    }
    let _ = disks.remove(dst).await;
    disks
        .clone_file(src, dst)
        .await
        .map_err(|e| context(format!("copying {}", src.display()), e))?;
    Ok(dst.to_path_buf())
}

fn copy_tree(src: &Path, dst: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dst)?;
    for entry in std::fs::read_dir(src)? {
        let entry = entry?;
        let target = dst.join(entry.file_name());
        let kind = entry.file_type()?;
        if kind.is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else if kind.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(entry.path())?, &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

impl Manager {
    fn image_host(&self) -> &ImageHost {
        &self.backends().images
    }

    fn image_settings(&self) -> &ImageSettings {
        &self.settings().images
    }

    /// Validates a new image name: a DNS label no image has.
    fn new_image_name(&self, field: &'static str, text: &str) -> Result<VmName, CoreError> {
        let name = parse_image_name(field, text)?;
        if self.store().get_image_by_name(name.as_str())?.is_some() {
            return Err(CoreError::Conflict(format!(
                "an image named {name} already exists"
            )));
        }
        Ok(name)
    }

    /// `POST /v1/images`: validates every artifact, then records an unmanaged image pointing
    /// at the user's files. Invalid input: [`CoreError::InvalidInput`] naming the field, and
    /// nothing recorded.
    pub async fn register_image(&self, req: RegisterImageRequest) -> Result<Image, CoreError> {
        let name = self.new_image_name("name", &req.name)?;
        let kernel = check_readable("kernel", &req.kernel, false)?;
        match vmlinux::detect_file(&kernel) {
            Ok(Ok(_)) => {}
            Ok(Err(why)) => return Err(invalid("kernel", format!("{}: {why}", kernel.display()))),
            Err(e) => return Err(invalid("kernel", format!("{}: {e}", kernel.display()))),
        }
        let rootfs = check_readable("rootfs", &req.rootfs, false)?;
        let disks = self.image_host().disks.clone();
        check_ext4(disks.as_ref(), "rootfs", &rootfs).await?;
        let initrd = req
            .initrd
            .as_deref()
            .map(|p| check_readable("initrd", p, false))
            .transpose()?;
        let modules = req
            .modules
            .as_deref()
            .map(|p| check_readable("modules", p, true))
            .transpose()?;
        let work_seed = req
            .work_seed
            .as_deref()
            .map(|p| check_readable("work_seed", p, false))
            .transpose()?;
        if let Some(seed) = &work_seed {
            check_ext4(disks.as_ref(), "work_seed", seed).await?;
        }
        let cmdline = req
            .cmdline
            .clone()
            .unwrap_or_else(|| DEFAULT_CMDLINE.to_string());
        if cmdline.len() > MAX_CMDLINE || cmdline.contains(['\n', '\0']) {
            return Err(invalid(
                "cmdline",
                format!("must be one line of at most {MAX_CMDLINE} bytes"),
            ));
        }
        if req.readiness_ports.contains(&0) {
            return Err(invalid("readiness_ports", "port 0 is not a port"));
        }
        let mut record = ImageRecord {
            id: ImageId::new(),
            name,
            kernel_path: kernel,
            initrd_path: initrd,
            modules_path: modules,
            rootfs_path: rootfs,
            work_seed_path: work_seed,
            cmdline,
            readiness_ports: req.readiness_ports.clone(),
            agent_version: None,
            parent_id: None,
            sha256: None,
            managed: false,
            size_bytes: 0,
            root_mode: req.root_mode.unwrap_or_default(),
            created_at: chrono::Utc::now(),
        };
        let (sha, size) = fingerprint(&record)
            .await
            .map_err(|source| CoreError::Image {
                image: record.name.to_string(),
                step: "fingerprinting",
                source,
            })?;
        record.sha256 = Some(sha);
        record.size_bytes = size;
        self.store().insert_image(&record)?;
        tracing::info!(image = %record.name, "registered an unmanaged image");
        Ok(record.to_api())
    }

    /// `POST /v1/images/{image}/promote`: copies an unmanaged image's files into banger's
    /// image store and marks it managed (a managed image is returned as it is).
    pub async fn promote_image(&self, reference: &str) -> Result<Image, CoreError> {
        let image = self.resolve_image(reference)?;
        let lock = image_lock(image.id);
        let _held = lock.lock().await;
        let image = self.resolve_image(&image.id.to_string())?;
        if image.managed {
            return Ok(image.to_api());
        }
        let dir = image_dir(self.image_settings(), image.id);
        let step = |step| {
            let name = image.name.to_string();
            move |source| CoreError::Image {
                image: name,
                step,
                source,
            }
        };
        let mut copy = copy_artifacts(self.image_host().disks.as_ref(), &image, &dir)
            .await
            .map_err(step("copying into the image store"))?;
        let (sha, size) = match fingerprint(&copy).await {
            Ok(done) => done,
            Err(source) => {
                let _ = remove_tree(&dir);
                return Err(step("fingerprinting")(source));
            }
        };
        copy.sha256 = Some(sha);
        copy.size_bytes = size;
        copy.managed = true;
        if let Err(err) = self.store().update_image_artifacts(&copy) {
            let _ = remove_tree(&dir);
            return Err(err.into());
        }
        tracing::info!(image = %copy.name, dir = %dir.display(), "promoted into the image store");
        Ok(copy.to_api())
    }

    /// Removes what banger keeps for an image that is gone from the store: its directory in
    /// the image store (copies and derived artifacts). The user's own files are never touched.
    pub(crate) fn remove_image_files(&self, id: ImageId) {
        let dir = image_dir(self.image_settings(), id);
        if let Err(err) = remove_tree(&dir) {
            if err.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(dir = %dir.display(), error = %err, "removing image files");
            }
        }
    }
}

/// Names an image cannot have: the API's own routes under `/v1/images/` (`POST
/// /v1/images/bootstrap`, `POST /v1/images/build`) would shadow it.
pub const RESERVED_IMAGE_NAMES: &[&str] = &["bootstrap", "build"];

/// Parses an image name: a DNS label that is not one of [`RESERVED_IMAGE_NAMES`].
pub(crate) fn parse_image_name(field: &'static str, text: &str) -> Result<VmName, CoreError> {
    let name = VmName::parse(text).map_err(|e| invalid(field, e.to_string()))?;
    if RESERVED_IMAGE_NAMES.contains(&name.as_str()) {
        return Err(invalid(
            field,
            format!("`{name}` is reserved (it names an API route); choose another name"),
        ));
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Seek, SeekFrom, Write};

    fn hash_of(path: &Path) -> String {
        fingerprint_blocking(&[("rootfs", path.to_path_buf())])
            .unwrap()
            .0
    }

    #[test]
    fn a_sparse_file_and_a_full_copy_have_one_fingerprint() {
        let dir = tempfile::tempdir().unwrap();
        let sparse = dir.path().join("sparse");
        let mut file = std::fs::File::create(&sparse).unwrap();
        file.set_len(8 << 20).unwrap();
        file.seek(SeekFrom::Start(3 << 20)).unwrap();
        file.write_all(b"data in the middle").unwrap();
        drop(file);
        let dense = dir.path().join("dense");
        std::fs::write(&dense, std::fs::read(&sparse).unwrap()).unwrap();
        assert_eq!(hash_of(&sparse), hash_of(&dense));

        let other = dir.path().join("other");
        let mut bytes = std::fs::read(&sparse).unwrap();
        bytes[5 << 20] = 1;
        std::fs::write(&other, bytes).unwrap();
        assert_ne!(hash_of(&sparse), hash_of(&other));
        let longer = dir.path().join("longer");
        let mut bytes = std::fs::read(&sparse).unwrap();
        bytes.push(0);
        std::fs::write(&longer, bytes).unwrap();
        assert_ne!(hash_of(&sparse), hash_of(&longer), "the length counts");
    }

    #[test]
    fn remove_tree_removes_files_dirs_and_symlinks_without_following_them() {
        let dir = tempfile::tempdir().unwrap();
        let keep = dir.path().join("keep");
        std::fs::write(&keep, "x").unwrap();
        let tree = dir.path().join("tree");
        std::fs::create_dir_all(tree.join("a/b")).unwrap();
        std::fs::write(tree.join("a/b/f"), "x").unwrap();
        std::os::unix::fs::symlink(&keep, tree.join("a/link")).unwrap();
        remove_tree(&tree).unwrap();
        assert!(!tree.exists());
        assert!(keep.exists());
        remove_tree(&tree).unwrap();
    }
}

//! The host programs that build images: debootstrap, apt (download only), npm, tar.
//!
//! Image builds run these on the host, never inside a VM, so a builder VM needs no network:
//! `debootstrap` makes a Debian tree from Debian's packages, `apt-get --download-only` fetches
//! the `.deb` files a build installs (resolved against the *guest's* dpkg status and apt
//! sources, with apt's lists kept in a private directory, so the host's own apt state is never
//! touched), `npm pack` fetches an npm package's tarball, and `tar` unpacks archives. Every
//! command runs through [`exec::execute`]; [`FakeBuildTools`] records calls and makes small
//! stand-in files so the image pipeline runs in tests without a network.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;

use crate::exec::{self, CommandError, CommandSpec};

/// `debootstrap` may take this long (about 100 s measured, slow mirrors take longer).
const DEBOOTSTRAP_TIMEOUT: Duration = Duration::from_secs(45 * 60);
/// Downloads of packages and npm tarballs.
const DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(20 * 60);
/// Private apt lists older than this are refreshed before a download.
const LISTS_MAX_AGE: Duration = Duration::from_secs(24 * 3600);

/// A Debian tree to make with `debootstrap`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Debootstrap {
    /// Release, e.g. `bookworm`.
    pub suite: String,
    /// Packages added to the minimal base (`--include`).
    pub include: Vec<String>,
    /// Directory to fill (created by debootstrap; must not hold an older tree).
    pub target: PathBuf,
    /// Mirror URL, e.g. `http://deb.debian.org/debian`.
    pub mirror: String,
}

/// What apt needs to resolve packages for a guest rather than for the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AptGuest {
    /// A copy of the guest's `/var/lib/dpkg/status` (what is installed there).
    pub dpkg_status: PathBuf,
    /// A copy of the guest's `/etc/apt/sources.list` (where its packages come from).
    pub sources_list: PathBuf,
    /// Private apt state (lists) for these sources; kept between builds, refreshed daily.
    pub state_dir: PathBuf,
}

/// Why a build tool failed.
#[derive(Debug, thiserror::Error)]
pub enum BuildToolError {
    /// The command ran and failed (or could not start, or timed out).
    #[error("{what}")]
    Command {
        /// What banger was doing.
        what: String,
        /// The command's failure: argv, status, output.
        #[source]
        source: CommandError,
    },
    /// A file or directory banger prepares for the tool could not be made or read.
    #[error("{what} {}", .path.display())]
    Io {
        /// What banger was doing.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The tool succeeded but did not produce what it should have.
    #[error("{0}")]
    Unexpected(String),
    /// A failure [`FakeBuildTools`] was told to produce.
    #[error("{0} failed (injected by FakeBuildTools)")]
    Injected(&'static str),
}

/// The host programs image builds use.
#[async_trait]
pub trait BuildTools: Send + Sync + fmt::Debug {
    /// Makes a Debian tree with `debootstrap --variant=minbase`.
    async fn debootstrap(&self, request: &Debootstrap) -> Result<(), BuildToolError>;

    /// Downloads the `.deb` files needed to install `packages` into the guest described by
    /// `guest` (dependencies included, what the guest has left out) into `dest`. Returns them
    /// (empty when the guest already has everything).
    async fn download_debs(
        &self,
        packages: &[String],
        guest: &AptGuest,
        dest: &Path,
    ) -> Result<Vec<PathBuf>, BuildToolError>;

    /// Downloads the tarball of npm package `spec` (e.g. `opencode-ai@latest`) into `dest`.
    async fn npm_pack(&self, spec: &str, dest: &Path) -> Result<PathBuf, BuildToolError>;

    /// Unpacks `archive` (tar, optionally compressed) into `dest`, keeping numeric owners and
    /// permissions, dropping `strip_components` leading path parts.
    async fn unpack_tar(
        &self,
        archive: &Path,
        dest: &Path,
        strip_components: u32,
    ) -> Result<(), BuildToolError>;

    /// Lazily unmounts everything mounted under `dir` (deepest first), e.g. the `/proc` and
    /// `/sys` a killed debootstrap left in its target. Returns the mount points it released.
    async fn unmount_under(&self, dir: &Path) -> Result<Vec<PathBuf>, BuildToolError>;
}

/// Mount points under `dir` in `mountinfo` text (`/proc/self/mountinfo`), deepest first.
pub fn mounts_under(mountinfo: &str, dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|field| PathBuf::from(unescape_mount_path(field)))
        .filter(|point| point.starts_with(dir) && point != dir)
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found.dedup();
    found
}

/// Undoes the octal escapes (`\040` for a space) of mountinfo paths.
fn unescape_mount_path(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)));
        if let (b'\\', Some(digits)) = (bytes[i], octal) {
            let value = digits
                .iter()
                .fold(0u8, |acc, d| acc.wrapping_mul(8).wrapping_add(d - b'0'));
            out.push(value);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The real programs, looked up on `PATH`.
#[derive(Debug, Clone, Default)]
pub struct RealBuildTools;

impl RealBuildTools {
    /// The real tools.
    pub fn new() -> Self {
        Self
    }
}

fn run_failed(what: impl Into<String>) -> impl FnOnce(CommandError) -> BuildToolError {
    let what = what.into();
    move |source| BuildToolError::Command { what, source }
}

fn apt_options(guest: &AptGuest) -> Vec<String> {
    let state = guest.state_dir.display();
    vec![
        "-o".into(),
        format!("Dir::State::status={}", guest.dpkg_status.display()),
        "-o".into(),
        format!("Dir::Etc::SourceList={}", guest.sources_list.display()),
        "-o".into(),
        "Dir::Etc::SourceParts=/nonexistent".into(),
        "-o".into(),
        format!("Dir::State::Lists={state}/lists"),
        "-o".into(),
        format!("Dir::Cache={state}/cache"),
        "-o".into(),
        "Debug::NoLocking=1".into(),
        "-o".into(),
        "APT::Sandbox::User=root".into(),
    ]
}

fn lists_are_fresh(lists: &Path) -> bool {
    let Ok(entries) = std::fs::read_dir(lists) else {
        return false;
    };
    entries.filter_map(Result::ok).any(|entry| {
        entry.file_name().to_string_lossy().contains("_Packages")
            && entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| SystemTime::now().duration_since(t).ok())
                .is_some_and(|age| age < LISTS_MAX_AGE)
    })
}

fn make_dir(what: &'static str, path: &Path) -> Result<(), BuildToolError> {
    std::fs::create_dir_all(path).map_err(|source| BuildToolError::Io {
        what,
        path: path.to_path_buf(),
        source,
    })
}

fn debs_in(dir: &Path) -> Result<Vec<PathBuf>, BuildToolError> {
    let entries = std::fs::read_dir(dir).map_err(|source| BuildToolError::Io {
        what: "listing",
        path: dir.to_path_buf(),
        source,
    })?;
    let mut debs: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|ext| ext == "deb"))
        .collect();
    debs.sort();
    Ok(debs)
}

#[async_trait]
impl BuildTools for RealBuildTools {
    async fn debootstrap(&self, request: &Debootstrap) -> Result<(), BuildToolError> {
        let mut spec = CommandSpec::new("debootstrap").arg("--variant=minbase");
        if !request.include.is_empty() {
            spec = spec.arg(format!("--include={}", request.include.join(",")));
        }
        let spec = spec
            .arg(&request.suite)
            .arg(request.target.as_os_str())
            .arg(&request.mirror)
            .timeout(DEBOOTSTRAP_TIMEOUT);
        exec::execute(&spec).await.map_err(run_failed(format!(
            "debootstrap of {} from {}",
            request.suite, request.mirror
        )))?;
        Ok(())
    }

    async fn download_debs(
        &self,
        packages: &[String],
        guest: &AptGuest,
        dest: &Path,
    ) -> Result<Vec<PathBuf>, BuildToolError> {
        if packages.is_empty() {
            return Ok(Vec::new());
        }
        let lists = guest.state_dir.join("lists");
        make_dir("creating", &lists.join("partial"))?;
        make_dir("creating", &guest.state_dir.join("cache/archives/partial"))?;
        make_dir("creating", &dest.join("partial"))?;
        if !lists_are_fresh(&lists) {
            let spec = CommandSpec::new("apt-get")
                .args(apt_options(guest))
                .args(["-q", "update"])
                .timeout(DOWNLOAD_TIMEOUT);
            exec::execute(&spec).await.map_err(run_failed(
                "refreshing the package lists of the guest's sources",
            ))?;
        }
        let spec = CommandSpec::new("apt-get")
            .args(apt_options(guest))
            .arg("-o")
            .arg(format!("Dir::Cache::archives={}", dest.display()))
            .args([
                "-q",
                "-y",
                "--no-install-recommends",
                "--download-only",
                "install",
            ])
            .args(packages)
            .timeout(DOWNLOAD_TIMEOUT);
        exec::execute(&spec).await.map_err(run_failed(format!(
            "downloading packages {}",
            packages.join(" ")
        )))?;
        let _ = std::fs::remove_dir(dest.join("partial"));
        let _ = std::fs::remove_file(dest.join("lock"));
        debs_in(dest)
    }

    async fn npm_pack(&self, spec_text: &str, dest: &Path) -> Result<PathBuf, BuildToolError> {
        make_dir("creating", dest)?;
        let spec = CommandSpec::new("npm")
            .args(["pack", "--silent", "--pack-destination"])
            .arg(dest.as_os_str())
            .arg(spec_text)
            .timeout(DOWNLOAD_TIMEOUT);
        let out = exec::execute(&spec)
            .await
            .map_err(run_failed(format!("npm pack {spec_text}")))?;
        let name = out
            .stdout
            .lines()
            .map(str::trim)
            .rfind(|line| line.ends_with(".tgz"))
            .ok_or_else(|| {
                BuildToolError::Unexpected(format!(
                    "npm pack {spec_text} printed no tarball name: {}",
                    out.stdout.trim()
                ))
            })?;
        Ok(dest.join(name))
    }

    async fn unpack_tar(
        &self,
        archive: &Path,
        dest: &Path,
        strip_components: u32,
    ) -> Result<(), BuildToolError> {
        make_dir("creating", dest)?;
        let mut spec = CommandSpec::new("tar")
            .args(["-x", "--numeric-owner", "--same-owner", "-p", "-f"])
            .arg(archive.as_os_str())
            .arg("-C")
            .arg(dest.as_os_str());
        if strip_components > 0 {
            spec = spec.arg(format!("--strip-components={strip_components}"));
        }
        exec::execute(&spec.timeout(DOWNLOAD_TIMEOUT))
            .await
            .map_err(run_failed(format!("unpacking {}", archive.display())))?;
        Ok(())
    }

    async fn unmount_under(&self, dir: &Path) -> Result<Vec<PathBuf>, BuildToolError> {
        let mountinfo_path = Path::new("/proc/self/mountinfo");
        let mountinfo =
            std::fs::read_to_string(mountinfo_path).map_err(|source| BuildToolError::Io {
                what: "reading",
                path: mountinfo_path.to_path_buf(),
                source,
            })?;
        let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
        let points = mounts_under(&mountinfo, &dir);
        for point in &points {
            let spec = CommandSpec::new("umount")
                .arg("-l")
                .arg(point.as_os_str())
                .timeout(Duration::from_secs(30));
            exec::execute(&spec)
                .await
                .map_err(run_failed(format!("unmounting {}", point.display())))?;
        }
        Ok(points)
    }
}

/// One call to [`FakeBuildTools`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BuildToolCall {
    /// `debootstrap`.
    Debootstrap(Debootstrap),
    /// `download_debs(packages)`.
    DownloadDebs(Vec<String>),
    /// `npm_pack(spec)`.
    NpmPack(String),
    /// `unpack_tar(archive, dest)`.
    UnpackTar(PathBuf, PathBuf),
}

#[derive(Debug, Default)]
struct FakeState {
    calls: Vec<BuildToolCall>,
    fail: Vec<&'static str>,
    kernel: Option<Vec<u8>>,
}

/// Recording fake: every call is logged; `debootstrap` writes a tiny Debian-shaped tree
/// (a kernel and initrd in `/boot`, SSH host keys, a machine-id, `/root/.profile`),
/// `download_debs` writes one stand-in `.deb` per package, `npm_pack` an empty tarball name,
/// `unpack_tar` a marker file.
#[derive(Debug, Default)]
pub struct FakeBuildTools {
    state: Mutex<FakeState>,
}

/// Name of the kernel release the fake debootstrap installs.
pub const FAKE_KERNEL_RELEASE: &str = "6.1.0-99-cloud-amd64";

impl FakeBuildTools {
    /// A fake with nothing recorded.
    pub fn new() -> Self {
        Self::default()
    }

    /// Calls so far, oldest first.
    pub fn calls(&self) -> Vec<BuildToolCall> {
        self.lock().calls.clone()
    }

    /// Makes every later call of `operation` (`debootstrap`, `download_debs`, `npm_pack`,
    /// `unpack_tar`) fail.
    pub fn fail(&self, operation: &'static str) {
        self.lock().fail.push(operation);
    }

    /// The bytes the fake debootstrap writes as the kernel (default: a minimal bzImage header).
    pub fn set_kernel(&self, bytes: Vec<u8>) {
        self.lock().kernel = Some(bytes);
    }

    fn lock(&self) -> MutexGuard<'_, FakeState> {
        // Single pushes and reads: a poisoned lock still holds consistent data.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn record(&self, call: BuildToolCall, operation: &'static str) -> Result<(), BuildToolError> {
        let mut state = self.lock();
        state.calls.push(call);
        if state.fail.contains(&operation) {
            return Err(BuildToolError::Injected(operation));
        }
        Ok(())
    }
}

/// A minimal bzImage: boot sector signature and the `HdrS` setup header magic at 0x202.
pub fn fake_bzimage() -> Vec<u8> {
    let mut bytes = vec![0u8; 4096];
    bytes[0x1fe] = 0x55;
    bytes[0x1ff] = 0xaa;
    bytes[0x202..0x206].copy_from_slice(b"HdrS");
    bytes
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), BuildToolError> {
    if let Some(parent) = path.parent() {
        make_dir("creating", parent)?;
    }
    std::fs::write(path, bytes).map_err(|source| BuildToolError::Io {
        what: "writing",
        path: path.to_path_buf(),
        source,
    })
}

#[async_trait]
impl BuildTools for FakeBuildTools {
    async fn debootstrap(&self, request: &Debootstrap) -> Result<(), BuildToolError> {
        self.record(BuildToolCall::Debootstrap(request.clone()), "debootstrap")?;
        let kernel = self.lock().kernel.clone().unwrap_or_else(fake_bzimage);
        let root = &request.target;
        write(
            &root.join(format!("boot/vmlinuz-{FAKE_KERNEL_RELEASE}")),
            &kernel,
        )?;
        write(
            &root.join(format!("boot/initrd.img-{FAKE_KERNEL_RELEASE}")),
            b"fake initrd",
        )?;
        write(&root.join("etc/ssh/ssh_host_ed25519_key"), b"shared key")?;
        write(&root.join("etc/ssh/ssh_host_ed25519_key.pub"), b"shared")?;
        write(&root.join("etc/machine-id"), b"0123456789abcdef\n")?;
        write(&root.join("etc/hostname"), b"builder\n")?;
        write(&root.join("root/.profile"), b"# profile\n")?;
        write(
            &root.join("etc/apt/sources.list"),
            format!("deb {} {} main\n", request.mirror, request.suite).as_bytes(),
        )?;
        make_dir("creating", &root.join("usr/lib/systemd/system"))?;
        Ok(())
    }

    async fn download_debs(
        &self,
        packages: &[String],
        _guest: &AptGuest,
        dest: &Path,
    ) -> Result<Vec<PathBuf>, BuildToolError> {
        self.record(
            BuildToolCall::DownloadDebs(packages.to_vec()),
            "download_debs",
        )?;
        let mut debs = Vec::new();
        for package in packages {
            let path = dest.join(format!("{package}_1.0_amd64.deb"));
            write(&path, b"!<arch>\n")?;
            debs.push(path);
        }
        Ok(debs)
    }

    async fn npm_pack(&self, spec: &str, dest: &Path) -> Result<PathBuf, BuildToolError> {
        self.record(BuildToolCall::NpmPack(spec.to_string()), "npm_pack")?;
        let path = dest.join(format!("{}.tgz", spec.replace(['/', '@'], "-")));
        write(&path, b"")?;
        Ok(path)
    }

    async fn unpack_tar(
        &self,
        archive: &Path,
        dest: &Path,
        _strip_components: u32,
    ) -> Result<(), BuildToolError> {
        self.record(
            BuildToolCall::UnpackTar(archive.to_path_buf(), dest.to_path_buf()),
            "unpack_tar",
        )?;
        write(&dest.join(".banger-fake-unpacked"), b"")
    }

    async fn unmount_under(&self, _dir: &Path) -> Result<Vec<PathBuf>, BuildToolError> {
        Ok(Vec::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apt_resolves_against_the_guest_not_the_host() {
        let options = apt_options(&AptGuest {
            dpkg_status: "/b/status".into(),
            sources_list: "/b/sources.list".into(),
            state_dir: "/c/apt".into(),
        })
        .join(" ");
        assert!(options.contains("Dir::State::status=/b/status"));
        assert!(options.contains("Dir::Etc::SourceList=/b/sources.list"));
        assert!(options.contains("Dir::State::Lists=/c/apt/lists"));
        assert!(options.contains("Debug::NoLocking=1"));
    }

    #[test]
    fn mounts_under_a_tree_are_found_deepest_first() {
        let mountinfo = "\
22 1 8:1 / / rw - ext4 /dev/sda1 rw
30 22 0:5 / /var/tmp/t/tree/proc rw - proc proc rw
31 30 0:6 / /var/tmp/t/tree/proc/sys/fs/binfmt_misc rw - binfmt_misc x rw
32 22 0:7 / /var/tmp/t/tree\\040x/sys rw - sysfs sysfs rw
33 22 0:8 / /var/tmp/t/treehouse rw - tmpfs t rw
";
        assert_eq!(
            mounts_under(mountinfo, Path::new("/var/tmp/t/tree")),
            vec![
                PathBuf::from("/var/tmp/t/tree/proc/sys/fs/binfmt_misc"),
                PathBuf::from("/var/tmp/t/tree/proc"),
            ]
        );
        assert_eq!(
            mounts_under(mountinfo, Path::new("/var/tmp/t/tree x")),
            vec![PathBuf::from("/var/tmp/t/tree x/sys")]
        );
    }

    #[test]
    fn missing_lists_are_not_fresh() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!lists_are_fresh(&dir.path().join("nope")));
        assert!(!lists_are_fresh(dir.path()));
        std::fs::write(
            dir.path()
                .join("deb_dists_bookworm_main_binary-amd64_Packages.lz4"),
            "",
        )
        .unwrap();
        assert!(lists_are_fresh(dir.path()));
    }
}

//! [`FakeHost`]: a staged host for tests, compiled always so other crates' tests can use it too.
//!
//! A test describes the host with builder methods (files, device nodes that open, binaries with
//! their `--version` output, free space, CPU flags) and hands the fake to [`crate::run`].
//! Anything not staged does not exist. Every question asked is recorded in order (see
//! [`FakeHost::asked`]), so a test can also pin what doctor looked at.
//!
//! Concurrency: the record is behind a `Mutex`, so the fake is `Sync` like the real probe.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use crate::probe::HostProbe;

/// A staged host; everything not staged is absent.
#[derive(Debug, Default)]
pub struct FakeHost {
    files: BTreeMap<PathBuf, String>,
    present: BTreeSet<PathBuf>,
    openable: BTreeSet<PathBuf>,
    binaries: BTreeMap<String, FakeBinary>,
    outputs: BTreeMap<(PathBuf, String), io::Result<String>>,
    free: BTreeMap<PathBuf, (u64, u64)>,
    cpu_flags: Vec<String>,
    euid: u32,
    asked: Mutex<Vec<String>>,
}

#[derive(Debug, Clone)]
struct FakeBinary {
    path: PathBuf,
    output: String,
}

impl FakeHost {
    /// An empty host, seen by root (uid 0).
    pub fn new() -> Self {
        Self::default()
    }

    /// A readable file with `text` (its parent directories exist too).
    pub fn with_file(mut self, path: impl Into<PathBuf>, text: impl Into<String>) -> Self {
        self.files.insert(path.into(), text.into());
        self
    }

    /// A path that exists but cannot be opened read-write: a directory such as
    /// `/sys/module/kvm_pvm`, or a device node without permission.
    pub fn with_path(mut self, path: impl Into<PathBuf>) -> Self {
        self.present.insert(path.into());
        self
    }

    /// A path that exists and opens read-write (e.g. `/dev/kvm`).
    pub fn with_rw(mut self, path: impl Into<PathBuf>) -> Self {
        self.openable.insert(path.into());
        self
    }

    /// An executable `name` found on `PATH` at `path`, printing `version_output` for any arguments.
    pub fn with_binary(
        mut self,
        name: impl Into<String>,
        path: impl Into<PathBuf>,
        version_output: impl Into<String>,
    ) -> Self {
        self.binaries.insert(
            name.into(),
            FakeBinary {
                path: path.into(),
                output: version_output.into(),
            },
        );
        self
    }

    /// What running `path` with exactly `args` prints (`Err`: it fails), overriding the output
    /// staged with [`FakeHost::with_binary`] for those arguments.
    pub fn with_output(
        mut self,
        path: impl Into<PathBuf>,
        args: &[&str],
        output: io::Result<String>,
    ) -> Self {
        self.outputs.insert((path.into(), args.join(" ")), output);
        self
    }

    /// `free` of `total` bytes on the file system mounted at `path` (longest prefix wins).
    pub fn with_free(mut self, path: impl Into<PathBuf>, free: u64, total: u64) -> Self {
        self.free.insert(path.into(), (free, total));
        self
    }

    /// The CPU flags `/proc/cpuinfo` would show.
    pub fn with_cpu_flags(mut self, flags: &[&str]) -> Self {
        self.cpu_flags = flags.iter().map(|flag| (*flag).to_owned()).collect();
        self
    }

    /// The effective uid doctor runs as (0 unless set).
    pub fn with_euid(mut self, euid: u32) -> Self {
        self.euid = euid;
        self
    }

    /// Every question asked so far, in order: `read PATH`, `exists PATH`, `open PATH`,
    /// `which NAME`, `run PATH ARGS…`, `statvfs PATH`, `cpu_flags`, `euid`.
    pub fn asked(&self) -> Vec<String> {
        self.asked
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn record(&self, question: String) {
        self.asked
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(question);
    }

    fn staged(&self, path: &Path) -> bool {
        let is_or_holds = |staged: &PathBuf| staged.starts_with(path);
        self.files.keys().any(is_or_holds)
            || self.present.iter().any(is_or_holds)
            || self.openable.iter().any(is_or_holds)
            || self.binaries.values().any(|binary| binary.path == path)
    }
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{} is not staged", path.display()),
    )
}

impl HostProbe for FakeHost {
    fn read_to_string(&self, path: &Path) -> io::Result<String> {
        self.record(format!("read {}", path.display()));
        self.files.get(path).cloned().ok_or_else(|| not_found(path))
    }

    fn exists(&self, path: &Path) -> bool {
        self.record(format!("exists {}", path.display()));
        self.staged(path)
    }

    fn can_open_rw(&self, path: &Path) -> io::Result<()> {
        self.record(format!("open {}", path.display()));
        if self.openable.contains(path) {
            Ok(())
        } else if self.staged(path) {
            Err(io::Error::from(io::ErrorKind::PermissionDenied))
        } else {
            Err(not_found(path))
        }
    }

    fn find_in_path(&self, program: &str) -> Option<PathBuf> {
        self.record(format!("which {program}"));
        self.binaries.get(program).map(|binary| binary.path.clone())
    }

    fn command_output(&self, program: &Path, args: &[&str]) -> io::Result<String> {
        let mut question = format!("run {}", program.display());
        for arg in args {
            question.push(' ');
            question.push_str(arg);
        }
        self.record(question);
        if let Some(output) = self.outputs.get(&(program.to_path_buf(), args.join(" "))) {
            return match output {
                Ok(text) => Ok(text.clone()),
                Err(err) => Err(io::Error::new(err.kind(), err.to_string())),
            };
        }
        self.binaries
            .values()
            .find(|binary| binary.path == program)
            .map(|binary| binary.output.clone())
            .ok_or_else(|| not_found(program))
    }

    fn free_bytes(&self, path: &Path) -> io::Result<(u64, u64)> {
        self.record(format!("statvfs {}", path.display()));
        self.free
            .iter()
            .filter(|(mount, _)| path.starts_with(mount))
            .max_by_key(|(mount, _)| mount.components().count())
            .map(|(_, sizes)| *sizes)
            .ok_or_else(|| not_found(path))
    }

    fn cpu_flags(&self) -> Vec<String> {
        self.record("cpu_flags".to_owned());
        self.cpu_flags.clone()
    }

    fn effective_uid(&self) -> u32 {
        self.record("euid".to_owned());
        self.euid
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap: a panic is the failure report
mod tests {
    use super::*;

    #[test]
    fn staged_files_imply_their_parent_directories() {
        let host = FakeHost::new().with_file("/sys/module/kvm_pvm/refcnt", "1\n");
        assert!(host.exists(Path::new("/sys/module/kvm_pvm")));
        assert!(!host.exists(Path::new("/sys/module/kvm_intel")));
    }

    #[test]
    fn a_present_path_that_is_not_rw_is_permission_denied() {
        let host = FakeHost::new().with_path("/dev/kvm");
        let err = host.can_open_rw(Path::new("/dev/kvm")).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied);
        let err = host.can_open_rw(Path::new("/dev/net/tun")).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn free_space_comes_from_the_longest_staged_mount() {
        let host = FakeHost::new()
            .with_free("/", 1, 10)
            .with_free("/var/lib", 5, 50);
        assert_eq!(
            host.free_bytes(Path::new("/var/lib/banger")).unwrap(),
            (5, 50)
        );
        assert_eq!(host.free_bytes(Path::new("/home")).unwrap(), (1, 10));
    }

    #[test]
    fn every_question_is_recorded_in_order() {
        let host = FakeHost::new().with_binary("nft", "/usr/sbin/nft", "nftables v1.0.6\n");
        let nft = host.find_in_path("nft").unwrap();
        host.command_output(&nft, &["--version"]).unwrap();
        assert_eq!(host.asked(), ["which nft", "run /usr/sbin/nft --version"]);
    }
}

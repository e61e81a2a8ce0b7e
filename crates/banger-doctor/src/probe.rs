//! Every read doctor makes of the host, behind one narrow trait.
//!
//! [`HostProbe`] is the whole surface: reading small files, testing for paths, opening device
//! nodes read-write, `PATH` look-ups, running a program's `--version`, `statvfs`, CPU flags and
//! the effective uid. [`RealHost`] answers from the machine; [`crate::FakeHost`] answers from a
//! staged description and records what was asked.
//!
//! Paths: callers always speak of host paths as the host sees them (`/dev/kvm`,
//! `/proc/net/route`, the configured state dir). [`RealHost`] resolves each of them under its
//! `root`, so a test can point it at a temporary directory laid out like a host.
//!
//! Concurrency: implementations are `Send + Sync` so the daemon can run doctor from a blocking
//! task; [`RealHost`] holds no state.

use std::fs::OpenOptions;
use std::io::{self, Read};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

/// How long a `--version` run may take before [`RealHost`] kills it.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

/// Directories searched after `PATH`: the daemon runs as root, whose `PATH` has the `sbin`
/// directories, but a user running `banger doctor` often does not (e2fsprogs and nft live there).
const SBIN_FALLBACK: &[&str] = &["/usr/local/sbin", "/usr/sbin", "/sbin"];

/// Every read doctor makes of the host, so a test can stage any host.
pub trait HostProbe: Send + Sync {
    /// Reads a small text file (e.g. `/proc/sys/net/ipv4/ip_forward`).
    fn read_to_string(&self, path: &Path) -> io::Result<String>;
    /// Whether `path` exists (file, directory or device node).
    fn exists(&self, path: &Path) -> bool;
    /// Opens `path` read-write and closes it again (e.g. `/dev/kvm`, `/dev/net/tun`).
    fn can_open_rw(&self, path: &Path) -> io::Result<()>;
    /// Finds an executable named `program` on `PATH` (and the `sbin` directories).
    fn find_in_path(&self, program: &str) -> Option<PathBuf>;
    /// Runs `program args…` and returns its stdout followed by its stderr; an error when it cannot
    /// start, exits unsuccessfully or outlives a timeout.
    fn command_output(&self, program: &Path, args: &[&str]) -> io::Result<String>;
    /// `(free, total)` bytes of the file system holding `path`, measured at its nearest existing
    /// ancestor (the state dir may not exist yet).
    fn free_bytes(&self, path: &Path) -> io::Result<(u64, u64)>;
    /// The CPU feature flags from the first `flags` line of `/proc/cpuinfo`; empty if unreadable.
    fn cpu_flags(&self) -> Vec<String>;
    /// The effective uid of the process running doctor (device permissions depend on it).
    fn effective_uid(&self) -> u32;
}

/// The real host, with every path resolved under `root`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RealHost {
    /// `/` normally; a prefix for every path doctor reads, so tests can stage a host in a temp dir.
    pub root: PathBuf,
}

impl Default for RealHost {
    fn default() -> Self {
        RealHost { root: "/".into() }
    }
}

impl RealHost {
    /// A probe of the host seen under `root` (`/` for the machine itself).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        RealHost { root: root.into() }
    }

    /// Where the host path `path` is on this machine.
    fn resolve(&self, path: &Path) -> PathBuf {
        if self.root == Path::new("/") {
            return path.to_path_buf();
        }
        self.root.join(path.strip_prefix("/").unwrap_or(path))
    }

    fn search_dirs() -> Vec<PathBuf> {
        let path = std::env::var_os("PATH").unwrap_or_default();
        let mut dirs: Vec<PathBuf> = std::env::split_paths(&path)
            .filter(|dir| dir.is_absolute())
            .collect();
        for extra in SBIN_FALLBACK {
            let extra = PathBuf::from(extra);
            if !dirs.contains(&extra) {
                dirs.push(extra);
            }
        }
        dirs
    }
}

fn is_executable_file(path: &Path) -> bool {
    std::fs::metadata(path)
        .map(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

impl HostProbe for RealHost {
    fn read_to_string(&self, path: &Path) -> io::Result<String> {
        std::fs::read_to_string(self.resolve(path))
    }

    fn exists(&self, path: &Path) -> bool {
        // symlink_metadata: a dangling symlink still "exists" as far as a user is concerned.
        std::fs::symlink_metadata(self.resolve(path)).is_ok()
    }

    fn can_open_rw(&self, path: &Path) -> io::Result<()> {
        // O_NONBLOCK so that a FIFO (or an odd device) cannot hang doctor; /dev/kvm and
        // /dev/net/tun do nothing on open alone, and the descriptor is closed on drop.
        OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(self.resolve(path))
            .map(drop)
    }

    fn find_in_path(&self, program: &str) -> Option<PathBuf> {
        if program.contains('/') {
            let path = PathBuf::from(program);
            return is_executable_file(&self.resolve(&path)).then_some(path);
        }
        Self::search_dirs()
            .into_iter()
            .map(|dir| dir.join(program))
            .find(|candidate| is_executable_file(&self.resolve(candidate)))
    }

    fn command_output(&self, program: &Path, args: &[&str]) -> io::Result<String> {
        run_bounded(&self.resolve(program), args, COMMAND_TIMEOUT)
    }

    fn free_bytes(&self, path: &Path) -> io::Result<(u64, u64)> {
        let resolved = self.resolve(path);
        let existing = resolved
            .ancestors()
            .find(|ancestor| ancestor.exists())
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("no ancestor of {} exists", resolved.display()),
                )
            })?;
        let stats = nix::sys::statvfs::statvfs(existing).map_err(io::Error::from)?;
        // The field types are u64 on 64-bit Linux but narrower on some 32-bit targets.
        #[allow(clippy::useless_conversion)]
        let (fragment, available, blocks) = (
            u64::from(stats.fragment_size()),
            u64::from(stats.blocks_available()),
            u64::from(stats.blocks()),
        );
        Ok((
            available.saturating_mul(fragment),
            blocks.saturating_mul(fragment),
        ))
    }

    fn cpu_flags(&self) -> Vec<String> {
        self.read_to_string(Path::new("/proc/cpuinfo"))
            .map(|text| parse_cpu_flags(&text))
            .unwrap_or_default()
    }

    fn effective_uid(&self) -> u32 {
        nix::unistd::geteuid().as_raw()
    }
}

/// The flags of the first `flags : …` line of `/proc/cpuinfo` text.
pub fn parse_cpu_flags(cpuinfo: &str) -> Vec<String> {
    cpuinfo
        .lines()
        .find_map(|line| {
            let (key, value) = line.split_once(':')?;
            (key.trim() == "flags").then_some(value)
        })
        .map(|value| value.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default()
}

/// Runs `program args…` with stdin closed and returns stdout then stderr, killing the child (by
/// its pid, which this function started) when it outlives `timeout`.
fn run_bounded(program: &Path, args: &[&str], timeout: Duration) -> io::Result<String> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let pid = child.id();
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();

    // Read both pipes and wait on another thread so a chatty child cannot fill a pipe and stall.
    let (done_tx, done_rx) = mpsc::channel();
    thread::spawn(move || {
        let mut out = Vec::new();
        let mut err = Vec::new();
        let read_out = stdout
            .as_mut()
            .map_or(Ok(0), |pipe| pipe.read_to_end(&mut out));
        let read_err = stderr
            .as_mut()
            .map_or(Ok(0), |pipe| pipe.read_to_end(&mut err));
        let status = child.wait();
        // The receiver is gone only after a timeout; nothing is left to tell then.
        let _ = done_tx.send(read_out.and(read_err).and(status).map(|s| (s, out, err)));
    });

    match done_rx.recv_timeout(timeout) {
        Ok(result) => {
            let (status, out, err) = result?;
            let mut text = String::from_utf8_lossy(&out).into_owned();
            text.push_str(&String::from_utf8_lossy(&err));
            if status.success() {
                Ok(text)
            } else {
                let detail = crate::first_line(&text);
                Err(io::Error::other(if detail.is_empty() {
                    format!("exited with {status}")
                } else {
                    format!("exited with {status}: {detail}")
                }))
            }
        }
        Err(_) => {
            if let Ok(raw) = i32::try_from(pid) {
                // Only our own child, by pid; it may have exited in between, which is fine.
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(raw),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("did not finish within {} s", timeout.as_secs()),
            ))
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap: a panic is the failure report
mod tests {
    use super::*;

    #[test]
    fn cpu_flags_come_from_the_first_flags_line() {
        let cpuinfo = "processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: fpu vme vmx sse2\n\
                       processor\t: 1\nflags\t\t: fpu other\n";
        assert_eq!(parse_cpu_flags(cpuinfo), ["fpu", "vme", "vmx", "sse2"]);
    }

    #[test]
    fn cpu_flags_are_empty_without_a_flags_line() {
        assert!(parse_cpu_flags("processor : 0\n").is_empty());
    }

    #[test]
    fn real_host_resolves_every_path_under_its_root() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("proc/sys/net/ipv4")).unwrap();
        std::fs::write(root.path().join("proc/sys/net/ipv4/ip_forward"), "1\n").unwrap();
        std::fs::write(root.path().join("proc/cpuinfo"), "flags : svm\n").unwrap();
        let host = RealHost::new(root.path());

        let text = host
            .read_to_string(Path::new("/proc/sys/net/ipv4/ip_forward"))
            .unwrap();
        assert_eq!(text, "1\n");
        assert!(host.exists(Path::new("/proc/cpuinfo")));
        assert!(!host.exists(Path::new("/dev/kvm")));
        assert_eq!(host.cpu_flags(), ["svm"]);
        let (free, total) = host.free_bytes(Path::new("/var/lib/banger")).unwrap();
        assert!(free <= total);
    }

    #[test]
    fn real_host_opens_a_writable_file_read_write() {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("node"), "").unwrap();
        let host = RealHost::new(root.path());
        host.can_open_rw(Path::new("/node")).unwrap();
        let missing = host.can_open_rw(Path::new("/absent")).unwrap_err();
        assert_eq!(missing.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn command_output_joins_stdout_and_stderr() {
        let out = run_bounded(
            Path::new("/bin/sh"),
            &["-c", "echo out; echo err >&2"],
            COMMAND_TIMEOUT,
        )
        .unwrap();
        assert_eq!(out, "out\nerr\n");
    }

    #[test]
    fn command_output_reports_a_failing_exit_with_its_first_line() {
        let err = run_bounded(
            Path::new("/bin/sh"),
            &["-c", "echo broken >&2; exit 3"],
            COMMAND_TIMEOUT,
        )
        .unwrap_err();
        assert!(err.to_string().contains("broken"), "{err}");
    }

    #[test]
    fn command_output_kills_a_program_that_outlives_the_timeout() {
        let err = run_bounded(
            Path::new("/bin/sh"),
            &["-c", "exec sleep 30"],
            Duration::from_millis(200),
        )
        .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }

    #[test]
    fn find_in_path_accepts_an_explicit_path() {
        let host = RealHost::default();
        assert_eq!(host.find_in_path("/bin/sh"), Some(PathBuf::from("/bin/sh")));
        assert_eq!(host.find_in_path("/nonexistent/banger-nothing"), None);
    }
}

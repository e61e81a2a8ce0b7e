//! What makes `bangerd` one process per host: the instance lock, the API socket file and its
//! permissions, and the real host layer built from the config.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use banger_config::Config;
use nix::fcntl::{Flock, FlockArg};
use tokio::net::UnixListener;

use crate::host::{Host, HostFacts};

/// Why this daemon instance cannot start.
#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    /// Another daemon holds the lock.
    #[error("another bangerd is already running (pid {pid}); it holds {lock}", lock = .lock.display())]
    AlreadyRunning {
        /// Its pid, as written in the lock file ("unknown" if unreadable).
        pid: String,
        /// The lock file.
        lock: PathBuf,
    },
    /// A file operation failed.
    #[error("{what} {path}", path = .path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// On which path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The configured socket group does not exist.
    #[error("socket_group `{0}` is not a group on this host")]
    NoSuchGroup(String),
}

/// Held for the daemon's lifetime; the kernel releases it when the process dies, even by
/// SIGKILL, so a stale lock never blocks the next daemon.
#[derive(Debug)]
pub struct InstanceLock {
    _lock: Flock<File>,
}

/// Takes the single-instance lock at `path` and writes our pid into it.
pub fn acquire_lock(path: &Path) -> Result<InstanceLock, InstanceError> {
    let io = |what, source| InstanceError::Io {
        what,
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| io("creating the directory of", e))?;
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|e| io("opening", e))?;
    let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => lock,
        Err((mut file, _errno)) => {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            let pid = pid.trim();
            return Err(InstanceError::AlreadyRunning {
                pid: if pid.is_empty() {
                    "unknown".into()
                } else {
                    pid.to_string()
                },
                lock: path.to_path_buf(),
            });
        }
    };
    lock.set_len(0).map_err(|e| io("truncating", e))?;
    lock.seek(SeekFrom::Start(0))
        .map_err(|e| io("seeking", e))?;
    writeln!(lock, "{}", std::process::id()).map_err(|e| io("writing our pid into", e))?;
    Ok(InstanceLock { _lock: lock })
}

/// Binds the API socket at `path` with mode 0660 (group `group` when given). Call with the
/// instance lock held: any socket file already there was left by a dead daemon and is removed.
pub fn bind_socket(path: &Path, group: Option<&str>) -> Result<UnixListener, InstanceError> {
    let io = |what, source| InstanceError::Io {
        what,
        path: path.to_path_buf(),
        source,
    };
    match std::fs::remove_file(path) {
        Ok(()) => {
            tracing::info!(socket = %path.display(), "removed a stale socket left by a previous daemon")
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("removing the stale socket", e)),
    }
    let listener = UnixListener::bind(path).map_err(|e| io("binding", e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .map_err(|e| io("setting mode 0660 on", e))?;
    if let Some(group) = group {
        let gid = nix::unistd::Group::from_name(group)
            .ok()
            .flatten()
            .ok_or_else(|| InstanceError::NoSuchGroup(group.to_string()))?
            .gid;
        nix::unistd::chown(path, None, Some(gid))
            .map_err(|errno| io("changing the group of", std::io::Error::from(errno)))?;
    }
    Ok(listener)
}

/// The real host layer for `config`.
pub async fn real_host(config: &Config) -> Host {
    let facts = HostFacts::detect();
    let backends = crate::host::real_backends(config).await;
    Host {
        backends,
        facts,
        proc_root: "/proc".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_reports_the_holder_pid() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bangerd.lock");
        let _held = acquire_lock(&path).unwrap();
        match acquire_lock(&path) {
            Err(InstanceError::AlreadyRunning { pid, .. }) => {
                assert_eq!(pid, std::process::id().to_string())
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn lock_is_released_when_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bangerd.lock");
        drop(acquire_lock(&path).unwrap());
        assert!(acquire_lock(&path).is_ok());
    }

    #[tokio::test]
    async fn stale_socket_is_replaced_and_mode_is_0660() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bangerd.sock");
        // A socket file whose listener is gone: what a killed daemon leaves.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let _listener = bind_socket(&path, None).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o660);
        assert!(tokio::net::UnixStream::connect(&path).await.is_ok());
    }

    #[test]
    fn unknown_group_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _guard = rt.enter();
        let err =
            bind_socket(&dir.path().join("s.sock"), Some("no-such-group-banger")).unwrap_err();
        assert!(err.to_string().contains("no-such-group-banger"));
    }
}

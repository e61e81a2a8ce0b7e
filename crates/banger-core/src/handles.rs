//! A running VM's transient handles: in memory, mirrored to `<vm_dir>/handles.json`.
//!
//! Handles (VMM pid + start time, helper pids, sockets, tap) describe what is true right now,
//! never what a VM *is*, so they are not in SQLite. The file is written atomically (temp file +
//! rename) so a daemon killed at any instant leaves either the old or the new version, and the
//! next daemon's reconcile reads it to re-adopt the VMM or tear down what it left.

use std::io::Write;
use std::path::{Path, PathBuf};

use banger_vmm::VmmHandles;
use serde::{Deserialize, Serialize};

/// File name inside the VM's directory.
pub const FILE_NAME: &str = "handles.json";

/// Everything the host holds for one running VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuntimeHandles {
    /// The VMM process and its sockets.
    pub vmm: VmmHandles,
    /// The tap the VM uses, if any.
    pub tap: Option<String>,
}

/// Why handles could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum HandlesError {
    /// Filesystem failure.
    #[error("{action} {path}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// Which file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file exists but is not valid JSON handles.
    #[error("{path} is corrupt")]
    Corrupt {
        /// Which file.
        path: PathBuf,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
}

/// Writes `handles` to `<dir>/handles.json` atomically.
pub fn write(dir: &Path, handles: &RuntimeHandles) -> Result<(), HandlesError> {
    let path = dir.join(FILE_NAME);
    let tmp = dir.join(format!(".{FILE_NAME}.tmp"));
    let io = |action, source| HandlesError::Io {
        action,
        path: path.clone(),
        source,
    };
    let bytes = serde_json::to_vec_pretty(handles).map_err(|source| HandlesError::Corrupt {
        path: path.clone(),
        source,
    })?;
    let mut file = std::fs::File::create(&tmp).map_err(|e| io("creating", e))?;
    file.write_all(&bytes).map_err(|e| io("writing", e))?;
    file.sync_all().map_err(|e| io("syncing", e))?;
    std::fs::rename(&tmp, &path).map_err(|e| io("renaming into place", e))
}

/// Reads `<dir>/handles.json`; `Ok(None)` when there is none.
pub fn read(dir: &Path) -> Result<Option<RuntimeHandles>, HandlesError> {
    let path = dir.join(FILE_NAME);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| HandlesError::Corrupt { path, source }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(HandlesError::Io {
            action: "reading",
            path,
            source,
        }),
    }
}

/// Removes `<dir>/handles.json`; a missing file is fine.
pub fn remove(dir: &Path) -> Result<(), HandlesError> {
    let path = dir.join(FILE_NAME);
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(HandlesError::Io {
            action: "removing",
            path,
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use banger_host::process::ProcessId;
    use banger_vmm::VmmKind;

    fn sample() -> RuntimeHandles {
        RuntimeHandles {
            vmm: VmmHandles {
                kind: VmmKind::Qemu,
                process: ProcessId {
                    pid: 42,
                    start_time: 7,
                },
                helpers: vec![ProcessId {
                    pid: 43,
                    start_time: 8,
                }],
                control_socket: "/run/banger/vms/x/qmp.sock".into(),
                vsock_uds: "/run/banger/vms/x/vsock.sock".into(),
                emulated: true,
            },
            tap: Some("bt0".into()),
        }
    }

    #[test]
    fn round_trip_and_missing_and_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read(dir.path()).unwrap(), None);
        write(dir.path(), &sample()).unwrap();
        assert_eq!(read(dir.path()).unwrap(), Some(sample()));
        assert!(!dir.path().join(".handles.json.tmp").exists());
        std::fs::write(dir.path().join(FILE_NAME), b"{not json").unwrap();
        assert!(matches!(
            read(dir.path()),
            Err(HandlesError::Corrupt { .. })
        ));
        remove(dir.path()).unwrap();
        remove(dir.path()).unwrap();
        assert_eq!(read(dir.path()).unwrap(), None);
    }
}

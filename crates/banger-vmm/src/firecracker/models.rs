//! Request and response bodies of Firecracker's HTTP API, as serde types.
//!
//! Field names and enum spellings follow `src/firecracker/swagger/firecracker.yaml` of
//! Firecracker v1.x; only the endpoints and fields banger uses are modelled. Optional fields are
//! left out of the JSON when `None` so that Firecracker applies its own defaults (and so that a
//! 1.0 binary, which knows fewer fields, accepts the same bodies). These are plain data: no I/O,
//! no state, freely shared between tasks.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// `PUT /machine-config` (swagger `MachineConfiguration`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineConfiguration {
    /// Number of vCPUs (1 or an even number up to 32 with SMT; 1..=32 without).
    pub vcpu_count: u32,
    /// Guest memory in MiB.
    pub mem_size_mib: u64,
    /// Simultaneous multithreading (x86 only); Firecracker's default is off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub smt: Option<bool>,
    /// Dirty page tracking, needed for diff snapshots; Firecracker's default is off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub track_dirty_pages: Option<bool>,
}

/// `PUT /boot-source` (swagger `BootSource`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootSource {
    /// Host path of the kernel (an ELF vmlinux on x86_64).
    pub kernel_image_path: PathBuf,
    /// Host path of the initrd.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub initrd_path: Option<PathBuf>,
    /// Kernel command line.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub boot_args: Option<String>,
}

/// Block device caching strategy (swagger `Drive.cache_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CacheType {
    /// Flushes from the guest are ignored (Firecracker's default).
    Unsafe,
    /// Flushes from the guest reach the host file with `fsync`.
    Writeback,
}

/// Block device I/O engine (swagger `Drive.io_engine`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum IoEngine {
    /// Blocking I/O on the device thread (Firecracker's default).
    Sync,
    /// io_uring (host kernel newer than 5.10.51).
    Async,
}

/// `PUT /drives/{drive_id}` (swagger `Drive`, virtio-block flavour).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drive {
    /// Same as the `{drive_id}` in the path.
    pub drive_id: String,
    /// Host path of the backing file.
    pub path_on_host: PathBuf,
    /// Whether Firecracker adds `root=/dev/vdX` to the command line for this drive.
    pub is_root_device: bool,
    /// Attach read-only.
    pub is_read_only: bool,
    /// Partition UUID of the root partition (only with `is_root_device`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partuuid: Option<String>,
    /// Caching strategy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_type: Option<CacheType>,
    /// I/O engine.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub io_engine: Option<IoEngine>,
}

/// `PUT /network-interfaces/{iface_id}` (swagger `NetworkInterface`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkInterface {
    /// Same as the `{iface_id}` in the path.
    pub iface_id: String,
    /// Host tap device name.
    pub host_dev_name: String,
    /// Guest MAC address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub guest_mac: Option<String>,
}

/// `PUT /vsock` (swagger `Vsock`). The deprecated `vsock_id` is never sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vsock {
    /// Guest context id (>= 3).
    pub guest_cid: u32,
    /// Unix socket Firecracker listens on for host-initiated connections (`CONNECT <port>`).
    pub uds_path: PathBuf,
}

/// Firecracker's log level (swagger `Logger.level`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LogLevel {
    /// Errors only.
    Error,
    /// Warnings and errors.
    Warning,
    /// Informational messages (Firecracker's default).
    Info,
    /// Debugging detail.
    Debug,
}

/// `PUT /logger` (swagger `Logger`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Logger {
    /// File or named pipe for the human-readable log (Firecracker opens it without `O_APPEND`).
    pub log_path: PathBuf,
    /// Level.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub level: Option<LogLevel>,
    /// Prefix each line with its level.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub show_level: Option<bool>,
    /// Prefix each line with the source file and line.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub show_log_origin: Option<bool>,
}

/// `PUT /metrics` (swagger `Metrics`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metrics {
    /// File or named pipe that receives one JSON object per flush.
    pub metrics_path: PathBuf,
}

/// The action of `PUT /actions` (swagger `InstanceActionInfo.action_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ActionType {
    /// Writes the metrics to the metrics file now.
    FlushMetrics,
    /// Boots the configured microVM.
    InstanceStart,
    /// Presses Ctrl-Alt-Del on the guest's i8042 keyboard controller (x86_64 only).
    SendCtrlAltDel,
}

/// `PUT /actions` (swagger `InstanceActionInfo`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceActionInfo {
    /// Which action.
    pub action_type: ActionType,
}

/// Desired microVM state for `PATCH /vm` (swagger `Vm.state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum VmState {
    /// Stop the vCPUs.
    Paused,
    /// Run the vCPUs again.
    Resumed,
}

/// `PATCH /vm` (swagger `Vm`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vm {
    /// Desired state.
    pub state: VmState,
}

/// What `GET /` reports as the instance state (swagger `InstanceInfo.state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum InstanceState {
    /// Configured or being configured, `InstanceStart` not yet accepted.
    #[serde(rename = "Not started")]
    NotStarted,
    /// vCPUs running.
    Running,
    /// Paused through `PATCH /vm`.
    Paused,
}

/// `GET /` answer (swagger `InstanceInfo`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceInfo {
    /// Application name (`Firecracker`).
    pub app_name: String,
    /// The `--id` the process was started with.
    pub id: String,
    /// Current state.
    pub state: InstanceState,
    /// Firecracker version (`1.16.1`).
    pub vmm_version: String,
}

/// `GET /version` answer (swagger `FirecrackerVersion`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FirecrackerVersion {
    /// Build version (`1.16.1`).
    pub firecracker_version: String,
}

/// Body of every non-2xx answer (swagger `Error`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiFault {
    /// Firecracker's description of what went wrong.
    #[serde(default)]
    pub fault_message: Option<String>,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap: a panic is the failure report
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn optional_fields_are_omitted_so_firecracker_defaults_apply() {
        let machine = MachineConfiguration {
            vcpu_count: 2,
            mem_size_mib: 256,
            smt: None,
            track_dirty_pages: None,
        };
        assert_eq!(
            serde_json::to_value(machine).unwrap(),
            json!({"vcpu_count": 2, "mem_size_mib": 256})
        );
        let boot = BootSource {
            kernel_image_path: "/k".into(),
            initrd_path: None,
            boot_args: None,
        };
        assert_eq!(
            serde_json::to_value(boot).unwrap(),
            json!({"kernel_image_path": "/k"})
        );
    }

    #[test]
    fn enums_use_swagger_spellings() {
        assert_eq!(
            serde_json::to_value(InstanceActionInfo {
                action_type: ActionType::SendCtrlAltDel
            })
            .unwrap(),
            json!({"action_type": "SendCtrlAltDel"})
        );
        assert_eq!(
            serde_json::to_value(Vm {
                state: VmState::Resumed
            })
            .unwrap(),
            json!({"state": "Resumed"})
        );
        let info: InstanceInfo = serde_json::from_value(json!({
            "app_name": "Firecracker", "id": "vm1", "state": "Not started", "vmm_version": "1.16.1"
        }))
        .unwrap();
        assert_eq!(info.state, InstanceState::NotStarted);
        assert_eq!(
            serde_json::to_value(Drive {
                drive_id: "rootfs".into(),
                path_on_host: "/r".into(),
                is_root_device: false,
                is_read_only: true,
                partuuid: None,
                cache_type: Some(CacheType::Writeback),
                io_engine: Some(IoEngine::Async),
            })
            .unwrap(),
            json!({"drive_id": "rootfs", "path_on_host": "/r", "is_root_device": false,
                   "is_read_only": true, "cache_type": "Writeback", "io_engine": "Async"})
        );
    }

    #[test]
    fn fault_body_without_message_still_parses() {
        let fault: ApiFault = serde_json::from_str("{}").unwrap();
        assert_eq!(fault.fault_message, None);
    }
}

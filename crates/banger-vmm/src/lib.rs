//! The virtual machine monitor behind every running VM, and its backends.
//!
//! [`Vmm`] is the one seam between banger's lifecycle and a hypervisor process. A backend turns
//! a [`LaunchSpec`] (kernel, disks, tap, vsock, per-VM runtime directory) into one running VMM
//! process and returns [`VmmHandles`]: everything needed later to find, stop or kill it. Handles
//! are transient (never in SQLite): the daemon keeps them in memory and in the VM's
//! `handles.json`, and re-adopts running VMMs from them after a restart.
//!
//! Backends:
//! - `firecracker`: one `firecracker` process per VM, configured through its API socket.
//! - `qemu`: `qemu-system-x86_64 -M microvm` (KVM when the host can run ordinary guests, else
//!   TCG), with vsock served by a supervised `vhost-device-vsock` helper process so the host
//!   side speaks the same `CONNECT <port>` Unix-socket protocol as Firecracker.
//!
//! A backend's `launch` either returns handles for a process that is configured and booting, or
//! an error after it has killed and removed everything it started (no half-launched VMM).

use std::path::PathBuf;
use std::time::Duration;

use banger_host::process::ProcessId;
use serde::{Deserialize, Serialize};

/// Which hypervisor runs a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VmmKind {
    /// Firecracker.
    Firecracker,
    /// QEMU `-M microvm`.
    Qemu,
}

impl VmmKind {
    /// Lowercase name, as in config and `vm show`.
    pub fn as_str(self) -> &'static str {
        match self {
            VmmKind::Firecracker => "firecracker",
            VmmKind::Qemu => "qemu",
        }
    }
}

impl std::fmt::Display for VmmKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One block device given to the guest, in order (the first is `vda`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drive {
    /// Stable id (`rootfs`, `overlay`, `work`).
    pub id: String,
    /// Backing file on the host.
    pub path: PathBuf,
    /// Attach read-only.
    pub read_only: bool,
}

/// The guest's network interface, backed by a tap that already exists.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetIface {
    /// Host tap device name.
    pub tap: String,
    /// Guest MAC address (`02:..`).
    pub mac: String,
}

/// Everything a backend needs to boot one VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaunchSpec {
    /// VM name, for process titles and logs.
    pub name: String,
    /// Virtual CPUs.
    pub vcpus: u32,
    /// Guest memory in MiB.
    pub memory_mib: u64,
    /// Kernel image (ELF vmlinux for Firecracker; QEMU also takes a bzImage).
    pub kernel: PathBuf,
    /// Initial ramdisk.
    pub initrd: Option<PathBuf>,
    /// Full kernel command line (console and VMM-specific options are added by the backend).
    pub cmdline: String,
    /// Block devices, in order.
    pub drives: Vec<Drive>,
    /// Network interface, if the VM has one.
    pub net: Option<NetIface>,
    /// Guest vsock context id (>= 3).
    pub vsock_cid: u32,
    /// Per-VM runtime directory: API/QMP sockets, the vsock Unix socket, metrics.
    pub run_dir: PathBuf,
    /// The vsock Unix socket path the host connects to (`CONNECT <port>` protocol).
    pub vsock_uds: PathBuf,
    /// Where the VMM's own log goes (appended).
    pub vmm_log: PathBuf,
    /// Where the guest's serial console goes (appended).
    pub console_log: PathBuf,
    /// Network namespace to run the VMM in (banger's `netns` setting).
    pub netns: Option<String>,
}

/// What identifies a running VMM after launch. Transient: memory plus `handles.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmmHandles {
    /// Which backend launched it.
    pub kind: VmmKind,
    /// The VMM process.
    pub process: ProcessId,
    /// Helper processes whose death is the VM's death (QEMU's vhost-device-vsock).
    #[serde(default)]
    pub helpers: Vec<ProcessId>,
    /// The VMM's control socket (Firecracker API socket or QEMU QMP socket).
    pub control_socket: PathBuf,
    /// The vsock Unix socket.
    pub vsock_uds: PathBuf,
    /// Whether the guest runs under software emulation (QEMU TCG).
    #[serde(default)]
    pub emulated: bool,
}

/// Counters a backend can read about one VM (cumulative since the VMM started).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmmCounters {
    /// Bytes received by the guest NIC.
    pub net_rx_bytes: u64,
    /// Bytes sent by the guest NIC.
    pub net_tx_bytes: u64,
    /// Packets received.
    pub net_rx_packets: u64,
    /// Packets sent.
    pub net_tx_packets: u64,
    /// Bytes read from block devices.
    pub block_read_bytes: u64,
    /// Bytes written to block devices.
    pub block_write_bytes: u64,
    /// Read requests.
    pub block_read_ops: u64,
    /// Write requests.
    pub block_write_ops: u64,
}

/// Why a VMM operation failed.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    /// The VMM binary (or a helper) is missing or unusable.
    #[error("{what} is not usable: {reason}")]
    Unavailable {
        /// Which binary.
        what: String,
        /// What is wrong, with a hint.
        reason: String,
    },
    /// The spec cannot run on this host (kernel format, vCPUs, memory).
    #[error("cannot launch VM {vm}: {reason}")]
    InvalidSpec {
        /// VM name.
        vm: String,
        /// What is wrong.
        reason: String,
    },
    /// Starting a process failed.
    #[error("could not start {what} for VM {vm}")]
    Spawn {
        /// VM name.
        vm: String,
        /// Which process.
        what: String,
        /// Why.
        #[source]
        source: banger_host::process::ProcessError,
    },
    /// The VMM rejected a configuration call (Firecracker's `fault_message` or QMP's error).
    #[error("{vmm} rejected {call} for VM {vm}: {message}")]
    Rejected {
        /// Which backend.
        vmm: VmmKind,
        /// VM name.
        vm: String,
        /// The call (`PUT /boot-source`, `system_powerdown`).
        call: String,
        /// The VMM's own message.
        message: String,
    },
    /// Talking to the control socket failed.
    #[error("{vmm} control socket {socket} of VM {vm}")]
    Control {
        /// Which backend.
        vmm: VmmKind,
        /// VM name.
        vm: String,
        /// The socket.
        socket: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The VMM exited while being configured or booted.
    #[error("{vmm} for VM {vm} exited during {phase}: {exit}; last output: {tail}")]
    Died {
        /// Which backend.
        vmm: VmmKind,
        /// VM name.
        vm: String,
        /// What was going on.
        phase: String,
        /// How it ended.
        exit: String,
        /// Last lines of its log.
        tail: String,
    },
    /// Something did not happen in time.
    #[error("{what} for VM {vm} did not happen within {timeout:?}")]
    Timeout {
        /// VM name.
        vm: String,
        /// What was awaited.
        what: String,
        /// The limit.
        timeout: Duration,
    },
    /// Host I/O (files, directories) failed.
    #[error("{what}")]
    Io {
        /// What was being done, with the path.
        what: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// A hypervisor backend. Implementations are cheap to share (`Arc<dyn Vmm>`).
#[async_trait::async_trait]
pub trait Vmm: Send + Sync + std::fmt::Debug {
    /// Which backend this is.
    fn kind(&self) -> VmmKind;

    /// Checks that the binaries exist and answer `--version`; returns the version line.
    async fn probe(&self) -> Result<String, VmmError>;

    /// Spawns, configures and starts the VMM. On error, everything it started is gone.
    async fn launch(&self, spec: &LaunchSpec) -> Result<VmmHandles, VmmError>;

    /// Asks the guest to shut down (Ctrl-Alt-Del / ACPI power button). Returns at once.
    async fn request_shutdown(&self, handles: &VmmHandles) -> Result<(), VmmError>;

    /// Kills the VMM and its helpers and removes its sockets. Idempotent.
    async fn kill(&self, handles: &VmmHandles) -> Result<(), VmmError>;

    /// Whether the VMM process (and every helper) is alive and its control socket answers.
    async fn is_alive(&self, handles: &VmmHandles) -> bool;

    /// Waits until the VMM process exits; false if it is still running after `timeout`.
    async fn wait_exit(&self, handles: &VmmHandles, timeout: Duration) -> bool;

    /// Reads the VM's I/O counters (Firecracker metrics, QEMU QMP).
    async fn counters(&self, handles: &VmmHandles) -> Result<VmmCounters, VmmError>;

    /// How the VMM process ended, when it has and the backend knows (it is our child).
    fn exit_info(&self, handles: &VmmHandles) -> Option<banger_host::process::ExitInfo> {
        let _ = handles;
        None
    }
}

pub mod fake;
pub mod firecracker;
pub mod qemu;

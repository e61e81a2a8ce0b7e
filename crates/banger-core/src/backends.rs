//! The plug points of the lifecycle: disks, network, VMM and guest agent.
//!
//! The manager drives every VM through these traits and nothing else, so the daemon's
//! integration tests run the whole lifecycle with the fakes in [`crate::fakes`], and each real
//! implementation (overlay disks, bridge + tap pool, Firecracker/QEMU, the vsock agent client)
//! is swapped in by the daemon at startup. Errors cross the seam boxed: the manager wraps each
//! in the stage it happened in (`CoreError::Stage`), keeping the cause chain intact.

use std::fmt::Debug;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use banger_store::records::{ImageRecord, VmRecord};
use banger_vmm::{Drive, NetIface, Vmm};

/// An error from a backend, with its cause chain.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The per-VM disks of one VM, ready to attach.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PreparedDisks {
    /// Drives in attach order.
    pub drives: Vec<Drive>,
    /// Kernel command-line arguments that tell the guest's early init how to use them.
    pub kernel_args: Vec<String>,
}

/// Per-VM disks: the writable root layer and the work disk.
#[async_trait::async_trait]
pub trait VmDisks: Send + Sync + Debug {
    /// Makes sure every per-VM disk exists (idempotent: a stopped VM keeps its disks).
    async fn prepare(&self, vm: &VmRecord, image: &ImageRecord) -> Result<PreparedDisks, BoxError>;
    /// Grows the work disk to `new_size_mib` (never shrinks).
    async fn grow_work(&self, vm: &VmRecord, new_size_mib: u64) -> Result<(), BoxError>;
    /// Removes every per-VM disk file. Idempotent.
    async fn remove(&self, vm: &VmRecord) -> Result<(), BoxError>;
}

/// A VM's network attachment while it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetAttachment {
    /// The interface handed to the VMM.
    pub iface: NetIface,
    /// Kernel arguments for the guest's NIC bootstrap (address, gateway, DNS).
    pub kernel_args: Vec<String>,
}

/// Host networking for VMs: taps, addresses, NAT, DNS.
#[async_trait::async_trait]
pub trait VmNetwork: Send + Sync + Debug {
    /// Gives the VM a tap on the bridge (or `None` when VMs have no network).
    async fn attach(&self, vm: &VmRecord) -> Result<Option<NetAttachment>, BoxError>;
    /// Takes the VM's tap back and removes its NAT/DNS entries. Idempotent.
    async fn detach(&self, vm: &VmRecord, tap: Option<&str>) -> Result<(), BoxError>;
    /// The network namespace VMMs must run in, if any.
    fn netns(&self) -> Option<String>;
}

/// What the guest agent said when it first answered.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentHealth {
    /// The agent's version.
    pub version: String,
    /// Guest uptime in seconds when it answered (the guest's own boot time).
    pub uptime_secs: f64,
}

/// The host side of the guest agent, reached through the VM's vsock Unix socket.
#[async_trait::async_trait]
pub trait GuestAgent: Send + Sync + Debug {
    /// Waits until the agent answers a health check (retrying while the guest boots).
    async fn wait_healthy(
        &self,
        vsock_uds: &Path,
        timeout: Duration,
    ) -> Result<AgentHealth, BoxError>;
    /// Waits until TCP `port` answers inside the guest.
    async fn wait_port(
        &self,
        vsock_uds: &Path,
        port: u16,
        timeout: Duration,
    ) -> Result<(), BoxError>;
    /// Asks the guest to power off. Returns once the agent acknowledged.
    async fn shutdown(&self, vsock_uds: &Path) -> Result<(), BoxError>;
}

/// The set of backends one manager drives.
#[derive(Debug, Clone)]
pub struct Backends {
    /// The hypervisor; `None` when no VMM is usable on this host (creates then fail early with
    /// the reason in `vmm_unavailable`).
    pub vmm: Option<Arc<dyn Vmm>>,
    /// Why `vmm` is `None`.
    pub vmm_unavailable: Option<String>,
    /// Per-VM disks.
    pub disks: Arc<dyn VmDisks>,
    /// Host networking.
    pub network: Arc<dyn VmNetwork>,
    /// Guest agent client.
    pub agent: Arc<dyn GuestAgent>,
    /// The process table, to find VMM processes no handles point at any more (after a SIGKILL
    /// of the daemon mid-launch).
    pub processes: Arc<dyn banger_host::process::Processes>,
}

/// VMs without a network interface: the explicit choice when networking is off.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoNetwork;

#[async_trait::async_trait]
impl VmNetwork for NoNetwork {
    async fn attach(&self, _vm: &VmRecord) -> Result<Option<NetAttachment>, BoxError> {
        Ok(None)
    }

    async fn detach(&self, _vm: &VmRecord, _tap: Option<&str>) -> Result<(), BoxError> {
        Ok(())
    }

    fn netns(&self) -> Option<String> {
        None
    }
}

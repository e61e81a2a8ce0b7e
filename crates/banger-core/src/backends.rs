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

use banger_api::PortForward;
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
    /// How a `clone` root was copied, when this call made it (`None` when it already existed
    /// or the root is an overlay); the manager records it with the VM.
    pub root_clone_method: Option<banger_api::RootCloneMethod>,
}

/// Why the disks of a VM cannot be made as asked, found before anything is created.
#[derive(Debug, thiserror::Error)]
pub enum DiskCheckError {
    /// The work disk asked for is smaller than the image's work seed it is cloned from.
    #[error(
        "a {requested_mib} MiB work disk is smaller than image {image}'s work seed \
         ({seed_mib} MiB); ask for at least {seed_mib} MiB"
    )]
    BelowSeed {
        /// The image.
        image: String,
        /// The size asked for.
        requested_mib: u64,
        /// The seed's filesystem size, rounded up to MiB.
        seed_mib: u64,
    },
    /// The disks could grow beyond the free space of the filesystem that holds them.
    #[error(
        "not enough free space in {}: the VM's disks need up to {} MiB, {} MiB are free",
        .dir.display(), .needed_bytes.div_ceil(1 << 20), .available_bytes / (1 << 20)
    )]
    NoSpace {
        /// The directory the disks live in.
        dir: std::path::PathBuf,
        /// What the disks may take.
        needed_bytes: u64,
        /// What the filesystem has free.
        available_bytes: u64,
    },
    /// The image's files cannot serve as a VM's disks (base not ext4, work seed missing...).
    #[error("image {image} cannot provide a VM's disks")]
    Image {
        /// The image.
        image: String,
        /// What is wrong.
        #[source]
        source: BoxError,
    },
    /// The check itself failed (the host could not answer).
    #[error("could not check the VM's disks")]
    Host(#[source] BoxError),
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

    /// Checks, creating nothing, that a VM of `image` with a `work_size_mib` work disk can get
    /// its disks: the image's files are usable and the disks fit in the free space. The
    /// manager calls it before it persists a new VM.
    async fn check(&self, image: &ImageRecord, work_size_mib: u64) -> Result<(), DiskCheckError> {
        let _ = (image, work_size_mib);
        Ok(())
    }

    /// Checks, changing nothing, that `vm`'s work disk can grow to `new_size_mib`.
    async fn check_grow(&self, vm: &VmRecord, new_size_mib: u64) -> Result<(), DiskCheckError> {
        let _ = (vm, new_size_mib);
        Ok(())
    }

    /// Every disk of `vm` that exists now (the shared base included), with the space each takes.
    fn usage(&self, vm: &VmRecord, image: Option<&ImageRecord>) -> Vec<banger_api::VmDisk> {
        let _ = (vm, image);
        Vec::new()
    }
}

/// A VM's network attachment while it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetAttachment {
    /// The interface handed to the VMM.
    pub iface: NetIface,
    /// Kernel arguments for the guest's NIC bootstrap (address, gateway, DNS).
    pub kernel_args: Vec<String>,
}

/// A VM whose VMM is running, as the network reconcile at daemon start sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct RunningVm {
    /// Its durable record (name, address).
    pub vm: VmRecord,
    /// The tap its VMM uses (from `handles.json`).
    pub tap: Option<String>,
    /// Its stored port forwards.
    pub forwards: Vec<PortForward>,
}

/// Why a port forward could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// Something else (banger or another program) holds the host port.
    #[error("host port {forward_port}/{proto} is already in use on {address}", forward_port = .forward.host_port, proto = .forward.proto)]
    PortInUse {
        /// The forward.
        forward: PortForward,
        /// The address the forward listens on.
        address: String,
        /// What the OS said.
        #[source]
        source: BoxError,
    },
    /// This host gives VMs no network, so nothing can be forwarded to them.
    #[error("VM networking is disabled (network.enabled = false); port forwards need it")]
    NoNetwork,
    /// Any other failure.
    #[error(transparent)]
    Failed(BoxError),
}

/// Host networking for VMs: taps, addresses, NAT, DNS, port forwards.
#[async_trait::async_trait]
pub trait VmNetwork: Send + Sync + Debug {
    /// Gives the VM a tap on the bridge (or `None` when VMs have no network).
    async fn attach(&self, vm: &VmRecord) -> Result<Option<NetAttachment>, BoxError>;
    /// Takes the VM's tap back and removes its NAT/DNS entries and port forwards. Idempotent.
    async fn detach(&self, vm: &VmRecord, tap: Option<&str>) -> Result<(), BoxError>;
    /// The network namespace VMMs must run in, if any.
    fn netns(&self) -> Option<String>;

    /// Starts forwarding `forward` to `vm` if the VM is attached; for a VM that is not, does
    /// nothing (its stored forwards are published by the manager after its next attach).
    /// Publishing the same forward twice is success.
    async fn publish(&self, vm: &VmRecord, forward: &PortForward) -> Result<(), PublishError> {
        let _ = (vm, forward);
        Err(PublishError::NoNetwork)
    }

    /// Stops forwarding `forward` to `vm`. Idempotent.
    async fn unpublish(&self, vm: &VmRecord, forward: &PortForward) -> Result<(), BoxError> {
        let _ = (vm, forward);
        Ok(())
    }

    /// At daemon start, after the manager's reconcile: adopts the VMs still running (their taps,
    /// DNS names, rules, port forwards) and removes every tap and rule no running VM owns.
    /// Returns a line per change.
    async fn reconcile(&self, running: &[RunningVm]) -> Result<Vec<String>, BoxError> {
        let _ = running;
        Ok(Vec::new())
    }

    /// Periodic: removes taps no attached VM or warm pool owns and re-applies the rules.
    /// Returns a line per change.
    async fn sweep(&self) -> Result<Vec<String>, BoxError> {
        Ok(Vec::new())
    }

    /// The guest NIC's traffic as its tap counted it (cumulative, from the guest's view: what
    /// the tap sent is what the guest received); `None` when the tap is not there. Works for
    /// every VMM, whose own counters may have none (QEMU's microvm).
    async fn nic_counters(&self, tap: &str) -> Result<Option<NicCounters>, BoxError> {
        let _ = tap;
        Ok(None)
    }
}

/// A guest NIC's cumulative traffic, from the guest's point of view.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NicCounters {
    /// Bytes the guest received.
    pub rx_bytes: u64,
    /// Bytes the guest sent.
    pub tx_bytes: u64,
    /// Packets the guest received.
    pub rx_packets: u64,
    /// Packets the guest sent.
    pub tx_packets: u64,
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
    /// Makes `public_key` (one OpenSSH line) root's only authorized key in the guest
    /// (`/root/.ssh/authorized_keys`, mode 0600, directory 0700), so `vm ssh` works.
    async fn install_authorized_key(
        &self,
        vsock_uds: &Path,
        public_key: &str,
    ) -> Result<(), BoxError>;
    /// Runs `command` in the guest as root (image builds): stdin from a host file, stdout to a
    /// host file or, like stderr, line by line to `output`. Returns the exit code (a signal
    /// `N` reads as `128 + N`).
    async fn run_command(
        &self,
        vsock_uds: &Path,
        command: &GuestCommand,
        output: &LineSink,
    ) -> Result<i32, BoxError> {
        let _ = (vsock_uds, output);
        Err(format!(
            "this guest agent cannot run commands (wanted `{}`)",
            command.argv.join(" ")
        )
        .into())
    }
}

/// Where [`GuestAgent::run_command`] sends output lines.
pub type LineSink = dyn for<'a> Fn(&'a str) + Send + Sync;

/// A command [`GuestAgent::run_command`] runs in the guest.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GuestCommand {
    /// Program and arguments.
    pub argv: Vec<String>,
    /// Host file streamed to the command's stdin (else stdin is empty).
    pub stdin_file: Option<std::path::PathBuf>,
    /// Host file the command's stdout is written to (else stdout goes to the output callback).
    pub stdout_file: Option<std::path::PathBuf>,
    /// Kill the command after this long.
    pub timeout: Option<Duration>,
}

impl GuestCommand {
    /// `argv` with no stdin, output to the callback, no time limit.
    pub fn new<I, S>(argv: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            argv: argv.into_iter().map(Into::into).collect(),
            ..Self::default()
        }
    }
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
    /// Host tools of the image pipeline (register, promote, bootstrap, build, derived
    /// artifacts).
    pub images: crate::images::ImageHost,
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

//! The host layer the daemon drives: real backends built from the config, or fakes for tests.

use std::sync::Arc;

use banger_config::Config;
use banger_core::fakes::{FakeAgent, FakeDisks, FakeNetwork};
use banger_core::Backends;
use banger_vmm::fake::FakeVmm;

/// Facts about the host that bound what a VM may ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostFacts {
    /// Online CPUs.
    pub cpus: u32,
    /// Total memory in MiB.
    pub memory_mib: u64,
}

impl HostFacts {
    /// Reads the running host (`/proc/meminfo`, available parallelism).
    pub fn detect() -> Self {
        let cpus = std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(1);
        let memory_mib = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|text| parse_mem_total_kib(&text))
            .map(|kib| kib / 1024)
            .unwrap_or(1024);
        Self { cpus, memory_mib }
    }
}

fn parse_mem_total_kib(meminfo: &str) -> Option<u64> {
    meminfo
        .lines()
        .find_map(|line| line.strip_prefix("MemTotal:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Everything on the host the daemon acts through.
#[derive(Debug, Clone)]
pub struct Host {
    /// Lifecycle backends.
    pub backends: Backends,
    /// Host limits.
    pub facts: HostFacts,
    /// Where procfs is (`/proc`); the stats loop reads VMM processes' CPU time and memory
    /// there. The fake host points it at a directory that does not exist (no process stats)
    /// unless a test fills one.
    pub proc_root: std::path::PathBuf,
}

/// Handles to the fakes of a fake host, for assertions and fault injection.
#[derive(Debug, Clone)]
pub struct Fakes {
    /// The fake VMM.
    pub vmm: Arc<FakeVmm>,
    /// The fake disks.
    pub disks: Arc<FakeDisks>,
    /// The fake network.
    pub network: Arc<FakeNetwork>,
    /// The fake guest agent.
    pub agent: Arc<FakeAgent>,
    /// The fake process table (for leftover-process sweeps).
    pub processes: Arc<banger_host::process::FakeProcesses>,
    /// The fake disk tool of the image pipeline (work seeds, rootfs checks, copies).
    pub image_disks: Arc<banger_host::disks::FakeDisks>,
    /// The fake image build tools (debootstrap, apt, npm, tar).
    pub build_tools: Arc<banger_host::build_tools::FakeBuildTools>,
}

impl Host {
    /// A host whose every backend is a recording fake (8 CPUs, 16 GiB).
    pub fn fake() -> (Host, Fakes) {
        let fakes = Fakes {
            vmm: Arc::new(FakeVmm::new()),
            disks: Arc::new(FakeDisks::default()),
            network: Arc::new(FakeNetwork::default()),
            agent: Arc::new(FakeAgent::default()),
            processes: Arc::new(banger_host::process::FakeProcesses::new()),
            image_disks: Arc::new(banger_host::disks::FakeDisks::new()),
            build_tools: Arc::new(banger_host::build_tools::FakeBuildTools::new()),
        };
        let vmm = fakes.vmm.clone();
        fakes.agent.on_shutdown(Box::new(move |uds| {
            vmm.exit_by_vsock(
                uds,
                banger_host::process::ExitInfo {
                    code: Some(0),
                    signal: None,
                },
            )
        }));
        let host = Host {
            backends: Backends {
                vmm: Some(fakes.vmm.clone()),
                vmm_unavailable: None,
                disks: fakes.disks.clone(),
                network: fakes.network.clone(),
                agent: fakes.agent.clone(),
                processes: fakes.processes.clone(),
                images: banger_core::images::ImageHost {
                    disks: fakes.image_disks.clone(),
                    tools: fakes.build_tools.clone(),
                },
            },
            facts: HostFacts {
                cpus: 8,
                memory_mib: 16 * 1024,
            },
            proc_root: "/nonexistent/banger-fake-proc".into(),
        };
        (host, fakes)
    }

    /// The real host, as configured.
    pub async fn real(config: &Config) -> Host {
        crate::instance::real_host(config).await
    }
}

/// The real backends for `config`.
pub async fn real_backends(config: &Config) -> Backends {
    use banger_host::process::{Processes, RealProcesses};
    let processes: Arc<dyn Processes> = Arc::new(RealProcesses::new());
    let (vmm, vmm_unavailable) = select_vmm(config, processes.clone()).await;
    Backends {
        vmm,
        vmm_unavailable,
        disks: Arc::new(banger_core::disks::OverlayDisks::new(
            Arc::new(banger_host::disks::RealDisks::new()),
            config.vms_dir(),
            8 * 1024,
        )),
        network: vm_network(config),
        agent: Arc::new(crate::agent::VsockAgent),
        processes,
        images: banger_core::images::ImageHost {
            disks: Arc::new(banger_host::disks::RealDisks::new()),
            tools: Arc::new(banger_host::build_tools::RealBuildTools::new()),
        },
    }
}

/// The bridge network when `network.enabled`, else VMs without a NIC.
fn vm_network(config: &Config) -> Arc<dyn banger_core::VmNetwork> {
    if !config.network.enabled {
        return Arc::new(banger_core::NoNetwork);
    }
    match banger_net::BridgeNetwork::real(config) {
        Ok(network) => Arc::new(network),
        Err(err) => {
            tracing::error!(error = %err, "VM network unusable; VMs get no NIC");
            Arc::new(banger_core::NoNetwork)
        }
    }
}

async fn select_vmm(
    config: &Config,
    processes: Arc<dyn banger_host::process::Processes>,
) -> (Option<Arc<dyn banger_vmm::Vmm>>, Option<String>) {
    use banger_config::VmmChoice;
    let qemu = || -> Arc<dyn banger_vmm::Vmm> {
        Arc::new(banger_vmm::qemu::QemuVmm::new(
            config
                .qemu_bin
                .clone()
                .unwrap_or_else(|| "qemu-system-x86_64".into()),
            config
                .vhost_vsock_bin
                .clone()
                .unwrap_or_else(|| "vhost-device-vsock".into()),
            processes.clone(),
            banger_vmm::qemu::Accel::Auto,
        ))
    };
    let firecracker = || -> Arc<dyn banger_vmm::Vmm> {
        Arc::new(banger_vmm::firecracker::FirecrackerVmm::new(
            config
                .firecracker_bin
                .clone()
                .unwrap_or_else(|| "firecracker".into()),
            processes.clone(),
        ))
    };
    // `auto` prefers Firecracker, but only where it can boot ordinary guest kernels: hardware
    // KVM. On a PVM-backed /dev/kvm (or none) QEMU runs them under TCG instead; Firecracker is
    // still used there when asked for by name (with a PVM-capable guest kernel).
    let candidates: Vec<Arc<dyn banger_vmm::Vmm>> = match config.vmm {
        VmmChoice::Qemu => vec![qemu()],
        VmmChoice::Firecracker => vec![firecracker()],
        VmmChoice::Auto if hardware_kvm(std::path::Path::new("/")) => vec![firecracker(), qemu()],
        VmmChoice::Auto => vec![qemu()],
    };
    let mut reasons = Vec::new();
    for candidate in candidates {
        match candidate.probe().await {
            Ok(version) => {
                tracing::info!(vmm = %candidate.kind(), %version, "VMM selected");
                return (Some(candidate), None);
            }
            Err(err) => reasons.push(format!("{}: {err}", candidate.kind())),
        }
    }
    (None, Some(reasons.join("; ")))
}

/// Whether `/dev/kvm` is usable and backed by hardware virtualisation (not `kvm_pvm`), with
/// host paths under `root`.
pub fn hardware_kvm(root: &std::path::Path) -> bool {
    let usable = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(root.join("dev/kvm"))
        .is_ok();
    usable && !root.join("sys/module/kvm_pvm").exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pvm_backed_kvm_is_not_hardware_kvm() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("dev")).unwrap();
        assert!(!hardware_kvm(root.path()), "no /dev/kvm");
        std::fs::write(root.path().join("dev/kvm"), b"").unwrap();
        assert!(hardware_kvm(root.path()));
        std::fs::create_dir_all(root.path().join("sys/module/kvm_pvm")).unwrap();
        assert!(!hardware_kvm(root.path()), "kvm_pvm loaded");
    }

    #[test]
    fn mem_total_is_parsed_in_kib() {
        assert_eq!(
            parse_mem_total_kib("MemTotal:       24576000 kB\nMemFree: 1 kB\n"),
            Some(24_576_000)
        );
        assert_eq!(parse_mem_total_kib("nothing"), None);
    }
}

//! `banger doctor`: can this host run banger's microVMs, and if not, what to do about it.
//!
//! [`run`] performs every check of SPEC section 11 and returns a [`Report`]: one [`Check`] per
//! question (pass / warn / fail, a one-line summary, and a fix hint whenever the check did not
//! pass), plus the [`KvmKind`] of this host and the [`VmmBackend`] that `vmm = "auto"` picks.
//!
//! Ownership and purity: this crate owns no host state and changes nothing. Every read it makes
//! (files under `/proc`, `/sys` and `/dev`, `PATH` look-ups, `--version` runs, `statvfs`) goes
//! through the narrow [`HostProbe`] trait, so a test stages any host with [`FakeHost`] and the CLI
//! passes [`RealHost`]. The configuration arrives as plain data ([`DoctorInputs`]) so this crate
//! does not depend on the config crate.
//!
//! Concurrency: none. [`run`] is synchronous and may block for a few seconds (each `--version`
//! run is bounded by a timeout in [`RealHost`]); async callers should use `spawn_blocking`.
//!
//! Modules:
//! - [`probe`]: the [`HostProbe`] trait and [`RealHost`].
//! - [`fake`]: [`FakeHost`], the recording fake, compiled always.
//! - [`report`]: [`Status`], [`Check`], [`Report`] and the human rendering.
//! - [`route`]: `/proc/net/route` parsing and IPv4 network overlap.
//! - `kvm`, `vmm`, `network`, `tools`: the checks themselves.

pub mod fake;
mod kvm;
mod network;
pub mod probe;
pub mod report;
pub mod route;
mod tools;
mod vmm;

use std::net::Ipv4Addr;
use std::path::PathBuf;

pub use fake::FakeHost;
pub use kvm::classify_kvm;
pub use probe::{HostProbe, RealHost};
pub use report::{Check, KvmKind, Report, Status, VmmBackend};

/// What doctor needs to know from banger's configuration.
///
/// Built by the CLI from the effective config; plain data so that this crate does not depend on
/// the config crate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DoctorInputs {
    /// Where banger keeps images, disks and the database (free-disk check).
    pub state_dir: PathBuf,
    /// Where banger keeps sockets and per-VM runtime files (carried for the CLI's sake; no check
    /// reads it yet).
    pub runtime_dir: PathBuf,
    /// The configured VMM: `"auto"`, `"firecracker"` or `"qemu"`.
    pub vmm: String,
    /// `firecracker_bin` from the config; `None` means "search `PATH`".
    pub firecracker_bin: Option<PathBuf>,
    /// `qemu_bin` from the config; `None` means "search `PATH` for `qemu-system-x86_64`".
    pub qemu_bin: Option<PathBuf>,
    /// `vhost_vsock_bin` from the config; `None` means "search `PATH` for `vhost-device-vsock`".
    pub vhost_vsock_bin: Option<PathBuf>,
    /// The VM subnet: network address and prefix length.
    pub subnet: (Ipv4Addr, u8),
    /// The name of banger's bridge.
    pub bridge: String,
    /// The network namespace VMs live in, if banger is configured to use one.
    pub netns: Option<String>,
    /// `network.host_forward_accept`: whether bangerd opens an iptables FORWARD that drops.
    pub host_forward_accept: bool,
}

/// Runs every check against `probe` and returns the report, checks in a fixed order.
///
/// Never fails: a check that cannot read what it needs says so in its own summary.
pub fn run(probe: &dyn HostProbe, inputs: &DoctorInputs) -> Report {
    let vmms = vmm::VmmSurvey::take(probe, inputs);
    let kvm = kvm::KvmFacts::gather(probe);

    let mut checks = vec![kvm.check(inputs, &vmms, probe.effective_uid())];
    checks.extend(vmms.checks(inputs, kvm.kind));
    checks.push(network::tun_check(probe));
    checks.push(network::ip_forward_check(probe, inputs));
    checks.push(network::nftables_check(probe));
    checks.push(network::bridge_check(probe, inputs));
    checks.push(network::vhost_check(probe));
    checks.push(network::subnet_check(probe, inputs));
    checks.push(network::forward_firewall_check(probe, inputs));
    checks.push(tools::disk_check(probe, inputs));
    checks.push(tools::e2fsprogs_check(probe));
    checks.push(tools::debootstrap_check(probe));
    checks.push(tools::ssh_check(probe));

    Report {
        checks,
        kvm: kvm.kind,
        vmm: vmms.selected(inputs, kvm.kind),
    }
}

/// The first non-empty line of a program's `--version` output, trimmed.
fn first_line(output: &str) -> &str {
    output
        .lines()
        .map(str::trim)
        .find(|line| !line.is_empty())
        .unwrap_or("")
}

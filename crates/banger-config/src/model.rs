//! The effective configuration: what the daemon, the CLI and the doctor read after loading.
//!
//! Every value here is already resolved (env > file > default) and validated, so consumers never
//! re-check ranges or guess at defaults. The derived paths (socket, lock, database, VM and image
//! directories, daemon log, SSH key) are methods so that exactly one place decides the layout under
//! the state and runtime directories. Plain data: cloned freely, no shared state.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::net::Ipv4Net;

/// banger's effective configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Config {
    /// Durable state: the database, per-VM directories, managed images, the daemon log.
    pub state_dir: PathBuf,
    /// Rebuildable data: downloads, build caches.
    pub cache_dir: PathBuf,
    /// Runtime files that die with the boot: the API socket, the daemon lock.
    pub runtime_dir: PathBuf,
    /// User data that is not state: the generated SSH key pair.
    pub data_dir: PathBuf,
    /// Group that owns the 0660 API socket; `None` leaves the daemon's primary group.
    pub socket_group: Option<String>,
    /// Log filter in tracing `EnvFilter` syntax, e.g. `info` or `info,banger_daemon=debug`.
    pub log_level: String,
    /// Which VMM launches VMs.
    pub vmm: VmmChoice,
    /// Firecracker binary; `None` looks up `firecracker` on `PATH`.
    pub firecracker_bin: Option<PathBuf>,
    /// QEMU binary; `None` looks up `qemu-system-x86_64` on `PATH`.
    pub qemu_bin: Option<PathBuf>,
    /// vhost-user vsock backend for QEMU; `None` looks up `vhost-device-vsock` on `PATH`.
    pub vhost_vsock_bin: Option<PathBuf>,
    /// Private SSH key banger uses to reach guests; `None` means `<data_dir>/ssh/id_ed25519`,
    /// generated on demand.
    pub ssh_key: Option<PathBuf>,
    /// Image used by `vm create` when none is named.
    pub default_image: Option<String>,
    /// Sizes of a new VM when the user gives none.
    pub vm_defaults: VmDefaults,
    /// Seconds a graceful stop may take before the VMM is killed.
    pub stop_timeout_secs: u64,
    /// Seconds a VM may take from VMM start to a healthy guest agent.
    pub boot_timeout_secs: u64,
    /// Seconds between two samples of the stats loop.
    pub stats_poll_interval_secs: u64,
    /// Host-specific kernel command-line arguments appended to every VM's.
    pub extra_kernel_args: String,
    /// The VM network.
    pub network: NetworkConfig,
    /// The web UI listener.
    pub web: WebConfig,
}

impl Config {
    /// The API socket: `<runtime_dir>/bangerd.sock`.
    pub fn socket_path(&self) -> PathBuf {
        self.runtime_dir.join("bangerd.sock")
    }

    /// The single-daemon lock file: `<runtime_dir>/bangerd.lock`.
    pub fn lock_path(&self) -> PathBuf {
        self.runtime_dir.join("bangerd.lock")
    }

    /// The SQLite database: `<state_dir>/banger.db`.
    pub fn db_path(&self) -> PathBuf {
        self.state_dir.join("banger.db")
    }

    /// Per-VM directories live under `<state_dir>/vms`.
    pub fn vms_dir(&self) -> PathBuf {
        self.state_dir.join("vms")
    }

    /// Managed images live under `<state_dir>/images`.
    pub fn images_dir(&self) -> PathBuf {
        self.state_dir.join("images")
    }

    /// The daemon's own log file: `<state_dir>/bangerd.log`.
    pub fn daemon_log_path(&self) -> PathBuf {
        self.state_dir.join("bangerd.log")
    }

    /// The private SSH key: `ssh_key` if configured, else `<data_dir>/ssh/id_ed25519`.
    pub fn ssh_key_path(&self) -> PathBuf {
        self.ssh_key
            .clone()
            .unwrap_or_else(|| self.data_dir.join("ssh").join("id_ed25519"))
    }

    /// Whether the SSH key is banger's own (not configured), so generating it is expected.
    pub fn ssh_key_is_generated(&self) -> bool {
        self.ssh_key.is_none()
    }
}

/// Which VMM launches VMs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VmmChoice {
    /// Firecracker when it is installed and usable, else QEMU.
    #[default]
    Auto,
    /// Always Firecracker.
    Firecracker,
    /// Always `qemu-system-x86_64 -M microvm`.
    Qemu,
}

impl VmmChoice {
    /// The spelling used in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Firecracker => "firecracker",
            Self::Qemu => "qemu",
        }
    }
}

impl fmt::Display for VmmChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string that is not one of `auto`, `firecracker`, `qemu`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected one of `auto`, `firecracker`, `qemu`, got `{0}`")]
pub struct UnknownVmm(pub String);

impl FromStr for VmmChoice {
    type Err = UnknownVmm;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "firecracker" => Ok(Self::Firecracker),
            "qemu" => Ok(Self::Qemu),
            other => Err(UnknownVmm(other.to_owned())),
        }
    }
}

/// Sizes of a new VM when `vm create` is given none (`[vm_defaults]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct VmDefaults {
    /// Virtual CPUs, 1..=64.
    pub vcpus: u32,
    /// Guest memory in MiB, at least 128.
    pub memory_mib: u64,
    /// Work disk size in MiB, at least 256.
    pub disk_size_mib: u64,
}

impl Default for VmDefaults {
    fn default() -> Self {
        Self {
            vcpus: 2,
            memory_mib: 1024,
            disk_size_mib: 4096,
        }
    }
}

/// The VM network (`[network]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NetworkConfig {
    /// Name of the bridge banger creates and owns; a valid Linux interface name.
    pub bridge: String,
    /// VM subnet; the bridge takes its first host address as gateway.
    pub subnet: Ipv4Net,
    /// DNS domain under which VMs are named: `NAME.<domain>`.
    pub domain: String,
    /// Network namespace to put the bridge, taps and rules in; `None` is the daemon's own.
    pub netns: Option<String>,
    /// Taps kept created and attached ahead of demand, 0..=64.
    pub tap_pool_size: u32,
    /// Whether VMs get a network at all; `false` boots them without a NIC.
    pub enabled: bool,
    /// Address port forwards listen on, in the daemon's namespace.
    pub publish_address: std::net::IpAddr,
    /// Upstream resolvers for names that are not VMs; empty: the nameservers of `resolv_conf`.
    pub dns_upstream: Vec<SocketAddr>,
    /// resolv.conf files read in order for upstreams; the first listing a resolver other than
    /// the systemd stub 127.0.0.53 wins.
    pub resolv_conf: Vec<std::path::PathBuf>,
    /// While VMs run, add accept rules for the bridge to iptables' FORWARD chain (Docker's
    /// DOCKER-USER when present) when that chain drops by default, so Docker or ufw do not cut
    /// VMs off. The only rules banger ever adds outside its own table; removed with it.
    pub host_forward_accept: bool,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        Self {
            bridge: "banger0".to_owned(),
            subnet: Ipv4Net::DEFAULT_VM_SUBNET,
            domain: "vm".to_owned(),
            netns: None,
            tap_pool_size: 4,
            enabled: true,
            publish_address: std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
            dns_upstream: Vec::new(),
            resolv_conf: vec![
                "/etc/resolv.conf".into(),
                "/run/systemd/resolve/resolv.conf".into(),
            ],
            host_forward_accept: true,
        }
    }
}

/// The web UI listener (`[web]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WebConfig {
    /// Whether the daemon serves the web UI.
    pub enabled: bool,
    /// TCP address of the web UI; loopback unless `allow_remote`.
    pub listen: SocketAddr,
    /// Permit a non-loopback `listen` address.
    pub allow_remote: bool,
}

impl Default for WebConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            listen: SocketAddr::from(([127, 0, 0, 1], 7777)),
            allow_remote: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vmm_choice_round_trips_through_its_spelling() {
        for choice in [VmmChoice::Auto, VmmChoice::Firecracker, VmmChoice::Qemu] {
            assert_eq!(choice.as_str().parse::<VmmChoice>().unwrap(), choice);
        }
        assert!("kvm".parse::<VmmChoice>().is_err());
    }
}

//! What the agent reads from and does to the guest it runs in: facts for `Health`/`Info`
//! ([`GuestProbe`]) and power control for `Shutdown` ([`PowerControl`]).
//!
//! The probe reads only files under a `proc` root passed in (tests point it at a temp dir), plus
//! `getifaddrs(3)` for addresses; nothing here does name lookups, so the agent stays usable as a
//! static glibc binary (no NSS). Power control is a trait so server tests never power off the
//! machine running them: [`SystemPower`] is the real one, [`RecordingPower`] the fake.

use std::fmt;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use crate::protocol::{GuestInfo, Health, InterfaceAddress, AGENT_VERSION};

/// A guest file could not be read or did not hold what it should.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} does not hold {expected}: {content:?}")]
    Parse {
        path: PathBuf,
        expected: &'static str,
        content: String,
    },
    #[error("listing interface addresses")]
    Addresses(#[source] nix::Error),
}

/// Reads guest facts from a `/proc` tree.
#[derive(Debug, Clone)]
pub struct GuestProbe {
    proc_root: PathBuf,
}

impl GuestProbe {
    /// A probe reading from `proc_root` (normally `/proc`).
    pub fn new(proc_root: impl Into<PathBuf>) -> Self {
        GuestProbe {
            proc_root: proc_root.into(),
        }
    }

    fn read(&self, relative: &str) -> Result<(PathBuf, String), ProbeError> {
        let path = self.proc_root.join(relative);
        match std::fs::read_to_string(&path) {
            Ok(content) => Ok((path, content)),
            Err(source) => Err(ProbeError::Read { path, source }),
        }
    }

    fn read_trimmed(&self, relative: &str) -> Result<String, ProbeError> {
        let (path, content) = self.read(relative)?;
        let value = content.trim().to_owned();
        if value.is_empty() {
            return Err(ProbeError::Parse {
                path,
                expected: "a value",
                content,
            });
        }
        Ok(value)
    }

    /// Seconds since boot, from `uptime`.
    pub fn uptime_secs(&self) -> Result<f64, ProbeError> {
        let (path, content) = self.read("uptime")?;
        content
            .split_whitespace()
            .next()
            .and_then(|first| first.parse::<f64>().ok())
            .filter(|secs| secs.is_finite() && *secs >= 0.0)
            .ok_or(ProbeError::Parse {
                path,
                expected: "seconds since boot",
                content,
            })
    }

    /// The kernel's per-boot random id.
    pub fn boot_id(&self) -> Result<String, ProbeError> {
        self.read_trimmed("sys/kernel/random/boot_id")
    }

    pub fn health(&self) -> Result<Health, ProbeError> {
        Ok(Health {
            agent_version: AGENT_VERSION.to_owned(),
            uptime_secs: self.uptime_secs()?,
            boot_id: self.boot_id()?,
        })
    }

    pub fn info(&self) -> Result<GuestInfo, ProbeError> {
        Ok(GuestInfo {
            hostname: self.read_trimmed("sys/kernel/hostname")?,
            kernel: self.read_trimmed("sys/kernel/osrelease")?,
            addresses: interface_addresses()?,
            boot_id: self.boot_id()?,
        })
    }
}

/// Every IPv4/IPv6 address on every interface, as `addr/prefix`.
fn interface_addresses() -> Result<Vec<InterfaceAddress>, ProbeError> {
    let mut out = Vec::new();
    for entry in nix::ifaddrs::getifaddrs().map_err(ProbeError::Addresses)? {
        let (Some(address), Some(netmask)) = (entry.address, entry.netmask) else {
            continue;
        };
        let pair = if let (Some(a), Some(m)) = (address.as_sockaddr_in(), netmask.as_sockaddr_in())
        {
            Some((IpAddr::V4(a.ip()), u32::from(m.ip()).count_ones()))
        } else if let (Some(a), Some(m)) = (address.as_sockaddr_in6(), netmask.as_sockaddr_in6()) {
            Some((IpAddr::V6(a.ip()), u128::from(m.ip()).count_ones()))
        } else {
            None
        };
        if let Some((ip, prefix)) = pair {
            out.push(InterfaceAddress {
                interface: entry.interface_name,
                address: format!("{ip}/{prefix}"),
            });
        }
    }
    Ok(out)
}

/// What a `Shutdown` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerAction {
    PowerOff,
    Reboot,
}

impl fmt::Display for PowerAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PowerAction::PowerOff => "poweroff",
            PowerAction::Reboot => "reboot",
        })
    }
}

/// The guest could not be powered off or rebooted.
#[derive(Debug, thiserror::Error)]
pub enum PowerError {
    #[error("running `systemctl {action}`")]
    Systemctl {
        action: PowerAction,
        #[source]
        source: io::Error,
    },
    #[error("`systemctl {action}` exited with {status}")]
    SystemctlStatus {
        action: PowerAction,
        status: std::process::ExitStatus,
    },
    #[error("reboot(2) for {action}")]
    Syscall {
        action: PowerAction,
        #[source]
        source: nix::Error,
    },
}

/// Powers the guest off or reboots it. Called from a blocking thread after the agent answered.
pub trait PowerControl: Send + Sync + fmt::Debug {
    fn perform(&self, action: PowerAction) -> Result<(), PowerError>;
}

/// The real power control.
///
/// Under systemd (`/run/systemd/system` exists) it asks systemd for an orderly shutdown.
/// Otherwise (banger's minimal init, or the agent as PID 1) it syncs file systems and calls
/// `reboot(2)` itself: nothing else would unmount or flush for it.
#[derive(Debug, Clone)]
pub struct SystemPower {
    systemd_marker: PathBuf,
}

impl SystemPower {
    pub fn new() -> Self {
        SystemPower {
            systemd_marker: PathBuf::from("/run/systemd/system"),
        }
    }

    /// As [`SystemPower::new`] with a different "is systemd running" marker directory.
    pub fn with_systemd_marker(marker: &Path) -> Self {
        SystemPower {
            systemd_marker: marker.to_owned(),
        }
    }
}

impl Default for SystemPower {
    fn default() -> Self {
        Self::new()
    }
}

impl PowerControl for SystemPower {
    fn perform(&self, action: PowerAction) -> Result<(), PowerError> {
        if self.systemd_marker.is_dir() {
            let status = Command::new("systemctl")
                .arg(action.to_string())
                .status()
                .map_err(|source| PowerError::Systemctl { action, source })?;
            if !status.success() {
                return Err(PowerError::SystemctlStatus { action, status });
            }
            return Ok(());
        }
        nix::unistd::sync();
        let mode = match action {
            PowerAction::PowerOff => nix::sys::reboot::RebootMode::RB_POWER_OFF,
            PowerAction::Reboot => nix::sys::reboot::RebootMode::RB_AUTOBOOT,
        };
        // reboot(2) only returns on failure.
        match nix::sys::reboot::reboot(mode) {
            Ok(never) => match never {},
            Err(source) => Err(PowerError::Syscall { action, source }),
        }
    }
}

/// A fake power control that only records what it was asked to do.
#[derive(Debug, Default)]
pub struct RecordingPower {
    actions: Mutex<Vec<PowerAction>>,
}

impl RecordingPower {
    pub fn new() -> Self {
        Self::default()
    }

    /// Every action requested so far, oldest first.
    pub fn actions(&self) -> Vec<PowerAction> {
        match self.actions.lock() {
            Ok(actions) => actions.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}

impl PowerControl for RecordingPower {
    fn perform(&self, action: PowerAction) -> Result<(), PowerError> {
        match self.actions.lock() {
            Ok(mut actions) => actions.push(action),
            Err(poisoned) => poisoned.into_inner().push(action),
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap: a panic is the failure report
mod tests {
    use super::*;

    fn fake_proc(uptime: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("sys/kernel/random")).unwrap();
        std::fs::write(root.join("uptime"), uptime).unwrap();
        std::fs::write(root.join("sys/kernel/random/boot_id"), "b00t\n").unwrap();
        std::fs::write(root.join("sys/kernel/hostname"), "guest-1\n").unwrap();
        std::fs::write(root.join("sys/kernel/osrelease"), "6.1.0-test\n").unwrap();
        dir
    }

    #[test]
    fn health_reads_uptime_and_boot_id_from_proc_root() {
        let proc = fake_proc("12.34 56.78\n");
        let health = GuestProbe::new(proc.path()).health().unwrap();
        assert_eq!(health.uptime_secs, 12.34);
        assert_eq!(health.boot_id, "b00t");
        assert_eq!(health.agent_version, AGENT_VERSION);
    }

    #[test]
    fn garbage_uptime_is_a_parse_error_naming_the_file() {
        let proc = fake_proc("soon\n");
        let err = GuestProbe::new(proc.path()).health().unwrap_err();
        assert!(matches!(err, ProbeError::Parse { .. }));
        assert!(err.to_string().contains("uptime"), "{err}");
    }

    #[test]
    fn info_reads_hostname_and_kernel_and_lists_loopback() {
        let proc = fake_proc("1.0 1.0\n");
        let info = GuestProbe::new(proc.path()).info().unwrap();
        assert_eq!(info.hostname, "guest-1");
        assert_eq!(info.kernel, "6.1.0-test");
        assert!(
            info.addresses
                .iter()
                .any(|a| a.interface == "lo" && a.address == "127.0.0.1/8"),
            "{:?}",
            info.addresses
        );
    }

    #[test]
    fn missing_proc_file_is_a_read_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = GuestProbe::new(dir.path()).boot_id().unwrap_err();
        assert!(matches!(err, ProbeError::Read { .. }));
    }

    #[test]
    fn recording_power_records_in_order() {
        let power = RecordingPower::new();
        power.perform(PowerAction::Reboot).unwrap();
        power.perform(PowerAction::PowerOff).unwrap();
        assert_eq!(
            power.actions(),
            vec![PowerAction::Reboot, PowerAction::PowerOff]
        );
    }
}

//! Choosing between KVM and TCG (software emulation) for QEMU.
//!
//! `/dev/kvm` existing is not enough: on hosts where it is backed by `kvm_pvm` (a paravirtual KVM
//! for nested clouds) ordinary guest kernels fault on instructions PVM cannot emulate. So
//! [`Accel::Auto`] picks KVM only when `/dev/kvm` opens read-write and `/sys/module/kvm_pvm` is
//! absent, and falls back to TCG otherwise. The host paths are passed in ([`HostPaths`]) so tests
//! decide what the "host" looks like.

use std::fmt;
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Which accelerator the operator asked for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Accel {
    /// Hardware virtualization; fails at launch if `/dev/kvm` cannot run the guest.
    Kvm,
    /// Software emulation (slow, works everywhere).
    Tcg,
    /// KVM when the host can run ordinary guests with it, else TCG.
    #[default]
    Auto,
}

/// The accelerator a VM actually runs under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChosenAccel {
    /// `-accel kvm -cpu host`.
    Kvm,
    /// `-accel tcg -cpu max`.
    Tcg,
}

impl ChosenAccel {
    /// Whether the guest is emulated in software.
    pub fn is_emulated(self) -> bool {
        self == ChosenAccel::Tcg
    }
}

impl fmt::Display for ChosenAccel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ChosenAccel::Kvm => "kvm",
            ChosenAccel::Tcg => "tcg",
        })
    }
}

/// An accelerator and why it was chosen (for `doctor` and logs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccelChoice {
    /// What the VM runs under.
    pub accel: ChosenAccel,
    /// Why, in words.
    pub reason: String,
}

/// Where the host exposes KVM and its loaded modules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPaths {
    /// The KVM device (`/dev/kvm`).
    pub dev_kvm: PathBuf,
    /// The loaded-modules directory (`/sys/module`).
    pub sys_module: PathBuf,
}

impl HostPaths {
    /// The real host's paths.
    pub fn system() -> Self {
        Self::under(Path::new("/"))
    }

    /// `dev/kvm` and `sys/module` under `root` (a temp dir in tests).
    pub fn under(root: &Path) -> Self {
        Self {
            dev_kvm: root.join("dev/kvm"),
            sys_module: root.join("sys/module"),
        }
    }
}

/// Resolves `requested` against the host.
pub fn choose_accel(requested: Accel, host: &HostPaths) -> AccelChoice {
    match requested {
        Accel::Kvm => AccelChoice {
            accel: ChosenAccel::Kvm,
            reason: "configured".into(),
        },
        Accel::Tcg => AccelChoice {
            accel: ChosenAccel::Tcg,
            reason: "configured".into(),
        },
        Accel::Auto => {
            if let Err(error) = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&host.dev_kvm)
            {
                return AccelChoice {
                    accel: ChosenAccel::Tcg,
                    reason: format!("{} cannot be opened ({error})", host.dev_kvm.display()),
                };
            }
            let pvm = host.sys_module.join("kvm_pvm");
            if pvm.exists() {
                return AccelChoice {
                    accel: ChosenAccel::Tcg,
                    reason: format!(
                        "{} is backed by kvm_pvm ({} exists), which cannot run ordinary guest kernels",
                        host.dev_kvm.display(),
                        pvm.display()
                    ),
                };
            }
            AccelChoice {
                accel: ChosenAccel::Kvm,
                reason: format!("{} is usable", host.dev_kvm.display()),
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap: a panic is the failure report
mod tests {
    use super::*;

    fn host(kvm: bool, pvm: bool) -> (tempfile::TempDir, HostPaths) {
        let root = tempfile::tempdir().unwrap();
        let paths = HostPaths::under(root.path());
        std::fs::create_dir_all(root.path().join("dev")).unwrap();
        std::fs::create_dir_all(root.path().join("sys/module/kvm")).unwrap();
        if kvm {
            std::fs::write(&paths.dev_kvm, b"").unwrap();
        }
        if pvm {
            std::fs::create_dir_all(paths.sys_module.join("kvm_pvm")).unwrap();
        }
        (root, paths)
    }

    #[test]
    fn auto_picks_kvm_when_dev_kvm_opens_and_kvm_is_not_pvm() {
        let (_root, paths) = host(true, false);
        assert_eq!(choose_accel(Accel::Auto, &paths).accel, ChosenAccel::Kvm);
    }

    #[test]
    fn auto_falls_back_to_tcg_when_kvm_is_pvm_backed() {
        let (_root, paths) = host(true, true);
        let choice = choose_accel(Accel::Auto, &paths);
        assert_eq!(choice.accel, ChosenAccel::Tcg);
        assert!(choice.reason.contains("kvm_pvm"), "{}", choice.reason);
    }

    #[test]
    fn auto_falls_back_to_tcg_without_dev_kvm() {
        let (_root, paths) = host(false, false);
        let choice = choose_accel(Accel::Auto, &paths);
        assert_eq!(choice.accel, ChosenAccel::Tcg);
        assert!(
            choice.reason.contains("cannot be opened"),
            "{}",
            choice.reason
        );
    }

    #[test]
    fn explicit_choice_is_taken_as_is() {
        let (_root, paths) = host(false, true);
        assert_eq!(choose_accel(Accel::Kvm, &paths).accel, ChosenAccel::Kvm);
        assert_eq!(choose_accel(Accel::Tcg, &paths).accel, ChosenAccel::Tcg);
    }
}

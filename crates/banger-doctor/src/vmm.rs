//! Which VMM binaries are there, which versions, and which backend `vmm` resolves to.
//!
//! `vmm = "auto"` picks firecracker when it is found, else QEMU; `"firecracker"` and `"qemu"` pick
//! that one or nothing. A configured `*_bin` path is used as given (a missing one is a config
//! error); otherwise the program is searched on `PATH`. The QEMU backend reaches the guest agent
//! through `vhost-device-vsock`, so that binary is required exactly when QEMU is the backend.
//!
//! The survey is taken once ([`VmmSurvey::take`]) and then read by the `kvm` check (is there a
//! software-emulation fallback?) and by the VMM checks, so every binary is run at most once.

use std::path::{Path, PathBuf};

use crate::first_line;
use crate::probe::HostProbe;
use crate::report::{Check, KvmKind, Status, VmmBackend};
use crate::DoctorInputs;

const FIRECRACKER: &str = "firecracker";
const QEMU: &str = "qemu-system-x86_64";
const VHOST_VSOCK: &str = "vhost-device-vsock";

/// Where a program was found, if anywhere.
#[derive(Debug)]
enum Found {
    /// Present; the version line or why `--version` failed.
    At {
        path: PathBuf,
        version: Result<String, String>,
    },
    /// The configured `*_bin` path does not exist.
    ConfiguredMissing(PathBuf),
    /// Not configured and not on `PATH`.
    NotOnPath,
}

impl Found {
    fn locate(probe: &dyn HostProbe, program: &str, configured: Option<&Path>) -> Self {
        let path = match configured {
            Some(path) if probe.exists(path) => path.to_path_buf(),
            Some(path) => return Found::ConfiguredMissing(path.to_path_buf()),
            None => match probe.find_in_path(program) {
                Some(path) => path,
                None => return Found::NotOnPath,
            },
        };
        let version = probe
            .command_output(&path, &["--version"])
            .map(|output| first_line(&output).to_owned())
            .map_err(|err| err.to_string());
        Found::At { path, version }
    }

    fn is_found(&self) -> bool {
        matches!(self, Found::At { .. })
    }
}

/// The VMM-related binaries of this host.
#[derive(Debug)]
pub(crate) struct VmmSurvey {
    firecracker: Found,
    qemu: Found,
    vhost_vsock: Found,
}

/// How one binary check words itself when the binary is not on `PATH`.
struct Missing {
    status: Status,
    consequence: String,
    hint: &'static str,
}

impl VmmSurvey {
    pub(crate) fn take(probe: &dyn HostProbe, inputs: &DoctorInputs) -> Self {
        VmmSurvey {
            firecracker: Found::locate(probe, FIRECRACKER, inputs.firecracker_bin.as_deref()),
            qemu: Found::locate(probe, QEMU, inputs.qemu_bin.as_deref()),
            vhost_vsock: Found::locate(probe, VHOST_VSOCK, inputs.vhost_vsock_bin.as_deref()),
        }
    }

    pub(crate) fn qemu_found(&self) -> bool {
        self.qemu.is_found()
    }

    /// The backend `inputs.vmm` resolves to; `None` when it is unknown or its binary is missing.
    /// Like the daemon, `auto` takes Firecracker only on hardware KVM: elsewhere ordinary guest
    /// kernels do not boot under KVM and QEMU runs them under TCG.
    pub(crate) fn selected(&self, inputs: &DoctorInputs, kvm: KvmKind) -> Option<VmmBackend> {
        match inputs.vmm.as_str() {
            "auto" if self.firecracker.is_found() && kvm == KvmKind::Hardware => {
                Some(VmmBackend::Firecracker)
            }
            "auto" | "qemu" if self.qemu.is_found() => Some(VmmBackend::Qemu),
            "firecracker" if self.firecracker.is_found() => Some(VmmBackend::Firecracker),
            _ => None,
        }
    }

    /// The `vmm`, `firecracker`, `qemu` and `vhost-device-vsock` checks, in that order.
    pub(crate) fn checks(&self, inputs: &DoctorInputs, kvm: KvmKind) -> Vec<Check> {
        let selected = self.selected(inputs, kvm);
        let vmm = inputs.vmm.as_str();

        let firecracker_missing = Missing {
            status: if vmm == "firecracker" {
                Status::Fail
            } else {
                Status::Warn
            },
            consequence: match vmm {
                "firecracker" => "; vmm = \"firecracker\" requires it".to_owned(),
                "auto" if self.qemu.is_found() => "; vmm = \"auto\" falls back to qemu".to_owned(),
                _ => String::new(),
            },
            hint: "put firecracker on PATH or set firecracker_bin \
                   (releases: https://github.com/firecracker-microvm/firecracker/releases)",
        };
        let qemu_missing = Missing {
            status: if vmm == "qemu" {
                Status::Fail
            } else {
                Status::Warn
            },
            consequence: if vmm == "qemu" {
                "; vmm = \"qemu\" requires it".to_owned()
            } else {
                "; it is the software-emulation fallback when KVM cannot boot a guest".to_owned()
            },
            hint: "`sudo apt-get install qemu-system-x86` (or set qemu_bin)",
        };
        let vhost_missing = if selected == Some(VmmBackend::Qemu) {
            Missing {
                status: Status::Fail,
                consequence: "; the QEMU backend needs it to reach the guest agent over vsock"
                    .to_owned(),
                hint: "`cargo install vhost-device-vsock` (or set vhost_vsock_bin)",
            }
        } else {
            Missing {
                status: Status::Warn,
                consequence: "; only the QEMU backend needs it (guest agent over vsock)".to_owned(),
                hint: "`cargo install vhost-device-vsock` (or set vhost_vsock_bin)",
            }
        };

        vec![
            self.backend_check(inputs, selected, kvm),
            binary_check(
                FIRECRACKER,
                "firecracker_bin",
                &self.firecracker,
                firecracker_missing,
            ),
            binary_check("qemu", "qemu_bin", &self.qemu, qemu_missing),
            binary_check(
                VHOST_VSOCK,
                "vhost_vsock_bin",
                &self.vhost_vsock,
                vhost_missing,
            ),
        ]
    }

    fn backend_check(
        &self,
        inputs: &DoctorInputs,
        selected: Option<VmmBackend>,
        kvm: KvmKind,
    ) -> Check {
        const NAME: &str = "vmm";
        let vmm = inputs.vmm.as_str();
        let Some(backend) = selected else {
            return match vmm {
                "auto" => Check::fail(
                    NAME,
                    format!("vmm = \"auto\": neither {FIRECRACKER} nor {QEMU} was found"),
                    "install one: put firecracker on PATH (or set firecracker_bin), \
                     or `sudo apt-get install qemu-system-x86`",
                ),
                "firecracker" => Check::fail(
                    NAME,
                    "vmm = \"firecracker\" but firecracker was not found",
                    "put firecracker on PATH or set firecracker_bin, or set vmm = \"auto\" \
                     to fall back to qemu",
                ),
                "qemu" => Check::fail(
                    NAME,
                    format!("vmm = \"qemu\" but {QEMU} was not found"),
                    "`sudo apt-get install qemu-system-x86` (or set qemu_bin), or set \
                     vmm = \"auto\"",
                ),
                other => Check::fail(
                    NAME,
                    format!("vmm = {other:?} is not one of \"auto\", \"firecracker\", \"qemu\""),
                    "set vmm = \"auto\" (or \"firecracker\" / \"qemu\") in the config",
                ),
            };
        };
        let picks = if vmm == "auto" {
            format!("vmm = \"auto\" selects {}", backend.config_name())
        } else {
            format!("vmm = \"{}\"", backend.config_name())
        };
        match backend {
            VmmBackend::Firecracker => match kvm {
                KvmKind::Hardware | KvmKind::Unverified => Check::pass(NAME, picks),
                KvmKind::Pvm => Check::warn(
                    NAME,
                    format!("{picks}, which under PVM boots only PVM-patched guest kernels"),
                    "use a PVM-patched guest kernel, or set vmm = \"qemu\" to boot ordinary \
                     kernels in software emulation",
                ),
                KvmKind::Absent => Check::fail(
                    NAME,
                    format!("{picks}, which needs /dev/kvm, and there is none"),
                    "set vmm = \"qemu\" (software emulation), or make /dev/kvm available \
                     (see the kvm check)",
                ),
                KvmKind::Unusable => Check::warn(
                    NAME,
                    format!("{picks}, which needs /dev/kvm, and it does not open here"),
                    "see the kvm check; or set vmm = \"qemu\" (software emulation)",
                ),
            },
            VmmBackend::Qemu => {
                let why = match (vmm, self.firecracker.is_found()) {
                    ("auto", false) => " (firecracker not found)",
                    ("auto", true) => {
                        " (firecracker needs hardware KVM for ordinary guest kernels)"
                    }
                    _ => "",
                };
                let accel = match kvm {
                    KvmKind::Hardware => "accelerated by KVM",
                    KvmKind::Unverified => "KVM acceleration unverified",
                    KvmKind::Pvm => "software emulation (TCG): ordinary kernels fault under PVM",
                    KvmKind::Unusable | KvmKind::Absent => "software emulation (TCG)",
                };
                Check::pass(NAME, format!("{picks}{why}; {accel}"))
            }
        }
    }
}

fn binary_check(name: &str, config_key: &str, found: &Found, missing: Missing) -> Check {
    match found {
        Found::At {
            path,
            version: Ok(version),
        } if !version.is_empty() => Check::pass(name, format!("{version} ({})", path.display())),
        Found::At {
            path,
            version: Ok(_),
        } => Check::pass(name, format!("found at {}", path.display())),
        Found::At {
            path,
            version: Err(err),
        } => Check::warn(
            name,
            format!("{} found, but `--version` failed: {err}", path.display()),
            format!(
                "check that `{} --version` runs on this host (architecture, shared libraries)",
                path.display()
            ),
        ),
        Found::ConfiguredMissing(path) => Check::fail(
            name,
            format!(
                "{config_key} = {:?} does not exist",
                path.display().to_string()
            ),
            format!("fix {config_key} in the config, or remove it to search PATH"),
        ),
        Found::NotOnPath => Check::with_status(
            name,
            missing.status,
            format!(
                "{} not found on PATH{}",
                program_for(name),
                missing.consequence
            ),
            missing.hint,
        ),
    }
}

fn program_for(check_name: &str) -> &str {
    if check_name == "qemu" {
        QEMU
    } else {
        check_name
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap: a panic is the failure report
mod tests {
    use super::*;
    use crate::FakeHost;

    fn inputs(vmm: &str) -> DoctorInputs {
        DoctorInputs {
            state_dir: "/var/lib/banger".into(),
            runtime_dir: "/run/banger".into(),
            vmm: vmm.into(),
            firecracker_bin: None,
            qemu_bin: None,
            vhost_vsock_bin: None,
            subnet: (std::net::Ipv4Addr::new(172, 30, 0, 0), 24),
            bridge: "banger0".into(),
            netns: None,
            host_forward_accept: true,
        }
    }

    fn both() -> FakeHost {
        FakeHost::new()
            .with_binary(
                "firecracker",
                "/usr/local/bin/firecracker",
                "Firecracker v1.16.1\n",
            )
            .with_binary(
                "qemu-system-x86_64",
                "/usr/bin/qemu-system-x86_64",
                "QEMU emulator version 7.2.22\n",
            )
    }

    #[test]
    fn auto_prefers_firecracker_then_qemu() {
        let host = both();
        assert_eq!(
            VmmSurvey::take(&host, &inputs("auto")).selected(&inputs("auto"), KvmKind::Hardware),
            Some(VmmBackend::Firecracker)
        );
        let qemu_only = FakeHost::new().with_binary(
            "qemu-system-x86_64",
            "/usr/bin/qemu-system-x86_64",
            "QEMU\n",
        );
        assert_eq!(
            VmmSurvey::take(&qemu_only, &inputs("auto"))
                .selected(&inputs("auto"), KvmKind::Hardware),
            Some(VmmBackend::Qemu)
        );
        assert_eq!(
            VmmSurvey::take(&FakeHost::new(), &inputs("auto"))
                .selected(&inputs("auto"), KvmKind::Hardware),
            None
        );
    }

    #[test]
    fn an_explicit_vmm_never_falls_back() {
        let qemu_only = FakeHost::new().with_binary(
            "qemu-system-x86_64",
            "/usr/bin/qemu-system-x86_64",
            "QEMU\n",
        );
        let survey = VmmSurvey::take(&qemu_only, &inputs("firecracker"));
        assert_eq!(
            survey.selected(&inputs("firecracker"), KvmKind::Hardware),
            None
        );
        let checks = survey.checks(&inputs("firecracker"), KvmKind::Hardware);
        assert_eq!(checks[0].status, Status::Fail);
        assert_eq!(checks[1].name, "firecracker");
        assert_eq!(checks[1].status, Status::Fail);
        assert_eq!(both_survey_selected("qemu"), Some(VmmBackend::Qemu));
    }

    #[test]
    fn auto_takes_qemu_on_pvm_even_with_firecracker_installed() {
        let host = FakeHost::new()
            .with_binary(FIRECRACKER, "/usr/bin/firecracker", "Firecracker v1.16.1")
            .with_binary(
                QEMU,
                "/usr/bin/qemu-system-x86_64",
                "QEMU emulator version 7.2.22",
            );
        let survey = VmmSurvey::take(&host, &inputs("auto"));
        assert_eq!(
            survey.selected(&inputs("auto"), KvmKind::Pvm),
            Some(VmmBackend::Qemu)
        );
        assert_eq!(
            survey.selected(&inputs("auto"), KvmKind::Hardware),
            Some(VmmBackend::Firecracker)
        );
        assert_eq!(
            survey.selected(&inputs("firecracker"), KvmKind::Pvm),
            Some(VmmBackend::Firecracker)
        );
    }

    fn both_survey_selected(vmm: &str) -> Option<VmmBackend> {
        let host = both();
        VmmSurvey::take(&host, &inputs(vmm)).selected(&inputs(vmm), KvmKind::Hardware)
    }

    #[test]
    fn an_unknown_vmm_fails_with_the_allowed_values() {
        let host = both();
        let checks =
            VmmSurvey::take(&host, &inputs("xen")).checks(&inputs("xen"), KvmKind::Hardware);
        assert_eq!(checks[0].status, Status::Fail);
        assert!(
            checks[0].summary.contains("\"xen\""),
            "{}",
            checks[0].summary
        );
    }

    #[test]
    fn a_configured_path_is_used_instead_of_path_and_must_exist() {
        let host = both();
        let mut configured = inputs("auto");
        configured.firecracker_bin = Some("/opt/fc/firecracker".into());
        let survey = VmmSurvey::take(&host, &configured);
        let checks = survey.checks(&configured, KvmKind::Hardware);
        assert_eq!(checks[1].status, Status::Fail);
        assert!(checks[1].summary.contains("firecracker_bin"));
        assert!(!host.asked().contains(&"which firecracker".to_owned()));
        assert_eq!(
            survey.selected(&configured, KvmKind::Hardware),
            Some(VmmBackend::Qemu)
        );
    }

    #[test]
    fn vhost_device_vsock_is_required_only_for_the_qemu_backend() {
        let host = both();
        let checks = VmmSurvey::take(&host, &inputs("qemu")).checks(&inputs("qemu"), KvmKind::Pvm);
        assert_eq!(checks[3].name, "vhost-device-vsock");
        assert_eq!(checks[3].status, Status::Fail);
        let checks =
            VmmSurvey::take(&host, &inputs("auto")).checks(&inputs("auto"), KvmKind::Hardware);
        assert_eq!(checks[3].status, Status::Warn);
    }

    #[test]
    fn firecracker_without_any_kvm_fails_the_backend_check() {
        let host = both();
        let checks = VmmSurvey::take(&host, &inputs("firecracker"))
            .checks(&inputs("firecracker"), KvmKind::Absent);
        assert_eq!(checks[0].status, Status::Fail);
        assert!(checks[0]
            .hint
            .as_deref()
            .unwrap_or("")
            .contains("vmm = \"qemu\""));
    }
}

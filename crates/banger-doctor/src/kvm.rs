//! Is `/dev/kvm` usable, and can ordinary guests really boot on it?
//!
//! Three very different hosts all have a `/dev/kvm` that opens: hardware KVM (vmx/svm with
//! `kvm_intel`/`kvm_amd`), PVM (`kvm_pvm`, software virtualization on which ordinary guest
//! kernels fault), and anything doctor cannot recognise. The order of [`classify_kvm`] is:
//! absent, then not openable, then `kvm_pvm` loaded (it decides even if a vendor module is loaded
//! too, since `/dev/kvm` may belong to it), then hardware, else unverified.

use std::path::Path;

use crate::probe::HostProbe;
use crate::report::{Check, KvmKind, Status};
use crate::vmm::VmmSurvey;
use crate::DoctorInputs;

const DEV_KVM: &str = "/dev/kvm";
const KVM_PVM_MODULE: &str = "/sys/module/kvm_pvm";

const NAME: &str = "kvm";

const LOAD_HINT: &str = "load KVM: `sudo modprobe kvm_intel` (Intel) or `sudo modprobe kvm_amd` (AMD); \
if that fails, enable virtualization (VT-x/AMD-V) in the BIOS/firmware, or nested virtualization on a cloud VM";

/// What doctor learned about `/dev/kvm`.
#[derive(Debug)]
pub(crate) struct KvmFacts {
    pub(crate) kind: KvmKind,
    /// `vmx` or `svm` when the CPU advertises one.
    cpu_feature: Option<&'static str>,
    /// `kvm_intel` or `kvm_amd` when loaded.
    vendor_module: Option<&'static str>,
    /// Why `/dev/kvm` did not open, when it exists but did not.
    open_error: Option<std::io::Error>,
}

/// What `/dev/kvm` is on the host `probe` sees.
pub fn classify_kvm(probe: &dyn HostProbe) -> KvmKind {
    KvmFacts::gather(probe).kind
}

impl KvmFacts {
    pub(crate) fn gather(probe: &dyn HostProbe) -> Self {
        let flags = probe.cpu_flags();
        let has = |flag: &str| flags.iter().any(|f| f == flag);
        let cpu_feature = if has("vmx") {
            Some("vmx")
        } else if has("svm") {
            Some("svm")
        } else {
            None
        };
        let vendor_module = ["kvm_intel", "kvm_amd"]
            .into_iter()
            .find(|module| probe.exists(&Path::new("/sys/module").join(module)));

        let mut facts = KvmFacts {
            kind: KvmKind::Absent,
            cpu_feature,
            vendor_module,
            open_error: None,
        };
        if !probe.exists(Path::new(DEV_KVM)) {
            return facts;
        }
        if let Err(err) = probe.can_open_rw(Path::new(DEV_KVM)) {
            facts.kind = KvmKind::Unusable;
            facts.open_error = Some(err);
            return facts;
        }
        let hardware = matches!(
            (cpu_feature, vendor_module),
            (Some("vmx"), Some("kvm_intel")) | (Some("svm"), Some("kvm_amd"))
        );
        facts.kind = if probe.exists(Path::new(KVM_PVM_MODULE)) {
            KvmKind::Pvm
        } else if hardware {
            KvmKind::Hardware
        } else {
            KvmKind::Unverified
        };
        facts
    }

    /// The `kvm` check. Without KVM banger can still fall back to QEMU's software emulation, so
    /// a missing or unusable `/dev/kvm` fails only when that fallback is not there.
    pub(crate) fn check(&self, inputs: &DoctorInputs, vmms: &VmmSurvey, euid: u32) -> Check {
        let tcg_fallback = vmms.qemu_found() && inputs.vmm != "firecracker";
        let no_kvm_status = if tcg_fallback {
            Status::Warn
        } else {
            Status::Fail
        };
        let fallback_note = if tcg_fallback {
            "; banger can only use QEMU TCG (software emulation): expect slow boots"
        } else {
            "; no VMM can run without it"
        };
        match self.kind {
            KvmKind::Hardware => Check::pass(
                NAME,
                format!(
                    "hardware KVM ({} with {}); /dev/kvm opens read-write",
                    self.cpu_feature.unwrap_or("?"),
                    self.vendor_module.unwrap_or("?")
                ),
            ),
            KvmKind::Pvm => Check::warn(
                NAME,
                "/dev/kvm is backed by kvm_pvm (PVM): ordinary guest kernels fault under PVM; \
                 banger will use QEMU TCG (software emulation) or a PVM-patched kernel; expect slow boots",
                "for full speed use a host with hardware virtualization (vmx/svm); here, set \
                 vmm = \"qemu\" to boot ordinary kernels, or give firecracker a PVM-patched guest kernel",
            ),
            KvmKind::Unverified => Check::warn(
                NAME,
                "/dev/kvm opens, but the CPU shows neither vmx nor svm with kvm_intel/kvm_amd, \
                 and kvm_pvm is not loaded: guests may not boot",
                "check `lsmod | grep kvm` and `sudo dmesg | grep -i kvm`; if guests fail to boot, \
                 set vmm = \"qemu\" (software emulation)",
            ),
            KvmKind::Unusable => {
                let reason = self
                    .open_error
                    .as_ref()
                    .map(|err| err.to_string())
                    .unwrap_or_else(|| "unknown error".to_owned());
                let permission = self
                    .open_error
                    .as_ref()
                    .is_some_and(|err| err.kind() == std::io::ErrorKind::PermissionDenied);
                if permission && euid != 0 {
                    // bangerd runs as root: what this user cannot open may be fine for it.
                    Check::warn(
                        NAME,
                        format!(
                            "/dev/kvm exists but this user (uid {euid}) cannot open it read-write; \
                             bangerd runs as root"
                        ),
                        "add yourself to the kvm group: `sudo usermod -aG kvm $USER`, then log in \
                         again (or run `sudo banger doctor` to check as root)",
                    )
                } else {
                    Check::with_status(
                        NAME,
                        no_kvm_status,
                        format!("/dev/kvm exists but cannot be opened read-write ({reason}){fallback_note}"),
                        "check `ls -l /dev/kvm` (owner root:kvm, mode 0660) and, in a container, \
                         that the device is passed through; add your user to the kvm group: \
                         `sudo usermod -aG kvm $USER`",
                    )
                }
            }
            KvmKind::Absent => {
                let cpu = if self.cpu_feature.is_none() {
                    " and the CPU shows neither vmx nor svm"
                } else {
                    ""
                };
                Check::with_status(
                    NAME,
                    no_kvm_status,
                    format!("/dev/kvm is absent{cpu}{fallback_note}"),
                    LOAD_HINT,
                )
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap: a panic is the failure report
mod tests {
    use super::*;
    use crate::FakeHost;

    #[test]
    fn kvm_pvm_module_means_pvm_even_with_an_openable_dev_kvm() {
        let host = FakeHost::new()
            .with_rw("/dev/kvm")
            .with_path("/sys/module/kvm")
            .with_path("/sys/module/kvm_pvm")
            .with_cpu_flags(&["fpu", "hypervisor"]);
        assert_eq!(classify_kvm(&host), KvmKind::Pvm);
    }

    #[test]
    fn vmx_with_kvm_intel_is_hardware() {
        let host = FakeHost::new()
            .with_rw("/dev/kvm")
            .with_path("/sys/module/kvm_intel")
            .with_cpu_flags(&["vmx"]);
        assert_eq!(classify_kvm(&host), KvmKind::Hardware);
    }

    #[test]
    fn svm_with_kvm_amd_is_hardware() {
        let host = FakeHost::new()
            .with_rw("/dev/kvm")
            .with_path("/sys/module/kvm_amd")
            .with_cpu_flags(&["svm"]);
        assert_eq!(classify_kvm(&host), KvmKind::Hardware);
    }

    #[test]
    fn a_cpu_flag_without_its_module_is_unverified() {
        let host = FakeHost::new()
            .with_rw("/dev/kvm")
            .with_path("/sys/module/kvm_amd")
            .with_cpu_flags(&["vmx"]);
        assert_eq!(classify_kvm(&host), KvmKind::Unverified);
    }

    #[test]
    fn dev_kvm_that_does_not_open_is_unusable_whatever_backs_it() {
        let host = FakeHost::new()
            .with_path("/dev/kvm")
            .with_path("/sys/module/kvm_pvm");
        assert_eq!(classify_kvm(&host), KvmKind::Unusable);
    }

    #[test]
    fn no_dev_kvm_is_absent() {
        let host = FakeHost::new()
            .with_path("/sys/module/kvm_intel")
            .with_cpu_flags(&["vmx"]);
        assert_eq!(classify_kvm(&host), KvmKind::Absent);
    }

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

    fn kvm_check(host: &FakeHost, vmm: &str) -> Check {
        let inputs = inputs(vmm);
        let vmms = VmmSurvey::take(host, &inputs);
        KvmFacts::gather(host).check(&inputs, &vmms, host.effective_uid())
    }

    #[test]
    fn absent_kvm_only_warns_when_qemu_can_emulate() {
        let with_qemu = FakeHost::new().with_binary(
            "qemu-system-x86_64",
            "/usr/bin/qemu-system-x86_64",
            "QEMU emulator version 7.2.22\n",
        );
        assert_eq!(kvm_check(&with_qemu, "auto").status, Status::Warn);
        assert_eq!(kvm_check(&with_qemu, "firecracker").status, Status::Fail);
        assert_eq!(kvm_check(&FakeHost::new(), "auto").status, Status::Fail);
    }

    #[test]
    fn permission_denied_for_a_normal_user_points_at_the_kvm_group() {
        let host = FakeHost::new().with_path("/dev/kvm").with_euid(1000);
        let check = kvm_check(&host, "auto");
        assert_eq!(check.status, Status::Warn);
        assert!(check.hint.unwrap().contains("usermod -aG kvm"));
    }
}

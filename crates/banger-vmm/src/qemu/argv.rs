//! The command lines of a QEMU microvm and of its `vhost-device-vsock` helper, as pure functions.
//!
//! Nothing here touches the host: [`qemu_argv`] and [`vhost_vsock_argv`] turn a [`LaunchSpec`]
//! plus the chosen accelerator and the per-VM socket paths into argv vectors, so every option the
//! backend passes is pinned by unit tests. The traps they encode were measured on QEMU 7.2
//! (see `shared/testing/README.md`):
//!
//! - `-M microvm,acpi=on,pit=on,pic=on,rtc=on`: the guest finds the virtio-mmio devices through
//!   ACPI (Debian's kernel lacks `VIRTIO_MMIO_CMDLINE_DEVICES`), and ACPI also delivers the power
//!   button that [`system_powerdown`](super::qmp::QmpClient::system_powerdown) presses.
//! - guest memory is a shared memfd: vhost-user (the vsock helper) maps it; without `share=on`
//!   every vsock `CONNECT` is reset.
//! - the vhost-user chardev has no `reconnect=` (it breaks QEMU 7.2).
//! - under TCG the guest gets `tsc_early_khz=` (PIT calibration otherwise hangs sometimes).
//!
//! Values embedded in QEMU option lists (`file=`, `path=`) have their commas doubled, QEMU's own
//! escape, so a path with a comma cannot inject options.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use super::accel::ChosenAccel;
use crate::LaunchSpec;

/// TSC frequency given to the guest under TCG, in kHz. Any plausible value works: it only stops
/// the kernel from calibrating against the emulated PIT, which sometimes never finishes.
pub const TCG_TSC_KHZ: u32 = 2_600_000;

/// The sockets a QEMU VM owns inside its runtime directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QemuSockets {
    /// QMP control socket (QEMU listens).
    pub qmp: PathBuf,
    /// vhost-user socket between QEMU and `vhost-device-vsock` (the helper listens).
    pub vhost_vsock: PathBuf,
}

impl QemuSockets {
    /// File name of the QMP socket inside the runtime directory.
    pub const QMP: &'static str = "qmp.sock";
    /// File name of the vhost-user vsock socket inside the runtime directory.
    pub const VHOST_VSOCK: &'static str = "vhost-vsock.sock";

    /// The sockets of the VM whose runtime directory is `run_dir`.
    pub fn in_run_dir(run_dir: &Path) -> Self {
        Self {
            qmp: run_dir.join(Self::QMP),
            vhost_vsock: run_dir.join(Self::VHOST_VSOCK),
        }
    }
}

/// Options the backend appends to the image's kernel command line, in order. An option whose key
/// the image's command line already sets is left to the image.
pub fn cmdline_extras(base: &str, accel: ChosenAccel) -> Vec<String> {
    let mut extras = Vec::new();
    if !has_param(base, "console") {
        extras.push("console=ttyS0".to_string());
    }
    if accel == ChosenAccel::Tcg && !has_param(base, "tsc_early_khz") {
        extras.push(format!("tsc_early_khz={TCG_TSC_KHZ}"));
    }
    extras
}

/// The full guest kernel command line: the image's, then [`cmdline_extras`].
pub fn guest_cmdline(base: &str, accel: ChosenAccel) -> String {
    let mut words: Vec<String> = base.split_whitespace().map(str::to_string).collect();
    words.extend(cmdline_extras(base, accel));
    words.join(" ")
}

fn has_param(cmdline: &str, key: &str) -> bool {
    cmdline
        .split_whitespace()
        .any(|word| word.split_once('=').map_or(word, |(k, _)| k) == key)
}

/// argv (without the program) of `qemu-system-x86_64` for `spec`.
pub fn qemu_argv(spec: &LaunchSpec, accel: ChosenAccel, sockets: &QemuSockets) -> Vec<OsString> {
    let mut argv = ArgvBuilder::default();
    argv.flag("-name").opt(&spec.name);
    argv.flag("-M")
        .opt("microvm,acpi=on,pit=on,pic=on,rtc=on,memory-backend=mem");
    argv.flag("-object").opt(format!(
        "memory-backend-memfd,id=mem,size={}M,share=on",
        spec.memory_mib
    ));
    argv.flag("-m").opt(format!("{}M", spec.memory_mib));
    match accel {
        ChosenAccel::Kvm => argv.flag("-accel").opt("kvm").flag("-cpu").opt("host"),
        ChosenAccel::Tcg => argv.flag("-accel").opt("tcg").flag("-cpu").opt("max"),
    };
    argv.flag("-smp").opt(spec.vcpus.to_string());
    // No default devices, no user config files, no display, and a guest reboot ends the VM (as it
    // does under Firecracker) instead of booting it again behind banger's back.
    argv.flag("-nodefaults")
        .flag("-no-user-config")
        .flag("-nographic")
        .flag("-no-reboot");

    argv.flag("-chardev").opt(with_path(
        "file,id=console,append=on,path=",
        &spec.console_log,
    ));
    argv.flag("-serial").opt("chardev:console");

    argv.flag("-kernel").opt(&spec.kernel);
    if let Some(initrd) = &spec.initrd {
        argv.flag("-initrd").opt(initrd);
    }
    argv.flag("-append")
        .opt(guest_cmdline(&spec.cmdline, accel));

    for drive in &spec.drives {
        let read_only = if drive.read_only { "on" } else { "off" };
        argv.flag("-drive").opt(with_path(
            &format!(
                "id={},format=raw,if=none,read-only={read_only},file=",
                drive.id
            ),
            &drive.path,
        ));
        argv.flag("-device")
            .opt(format!("virtio-blk-device,drive={}", drive.id));
    }

    if let Some(net) = &spec.net {
        argv.flag("-netdev").opt(format!(
            "tap,id=net0,ifname={},script=no,downscript=no",
            net.tap
        ));
        argv.flag("-device")
            .opt(format!("virtio-net-device,netdev=net0,mac={}", net.mac));
    }

    argv.flag("-chardev")
        .opt(with_path("socket,id=vsock,path=", &sockets.vhost_vsock));
    argv.flag("-device")
        .opt("vhost-user-vsock-device,chardev=vsock");

    argv.flag("-chardev").opt(with_path(
        "socket,id=qmp,server=on,wait=off,path=",
        &sockets.qmp,
    ));
    argv.flag("-mon").opt("chardev=qmp,mode=control");
    argv.0
}

/// argv (without the program) of `vhost-device-vsock` serving `spec`'s guest. The separate
/// `--guest-cid/--socket/--uds-path` flags are used rather than `--vm key=value,...`, whose
/// comma-separated list cannot carry a path with a comma.
pub fn vhost_vsock_argv(spec: &LaunchSpec, sockets: &QemuSockets) -> Vec<OsString> {
    let mut argv = ArgvBuilder::default();
    argv.flag("--guest-cid").opt(spec.vsock_cid.to_string());
    argv.flag("--socket").opt(&sockets.vhost_vsock);
    argv.flag("--uds-path").opt(&spec.vsock_uds);
    argv.0
}

#[derive(Default)]
struct ArgvBuilder(Vec<OsString>);

impl ArgvBuilder {
    fn flag(&mut self, flag: &str) -> &mut Self {
        self.0.push(flag.into());
        self
    }

    fn opt(&mut self, value: impl AsRef<OsStr>) -> &mut Self {
        self.0.push(value.as_ref().to_os_string());
        self
    }
}

/// `options` followed by `path` as the last option's value, with every comma of the path doubled
/// (QEMU's escape for a comma inside an option value).
fn with_path(options: &str, path: &Path) -> OsString {
    let mut value = options.as_bytes().to_vec();
    for &byte in path.as_os_str().as_bytes() {
        value.push(byte);
        if byte == b',' {
            value.push(b',');
        }
    }
    OsString::from_vec(value)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap: a panic is the failure report
mod tests {
    use super::*;
    use crate::{Drive, NetIface};

    fn spec() -> LaunchSpec {
        LaunchSpec {
            name: "devbox".into(),
            vcpus: 2,
            memory_mib: 512,
            kernel: "/images/k/vmlinuz".into(),
            initrd: Some("/images/k/initrd.img".into()),
            cmdline: "root=/dev/vda ro quiet".into(),
            drives: vec![
                Drive {
                    id: "rootfs".into(),
                    path: "/images/base.ext4".into(),
                    read_only: true,
                },
                Drive {
                    id: "overlay".into(),
                    path: "/vms/devbox/overlay.ext4".into(),
                    read_only: false,
                },
                Drive {
                    id: "work".into(),
                    path: "/vms/devbox/work.ext4".into(),
                    read_only: false,
                },
            ],
            net: Some(NetIface {
                tap: "bgtap3".into(),
                mac: "02:fc:00:00:00:03".into(),
            }),
            vsock_cid: 7,
            run_dir: "/run/banger/vms/devbox".into(),
            vsock_uds: "/run/banger/vms/devbox/vsock.sock".into(),
            vmm_log: "/var/log/banger/devbox.vmm.log".into(),
            console_log: "/var/log/banger/devbox.console.log".into(),
            netns: None,
        }
    }

    fn argv_strings(spec: &LaunchSpec, accel: ChosenAccel) -> Vec<String> {
        let sockets = QemuSockets::in_run_dir(&spec.run_dir);
        qemu_argv(spec, accel, &sockets)
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect()
    }

    /// The values following each occurrence of `flag`, in order.
    fn values_of<'a>(argv: &'a [String], flag: &str) -> Vec<&'a str> {
        argv.windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| w[1].as_str())
            .collect()
    }

    #[test]
    fn kvm_uses_host_cpu_and_leaves_tsc_to_the_kernel() {
        let argv = argv_strings(&spec(), ChosenAccel::Kvm);
        assert_eq!(values_of(&argv, "-accel"), ["kvm"]);
        assert_eq!(values_of(&argv, "-cpu"), ["host"]);
        assert_eq!(
            values_of(&argv, "-append"),
            ["root=/dev/vda ro quiet console=ttyS0"]
        );
    }

    #[test]
    fn tcg_uses_max_cpu_and_pins_the_tsc_frequency() {
        let argv = argv_strings(&spec(), ChosenAccel::Tcg);
        assert_eq!(values_of(&argv, "-accel"), ["tcg"]);
        assert_eq!(values_of(&argv, "-cpu"), ["max"]);
        assert_eq!(
            values_of(&argv, "-append"),
            ["root=/dev/vda ro quiet console=ttyS0 tsc_early_khz=2600000"]
        );
    }

    #[test]
    fn machine_has_acpi_legacy_timers_and_shared_memfd_memory() {
        let argv = argv_strings(&spec(), ChosenAccel::Tcg);
        assert_eq!(
            values_of(&argv, "-M"),
            ["microvm,acpi=on,pit=on,pic=on,rtc=on,memory-backend=mem"]
        );
        assert_eq!(
            values_of(&argv, "-object"),
            ["memory-backend-memfd,id=mem,size=512M,share=on"]
        );
        assert_eq!(values_of(&argv, "-m"), ["512M"]);
        assert_eq!(values_of(&argv, "-smp"), ["2"]);
        for flag in ["-nodefaults", "-no-user-config", "-nographic", "-no-reboot"] {
            assert!(
                argv.iter().any(|a| a == flag),
                "{flag} missing from {argv:?}"
            );
        }
    }

    #[test]
    fn console_is_appended_to_the_console_log_on_the_first_serial_port() {
        let argv = argv_strings(&spec(), ChosenAccel::Kvm);
        let chardevs = values_of(&argv, "-chardev");
        assert!(
            chardevs.contains(&"file,id=console,append=on,path=/var/log/banger/devbox.console.log"),
            "{chardevs:?}"
        );
        assert_eq!(values_of(&argv, "-serial"), ["chardev:console"]);
    }

    #[test]
    fn drives_are_attached_in_spec_order_with_their_read_only_flag() {
        let argv = argv_strings(&spec(), ChosenAccel::Kvm);
        assert_eq!(
            values_of(&argv, "-drive"),
            [
                "id=rootfs,format=raw,if=none,read-only=on,file=/images/base.ext4",
                "id=overlay,format=raw,if=none,read-only=off,file=/vms/devbox/overlay.ext4",
                "id=work,format=raw,if=none,read-only=off,file=/vms/devbox/work.ext4",
            ]
        );
        let blk: Vec<&str> = values_of(&argv, "-device")
            .into_iter()
            .filter(|d| d.starts_with("virtio-blk-device"))
            .collect();
        assert_eq!(
            blk,
            [
                "virtio-blk-device,drive=rootfs",
                "virtio-blk-device,drive=overlay",
                "virtio-blk-device,drive=work"
            ]
        );
    }

    #[test]
    fn net_is_a_tap_without_scripts_when_the_spec_has_one() {
        let argv = argv_strings(&spec(), ChosenAccel::Kvm);
        assert_eq!(
            values_of(&argv, "-netdev"),
            ["tap,id=net0,ifname=bgtap3,script=no,downscript=no"]
        );
        assert!(values_of(&argv, "-device")
            .contains(&"virtio-net-device,netdev=net0,mac=02:fc:00:00:00:03"));
    }

    #[test]
    fn no_net_and_no_initrd_means_no_such_options() {
        let mut spec = spec();
        spec.net = None;
        spec.initrd = None;
        let argv = argv_strings(&spec, ChosenAccel::Kvm);
        assert!(values_of(&argv, "-netdev").is_empty());
        assert!(!values_of(&argv, "-device")
            .iter()
            .any(|d| d.starts_with("virtio-net")));
        assert!(values_of(&argv, "-initrd").is_empty());
        assert_eq!(values_of(&argv, "-kernel"), ["/images/k/vmlinuz"]);
    }

    #[test]
    fn vsock_and_qmp_sockets_live_in_the_run_dir() {
        let argv = argv_strings(&spec(), ChosenAccel::Kvm);
        let chardevs = values_of(&argv, "-chardev");
        assert!(
            chardevs.contains(&"socket,id=vsock,path=/run/banger/vms/devbox/vhost-vsock.sock"),
            "{chardevs:?}"
        );
        assert!(
            chardevs
                .contains(&"socket,id=qmp,server=on,wait=off,path=/run/banger/vms/devbox/qmp.sock"),
            "{chardevs:?}"
        );
        assert!(
            !chardevs.iter().any(|c| c.contains("reconnect")),
            "reconnect= breaks QEMU 7.2"
        );
        assert!(values_of(&argv, "-device").contains(&"vhost-user-vsock-device,chardev=vsock"));
        assert_eq!(values_of(&argv, "-mon"), ["chardev=qmp,mode=control"]);
    }

    #[test]
    fn commas_in_paths_are_escaped_in_option_values() {
        let mut spec = spec();
        spec.drives = vec![Drive {
            id: "rootfs".into(),
            path: "/img/a,b.ext4".into(),
            read_only: true,
        }];
        spec.console_log = "/logs/x,format=qcow2".into();
        let argv = argv_strings(&spec, ChosenAccel::Kvm);
        assert_eq!(
            values_of(&argv, "-drive"),
            ["id=rootfs,format=raw,if=none,read-only=on,file=/img/a,,b.ext4"]
        );
        assert!(values_of(&argv, "-chardev")
            .contains(&"file,id=console,append=on,path=/logs/x,,format=qcow2"));
    }

    #[test]
    fn image_console_and_tsc_settings_win_over_the_backend_defaults() {
        assert!(cmdline_extras("console=hvc0 tsc_early_khz=1000000", ChosenAccel::Tcg).is_empty());
        assert_eq!(cmdline_extras("", ChosenAccel::Kvm), ["console=ttyS0"]);
        assert_eq!(
            guest_cmdline("  a   b ", ChosenAccel::Kvm),
            "a b console=ttyS0"
        );
    }

    #[test]
    fn vhost_helper_gets_cid_and_both_sockets() {
        let spec = spec();
        let sockets = QemuSockets::in_run_dir(&spec.run_dir);
        let argv: Vec<String> = vhost_vsock_argv(&spec, &sockets)
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();
        assert_eq!(
            argv,
            [
                "--guest-cid",
                "7",
                "--socket",
                "/run/banger/vms/devbox/vhost-vsock.sock",
                "--uds-path",
                "/run/banger/vms/devbox/vsock.sock"
            ]
        );
    }
}

//! Golden tests of `banger doctor`'s human output on staged hosts.
//!
//! Each test stages a whole host with `FakeHost`, runs every check, and compares
//! `Report::render_human` with `tests/golden/<name>.txt`. After an intended change of wording,
//! regenerate with `BANGER_UPDATE_GOLDEN=1 cargo test -p banger-doctor --test golden` and review
//! the diff.
#![allow(clippy::unwrap_used)] // tests may unwrap: a panic is the failure report

use std::net::Ipv4Addr;
use std::path::PathBuf;

use banger_doctor::{run, DoctorInputs, FakeHost, KvmKind, Report, Status, VmmBackend};

const GIB: u64 = 1 << 30;

fn assert_golden(name: &str, report: &Report) {
    let actual = report.render_human();
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(format!("{name}.txt"));
    if std::env::var_os("BANGER_UPDATE_GOLDEN").is_some_and(|v| v == "1") {
        std::fs::write(&path, &actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|err| {
        panic!(
            "cannot read {} ({err}); run with BANGER_UPDATE_GOLDEN=1 to create it",
            path.display()
        )
    });
    assert!(
        actual == expected,
        "{} differs from the golden file (BANGER_UPDATE_GOLDEN=1 regenerates it)\n\
         --- expected\n{expected}\n--- actual\n{actual}",
        path.display()
    );
}

fn inputs() -> DoctorInputs {
    DoctorInputs {
        state_dir: "/var/lib/banger".into(),
        runtime_dir: "/run/banger".into(),
        vmm: "auto".into(),
        firecracker_bin: None,
        qemu_bin: None,
        vhost_vsock_bin: None,
        subnet: (Ipv4Addr::new(172, 30, 0, 0), 24),
        bridge: "banger0".into(),
        netns: None,
        host_forward_accept: true,
    }
}

const FIRECRACKER_VERSION: &str =
    "Firecracker v1.16.1\n\nSupported snapshot data format versions: v8.0.0\n";
const QEMU_VERSION: &str = "QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)\n\
                            Copyright (c) 2003-2022 Fabrice Bellard and the QEMU Project developers\n";
const VHOST_VSOCK_VERSION: &str = "vhost-device-vsock 0.3.0\n";
const NFT_VERSION: &str = "nftables v1.0.6 (Lester Gooch #5)\n";
const MKE2FS_VERSION: &str = "mke2fs 1.47.0 (5-Feb-2023)\n\tUsing EXT2FS Library version 1.47.0\n";
const DEBOOTSTRAP_VERSION: &str = "debootstrap 1.0.128+nmu2+deb12u2\n";
const SSH_VERSION: &str = "OpenSSH_9.2p1 Debian-2+deb12u10, OpenSSL 3.0.19 27 Jan 2026\n";

/// A Debian host with e2fsprogs, nftables, debootstrap and OpenSSH installed.
fn debian_tools(host: FakeHost) -> FakeHost {
    host.with_binary("nft", "/usr/sbin/nft", NFT_VERSION)
        .with_binary("mkfs.ext4", "/usr/sbin/mkfs.ext4", MKE2FS_VERSION)
        .with_binary("resize2fs", "/usr/sbin/resize2fs", "")
        .with_binary("e2fsck", "/usr/sbin/e2fsck", "")
        .with_binary("debootstrap", "/usr/sbin/debootstrap", DEBOOTSTRAP_VERSION)
        .with_binary("ssh", "/usr/bin/ssh", SSH_VERSION)
}

#[test]
fn hardware_kvm_host_with_everything_installed_passes_every_check() {
    let host = debian_tools(FakeHost::new())
        .with_rw("/dev/kvm")
        .with_path("/sys/module/kvm")
        .with_path("/sys/module/kvm_intel")
        .with_cpu_flags(&["fpu", "vme", "vmx", "sse2", "avx2"])
        .with_binary(
            "firecracker",
            "/usr/local/bin/firecracker",
            FIRECRACKER_VERSION,
        )
        .with_binary(
            "qemu-system-x86_64",
            "/usr/bin/qemu-system-x86_64",
            QEMU_VERSION,
        )
        .with_binary(
            "vhost-device-vsock",
            "/usr/local/bin/vhost-device-vsock",
            VHOST_VSOCK_VERSION,
        )
        .with_rw("/dev/net/tun")
        .with_path("/dev/vhost-vsock")
        .with_path("/dev/vhost-net")
        .with_file("/proc/sys/net/ipv4/ip_forward", "1\n")
        .with_path("/sys/class/net/banger0/bridge")
        .with_file(
            "/proc/net/route",
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
             enp3s0\t00000000\t0101A8C0\t0003\t0\t0\t100\t00000000\t0\t0\t0\n\
             enp3s0\t0001A8C0\t00000000\t0001\t0\t0\t100\t00FFFFFF\t0\t0\t0\n\
             banger0\t00001EAC\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n",
        )
        .with_free("/", 200 * GIB, 500 * GIB);

    let report = run(&host, &inputs());

    assert_eq!(report.kvm, KvmKind::Hardware);
    assert_eq!(report.vmm, Some(VmmBackend::Firecracker));
    assert_eq!(report.worst(), Status::Pass);
    assert_golden("hardware_kvm", &report);
}

#[test]
fn pvm_host_without_firecracker_falls_back_to_qemu_with_warnings() {
    // The development machines: /dev/kvm from kvm_pvm, no vmx/svm, QEMU and vhost-device-vsock
    // installed, no firecracker, forwarding off, no vhost kernel devices.
    let host = debian_tools(FakeHost::new())
        .with_rw("/dev/kvm")
        .with_path("/sys/module/kvm")
        .with_path("/sys/module/kvm_pvm")
        .with_cpu_flags(&["fpu", "vme", "sse2", "hypervisor"])
        .with_binary(
            "qemu-system-x86_64",
            "/usr/bin/qemu-system-x86_64",
            QEMU_VERSION,
        )
        .with_binary(
            "vhost-device-vsock",
            "/root/.cargo/bin/vhost-device-vsock",
            VHOST_VSOCK_VERSION,
        )
        .with_rw("/dev/net/tun")
        .with_file("/proc/sys/net/ipv4/ip_forward", "0\n")
        .with_file(
            "/proc/net/route",
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
             eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
             eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n",
        )
        .with_free("/", 30 * GIB + GIB / 4, 100 * GIB);

    let report = run(&host, &inputs());

    assert_eq!(report.kvm, KvmKind::Pvm);
    assert_eq!(report.vmm, Some(VmmBackend::Qemu));
    assert_eq!(report.worst(), Status::Warn);
    assert_golden("pvm_qemu", &report);
}

#[test]
fn bare_host_fails_kvm_vmm_tun_disk_and_tools_and_warns_on_the_subnet() {
    let host = FakeHost::new()
        .with_cpu_flags(&["fpu", "sse2"])
        .with_file("/proc/sys/net/ipv4/ip_forward", "0\n")
        .with_file(
            "/proc/net/route",
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
             eth0\t00000000\t0100000A\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
             eth0\t0000000A\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0\n\
             docker0\t000010AC\t00000000\t0001\t0\t0\t0\t0000F0FF\t0\t0\t0\n",
        )
        .with_free("/", GIB / 2, 8 * GIB);
    let mut inputs = inputs();
    inputs.subnet = (Ipv4Addr::new(172, 17, 0, 0), 24);

    let report = run(&host, &inputs);

    assert_eq!(report.kvm, KvmKind::Absent);
    assert_eq!(report.vmm, None);
    assert_eq!(report.worst(), Status::Fail);
    let subnet = report.checks.iter().find(|c| c.name == "subnet").unwrap();
    assert_eq!(subnet.status, Status::Warn);
    assert_golden("bare_host", &report);
}

#[test]
fn non_root_user_with_netns_and_configured_firecracker_path() {
    // A user (not root) checking a config that pins firecracker to a path and keeps VMs in a
    // network namespace: permission problems warn (bangerd runs as root), netns is reported.
    let host = debian_tools(FakeHost::new())
        .with_euid(1000)
        .with_path("/dev/kvm")
        .with_path("/sys/module/kvm_amd")
        .with_cpu_flags(&["svm"])
        .with_binary(
            "firecracker",
            "/opt/firecracker/firecracker",
            FIRECRACKER_VERSION,
        )
        .with_path("/dev/net/tun")
        .with_file("/proc/sys/net/ipv4/ip_forward", "1\n")
        .with_free("/home/dev/.local/share", 64 * GIB, 256 * GIB);
    let mut inputs = inputs();
    inputs.vmm = "firecracker".into();
    inputs.firecracker_bin = Some("/opt/firecracker/firecracker".into());
    inputs.state_dir = "/home/dev/.local/share/banger".into();
    inputs.netns = Some("banger".into());

    let report = run(&host, &inputs);

    assert_eq!(report.kvm, KvmKind::Unusable);
    assert_eq!(report.vmm, Some(VmmBackend::Firecracker));
    assert!(!host.asked().contains(&"which firecracker".to_owned()));
    assert_golden("user_netns", &report);
}

#[test]
fn every_failing_or_warning_check_carries_a_hint() {
    let report = run(&FakeHost::new(), &inputs());
    for check in &report.checks {
        assert_eq!(
            check.hint.is_some(),
            check.status != Status::Pass,
            "{check:?}"
        );
    }
}

#[test]
fn json_report_names_statuses_and_kvm_kind_in_lowercase() {
    let host = FakeHost::new()
        .with_rw("/dev/kvm")
        .with_path("/sys/module/kvm_pvm");
    let json = serde_json::to_value(run(&host, &inputs())).unwrap();
    assert_eq!(json["kvm"], "pvm");
    assert_eq!(json["checks"][0]["name"], "kvm");
    assert_eq!(json["checks"][0]["status"], "warn");
    assert!(json["vmm"].is_null());
}

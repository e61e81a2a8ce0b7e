//! Runs doctor against the machine the tests run on: it must not panic, and on a PVM machine
//! (`/sys/module/kvm_pvm` present, `/dev/kvm` openable) it must say so.
#![allow(clippy::unwrap_used)] // tests may unwrap: a panic is the failure report

use std::fs::OpenOptions;
use std::net::Ipv4Addr;
use std::path::Path;

use banger_doctor::{run, DoctorInputs, KvmKind, RealHost};

#[test]
fn real_host_report_is_complete_and_recognises_pvm() {
    let state = tempfile::tempdir().unwrap();
    let inputs = DoctorInputs {
        state_dir: state.path().join("state"),
        runtime_dir: state.path().join("run"),
        vmm: "auto".into(),
        firecracker_bin: None,
        qemu_bin: None,
        vhost_vsock_bin: None,
        subnet: (Ipv4Addr::new(172, 30, 0, 0), 24),
        bridge: "banger-doctor-test0".into(),
        netns: None,
        host_forward_accept: true,
    };

    let report = run(&RealHost { root: "/".into() }, &inputs);

    assert_eq!(report.checks.len(), 16, "{}", report.render_human());
    let human = report.render_human();
    // Shown with `--nocapture`: what doctor says about this machine.
    eprintln!("{human}");
    assert!(human.ends_with(" failed\n"), "{human}");
    let kvm_opens = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    if Path::new("/sys/module/kvm_pvm").exists() && kvm_opens {
        assert_eq!(report.kvm, KvmKind::Pvm, "{human}");
    }
    // The state dir does not exist: free space is measured at its nearest existing ancestor.
    let disk = report.checks.iter().find(|c| c.name == "disk").unwrap();
    assert!(disk.summary.contains("GiB free"), "{human}");
}

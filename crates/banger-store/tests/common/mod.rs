//! Record builders shared by the integration tests.

// Each test binary uses a subset; a failed unwrap is a failed test.
#![allow(dead_code, clippy::unwrap_used)]

use std::net::Ipv4Addr;
use std::path::PathBuf;

use banger_api::{DesiredState, ImageId, StageTiming, VmId, VmName, VmState};
use banger_store::{ImageRecord, Store, VmRecord};
use chrono::{DateTime, TimeZone, Utc};

/// A store in a fresh temp dir (kept alive by the returned guard).
pub fn temp_store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("state.db")).unwrap();
    (dir, store)
}

pub fn name(name: &str) -> VmName {
    VmName::parse(name).unwrap()
}

/// A time with sub-microsecond precision, to prove nanoseconds survive.
pub fn time(secs: i64, nanos: u32) -> DateTime<Utc> {
    Utc.timestamp_opt(1_700_000_000 + secs, nanos).unwrap()
}

/// An image with only the required fields.
pub fn minimal_image(image_name: &str) -> ImageRecord {
    ImageRecord {
        id: ImageId::new(),
        name: name(image_name),
        kernel_path: PathBuf::from("/var/lib/banger/images/k/vmlinux"),
        initrd_path: None,
        modules_path: None,
        rootfs_path: PathBuf::from("/var/lib/banger/images/k/rootfs.ext4"),
        work_seed_path: None,
        cmdline: "console=ttyS0 reboot=k panic=1".into(),
        readiness_ports: vec![],
        agent_version: None,
        parent_id: None,
        sha256: None,
        managed: false,
        size_bytes: 0,
        root_mode: banger_api::RootMode::Overlay,
        created_at: time(0, 123_456_789),
    }
}

/// An image with every optional field set.
pub fn full_image(image_name: &str, parent: ImageId) -> ImageRecord {
    ImageRecord {
        initrd_path: Some("/images/x/initrd.img".into()),
        modules_path: Some("/images/x/modules".into()),
        work_seed_path: Some("/images/x/work-seed.ext4".into()),
        readiness_ports: vec![22, 4096],
        agent_version: Some("0.1.0".into()),
        parent_id: Some(parent),
        sha256: Some("ab".repeat(32)),
        managed: true,
        size_bytes: u64::try_from(i64::MAX).unwrap(),
        root_mode: banger_api::RootMode::Clone,
        ..minimal_image(image_name)
    }
}

/// A VM with only the required fields.
pub fn minimal_vm(vm_name: &str, image: ImageId) -> VmRecord {
    VmRecord {
        id: VmId::new(),
        name: name(vm_name),
        image_id: image,
        vcpus: 2,
        memory_mib: 1024,
        disk_size_mib: 8192,
        state: VmState::Creating,
        desired_state: DesiredState::Running,
        ip: None,
        mac: None,
        vsock_cid: None,
        vm_dir: PathBuf::from(format!("/var/lib/banger/vms/{vm_name}")),
        last_error: None,
        stage_timings: vec![],
        root_clone_method: None,
        created_at: time(10, 1),
        updated_at: time(11, 999_999_999),
    }
}

/// A VM with every optional field set; `n` makes its allocations distinct.
pub fn full_vm(vm_name: &str, image: ImageId, n: u8) -> VmRecord {
    VmRecord {
        state: VmState::Error,
        desired_state: DesiredState::Stopped,
        ip: Some(Ipv4Addr::new(172, 16, 0, n)),
        mac: Some(format!("06:00:ac:10:00:{n:02x}")),
        vsock_cid: Some(3 + u32::from(n)),
        last_error: Some("boot: guest did not answer on vsock".into()),
        root_clone_method: Some(banger_api::RootCloneMethod::SparseCopy),
        stage_timings: vec![
            StageTiming {
                stage: "allocate".into(),
                duration_ms: 1,
            },
            StageTiming {
                stage: "boot".into(),
                duration_ms: 140,
            },
        ],
        ..minimal_vm(vm_name, image)
    }
}

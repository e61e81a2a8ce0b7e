//! Golden files for what users read: `vm list`, `vm show`, `image list`, `image show`, stage
//! lines. Regenerate with `BANGER_UPDATE_GOLDEN=1 cargo test -p banger-cli --test golden`.
#![allow(clippy::unwrap_used)]

use banger_api::{
    DesiredState, Image, ImageId, RootCloneMethod, RootMode, Stage, StageStatus, StageTiming, Vm,
    VmDisk, VmId, VmName, VmState,
};
use banger_cli::output;
use chrono::{DateTime, TimeZone, Utc};

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 30, 12, 0, 0).unwrap()
}

fn check(name: &str, actual: &str) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    if std::env::var_os("BANGER_UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).unwrap();
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (set BANGER_UPDATE_GOLDEN=1)", path.display()));
    assert_eq!(actual, expected, "golden file {name} differs");
}

fn vm(name: &str, state: VmState, ip: Option<&str>, minutes_old: i64) -> Vm {
    let created = now() - chrono::Duration::minutes(minutes_old);
    Vm {
        id: VmId("6f1c2d4e-0000-4000-8000-00000000000a".parse().unwrap()),
        name: VmName::parse(name).unwrap(),
        image_id: "0b7e9a52-0000-4000-8000-000000000001".into(),
        image_name: "debian-12".into(),
        vcpus: 2,
        memory_mib: 1024,
        disk_size_mib: 4096,
        state,
        desired_state: DesiredState::Running,
        ip: ip.map(str::to_string),
        mac: ip.map(|_| "06:00:ac:1e:00:02".to_string()),
        vsock_cid: Some(3),
        dns_name: Some(format!("{name}.vm")),
        last_error: None,
        stage_timings: vec![],
        pid: None,
        vmm: None,
        root_mode: RootMode::Overlay,
        root_clone_method: None,
        disks: vec![],
        created_at: created,
        updated_at: created,
    }
}

#[test]
fn vm_list() {
    let vms = vec![
        vm("brave-otter", VmState::Running, Some("172.30.0.2"), 3),
        vm("dev", VmState::Stopped, Some("172.30.0.3"), 60 * 26),
        vm("very-long-name-for-a-box", VmState::Error, None, 0),
    ];
    check("vm_list.txt", &output::vm_table(&vms, now()));
    check("vm_list_empty.txt", &output::vm_table(&[], now()));
}

#[test]
fn vm_show() {
    let mut running = vm("brave-otter", VmState::Running, Some("172.30.0.2"), 3);
    running.pid = Some(4242);
    running.vmm = Some("qemu (tcg)".into());
    running.stage_timings = ["allocate", "disks", "network", "vmm", "agent"]
        .iter()
        .zip([1u64, 35, 2, 120, 1900])
        .map(|(stage, ms)| StageTiming {
            stage: stage.to_string(),
            duration_ms: ms,
        })
        .collect();
    running.disks = vec![
        VmDisk {
            name: "rootfs".into(),
            path: "/var/lib/banger/images/debian-12/rootfs.ext4".into(),
            read_only: true,
            apparent_bytes: 2 << 30,
            allocated_bytes: 437 << 20,
        },
        VmDisk {
            name: "overlay".into(),
            path: "/var/lib/banger/vms/6f1c2d4e/overlay.ext4".into(),
            read_only: false,
            apparent_bytes: 8 << 30,
            allocated_bytes: 4_300_000,
        },
        VmDisk {
            name: "work".into(),
            path: "/var/lib/banger/vms/6f1c2d4e/work.ext4".into(),
            read_only: false,
            apparent_bytes: 4 << 30,
            allocated_bytes: 121 << 20,
        },
    ];
    check("vm_show_running.txt", &output::vm_detail(&running, now()));
    let mut cloned = vm("foreign", VmState::Stopped, Some("172.30.0.5"), 10);
    cloned.root_mode = RootMode::Clone;
    cloned.root_clone_method = Some(RootCloneMethod::SparseCopy);
    cloned.disks = vec![VmDisk {
        name: "root".into(),
        path: "/var/lib/banger/vms/6f1c2d4e/root.ext4".into(),
        read_only: false,
        apparent_bytes: 2 << 30,
        allocated_bytes: 437 << 20,
    }];
    check("vm_show_clone.txt", &output::vm_detail(&cloned, now()));
    let mut failed = vm("broken", VmState::Error, Some("172.30.0.4"), 1);
    failed.desired_state = DesiredState::Stopped;
    failed.last_error = Some("VM broken: agent stage failed: no answer within 60s".into());
    check("vm_show_error.txt", &output::vm_detail(&failed, now()));
}

#[test]
fn image_list_and_show() {
    let image = Image {
        id: ImageId("0b7e9a52-0000-4000-8000-000000000001".parse().unwrap()),
        name: VmName::parse("debian-12").unwrap(),
        kernel_path: "/var/lib/banger/images/debian-12/vmlinux".into(),
        initrd_path: Some("/var/lib/banger/images/debian-12/initrd.img".into()),
        modules_path: None,
        rootfs_path: "/var/lib/banger/images/debian-12/rootfs.ext4".into(),
        work_seed_path: Some("/var/lib/banger/images/debian-12/work-seed.ext4".into()),
        cmdline: "console=ttyS0 reboot=k panic=1".into(),
        readiness_ports: vec![22, 4096],
        agent_version: Some("0.1.0".into()),
        parent_id: None,
        sha256: Some("9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08".into()),
        managed: true,
        size_bytes: 437 * 1024 * 1024,
        root_mode: RootMode::Overlay,
        created_at: now() - chrono::Duration::days(2),
    };
    check(
        "image_list.txt",
        &output::image_table(std::slice::from_ref(&image), now()),
    );
    check("image_show.txt", &output::image_detail(&image));
}

#[test]
fn stage_lines() {
    let stage = |name: &str, status, ms: Option<u64>, detail: Option<&str>| Stage {
        name: name.into(),
        status,
        started_at: now(),
        ended_at: ms.map(|_| now()),
        duration_ms: ms,
        detail: detail.map(str::to_string),
    };
    let lines = [
        stage(
            "allocate",
            StageStatus::Done,
            Some(1),
            Some("172.30.0.2 cid 3"),
        ),
        stage("vmm", StageStatus::Done, Some(142), Some("qemu pid 4242")),
        stage("agent", StageStatus::Failed, Some(60000), None),
    ]
    .iter()
    .map(output::stage_line)
    .collect::<Vec<_>>()
    .join("\n");
    check("stage_lines.txt", &(lines + "\n"));
}

#[test]
fn vm_stats_table() {
    use banger_api::{VmStats, VmStatsSample};
    let sample = VmStatsSample {
        at: now(),
        cpu_percent: 12.345,
        cpu_time_ms: 83_400,
        rss_bytes: 187 << 20,
        guest_memory_bytes: 1 << 30,
        process_known: true,
        io_known: true,
        net_rx_bytes: 5 << 20,
        net_tx_bytes: 1 << 20,
        net_rx_packets: 4000,
        net_tx_packets: 2500,
        block_read_bytes: 90 << 20,
        block_write_bytes: 12 << 20,
        block_read_ops: 1800,
        block_write_ops: 300,
        net_rx_bytes_per_sec: 2048.0,
        net_tx_bytes_per_sec: 512.0,
        block_read_bytes_per_sec: 1_572_864.0,
        block_write_bytes_per_sec: 0.0,
    };
    let id = VmId("6f1c2d4e-0000-4000-8000-00000000000a".parse().unwrap());
    let stats = vec![
        VmStats {
            vm_id: id,
            name: "brave-otter".into(),
            interval_secs: 5,
            latest: Some(sample.clone()),
            samples: vec![],
        },
        VmStats {
            vm_id: id,
            name: "no-io".into(),
            interval_secs: 5,
            latest: Some(VmStatsSample {
                io_known: false,
                process_known: false,
                ..sample
            }),
            samples: vec![],
        },
        VmStats {
            vm_id: id,
            name: "just-started".into(),
            interval_secs: 5,
            latest: None,
            samples: vec![],
        },
    ];
    check("vm_stats.txt", &output::stats_table(&stats));
    check("vm_stats_empty.txt", &output::stats_table(&[]));
}

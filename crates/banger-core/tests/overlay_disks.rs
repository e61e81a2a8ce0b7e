//! `OverlayDisks` against the real host layer (`RealDisks`, e2fsprogs, files in a temp dir; no
//! root) and, for free space, the recording `FakeDisks`.
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::path::{Path, PathBuf};
use std::sync::Arc;

use banger_api::{DesiredState, ImageId, RootCloneMethod, RootMode, VmId, VmName, VmState};
use banger_core::disks::{OverlayDisks, OVERLAY_FILE, ROOT_FILE, WORK_FILE};
use banger_core::{DiskCheckError, VmDisks};
use banger_host::disks::{DiskCall, DiskOp, Disks, FakeDisks, RealDisks};
use banger_store::records::{ImageRecord, VmRecord};

const MIB: u64 = 1 << 20;

struct Setup {
    dir: tempfile::TempDir,
    base: PathBuf,
    seed: PathBuf,
}

/// A 1 GiB base and a 64 MiB work seed, both real ext4 images.
async fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let real = RealDisks::new();
    let base = dir.path().join("base.ext4");
    real.mkfs_ext4(&base, 1024 * MIB, None, "rootfs")
        .await
        .unwrap();
    let seed = dir.path().join("seed.ext4");
    real.mkfs_ext4(&seed, 64 * MIB, None, "banger-work")
        .await
        .unwrap();
    Setup { dir, base, seed }
}

fn image(base: &Path, seed: Option<&Path>, root_mode: RootMode) -> ImageRecord {
    ImageRecord {
        id: ImageId::new(),
        name: VmName::parse("debian").unwrap(),
        kernel_path: "/images/vmlinux".into(),
        initrd_path: None,
        modules_path: None,
        rootfs_path: base.to_path_buf(),
        work_seed_path: seed.map(Path::to_path_buf),
        cmdline: String::new(),
        readiness_ports: vec![],
        agent_version: None,
        parent_id: None,
        sha256: None,
        managed: false,
        size_bytes: 0,
        root_mode,
        created_at: chrono::Utc::now(),
    }
}

fn vm(vms_dir: &Path, disk_size_mib: u64) -> VmRecord {
    let id = VmId::new();
    VmRecord {
        id,
        name: VmName::parse("box").unwrap(),
        image_id: ImageId::new(),
        vcpus: 1,
        memory_mib: 256,
        disk_size_mib,
        state: VmState::Creating,
        desired_state: DesiredState::Running,
        ip: None,
        mac: None,
        vsock_cid: None,
        vm_dir: vms_dir.join(id.to_string()),
        last_error: None,
        stage_timings: vec![],
        root_clone_method: None,
        created_at: chrono::Utc::now(),
        updated_at: chrono::Utc::now(),
    }
}

fn real_disks(dir: &Path) -> OverlayDisks {
    OverlayDisks::new(Arc::new(RealDisks::new()), dir.join("vms"), 8 * 1024)
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut next = err.source();
    while let Some(cause) = next {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        next = cause.source();
    }
    text
}

#[tokio::test]
async fn overlay_prepare_makes_a_sparse_overlay_and_grows_the_seed_into_the_work_disk() {
    let s = setup().await;
    let disks = real_disks(s.dir.path());
    let image = image(&s.base, Some(&s.seed), RootMode::Overlay);
    let vm = vm(&s.dir.path().join("vms"), 256);

    let prepared = disks.prepare(&vm, &image).await.unwrap();

    let ids: Vec<(&str, bool)> = prepared
        .drives
        .iter()
        .map(|d| (d.id.as_str(), d.read_only))
        .collect();
    assert_eq!(ids, [("rootfs", true), ("overlay", false), ("work", false)]);
    assert_eq!(prepared.drives[0].path, s.base);
    assert_eq!(
        prepared.kernel_args,
        ["banger.overlay=/dev/vdb", "banger.work=/dev/vdc"]
    );
    assert_eq!(prepared.root_clone_method, None);
    let real = RealDisks::new();
    let overlay = real
        .check_ext4(&vm.vm_dir.join(OVERLAY_FILE))
        .await
        .unwrap();
    assert_eq!(overlay.label, "banger-upper");
    assert_eq!(overlay.size_bytes(), 8 * 1024 * MIB);
    let work = real.check_ext4(&vm.vm_dir.join(WORK_FILE)).await.unwrap();
    assert_eq!(
        (work.label.as_str(), work.size_bytes()),
        ("banger-work", 256 * MIB)
    );

    // Accounting: every disk with apparent and allocated size; the overlay is sparse.
    let usage = disks.usage(&vm, Some(&image));
    let names: Vec<&str> = usage.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, ["rootfs", "overlay", "work"]);
    assert!(usage[0].read_only && !usage[1].read_only);
    assert_eq!(usage[1].apparent_bytes, 8 * 1024 * MIB);
    assert!(
        usage[1].allocated_bytes < 32 * MIB,
        "overlay allocated {}",
        usage[1].allocated_bytes
    );
}

#[tokio::test]
async fn prepare_again_keeps_the_disks_a_stopped_vm_has() {
    let s = setup().await;
    let disks = real_disks(s.dir.path());
    let image = image(&s.base, None, RootMode::Overlay);
    let vm = vm(&s.dir.path().join("vms"), 128);
    disks.prepare(&vm, &image).await.unwrap();
    let work = vm.vm_dir.join(WORK_FILE);
    let marker_at = 100 * MIB;
    {
        use std::os::unix::fs::FileExt;
        let file = std::fs::OpenOptions::new().write(true).open(&work).unwrap();
        file.write_all_at(b"keep me", marker_at).unwrap();
    }

    disks.prepare(&vm, &image).await.unwrap();

    use std::os::unix::fs::FileExt;
    let mut buf = [0u8; 7];
    std::fs::File::open(&work)
        .unwrap()
        .read_exact_at(&mut buf, marker_at)
        .unwrap();
    assert_eq!(&buf, b"keep me");
}

#[tokio::test]
async fn a_base_that_is_not_ext4_is_refused_by_check_and_prepare_leaves_nothing() {
    let s = setup().await;
    let not_ext4 = s.dir.path().join("random.img");
    std::fs::write(&not_ext4, vec![7u8; 4 * MIB as usize]).unwrap();
    let disks = real_disks(s.dir.path());
    let image = image(&not_ext4, Some(&s.seed), RootMode::Overlay);
    let vm = vm(&s.dir.path().join("vms"), 256);

    let err = disks.check(&image, 256).await.unwrap_err();
    assert!(matches!(err, DiskCheckError::Image { .. }), "{err:?}");
    assert!(
        chain(&err).contains("does not hold an ext4 filesystem"),
        "{}",
        chain(&err)
    );

    let err = disks.prepare(&vm, &image).await.unwrap_err();
    let text = chain(err.as_ref());
    assert!(
        text.contains("base rootfs") && text.contains("random.img"),
        "{text}"
    );
    assert_eq!(files_in(&vm.vm_dir), Vec::<String>::new());
}

#[tokio::test]
async fn a_missing_work_seed_fails_and_removes_the_overlay_it_made() {
    let s = setup().await;
    let disks = real_disks(s.dir.path());
    let missing = s.dir.path().join("gone-seed.ext4");
    let image = image(&s.base, Some(&missing), RootMode::Overlay);
    let vm = vm(&s.dir.path().join("vms"), 256);

    let err = disks.check(&image, 256).await.unwrap_err();
    assert!(matches!(err, DiskCheckError::Image { .. }), "{err:?}");

    let err = disks.prepare(&vm, &image).await.unwrap_err();
    let text = chain(err.as_ref());
    assert!(
        text.contains("work seed") && text.contains("gone-seed.ext4"),
        "{text}"
    );
    assert_eq!(files_in(&vm.vm_dir), Vec::<String>::new());
}

#[tokio::test]
async fn a_work_disk_smaller_than_the_seed_is_refused_and_nothing_is_left() {
    let s = setup().await;
    let disks = real_disks(s.dir.path());
    let image = image(&s.base, Some(&s.seed), RootMode::Overlay);
    let vm = vm(&s.dir.path().join("vms"), 32);

    let err = disks.check(&image, 32).await.unwrap_err();
    assert!(
        matches!(
            err,
            DiskCheckError::BelowSeed {
                requested_mib: 32,
                seed_mib: 64,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("at least 64 MiB"), "{err}");

    let err = disks.prepare(&vm, &image).await.unwrap_err();
    assert!(chain(err.as_ref()).contains("smaller than image debian's work seed"));
    assert_eq!(files_in(&vm.vm_dir), Vec::<String>::new());
}

#[tokio::test]
async fn clone_mode_copies_the_base_keeping_holes_and_remove_deletes_it() {
    let s = setup().await;
    let disks = real_disks(s.dir.path());
    let image = image(&s.base, None, RootMode::Clone);
    let vm = vm(&s.dir.path().join("vms"), 128);

    let prepared = disks.prepare(&vm, &image).await.unwrap();

    let ids: Vec<&str> = prepared.drives.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(ids, ["root", "work"]);
    assert!(!prepared.drives[0].read_only);
    assert_eq!(prepared.kernel_args, ["banger.work=/dev/vdb"]);
    // The temp dir is on ext4 on these hosts (no reflink); on XFS/btrfs it would be a reflink.
    let method = prepared.root_clone_method.unwrap();
    let root = vm.vm_dir.join(ROOT_FILE);
    let usage = RealDisks::new().usage(&root).unwrap();
    assert_eq!(usage.apparent_bytes, 1024 * MIB);
    if method == RootCloneMethod::SparseCopy {
        assert!(usage.allocated_bytes < 128 * MIB, "{usage:?}");
    }
    // A second prepare (a start) keeps the clone and reports no new copy.
    assert_eq!(
        disks.prepare(&vm, &image).await.unwrap().root_clone_method,
        None
    );

    disks.remove(&vm).await.unwrap();
    assert_eq!(files_in(&vm.vm_dir), Vec::<String>::new());
}

#[tokio::test]
async fn a_failed_grow_removes_the_cloned_work_disk_and_the_overlay() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Arc::new(FakeDisks::new());
    fake.mkfs_ext4(&dir.path().join("base.ext4"), 1024 * MIB, None, "rootfs")
        .await
        .unwrap();
    fake.mkfs_ext4(&dir.path().join("seed.ext4"), 64 * MIB, None, "banger-work")
        .await
        .unwrap();
    fake.fail(DiskOp::GrowExt4);
    let disks = OverlayDisks::new(fake.clone(), dir.path().join("vms"), 8 * 1024);
    let image = image(
        &dir.path().join("base.ext4"),
        Some(&dir.path().join("seed.ext4")),
        RootMode::Overlay,
    );
    let vm = vm(&dir.path().join("vms"), 256);

    assert!(disks.prepare(&vm, &image).await.is_err());

    let removed: Vec<PathBuf> = fake
        .calls()
        .into_iter()
        .filter_map(|call| match call {
            DiskCall::Remove { path } => Some(path),
            _ => None,
        })
        .collect();
    assert_eq!(
        removed,
        [vm.vm_dir.join(WORK_FILE), vm.vm_dir.join(OVERLAY_FILE)]
    );
    assert_eq!(files_in(&vm.vm_dir), Vec::<String>::new());
}

#[tokio::test]
async fn check_refuses_disks_that_cannot_fit_in_the_free_space_of_the_vms_dir() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Arc::new(FakeDisks::new());
    let base = dir.path().join("base.ext4");
    fake.mkfs_ext4(&base, 1024 * MIB, None, "rootfs")
        .await
        .unwrap();
    let vms_dir = dir.path().join("state/vms");
    let disks = OverlayDisks::new(fake.clone(), &vms_dir, 8 * 1024);
    let image = image(&base, None, RootMode::Overlay);
    fake.set_available_bytes(1024 * MIB);

    disks.check(&image, 1024).await.unwrap();
    let err = disks.check(&image, 2048).await.unwrap_err();

    assert!(
        matches!(
            &err,
            DiskCheckError::NoSpace { dir, needed_bytes, available_bytes }
                if dir == &vms_dir && *needed_bytes == 2048 * MIB && *available_bytes == 1024 * MIB
        ),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .contains("need up to 2048 MiB, 1024 MiB are free"),
        "{err}"
    );
    // The state dir does not exist yet: free space is asked of its nearest existing parent.
    assert!(fake.calls().contains(&DiskCall::AvailableBytes {
        path: dir.path().to_path_buf()
    }));
    // Growing asks only for the difference.
    let mut grown = vm(&vms_dir, 512);
    grown.disk_size_mib = 512;
    disks.check_grow(&grown, 1536).await.unwrap();
    assert!(matches!(
        disks.check_grow(&grown, 1537).await,
        Err(DiskCheckError::NoSpace { .. })
    ));
}

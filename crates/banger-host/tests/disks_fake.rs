//! `FakeDisks`: the behaviour callers' tests rely on.
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::sync::Arc;

use banger_host::disks::{CloneMethod, DiskCall, DiskError, DiskOp, Disks, FakeDisks};

const MIB: u64 = 1 << 20;

#[tokio::test]
async fn fake_records_calls_and_makes_real_files_for_cleanup_checks() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("root.ext4");
    let fake = FakeDisks::new();

    fake.mkfs_ext4(&image, 64 * MIB, None, "rootfs")
        .await
        .unwrap();
    assert!(image.exists());
    fake.remove(&image).await.unwrap();

    assert!(!image.exists());
    assert_eq!(
        fake.calls(),
        vec![
            DiskCall::MkfsExt4 {
                path: image.clone(),
                size_bytes: 64 * MIB,
                source_dir: None,
                label: "rootfs".into()
            },
            DiskCall::Remove {
                path: image.clone()
            },
        ]
    );
}

#[tokio::test]
async fn fake_tracks_sizes_through_clone_and_grow() {
    let dir = tempfile::tempdir().unwrap();
    let seed = dir.path().join("seed.ext4");
    let work = dir.path().join("work.ext4");
    let fake = FakeDisks::new();
    fake.mkfs_ext4(&seed, 64 * MIB, None, "work").await.unwrap();

    assert_eq!(
        fake.clone_file(&seed, &work).await.unwrap(),
        CloneMethod::SparseCopy
    );
    fake.grow_ext4(&work, 256 * MIB).await.unwrap();

    let info = fake.check_ext4(&work).await.unwrap();
    assert_eq!(
        (info.label.as_str(), info.size_bytes()),
        ("work", 256 * MIB)
    );
    assert_eq!(fake.usage(&work).unwrap().apparent_bytes, 256 * MIB);
    assert_eq!(
        fake.check_ext4(&seed).await.unwrap().size_bytes(),
        64 * MIB,
        "seed unchanged"
    );
    let shrink = fake.grow_ext4(&work, 64 * MIB).await.unwrap_err();
    assert!(matches!(shrink, DiskError::Shrink { .. }), "{shrink}");
}

#[tokio::test]
async fn fake_refuses_overwrites_like_the_real_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("raw.img");
    let fake = FakeDisks::new();
    fake.create_sparse(&path, MIB).await.unwrap();

    let again = fake.create_sparse(&path, MIB).await.unwrap_err();
    let clone_over = fake.clone_file(&path, &path).await.unwrap_err();

    assert!(matches!(again, DiskError::AlreadyExists { .. }), "{again}");
    assert!(
        matches!(clone_over, DiskError::AlreadyExists { .. }),
        "{clone_over}"
    );
    let not_ext4 = fake.check_ext4(&path).await.unwrap_err();
    assert!(matches!(not_ext4, DiskError::NotExt4 { .. }), "{not_ext4}");
}

#[tokio::test]
async fn fake_fails_the_named_operation_until_healed() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("root.ext4");
    let fake = FakeDisks::new();
    fake.fail(DiskOp::MkfsExt4);

    let err = fake
        .mkfs_ext4(&image, 64 * MIB, None, "x")
        .await
        .unwrap_err();

    assert!(
        matches!(
            err,
            DiskError::Injected {
                operation: DiskOp::MkfsExt4,
                ..
            }
        ),
        "{err}"
    );
    assert!(!image.exists(), "a failed call has no effect");
    assert_eq!(fake.calls().len(), 1, "failed calls are recorded too");
    fake.create_sparse(&dir.path().join("other"), MIB)
        .await
        .unwrap();
    fake.heal(DiskOp::MkfsExt4);
    fake.mkfs_ext4(&image, 64 * MIB, None, "x").await.unwrap();
}

#[tokio::test]
async fn fake_and_real_both_serve_as_shared_trait_objects() {
    let dir = tempfile::tempdir().unwrap();
    let all: Vec<Arc<dyn Disks>> = vec![
        Arc::new(FakeDisks::new()),
        Arc::new(banger_host::disks::RealDisks::new()),
    ];
    for (n, disks) in all.into_iter().enumerate() {
        let path = dir.path().join(format!("disk-{n}"));
        disks.create_sparse(&path, MIB).await.unwrap();
        disks.remove(&path).await.unwrap();
        assert!(!path.exists());
    }
}

#[test]
fn fake_available_bytes_answers_what_it_was_told_and_records_the_path() {
    let fake = FakeDisks::new();
    let dir = std::path::Path::new("/state/vms");
    assert_eq!(fake.available_bytes(dir).unwrap(), 1 << 40);

    fake.set_available_bytes(5 * MIB);

    assert_eq!(fake.available_bytes(dir).unwrap(), 5 * MIB);
    assert_eq!(
        fake.calls().last(),
        Some(&DiskCall::AvailableBytes {
            path: dir.to_path_buf()
        })
    );
    fake.fail(DiskOp::AvailableBytes);
    assert!(matches!(
        fake.available_bytes(dir),
        Err(DiskError::Injected { .. })
    ));
}

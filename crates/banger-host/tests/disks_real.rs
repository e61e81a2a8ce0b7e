//! `RealDisks` against real files and real e2fsprogs. No root needed, except for the reflink
//! test, which is ignored unless asked for (`cargo test -- --ignored`).
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use banger_host::disks::{CloneMethod, DiskError, Disks, Ext4Programs, RealDisks};

const MIB: u64 = 1 << 20;

/// The content of `file` inside the ext4 image, read with debugfs (no mount needed).
fn debugfs_cat(image: &Path, file: &str) -> String {
    let output = Command::new("debugfs")
        .arg("-R")
        .arg(format!("cat {file}"))
        .arg(image)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "debugfs failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// A directory tree to put into an image.
fn source_tree(dir: &Path) -> PathBuf {
    let tree = dir.join("tree");
    std::fs::create_dir_all(tree.join("etc")).unwrap();
    std::fs::write(tree.join("hello.txt"), "hello from the host\n").unwrap();
    std::fs::write(tree.join("etc/hostname"), "banger-vm\n").unwrap();
    tree
}

fn leftovers(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn mkfs_with_source_dir_puts_the_tree_in_a_sparse_labelled_image() {
    let dir = tempfile::tempdir().unwrap();
    let tree = source_tree(dir.path());
    let image = dir.path().join("root.ext4");
    let disks = RealDisks::new();

    disks
        .mkfs_ext4(&image, 256 * MIB, Some(&tree), "rootfs")
        .await
        .unwrap();

    assert_eq!(debugfs_cat(&image, "/hello.txt"), "hello from the host\n");
    assert_eq!(debugfs_cat(&image, "/etc/hostname"), "banger-vm\n");
    let info = disks.check_ext4(&image).await.unwrap();
    assert_eq!(info.label, "rootfs");
    assert_eq!(info.size_bytes(), 256 * MIB);
    assert!(info.free_bytes() > 0 && info.free_bytes() < info.size_bytes());
    let usage = disks.usage(&image).unwrap();
    assert_eq!(usage.apparent_bytes, 256 * MIB);
    assert!(usage.allocated_bytes < 64 * MIB, "not sparse: {usage:?}");
}

#[tokio::test]
async fn mkfs_over_an_existing_file_resizes_it_and_drops_old_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("layer.ext4");
    std::fs::write(&image, vec![0xAB; 8 * MIB as usize]).unwrap();
    let disks = RealDisks::new();

    disks
        .mkfs_ext4(&image, 32 * MIB, None, "layer")
        .await
        .unwrap();

    let usage = disks.usage(&image).unwrap();
    assert_eq!(usage.apparent_bytes, 32 * MIB);
    assert_eq!(
        disks.check_ext4(&image).await.unwrap().size_bytes(),
        32 * MIB
    );
}

#[tokio::test]
async fn mkfs_refuses_sizes_that_are_not_whole_kibibytes() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("odd.ext4");

    let err = RealDisks::new()
        .mkfs_ext4(&image, 64 * MIB + 1, None, "x")
        .await
        .unwrap_err();

    assert!(
        matches!(err, DiskError::InvalidSize { size_bytes, .. } if size_bytes == 64 * MIB + 1),
        "{err}"
    );
    assert!(!image.exists());
}

#[tokio::test]
async fn failed_mkfs_removes_the_file_it_created_and_reports_the_command() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("broken.ext4");
    let missing_tree = dir.path().join("no-such-tree");

    let err = RealDisks::new()
        .mkfs_ext4(&image, 32 * MIB, Some(&missing_tree), "x")
        .await
        .unwrap_err();

    assert!(matches!(err, DiskError::Mkfs { .. }), "{err}");
    let cause = std::error::Error::source(&err).unwrap().to_string();
    assert!(
        cause.contains("mkfs.ext4") && cause.contains("no-such-tree"),
        "{cause}"
    );
    assert!(!image.exists(), "left the half-made image behind");
}

#[tokio::test]
async fn missing_program_is_named_in_the_error() {
    let dir = tempfile::tempdir().unwrap();
    let programs = Ext4Programs {
        mkfs_ext4: "/nonexistent/mkfs.ext4".into(),
        ..Ext4Programs::default()
    };

    let err = RealDisks::with_programs(programs)
        .mkfs_ext4(&dir.path().join("x"), 32 * MIB, None, "x")
        .await
        .unwrap_err();

    let cause = std::error::Error::source(&err).unwrap().to_string();
    assert!(cause.contains("/nonexistent/mkfs.ext4"), "{cause}");
}

#[tokio::test]
async fn grow_extends_file_and_filesystem_and_keeps_the_files() {
    let dir = tempfile::tempdir().unwrap();
    let tree = source_tree(dir.path());
    let image = dir.path().join("work.ext4");
    let disks = RealDisks::new();
    disks
        .mkfs_ext4(&image, 64 * MIB, Some(&tree), "work")
        .await
        .unwrap();

    disks.grow_ext4(&image, 512 * MIB).await.unwrap();

    let info = disks.check_ext4(&image).await.unwrap();
    assert_eq!(info.size_bytes(), 512 * MIB);
    assert_eq!(info.label, "work");
    assert_eq!(disks.usage(&image).unwrap().apparent_bytes, 512 * MIB);
    assert_eq!(debugfs_cat(&image, "/hello.txt"), "hello from the host\n");
}

#[tokio::test]
async fn grow_to_the_current_size_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("work.ext4");
    let disks = RealDisks::new();
    disks
        .mkfs_ext4(&image, 64 * MIB, None, "work")
        .await
        .unwrap();

    disks.grow_ext4(&image, 64 * MIB).await.unwrap();

    assert_eq!(
        disks.check_ext4(&image).await.unwrap().size_bytes(),
        64 * MIB
    );
}

#[tokio::test]
async fn shrink_is_refused_naming_both_sizes() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("work.ext4");
    let disks = RealDisks::new();
    disks
        .mkfs_ext4(&image, 128 * MIB, None, "work")
        .await
        .unwrap();

    let err = disks.grow_ext4(&image, 64 * MIB).await.unwrap_err();

    assert!(
        matches!(err, DiskError::Shrink { current_bytes, requested_bytes, .. }
        if current_bytes == 128 * MIB && requested_bytes == 64 * MIB)
    );
    let message = err.to_string();
    assert!(
        message.contains(&(128 * MIB).to_string()) && message.contains(&(64 * MIB).to_string()),
        "{message}"
    );
    assert_eq!(
        disks.check_ext4(&image).await.unwrap().size_bytes(),
        128 * MIB,
        "image untouched"
    );
}

#[tokio::test]
async fn grow_of_a_non_ext4_file_fails_in_fsck_and_restores_the_length() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.img");
    std::fs::write(&junk, vec![7u8; 4 * MIB as usize]).unwrap();

    let err = RealDisks::new()
        .grow_ext4(&junk, 8 * MIB)
        .await
        .unwrap_err();

    assert!(matches!(err, DiskError::Fsck { .. }), "{err}");
    assert_eq!(std::fs::metadata(&junk).unwrap().len(), 4 * MIB);
}

#[tokio::test]
async fn check_ext4_rejects_files_without_an_ext4_superblock() {
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("notes.txt");
    std::fs::write(&text, "x".repeat(4096)).unwrap();
    let tiny = dir.path().join("tiny");
    std::fs::write(&tiny, "short").unwrap();
    let disks = RealDisks::new();

    for path in [&text, &tiny] {
        let err = disks.check_ext4(path).await.unwrap_err();
        assert!(
            matches!(&err, DiskError::NotExt4 { path: p } if p == path),
            "{err}"
        );
    }
    let missing = disks
        .check_ext4(&dir.path().join("missing"))
        .await
        .unwrap_err();
    assert!(matches!(missing, DiskError::Read { .. }), "{missing}");
}

#[tokio::test]
async fn create_sparse_allocates_nothing_and_refuses_to_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("raw.img");
    let disks = RealDisks::new();

    disks.create_sparse(&path, 1 << 30).await.unwrap();
    let usage = disks.usage(&path).unwrap();
    let again = disks.create_sparse(&path, 4096).await.unwrap_err();

    assert_eq!(usage.apparent_bytes, 1 << 30);
    assert_eq!(usage.allocated_bytes, 0);
    assert!(matches!(again, DiskError::AlreadyExists { .. }), "{again}");
    assert_eq!(
        disks.usage(&path).unwrap().apparent_bytes,
        1 << 30,
        "existing file untouched"
    );
}

#[tokio::test]
async fn usage_counts_allocated_blocks_separately_from_length() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("half.img");
    let file = std::fs::File::create(&path).unwrap();
    file.set_len(8 * MIB).unwrap();
    file.write_all_at(&vec![1u8; MIB as usize], 0).unwrap();
    file.sync_all().unwrap();

    let usage = RealDisks::new().usage(&path).unwrap();

    assert_eq!(usage.apparent_bytes, 8 * MIB);
    assert!(
        usage.allocated_bytes >= MIB && usage.allocated_bytes < 2 * MIB,
        "{usage:?}"
    );
}

#[tokio::test]
async fn remove_is_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gone.img");
    std::fs::write(&path, "x").unwrap();
    let disks = RealDisks::new();

    disks.remove(&path).await.unwrap();
    disks.remove(&path).await.unwrap();

    assert!(!path.exists());
}

#[tokio::test]
async fn sparse_clone_of_a_1gib_image_stays_small_and_readable() {
    let dir = tempfile::tempdir().unwrap();
    let tree = source_tree(dir.path());
    let seed = dir.path().join("seed.ext4");
    let clone = dir.path().join("vm-work.ext4");
    let disks = RealDisks::new();
    disks
        .mkfs_ext4(&seed, 1 << 30, Some(&tree), "work")
        .await
        .unwrap();

    let method = disks.clone_file(&seed, &clone).await.unwrap();

    // /tmp here is ext4, which has no reflink; XFS/btrfs would say Reflink.
    assert!(matches!(
        method,
        CloneMethod::SparseCopy | CloneMethod::Reflink
    ));
    let (seed_usage, clone_usage) = (disks.usage(&seed).unwrap(), disks.usage(&clone).unwrap());
    assert_eq!(clone_usage.apparent_bytes, 1 << 30);
    assert!(
        clone_usage.allocated_bytes <= seed_usage.allocated_bytes + MIB,
        "{seed_usage:?} vs {clone_usage:?}"
    );
    assert_eq!(debugfs_cat(&clone, "/hello.txt"), "hello from the host\n");
    assert_eq!(
        disks.check_ext4(&clone).await.unwrap(),
        disks.check_ext4(&seed).await.unwrap()
    );
    assert_eq!(
        leftovers(dir.path()),
        ["seed.ext4", "tree", "vm-work.ext4"],
        "no staging file left"
    );
}

#[tokio::test]
async fn sparse_clone_keeps_data_at_its_offsets_and_the_trailing_hole() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.img");
    let dst = dir.path().join("dst.img");
    let file = std::fs::File::create(&src).unwrap();
    file.set_len(300 * MIB).unwrap();
    file.write_all_at(b"head", 0).unwrap();
    file.write_all_at(b"middle", 100 * MIB + 12345).unwrap();
    // Allocated but zero: must still come out as a hole.
    file.write_all_at(&vec![0u8; 4 * MIB as usize], 200 * MIB)
        .unwrap();
    file.sync_all().unwrap();
    let disks = RealDisks::new();

    disks.clone_file(&src, &dst).await.unwrap();

    let copy = std::fs::File::open(&dst).unwrap();
    let mut head = [0u8; 4];
    copy.read_exact_at(&mut head, 0).unwrap();
    let mut middle = [0u8; 6];
    copy.read_exact_at(&mut middle, 100 * MIB + 12345).unwrap();
    assert_eq!((&head, &middle), (b"head", b"middle"));
    let usage = disks.usage(&dst).unwrap();
    assert_eq!(usage.apparent_bytes, 300 * MIB);
    assert!(usage.allocated_bytes < MIB, "{usage:?}");
}

#[tokio::test]
async fn clone_refuses_an_existing_destination_and_leaves_it_alone() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.img");
    let dst = dir.path().join("dst.img");
    std::fs::write(&src, "new").unwrap();
    std::fs::write(&dst, "precious").unwrap();

    let err = RealDisks::new().clone_file(&src, &dst).await.unwrap_err();

    assert!(matches!(err, DiskError::AlreadyExists { .. }), "{err}");
    assert_eq!(std::fs::read_to_string(&dst).unwrap(), "precious");
    assert_eq!(leftovers(dir.path()), ["dst.img", "src.img"]);
}

#[tokio::test]
async fn failed_clone_leaves_no_destination_or_staging_file() {
    let dir = tempfile::tempdir().unwrap();
    let dst = dir.path().join("dst.img");

    let missing = RealDisks::new()
        .clone_file(&dir.path().join("absent.img"), &dst)
        .await
        .unwrap_err();
    let directory = RealDisks::new()
        .clone_file(dir.path(), &dst)
        .await
        .unwrap_err();

    assert!(matches!(missing, DiskError::Clone { .. }), "{missing}");
    assert!(matches!(directory, DiskError::Clone { .. }), "{directory}");
    assert!(
        leftovers(dir.path()).is_empty(),
        "{:?}",
        leftovers(dir.path())
    );
}

/// Unmounts and detaches when the test ends.
struct MountGuard(PathBuf);

impl Drop for MountGuard {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[tokio::test]
#[ignore = "needs root, mkfs.xfs and loop devices: mounts an XFS image"]
async fn clone_on_xfs_is_a_reflink() {
    let dir = tempfile::tempdir().unwrap();
    let backing = dir.path().join("xfs.img");
    std::fs::File::create(&backing)
        .unwrap()
        .set_len(512 * MIB)
        .unwrap();
    let mkfs = Command::new("mkfs.xfs")
        .args(["-q", "-m", "reflink=1"])
        .arg(&backing)
        .status()
        .unwrap();
    assert!(mkfs.success(), "mkfs.xfs failed");
    let mountpoint = dir.path().join("mnt");
    std::fs::create_dir(&mountpoint).unwrap();
    let mounted = Command::new("mount")
        .args(["-o", "loop"])
        .arg(&backing)
        .arg(&mountpoint)
        .status()
        .unwrap();
    assert!(mounted.success(), "mount failed");
    let _mount = MountGuard(mountpoint.clone());
    let src = mountpoint.join("src.img");
    let file = std::fs::File::create(&src).unwrap();
    file.write_all_at(&vec![9u8; 16 * MIB as usize], 0).unwrap();
    file.sync_all().unwrap();
    let disks = RealDisks::new();

    let method = disks
        .clone_file(&src, &mountpoint.join("dst.img"))
        .await
        .unwrap();

    assert_eq!(method, CloneMethod::Reflink);
    assert_eq!(
        std::fs::read(mountpoint.join("dst.img")).unwrap(),
        vec![9u8; 16 * MIB as usize]
    );
}

#[test]
fn available_bytes_is_the_free_space_df_reports() {
    let dir = tempfile::tempdir().unwrap();
    let disks = RealDisks::new();

    let available = disks.available_bytes(dir.path()).unwrap();

    let output = Command::new("df")
        .args(["--output=avail", "-B1"])
        .arg(dir.path())
        .output()
        .unwrap();
    let df: u64 = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .nth(1)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // Other writers on the machine move the number a little between the two reads.
    assert!(available.abs_diff(df) < 512 * MIB, "{available} vs df {df}");
}

#[test]
fn available_bytes_of_a_missing_directory_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nowhere");

    let err = RealDisks::new().available_bytes(&missing).unwrap_err();

    assert!(
        matches!(&err, DiskError::Statvfs { path, .. } if path == &missing),
        "{err:?}"
    );
    assert!(err.to_string().contains("nowhere"), "{err}");
}

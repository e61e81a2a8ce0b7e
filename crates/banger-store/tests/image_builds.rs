//! Artifact updates and the image build cache.
#![allow(clippy::unwrap_used)]

mod common;

use banger_store::StoreError;
use common::*;

#[test]
fn artifact_updates_change_only_paths_fingerprint_managed_and_size() {
    let (_dir, store) = temp_store();
    let image = minimal_image("base");
    store.insert_image(&image).unwrap();
    let mut changed = image.clone();
    changed.rootfs_path = "/images/x/rootfs.ext4".into();
    changed.work_seed_path = Some("/images/x/work-seed.ext4".into());
    changed.sha256 = Some("ab".repeat(32));
    changed.managed = true;
    changed.size_bytes = 4096;
    changed.cmdline = "ignored".into();
    store.update_image_artifacts(&changed).unwrap();
    let stored = store.get_image(image.id).unwrap().unwrap();
    assert_eq!(stored.rootfs_path, changed.rootfs_path);
    assert_eq!(stored.work_seed_path, changed.work_seed_path);
    assert_eq!(stored.sha256, changed.sha256);
    assert!(stored.managed);
    assert_eq!(stored.size_bytes, 4096);
    assert_eq!(
        stored.cmdline, image.cmdline,
        "the command line never changes"
    );

    let mut gone = minimal_image("gone");
    gone.name = banger_api::VmName::parse("gone").unwrap();
    assert!(matches!(
        store.update_image_artifacts(&gone),
        Err(StoreError::NotFound { .. })
    ));
}

#[test]
fn a_build_key_finds_its_image_until_the_image_is_deleted() {
    let (_dir, store) = temp_store();
    let image = minimal_image("built");
    assert_eq!(store.built_image("key-1").unwrap(), None);
    store.insert_built_image(&image, "key-1").unwrap();
    assert_eq!(store.built_image("key-1").unwrap(), Some(image.id));
    assert!(store.delete_image(image.id).unwrap());
    assert_eq!(
        store.built_image("key-1").unwrap(),
        None,
        "the cache row goes with its image"
    );
}

#[test]
fn a_built_image_whose_name_is_taken_leaves_no_cache_row() {
    let (_dir, store) = temp_store();
    store.insert_image(&minimal_image("taken")).unwrap();
    let clash = minimal_image("taken");
    assert!(store.insert_built_image(&clash, "key-2").is_err());
    assert_eq!(store.built_image("key-2").unwrap(), None);
}

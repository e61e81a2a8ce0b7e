//! Image rows: round trips, uniqueness, parents, and deletion guarded by VMs.

// In tests a failed unwrap is a failed test, with the error in the message.
#![allow(clippy::unwrap_used)]

mod common;

use banger_api::ImageId;
use banger_store::{ImageRecord, RecordKind, StoreError};
use common::*;

#[test]
fn image_with_only_required_fields_round_trips() {
    let (_dir, store) = temp_store();
    let image = minimal_image("debian");
    store.insert_image(&image).unwrap();
    assert_eq!(store.get_image(image.id).unwrap(), Some(image.clone()));
    assert_eq!(store.get_image_by_name("debian").unwrap(), Some(image));
}

#[test]
fn image_with_every_optional_field_round_trips() {
    let (_dir, store) = temp_store();
    let parent = minimal_image("base");
    let child = full_image("child", parent.id);
    store.insert_image(&parent).unwrap();
    store.insert_image(&child).unwrap();
    assert_eq!(store.get_image(child.id).unwrap(), Some(child.clone()));

    let api = child.to_api();
    assert_eq!(api.initrd_path.as_deref(), Some("/images/x/initrd.img"));
    assert_eq!(api.kernel_path, "/var/lib/banger/images/k/vmlinux");
    assert_eq!(api.parent_id, Some(parent.id));
    assert_eq!(api.readiness_ports, vec![22, 4096]);
}

#[test]
fn missing_image_is_none_not_an_error() {
    let (_dir, store) = temp_store();
    assert_eq!(store.get_image(ImageId::new()).unwrap(), None);
    assert_eq!(store.get_image_by_name("nope").unwrap(), None);
    assert!(!store.delete_image(ImageId::new()).unwrap());
}

#[test]
fn images_are_listed_by_name() {
    let (_dir, store) = temp_store();
    for image_name in ["zeta", "alpha", "mid"] {
        store.insert_image(&minimal_image(image_name)).unwrap();
    }
    let names: Vec<String> = store
        .list_images()
        .unwrap()
        .into_iter()
        .map(|image| image.name.to_string())
        .collect();
    assert_eq!(names, ["alpha", "mid", "zeta"]);
}

#[test]
fn duplicate_image_name_is_a_name_conflict() {
    let (_dir, store) = temp_store();
    store.insert_image(&minimal_image("debian")).unwrap();
    let err = store.insert_image(&minimal_image("debian")).unwrap_err();
    assert!(
        matches!(&err, StoreError::Conflict { what: "name", value } if value == "debian"),
        "{err:?}"
    );
}

#[test]
fn duplicate_image_id_is_an_id_conflict() {
    let (_dir, store) = temp_store();
    let image = minimal_image("one");
    store.insert_image(&image).unwrap();
    let err = store
        .insert_image(&ImageRecord {
            name: name("two"),
            ..image.clone()
        })
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::Conflict { what: "id", .. }),
        "{err:?}"
    );
}

#[test]
fn image_with_unknown_parent_is_rejected() {
    let (_dir, store) = temp_store();
    let orphan = full_image("orphan", ImageId::new());
    let err = store.insert_image(&orphan).unwrap_err();
    assert!(
        matches!(
            &err,
            StoreError::NotFound {
                kind: RecordKind::Image,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(store.list_images().unwrap(), vec![]);
}

#[test]
fn deleting_a_parent_clears_the_childs_parent_id() {
    let (_dir, store) = temp_store();
    let parent = minimal_image("base");
    let child = full_image("child", parent.id);
    store.insert_image(&parent).unwrap();
    store.insert_image(&child).unwrap();
    assert!(store.delete_image(parent.id).unwrap());
    assert_eq!(store.get_image(child.id).unwrap().unwrap().parent_id, None);
}

#[test]
fn deleting_an_image_in_use_names_its_vms_and_keeps_it() {
    let (_dir, store) = temp_store();
    let image = minimal_image("debian");
    store.insert_image(&image).unwrap();
    store.insert_vm(&minimal_vm("web", image.id)).unwrap();
    store.insert_vm(&minimal_vm("api", image.id)).unwrap();

    let err = store.delete_image(image.id).unwrap_err();
    match &err {
        StoreError::InUse { image, vms } => {
            assert_eq!(image, "debian");
            assert_eq!(vms, &["api".to_string(), "web".to_string()]);
        }
        other => panic!("expected InUse, got {other:?}"),
    }
    assert_eq!(err.to_string(), "image `debian` is used by VMs: api, web");
    assert!(store.get_image(image.id).unwrap().is_some());
    let users: Vec<String> = store
        .vms_using_image(image.id)
        .unwrap()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(users, ["api", "web"]);
}

#[test]
fn an_image_is_deletable_once_its_last_vm_is_gone() {
    let (_dir, store) = temp_store();
    let image = minimal_image("debian");
    let vm = minimal_vm("web", image.id);
    store.insert_image(&image).unwrap();
    store.insert_vm(&vm).unwrap();
    assert!(store.delete_vm(vm.id).unwrap());
    assert!(store.delete_image(image.id).unwrap());
    assert_eq!(store.get_image(image.id).unwrap(), None);
}

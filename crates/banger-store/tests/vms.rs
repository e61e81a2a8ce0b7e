//! VM rows: round trips, uniqueness of allocations, foreign keys, corrupt rows.

// In tests a failed unwrap is a failed test, with the error in the message.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::Ipv4Addr;

use banger_api::{ImageId, VmId, VmState};
use banger_store::{RecordKind, StoreError, VmRecord};
use common::*;

/// A store with one image, for VMs to reference.
fn store_with_image() -> (tempfile::TempDir, banger_store::Store, ImageId) {
    let (dir, store) = temp_store();
    let image = minimal_image("debian");
    store.insert_image(&image).unwrap();
    (dir, store, image.id)
}

#[test]
fn vm_with_only_required_fields_round_trips() {
    let (_dir, store, image) = store_with_image();
    let vm = minimal_vm("web", image);
    store.insert_vm(&vm).unwrap();
    assert_eq!(store.get_vm(vm.id).unwrap(), Some(vm.clone()));
    assert_eq!(store.get_vm_by_name("web").unwrap(), Some(vm));
}

#[test]
fn vm_with_every_optional_field_round_trips() {
    let (_dir, store, image) = store_with_image();
    let vm = full_vm("web", image, 7);
    store.insert_vm(&vm).unwrap();
    assert_eq!(store.get_vm(vm.id).unwrap(), Some(vm));
}

#[test]
fn missing_vm_is_none_not_an_error() {
    let (_dir, store, _image) = store_with_image();
    assert_eq!(store.get_vm(VmId::new()).unwrap(), None);
    assert_eq!(store.get_vm_by_name("web").unwrap(), None);
    assert!(!store.delete_vm(VmId::new()).unwrap());
}

#[test]
fn vms_are_listed_by_name() {
    let (_dir, store, image) = store_with_image();
    for (n, vm_name) in ["zeta", "alpha", "mid"].into_iter().enumerate() {
        store
            .insert_vm(&full_vm(vm_name, image, u8::try_from(n).unwrap()))
            .unwrap();
    }
    let names: Vec<String> = store
        .list_vms()
        .unwrap()
        .into_iter()
        .map(|vm| vm.name.to_string())
        .collect();
    assert_eq!(names, ["alpha", "mid", "zeta"]);
}

#[test]
fn update_replaces_every_field() {
    let (_dir, store, image) = store_with_image();
    let vm = minimal_vm("web", image);
    store.insert_vm(&vm).unwrap();
    let changed = VmRecord {
        id: vm.id,
        ..full_vm("web2", image, 9)
    };
    store.update_vm(&changed).unwrap();
    assert_eq!(store.get_vm(vm.id).unwrap(), Some(changed.clone()));
    assert_eq!(store.get_vm_by_name("web").unwrap(), None);

    let changed_back = VmRecord {
        ip: None,
        mac: None,
        vsock_cid: None,
        last_error: None,
        ..changed
    };
    store.update_vm(&changed_back).unwrap();
    assert_eq!(store.get_vm(vm.id).unwrap(), Some(changed_back));
}

#[test]
fn update_of_a_missing_vm_is_not_found() {
    let (_dir, store, image) = store_with_image();
    let vm = minimal_vm("web", image);
    let err = store.update_vm(&vm).unwrap_err();
    assert!(
        matches!(&err, StoreError::NotFound { kind: RecordKind::Vm, id } if *id == vm.id.to_string())
    );
    let err = store
        .set_vm_state(vm.id, VmState::Running, None)
        .unwrap_err();
    assert!(matches!(
        &err,
        StoreError::NotFound {
            kind: RecordKind::Vm,
            ..
        }
    ));
}

#[test]
fn set_vm_state_records_state_error_and_time() {
    let (_dir, store, image) = store_with_image();
    let vm = minimal_vm("web", image);
    store.insert_vm(&vm).unwrap();

    store
        .set_vm_state(vm.id, VmState::Error, Some("disk: no space left"))
        .unwrap();
    let got = store.get_vm(vm.id).unwrap().unwrap();
    assert_eq!(got.state, VmState::Error);
    assert_eq!(got.last_error.as_deref(), Some("disk: no space left"));
    assert!(got.updated_at > vm.updated_at);
    assert_eq!(got.created_at, vm.created_at);

    store.set_vm_state(vm.id, VmState::Starting, None).unwrap();
    let got = store.get_vm(vm.id).unwrap().unwrap();
    assert_eq!((got.state, got.last_error), (VmState::Starting, None));
}

#[test]
fn duplicate_vm_name_is_a_name_conflict() {
    let (_dir, store, image) = store_with_image();
    store.insert_vm(&full_vm("web", image, 1)).unwrap();
    let err = store.insert_vm(&minimal_vm("web", image)).unwrap_err();
    assert!(
        matches!(&err, StoreError::Conflict { what: "name", value } if value == "web"),
        "{err:?}"
    );
}

#[test]
fn duplicate_ip_is_an_ip_conflict() {
    let (_dir, store, image) = store_with_image();
    store.insert_vm(&full_vm("web", image, 1)).unwrap();
    let other = VmRecord {
        ip: Some(Ipv4Addr::new(172, 16, 0, 1)),
        ..minimal_vm("api", image)
    };
    let err = store.insert_vm(&other).unwrap_err();
    assert!(
        matches!(&err, StoreError::Conflict { what: "ip", value } if value == "172.16.0.1"),
        "{err:?}"
    );
}

#[test]
fn duplicate_vsock_cid_is_a_cid_conflict() {
    let (_dir, store, image) = store_with_image();
    store.insert_vm(&full_vm("web", image, 1)).unwrap();
    let other = VmRecord {
        vsock_cid: Some(4),
        ..minimal_vm("api", image)
    };
    let err = store.insert_vm(&other).unwrap_err();
    assert!(
        matches!(&err, StoreError::Conflict { what: "vsock_cid", value } if value == "4"),
        "{err:?}"
    );
}

#[test]
fn duplicate_mac_is_a_mac_conflict() {
    let (_dir, store, image) = store_with_image();
    let first = full_vm("web", image, 1);
    store.insert_vm(&first).unwrap();
    let other = VmRecord {
        mac: first.mac.clone(),
        ..minimal_vm("api", image)
    };
    let err = store.insert_vm(&other).unwrap_err();
    assert!(
        matches!(&err, StoreError::Conflict { what: "mac", .. }),
        "{err:?}"
    );
}

#[test]
fn update_onto_a_taken_ip_is_a_conflict_and_changes_nothing() {
    let (_dir, store, image) = store_with_image();
    store.insert_vm(&full_vm("web", image, 1)).unwrap();
    let api = full_vm("api", image, 2);
    store.insert_vm(&api).unwrap();
    let moved = VmRecord {
        ip: Some(Ipv4Addr::new(172, 16, 0, 1)),
        ..api.clone()
    };
    let err = store.update_vm(&moved).unwrap_err();
    assert!(
        matches!(&err, StoreError::Conflict { what: "ip", .. }),
        "{err:?}"
    );
    assert_eq!(store.get_vm(api.id).unwrap(), Some(api));
}

#[test]
fn unallocated_vms_do_not_conflict_with_each_other() {
    let (_dir, store, image) = store_with_image();
    store.insert_vm(&minimal_vm("a", image)).unwrap();
    store.insert_vm(&minimal_vm("b", image)).unwrap();
    assert_eq!(store.list_vms().unwrap().len(), 2);
}

#[test]
fn vm_with_unknown_image_is_rejected() {
    let (_dir, store, _image) = store_with_image();
    let missing = ImageId::new();
    let err = store.insert_vm(&minimal_vm("web", missing)).unwrap_err();
    assert!(
        matches!(&err, StoreError::NotFound { kind: RecordKind::Image, id } if *id == missing.to_string()),
        "{err:?}"
    );
    assert_eq!(store.list_vms().unwrap(), vec![]);
}

#[test]
fn used_allocations_are_sorted_numerically() {
    let (_dir, store, image) = store_with_image();
    for n in [10u8, 9, 200] {
        store
            .insert_vm(&full_vm(&format!("vm{n}"), image, n))
            .unwrap();
    }
    store.insert_vm(&minimal_vm("unallocated", image)).unwrap();
    assert_eq!(
        store.used_ips().unwrap(),
        vec![
            Ipv4Addr::new(172, 16, 0, 9),
            Ipv4Addr::new(172, 16, 0, 10),
            Ipv4Addr::new(172, 16, 0, 200)
        ]
    );
    assert_eq!(store.used_vsock_cids().unwrap(), vec![12, 13, 203]);
}

/// Raw SQL that bypasses the store, to plant a row the store would never write.
fn corrupt(store: &banger_store::Store, vm: &VmRecord, column: &str, value: &str) {
    let conn = rusqlite::Connection::open(store.path()).unwrap();
    conn.execute(
        &format!("UPDATE vms SET {column} = ?1 WHERE id = ?2"),
        [value, &vm.id.to_string()],
    )
    .unwrap();
}

#[test]
fn corrupt_vm_rows_are_reported_not_panicked_on() {
    for (column, value) in [
        ("state", "hibernating"),
        ("desired_state", "maybe"),
        ("created_at", "yesterday"),
        ("updated_at", "2024-13-45T00:00:00Z"),
        ("stage_timings", "{not json"),
        ("ip", "300.1.2.3"),
        ("name", "Not A DNS Label"),
    ] {
        let (_dir, store, image) = store_with_image();
        let vm = full_vm("web", image, 1);
        store.insert_vm(&vm).unwrap();
        corrupt(&store, &vm, column, value);

        let err = store.get_vm(vm.id).unwrap_err();
        match &err {
            StoreError::Corrupt { table, id, reason } => {
                assert_eq!(*table, "vms");
                assert_eq!(*id, vm.id.to_string());
                assert!(reason.contains(column), "{column}: {reason}");
            }
            other => panic!("{column}: expected Corrupt, got {other:?}"),
        }
        assert!(
            matches!(store.list_vms(), Err(StoreError::Corrupt { .. })),
            "{column}"
        );
    }
}

#[test]
fn corrupt_image_rows_are_reported_not_panicked_on() {
    for (column, value) in [("created_at", "not a time"), ("readiness_ports", "[70000]")] {
        let (_dir, store) = temp_store();
        let image = minimal_image("debian");
        store.insert_image(&image).unwrap();
        let conn = rusqlite::Connection::open(store.path()).unwrap();
        conn.execute(
            &format!("UPDATE images SET {column} = ?1 WHERE id = ?2"),
            [value, &image.id.to_string()],
        )
        .unwrap();
        let err = store.get_image(image.id).unwrap_err();
        assert!(
            matches!(&err, StoreError::Corrupt { table: "images", reason, .. } if reason.contains(column)),
            "{column}: {err:?}"
        );
    }
}

#[test]
fn numbers_sqlite_cannot_hold_are_refused_before_writing() {
    let (_dir, store, image) = store_with_image();
    let vm = VmRecord {
        memory_mib: u64::MAX,
        ..minimal_vm("web", image)
    };
    let err = store.insert_vm(&vm).unwrap_err();
    assert!(matches!(
        err,
        StoreError::TooLarge {
            field: "memory_mib",
            value: u64::MAX
        }
    ));
    assert_eq!(store.list_vms().unwrap(), vec![]);
}

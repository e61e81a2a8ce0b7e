//! Port-forward rows: unique host port per protocol across VMs, gone with their VM.

// In tests a failed unwrap is a failed test, with the error in the message.
#![allow(clippy::unwrap_used)]

mod common;

use banger_api::{PortForward, PortProto, VmId};
use banger_store::{PortForwardRecord, RecordKind, StoreError};
use common::*;

fn fw(host_port: u16, guest_port: u16, proto: PortProto) -> PortForward {
    PortForward {
        host_port,
        guest_port,
        proto,
    }
}

#[test]
fn a_host_port_is_held_once_per_protocol_across_all_vms() {
    let (_dir, store) = temp_store();
    let image = minimal_image("debian");
    store.insert_image(&image).unwrap();
    let (a, b) = (minimal_vm("a", image.id), full_vm("b", image.id, 3));
    store.insert_vm(&a).unwrap();
    store.insert_vm(&b).unwrap();

    store
        .insert_port_forward(a.id, &fw(8080, 80, PortProto::Tcp))
        .unwrap();
    let err = store
        .insert_port_forward(b.id, &fw(8080, 81, PortProto::Tcp))
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::Conflict { what: "host port", value } if value == "8080/tcp"),
        "{err:?}"
    );
    // The same number over UDP is another port.
    store
        .insert_port_forward(b.id, &fw(8080, 53, PortProto::Udp))
        .unwrap();
    assert_eq!(
        store.list_port_forwards(a.id).unwrap(),
        vec![fw(8080, 80, PortProto::Tcp)]
    );
    assert_eq!(
        store.all_port_forwards().unwrap(),
        vec![
            PortForwardRecord {
                vm_id: a.id,
                forward: fw(8080, 80, PortProto::Tcp)
            },
            PortForwardRecord {
                vm_id: b.id,
                forward: fw(8080, 53, PortProto::Udp)
            },
        ]
    );

    assert!(!store
        .delete_port_forward(b.id, PortProto::Tcp, 8080)
        .unwrap());
    assert!(store
        .delete_port_forward(a.id, PortProto::Tcp, 8080)
        .unwrap());
    assert!(store.list_port_forwards(a.id).unwrap().is_empty());
}

#[test]
fn forwards_go_with_their_vm_and_need_one() {
    let (_dir, store) = temp_store();
    let image = minimal_image("debian");
    store.insert_image(&image).unwrap();
    let vm = minimal_vm("web", image.id);
    store.insert_vm(&vm).unwrap();
    store
        .insert_port_forward(vm.id, &fw(2222, 22, PortProto::Tcp))
        .unwrap();
    store.delete_vm(vm.id).unwrap();
    assert!(store.all_port_forwards().unwrap().is_empty());

    let err = store
        .insert_port_forward(VmId::new(), &fw(2222, 22, PortProto::Tcp))
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::NotFound {
                kind: RecordKind::Vm,
                ..
            }
        ),
        "{err:?}"
    );
}

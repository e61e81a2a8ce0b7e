//! Many writers at once: the write lock queues them, so none sees SQLITE_BUSY.

// In tests a failed unwrap is a failed test, with the error in the message.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::Ipv4Addr;
use std::thread;

use banger_store::VmRecord;
use common::*;

#[test]
fn eight_threads_inserting_fifty_vms_each_all_succeed() {
    let (_dir, store) = temp_store();
    let image = minimal_image("debian");
    store.insert_image(&image).unwrap();

    let writers: Vec<_> = (0..8u32)
        .map(|t| {
            let store = store.clone();
            thread::spawn(move || {
                for i in 0..50u32 {
                    let n = t * 50 + i;
                    let vm = VmRecord {
                        ip: Some(Ipv4Addr::from(0x0a00_0000 + n)),
                        vsock_cid: Some(3 + n),
                        ..minimal_vm(&format!("vm-{t}-{i}"), image.id)
                    };
                    store.insert_vm(&vm).unwrap();
                    // Interleave reads with the writes, as the daemon does.
                    assert!(store.get_vm(vm.id).unwrap().is_some());
                }
            })
        })
        .collect();
    for writer in writers {
        writer.join().unwrap();
    }

    assert_eq!(store.list_vms().unwrap().len(), 400);
    assert_eq!(
        store.used_vsock_cids().unwrap(),
        (3..403).collect::<Vec<u32>>()
    );
}

#[test]
fn two_stores_on_one_file_both_write() {
    // A second opener (e.g. a second daemon racing at startup) relies on busy_timeout, not on
    // the in-process lock.
    let (dir, first) = temp_store();
    let second = banger_store::Store::open(&dir.path().join("state.db")).unwrap();
    let image = minimal_image("debian");
    first.insert_image(&image).unwrap();
    let handles: Vec<_> = [first, second]
        .into_iter()
        .enumerate()
        .map(|(s, store)| {
            let image = image.id;
            thread::spawn(move || {
                for i in 0..25 {
                    store
                        .insert_vm(&minimal_vm(&format!("s{s}-{i}"), image))
                        .unwrap();
                }
                store
            })
        })
        .collect();
    let stores: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(stores[0].list_vms().unwrap().len(), 50);
}

//! The schema's history: every older database migrates to exactly the schema a fresh one gets,
//! keeps its rows, and migrating again changes nothing.

// In tests a failed unwrap is a failed test, with the error in the message.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;

use banger_store::migrations::{migrations, LATEST_VERSION, STEPS};
use banger_store::{schema_version, Store, StoreError};
use common::*;
use rusqlite::Connection;

/// The schema as SQLite stores it, with whitespace runs collapsed so formatting is irrelevant.
fn schema(path: &Path) -> Vec<(String, String, String, Option<String>)> {
    let conn = Connection::open(path).unwrap();
    let mut statement = conn
        .prepare("SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY name")
        .unwrap();
    statement
        .query_map([], |row| {
            let sql: Option<String> = row.get(3)?;
            Ok((
                row.get(0)?,
                row.get(1)?,
                row.get(2)?,
                sql.map(|sql| sql.split_whitespace().collect::<Vec<_>>().join(" ")),
            ))
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

fn user_version(path: &Path) -> i64 {
    Connection::open(path)
        .unwrap()
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .unwrap()
}

/// The schema of a database created at the latest version.
fn fresh_schema() -> Vec<(String, String, String, Option<String>)> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fresh.db");
    drop(Store::open(&path).unwrap());
    schema(&path)
}

#[test]
fn migration_definitions_are_valid() {
    migrations().validate().unwrap();
    assert_eq!(LATEST_VERSION, STEPS.len());
}

#[test]
fn a_fresh_database_is_at_the_latest_version_with_every_table() {
    let (_dir, store) = temp_store();
    assert_eq!(schema_version(&store).unwrap(), LATEST_VERSION);
    assert_eq!(
        user_version(store.path()),
        i64::try_from(LATEST_VERSION).unwrap()
    );
    let names: Vec<String> = schema(store.path())
        .into_iter()
        .map(|(_, name, _, _)| name)
        .collect();
    for expected in [
        "images",
        "vms",
        "vms_by_image",
        "vms_unique_ip",
        "vms_unique_mac",
        "vms_unique_vsock_cid",
        "port_forwards",
        "port_forwards_by_vm",
    ] {
        assert!(
            names.iter().any(|name| name == expected),
            "{expected} missing from {names:?}"
        );
    }
}

/// Rows a database at `version` can hold, inserted with raw SQL as that version's banger
/// would have written them.
fn insert_rows_valid_at(conn: &Connection, version: usize) -> Vec<&'static str> {
    let mut vm_names = vec![];
    if version >= 1 {
        conn.execute_batch(
            "INSERT INTO images (id, name, kernel_path, rootfs_path, cmdline, readiness_ports,
                 managed, size_bytes, created_at)
             VALUES ('00000000-0000-4000-8000-000000000001', 'debian', '/k', '/r', 'console=ttyS0',
                 '[22]', 1, 4096, '2024-01-02T03:04:05.000000006Z');",
        )
        .unwrap();
    }
    if version >= 2 {
        conn.execute_batch(
            "INSERT INTO vms (id, name, image_id, vcpus, memory_mib, disk_size_mib, state,
                 desired_state, ip, mac, vsock_cid, vm_dir, stage_timings, created_at, updated_at)
             VALUES ('00000000-0000-4000-8000-0000000000a1', 'web',
                 '00000000-0000-4000-8000-000000000001', 2, 1024, 8192, 'running', 'running',
                 '172.16.0.2', '06:00:ac:10:00:02', 3, '/vms/web',
                 '[{\"stage\":\"boot\",\"duration_ms\":120}]',
                 '2024-01-02T03:04:05.000000006Z', '2024-01-02T03:04:05.000000006Z'),
             ('00000000-0000-4000-8000-0000000000a2', 'stopped-one',
                 '00000000-0000-4000-8000-000000000001', 1, 512, 4096, 'stopped', 'stopped',
                 NULL, NULL, NULL, '/vms/stopped-one', '[]',
                 '2024-01-02T03:04:05.000000006Z', '2024-01-02T03:04:05.000000006Z');",
        )
        .unwrap();
        vm_names.extend(["stopped-one", "web"]);
    }
    vm_names
}

#[test]
fn every_older_version_with_data_migrates_to_the_fresh_schema() {
    let fresh = fresh_schema();
    for version in 0..LATEST_VERSION {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        let mut conn = Connection::open(&path).unwrap();
        migrations().to_version(&mut conn, version).unwrap();
        assert_eq!(user_version(&path), i64::try_from(version).unwrap());
        let vm_names = insert_rows_valid_at(&conn, version);
        drop(conn);

        let store = Store::open(&path).unwrap();
        assert_eq!(
            schema_version(&store).unwrap(),
            LATEST_VERSION,
            "from version {version}"
        );
        assert_eq!(
            schema(&path),
            fresh,
            "schema migrated from version {version}"
        );

        // The old rows decode as records of the latest schema.
        if version >= 1 {
            let image = store.get_image_by_name("debian").unwrap().unwrap();
            assert_eq!(image.readiness_ports, vec![22]);
            assert!(image.managed);
            // Images from before root modes existed all booted through banger's overlay init.
            assert_eq!(image.root_mode, banger_api::RootMode::Overlay);
        }
        for vm in store.list_vms().unwrap() {
            assert_eq!(
                vm.root_clone_method, None,
                "VM {} from version {version}",
                vm.name
            );
        }
        let names: Vec<String> = store
            .list_vms()
            .unwrap()
            .into_iter()
            .map(|vm| vm.name.to_string())
            .collect();
        assert_eq!(names, vm_names, "VMs migrated from version {version}");
    }
}

#[test]
fn migrating_an_up_to_date_database_changes_nothing() {
    let (dir, store) = temp_store();
    let image = minimal_image("debian");
    store.insert_image(&image).unwrap();
    store.insert_vm(&full_vm("web", image.id, 1)).unwrap();
    drop(store);
    let path = dir.path().join("state.db");
    let before = (schema(&path), user_version(&path));

    // Once through the library directly, once through a second open.
    let mut conn = Connection::open(&path).unwrap();
    migrations().to_latest(&mut conn).unwrap();
    drop(conn);
    let store = Store::open(&path).unwrap();

    assert_eq!((schema(&path), user_version(&path)), before);
    assert_eq!(store.list_vms().unwrap().len(), 1);
}

#[test]
fn a_database_from_a_newer_banger_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    drop(Store::open(&path).unwrap());
    let newer = LATEST_VERSION + 1;
    Connection::open(&path)
        .unwrap()
        .pragma_update(None, "user_version", i64::try_from(newer).unwrap())
        .unwrap();

    let err = Store::open(&path).unwrap_err();
    assert!(
        matches!(err, StoreError::TooNew { found, supported, .. } if found == newer && supported == LATEST_VERSION),
        "{err:?}"
    );
}

#[test]
fn open_creates_missing_parent_directories() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a/b/c/state.db");
    let store = Store::open(&path).unwrap();
    assert!(path.is_file());
    assert_eq!(store.path(), path);
}

#[test]
fn an_unopenable_path_is_an_open_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    // A directory where the database file should be.
    let path = dir.path().join("state.db");
    std::fs::create_dir(&path).unwrap();
    let err = Store::open(&path).unwrap_err();
    assert!(
        matches!(&err, StoreError::Open { path: p, .. } if *p == path),
        "{err:?}"
    );
}

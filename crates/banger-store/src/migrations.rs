//! The schema, as an ordered list of migrations run by `rusqlite_migration`.
//!
//! The schema version lives in SQLite's `user_version`; version `k` means the first `k` steps
//! of [`STEPS`] have run. [`Store::open`](crate::Store::open) migrates to [`LATEST_VERSION`]
//! inside one transaction before anything else touches the file, so every other module may
//! assume the latest schema.
//!
//! Rules for adding a step: append, never edit a released step (old databases have run it);
//! each step is one coherent change; tests in `tests/migrations.rs` migrate every older version
//! with data in it and require the same schema as a fresh database.
//!
//! Tables are `STRICT`, so SQLite itself rejects a value of the wrong storage class. Enum columns
//! (`state`, `desired_state`) are deliberately *not* CHECK-constrained: SQLite cannot alter a
//! CHECK without rebuilding the table, and the store already reports an unknown value as
//! [`StoreError::Corrupt`].

use rusqlite_migration::{Migrations, M};

use crate::{Store, StoreError};

/// Every migration, oldest first.
pub const STEPS: &[M<'static>] = &[
    // 1: images, the named immutable boot sets. Lists (`readiness_ports`) are JSON arrays;
    // times are RFC 3339 UTC with nanoseconds, so text order is time order.
    M::up(
        "CREATE TABLE images (
            id              TEXT PRIMARY KEY NOT NULL,
            name            TEXT NOT NULL UNIQUE,
            kernel_path     TEXT NOT NULL,
            initrd_path     TEXT,
            modules_path    TEXT,
            rootfs_path     TEXT NOT NULL,
            work_seed_path  TEXT,
            cmdline         TEXT NOT NULL,
            readiness_ports TEXT NOT NULL DEFAULT '[]',
            agent_version   TEXT,
            parent_id       TEXT REFERENCES images(id) ON DELETE SET NULL,
            sha256          TEXT,
            managed         INTEGER NOT NULL CHECK (managed IN (0, 1)),
            size_bytes      INTEGER NOT NULL CHECK (size_bytes >= 0),
            created_at      TEXT NOT NULL
        ) STRICT;",
    ),
    // 2: VMs, each made from an image that cannot be deleted under it (RESTRICT is the
    // backstop; `delete_image` checks first to name the VMs).
    M::up(
        "CREATE TABLE vms (
            id            TEXT PRIMARY KEY NOT NULL,
            name          TEXT NOT NULL UNIQUE,
            image_id      TEXT NOT NULL REFERENCES images(id) ON DELETE RESTRICT,
            vcpus         INTEGER NOT NULL CHECK (vcpus > 0),
            memory_mib    INTEGER NOT NULL CHECK (memory_mib > 0),
            disk_size_mib INTEGER NOT NULL CHECK (disk_size_mib > 0),
            state         TEXT NOT NULL,
            desired_state TEXT NOT NULL,
            ip            TEXT,
            mac           TEXT,
            vsock_cid     INTEGER CHECK (vsock_cid >= 3),
            vm_dir        TEXT NOT NULL,
            last_error    TEXT,
            stage_timings TEXT NOT NULL DEFAULT '[]',
            created_at    TEXT NOT NULL,
            updated_at    TEXT NOT NULL
        ) STRICT;
        CREATE INDEX vms_by_image ON vms(image_id);",
    ),
    // 3: allocation is durable: no IP, MAC or vsock CID is ever held by two VMs. The indexes
    // are partial so unallocated (NULL) values do not take index space.
    M::up(
        "CREATE UNIQUE INDEX vms_unique_ip ON vms(ip) WHERE ip IS NOT NULL;
        CREATE UNIQUE INDEX vms_unique_mac ON vms(mac) WHERE mac IS NOT NULL;
        CREATE UNIQUE INDEX vms_unique_vsock_cid ON vms(vsock_cid) WHERE vsock_cid IS NOT NULL;",
    ),
    // 4: port forwards, a host port (unique per protocol across all VMs) to a guest port of one
    // VM; they go with their VM (CASCADE). Ports are CHECKed: SQLite INTEGER is wider than u16.
    M::up(
        "CREATE TABLE port_forwards (
            vm_id       TEXT NOT NULL REFERENCES vms(id) ON DELETE CASCADE,
            proto       TEXT NOT NULL CHECK (proto IN ('tcp', 'udp')),
            host_port   INTEGER NOT NULL CHECK (host_port BETWEEN 1 AND 65535),
            guest_port  INTEGER NOT NULL CHECK (guest_port BETWEEN 1 AND 65535),
            created_at  TEXT NOT NULL,
            PRIMARY KEY (proto, host_port)
        ) STRICT;
        CREATE INDEX port_forwards_by_vm ON port_forwards(vm_id);",
    ),
    // 5: how VMs get their writable root. `images.root_mode` is `overlay` (banger's early init
    // mounts an overlay over the shared base; every existing image) or `clone` (a per-VM copy
    // of the base, for images that cannot take banger's early init); `vms.root_clone_method`
    // records how a `clone` root was copied (`reflink` or `sparse_copy`), NULL until it exists.
    M::up(
        "ALTER TABLE images ADD COLUMN root_mode TEXT NOT NULL DEFAULT 'overlay';
        ALTER TABLE vms ADD COLUMN root_clone_method TEXT;",
    ),
    // 6: the image build cache: a build key (base image fingerprint + recipe hash) -> the image
    // that build produced. The row goes with its image.
    M::up(
        "CREATE TABLE image_builds (
            key        TEXT PRIMARY KEY NOT NULL,
            image_id   TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE,
            created_at TEXT NOT NULL
        ) STRICT;
        CREATE INDEX image_builds_by_image ON image_builds(image_id);",
    ),
];

/// The schema version after every step has run.
pub const LATEST_VERSION: usize = STEPS.len();

/// The migration set, ready to run against a connection.
pub fn migrations() -> Migrations<'static> {
    Migrations::from_slice(STEPS)
}

/// The schema version of the store's database (equal to [`LATEST_VERSION`] once opened).
pub fn schema_version(store: &Store) -> Result<usize, StoreError> {
    store.schema_version()
}

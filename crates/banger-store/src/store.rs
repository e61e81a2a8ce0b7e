//! The handle to the database file: opening, connection configuration, and the read/write
//! discipline every query goes through.
//!
//! Ownership and concurrency: one [`Store`] per database file per process (the daemon's). It is
//! a cheap `Clone` around an `Arc`; clones share one r2d2 pool of SQLite connections and one
//! write lock.
//!
//! - Every pooled connection is configured on creation (`configure`): WAL journaling (readers
//!   never block the writer nor each other), `busy_timeout=5000`, `foreign_keys=ON`,
//!   `synchronous=NORMAL` (durable at each WAL checkpoint; a power cut may lose the last
//!   transactions but never corrupts the file).
//! - Reads take any pooled connection.
//! - Writes hold the process-wide write lock across one `BEGIN IMMEDIATE` transaction, so writers
//!   queue in Rust instead of racing for SQLite's lock and never see `SQLITE_BUSY`; a
//!   read-then-write (e.g. "refuse to delete an image while VMs use it") is atomic.
//!
//! Everything is synchronous; each operation is one short transaction on a local file, so async
//! callers may call it directly or through `spawn_blocking`.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use r2d2::Pool;
use r2d2_sqlite::SqliteConnectionManager;
use rusqlite::{Connection, TransactionBehavior};
use rusqlite_migration::SchemaVersion;

use crate::migrations::{self, LATEST_VERSION};
use crate::StoreError;

/// How long SQLite waits on a lock held by another connection (or process) before giving up.
pub const BUSY_TIMEOUT: Duration = Duration::from_millis(5000);

/// Connections in the pool: enough for the daemon's concurrent readers on two-to-few cores.
const POOL_SIZE: u32 = 8;

/// How long an operation waits for a free pooled connection.
const POOL_TIMEOUT: Duration = Duration::from_secs(10);

/// banger's durable state: images and VMs in one SQLite file. See the module docs for the
/// concurrency rules.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    pool: Pool<SqliteConnectionManager>,
    /// Held across every write transaction; guards no data, only the order of writers.
    write_lock: Mutex<()>,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Opens (creating if needed) the database at `path` and migrates it to
    /// [`LATEST_VERSION`]. Creates the parent directory if it is missing.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        if let Some(parent) = path
            .parent()
            .filter(|parent| !parent.as_os_str().is_empty())
        {
            fs::create_dir_all(parent).map_err(|source| StoreError::CreateDir {
                path: parent.to_path_buf(),
                source,
            })?;
        }
        let open_error = |source| StoreError::Open {
            path: path.to_path_buf(),
            source,
        };

        // Migrate on a connection of our own before the pool exists, so no pooled connection
        // ever sees an old schema, and an unopenable file fails here at once with SQLite's
        // reason instead of after the pool's timeout.
        let mut conn = Connection::open(path).map_err(open_error)?;
        let mode = configure(&conn).map_err(open_error)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::WalUnavailable {
                path: path.to_path_buf(),
                mode,
            });
        }
        migrate(&mut conn, path)?;
        drop(conn);

        let manager =
            SqliteConnectionManager::file(path).with_init(|conn| configure(conn).map(drop));
        let pool = Pool::builder()
            .max_size(POOL_SIZE)
            .connection_timeout(POOL_TIMEOUT)
            .build(manager)
            .map_err(|source| StoreError::OpenPool {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(Store {
            inner: Arc::new(Inner {
                path: path.to_path_buf(),
                pool,
                write_lock: Mutex::new(()),
            }),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The schema version recorded in the file.
    pub fn schema_version(&self) -> Result<usize, StoreError> {
        let conn = self.inner.pool.get()?;
        migrations::migrations()
            .current_version(&conn)
            .map(usize::from)
            .map_err(|source| StoreError::Migrate {
                path: self.inner.path.clone(),
                source,
            })
    }

    /// Runs `op` on any pooled connection.
    pub(crate) fn read<T>(
        &self,
        op: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let conn = self.inner.pool.get()?;
        op(&conn)
    }

    /// Runs `op` in one immediate transaction under the write lock; commits if it returns `Ok`,
    /// rolls back otherwise.
    pub(crate) fn write<T>(
        &self,
        op: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        // A writer that panicked held the lock, but its transaction rolled back when dropped:
        // the lock guards no data, so poisoning carries no meaning here.
        let _writer = self
            .inner
            .write_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut conn = self.inner.pool.get()?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let value = op(&tx)?;
        tx.commit()?;
        Ok(value)
    }

    /// A pooled connection, for tests that inspect connection settings.
    #[cfg(test)]
    pub(crate) fn pooled(
        &self,
    ) -> Result<r2d2::PooledConnection<SqliteConnectionManager>, StoreError> {
        Ok(self.inner.pool.get()?)
    }
}

/// Applies banger's connection settings; returns the journal mode SQLite actually chose.
fn configure(conn: &Connection) -> rusqlite::Result<String> {
    // First, so that switching the journal mode below waits for a concurrent opener.
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.execute_batch("PRAGMA foreign_keys = ON; PRAGMA synchronous = NORMAL;")?;
    conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get::<_, String>(0))
}

/// Migrates `conn` to the latest schema, refusing a database from a newer banger.
fn migrate(conn: &mut Connection, path: &Path) -> Result<(), StoreError> {
    let migrate_error = |source| StoreError::Migrate {
        path: path.to_path_buf(),
        source,
    };
    let migrations = migrations::migrations();
    let current = migrations.current_version(conn).map_err(migrate_error)?;
    if let SchemaVersion::Outside(found) = current {
        return Err(StoreError::TooNew {
            path: path.to_path_buf(),
            found: found.get(),
            supported: LATEST_VERSION,
        });
    }
    let from = usize::from(current);
    migrations.to_latest(conn).map_err(migrate_error)?;
    if from != LATEST_VERSION {
        tracing::info!(path = %path.display(), from, to = LATEST_VERSION, "migrated state database");
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Every connection the pool hands out carries the settings, not only the first one: four
    /// are held at once so the pool must give four distinct connections.
    #[test]
    fn every_pooled_connection_has_the_pragmas() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("state.db")).unwrap();
        let held: Vec<_> = (0..4).map(|_| store.pooled().unwrap()).collect();

        // Temp tables are per connection: this fails if any two handles share one.
        for conn in &held {
            conn.execute_batch("CREATE TEMP TABLE distinct_connection (x)")
                .unwrap();
        }

        for conn in &held {
            let foreign_keys: i64 = conn
                .query_row("PRAGMA foreign_keys", [], |r| r.get(0))
                .unwrap();
            let journal_mode: String = conn
                .query_row("PRAGMA journal_mode", [], |r| r.get(0))
                .unwrap();
            let busy_timeout: i64 = conn
                .query_row("PRAGMA busy_timeout", [], |r| r.get(0))
                .unwrap();
            let synchronous: i64 = conn
                .query_row("PRAGMA synchronous", [], |r| r.get(0))
                .unwrap();
            assert_eq!(foreign_keys, 1);
            assert_eq!(journal_mode, "wal");
            assert_eq!(busy_timeout, 5000);
            assert_eq!(synchronous, 1, "1 is NORMAL");
        }
    }
}

//! What can go wrong in the store, in terms the caller can act on.
//!
//! Constraint violations are classified here, once: a UNIQUE violation becomes
//! [`StoreError::Conflict`] naming the column (`name`, `ip`, `vsock_cid`, ...), a foreign-key
//! violation on a VM becomes [`StoreError::NotFound`] for its image. Rows that exist but cannot
//! be decoded become [`StoreError::Corrupt`]; nothing in the store panics on bad data.

use std::fmt;
use std::path::PathBuf;

use rusqlite::ffi;

/// Which kind of record an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordKind {
    /// A row of `images`.
    Image,
    /// A row of `vms`.
    Vm,
}

impl fmt::Display for RecordKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RecordKind::Image => "image",
            RecordKind::Vm => "VM",
        })
    }
}

/// Any failure of a [`Store`](crate::Store) operation.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The directory that should hold the database could not be created.
    #[error("cannot create the directory {path} for the state database")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The database file could not be opened or configured (pragmas).
    #[error("cannot open the state database {path}")]
    Open {
        /// The database file.
        path: PathBuf,
        /// Why.
        #[source]
        source: rusqlite::Error,
    },
    /// The connection pool over the database could not be built.
    #[error("cannot build the connection pool of the state database {path}")]
    OpenPool {
        /// The database file.
        path: PathBuf,
        /// Why.
        #[source]
        source: r2d2::Error,
    },
    /// SQLite refused write-ahead logging (e.g. a filesystem without shared memory).
    #[error(
        "the state database {path} cannot use WAL journaling (SQLite kept journal mode `{mode}`)"
    )]
    WalUnavailable {
        /// The database file.
        path: PathBuf,
        /// The journal mode SQLite reported instead of `wal`.
        mode: String,
    },
    /// The database was written by a newer banger whose schema this one does not know.
    #[error(
        "the state database {path} has schema version {found}, newer than the {supported} this banger knows; upgrade banger"
    )]
    TooNew {
        /// The database file.
        path: PathBuf,
        /// Schema version found in the file.
        found: usize,
        /// Latest version this build knows ([`LATEST_VERSION`](crate::migrations::LATEST_VERSION)).
        supported: usize,
    },
    /// A schema migration failed; the database stays at its previous version.
    #[error("cannot migrate the state database {path}")]
    Migrate {
        /// The database file.
        path: PathBuf,
        /// Why.
        #[source]
        source: rusqlite_migration::Error,
    },
    /// A unique value is already taken by another record.
    #[error("{what} `{value}` is already in use")]
    Conflict {
        /// Which value: `"id"`, `"name"`, `"ip"`, `"mac"` or `"vsock_cid"`.
        what: &'static str,
        /// The value that collided.
        value: String,
    },
    /// An image cannot be deleted while VMs use it.
    #[error("image `{image}` is used by VMs: {}", vms.join(", "))]
    InUse {
        /// The image's name.
        image: String,
        /// Names of the VMs that use it, sorted.
        vms: Vec<String>,
    },
    /// The record to change, or a record it refers to, does not exist.
    #[error("{kind} `{id}` does not exist")]
    NotFound {
        /// Kind of the missing record.
        kind: RecordKind,
        /// Its id.
        id: String,
    },
    /// A stored row cannot be decoded into a record.
    #[error("row `{id}` of table `{table}` is corrupt: {reason}")]
    Corrupt {
        /// The table.
        table: &'static str,
        /// The row's id as stored.
        id: String,
        /// What is wrong with it (which column, which value).
        reason: String,
    },
    /// A number in a record is larger than SQLite's signed 64-bit integers can hold.
    #[error("{field} = {value} is too large to store")]
    TooLarge {
        /// The record field.
        field: &'static str,
        /// Its value.
        value: u64,
    },
    /// A path in a record is not valid UTF-8, so it cannot be stored as text.
    #[error("{field} path {} is not valid UTF-8", path.display())]
    NonUtf8Path {
        /// The record field.
        field: &'static str,
        /// The path.
        path: PathBuf,
    },
    /// A value could not be serialized to JSON for storage.
    #[error("cannot encode {field} as JSON")]
    Encode {
        /// The record field.
        field: &'static str,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// Any other SQLite failure.
    #[error("state database query failed")]
    Sqlite(#[from] rusqlite::Error),
    /// No pooled connection became available in time.
    #[error("no connection to the state database became available")]
    Pool(#[from] r2d2::Error),
}

/// The constraint a failed statement violated, as far as the store cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Violation {
    /// UNIQUE or PRIMARY KEY on `table.column`.
    Unique { column: String },
    /// A FOREIGN KEY constraint (SQLite does not say which).
    ForeignKey,
}

/// Classifies a constraint violation by its extended result code and, for UNIQUE, the column
/// SQLite names in its message (`UNIQUE constraint failed: vms.ip`).
pub(crate) fn violation(err: &rusqlite::Error) -> Option<Violation> {
    let rusqlite::Error::SqliteFailure(code, message) = err else {
        return None;
    };
    match code.extended_code {
        ffi::SQLITE_CONSTRAINT_UNIQUE | ffi::SQLITE_CONSTRAINT_PRIMARYKEY => {
            let columns = message.as_deref()?.split_once("constraint failed: ")?.1;
            // A composite constraint lists `t.a, t.b`; the store has none, take the first.
            let first = columns.split(',').next()?.trim();
            let column = first.rsplit_once('.').map_or(first, |(_, column)| column);
            Some(Violation::Unique {
                column: column.to_string(),
            })
        }
        ffi::SQLITE_CONSTRAINT_FOREIGNKEY => Some(Violation::ForeignKey),
        _ => None,
    }
}

/// Turns a failed write into the error the caller can act on: a UNIQUE violation on a column
/// `unique` knows becomes [`StoreError::Conflict`] (with the value from the record being
/// written), a foreign-key violation becomes whatever `foreign_key` says, anything else stays
/// a SQLite error.
pub(crate) fn write_error(
    err: rusqlite::Error,
    unique: impl FnOnce(&str) -> Option<(&'static str, String)>,
    foreign_key: impl FnOnce() -> StoreError,
) -> StoreError {
    match violation(&err) {
        Some(Violation::Unique { column }) => match unique(&column) {
            Some((what, value)) => StoreError::Conflict { what, value },
            None => StoreError::Sqlite(err),
        },
        Some(Violation::ForeignKey) => foreign_key(),
        None => StoreError::Sqlite(err),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn failure(extended_code: i32, message: &str) -> rusqlite::Error {
        rusqlite::Error::SqliteFailure(ffi::Error::new(extended_code), Some(message.to_string()))
    }

    #[test]
    fn unique_violation_names_the_column_without_its_table() {
        let err = failure(
            ffi::SQLITE_CONSTRAINT_UNIQUE,
            "UNIQUE constraint failed: vms.vsock_cid",
        );
        assert_eq!(
            violation(&err),
            Some(Violation::Unique {
                column: "vsock_cid".into()
            })
        );
        let err = failure(
            ffi::SQLITE_CONSTRAINT_PRIMARYKEY,
            "UNIQUE constraint failed: images.id",
        );
        assert_eq!(
            violation(&err),
            Some(Violation::Unique {
                column: "id".into()
            })
        );
    }

    #[test]
    fn other_constraints_are_not_conflicts() {
        let err = failure(
            ffi::SQLITE_CONSTRAINT_CHECK,
            "CHECK constraint failed: vcpus > 0",
        );
        assert_eq!(violation(&err), None);
        let err = failure(
            ffi::SQLITE_CONSTRAINT_FOREIGNKEY,
            "FOREIGN KEY constraint failed",
        );
        assert_eq!(violation(&err), Some(Violation::ForeignKey));
    }

    #[test]
    fn unknown_unique_column_stays_a_sqlite_error() {
        let err = failure(
            ffi::SQLITE_CONSTRAINT_UNIQUE,
            "UNIQUE constraint failed: vms.other",
        );
        let mapped = write_error(err, |_| None, || unreachable!());
        assert!(matches!(mapped, StoreError::Sqlite(_)));
    }
}

//! banger's durable state: images and VMs in one SQLite file.
//!
//! The daemon owns exactly one [`Store`]. It holds what a VM *is* — identity, spec, image,
//! derived paths, desired and last known state, last error, stage timings — and never kernel or
//! process handles (pid, tap, vsock socket, loop devices): those are rediscovered from the OS.
//!
//! - [`store`]: opening, connection settings (WAL, `busy_timeout`, foreign keys), the pool and
//!   the write lock that serializes writers.
//! - [`migrations`]: the schema as versioned `rusqlite_migration` steps.
//! - [`records`]: [`ImageRecord`] and [`VmRecord`], the rows as Rust values.
//! - port forwards ([`PortForwardRecord`]): host port -> guest port of a VM, gone with the VM.
//! - image updates and the image build cache (`image_builds`): see `Store::update_image_artifacts`
//!   and `Store::built_image`.
//! - [`StoreError`]: what failed, classified (conflict on which column, in use by which VMs,
//!   not found, corrupt row) so callers map it to API errors without reading SQLite messages.

mod codec;
mod error;
mod image_builds;
mod images;
pub mod migrations;
mod ports;
pub mod records;
pub mod store;
mod vms;

pub use error::{RecordKind, StoreError};
pub use migrations::{schema_version, LATEST_VERSION};
pub use ports::PortForwardRecord;
pub use records::{ImageRecord, VmRecord};
pub use store::Store;

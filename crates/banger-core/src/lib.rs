//! banger's VM lifecycle engine.
//!
//! - [`manager`]: the [`Manager`], one actor task per VM, staged create/start/stop/delete,
//!   startup reconcile.
//! - [`backends`]: the plug points (disks, network, guest agent; the VMM trait lives in
//!   `banger-vmm`) and [`fakes`] of each for tests.
//! - [`ops`]: long operations with timed stages, polled or streamed.
//! - [`alloc`], [`names`], [`handles`]: identities, readable names, transient handles.
//! - [`stats`]: per-VM sample rings and rates for the daemon's stats loop.
//! - [`images`]: register, promote, bootstrap (Debian), build-from-image, derived artifacts.

pub mod alloc;
pub mod backends;
pub mod disks;
pub mod error;
pub mod fakes;
pub mod handles;
pub mod images;
pub mod kernel;
pub mod manager;
pub mod names;
pub mod ops;
pub mod ports;
pub mod stats;

pub use backends::{
    AgentHealth, Backends, BoxError, DiskCheckError, GuestAgent, GuestCommand, NetAttachment,
    NoNetwork, PreparedDisks, PublishError, RunningVm, VmDisks, VmNetwork,
};
pub use error::CoreError;
pub use manager::{Manager, ManagerSettings};
pub use ops::{OpTracker, Operations};

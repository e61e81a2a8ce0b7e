//! banger's VM network, the real implementation of `banger_core::VmNetwork`.
//!
//! - [`bridge`]: [`BridgeNetwork`] — bridge + gateway, warm tap pool, banger's nftables table,
//!   attach/detach, startup reconcile and the periodic orphan sweep.
//! - [`dns`]: the responder on the gateway (`NAME.<domain>` A/PTR, the rest relayed upstream).
//! - [`proxy`]: port forwards as a userspace TCP/UDP proxy from the daemon's namespace into the
//!   VMs' namespace.
//! - [`netns`]: sockets created inside the VMs' namespace from a short-lived thread.
//!
//! Every link and rule goes through the `banger_host` [`Links`](banger_host::links::Links) and
//! [`Nft`](banger_host::nft::Nft) traits, so the unit tests drive all of it with the recording
//! fakes; the sockets (DNS, proxy) are exercised on loopback.

pub mod bridge;
pub mod dns;
pub mod netns;
pub mod proxy;

pub use bridge::{BridgeNetwork, DnsSettings, NetError, NetworkSettings};
pub use dns::{DnsTable, Upstreams};
pub use netns::Netns;
pub use proxy::PortProxy;

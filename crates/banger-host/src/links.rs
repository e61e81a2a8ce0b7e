//! Network links banger owns: the VM bridge, the taps attached to it, and the namespace's
//! `ip_forward` switch.
//!
//! [`Links`] is the narrow interface the daemon uses; [`RealLinks`] implements it over netlink
//! (rtnetlink, never by parsing `ip` output) plus the `/dev/net/tun` ioctls that make a persistent
//! tap, and [`FakeLinks`] is an in-memory recording stand-in (compiled always) that can be told to
//! fail a call.
//!
//! # Namespaces
//!
//! Every object lives in one network namespace chosen at construction: `None` is the namespace of
//! the calling thread, `Some(name)` is the named namespace `/run/netns/NAME` (create it with
//! [`ensure_netns`]). The tokio worker threads never change namespace. Namespace-bound work runs on
//! a dedicated short-lived OS thread that `setns(CLONE_NEWNET)`s into the namespace, does the
//! work, and exits, so the namespace switch dies with it:
//!
//! ```text
//!   tokio task ──spawn──▶ thread "banger-netns": setns(/run/netns/NAME)
//!        │                  ├─ socket(NETLINK_ROUTE) ─▶ stays bound to NAME; returned
//!        │                  ├─ open(/dev/net/tun) + TUNSETIFF ─▶ tap created in NAME
//!        │                  └─ open(/proc/sys/net/ipv4/ip_forward) ─▶ NAME's value
//!        ◀── oneshot result ─┘ (thread exits)
//! ```
//!
//! A netlink socket keeps the namespace it was created in, so only its creation runs on that
//! thread; the requests themselves are driven from the caller's task. Each trait call opens one
//! netlink connection and drops it at the end of the call (the connection task then finishes), so
//! a `RealLinks` holds no socket and is cheap to clone and safe to use from any runtime.
//!
//! # Ownership
//!
//! `RealLinks` creates and deletes; it does not remember what it created. The caller (the daemon's
//! tap pool and its orphan sweep) owns every link and removes it. The one rollback done here is
//! inside [`Links::create_tap`]: a tap that could not be attached to its bridge is deleted again
//! before the error is returned.

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use futures::TryStreamExt;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{
    LinkAttribute, LinkFlags, LinkInfo as NlLinkInfo, LinkMessage,
};
use rtnetlink::{LinkBridge, LinkUnspec};
use serde::{Deserialize, Serialize};

use crate::exec::{self, CommandError, CommandSpec};

/// Where `ip netns` keeps its named namespaces (fixed by iproute2).
pub const DEFAULT_NETNS_DIR: &str = "/run/netns";
/// The tun/tap clone device.
pub const DEFAULT_TUN_DEVICE: &str = "/dev/net/tun";
/// The IPv4 forwarding switch; per network namespace, resolved in the namespace that opens it.
pub const DEFAULT_IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

/// How long `ip netns add/delete` may take.
const NETNS_COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

/// One network link as netlink reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkInfo {
    /// Interface name.
    pub name: String,
    /// Interface index (unique within the namespace).
    pub index: u32,
    /// The driver kind, e.g. `bridge` or `tun`; `None` for devices without one (loopback, most
    /// physical NICs).
    pub kind: Option<String>,
    /// The bridge (or other controller) this link is attached to.
    pub master: Option<String>,
    /// Administratively up (`IFF_UP`).
    pub up: bool,
}

/// A link's traffic counters, from the kernel's 64-bit link statistics (the link's own view:
/// for a tap, `rx` is what the guest sent).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkCounters {
    /// Bytes received by the link.
    pub rx_bytes: u64,
    /// Bytes transmitted by the link.
    pub tx_bytes: u64,
    /// Packets received.
    pub rx_packets: u64,
    /// Packets transmitted.
    pub tx_packets: u64,
}

/// Why a link operation failed.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The interface or namespace name cannot be used.
    #[error("invalid name {name:?}: {reason}")]
    InvalidName {
        /// The rejected name.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// An IPv4 prefix length over 32.
    #[error("invalid prefix length /{prefix} for {address}")]
    InvalidPrefix {
        /// The address it was given with.
        address: Ipv4Addr,
        /// The rejected length.
        prefix: u8,
    },
    /// A link of that name is already there.
    #[error("link {name} already exists")]
    Exists {
        /// The link name.
        name: String,
    },
    /// A link the operation needs is not there.
    #[error("link {name} does not exist")]
    NotFound {
        /// The link name.
        name: String,
    },
    /// `ensure_bridge` found a link of that name that is not a bridge.
    #[error("link {name} exists but is {}, not a bridge", kind.as_deref().map_or("a device without a kind".to_string(), |k| format!("a {k} device")))]
    NotABridge {
        /// The link name.
        name: String,
        /// What it is instead.
        kind: Option<String>,
    },
    /// `/run/netns/NAME` could not be opened or entered.
    #[error("could not enter network namespace {netns} ({})", path.display())]
    EnterNetns {
        /// The namespace name.
        netns: String,
        /// Its bind-mount.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
    /// The thread that does namespace-bound work could not be started.
    #[error("could not start a thread for network namespace {netns}")]
    SpawnNetnsThread {
        /// The namespace name.
        netns: String,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
    /// The namespace thread ended without a result (it panicked).
    #[error("the thread working in network namespace {netns} died without a result")]
    NetnsThreadDied {
        /// The namespace name.
        netns: String,
    },
    /// A netlink socket could not be opened.
    #[error("could not open a netlink socket in {scope}")]
    NetlinkSocket {
        /// The namespace, as "netns NAME" or "the current namespace".
        scope: String,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
    /// A netlink request was refused.
    #[error("netlink: could not {action} in {scope}")]
    Netlink {
        /// What was being done, e.g. "add bridge br0".
        action: String,
        /// The namespace, as "netns NAME" or "the current namespace".
        scope: String,
        /// The kernel's answer.
        #[source]
        source: rtnetlink::Error,
    },
    /// A step of making a persistent tap through `/dev/net/tun` failed.
    #[error("could not create tap {name} in {scope}: {step} failed")]
    Tap {
        /// The tap name.
        name: String,
        /// The namespace, as "netns NAME" or "the current namespace".
        scope: String,
        /// Which step (open, TUNSETIFF, TUNSETPERSIST).
        step: &'static str,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
    /// Reading or writing the `ip_forward` switch failed.
    #[error("could not {access} {} in {scope}", path.display())]
    IpForward {
        /// "read" or "write".
        access: &'static str,
        /// The file.
        path: PathBuf,
        /// The namespace, as "netns NAME" or "the current namespace".
        scope: String,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
    /// The `ip_forward` file held something other than 0 or 1.
    #[error("{} holds {content:?}, expected 0 or 1", path.display())]
    IpForwardContent {
        /// The file.
        path: PathBuf,
        /// What it held.
        content: String,
    },
    /// `ip netns add` or `ip netns delete` failed.
    #[error("could not {action} network namespace {netns}")]
    NetnsCommand {
        /// "create" or "delete".
        action: &'static str,
        /// The namespace name.
        netns: String,
        /// The command's failure.
        #[source]
        source: CommandError,
    },
    /// A failure a [`FakeLinks`] was told to produce.
    #[error("injected failure of {op:?}")]
    Injected {
        /// The operation that was told to fail.
        op: LinkOp,
    },
}

/// The link operations, named for failure injection in [`FakeLinks`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum LinkOp {
    /// [`Links::ensure_bridge`].
    EnsureBridge,
    /// [`Links::create_tap`].
    CreateTap,
    /// [`Links::delete_link`].
    DeleteLink,
    /// [`Links::list_links`].
    ListLinks,
    /// [`Links::set_ip_forward`].
    SetIpForward,
    /// [`Links::ip_forward`].
    IpForward,
}

/// The bridge, taps and forwarding switch of one network namespace.
#[async_trait]
pub trait Links: Send + Sync {
    /// Makes sure bridge `name` exists, carries `gateway/prefix` and is up. Idempotent; an existing
    /// link of that name that is not a bridge is an error.
    async fn ensure_bridge(
        &self,
        name: &str,
        gateway: Ipv4Addr,
        prefix: u8,
    ) -> Result<(), LinkError>;

    /// Creates persistent tap `name` (`IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`, the flags Firecracker
    /// and QEMU open it with), attaches it to `bridge` and sets it up. A link of that name already
    /// there is [`LinkError::Exists`]; a missing bridge is [`LinkError::NotFound`].
    async fn create_tap(&self, name: &str, bridge: &str) -> Result<(), LinkError>;

    /// Deletes link `name`; a link that is not there is success.
    async fn delete_link(&self, name: &str) -> Result<(), LinkError>;

    /// Every link of the namespace, by index.
    async fn list_links(&self) -> Result<Vec<LinkInfo>, LinkError>;

    /// The traffic counters of link `name`; `None` when there is no such link.
    async fn link_counters(&self, name: &str) -> Result<Option<LinkCounters>, LinkError>;

    /// Turns IPv4 forwarding of the namespace on or off.
    fn set_ip_forward(&self, enabled: bool) -> Result<(), LinkError>;

    /// Whether IPv4 forwarding of the namespace is on.
    fn ip_forward(&self) -> Result<bool, LinkError>;
}

/// Why `name` cannot be an interface name, mirroring the kernel's `dev_valid_name`.
pub(crate) fn ifname_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("empty")
    } else if name.len() > 15 {
        Some("longer than 15 bytes (IFNAMSIZ)")
    } else if name == "." || name == ".." {
        Some("reserved")
    } else if name
        .chars()
        .any(|c| c == '/' || c == ':' || c == '\0' || c.is_whitespace())
    {
        Some("contains '/', ':', NUL or whitespace")
    } else {
        None
    }
}

fn check_ifname(name: &str) -> Result<(), LinkError> {
    match ifname_problem(name) {
        Some(reason) => Err(LinkError::InvalidName {
            name: name.to_string(),
            reason,
        }),
        None => Ok(()),
    }
}

fn check_netns_name(name: &str) -> Result<(), LinkError> {
    let reason = if name.is_empty() {
        Some("empty")
    } else if name == "." || name == ".." {
        Some("reserved")
    } else if name.contains(['/', '\0']) {
        Some("contains '/' or NUL")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(LinkError::InvalidName {
            name: name.to_string(),
            reason,
        }),
        None => Ok(()),
    }
}

/// Creates network namespace `name` (`ip netns add`) unless `/run/netns/NAME` is already there.
pub async fn ensure_netns(name: &str) -> Result<(), LinkError> {
    check_netns_name(name)?;
    if Path::new(DEFAULT_NETNS_DIR).join(name).exists() {
        return Ok(());
    }
    let spec = CommandSpec::new("ip")
        .args(["netns", "add", name])
        .timeout(NETNS_COMMAND_TIMEOUT);
    match exec::execute(&spec).await {
        Ok(_) => Ok(()),
        // Lost a race with another creator: the namespace is there, which is all we wanted.
        Err(_) if Path::new(DEFAULT_NETNS_DIR).join(name).exists() => Ok(()),
        Err(source) => Err(LinkError::NetnsCommand {
            action: "create",
            netns: name.to_string(),
            source,
        }),
    }
}

/// Deletes network namespace `name` (`ip netns delete`); a missing one is success.
pub async fn delete_netns(name: &str) -> Result<(), LinkError> {
    check_netns_name(name)?;
    if !Path::new(DEFAULT_NETNS_DIR).join(name).exists() {
        return Ok(());
    }
    let spec = CommandSpec::new("ip")
        .args(["netns", "delete", name])
        .timeout(NETNS_COMMAND_TIMEOUT);
    match exec::execute(&spec).await {
        Ok(_) => Ok(()),
        Err(_) if !Path::new(DEFAULT_NETNS_DIR).join(name).exists() => Ok(()),
        Err(source) => Err(LinkError::NetnsCommand {
            action: "delete",
            netns: name.to_string(),
            source,
        }),
    }
}

/// Host paths [`RealLinks`] uses; the defaults are the real ones, tests may point them elsewhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkPaths {
    /// Directory holding named namespaces' bind-mounts.
    pub netns_dir: PathBuf,
    /// The tun clone device.
    pub tun_device: PathBuf,
    /// The IPv4 forwarding switch (opened from inside the namespace).
    pub ip_forward: PathBuf,
}

impl Default for LinkPaths {
    fn default() -> Self {
        Self {
            netns_dir: PathBuf::from(DEFAULT_NETNS_DIR),
            tun_device: PathBuf::from(DEFAULT_TUN_DEVICE),
            ip_forward: PathBuf::from(DEFAULT_IP_FORWARD),
        }
    }
}

/// [`Links`] over netlink and `/dev/net/tun`, in one network namespace.
#[derive(Debug, Clone)]
pub struct RealLinks {
    netns: Option<String>,
    paths: LinkPaths,
}

impl RealLinks {
    /// Links in `netns` (`None`: the current namespace) at the default host paths.
    pub fn new(netns: Option<String>) -> Self {
        Self::with_paths(netns, LinkPaths::default())
    }

    /// Links in `netns` with explicit host paths.
    pub fn with_paths(netns: Option<String>, paths: LinkPaths) -> Self {
        Self { netns, paths }
    }

    /// The namespace these links live in (`None`: the current one).
    pub fn netns(&self) -> Option<&str> {
        self.netns.as_deref()
    }

    fn scope(&self) -> String {
        match &self.netns {
            Some(netns) => format!("netns {netns}"),
            None => "the current namespace".to_string(),
        }
    }

    fn open_netns(&self, netns: &str) -> Result<File, LinkError> {
        check_netns_name(netns)?;
        let path = self.paths.netns_dir.join(netns);
        File::open(&path).map_err(|source| LinkError::EnterNetns {
            netns: netns.to_string(),
            path,
            source,
        })
    }

    /// Runs `work` inside this namespace without blocking the async runtime: inline for the
    /// current namespace, else on a fresh thread that enters the namespace and then exits.
    async fn in_netns<T, F>(&self, work: F) -> Result<T, LinkError>
    where
        T: Send + 'static,
        F: FnOnce() -> Result<T, LinkError> + Send + 'static,
    {
        let Some(netns) = &self.netns else {
            return work();
        };
        let ns_file = self.open_netns(netns)?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let (name, path) = (netns.clone(), self.paths.netns_dir.join(netns));
        std::thread::Builder::new()
            .name("banger-netns".to_string())
            .spawn(move || {
                let result = enter_netns(&ns_file)
                    .map_err(|source| LinkError::EnterNetns {
                        netns: name,
                        path,
                        source,
                    })
                    .and_then(|()| work());
                // The receiver is gone only if the caller was cancelled; nobody wants the result.
                let _ = tx.send(result);
            })
            .map_err(|source| LinkError::SpawnNetnsThread {
                netns: netns.clone(),
                source,
            })?;
        rx.await.map_err(|_| LinkError::NetnsThreadDied {
            netns: netns.clone(),
        })?
    }

    /// The blocking twin of [`Self::in_netns`], for the synchronous trait methods.
    fn in_netns_blocking<T, F>(&self, work: F) -> Result<T, LinkError>
    where
        T: Send,
        F: FnOnce() -> Result<T, LinkError> + Send,
    {
        let Some(netns) = &self.netns else {
            return work();
        };
        let ns_file = self.open_netns(netns)?;
        let path = self.paths.netns_dir.join(netns);
        std::thread::scope(|scope| {
            let worker = std::thread::Builder::new()
                .name("banger-netns".to_string())
                .spawn_scoped(scope, || {
                    enter_netns(&ns_file)
                        .map_err(|source| LinkError::EnterNetns {
                            netns: netns.clone(),
                            path,
                            source,
                        })
                        .and_then(|()| work())
                })
                .map_err(|source| LinkError::SpawnNetnsThread {
                    netns: netns.clone(),
                    source,
                })?;
            worker.join().map_err(|_| LinkError::NetnsThreadDied {
                netns: netns.clone(),
            })?
        })
    }

    /// Opens a netlink connection bound to this namespace; it lives until the handle is dropped.
    async fn netlink(&self) -> Result<rtnetlink::Handle, LinkError> {
        let runtime = tokio::runtime::Handle::current();
        let scope = self.scope();
        let (connection, handle, _unsolicited) = self
            .in_netns(move || {
                // The socket registers with the caller's reactor, from whichever thread makes it.
                let _entered = runtime.enter();
                rtnetlink::new_connection()
                    .map_err(|source| LinkError::NetlinkSocket { scope, source })
            })
            .await?;
        tokio::spawn(connection);
        Ok(handle)
    }

    fn netlink_error(
        &self,
        action: impl Into<String>,
    ) -> impl FnOnce(rtnetlink::Error) -> LinkError {
        let (action, scope) = (action.into(), self.scope());
        move |source| LinkError::Netlink {
            action,
            scope,
            source,
        }
    }

    async fn add_bridge(&self, handle: &rtnetlink::Handle, name: &str) -> Result<(), LinkError> {
        match handle
            .link()
            .add(LinkBridge::new(name).build())
            .execute()
            .await
        {
            // Someone else made it between our look-up and our add; the kind is checked after.
            Err(err) if errno(&err) == Some(libc::EEXIST) => Ok(()),
            other => other.map_err(self.netlink_error(format!("add bridge {name}"))),
        }
    }

    /// Pins the bridge's MAC to [`gateway_mac`]. A bridge without an assigned address takes the
    /// lowest of its ports' and changes it as taps come and go, and every guest that cached the
    /// gateway's old MAC in its ARP table is cut off from it until the entry expires. A bridge
    /// with a port that is not a tap (a physical NIC: the user pointed `network.bridge` at a LAN
    /// bridge) is left as it is: its MAC is the host's identity on that LAN.
    async fn ensure_mac(
        &self,
        handle: &rtnetlink::Handle,
        bridge: &str,
        link: &LinkMessage,
        gateway: Ipv4Addr,
    ) -> Result<(), LinkError> {
        let wanted = gateway_mac(gateway);
        let current = link
            .attributes
            .iter()
            .find_map(|attribute| match attribute {
                LinkAttribute::Address(address) => Some(address.as_slice()),
                _ => None,
            });
        if current == Some(wanted.as_slice()) {
            return Ok(());
        }
        let links: Vec<LinkMessage> = handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(self.netlink_error(format!("list the ports of bridge {bridge}")))?;
        let foreign_port = links.iter().any(|port| {
            link_master(port) == Some(link.header.index)
                && link_kind(port).as_deref() != Some("tun")
        });
        if foreign_port {
            tracing::warn!(%bridge, "bridge has ports other than taps; its MAC is left alone");
            return Ok(());
        }
        handle
            .link()
            .set(
                LinkUnspec::new_with_index(link.header.index)
                    .address(wanted.to_vec())
                    .build(),
            )
            .execute()
            .await
            .map_err(self.netlink_error(format!("set the MAC address of bridge {bridge}")))
    }

    async fn ensure_address(
        &self,
        handle: &rtnetlink::Handle,
        bridge: &str,
        index: u32,
        gateway: Ipv4Addr,
        prefix: u8,
    ) -> Result<(), LinkError> {
        let addresses: Vec<_> = handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_collect()
            .await
            .map_err(self.netlink_error(format!("list addresses of {bridge}")))?;
        let present = addresses.iter().any(|message| {
            message.header.prefix_len == prefix
                && message.attributes.iter().any(|attribute| {
                    matches!(attribute, AddressAttribute::Local(IpAddr::V4(a)) | AddressAttribute::Address(IpAddr::V4(a)) if *a == gateway)
                })
        });
        if present {
            return Ok(());
        }
        match handle
            .address()
            .add(index, IpAddr::V4(gateway), prefix)
            .execute()
            .await
        {
            Err(err) if errno(&err) == Some(libc::EEXIST) => Ok(()),
            other => other
                .map_err(self.netlink_error(format!("add address {gateway}/{prefix} to {bridge}"))),
        }
    }

    async fn set_up(
        &self,
        handle: &rtnetlink::Handle,
        name: &str,
        index: u32,
        master: Option<u32>,
    ) -> Result<(), LinkError> {
        let mut message = LinkUnspec::new_with_index(index).up();
        if let Some(master) = master {
            message = message.controller(master);
        }
        let action = match master {
            Some(_) => format!("attach {name} to its bridge and set it up"),
            None => format!("set {name} up"),
        };
        handle
            .link()
            .set(message.build())
            .execute()
            .await
            .map_err(self.netlink_error(action))
    }

    async fn attach_tap(
        &self,
        handle: &rtnetlink::Handle,
        name: &str,
        bridge_index: u32,
    ) -> Result<(), LinkError> {
        let tap = find_link(handle, name)
            .await
            .map_err(self.netlink_error(format!("look up tap {name}")))?
            .ok_or_else(|| LinkError::NotFound {
                name: name.to_string(),
            })?;
        self.set_up(handle, name, tap.header.index, Some(bridge_index))
            .await
    }
}

#[async_trait]
impl Links for RealLinks {
    async fn ensure_bridge(
        &self,
        name: &str,
        gateway: Ipv4Addr,
        prefix: u8,
    ) -> Result<(), LinkError> {
        check_ifname(name)?;
        if prefix > 32 {
            return Err(LinkError::InvalidPrefix {
                address: gateway,
                prefix,
            });
        }
        let handle = self.netlink().await?;
        let lookup = self.netlink_error(format!("look up bridge {name}"));
        let existing = find_link(&handle, name).await.map_err(lookup)?;
        if existing.is_none() {
            self.add_bridge(&handle, name).await?;
        }
        let bridge = find_link(&handle, name)
            .await
            .map_err(self.netlink_error(format!("look up bridge {name}")))?
            .ok_or_else(|| LinkError::NotFound {
                name: name.to_string(),
            })?;
        let kind = link_kind(&bridge);
        if kind.as_deref() != Some("bridge") {
            return Err(LinkError::NotABridge {
                name: name.to_string(),
                kind,
            });
        }
        self.ensure_mac(&handle, name, &bridge, gateway).await?;
        self.ensure_address(&handle, name, bridge.header.index, gateway, prefix)
            .await?;
        if !bridge.header.flags.contains(LinkFlags::Up) {
            self.set_up(&handle, name, bridge.header.index, None)
                .await?;
        }
        tracing::debug!(bridge = name, %gateway, prefix, scope = %self.scope(), "bridge ensured");
        Ok(())
    }

    async fn create_tap(&self, name: &str, bridge: &str) -> Result<(), LinkError> {
        check_ifname(name)?;
        check_ifname(bridge)?;
        let handle = self.netlink().await?;
        let bridge_link = find_link(&handle, bridge)
            .await
            .map_err(self.netlink_error(format!("look up bridge {bridge}")))?
            .ok_or_else(|| LinkError::NotFound {
                name: bridge.to_string(),
            })?;
        let kind = link_kind(&bridge_link);
        if kind.as_deref() != Some("bridge") {
            return Err(LinkError::NotABridge {
                name: bridge.to_string(),
                kind,
            });
        }

        let (tun_device, tap, scope) = (
            self.paths.tun_device.clone(),
            name.to_string(),
            self.scope(),
        );
        self.in_netns(move || create_persistent_tap(&tun_device, &tap, &scope))
            .await?;

        if let Err(err) = self
            .attach_tap(&handle, name, bridge_link.header.index)
            .await
        {
            // Roll back: a tap we made but could not attach must not be left behind.
            if let Err(cleanup) = self.delete_link(name).await {
                tracing::warn!(tap = name, error = %cleanup, "could not remove half-created tap");
            }
            return Err(err);
        }
        tracing::debug!(tap = name, bridge, scope = %self.scope(), "tap created");
        Ok(())
    }

    async fn delete_link(&self, name: &str) -> Result<(), LinkError> {
        check_ifname(name)?;
        let handle = self.netlink().await?;
        let Some(link) = find_link(&handle, name)
            .await
            .map_err(self.netlink_error(format!("look up link {name}")))?
        else {
            return Ok(());
        };
        match handle.link().del(link.header.index).execute().await {
            Err(err) if errno(&err) == Some(libc::ENODEV) => Ok(()),
            other => other.map_err(self.netlink_error(format!("delete link {name}"))),
        }
    }

    async fn list_links(&self) -> Result<Vec<LinkInfo>, LinkError> {
        let handle = self.netlink().await?;
        let messages: Vec<LinkMessage> = handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(self.netlink_error("list links"))?;
        Ok(link_infos(&messages))
    }

    async fn link_counters(&self, name: &str) -> Result<Option<LinkCounters>, LinkError> {
        check_ifname(name)?;
        let handle = self.netlink().await?;
        let link = find_link(&handle, name)
            .await
            .map_err(self.netlink_error(format!("read the counters of {name}")))?;
        Ok(link.map(|message| {
            message
                .attributes
                .iter()
                .find_map(|attribute| match attribute {
                    LinkAttribute::Stats64(stats) => Some(LinkCounters {
                        rx_bytes: stats.rx_bytes,
                        tx_bytes: stats.tx_bytes,
                        rx_packets: stats.rx_packets,
                        tx_packets: stats.tx_packets,
                    }),
                    _ => None,
                })
                .unwrap_or_default()
        }))
    }

    fn set_ip_forward(&self, enabled: bool) -> Result<(), LinkError> {
        let (path, scope) = (&self.paths.ip_forward, self.scope());
        self.in_netns_blocking(|| {
            std::fs::write(path, if enabled { "1\n" } else { "0\n" }).map_err(|source| {
                LinkError::IpForward {
                    access: "write",
                    path: path.clone(),
                    scope,
                    source,
                }
            })
        })
    }

    fn ip_forward(&self) -> Result<bool, LinkError> {
        let (path, scope) = (&self.paths.ip_forward, self.scope());
        let content = self.in_netns_blocking(|| {
            std::fs::read_to_string(path).map_err(|source| LinkError::IpForward {
                access: "read",
                path: path.clone(),
                scope,
                source,
            })
        })?;
        match content.trim() {
            "0" => Ok(false),
            "1" => Ok(true),
            other => Err(LinkError::IpForwardContent {
                path: path.clone(),
                content: other.to_string(),
            }),
        }
    }
}

/// Moves the calling thread into the network namespace `ns` refers to.
fn enter_netns(ns: &File) -> io::Result<()> {
    // SAFETY: setns only reads the descriptor, which `ns` keeps open for the duration of the call.
    // CLONE_NEWNET switches the network namespace of the calling thread alone; callers only do
    // this on a dedicated thread that exits when its work is done.
    let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Creates persistent tap `name` in the namespace of the calling thread (the namespace a
/// `/dev/net/tun` file is opened in is the one its device is created in).
fn create_persistent_tap(tun_device: &Path, name: &str, scope: &str) -> Result<(), LinkError> {
    let fail = |step: &'static str| {
        move |source: io::Error| LinkError::Tap {
            name: name.to_string(),
            scope: scope.to_string(),
            step,
            source,
        }
    };
    let tun = OpenOptions::new()
        .read(true)
        .write(true)
        .open(tun_device)
        .map_err(fail("open tun device"))?;

    // SAFETY: `ifreq` is plain old data (a byte array and a union of integers and arrays), for
    // which all-zero bytes are a valid value.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    // `name` passed `check_ifname`: at most 15 bytes, so the last byte of the 16 stays NUL.
    for (slot, byte) in request.ifr_name.iter_mut().zip(name.bytes()) {
        *slot = byte as libc::c_char;
    }
    // IFF_TUN_EXCL makes TUNSETIFF fail with EBUSY when any device of that name exists, instead of
    // silently attaching to an existing tap.
    let flags = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR | libc::IFF_TUN_EXCL;
    request.ifr_ifru.ifru_flags = flags as libc::c_short;

    // SAFETY: `tun` is an open /dev/net/tun descriptor for the whole call, and TUNSETIFF reads and
    // writes exactly one `ifreq`, which `request` is and which outlives the call.
    let rc = unsafe {
        libc::ioctl(
            tun.as_raw_fd(),
            libc::TUNSETIFF,
            &mut request as *mut libc::ifreq,
        )
    };
    if rc < 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EBUSY) {
            return Err(LinkError::Exists {
                name: name.to_string(),
            });
        }
        return Err(fail("TUNSETIFF")(err));
    }
    // SAFETY: `tun` is open and attached to the new tap; TUNSETPERSIST takes its flag by value.
    let rc = unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETPERSIST, 1 as libc::c_ulong) };
    if rc < 0 {
        // Not persistent yet, so closing `tun` (on return) removes the tap: nothing to roll back.
        return Err(fail("TUNSETPERSIST")(io::Error::last_os_error()));
    }
    Ok(())
}

/// The errno of a netlink error answer, if it is one.
fn errno(err: &rtnetlink::Error) -> Option<i32> {
    match err {
        rtnetlink::Error::NetlinkError(message) => Some(message.raw_code().abs()),
        _ => None,
    }
}

/// The link called `name`, or `None` when there is none.
async fn find_link(
    handle: &rtnetlink::Handle,
    name: &str,
) -> Result<Option<LinkMessage>, rtnetlink::Error> {
    match handle
        .link()
        .get()
        .match_name(name)
        .execute()
        .try_next()
        .await
    {
        Ok(link) => Ok(link),
        Err(err) if errno(&err) == Some(libc::ENODEV) => Ok(None),
        Err(err) => Err(err),
    }
}

fn link_name(message: &LinkMessage) -> Option<&str> {
    message
        .attributes
        .iter()
        .find_map(|attribute| match attribute {
            LinkAttribute::IfName(name) => Some(name.as_str()),
            _ => None,
        })
}

/// The bridge's fixed MAC address: locally administered, unicast, `06:00:` and the gateway's
/// four octets — the same scheme as the VMs' MACs, whose addresses never include the gateway's.
pub fn gateway_mac(gateway: Ipv4Addr) -> [u8; 6] {
    let [a, b, c, d] = gateway.octets();
    [0x06, 0x00, a, b, c, d]
}

fn link_kind(message: &LinkMessage) -> Option<String> {
    message
        .attributes
        .iter()
        .find_map(|attribute| match attribute {
            LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|info| match info {
                NlLinkInfo::Kind(kind) => Some(kind.to_string()),
                _ => None,
            }),
            _ => None,
        })
}

fn link_master(message: &LinkMessage) -> Option<u32> {
    message
        .attributes
        .iter()
        .find_map(|attribute| match attribute {
            LinkAttribute::Controller(index) => Some(*index),
            _ => None,
        })
}

fn link_infos(messages: &[LinkMessage]) -> Vec<LinkInfo> {
    let names: HashMap<u32, &str> = messages
        .iter()
        .filter_map(|message| Some((message.header.index, link_name(message)?)))
        .collect();
    let mut infos: Vec<LinkInfo> = messages
        .iter()
        .map(|message| LinkInfo {
            name: link_name(message).unwrap_or_default().to_string(),
            index: message.header.index,
            kind: link_kind(message),
            master: link_master(message).map(|index| match names.get(&index) {
                Some(name) => (*name).to_string(),
                // A controller we did not see in the dump (it went away meanwhile): say which.
                None => format!("#{index}"),
            }),
            up: message.header.flags.contains(LinkFlags::Up),
        })
        .collect();
    infos.sort_by_key(|info| info.index);
    infos
}

/// One call made on a [`FakeLinks`], with its arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkCall {
    /// [`Links::ensure_bridge`].
    EnsureBridge {
        /// Bridge name.
        name: String,
        /// Gateway address.
        gateway: Ipv4Addr,
        /// Prefix length.
        prefix: u8,
    },
    /// [`Links::create_tap`].
    CreateTap {
        /// Tap name.
        name: String,
        /// Bridge name.
        bridge: String,
    },
    /// [`Links::delete_link`].
    DeleteLink {
        /// Link name.
        name: String,
    },
    /// [`Links::list_links`].
    ListLinks,
    /// [`Links::set_ip_forward`].
    SetIpForward {
        /// The value set.
        enabled: bool,
    },
    /// [`Links::ip_forward`].
    IpForward,
}

#[derive(Debug, Default)]
struct FakeLinksState {
    links: BTreeMap<String, LinkInfo>,
    addresses: BTreeMap<String, Vec<(Ipv4Addr, u8)>>,
    next_index: u32,
    ip_forward: bool,
    counters: BTreeMap<String, LinkCounters>,
    calls: Vec<LinkCall>,
    failures: HashMap<LinkOp, usize>,
}

impl FakeLinksState {
    /// Records `call`, then consumes one injected failure of `op` if any is pending.
    fn enter(&mut self, op: LinkOp, call: LinkCall) -> Result<(), LinkError> {
        self.calls.push(call);
        match self.failures.get_mut(&op) {
            Some(pending) if *pending > 0 => {
                *pending -= 1;
                Err(LinkError::Injected { op })
            }
            _ => Ok(()),
        }
    }

    fn insert(&mut self, name: &str, kind: Option<&str>, master: Option<&str>, up: bool) {
        self.next_index += 1;
        let info = LinkInfo {
            name: name.to_string(),
            index: self.next_index,
            kind: kind.map(str::to_string),
            master: master.map(str::to_string),
            up,
        };
        self.links.insert(name.to_string(), info);
    }
}

/// An in-memory [`Links`] that records every call and models the kernel's answers (existing tap,
/// missing bridge, idempotent delete). Its namespace starts with only `lo`.
#[derive(Debug)]
pub struct FakeLinks {
    state: Mutex<FakeLinksState>,
}

impl Default for FakeLinks {
    fn default() -> Self {
        Self::new()
    }
}

impl FakeLinks {
    /// A namespace holding only `lo`, with forwarding off.
    pub fn new() -> Self {
        let mut state = FakeLinksState::default();
        state.insert("lo", None, None, true);
        Self {
            state: Mutex::new(state),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, FakeLinksState> {
        // A panic while holding the lock cannot leave the maps half-updated in a way that matters
        // to a fake, so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Makes the next call of `op` fail with [`LinkError::Injected`] (cumulative: calling this
    /// twice fails the next two calls).
    pub fn fail_next(&self, op: LinkOp) {
        *self.state().failures.entry(op).or_default() += 1;
    }

    /// Every call so far, in order (failed ones included).
    pub fn calls(&self) -> Vec<LinkCall> {
        self.state().calls.clone()
    }

    /// The links now present, by index.
    pub fn links(&self) -> Vec<LinkInfo> {
        let mut links: Vec<LinkInfo> = self.state().links.values().cloned().collect();
        links.sort_by_key(|link| link.index);
        links
    }

    /// The IPv4 addresses on link `name`.
    pub fn addresses(&self, name: &str) -> Vec<(Ipv4Addr, u8)> {
        self.state()
            .addresses
            .get(name)
            .cloned()
            .unwrap_or_default()
    }

    /// Sets what [`Links::link_counters`] reports for link `name` (zeros until set).
    pub fn set_counters(&self, name: &str, counters: LinkCounters) {
        self.state().counters.insert(name.to_string(), counters);
    }

    /// Adds a link as if something else had made it (e.g. a tap left over by a crash).
    pub fn insert_link(&self, name: &str, kind: Option<&str>, master: Option<&str>) {
        self.state().insert(name, kind, master, true);
    }
}

#[async_trait]
impl Links for FakeLinks {
    async fn ensure_bridge(
        &self,
        name: &str,
        gateway: Ipv4Addr,
        prefix: u8,
    ) -> Result<(), LinkError> {
        let mut state = self.state();
        state.enter(
            LinkOp::EnsureBridge,
            LinkCall::EnsureBridge {
                name: name.to_string(),
                gateway,
                prefix,
            },
        )?;
        check_ifname(name)?;
        if prefix > 32 {
            return Err(LinkError::InvalidPrefix {
                address: gateway,
                prefix,
            });
        }
        match state.links.get_mut(name) {
            Some(link) if link.kind.as_deref() == Some("bridge") => link.up = true,
            Some(link) => {
                return Err(LinkError::NotABridge {
                    name: name.to_string(),
                    kind: link.kind.clone(),
                })
            }
            None => state.insert(name, Some("bridge"), None, true),
        }
        let addresses = state.addresses.entry(name.to_string()).or_default();
        if !addresses.contains(&(gateway, prefix)) {
            addresses.push((gateway, prefix));
        }
        Ok(())
    }

    async fn create_tap(&self, name: &str, bridge: &str) -> Result<(), LinkError> {
        let mut state = self.state();
        state.enter(
            LinkOp::CreateTap,
            LinkCall::CreateTap {
                name: name.to_string(),
                bridge: bridge.to_string(),
            },
        )?;
        check_ifname(name)?;
        check_ifname(bridge)?;
        match state.links.get(bridge) {
            None => {
                return Err(LinkError::NotFound {
                    name: bridge.to_string(),
                })
            }
            Some(link) if link.kind.as_deref() != Some("bridge") => {
                return Err(LinkError::NotABridge {
                    name: bridge.to_string(),
                    kind: link.kind.clone(),
                })
            }
            Some(_) => {}
        }
        if state.links.contains_key(name) {
            return Err(LinkError::Exists {
                name: name.to_string(),
            });
        }
        state.insert(name, Some("tun"), Some(bridge), true);
        Ok(())
    }

    async fn delete_link(&self, name: &str) -> Result<(), LinkError> {
        let mut state = self.state();
        state.enter(
            LinkOp::DeleteLink,
            LinkCall::DeleteLink {
                name: name.to_string(),
            },
        )?;
        check_ifname(name)?;
        state.links.remove(name);
        state.addresses.remove(name);
        // Deleting a bridge releases its ports, as the kernel does.
        for link in state.links.values_mut() {
            if link.master.as_deref() == Some(name) {
                link.master = None;
            }
        }
        Ok(())
    }

    async fn list_links(&self) -> Result<Vec<LinkInfo>, LinkError> {
        self.state().enter(LinkOp::ListLinks, LinkCall::ListLinks)?;
        Ok(self.links())
    }

    async fn link_counters(&self, name: &str) -> Result<Option<LinkCounters>, LinkError> {
        let state = self.state();
        Ok(state
            .links
            .contains_key(name)
            .then(|| state.counters.get(name).copied().unwrap_or_default()))
    }

    fn set_ip_forward(&self, enabled: bool) -> Result<(), LinkError> {
        let mut state = self.state();
        state.enter(LinkOp::SetIpForward, LinkCall::SetIpForward { enabled })?;
        state.ip_forward = enabled;
        Ok(())
    }

    fn ip_forward(&self) -> Result<bool, LinkError> {
        let mut state = self.state();
        state.enter(LinkOp::IpForward, LinkCall::IpForward)?;
        Ok(state.ip_forward)
    }
}

#[cfg(test)]
// In tests a panic is the failure report.
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);

    #[test]
    fn interface_names_follow_the_kernel_rules() {
        assert_eq!(ifname_problem("br-banger"), None);
        assert_eq!(
            ifname_problem("tap-0123456789a"),
            None,
            "15 bytes is the maximum"
        );
        assert!(
            ifname_problem("tap-0123456789ab").is_some(),
            "16 bytes is too long"
        );
        for bad in ["", ".", "..", "a/b", "a:b", "a b", "a\tb", "a\0b"] {
            assert!(ifname_problem(bad).is_some(), "{bad:?} should be rejected");
        }
    }

    #[tokio::test]
    async fn real_links_reject_an_invalid_name_before_touching_the_host() {
        let links = RealLinks::new(Some("banger-netns-that-does-not-exist".to_string()));
        let err = links
            .create_tap("far-too-long-tap-name", "br0")
            .await
            .unwrap_err();
        assert!(matches!(err, LinkError::InvalidName { .. }), "{err:?}");
    }

    #[tokio::test]
    async fn a_missing_named_namespace_is_an_enter_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let paths = LinkPaths {
            netns_dir: dir.path().to_path_buf(),
            ..LinkPaths::default()
        };
        let links = RealLinks::with_paths(Some("nowhere".to_string()), paths);
        let err = links.list_links().await.unwrap_err();
        assert!(
            matches!(&err, LinkError::EnterNetns { netns, .. } if netns == "nowhere"),
            "{err:?}"
        );
        assert!(err.to_string().contains("nowhere"), "{err}");
        let err = links.ip_forward().unwrap_err();
        assert!(matches!(err, LinkError::EnterNetns { .. }), "{err:?}");
    }

    #[test]
    fn ip_forward_is_read_and_written_at_the_configured_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ip_forward");
        std::fs::write(&path, "0\n").unwrap();
        let links = RealLinks::with_paths(
            None,
            LinkPaths {
                ip_forward: path.clone(),
                ..LinkPaths::default()
            },
        );
        assert!(!links.ip_forward().unwrap());
        links.set_ip_forward(true).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "1\n");
        assert!(links.ip_forward().unwrap());
        std::fs::write(&path, "2\n").unwrap();
        assert!(matches!(
            links.ip_forward().unwrap_err(),
            LinkError::IpForwardContent { .. }
        ));
    }

    #[test]
    fn not_a_bridge_error_names_the_kind_found() {
        let err = LinkError::NotABridge {
            name: "eth0".into(),
            kind: Some("veth".into()),
        };
        assert_eq!(
            err.to_string(),
            "link eth0 exists but is a veth device, not a bridge"
        );
        let err = LinkError::NotABridge {
            name: "eth0".into(),
            kind: None,
        };
        assert_eq!(
            err.to_string(),
            "link eth0 exists but is a device without a kind, not a bridge"
        );
    }

    #[tokio::test]
    async fn fake_ensure_bridge_is_idempotent() {
        let links = FakeLinks::new();
        links.ensure_bridge("br0", GATEWAY, 24).await.unwrap();
        links.ensure_bridge("br0", GATEWAY, 24).await.unwrap();
        let bridges: Vec<_> = links
            .links()
            .into_iter()
            .filter(|l| l.kind.as_deref() == Some("bridge"))
            .collect();
        assert_eq!(bridges.len(), 1);
        assert_eq!(links.addresses("br0"), vec![(GATEWAY, 24)]);
    }

    #[tokio::test]
    async fn fake_create_tap_attaches_and_refuses_duplicates_and_missing_bridges() {
        let links = FakeLinks::new();
        let err = links.create_tap("tap0", "br0").await.unwrap_err();
        assert!(
            matches!(&err, LinkError::NotFound { name } if name == "br0"),
            "{err:?}"
        );
        links.ensure_bridge("br0", GATEWAY, 24).await.unwrap();
        links.create_tap("tap0", "br0").await.unwrap();
        let err = links.create_tap("tap0", "br0").await.unwrap_err();
        assert!(
            matches!(&err, LinkError::Exists { name } if name == "tap0"),
            "{err:?}"
        );
        let tap = links
            .list_links()
            .await
            .unwrap()
            .into_iter()
            .find(|l| l.name == "tap0")
            .unwrap();
        assert_eq!(
            (tap.kind.as_deref(), tap.master.as_deref(), tap.up),
            (Some("tun"), Some("br0"), true)
        );
    }

    #[tokio::test]
    async fn fake_delete_is_idempotent_and_releases_bridge_ports() {
        let links = FakeLinks::new();
        links.ensure_bridge("br0", GATEWAY, 24).await.unwrap();
        links.create_tap("tap0", "br0").await.unwrap();
        links.delete_link("br0").await.unwrap();
        links.delete_link("br0").await.unwrap();
        let tap = links
            .links()
            .into_iter()
            .find(|l| l.name == "tap0")
            .unwrap();
        assert_eq!(tap.master, None);
    }

    #[tokio::test]
    async fn fake_injected_failure_hits_only_the_next_call_of_that_op() {
        let links = FakeLinks::new();
        links.ensure_bridge("br0", GATEWAY, 24).await.unwrap();
        links.fail_next(LinkOp::CreateTap);
        let err = links.create_tap("tap0", "br0").await.unwrap_err();
        assert!(
            matches!(
                err,
                LinkError::Injected {
                    op: LinkOp::CreateTap
                }
            ),
            "{err:?}"
        );
        assert!(
            links.links().iter().all(|l| l.name != "tap0"),
            "a failed call changes nothing"
        );
        links.delete_link("tap0").await.unwrap();
        links.create_tap("tap0", "br0").await.unwrap();
        assert_eq!(
            links.calls(),
            vec![
                LinkCall::EnsureBridge {
                    name: "br0".into(),
                    gateway: GATEWAY,
                    prefix: 24
                },
                LinkCall::CreateTap {
                    name: "tap0".into(),
                    bridge: "br0".into()
                },
                LinkCall::DeleteLink {
                    name: "tap0".into()
                },
                LinkCall::CreateTap {
                    name: "tap0".into(),
                    bridge: "br0".into()
                },
            ]
        );
    }

    #[test]
    fn fake_ip_forward_round_trips() {
        let links = FakeLinks::new();
        assert!(!links.ip_forward().unwrap());
        links.set_ip_forward(true).unwrap();
        assert!(links.ip_forward().unwrap());
        links.fail_next(LinkOp::IpForward);
        assert!(links.ip_forward().is_err());
    }
}

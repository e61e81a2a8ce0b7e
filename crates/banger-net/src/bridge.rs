//! [`BridgeNetwork`]: the real [`VmNetwork`] — one bridge with the gateway address, a warm pool
//! of taps already attached to it, banger's NAT table, the DNS responder and the port-forward
//! proxy, all in the configured network namespace.
//!
//! ```text
//!  first attach ─▶ ensure netns, bridge + gateway, ip_forward, DNS responder   (once, "ready")
//!  attach       ─▶ tap from the pool (or made now) ─▶ attached map ─▶ rules ─▶ DNS name
//!  detach       ─▶ forwards stopped ─▶ DNS name removed ─▶ tap deleted ─▶ rules
//!  refill task  ─▶ keeps `tap_pool_size` taps made ahead of demand
//!  reconcile    ─▶ (daemon start) adopt running VMs, then sweep
//!  sweep        ─▶ delete every banger tap that is neither pooled, being made, nor attached;
//!                  re-apply the table (and host FORWARD accepts) while a VM is attached,
//!                  delete them when none is
//! ```
//!
//! Ownership: every tap is owned by exactly one of the pool, the set of taps being made, or the
//! attached map (one VM), all in one `State` under one lock; the sweep lists the links first
//! and reads that state second, so a tap made concurrently is always owned by the time it is
//! looked at. The nftables table exists exactly while at least one VM is attached (its content
//! does not depend on which: port forwards go through the userspace proxy), and all rule changes
//! are serialized by one async lock. The host's iptables FORWARD accepts
//! (`banger_host::hostfw`, only when that chain drops by default and `host_forward_accept` is
//! on) follow the table: opened after every apply, closed when it is deleted. Nothing is created
//! at daemon start: the bridge, table and responder appear with the first VM that needs them.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use banger_api::{PortForward, VmId};
use banger_core::backends::{
    BoxError, NetAttachment, NicCounters, PublishError, RunningVm, VmNetwork,
};
use banger_host::hostfw::HostForward;
use banger_host::links::{LinkError, Links};
use banger_host::nft::{NatRuleset, Nft, NftError, FAMILY};
use banger_store::records::VmRecord;
use banger_vmm::NetIface;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::dns::{DnsError, DnsServer, DnsTable, Upstreams};
use crate::netns::Netns;
use crate::proxy::{PortProxy, ProxyError};

/// The DNS responder's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsSettings {
    /// Port on the gateway address (53 for guests).
    pub port: u16,
    /// Where questions about other names go.
    pub upstreams: Upstreams,
}

/// Everything [`BridgeNetwork`] needs from the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkSettings {
    /// Bridge name.
    pub bridge: String,
    /// VM subnet: network address and prefix length.
    pub subnet: (Ipv4Addr, u8),
    /// DNS domain (`NAME.<domain>`).
    pub domain: String,
    /// Network namespace of the VMs' network (`None`: the daemon's own).
    pub netns: Option<String>,
    /// Taps kept ready.
    pub tap_pool_size: usize,
    /// Prefix of every tap name banger makes (the sweep's mark, with the bridge).
    pub tap_prefix: String,
    /// banger's nftables table (family `inet`).
    pub table: String,
    /// Where port-forward listeners bind, in the daemon's namespace.
    pub publish_address: IpAddr,
    /// The DNS responder; `None` runs none (unit tests).
    pub dns: Option<DnsSettings>,
    /// Open the namespace's iptables FORWARD chain for the bridge while the table exists, when
    /// it drops by default (see `banger_host::hostfw`).
    pub host_forward_accept: bool,
}

impl NetworkSettings {
    /// The gateway: the subnet's first host, the bridge's address.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.subnet.0).wrapping_add(1))
    }

    /// The settings `config` asks for.
    pub fn from_config(config: &banger_config::Config) -> Self {
        let network = &config.network;
        let upstreams = if network.dns_upstream.is_empty() {
            Upstreams::ResolvConf(network.resolv_conf.clone())
        } else {
            Upstreams::Explicit(network.dns_upstream.clone())
        };
        Self {
            bridge: network.bridge.clone(),
            subnet: (network.subnet.addr(), network.subnet.prefix()),
            domain: network.domain.clone(),
            netns: network.netns.clone(),
            tap_pool_size: network.tap_pool_size as usize,
            tap_prefix: "bgt".into(),
            table: banger_host::nft::DEFAULT_TABLE.into(),
            publish_address: network.publish_address,
            dns: Some(DnsSettings {
                port: 53,
                upstreams,
            }),
            host_forward_accept: network.host_forward_accept,
        }
    }
}

/// Why a network operation failed.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The VM has no address allocated.
    #[error("VM {vm} has no IP address allocated")]
    NoAddress {
        /// The VM.
        vm: String,
    },
    /// The namespace could not be created.
    #[error("could not create network namespace {netns}")]
    Netns {
        /// The namespace.
        netns: String,
        /// Why.
        #[source]
        source: LinkError,
    },
    /// The bridge could not be set up.
    #[error("could not set up bridge {bridge} with gateway {gateway}")]
    Bridge {
        /// The bridge.
        bridge: String,
        /// Its address.
        gateway: Ipv4Addr,
        /// Why.
        #[source]
        source: LinkError,
    },
    /// IPv4 forwarding could not be turned on.
    #[error("could not enable IPv4 forwarding")]
    IpForward(#[source] LinkError),
    /// The DNS responder could not start.
    #[error("could not start the DNS responder")]
    Dns(#[source] DnsError),
    /// A tap could not be made.
    #[error("could not create tap {tap} on bridge {bridge}")]
    CreateTap {
        /// The tap.
        tap: String,
        /// The bridge.
        bridge: String,
        /// Why.
        #[source]
        source: LinkError,
    },
    /// A tap could not be deleted.
    #[error("could not delete tap {tap}")]
    DeleteTap {
        /// The tap.
        tap: String,
        /// Why.
        #[source]
        source: LinkError,
    },
    /// The links could not be listed.
    #[error("could not list the links of the VM network")]
    ListLinks(#[source] LinkError),
    /// banger's table could not be applied or removed.
    #[error("could not {action} nftables table {FAMILY} {table}")]
    Rules {
        /// "apply" or "delete".
        action: &'static str,
        /// The table.
        table: String,
        /// Why.
        #[source]
        source: NftError,
    },
}

/// What one [`Shared::sync_rules`] removed, for the sweep's report.
#[derive(Debug, Default)]
struct RulesChange {
    /// banger's table was deleted.
    table_deleted: bool,
    /// banger's rules removed from the host's iptables FORWARD / DOCKER-USER.
    host_accepts_removed: usize,
}

/// The rules' state, behind [`Shared::rules`].
#[derive(Debug)]
struct RulesState {
    /// Whether banger's table is applied.
    applied: bool,
    /// Whether banger's accepts may be in the host's FORWARD: unknown at start (a killed daemon
    /// may have left some), then set by every open and cleared by a successful close, so an
    /// idle daemon does not run iptables at every sweep.
    host_forward_dirty: bool,
}

/// One VM on the bridge.
#[derive(Debug, Clone)]
struct Attached {
    name: String,
    ip: Ipv4Addr,
    tap: String,
}

/// Who owns which tap; see the module docs.
#[derive(Debug, Default)]
struct State {
    ready: bool,
    pool: VecDeque<String>,
    creating: HashSet<String>,
    attached: HashMap<VmId, Attached>,
}

struct Shared {
    settings: NetworkSettings,
    links: Arc<dyn Links>,
    nft: Arc<dyn Nft>,
    host_forward: Arc<dyn HostForward>,
    netns: Netns,
    state: Mutex<State>,
    /// Serializes the one-time setup.
    setup: tokio::sync::Mutex<()>,
    /// Serializes rule changes and holds their state.
    rules: tokio::sync::Mutex<RulesState>,
    dns_table: DnsTable,
    dns_server: Mutex<Option<DnsServer>>,
    proxy: PortProxy,
    refill: Notify,
}

/// The real VM network. See the module docs.
#[derive(Debug)]
pub struct BridgeNetwork {
    shared: Arc<Shared>,
    refill_task: JoinHandle<()>,
}

impl Drop for BridgeNetwork {
    fn drop(&mut self) {
        self.refill_task.abort();
        self.shared.state().ready = false;
        drop(
            self.shared
                .dns_server
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take(),
        );
    }
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("settings", &self.settings)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        // Every critical section leaves the maps consistent, so a poisoned lock is usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn fresh_tap_name(&self) -> String {
        format!("{}{:08x}", self.settings.tap_prefix, rand::random::<u32>())
    }

    fn ruleset(&self) -> NatRuleset {
        let mut rules = NatRuleset::new(self.settings.subnet, self.settings.bridge.clone());
        rules.table = self.settings.table.clone();
        rules
    }

    async fn ensure_ready(&self) -> Result<(), NetError> {
        if self.state().ready {
            return Ok(());
        }
        let _setup = self.setup.lock().await;
        if self.state().ready {
            return Ok(());
        }
        let settings = &self.settings;
        if let Some(netns) = &settings.netns {
            banger_host::links::ensure_netns(netns)
                .await
                .map_err(|source| NetError::Netns {
                    netns: netns.clone(),
                    source,
                })?;
        }
        let gateway = settings.gateway();
        self.links
            .ensure_bridge(&settings.bridge, gateway, settings.subnet.1)
            .await
            .map_err(|source| NetError::Bridge {
                bridge: settings.bridge.clone(),
                gateway,
                source,
            })?;
        if !self.links.ip_forward().map_err(NetError::IpForward)? {
            self.links
                .set_ip_forward(true)
                .map_err(NetError::IpForward)?;
        }
        if let Some(dns) = &settings.dns {
            // A responder that cannot bind (something else holds port 53 on the gateway) costs
            // the guests their names, not their network: VMs still start.
            match DnsServer::start(
                self.netns.clone(),
                SocketAddr::from((gateway, dns.port)),
                self.dns_table.clone(),
                dns.upstreams.clone(),
            )
            .await
            {
                Ok(server) => {
                    *self.dns_server.lock().unwrap_or_else(|p| p.into_inner()) = Some(server);
                }
                Err(err) => {
                    let err = NetError::Dns(err);
                    tracing::error!(error = %chain(&err), "VMs get no DNS names");
                }
            }
        }
        self.state().ready = true;
        self.refill.notify_one();
        tracing::info!(bridge = %settings.bridge, %gateway, netns = ?settings.netns, "VM network ready");
        Ok(())
    }

    /// Makes a tap outside the pool, owned by the "being made" set while it is made.
    async fn make_tap(&self) -> Result<String, NetError> {
        let name = {
            let mut state = self.state();
            let name = self.fresh_tap_name();
            state.creating.insert(name.clone());
            name
        };
        let result = self.links.create_tap(&name, &self.settings.bridge).await;
        self.state().creating.remove(&name);
        result
            .map(|()| name.clone())
            .map_err(|source| NetError::CreateTap {
                tap: name,
                bridge: self.settings.bridge.clone(),
                source,
            })
    }

    async fn delete_tap(&self, tap: &str) -> Result<(), NetError> {
        if !self.netns.exists() {
            // No namespace, no tap (e.g. after a host reboot).
            return Ok(());
        }
        self.links
            .delete_link(tap)
            .await
            .map_err(|source| NetError::DeleteTap {
                tap: tap.to_string(),
                source,
            })
    }

    /// Brings banger's table in line with "at least one VM is attached" (`force`: re-apply or
    /// re-delete even when the in-memory flag says it is already so). The host's FORWARD
    /// accepts follow the table: opened after each apply, closed with the delete; failing to
    /// change them costs VMs the world beyond the host, not their network, so it is a warning.
    async fn sync_rules(&self, force: bool) -> Result<RulesChange, NetError> {
        let mut rules = self.rules.lock().await;
        let want = !self.state().attached.is_empty();
        let table = self.settings.table.clone();
        let bridge = self.settings.bridge.as_str();
        let mut change = RulesChange::default();
        if want && (force || !rules.applied) {
            self.nft
                .apply(&self.ruleset())
                .await
                .map_err(|source| NetError::Rules {
                    action: "apply",
                    table,
                    source,
                })?;
            let first = !rules.applied;
            rules.applied = true;
            if self.settings.host_forward_accept {
                rules.host_forward_dirty = true;
                match self.host_forward.open(bridge).await {
                    Ok(Some(chain)) if first => tracing::info!(
                        %bridge, %chain,
                        "the host's iptables FORWARD drops by default: accepts for the bridge are in {chain}"
                    ),
                    Ok(_) => {}
                    Err(err) => tracing::warn!(
                        error = %chain(&err),
                        "could not open the host's FORWARD chain; VMs may not reach beyond the host"
                    ),
                }
            }
            return Ok(change);
        }
        if !want && (force || rules.applied) {
            if !self.netns.exists() {
                rules.applied = false;
                return Ok(change);
            }
            let present = self
                .nft
                .list_tables()
                .await
                .map_err(|source| NetError::Rules {
                    action: "list",
                    table: table.clone(),
                    source,
                })?
                .iter()
                .any(|(family, name)| family == FAMILY && *name == table);
            if present {
                self.nft
                    .delete_table(&table)
                    .await
                    .map_err(|source| NetError::Rules {
                        action: "delete",
                        table,
                        source,
                    })?;
                change.table_deleted = true;
            }
            rules.applied = false;
            if rules.host_forward_dirty {
                match self.host_forward.close(bridge).await {
                    Ok(removed) => {
                        change.host_accepts_removed = removed;
                        rules.host_forward_dirty = false;
                    }
                    Err(err) => tracing::warn!(
                        error = %chain(&err),
                        "could not remove banger's accepts from the host's FORWARD chain"
                    ),
                }
            }
        }
        Ok(change)
    }

    async fn sweep(&self) -> Result<Vec<String>, NetError> {
        let mut report = Vec::new();
        if !self.netns.exists() {
            return Ok(report);
        }
        // Links first, ownership second: see the module docs.
        let links = self.links.list_links().await.map_err(NetError::ListLinks)?;
        let owned: HashSet<String> = {
            let state = self.state();
            state
                .pool
                .iter()
                .chain(state.creating.iter())
                .cloned()
                .chain(state.attached.values().map(|a| a.tap.clone()))
                .collect()
        };
        for link in links {
            let ours = link.kind.as_deref() == Some("tun")
                && (link.master.as_deref() == Some(self.settings.bridge.as_str())
                    || link.name.starts_with(&self.settings.tap_prefix));
            if ours && !owned.contains(&link.name) {
                match self.delete_tap(&link.name).await {
                    Ok(()) => report.push(format!("removed orphan tap {}", link.name)),
                    Err(err) => tracing::warn!(tap = %link.name, error = %err, "sweep"),
                }
            }
        }
        let change = self.sync_rules(true).await?;
        if change.table_deleted {
            report.push(format!(
                "removed nftables table {FAMILY} {} (no VM attached)",
                self.settings.table
            ));
        }
        if change.host_accepts_removed > 0 {
            report.push(format!(
                "removed {} accept rule(s) for {} from iptables (no VM attached)",
                change.host_accepts_removed, self.settings.bridge
            ));
        }
        self.refill.notify_one();
        Ok(report)
    }
}

fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Keeps the pool full while the network is ready.
async fn refill_pool(shared: Arc<Shared>) {
    loop {
        shared.refill.notified().await;
        loop {
            {
                let state = shared.state();
                if !state.ready
                    || state.pool.len() + state.creating.len() >= shared.settings.tap_pool_size
                {
                    break;
                }
            }
            match shared.make_tap().await {
                Ok(tap) => {
                    let mut state = shared.state();
                    if state.ready {
                        state.pool.push_back(tap);
                        continue;
                    }
                    // Shut down meanwhile: the tap is an orphan for the next sweep.
                    break;
                }
                Err(err) => {
                    tracing::warn!(error = %err, "refilling the tap pool");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    break;
                }
            }
        }
    }
}

impl BridgeNetwork {
    /// The network over `links`, `nft` and `host_forward` (which must act in `settings.netns`).
    /// Creates nothing until the first attach; must be called inside a tokio runtime (it spawns
    /// the refill task).
    pub fn new(
        settings: NetworkSettings,
        links: Arc<dyn Links>,
        nft: Arc<dyn Nft>,
        host_forward: Arc<dyn HostForward>,
    ) -> Result<Self, DnsError> {
        let netns = Netns::new(settings.netns.clone());
        let shared = Arc::new(Shared {
            dns_table: DnsTable::new(&settings.domain, settings.subnet)?,
            proxy: PortProxy::new(settings.publish_address, netns.clone()),
            settings,
            links,
            nft,
            host_forward,
            netns,
            state: Mutex::new(State::default()),
            setup: tokio::sync::Mutex::new(()),
            rules: tokio::sync::Mutex::new(RulesState {
                applied: false,
                host_forward_dirty: true,
            }),
            dns_server: Mutex::new(None),
            refill: Notify::new(),
        });
        let refill_task = tokio::spawn(refill_pool(shared.clone()));
        Ok(Self {
            shared,
            refill_task,
        })
    }

    /// The real network for `config`: netlink links, `nft` and `iptables` inside `network.netns`.
    pub fn real(config: &banger_config::Config) -> Result<Self, DnsError> {
        let settings = NetworkSettings::from_config(config);
        let netns = settings.netns.clone();
        Self::new(
            settings,
            Arc::new(banger_host::links::RealLinks::new(netns.clone())),
            Arc::new(banger_host::nft::RealNft::new(
                netns.clone(),
                banger_host::nft::DEFAULT_NFT_BINARY,
            )),
            Arc::new(banger_host::hostfw::RealHostForward::new(
                netns,
                banger_host::hostfw::DEFAULT_IPTABLES_BINARY,
            )),
        )
    }

    /// Taps ready in the pool now.
    pub fn pooled_taps(&self) -> Vec<String> {
        self.shared.state().pool.iter().cloned().collect()
    }

    /// The names the DNS responder answers, with their addresses.
    pub fn dns_names(&self) -> Vec<(String, Ipv4Addr)> {
        self.shared.dns_table.entries()
    }

    /// The address the DNS responder listens on, once it runs.
    pub fn dns_addr(&self) -> Option<SocketAddr> {
        self.shared
            .dns_server
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(DnsServer::addr)
    }

    /// Waits (up to `timeout`) until the pool holds `tap_pool_size` taps; true when it does.
    pub async fn wait_pool_full(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.shared.state().pool.len() >= self.shared.settings.tap_pool_size {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn kernel_args(&self, ip: Ipv4Addr) -> Vec<String> {
        let gateway = self.shared.settings.gateway();
        vec![
            format!("banger.ip={ip}/{}", self.shared.settings.subnet.1),
            format!("banger.gw={gateway}"),
            format!("banger.dns={gateway}"),
        ]
    }
}

#[async_trait::async_trait]
impl VmNetwork for BridgeNetwork {
    async fn attach(&self, vm: &VmRecord) -> Result<Option<NetAttachment>, BoxError> {
        let shared = &self.shared;
        let ip = vm.ip.ok_or_else(|| NetError::NoAddress {
            vm: vm.name.to_string(),
        })?;
        let mac = vm.mac.clone().unwrap_or_else(|| {
            let [a, b, c, d] = ip.octets();
            format!("06:00:{a:02x}:{b:02x}:{c:02x}:{d:02x}")
        });
        shared.ensure_ready().await?;
        let pooled = shared.state().pool.pop_front();
        let tap = match pooled {
            Some(tap) => tap,
            None => shared.make_tap().await?,
        };
        shared.refill.notify_one();
        let previous = shared.state().attached.insert(
            vm.id,
            Attached {
                name: vm.name.to_string(),
                ip,
                tap: tap.clone(),
            },
        );
        if let Some(previous) = previous {
            // Attached twice without a detach: the older tap has no owner any more.
            let _ = shared.delete_tap(&previous.tap).await;
        }
        if let Err(err) = shared.sync_rules(false).await {
            shared.state().attached.remove(&vm.id);
            if let Err(cleanup) = shared.delete_tap(&tap).await {
                tracing::warn!(%tap, error = %cleanup, "rollback of a failed attach");
            }
            return Err(Box::new(err));
        }
        shared.dns_table.insert(vm.name.as_str(), ip);
        tracing::debug!(vm = %vm.name, %tap, %ip, "VM attached");
        Ok(Some(NetAttachment {
            iface: NetIface { tap, mac },
            kernel_args: self.kernel_args(ip),
        }))
    }

    async fn detach(&self, vm: &VmRecord, tap: Option<&str>) -> Result<(), BoxError> {
        let shared = &self.shared;
        let entry = shared.state().attached.remove(&vm.id);
        shared.proxy.unpublish_vm(vm.id).await;
        if let Some(entry) = &entry {
            shared.dns_table.remove(&entry.name);
        }
        let mut taps: Vec<String> = entry.map(|e| e.tap).into_iter().collect();
        if let Some(tap) = tap {
            if !taps.iter().any(|t| t == tap) {
                taps.push(tap.to_string());
            }
        }
        let mut first_error = None;
        for tap in taps {
            if let Err(err) = shared.delete_tap(&tap).await {
                first_error.get_or_insert(err);
            }
        }
        if let Err(err) = shared.sync_rules(false).await {
            first_error.get_or_insert(err);
        }
        match first_error {
            Some(err) => Err(Box::new(err)),
            None => Ok(()),
        }
    }

    fn netns(&self) -> Option<String> {
        self.shared.settings.netns.clone()
    }

    async fn publish(&self, vm: &VmRecord, forward: &PortForward) -> Result<(), PublishError> {
        let ip = self.shared.state().attached.get(&vm.id).map(|a| a.ip);
        let Some(ip) = ip else {
            return Ok(());
        };
        self.shared
            .proxy
            .publish(vm.id, *forward, ip)
            .await
            .map_err(|err| match err {
                ProxyError::InUse { address, .. } => PublishError::PortInUse {
                    forward: *forward,
                    address: address.to_string(),
                    source: Box::new(err),
                },
                other => PublishError::Failed(Box::new(other)),
            })
    }

    async fn unpublish(&self, vm: &VmRecord, forward: &PortForward) -> Result<(), BoxError> {
        self.shared
            .proxy
            .unpublish(vm.id, forward.proto, forward.host_port)
            .await;
        Ok(())
    }

    async fn reconcile(&self, running: &[RunningVm]) -> Result<Vec<String>, BoxError> {
        let shared = &self.shared;
        let mut report = Vec::new();
        let mut adopted = Vec::new();
        for vm in running {
            let (Some(tap), Some(ip)) = (&vm.tap, vm.vm.ip) else {
                continue;
            };
            shared.state().attached.insert(
                vm.vm.id,
                Attached {
                    name: vm.vm.name.to_string(),
                    ip,
                    tap: tap.clone(),
                },
            );
            shared.dns_table.insert(vm.vm.name.as_str(), ip);
            adopted.push(vm);
        }
        if !adopted.is_empty() {
            shared.ensure_ready().await?;
        }
        for vm in adopted {
            report.push(format!(
                "{}: adopted tap {}",
                vm.vm.name,
                vm.tap.as_deref().unwrap_or("")
            ));
            for forward in &vm.forwards {
                if let Err(err) = self.publish(&vm.vm, forward).await {
                    tracing::warn!(vm = %vm.vm.name, %forward, error = %err, "re-publishing a port forward");
                    report.push(format!(
                        "{}: port forward {forward} not restored: {err}",
                        vm.vm.name
                    ));
                }
            }
        }
        report.extend(shared.sweep().await?);
        Ok(report)
    }

    async fn sweep(&self) -> Result<Vec<String>, BoxError> {
        Ok(self.shared.sweep().await?)
    }

    async fn nic_counters(&self, tap: &str) -> Result<Option<NicCounters>, BoxError> {
        if !self.shared.netns.exists() {
            return Ok(None);
        }
        // The tap's receive side is the guest's transmit side, and the other way round.
        Ok(self
            .shared
            .links
            .link_counters(tap)
            .await?
            .map(|tap| NicCounters {
                rx_bytes: tap.tx_bytes,
                tx_bytes: tap.rx_bytes,
                rx_packets: tap.tx_packets,
                tx_packets: tap.rx_packets,
            }))
    }
}

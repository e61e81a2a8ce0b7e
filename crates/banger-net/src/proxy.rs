//! Port forwards as a userspace proxy: a listener on the daemon's publish address (in the
//! daemon's own namespace, 127.0.0.1 by default) per forward; each accepted TCP connection (or
//! UDP client) gets a socket made inside the VM namespace that talks to `GUEST_IP:GUEST_PORT`.
//! This works the same whether the VMs live in the daemon's namespace or in a separate one, and
//! needs no `route_localnet` or DNAT rule.
//!
//! ```text
//!  client ──tcp──▶ publish_address:HOST ─accept─▶ connect (in VM netns) ─▶ GUEST_IP:GUEST
//!                  (daemon namespace)          copy both ways until either side closes
//! ```
//!
//! Ownership: [`PortProxy`] owns every listener and connection; unpublishing a forward stops its
//! listener and drops its open connections and UDP sessions. Publish, unpublish and the check
//! "is this port already ours" run under one async lock, so two publishers of the same forward
//! (the manager after an attach and the API) cannot race each other into `AddrInUse`.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use banger_api::{PortForward, PortProto, VmId};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::netns::{Netns, NetnsError};

/// How long a connection to the guest may take to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A UDP client silent this long loses its session.
const UDP_IDLE: Duration = Duration::from_secs(60);

/// Why a forward could not be published.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The host port is held: by another program, or by another VM's forward.
    #[error("host port {host_port}/{proto} on {address} is already in use")]
    InUse {
        /// The port.
        host_port: u16,
        /// Its protocol.
        proto: PortProto,
        /// The publish address.
        address: IpAddr,
        /// Who holds it, as far as we know.
        #[source]
        source: NetnsError,
    },
    /// Binding failed otherwise.
    #[error("could not listen on {address} port {host_port}/{proto}")]
    Bind {
        /// The port.
        host_port: u16,
        /// Its protocol.
        proto: PortProto,
        /// The publish address.
        address: IpAddr,
        /// Why.
        #[source]
        source: NetnsError,
    },
}

#[derive(Debug)]
struct Published {
    vm: VmId,
    guest: SocketAddr,
    /// Dropping it stops the listener's connections and sessions.
    _stop: watch::Sender<()>,
    listener: Option<JoinHandle<()>>,
}

impl Published {
    /// Stops the listener and waits until its socket is closed, so the port is free on return.
    async fn stop(mut self) {
        if let Some(listener) = self.listener.take() {
            listener.abort();
            let _ = listener.await;
        }
    }
}

impl Drop for Published {
    fn drop(&mut self) {
        if let Some(listener) = &self.listener {
            listener.abort();
        }
    }
}

/// Every published forward of the daemon.
#[derive(Debug)]
pub struct PortProxy {
    address: IpAddr,
    vm_netns: Netns,
    forwards: tokio::sync::Mutex<HashMap<(PortProto, u16), Published>>,
}

impl PortProxy {
    /// Listens on `address` (daemon namespace), reaches guests from inside `vm_netns`.
    pub fn new(address: IpAddr, vm_netns: Netns) -> Self {
        Self {
            address,
            vm_netns,
            forwards: tokio::sync::Mutex::new(HashMap::new()),
        }
    }

    /// The address listeners bind.
    pub fn address(&self) -> IpAddr {
        self.address
    }

    /// Starts forwarding `forward` to `guest_ip`. The same forward for the same VM again is
    /// success; a port held by another VM or program is [`ProxyError::InUse`].
    pub async fn publish(
        &self,
        vm: VmId,
        forward: PortForward,
        guest_ip: Ipv4Addr,
    ) -> Result<(), ProxyError> {
        let key = (forward.proto, forward.host_port);
        let guest = SocketAddr::from((guest_ip, forward.guest_port));
        let mut forwards = self.forwards.lock().await;
        if let Some(existing) = forwards.get(&key) {
            if existing.vm == vm && existing.guest == guest {
                return Ok(());
            }
            // Another VM's (or an older mapping of this VM): replace only our own VM's.
            if existing.vm != vm {
                return Err(ProxyError::InUse {
                    host_port: forward.host_port,
                    proto: forward.proto,
                    address: self.address,
                    source: NetnsError::Socket {
                        action: format!("claim port {}", forward.host_port),
                        scope: "banger".into(),
                        source: std::io::Error::from(std::io::ErrorKind::AddrInUse),
                    },
                });
            }
            if let Some(old) = forwards.remove(&key) {
                old.stop().await;
            }
        }
        let bind_addr = SocketAddr::new(self.address, forward.host_port);
        let bind_error = |source: NetnsError| {
            if source.io_kind() == Some(std::io::ErrorKind::AddrInUse) {
                ProxyError::InUse {
                    host_port: forward.host_port,
                    proto: forward.proto,
                    address: self.address,
                    source,
                }
            } else {
                ProxyError::Bind {
                    host_port: forward.host_port,
                    proto: forward.proto,
                    address: self.address,
                    source,
                }
            }
        };
        // Listeners live in the daemon's namespace, whatever the VMs' is.
        let here = Netns::current();
        let (stop, stopped) = watch::channel(());
        let vm_netns = self.vm_netns.clone();
        let listener = match forward.proto {
            PortProto::Tcp => {
                let listener = here.bind_tcp(bind_addr).await.map_err(bind_error)?;
                tokio::spawn(serve_tcp(listener, guest, vm_netns, stopped))
            }
            PortProto::Udp => {
                let socket = here.bind_udp(bind_addr).await.map_err(bind_error)?;
                tokio::spawn(serve_udp(Arc::new(socket), guest, vm_netns, stopped))
            }
        };
        tracing::info!(%vm, %bind_addr, %guest, proto = %forward.proto, "port forward published");
        forwards.insert(
            key,
            Published {
                vm,
                guest,
                _stop: stop,
                listener: Some(listener),
            },
        );
        Ok(())
    }

    /// Stops the forward of `host_port`/`proto` if `vm` holds it.
    pub async fn unpublish(&self, vm: VmId, proto: PortProto, host_port: u16) {
        let mut forwards = self.forwards.lock().await;
        if forwards
            .get(&(proto, host_port))
            .is_some_and(|p| p.vm == vm)
        {
            if let Some(published) = forwards.remove(&(proto, host_port)) {
                published.stop().await;
            }
        }
    }

    /// Stops every forward of `vm`.
    pub async fn unpublish_vm(&self, vm: VmId) {
        let mut forwards = self.forwards.lock().await;
        let keys: Vec<_> = forwards
            .iter()
            .filter(|(_, p)| p.vm == vm)
            .map(|(key, _)| *key)
            .collect();
        for key in keys {
            if let Some(published) = forwards.remove(&key) {
                published.stop().await;
            }
        }
    }

    /// The published forwards, as (VM, proto, host port, guest address), by port.
    pub async fn published(&self) -> Vec<(VmId, PortProto, u16, SocketAddr)> {
        let mut list: Vec<_> = self
            .forwards
            .lock()
            .await
            .iter()
            .map(|((proto, port), p)| (p.vm, *proto, *port, p.guest))
            .collect();
        list.sort_by_key(|(_, proto, port, _)| (*proto, *port));
        list
    }
}

async fn serve_tcp(
    listener: TcpListener,
    guest: SocketAddr,
    vm_netns: Netns,
    stopped: watch::Receiver<()>,
) {
    loop {
        let Ok((client, peer)) = listener.accept().await else {
            // Out of descriptors and the like: do not spin.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let (vm_netns, mut stopped) = (vm_netns.clone(), stopped.clone());
        tokio::spawn(async move {
            tokio::select! {
                () = relay_tcp(client, guest, &vm_netns) => {}
                _ = stopped.changed() => tracing::debug!(%peer, %guest, "forward removed; connection closed"),
            }
        });
    }
}

async fn relay_tcp(mut client: TcpStream, guest: SocketAddr, vm_netns: &Netns) {
    let mut upstream = match vm_netns.connect_tcp(guest, CONNECT_TIMEOUT).await {
        Ok(stream) => stream,
        Err(err) => {
            tracing::debug!(%guest, error = %err, "port forward could not reach the guest");
            return;
        }
    };
    let _ = client.set_nodelay(true);
    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
}

type Sessions = Arc<Mutex<HashMap<SocketAddr, Arc<UdpSocket>>>>;

async fn serve_udp(
    socket: Arc<UdpSocket>,
    guest: SocketAddr,
    vm_netns: Netns,
    stopped: watch::Receiver<()>,
) {
    let sessions: Sessions = Arc::default();
    let mut buf = vec![0u8; 65536];
    loop {
        let Ok((len, client)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        let existing = sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&client)
            .cloned();
        let upstream = match existing {
            Some(upstream) => upstream,
            None => {
                let Ok(upstream) = vm_netns
                    .bind_udp(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)))
                    .await
                else {
                    continue;
                };
                if upstream.connect(guest).await.is_err() {
                    continue;
                }
                let upstream = Arc::new(upstream);
                sessions
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(client, upstream.clone());
                tokio::spawn(relay_udp_replies(
                    socket.clone(),
                    upstream.clone(),
                    client,
                    sessions.clone(),
                    stopped.clone(),
                ));
                upstream
            }
        };
        let _ = upstream.send(&buf[..len]).await;
    }
}

async fn relay_udp_replies(
    socket: Arc<UdpSocket>,
    upstream: Arc<UdpSocket>,
    client: SocketAddr,
    sessions: Sessions,
    mut stopped: watch::Receiver<()>,
) {
    let mut buf = vec![0u8; 65536];
    loop {
        tokio::select! {
            received = tokio::time::timeout(UDP_IDLE, upstream.recv(&mut buf)) => match received {
                Ok(Ok(len)) => { let _ = socket.send_to(&buf[..len], client).await; }
                _ => break,
            },
            _ = stopped.changed() => break,
        }
    }
    sessions
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&client);
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn tcp(host_port: u16, guest_port: u16) -> PortForward {
        PortForward {
            host_port,
            guest_port,
            proto: PortProto::Tcp,
        }
    }

    /// A free loopback port (bound then released).
    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    #[tokio::test]
    async fn a_tcp_forward_relays_both_ways_and_stops_when_unpublished() {
        // The "guest": an echo server on loopback.
        let guest = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let guest_port = guest.local_addr().unwrap().port();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = guest.accept().await.unwrap();
                tokio::spawn(async move {
                    let mut buf = [0u8; 64];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        let proxy = PortProxy::new(IpAddr::V4(Ipv4Addr::LOCALHOST), Netns::current());
        let vm = VmId::new();
        let host_port = free_port();
        let forward = tcp(host_port, guest_port);
        proxy
            .publish(vm, forward, Ipv4Addr::LOCALHOST)
            .await
            .unwrap();
        proxy
            .publish(vm, forward, Ipv4Addr::LOCALHOST)
            .await
            .unwrap();

        let mut client = TcpStream::connect(("127.0.0.1", host_port)).await.unwrap();
        client.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        client.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");

        // Another VM cannot take the port.
        let err = proxy
            .publish(VmId::new(), forward, Ipv4Addr::LOCALHOST)
            .await
            .unwrap_err();
        assert!(matches!(err, ProxyError::InUse { .. }), "{err:?}");

        proxy.unpublish_vm(vm).await;
        assert!(proxy.published().await.is_empty());
        // The open connection is closed and the port is free again.
        let n = tokio::time::timeout(Duration::from_secs(5), client.read(&mut buf))
            .await
            .unwrap()
            .unwrap_or(0);
        assert_eq!(n, 0);
        std::net::TcpListener::bind(("127.0.0.1", host_port)).unwrap();
    }

    #[tokio::test]
    async fn a_port_held_by_another_program_is_in_use() {
        let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = held.local_addr().unwrap().port();
        let proxy = PortProxy::new(IpAddr::V4(Ipv4Addr::LOCALHOST), Netns::current());
        let err = proxy
            .publish(VmId::new(), tcp(port, 80), Ipv4Addr::LOCALHOST)
            .await
            .unwrap_err();
        assert!(matches!(err, ProxyError::InUse { .. }), "{err:?}");
        assert!(err.to_string().contains(&port.to_string()), "{err}");
    }

    #[tokio::test]
    async fn a_udp_forward_relays_datagrams_and_replies() {
        let guest = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let guest_port = guest.local_addr().unwrap().port();
        tokio::spawn(async move {
            let mut buf = [0u8; 64];
            loop {
                let (n, from) = guest.recv_from(&mut buf).await.unwrap();
                guest.send_to(&buf[..n], from).await.unwrap();
            }
        });
        let proxy = PortProxy::new(IpAddr::V4(Ipv4Addr::LOCALHOST), Netns::current());
        let host_port = std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let forward = PortForward {
            host_port,
            guest_port,
            proto: PortProto::Udp,
        };
        proxy
            .publish(VmId::new(), forward, Ipv4Addr::LOCALHOST)
            .await
            .unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        client
            .send_to(b"hello", ("127.0.0.1", host_port))
            .await
            .unwrap();
        let mut buf = [0u8; 16];
        let (n, _) = tokio::time::timeout(Duration::from_secs(5), client.recv_from(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&buf[..n], b"hello");
    }
}

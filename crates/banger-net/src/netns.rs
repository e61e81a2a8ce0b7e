//! Sockets bound to the VMs' network namespace while the daemon stays in its own.
//!
//! A socket belongs to the namespace of the thread that creates it, for its whole life. So a
//! socket for the VM namespace is created on a short-lived OS thread that `setns(CLONE_NEWNET)`s
//! into `/run/netns/NAME`, makes the socket (bind, or a blocking connect with a timeout), hands it
//! back and exits; the namespace switch dies with the thread, and tokio's worker threads never
//! change namespace. The socket is then registered with the caller's runtime. With no namespace
//! configured the work runs inline.

use std::fs::File;
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::time::Duration;

/// Why a namespace-bound socket could not be made.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// `/run/netns/NAME` could not be opened or entered.
    #[error("could not enter network namespace {netns} ({})", path.display())]
    Enter {
        /// The namespace.
        netns: String,
        /// Its bind-mount.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
    /// The helper thread could not be started or died.
    #[error("the thread working in network namespace {netns} could not run")]
    Thread {
        /// The namespace.
        netns: String,
    },
    /// The socket operation itself failed.
    #[error("could not {action} in {scope}")]
    Socket {
        /// e.g. "bind udp 172.30.0.1:53".
        action: String,
        /// "netns NAME" or "the daemon's namespace".
        scope: String,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
}

impl NetnsError {
    /// The OS error kind of a failed socket operation (e.g. `AddrInUse`).
    pub fn io_kind(&self) -> Option<io::ErrorKind> {
        match self {
            NetnsError::Socket { source, .. } | NetnsError::Enter { source, .. } => {
                Some(source.kind())
            }
            NetnsError::Thread { .. } => None,
        }
    }
}

/// One network namespace: a named one under a netns directory, or the daemon's own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Netns {
    name: Option<String>,
    dir: PathBuf,
}

impl Netns {
    /// The daemon's own namespace.
    pub fn current() -> Self {
        Self {
            name: None,
            dir: PathBuf::from(banger_host::links::DEFAULT_NETNS_DIR),
        }
    }

    /// `name` under `/run/netns`, or the daemon's own namespace for `None`.
    pub fn new(name: Option<String>) -> Self {
        Self {
            name,
            dir: PathBuf::from(banger_host::links::DEFAULT_NETNS_DIR),
        }
    }

    /// The namespace's name (`None`: the daemon's own).
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// Whether the namespace exists (the daemon's own always does).
    pub fn exists(&self) -> bool {
        match &self.name {
            Some(name) => self.dir.join(name).exists(),
            None => true,
        }
    }

    fn scope(&self) -> String {
        match &self.name {
            Some(name) => format!("netns {name}"),
            None => "the daemon's namespace".to_string(),
        }
    }

    /// Runs `work` inside the namespace on a dedicated thread (inline for the daemon's own).
    pub async fn run<T, F>(&self, action: String, work: F) -> Result<T, NetnsError>
    where
        T: Send + 'static,
        F: FnOnce() -> io::Result<T> + Send + 'static,
    {
        let scope = self.scope();
        let socket_error = move |source| NetnsError::Socket {
            action,
            scope,
            source,
        };
        let Some(name) = self.name.clone() else {
            return work().map_err(socket_error);
        };
        let path = self.dir.join(&name);
        let file = File::open(&path).map_err(|source| NetnsError::Enter {
            netns: name.clone(),
            path: path.clone(),
            source,
        })?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let thread_name = name.clone();
        std::thread::Builder::new()
            .name("banger-net-ns".into())
            .spawn(move || {
                let result = match enter(&file) {
                    Ok(()) => work().map_err(socket_error),
                    Err(source) => Err(NetnsError::Enter {
                        netns: thread_name,
                        path,
                        source,
                    }),
                };
                // The receiver is gone only when the caller was cancelled.
                let _ = tx.send(result);
            })
            .map_err(|_| NetnsError::Thread {
                netns: name.clone(),
            })?;
        rx.await.map_err(|_| NetnsError::Thread { netns: name })?
    }

    /// A UDP socket bound to `addr` inside the namespace.
    pub async fn bind_udp(&self, addr: SocketAddr) -> Result<tokio::net::UdpSocket, NetnsError> {
        let socket = self
            .run(format!("bind udp {addr}"), move || {
                let socket = UdpSocket::bind(addr)?;
                socket.set_nonblocking(true)?;
                Ok(socket)
            })
            .await?;
        tokio::net::UdpSocket::from_std(socket).map_err(|source| self.register_error(source))
    }

    /// A TCP listener on `addr` inside the namespace.
    pub async fn bind_tcp(&self, addr: SocketAddr) -> Result<tokio::net::TcpListener, NetnsError> {
        let listener = self
            .run(format!("listen on tcp {addr}"), move || {
                let listener = TcpListener::bind(addr)?;
                listener.set_nonblocking(true)?;
                Ok(listener)
            })
            .await?;
        tokio::net::TcpListener::from_std(listener).map_err(|source| self.register_error(source))
    }

    /// A TCP connection to `addr` made from inside the namespace.
    pub async fn connect_tcp(
        &self,
        addr: SocketAddr,
        timeout: Duration,
    ) -> Result<tokio::net::TcpStream, NetnsError> {
        let stream = self
            .run(format!("connect to tcp {addr}"), move || {
                let stream = TcpStream::connect_timeout(&addr, timeout)?;
                stream.set_nonblocking(true)?;
                stream.set_nodelay(true)?;
                Ok(stream)
            })
            .await?;
        tokio::net::TcpStream::from_std(stream).map_err(|source| self.register_error(source))
    }

    fn register_error(&self, source: io::Error) -> NetnsError {
        NetnsError::Socket {
            action: "register a socket with the runtime".into(),
            scope: self.scope(),
            source,
        }
    }
}

/// Moves the calling thread into the network namespace `ns` refers to.
fn enter(ns: &File) -> io::Result<()> {
    // SAFETY: setns only reads the descriptor, which `ns` keeps open for the call. CLONE_NEWNET
    // switches the calling thread alone, and only threads that exit after their work call this.
    let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_daemons_namespace_binds_inline_and_reports_addr_in_use() {
        let ns = Netns::current();
        let listener = ns.bind_tcp("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let err = ns.bind_tcp(addr).await.unwrap_err();
        assert_eq!(err.io_kind(), Some(io::ErrorKind::AddrInUse));
        assert!(err.to_string().contains(&addr.to_string()), "{err}");
        let stream = ns.connect_tcp(addr, Duration::from_secs(1)).await.unwrap();
        assert_eq!(stream.peer_addr().unwrap(), addr);
    }

    #[tokio::test]
    async fn a_missing_namespace_is_an_enter_error_naming_it() {
        let ns = Netns {
            name: Some("nowhere".into()),
            dir: tempfile::tempdir().unwrap().path().to_path_buf(),
        };
        assert!(!ns.exists());
        let err = ns
            .bind_udp("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap_err();
        assert!(
            matches!(&err, NetnsError::Enter { netns, .. } if netns == "nowhere"),
            "{err:?}"
        );
    }
}

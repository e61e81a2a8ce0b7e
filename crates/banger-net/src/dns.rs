//! banger's DNS responder: `NAME.<domain>` for every attached VM, A and PTR, answered from
//! memory; every other question relayed unchanged to the host's real upstream resolvers.
//!
//! ```text
//!  guest ──udp/tcp 53──▶ gateway (in the VM namespace)
//!                          ├─ NAME.<domain> A / d.c.b.a.in-addr.arpa PTR (subnet) ─▶ DnsTable
//!                          └─ anything else ─▶ upstream (socket made in the VM namespace)
//! ```
//!
//! Ownership: the [`DnsTable`] is shared with the bridge backend, which inserts a VM's name on
//! attach and removes it on detach; the [`DnsServer`] owns its sockets and tasks and stops them
//! when dropped. The listening sockets and the upstream sockets are created inside the VM
//! namespace (see [`crate::netns`]): the guests' resolver is the gateway, and the upstream path
//! is the namespace's own route, like every other packet the guests send.
//!
//! Upstreams come from config, or from `resolv.conf` files read in order: the first whose
//! nameservers are not the systemd-resolved stub (127.0.0.53, unreachable from a guest) wins —
//! typically `/etc/resolv.conf`, then `/run/systemd/resolve/resolv.conf`.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, PTR};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;

use crate::netns::{Netns, NetnsError};

/// TTL of banger's own answers: VMs come and go.
const TTL: u32 = 5;
/// How long one upstream may take to answer.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a TCP client may stay idle between questions.
const TCP_IDLE: Duration = Duration::from_secs(10);
/// The systemd-resolved stub, never a usable upstream for guests.
const SYSTEMD_STUB: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 53);

/// Why the DNS responder could not start.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// A listening socket could not be made.
    #[error("could not start the DNS responder on {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: NetnsError,
    },
    /// The domain is not a DNS name.
    #[error("`{domain}` is not a DNS domain")]
    Domain {
        /// The configured domain.
        domain: String,
        /// Why.
        #[source]
        source: hickory_proto::ProtoError,
    },
}

/// Where upstream resolvers come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upstreams {
    /// Exactly these servers.
    Explicit(Vec<SocketAddr>),
    /// The nameservers of the first of these files that lists a usable one.
    ResolvConf(Vec<PathBuf>),
}

impl Upstreams {
    /// The host default: `/etc/resolv.conf`, then systemd-resolved's real list.
    pub fn host_default() -> Self {
        Upstreams::ResolvConf(vec![
            PathBuf::from("/etc/resolv.conf"),
            PathBuf::from("/run/systemd/resolve/resolv.conf"),
        ])
    }

    /// The servers to ask now (files are re-read each time: resolv.conf changes with the
    /// host's network).
    pub fn servers(&self) -> Vec<SocketAddr> {
        match self {
            Upstreams::Explicit(servers) => servers.clone(),
            Upstreams::ResolvConf(paths) => paths
                .iter()
                .map(|path| resolv_conf_servers(path))
                .find(|servers| !servers.is_empty())
                .unwrap_or_default(),
        }
    }
}

/// The usable `nameserver` entries of one resolv.conf (port 53; the systemd stub left out).
pub fn resolv_conf_servers(path: &Path) -> Vec<SocketAddr> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    parse_resolv_conf(&text)
}

fn parse_resolv_conf(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next() == Some("nameserver")).then(|| words.next())?
        })
        // A scoped IPv6 address (`fe80::1%eth0`) does not parse and is skipped.
        .filter_map(|word| word.parse::<IpAddr>().ok())
        .filter(|ip| *ip != IpAddr::V4(SYSTEMD_STUB))
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

#[derive(Debug)]
struct TableInner {
    domain: Name,
    subnet: (Ipv4Addr, u8),
    by_name: HashMap<String, Ipv4Addr>,
}

/// The names banger answers for: VM name -> address, under one domain. Cheap to clone.
#[derive(Debug, Clone)]
pub struct DnsTable {
    inner: Arc<RwLock<TableInner>>,
}

/// What the responder does with one question.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// Answer from the table with these records and this code.
    Local(ResponseCode, Vec<Record>),
    /// Not banger's to answer: ask upstream.
    Forward,
}

impl DnsTable {
    /// An empty table for `domain` whose reverse zone is `subnet`.
    pub fn new(domain: &str, subnet: (Ipv4Addr, u8)) -> Result<Self, DnsError> {
        let mut domain_name = Name::from_ascii(domain).map_err(|source| DnsError::Domain {
            domain: domain.to_string(),
            source,
        })?;
        domain_name.set_fqdn(true);
        Ok(Self {
            inner: Arc::new(RwLock::new(TableInner {
                domain: domain_name.to_lowercase(),
                subnet,
                by_name: HashMap::new(),
            })),
        })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, TableInner> {
        // Every write is one map operation: a poisoned lock still holds a consistent map.
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, TableInner> {
        self.inner.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds or replaces `name`.
    pub fn insert(&self, name: &str, ip: Ipv4Addr) {
        self.write().by_name.insert(name.to_ascii_lowercase(), ip);
    }

    /// Removes `name`.
    pub fn remove(&self, name: &str) {
        self.write().by_name.remove(&name.to_ascii_lowercase());
    }

    /// Every name and address, sorted by name.
    pub fn entries(&self) -> Vec<(String, Ipv4Addr)> {
        let mut entries: Vec<_> = self
            .read()
            .by_name
            .iter()
            .map(|(name, ip)| (name.clone(), *ip))
            .collect();
        entries.sort();
        entries
    }

    fn verdict(&self, query: &Query) -> Verdict {
        let inner = self.read();
        let name = query.name().to_lowercase();
        let qtype = query.query_type();
        if inner.domain.zone_of(&name) {
            if name.num_labels() == inner.domain.num_labels() {
                return Verdict::Local(ResponseCode::NoError, Vec::new());
            }
            let found = (name.num_labels() == inner.domain.num_labels() + 1)
                .then(|| name.iter().next())
                .flatten()
                .and_then(|label| std::str::from_utf8(label).ok())
                .and_then(|label| inner.by_name.get(label).copied());
            return match found {
                Some(ip) if matches!(qtype, RecordType::A | RecordType::ANY) => Verdict::Local(
                    ResponseCode::NoError,
                    vec![Record::from_rdata(name, TTL, RData::A(A(ip)))],
                ),
                // The name exists, just not with this type (AAAA, MX...): NODATA.
                Some(_) => Verdict::Local(ResponseCode::NoError, Vec::new()),
                None => Verdict::Local(ResponseCode::NXDomain, Vec::new()),
            };
        }
        if let Some(ip) = reverse_ipv4(&name) {
            let (network, prefix) = inner.subnet;
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            if u32::from(ip) & mask == u32::from(network) & mask {
                let owner = inner.by_name.iter().find(|(_, a)| **a == ip);
                return match owner {
                    Some((vm, _)) if matches!(qtype, RecordType::PTR | RecordType::ANY) => {
                        match Name::from_ascii(vm).and_then(|n| n.append_domain(&inner.domain)) {
                            Ok(target) => Verdict::Local(
                                ResponseCode::NoError,
                                vec![Record::from_rdata(name, TTL, RData::PTR(PTR(target)))],
                            ),
                            Err(_) => Verdict::Local(ResponseCode::ServFail, Vec::new()),
                        }
                    }
                    Some(_) => Verdict::Local(ResponseCode::NoError, Vec::new()),
                    None => Verdict::Local(ResponseCode::NXDomain, Vec::new()),
                };
            }
        }
        Verdict::Forward
    }

    /// banger's answer to the DNS message `request`, or `None` when it must go upstream.
    /// A message that does not parse gets no answer (as from any resolver).
    pub fn answer(&self, request: &[u8]) -> Option<Vec<u8>> {
        let request = Message::from_vec(request).ok()?;
        let verdict = match request.queries() {
            [query]
                if request.message_type() == MessageType::Query
                    && request.op_code() == OpCode::Query =>
            {
                self.verdict(query)
            }
            [_] => Verdict::Local(ResponseCode::NotImp, Vec::new()),
            _ => Verdict::Local(ResponseCode::FormErr, Vec::new()),
        };
        match verdict {
            Verdict::Forward => None,
            Verdict::Local(code, answers) => Some(response(&request, code, answers, true)),
        }
    }
}

/// `d.c.b.a.in-addr.arpa.` as an address.
fn reverse_ipv4(name: &Name) -> Option<Ipv4Addr> {
    let labels: Vec<&[u8]> = name.iter().collect();
    if labels.len() != 6
        || !labels[4].eq_ignore_ascii_case(b"in-addr")
        || !labels[5].eq_ignore_ascii_case(b"arpa")
    {
        return None;
    }
    let mut octets = [0u8; 4];
    for (i, label) in labels[..4].iter().enumerate() {
        octets[3 - i] = std::str::from_utf8(label).ok()?.parse().ok()?;
    }
    Some(Ipv4Addr::from(octets))
}

fn response(
    request: &Message,
    code: ResponseCode,
    answers: Vec<Record>,
    authoritative: bool,
) -> Vec<u8> {
    let mut reply = Message::new();
    reply
        .set_id(request.id())
        .set_message_type(MessageType::Response)
        .set_op_code(request.op_code())
        .set_authoritative(authoritative)
        .set_recursion_desired(request.recursion_desired())
        .set_recursion_available(true)
        .set_response_code(code);
    for query in request.queries() {
        reply.add_query(query.clone());
    }
    for answer in answers {
        reply.add_answer(answer);
    }
    // Encoding a message built from parsed parts cannot fail short of a bug; answer nothing then.
    reply.to_vec().unwrap_or_default()
}

fn servfail(request: &[u8]) -> Option<Vec<u8>> {
    let request = Message::from_vec(request).ok()?;
    Some(response(
        &request,
        ResponseCode::ServFail,
        Vec::new(),
        false,
    ))
}

/// The running responder; its tasks stop when it is dropped.
#[derive(Debug)]
pub struct DnsServer {
    tasks: Vec<JoinHandle<()>>,
    addr: SocketAddr,
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

#[derive(Debug)]
struct Shared {
    table: DnsTable,
    upstreams: Upstreams,
    netns: Netns,
}

impl DnsServer {
    /// Serves `table` on UDP and TCP `addr` inside `netns`, forwarding the rest to `upstreams`.
    pub async fn start(
        netns: Netns,
        addr: SocketAddr,
        table: DnsTable,
        upstreams: Upstreams,
    ) -> Result<DnsServer, DnsError> {
        let udp = netns
            .bind_udp(addr)
            .await
            .map_err(|source| DnsError::Bind { addr, source })?;
        let bound = udp.local_addr().unwrap_or(addr);
        let tcp = netns
            .bind_tcp(bound)
            .await
            .map_err(|source| DnsError::Bind {
                addr: bound,
                source,
            })?;
        let shared = Arc::new(Shared {
            table,
            upstreams,
            netns,
        });
        let udp = Arc::new(udp);
        let tasks = vec![
            tokio::spawn(serve_udp(udp, shared.clone())),
            tokio::spawn(serve_tcp(tcp, shared)),
        ];
        tracing::info!(%bound, "DNS responder listening");
        Ok(DnsServer { tasks, addr: bound })
    }

    /// The address it listens on (UDP and TCP).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

async fn serve_udp(socket: Arc<tokio::net::UdpSocket>, shared: Arc<Shared>) {
    let mut buf = vec![0u8; 4096];
    loop {
        let (len, client) = match socket.recv_from(&mut buf).await {
            Ok(received) => received,
            Err(err) => {
                tracing::debug!(error = %err, "DNS udp receive");
                continue;
            }
        };
        let request = buf[..len].to_vec();
        if let Some(reply) = shared.table.answer(&request) {
            let _ = socket.send_to(&reply, client).await;
            continue;
        }
        let (socket, shared) = (socket.clone(), shared.clone());
        tokio::spawn(async move {
            if let Some(reply) = forward_udp(&shared, &request)
                .await
                .or_else(|| servfail(&request))
            {
                let _ = socket.send_to(&reply, client).await;
            }
        });
    }
}

async fn serve_tcp(listener: tokio::net::TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(serve_tcp_client(stream, shared.clone()));
    }
}

async fn read_framed(stream: &mut tokio::net::TcpStream) -> Option<Vec<u8>> {
    let len = stream.read_u16().await.ok()?;
    let mut message = vec![0u8; usize::from(len)];
    stream.read_exact(&mut message).await.ok()?;
    Some(message)
}

async fn write_framed(stream: &mut tokio::net::TcpStream, message: &[u8]) -> Option<()> {
    let len = u16::try_from(message.len()).ok()?;
    let mut framed = Vec::with_capacity(message.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(message);
    stream.write_all(&framed).await.ok()
}

async fn serve_tcp_client(mut stream: tokio::net::TcpStream, shared: Arc<Shared>) {
    while let Ok(Some(request)) = tokio::time::timeout(TCP_IDLE, read_framed(&mut stream)).await {
        let reply = match shared.table.answer(&request) {
            Some(reply) => Some(reply),
            None => forward_tcp(&shared, &request)
                .await
                .or_else(|| servfail(&request)),
        };
        let Some(reply) = reply else { return };
        if write_framed(&mut stream, &reply).await.is_none() {
            return;
        }
    }
}

async fn forward_udp(shared: &Shared, request: &[u8]) -> Option<Vec<u8>> {
    for upstream in shared.upstreams.servers() {
        let any: SocketAddr = match upstream {
            SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
            SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let Ok(socket) = shared.netns.bind_udp(any).await else {
            continue;
        };
        if socket.send_to(request, upstream).await.is_err() {
            continue;
        }
        let mut buf = vec![0u8; 4096];
        let answer = tokio::time::timeout(UPSTREAM_TIMEOUT, async {
            loop {
                let (len, from) = socket.recv_from(&mut buf).await.ok()?;
                // Only the upstream's answer to this very question (same id) counts.
                if from == upstream && len >= 2 && buf[..2] == request[..2.min(request.len())] {
                    return Some(buf[..len].to_vec());
                }
            }
        })
        .await;
        match answer {
            Ok(Some(reply)) => return Some(reply),
            _ => tracing::debug!(%upstream, "DNS upstream did not answer"),
        }
    }
    None
}

async fn forward_tcp(shared: &Shared, request: &[u8]) -> Option<Vec<u8>> {
    for upstream in shared.upstreams.servers() {
        let attempt = async {
            let mut stream = shared
                .netns
                .connect_tcp(upstream, UPSTREAM_TIMEOUT)
                .await
                .ok()?;
            write_framed(&mut stream, request).await?;
            read_framed(&mut stream).await
        };
        if let Ok(Some(reply)) = tokio::time::timeout(UPSTREAM_TIMEOUT, attempt).await {
            return Some(reply);
        }
    }
    None
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn table() -> DnsTable {
        let table = DnsTable::new("vm", (Ipv4Addr::new(172, 30, 0, 0), 24)).unwrap();
        table.insert("web", Ipv4Addr::new(172, 30, 0, 2));
        table
    }

    fn ask(table: &DnsTable, name: &str, qtype: RecordType) -> Option<Message> {
        let mut request = Message::new();
        request
            .set_id(4242)
            .set_recursion_desired(true)
            .add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
        table
            .answer(&request.to_vec().unwrap())
            .map(|bytes| Message::from_vec(&bytes).unwrap())
    }

    #[test]
    fn a_vm_name_is_answered_case_insensitively_with_its_address() {
        let reply = ask(&table(), "WEB.vm.", RecordType::A).unwrap();
        assert_eq!(reply.id(), 4242);
        assert_eq!(reply.response_code(), ResponseCode::NoError);
        assert!(reply.authoritative());
        let answers = reply.answers();
        assert_eq!(answers.len(), 1);
        assert_eq!(
            answers[0].data(),
            &RData::A(A(Ipv4Addr::new(172, 30, 0, 2)))
        );
    }

    #[test]
    fn unknown_names_in_the_domain_are_nxdomain_and_other_types_nodata() {
        let table = table();
        let reply = ask(&table, "nope.vm.", RecordType::A).unwrap();
        assert_eq!(reply.response_code(), ResponseCode::NXDomain);
        let reply = ask(&table, "web.vm.", RecordType::AAAA).unwrap();
        assert_eq!(
            (reply.response_code(), reply.answers().len()),
            (ResponseCode::NoError, 0)
        );
        table.remove("web");
        let reply = ask(&table, "web.vm.", RecordType::A).unwrap();
        assert_eq!(
            reply.response_code(),
            ResponseCode::NXDomain,
            "gone with the VM"
        );
    }

    #[test]
    fn ptr_in_the_subnet_names_the_vm_and_outside_goes_upstream() {
        let table = table();
        let reply = ask(&table, "2.0.30.172.in-addr.arpa.", RecordType::PTR).unwrap();
        assert_eq!(
            reply.answers()[0].data(),
            &RData::PTR(PTR(Name::from_ascii("web.vm.").unwrap()))
        );
        let reply = ask(&table, "9.0.30.172.in-addr.arpa.", RecordType::PTR).unwrap();
        assert_eq!(reply.response_code(), ResponseCode::NXDomain);
        assert!(ask(&table, "8.8.8.8.in-addr.arpa.", RecordType::PTR).is_none());
        assert!(ask(&table, "example.org.", RecordType::A).is_none());
        assert!(table.answer(b"\x00garbage").is_none());
    }

    #[test]
    fn resolv_conf_skips_the_systemd_stub_and_falls_through_files() {
        assert_eq!(
            parse_resolv_conf("# c\nnameserver 127.0.0.53\noptions edns0\nsearch x\n"),
            vec![]
        );
        assert_eq!(
            parse_resolv_conf("nameserver 10.0.0.2\nnameserver fe80::1%eth0\nnameserver ::1\n"),
            vec!["10.0.0.2:53".parse().unwrap(), "[::1]:53".parse().unwrap()]
        );
        let dir = tempfile::tempdir().unwrap();
        let (stub, real) = (dir.path().join("stub"), dir.path().join("real"));
        std::fs::write(&stub, "nameserver 127.0.0.53\n").unwrap();
        std::fs::write(&real, "nameserver 192.0.2.53\n").unwrap();
        let upstreams = Upstreams::ResolvConf(vec![stub, dir.path().join("missing"), real]);
        assert_eq!(upstreams.servers(), vec!["192.0.2.53:53".parse().unwrap()]);
    }

    /// A fake upstream on loopback that answers every A question with 192.0.2.7.
    async fn fake_upstream() -> (SocketAddr, JoinHandle<()>) {
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            while let Ok((len, from)) = socket.recv_from(&mut buf).await {
                let request = Message::from_vec(&buf[..len]).unwrap();
                let name = request.queries()[0].name().clone();
                let reply = response(
                    &request,
                    ResponseCode::NoError,
                    vec![Record::from_rdata(
                        name,
                        60,
                        RData::A(A(Ipv4Addr::new(192, 0, 2, 7))),
                    )],
                    false,
                );
                socket.send_to(&reply, from).await.unwrap();
            }
        });
        (addr, task)
    }

    #[tokio::test]
    async fn the_server_answers_its_names_and_relays_the_rest_over_udp_and_tcp() {
        let (upstream, _upstream_task) = fake_upstream().await;
        let server = DnsServer::start(
            Netns::current(),
            "127.0.0.1:0".parse().unwrap(),
            table(),
            Upstreams::Explicit(vec![upstream]),
        )
        .await
        .unwrap();
        let client = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        for (name, want) in [
            ("web.vm.", [172, 30, 0, 2]),
            ("example.org.", [192, 0, 2, 7]),
        ] {
            let mut request = Message::new();
            request
                .set_id(7)
                .add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
            client
                .send_to(&request.to_vec().unwrap(), server.addr())
                .await
                .unwrap();
            let mut buf = vec![0u8; 4096];
            let (len, _) = tokio::time::timeout(Duration::from_secs(5), client.recv_from(&mut buf))
                .await
                .unwrap()
                .unwrap();
            let reply = Message::from_vec(&buf[..len]).unwrap();
            assert_eq!(
                reply.answers()[0].data(),
                &RData::A(A(Ipv4Addr::from(want))),
                "{name}"
            );
        }

        // TCP: own names answered (the fake upstream speaks UDP only).
        let mut stream = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
        let mut request = Message::new();
        request.set_id(8).add_query(Query::query(
            Name::from_ascii("web.vm.").unwrap(),
            RecordType::A,
        ));
        write_framed(&mut stream, &request.to_vec().unwrap())
            .await
            .unwrap();
        let reply = Message::from_vec(&read_framed(&mut stream).await.unwrap()).unwrap();
        assert_eq!(reply.answers().len(), 1);
    }

    #[tokio::test]
    async fn no_upstream_answer_is_servfail() {
        let server = DnsServer::start(
            Netns::current(),
            "127.0.0.1:0".parse().unwrap(),
            table(),
            Upstreams::Explicit(vec![]),
        )
        .await
        .unwrap();
        let client = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut request = Message::new();
        request.set_id(9).add_query(Query::query(
            Name::from_ascii("example.org.").unwrap(),
            RecordType::A,
        ));
        client
            .send_to(&request.to_vec().unwrap(), server.addr())
            .await
            .unwrap();
        let mut buf = vec![0u8; 4096];
        let (len, _) = tokio::time::timeout(Duration::from_secs(5), client.recv_from(&mut buf))
            .await
            .unwrap()
            .unwrap();
        let reply = Message::from_vec(&buf[..len]).unwrap();
        assert_eq!(reply.response_code(), ResponseCode::ServFail);
    }
}

//! DNS proxy (Istio's port 15053, UDP and TCP): answers `A`/`AAAA` for mesh Service hostnames
//! with their VIPs and forwards every other query, unchanged, to the upstream resolvers from
//! `/etc/resolv.conf`.
//!
//! Names answered locally (class IN, case-insensitive, trailing dot optional):
//! - a Service hostname (`b.ns-b.svc.cluster.local`) and the forms [`State::service_by_host`]
//!   knows (`b.ns-b.svc`, `b.ns-b`);
//! - a single label (`b`), relative to the client's namespace: the namespace of the workload
//!   whose IP is the query's source address, else [`DnsConfig::default_namespace`];
//! - a search-list expansion of a relative name (`b.ns-b.<client ns>.svc.cluster.local`), so a
//!   pod resolver's first search step is answered without an upstream round trip.
//!
//! A known mesh name asked for another type gets NOERROR with no records (it exists, it has no
//! such record); forwarding it would earn an NXDOMAIN that contradicts our `A` answer.
//! Upstream answers are relayed byte for byte (ids preserved) over the transport the client
//! used; an upstream that fails or times out turns into SERVFAIL.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Header, Message, MessageType, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::rr::{DNSClass, RData, Record, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};
use metrics::Label;
use socket2::SockRef;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream, UdpSocket};
use tokio::sync::{Mutex, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn, Instrument};

use crate::state::{Service, State, Workload};

#[cfg(test)]
mod tests;

/// Istio's DNS proxy address (`ISTIO_META_DNS_PROXY_ADDR`'s default).
pub const DEFAULT_ADDR: &str = "127.0.0.1:15053";
/// Where the upstream resolvers are read from.
pub const RESOLV_CONF: &str = "/etc/resolv.conf";
/// TTL of the records we answer from the mesh state.
pub const TTL: u32 = 30;
/// How long one forwarded query may take, across all upstreams.
pub const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(5);
/// Counter of queries received; malformed ones have `request_query_type="malformed"`.
pub const REQUESTS: &str = "istio_dns_requests_total";
/// Counter of queries forwarded upstream.
pub const UPSTREAM_REQUESTS: &str = "istio_dns_upstream_requests_total";
/// Counter of forwarded queries that got no upstream answer (the client got SERVFAIL).
pub const UPSTREAM_FAILURES: &str = "istio_dns_upstream_failures_total";
/// Histogram of forwarded queries' durations, in seconds.
pub const UPSTREAM_DURATION: &str = "istio_dns_upstream_request_duration_seconds";
/// Istio's buckets for [`UPSTREAM_DURATION`]; the Prometheus recorder must be built with them
/// (`set_buckets_for_metric`), or the histogram renders as a summary.
pub const UPSTREAM_DURATION_BUCKETS: [f64; 6] = [0.0005, 0.001, 0.01, 0.1, 1.0, 5.0];
/// `request_query_type` of a query that could not be parsed.
const MALFORMED: &str = "malformed";

/// Like glibc, only the first three `nameserver` lines count.
const MAX_NAMESERVERS: usize = 3;
const CLUSTER_SUFFIX: &str = "svc.cluster.local";
/// UDP queries being answered at once; past this, datagrams are dropped (the client retries).
const MAX_UDP_IN_FLIGHT: usize = 1024;
const MAX_TCP_CONNECTIONS: usize = 256;
const MAX_TCP_IN_FLIGHT_PER_CONNECTION: usize = 16;
/// A TCP client that sends nothing (or not a whole message) for this long is disconnected.
const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// EDNS payload size we advertise (the DNS flag day 2020 value).
const EDNS_PAYLOAD: u16 = 1232;
/// Smallest possible resource record (root name, type, class, ttl, rdlength).
const MIN_RR_LEN: usize = 11;

/// Errors starting the DNS proxy; each names what to check.
#[derive(thiserror::Error, Debug)]
pub enum DnsError {
    #[error(
        "cannot bind the DNS proxy on {addr} ({proto}): {source}; port in use? (DNS_PROXY_ADDR)"
    )]
    Bind {
        addr: SocketAddr,
        proto: &'static str,
        source: io::Error,
    },
    #[error("cannot read DNS upstreams from {path}: {source}")]
    ResolvConf { path: PathBuf, source: io::Error },
    #[error("DNS proxy socket setup: {0}")]
    Socket(#[source] io::Error),
}

/// Why a forwarded query got no answer (logged; the client gets SERVFAIL).
#[derive(thiserror::Error, Debug)]
enum UpstreamError {
    #[error("no upstream resolvers configured (check /etc/resolv.conf)")]
    NoUpstreams,
    #[error("upstream {0} did not answer in time")]
    Timeout(SocketAddr),
    #[error("upstream {upstream}: {source}")]
    Io {
        upstream: SocketAddr,
        source: io::Error,
    },
    #[error("upstream {0} answered with a different message id")]
    IdMismatch(SocketAddr),
}

/// Settings of one DNS proxy.
#[derive(Clone, Debug)]
pub struct DnsConfig {
    /// Where to listen (UDP and TCP on the same port).
    pub addr: SocketAddr,
    /// Resolvers for everything that is not a mesh name, tried in order.
    pub upstreams: Vec<SocketAddr>,
    /// Budget for one forwarded query across all upstreams.
    pub upstream_timeout: Duration,
    /// SO_MARK on upstream sockets, so capture rules let them through.
    pub packet_mark: Option<u32>,
    /// Namespace for single-label names when the source address is no known workload (an
    /// in-pod instance serves one pod and knows its namespace).
    pub default_namespace: Option<String>,
}

impl DnsConfig {
    /// A config with Istio's defaults for everything but the address and upstreams.
    pub fn new(addr: SocketAddr, upstreams: Vec<SocketAddr>) -> Self {
        DnsConfig {
            addr,
            upstreams,
            upstream_timeout: UPSTREAM_TIMEOUT,
            packet_mark: None,
            default_namespace: None,
        }
    }
}

/// The `nameserver` addresses of a resolv.conf (port 53; at most three, like glibc; IPv6 zones
/// by number or interface name). Lines that do not parse are skipped.
pub fn parse_resolv_conf(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            if words.next()? != "nameserver" {
                return None;
            }
            parse_nameserver(words.next()?)
        })
        .take(MAX_NAMESERVERS)
        .collect()
}

fn parse_nameserver(v: &str) -> Option<SocketAddr> {
    let (ip, zone) = match v.split_once('%') {
        Some((ip, zone)) => (ip, Some(zone)),
        None => (v, None),
    };
    match (ip.parse::<IpAddr>().ok()?, zone) {
        (IpAddr::V4(ip), None) => Some(SocketAddr::new(ip.into(), 53)),
        (IpAddr::V4(_), Some(_)) => None,
        (IpAddr::V6(ip), zone) => {
            let scope = match zone {
                None => 0,
                Some(z) => z
                    .parse::<u32>()
                    .ok()
                    .or_else(|| nix::net::if_::if_nametoindex(z).ok())?,
            };
            Some(SocketAddr::V6(SocketAddrV6::new(ip, 53, 0, scope)))
        }
    }
}

/// Reads the upstream resolvers from a resolv.conf file (normally [`RESOLV_CONF`]).
pub fn read_resolv_conf(path: &Path) -> Result<Vec<SocketAddr>, DnsError> {
    std::fs::read_to_string(path)
        .map(|t| parse_resolv_conf(&t))
        .map_err(|source| DnsError::ResolvConf {
            path: path.to_owned(),
            source,
        })
}

/// Registers the descriptions of the DNS metrics.
pub fn describe_metrics() {
    metrics::describe_counter!(REQUESTS, "Total number of DNS requests.");
    metrics::describe_counter!(
        UPSTREAM_REQUESTS,
        "Total number of DNS requests forwarded to upstream."
    );
    metrics::describe_counter!(
        UPSTREAM_FAILURES,
        "Total number of DNS requests forwarded to upstream that failed."
    );
    metrics::describe_histogram!(
        UPSTREAM_DURATION,
        metrics::Unit::Seconds,
        "Duration of DNS requests forwarded to upstream."
    );
}

/// The transport a query came in on (and is forwarded over).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Transport {
    Udp,
    Tcp,
}

impl Transport {
    fn as_str(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
        }
    }
}

/// A bound DNS proxy; [`DnsProxy::run`] serves it.
pub struct DnsProxy {
    handler: Arc<Handler>,
    udp: UdpSocket,
    tcp: TcpListener,
}

/// Binds the proxy at `cfg.addr` and serves it until `shutdown`.
pub async fn serve(
    state: Arc<State>,
    cfg: DnsConfig,
    shutdown: CancellationToken,
) -> Result<(), DnsError> {
    DnsProxy::bind(state, cfg).await?.run(shutdown).await;
    Ok(())
}

impl DnsProxy {
    /// Binds UDP and TCP on `cfg.addr`; with port 0 both get the same free port.
    pub async fn bind(state: Arc<State>, cfg: DnsConfig) -> Result<Self, DnsError> {
        let addr = cfg.addr;
        let bind_err = |proto| {
            move |source| DnsError::Bind {
                addr,
                proto,
                source,
            }
        };
        let mut attempts = 0;
        let (udp, tcp) = loop {
            let udp = UdpSocket::bind(addr).await.map_err(bind_err("udp"))?;
            let port = udp.local_addr().map_err(DnsError::Socket)?.port();
            match TcpListener::bind(SocketAddr::new(addr.ip(), port)).await {
                Ok(tcp) => break (udp, tcp),
                // The kernel picked a UDP port whose TCP twin is taken: pick again.
                Err(e) if addr.port() == 0 && attempts < 10 => {
                    debug!(port, error = %e, "DNS TCP port taken; retrying");
                    attempts += 1;
                }
                Err(e) => return Err(bind_err("tcp")(e)),
            }
        };
        Ok(Self::from_tokio(state, cfg, udp, tcp))
    }

    /// Serves sockets bound elsewhere (e.g. inside a pod's network namespace).
    pub fn from_std(
        state: Arc<State>,
        cfg: DnsConfig,
        udp: std::net::UdpSocket,
        tcp: std::net::TcpListener,
    ) -> Result<Self, DnsError> {
        udp.set_nonblocking(true).map_err(DnsError::Socket)?;
        tcp.set_nonblocking(true).map_err(DnsError::Socket)?;
        let udp = UdpSocket::from_std(udp).map_err(DnsError::Socket)?;
        let tcp = TcpListener::from_std(tcp).map_err(DnsError::Socket)?;
        Ok(Self::from_tokio(state, cfg, udp, tcp))
    }

    fn from_tokio(state: Arc<State>, mut cfg: DnsConfig, udp: UdpSocket, tcp: TcpListener) -> Self {
        describe_metrics();
        // Forwarding to ourselves would loop until the timeout.
        let own = [udp.local_addr().ok(), tcp.local_addr().ok()];
        cfg.upstreams.retain(|u| !own.contains(&Some(*u)));
        if cfg.upstreams.is_empty() {
            warn!("DNS proxy has no upstream resolvers: names outside the mesh get SERVFAIL");
        }
        DnsProxy {
            handler: Arc::new(Handler {
                state,
                cfg,
                malformed_log: AtomicU64::new(0),
            }),
            udp,
            tcp,
        }
    }

    /// The bound UDP address.
    pub fn udp_addr(&self) -> io::Result<SocketAddr> {
        self.udp.local_addr()
    }

    /// The bound TCP address.
    pub fn tcp_addr(&self) -> io::Result<SocketAddr> {
        self.tcp.local_addr()
    }

    /// Serves until `shutdown`, then waits for the queries in flight (at most the upstream
    /// timeout).
    pub async fn run(self, shutdown: CancellationToken) {
        info!(
            udp = ?self.udp.local_addr().ok(),
            tcp = ?self.tcp.local_addr().ok(),
            upstreams = ?self.handler.cfg.upstreams,
            "DNS proxy listening"
        );
        let tasks = TaskTracker::new();
        let udp =
            self.handler
                .clone()
                .serve_udp(Arc::new(self.udp), shutdown.clone(), tasks.clone());
        let tcp = self
            .handler
            .clone()
            .serve_tcp(self.tcp, shutdown, tasks.clone());
        tokio::join!(udp, tcp);
        tasks.close();
        tasks.wait().await;
        info!("DNS proxy stopped");
    }
}

struct Handler {
    state: Arc<State>,
    cfg: DnsConfig,
    /// Second (since the epoch) of the last malformed-query warning, to rate-limit them.
    malformed_log: AtomicU64,
}

/// Per-request metric labels (Istio's DNS label set).
fn labels(query_type: &'static str, proto: Transport, src: Option<&Workload>) -> Vec<Label> {
    let field = |f: fn(&Workload) -> &str| match src.map(f) {
        Some(v) if !v.is_empty() => v.to_string(),
        _ => "unknown".to_string(),
    };
    vec![
        Label::new("request_query_type", query_type),
        Label::new("request_protocol", proto.as_str()),
        Label::new("source_canonical_service", field(|w| &w.canonical_name)),
        Label::new(
            "source_canonical_revision",
            field(|w| &w.canonical_revision),
        ),
    ]
}

/// Message counts a standard query can have; anything else is FORMERR before a full parse (which
/// would pre-allocate for the claimed counts).
fn header_is_plausible(h: &Header, len: usize) -> bool {
    h.counts.queries == 1
        && h.counts.answers == 0
        && h.counts.authorities == 0
        && usize::from(h.counts.additionals) <= len / MIN_RR_LEN
}

/// A response header for `req`: id, opcode, RD and CD copied; we recurse (via upstreams).
fn response_metadata(req: &Metadata, code: ResponseCode) -> Metadata {
    let mut m = Metadata::response_from_request(req);
    m.recursion_available = true;
    m.response_code = code;
    m
}

fn error_response(req: &Metadata, code: ResponseCode, original: Option<&Message>) -> Message {
    let mut resp = Message::new(req.id, MessageType::Response, req.op_code);
    resp.metadata = response_metadata(req, code);
    if let Some(q) = original {
        resp.add_queries(q.queries.iter().cloned());
        if q.edns.is_some() {
            resp.set_edns(our_edns());
        }
    }
    resp
}

fn our_edns() -> Edns {
    let mut e = Edns::new();
    e.set_max_payload(EDNS_PAYLOAD);
    e
}

/// Encodes `resp`; over UDP, a response larger than the client accepts is sent truncated (TC).
fn encode(resp: &Message, req_max_payload: u16, proto: Transport) -> Option<Vec<u8>> {
    let bytes = match resp.to_vec() {
        Ok(b) => b,
        Err(e) => {
            warn!(error = %e, "cannot encode DNS response");
            return None;
        }
    };
    if proto == Transport::Udp && bytes.len() > usize::from(req_max_payload) {
        return resp.truncate().to_vec().ok();
    }
    Some(bytes)
}

impl Handler {
    /// Answers one query; `None` = no answer (unparseable or not a query).
    async fn handle(&self, packet: &[u8], src: SocketAddr, proto: Transport) -> Option<Vec<u8>> {
        let src_ip = src.ip().to_canonical();
        let workload = self.state.workload_by_ip(src_ip);
        let Ok(header) = Header::read(&mut BinDecoder::new(packet)) else {
            self.malformed(
                src,
                proto,
                workload.as_deref(),
                "shorter than a DNS header; dropped",
            );
            return None;
        };
        if header.message_type == MessageType::Response {
            debug!(%src, "ignoring a DNS response sent to the proxy");
            return None;
        }
        if header.op_code != OpCode::Query {
            debug!(%src, op_code = ?header.op_code, "DNS opcode not implemented");
            let resp = error_response(&header.metadata, ResponseCode::NotImp, None);
            return encode(&resp, 512, proto);
        }
        let formerr = |reason: &str| {
            self.malformed(src, proto, workload.as_deref(), reason);
            encode(
                &error_response(&header.metadata, ResponseCode::FormErr, None),
                512,
                proto,
            )
        };
        if !header_is_plausible(&header, packet.len()) {
            return formerr("not one question / unexpected record counts");
        }
        let req = match Message::from_vec(packet) {
            Ok(m) => m,
            Err(e) => return formerr(&e.to_string()),
        };
        let Some(query) = req.queries.first() else {
            return formerr("no question");
        };
        let qtype = query.query_type();
        let labels = labels(qtype.into(), proto, workload.as_deref());
        metrics::counter!(REQUESTS, labels.iter()).increment(1);

        if query.query_class() == DNSClass::IN {
            let name = query.name().to_ascii().to_ascii_lowercase();
            let namespace = workload
                .as_ref()
                .map(|w| w.namespace.as_str())
                .or(self.cfg.default_namespace.as_deref());
            if let Some(svc) = self.lookup(name.trim_end_matches('.'), namespace) {
                debug!(%src, %name, %qtype, service = %svc.hostname, "answering from the mesh");
                return encode(&local_answer(&req, &svc), req.max_payload(), proto);
            }
        }

        metrics::counter!(UPSTREAM_REQUESTS, labels.iter()).increment(1);
        let start = Instant::now();
        let result = self.forward(packet, header.id, proto).await;
        metrics::histogram!(UPSTREAM_DURATION, labels.iter()).record(start.elapsed().as_secs_f64());
        match result {
            Ok(resp) => Some(resp),
            Err(e) => {
                metrics::counter!(UPSTREAM_FAILURES, labels.iter()).increment(1);
                let name = query.name();
                debug!(%src, %name, %qtype, error = %e, "DNS upstream failed; SERVFAIL");
                let resp = error_response(&req.metadata, ResponseCode::ServFail, Some(&req));
                encode(&resp, req.max_payload(), proto)
            }
        }
    }

    /// Counts a malformed query and logs it (at most one warning a second, the rest at debug).
    fn malformed(
        &self,
        src: SocketAddr,
        proto: Transport,
        workload: Option<&Workload>,
        reason: &str,
    ) {
        metrics::counter!(REQUESTS, labels(MALFORMED, proto, workload).iter()).increment(1);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default();
        if self.malformed_log.swap(now, Ordering::Relaxed) != now {
            warn!(%src, protocol = proto.as_str(), reason, "malformed DNS query");
        } else {
            debug!(%src, protocol = proto.as_str(), reason, "malformed DNS query");
        }
    }

    /// The mesh service `name` (lowercase, no trailing dot) means for a client in `namespace`.
    fn lookup(&self, name: &str, namespace: Option<&str>) -> Option<Arc<Service>> {
        if name.is_empty() {
            return None;
        }
        if !name.contains('.') {
            let ns = namespace?;
            return self
                .state
                .service_by_host(&format!("{name}.{ns}.{CLUSTER_SUFFIX}"));
        }
        if let Some(svc) = self.state.service_by_host(name) {
            return Some(svc);
        }
        // `b.ns-b` expanded with the client's first search domain.
        let ns = namespace?;
        let relative = name.strip_suffix(&format!(".{ns}.{CLUSTER_SUFFIX}"))?;
        if relative.contains('.') {
            self.state.service_by_host(relative)
        } else {
            None
        }
    }

    /// Sends `packet` to the upstreams in order until one answers; each gets an equal share of
    /// what is left of the budget.
    async fn forward(
        &self,
        packet: &[u8],
        id: u16,
        proto: Transport,
    ) -> Result<Vec<u8>, UpstreamError> {
        let upstreams = &self.cfg.upstreams;
        let deadline = Instant::now() + self.cfg.upstream_timeout;
        let mut last = UpstreamError::NoUpstreams;
        for (i, &upstream) in upstreams.iter().enumerate() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let share = left / u32::try_from(upstreams.len() - i).unwrap_or(1);
            let attempt = async {
                match proto {
                    Transport::Udp => self.exchange_udp(upstream, packet, id).await,
                    Transport::Tcp => self.exchange_tcp(upstream, packet, id).await,
                }
                .map_err(|source| UpstreamError::Io { upstream, source })
            };
            match tokio::time::timeout(share, attempt).await {
                Ok(Ok(None)) => last = UpstreamError::IdMismatch(upstream),
                Ok(Ok(Some(resp))) => return Ok(resp),
                Ok(Err(e)) => last = e,
                Err(_) => last = UpstreamError::Timeout(upstream),
            }
            debug!(%upstream, error = %last, "DNS upstream attempt failed");
        }
        Err(last)
    }

    fn mark(&self, sock: SockRef<'_>) -> io::Result<()> {
        if let Some(m) = self.cfg.packet_mark {
            sock.set_mark(m)?;
        }
        Ok(())
    }

    /// One UDP exchange on a fresh connected socket (random source port); datagrams that are not
    /// the answer to `id` are ignored.
    async fn exchange_udp(
        &self,
        upstream: SocketAddr,
        packet: &[u8],
        id: u16,
    ) -> io::Result<Option<Vec<u8>>> {
        let local: SocketAddr = match upstream {
            SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
            SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let sock = socket2::Socket::new(
            socket2::Domain::for_address(upstream),
            socket2::Type::DGRAM,
            Some(socket2::Protocol::UDP),
        )?;
        self.mark(SockRef::from(&sock))?;
        sock.set_nonblocking(true)?;
        sock.bind(&local.into())?;
        let sock = UdpSocket::from_std(sock.into())?;
        sock.connect(upstream).await?;
        sock.send(packet).await?;
        let mut buf = vec![0u8; usize::from(u16::MAX)];
        loop {
            let n = sock.recv(&mut buf).await?;
            if is_response_to(&buf[..n], id) {
                buf.truncate(n);
                return Ok(Some(buf));
            }
            debug!(%upstream, "ignoring an unrelated datagram from the DNS upstream");
        }
    }

    /// One TCP exchange on a new connection.
    async fn exchange_tcp(
        &self,
        upstream: SocketAddr,
        packet: &[u8],
        id: u16,
    ) -> io::Result<Option<Vec<u8>>> {
        let sock = match upstream {
            SocketAddr::V4(_) => TcpSocket::new_v4()?,
            SocketAddr::V6(_) => TcpSocket::new_v6()?,
        };
        self.mark(SockRef::from(&sock))?;
        let mut stream = sock.connect(upstream).await?;
        write_framed(&mut stream, packet).await?;
        let resp = read_framed(&mut stream).await?;
        Ok(is_response_to(&resp, id).then_some(resp))
    }

    async fn serve_udp(
        self: Arc<Self>,
        sock: Arc<UdpSocket>,
        shutdown: CancellationToken,
        tasks: TaskTracker,
    ) {
        let in_flight = Arc::new(Semaphore::new(MAX_UDP_IN_FLIGHT));
        let mut buf = vec![0u8; usize::from(u16::MAX)];
        loop {
            let (n, src) = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = sock.recv_from(&mut buf) => match r {
                    Ok(v) => v,
                    Err(e) => {
                        // ICMP errors from earlier replies surface here; they are not fatal.
                        debug!(error = %e, "DNS UDP receive failed");
                        use io::ErrorKind::{ConnectionRefused, ConnectionReset};
                        if !matches!(e.kind(), ConnectionRefused | ConnectionReset) {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                        continue;
                    }
                },
            };
            let Ok(permit) = in_flight.clone().try_acquire_owned() else {
                debug!(%src, "too many DNS queries in flight; dropping one");
                continue;
            };
            let packet = buf[..n].to_vec();
            let (this, sock) = (self.clone(), sock.clone());
            let span = tracing::debug_span!("dns", protocol = "udp", %src);
            tasks.spawn(
                async move {
                    if let Some(resp) = this.handle(&packet, src, Transport::Udp).await {
                        if let Err(e) = sock.send_to(&resp, src).await {
                            debug!(error = %e, "DNS reply not sent");
                        }
                    }
                    drop(permit);
                }
                .instrument(span),
            );
        }
    }

    async fn serve_tcp(
        self: Arc<Self>,
        listener: TcpListener,
        shutdown: CancellationToken,
        tasks: TaskTracker,
    ) {
        let connections = Arc::new(Semaphore::new(MAX_TCP_CONNECTIONS));
        loop {
            let (stream, src) = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = listener.accept() => match r {
                    Ok(v) => v,
                    Err(e) => {
                        // e.g. EMFILE: back off instead of spinning.
                        debug!(error = %e, "DNS TCP accept failed");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                },
            };
            let Ok(permit) = connections.clone().try_acquire_owned() else {
                debug!(%src, "too many DNS TCP connections; closing one");
                continue;
            };
            let span = tracing::debug_span!("dns", protocol = "tcp", %src);
            let this = self.clone();
            let shutdown = shutdown.clone();
            tasks.spawn(
                async move {
                    this.serve_tcp_connection(stream, src, shutdown).await;
                    drop(permit);
                }
                .instrument(span),
            );
        }
    }

    /// Reads length-prefixed queries until EOF, idle timeout or shutdown; pipelined queries are
    /// answered concurrently (responses may come out of order, RFC 7766).
    async fn serve_tcp_connection(
        self: Arc<Self>,
        stream: TcpStream,
        src: SocketAddr,
        shutdown: CancellationToken,
    ) {
        let (mut rd, wr) = stream.into_split();
        let wr = Arc::new(Mutex::new(wr));
        let mut queries = tokio::task::JoinSet::new();
        loop {
            while queries.try_join_next().is_some() {}
            if queries.len() >= MAX_TCP_IN_FLIGHT_PER_CONNECTION {
                queries.join_next().await;
            }
            let packet = tokio::select! {
                _ = shutdown.cancelled() => break,
                r = tokio::time::timeout(TCP_IDLE_TIMEOUT, read_framed(&mut rd)) => match r {
                    Ok(Ok(p)) => p,
                    Ok(Err(e)) => {
                        if e.kind() != io::ErrorKind::UnexpectedEof {
                            debug!(error = %e, "DNS TCP read failed");
                        }
                        break;
                    }
                    Err(_) => {
                        debug!("DNS TCP connection idle; closing");
                        break;
                    }
                },
            };
            let (this, wr) = (self.clone(), wr.clone());
            queries.spawn(
                async move {
                    if let Some(resp) = this.handle(&packet, src, Transport::Tcp).await {
                        let mut wr = wr.lock().await;
                        if let Err(e) = write_framed(&mut *wr, &resp).await {
                            debug!(error = %e, "DNS TCP reply not sent");
                        }
                    }
                }
                .in_current_span(),
            );
        }
        while queries.join_next().await.is_some() {}
        let _ = wr.lock().await.shutdown().await;
    }
}

/// Whether `msg` is a DNS response with message id `id`.
fn is_response_to(msg: &[u8], id: u16) -> bool {
    Header::read(&mut BinDecoder::new(msg))
        .map(|h| h.message_type == MessageType::Response && h.id == id)
        .unwrap_or(false)
}

async fn read_framed<R: AsyncReadExt + Unpin>(rd: &mut R) -> io::Result<Vec<u8>> {
    let len = rd.read_u16().await?;
    let mut buf = vec![0u8; usize::from(len)];
    rd.read_exact(&mut buf).await?;
    Ok(buf)
}

async fn write_framed<W: AsyncWriteExt + Unpin>(wr: &mut W, msg: &[u8]) -> io::Result<()> {
    let len = u16::try_from(msg.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "DNS message over 65535 bytes"))?;
    let mut out = Vec::with_capacity(msg.len() + 2);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(msg);
    wr.write_all(&out).await
}

/// The answer for a mesh service: its VIPs of the asked family, NOERROR without records for a
/// family it lacks or another record type.
fn local_answer(req: &Message, svc: &Service) -> Message {
    let mut resp = Message::new(req.id, MessageType::Response, req.op_code);
    resp.metadata = response_metadata(&req.metadata, ResponseCode::NoError);
    resp.metadata.authoritative = true;
    resp.add_queries(req.queries.iter().cloned());
    if let Some(q) = req.queries.first() {
        let name = q.name().clone();
        for vip in &svc.vips {
            let data = match (q.query_type(), vip) {
                (RecordType::A, IpAddr::V4(v4)) => RData::A(A(*v4)),
                (RecordType::AAAA, IpAddr::V6(v6)) => RData::AAAA(AAAA(*v6)),
                _ => continue,
            };
            resp.add_answer(Record::from_rdata(name.clone(), TTL, data));
        }
    }
    if req.edns.is_some() {
        resp.set_edns(our_edns());
    }
    resp
}

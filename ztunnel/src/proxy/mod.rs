//! The data plane: outbound (SOCKS5 and captured 15001), inbound HBONE (per-workload 15008) and
//! inbound plaintext (15006) listeners, sharing one [`Proxy`] context.

pub mod connections;
mod copy;
pub mod inbound;
pub mod inbound_plaintext;
pub mod outbound;
pub mod socks5;

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use socket2::{SockRef, TcpKeepalive};
use tokio::net::{TcpSocket, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::identity::CertManager;
use crate::inpod::{Netns, NetnsTable};
use crate::state::State;
pub use copy::relay;

/// Ports that must never be a destination: they would loop into ztunnel itself.
pub const ILLEGAL_PORTS: [u16; 4] = [15001, 15006, 15008, 15080];

/// What every listener needs.
pub struct Proxy {
    pub cfg: Arc<Config>,
    pub state: Arc<State>,
    pub certs: Arc<CertManager>,
    pub pool: mesh_hbone::client::Pool,
    /// Cancelled on SIGTERM: listeners stop accepting.
    pub shutdown: CancellationToken,
    /// Open connections, awaited (up to the drain deadline) on shutdown.
    pub connections: TaskTracker,
    /// Open connections by id, for the dump and re-authorization.
    pub open: Arc<connections::Registry>,
    /// In-pod mode: the netns of each enrolled pod IP. Connections on behalf of a local pod are
    /// made from inside its netns (empty otherwise: everything runs in ztunnel's own netns).
    pub netns: Arc<NetnsTable>,
}

impl Proxy {
    /// Wires the context; the HBONE pool uses Istio's HTTP/2 settings from `cfg`.
    pub fn new(
        cfg: Arc<Config>,
        state: Arc<State>,
        certs: Arc<CertManager>,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        let h = &cfg.hbone;
        let pool_cfg = mesh_hbone::Config {
            stream_window: h.window_size,
            connection_window: h.connection_window_size,
            max_frame_size: h.frame_size,
            pool_max_streams_per_conn: h.pool_max_streams_per_conn,
            pool_idle_timeout: h.pool_unused_release_timeout,
            ..Default::default()
        };
        let netns = Arc::new(NetnsTable::default());
        let pool = mesh_hbone::client::Pool::new(
            pool_cfg,
            Arc::new(MarkDialer {
                mark: cfg.packet_mark,
                netns: netns.clone(),
            }),
        );
        Arc::new(Proxy {
            cfg,
            state,
            certs,
            pool,
            shutdown,
            connections: TaskTracker::new(),
            open: Arc::default(),
            netns,
        })
    }

    /// Connects to `dst` on behalf of the local workload at `local_ip` (inside its pod netns in
    /// in-pod mode), from `src` when given (see [`connect`]).
    pub async fn connect_for(
        &self,
        local_ip: IpAddr,
        src: Option<IpAddr>,
        dst: SocketAddr,
    ) -> io::Result<TcpStream> {
        let netns = self.netns.get(local_ip);
        connect(netns.as_deref(), src, dst, self.cfg.packet_mark).await
    }
}

fn tune(stream: &TcpStream) {
    let _ = stream.set_nodelay(true);
    let ka = TcpKeepalive::new()
        .with_time(Duration::from_secs(180))
        .with_interval(Duration::from_secs(180))
        .with_retries(9);
    let _ = SockRef::from(stream).set_tcp_keepalive(&ka);
}

/// Connects to `dst`, optionally from `src` (the original client IP, so the app sees who called)
/// and with `mark` so capture rules let ztunnel's own traffic through. With `netns`, the socket
/// is made inside that pod network namespace (already marked there).
pub async fn connect(
    netns: Option<&Netns>,
    src: Option<IpAddr>,
    dst: SocketAddr,
    mark: Option<u32>,
) -> io::Result<TcpStream> {
    let socket = match netns {
        Some(ns) => ns.tcp_socket(dst.is_ipv4()).await?,
        None if dst.is_ipv4() => TcpSocket::new_v4()?,
        None => TcpSocket::new_v6()?,
    };
    let sref = SockRef::from(&socket);
    if let Some(m) = mark {
        sref.set_mark(m)?;
    }
    if let Some(ip) = src.filter(|ip| ip.is_ipv4() == dst.is_ipv4()) {
        // Let connect() pick the source port knowing the full 4-tuple; otherwise bind() must find
        // a port unused towards *every* destination, which crawls once TIME_WAIT fills the range.
        let _ = nix::sys::socket::setsockopt(
            &socket,
            nix::sys::socket::sockopt::IpBindAddressNoPort,
            &true,
        );
        if let Err(e) = socket.bind(SocketAddr::new(ip, 0)) {
            if e.kind() != io::ErrorKind::AddrNotAvailable {
                return Err(e);
            }
            // Not a local address: spoof it transparently when we may (in-pod mode, root).
            let transparent = if ip.is_ipv4() {
                sref.set_ip_transparent_v4(true)
            } else {
                sref.set_ip_transparent_v6(true)
            };
            match transparent {
                Ok(()) => socket.bind(SocketAddr::new(ip, 0))?,
                Err(err) => {
                    tracing::debug!(%ip, error = %err, "cannot preserve the source address; connecting from our own")
                }
            }
        }
    }
    let stream = tokio::time::timeout(Duration::from_secs(10), socket.connect(dst))
        .await
        .map_err(|_| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!("connect to {dst} timed out"),
            )
        })??;
    tune(&stream);
    Ok(stream)
}

/// Dials HBONE peers with ztunnel's packet mark, from the source pod's netns in in-pod mode.
struct MarkDialer {
    mark: Option<u32>,
    netns: Arc<NetnsTable>,
}

impl mesh_hbone::client::Dialer for MarkDialer {
    fn dial(
        &self,
        src: Option<IpAddr>,
        dst: SocketAddr,
    ) -> Pin<Box<dyn Future<Output = io::Result<TcpStream>> + Send>> {
        let mark = self.mark;
        let netns = src.and_then(|ip| self.netns.get(ip));
        Box::pin(async move { connect(netns.as_deref(), src, dst, mark).await })
    }
}

/// Accept loop shared by the TCP listeners: stops on shutdown, tracks every connection task.
pub async fn accept_loop<F, Fut>(
    proxy: Arc<Proxy>,
    listener: tokio::net::TcpListener,
    name: &'static str,
    handle: F,
) where
    F: Fn(Arc<Proxy>, TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let local = listener.local_addr().ok();
    tracing::info!(listener = name, addr = ?local, "listening");
    loop {
        let accepted = tokio::select! {
            _ = proxy.shutdown.cancelled() => break,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, peer)) => {
                // Dual-stack listeners report IPv4 peers as ::ffff:a.b.c.d; workloads are
                // indexed by their plain IPv4 address.
                let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
                tune(&stream);
                let fut = handle(proxy.clone(), stream, peer);
                proxy.connections.spawn(fut);
            }
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                tracing::warn!(listener = name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    tracing::info!(listener = name, "stopped accepting");
}

/// L4 authorization of a connection to the local workload `dst` (dry-run policies only log).
pub fn authorize(
    state: &State,
    dst: &crate::state::Workload,
    conn: &mesh_policy::Connection<'_>,
) -> mesh_policy::Decision {
    let policies = state.policies_for(dst);
    mesh_policy::evaluate(
        policies.iter().map(|p| p.as_ref()),
        conn,
        |p, allowed| tracing::info!(policy = %p.key(), allowed, "dry-run policy evaluated (not enforced)"),
    )
}

/// The original destination of a REDIRECTed connection (`SO_ORIGINAL_DST`).
pub fn original_dst(stream: &TcpStream) -> io::Result<SocketAddr> {
    let sref = SockRef::from(stream);
    let local = stream.local_addr()?;
    let addr = if local.ip().to_canonical().is_ipv4() {
        sref.original_dst_v4()?
    } else {
        sref.original_dst_v6()?
    };
    addr.as_socket().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "original destination is not an IP address",
        )
    })
}

//! HBONE client: a pool of mTLS HTTP/2 connections and CONNECT streams over them.
//!
//! Pooling follows ztunnel (`src/proxy/pool.rs`):
//! * connections are keyed by [`PoolKey`] (source identity and IP, dialed address, acceptable
//!   destination identities) and only shared within a key;
//! * a connection takes new streams while it has fewer than
//!   `min(Config::pool_max_streams_per_conn, peer SETTINGS_MAX_CONCURRENT_STREAMS)`; when all
//!   are full, another connection is dialed for the same key;
//! * at most one dial per key is in flight: concurrent callers for that key wait for it and
//!   then reuse the new connection. The pool-wide lock is never held across an await, so a
//!   slow or hung handshake for one key never delays any other key;
//! * broken connections (closed, GOAWAY, keepalive timeout) are removed and skipped;
//! * idle eviction is timer-driven, not lazy: each connection's driver task drops the pool's
//!   handle once the connection has had no streams for `Config::pool_idle_timeout`. The HTTP/2
//!   connection then closes by itself (GOAWAY) since nothing references it any more.

mod conn;
mod pool;

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use http::uri::Authority;
use http::{HeaderMap, Method, Request, Uri, Version};
use tokio::net::{TcpSocket, TcpStream};
use tracing::Instrument;

use crate::{Config, H2Stream, HboneError};

pub(crate) use pool::StreamGuard;

/// Which connections may carry a stream: only those opened for the same source identity,
/// source IP, dialed address and set of acceptable destination identities.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PoolKey {
    /// SPIFFE id presented by the client (the source workload's identity).
    pub src_identity: String,
    /// Source IP the connection is bound to, if any.
    pub src_ip: Option<IpAddr>,
    /// Address actually dialed, e.g. `<pod IP>:15008` or `<waypoint IP>:15008`.
    pub dst: SocketAddr,
    /// Identities accepted from the server, sorted (use [`PoolKey::new`] to get that right).
    pub dst_identities: Vec<String>,
}

impl PoolKey {
    /// Builds a key, sorting and de-duplicating `dst_identities` so equal sets compare equal.
    pub fn new(
        src_identity: impl Into<String>,
        src_ip: Option<IpAddr>,
        dst: SocketAddr,
        mut dst_identities: Vec<String>,
    ) -> Self {
        dst_identities.sort();
        dst_identities.dedup();
        PoolKey {
            src_identity: src_identity.into(),
            src_ip,
            dst,
            dst_identities,
        }
    }
}

/// What to send in the CONNECT request.
#[derive(Clone, Debug)]
pub struct ConnectRequest {
    /// `:authority`, the HBONE target: `<ip>:<port>`, `[v6]:<port>` or `<hostname>:<port>`.
    pub authority: String,
    /// Extra request headers (`baggage`, `forwarded`, `traceparent`, ...).
    pub headers: HeaderMap,
}

impl ConnectRequest {
    /// A classic CONNECT: method CONNECT and an authority-only URI, so h2 sends `:method` and
    /// `:authority` and no `:scheme`/`:path`.
    fn to_http(&self) -> Result<Request<()>, HboneError> {
        let invalid = |reason: String| HboneError::InvalidAuthority {
            authority: self.authority.clone(),
            reason,
        };
        let authority: Authority = self
            .authority
            .parse()
            .map_err(|e| invalid(format!("{e}")))?;
        if authority.port_u16().is_none() {
            return Err(invalid("a port is required".to_string()));
        }
        let mut request = Request::new(());
        *request.method_mut() = Method::CONNECT;
        *request.uri_mut() = Uri::from(authority);
        *request.version_mut() = Version::HTTP_2;
        *request.headers_mut() = self.headers.clone();
        Ok(request)
    }
}

/// Seam for making the outer TCP connection (in-pod mode will dial from inside a pod netns).
pub trait Dialer: Send + Sync + 'static {
    /// Opens a TCP connection to `dst`, from source address `src` when given (the pool key's
    /// source IP: the peer then sees the workload's address, as it does in in-pod mode).
    fn dial(
        &self,
        src: Option<IpAddr>,
        dst: SocketAddr,
    ) -> Pin<Box<dyn Future<Output = io::Result<TcpStream>> + Send>>;
}

/// Plain TCP connect with Istio's socket options: `TCP_NODELAY`, keepalive probes after 180 s
/// idle, every 180 s, 9 probes.
#[derive(Clone, Copy, Debug, Default)]
pub struct TcpDialer;

const TCP_KEEPALIVE_TIME: Duration = Duration::from_secs(180);
const TCP_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(180);
const TCP_KEEPALIVE_RETRIES: u32 = 9;

impl TcpDialer {
    /// Applies the keepalive settings to a socket (also useful for accepted sockets).
    pub fn set_keepalive(socket: socket2::SockRef<'_>) -> io::Result<()> {
        let keepalive = socket2::TcpKeepalive::new()
            .with_time(TCP_KEEPALIVE_TIME)
            .with_interval(TCP_KEEPALIVE_INTERVAL)
            .with_retries(TCP_KEEPALIVE_RETRIES);
        socket.set_tcp_keepalive(&keepalive)
    }
}

impl Dialer for TcpDialer {
    fn dial(
        &self,
        src: Option<IpAddr>,
        dst: SocketAddr,
    ) -> Pin<Box<dyn Future<Output = io::Result<TcpStream>> + Send>> {
        Box::pin(async move {
            let socket = if dst.is_ipv4() {
                TcpSocket::new_v4()?
            } else {
                TcpSocket::new_v6()?
            };
            if let Some(ip) = src.filter(|ip| ip.is_ipv4() == dst.is_ipv4()) {
                socket.bind(SocketAddr::new(ip, 0))?;
            }
            socket.set_nodelay(true)?;
            TcpDialer::set_keepalive(socket2::SockRef::from(&socket))?;
            socket.connect(dst).await
        })
    }
}

/// Pool of HBONE connections. Cheap to clone (shared state behind an `Arc`).
#[derive(Clone)]
pub struct Pool {
    inner: Arc<pool::PoolInner>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("connections", &self.connection_count())
            .finish()
    }
}

impl Pool {
    /// A pool with `cfg`'s HTTP/2 and pooling settings, dialing TCP through `dialer`.
    pub fn new(cfg: Config, dialer: Arc<dyn Dialer>) -> Self {
        Pool {
            inner: Arc::new(pool::PoolInner::new(cfg, dialer)),
        }
    }

    /// Opens a CONNECT stream to `req.authority` over a connection for `key`.
    ///
    /// Reuses a live connection for `key` with spare streams (fewer than
    /// `min(pool_max_streams_per_conn, peer max)`), else dials exactly once per key at a time
    /// (others for the same key wait and reuse it; other keys never wait on this handshake).
    /// TLS uses `tls` with server name `0.0.0.0` (the caller's verifier checks identities) and
    /// must negotiate ALPN `h2`. Sends CONNECT (no `:scheme`/`:path`) and returns the stream
    /// once the peer answers 200, plus the response headers. Any other status is
    /// [`HboneError::Status`].
    ///
    /// If a pooled connection turns out to be unusable before the request was processed
    /// (GOAWAY, closed, REFUSED_STREAM), the attempt is repeated once on another connection.
    pub async fn connect(
        &self,
        key: PoolKey,
        tls: Arc<rustls::ClientConfig>,
        req: ConnectRequest,
    ) -> Result<(H2Stream, HeaderMap), HboneError> {
        let span = tracing::debug_span!(
            "hbone_connect",
            dst = %key.dst,
            src_identity = %key.src_identity,
            authority = %req.authority,
        );
        async move {
            let mut retried = false;
            loop {
                let request = req.to_http()?;
                let checkout = self.inner.checkout(&key, &tls).await?;
                let conn_id = checkout.conn_id();
                match conn::open_stream(checkout, request).await {
                    Ok(opened) => return Ok(opened),
                    Err(conn::OpenError::Retryable(e)) if !retried => {
                        tracing::debug!(conn = conn_id, error = %e, "connection unusable, retrying on another");
                        self.inner.mark_broken(&key, conn_id);
                        retried = true;
                    }
                    Err(conn::OpenError::Retryable(e) | conn::OpenError::Fatal(e)) => {
                        tracing::debug!(conn = conn_id, error = %e, "HBONE CONNECT failed");
                        return Err(e);
                    }
                }
            }
        }
        .instrument(span)
        .await
    }

    /// Number of connections currently held by the pool (all keys).
    pub fn connection_count(&self) -> usize {
        self.inner.connection_count()
    }
}

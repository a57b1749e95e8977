//! Requests to backend pods: an HBONE CONNECT stream (the waypoint's own certificate, the
//! backend's SPIFFE identity expected) to `<pod IP>:15008` with `:authority`
//! `<pod IP>:<target port>`, or plain TCP for pods outside the mesh; then HTTP/1.1 or HTTP/2
//! (the client's version, so gRPC stays HTTP/2) on it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_hbone::client::{ConnectRequest, PoolKey};
use mesh_identity::spiffe::Identity;
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::{debug, Instrument};

use super::{Proxy, RespBody};
use crate::routes::pool::Overflow;
use crate::routes::{Endpoint, FailureKind};

/// HBONE port of every mesh pod.
const HBONE_PORT: u16 = 15008;

/// Why an attempt failed.
#[derive(thiserror::Error, Debug)]
pub enum UpstreamError {
    /// The rule has no backend with a weight above 0.
    #[error("the route has no backend with a non-zero weight")]
    NoBackend,
    /// The backend Service has no endpoints.
    #[error("no healthy endpoint for {0}")]
    NoEndpoint(String),
    /// Our own certificate is not available.
    #[error("waypoint certificate unavailable: {0}")]
    Certificate(#[from] mesh_identity::manager::CertError),
    /// The endpoint's identity is not a SPIFFE id.
    #[error("backend identity {0:?} is not a SPIFFE id")]
    Identity(String),
    /// HBONE to the pod failed (connect, TLS, CONNECT refused).
    #[error("HBONE to {addr} failed: {source}")]
    Hbone {
        /// Pod address.
        addr: SocketAddr,
        /// Why.
        source: mesh_hbone::HboneError,
    },
    /// Plain TCP connect failed.
    #[error("connect to {addr} failed: {source}")]
    Connect {
        /// Pod address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// HTTP to the backend failed (handshake, reset, protocol error).
    #[error("HTTP to the backend failed: {0}")]
    Http(#[from] hyper::Error),
    /// The request could not be rebuilt for the backend.
    #[error("cannot forward the request: {0}")]
    BadRequest(String),
    /// The route's request timeout passed.
    #[error("request timeout ({0:?}) reached")]
    Timeout(Duration),
    /// The route's per-try timeout passed.
    #[error("backend request timeout ({0:?}) reached")]
    TryTimeout(Duration),
    /// The backend's connection pool (DestinationRule connectionPool) is full.
    #[error("{0}; raise the DestinationRule's connectionPool limits if this is expected load")]
    Overflow(#[from] Overflow),
}

impl UpstreamError {
    /// Connection-level failures are retried (Istio's connect-failure, refused-stream, reset).
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            UpstreamError::Hbone { .. }
                | UpstreamError::Connect { .. }
                | UpstreamError::Http(_)
                | UpstreamError::TryTimeout(_)
        )
    }

    /// The retry condition class of a failure.
    pub fn failure_kind(&self) -> FailureKind {
        match self {
            UpstreamError::Http(_) => FailureKind::Reset,
            UpstreamError::TryTimeout(_) | UpstreamError::Timeout(_) => FailureKind::Timeout,
            _ => FailureKind::Connect,
        }
    }

    /// Status sent to the client.
    pub fn status(&self) -> StatusCode {
        match self {
            UpstreamError::NoBackend | UpstreamError::BadRequest(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
            UpstreamError::Timeout(_) | UpstreamError::TryTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            _ => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// Envoy's response flag for it.
    pub fn flags(&self) -> &'static str {
        match self {
            UpstreamError::NoBackend => "NR",
            UpstreamError::NoEndpoint(_) => "UH",
            UpstreamError::Timeout(_) | UpstreamError::TryTimeout(_) => "UT",
            UpstreamError::Http(_) => "UC",
            UpstreamError::Overflow(_) => "UO",
            _ => "UF",
        }
    }
}

/// A byte stream to a backend.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

/// Opens a byte stream to `ep` (HBONE or plain TCP).
pub async fn connect(proxy: &Proxy, ep: &Endpoint) -> Result<Box<dyn Io>, UpstreamError> {
    if !ep.hbone {
        let s = tokio::net::TcpStream::connect(ep.addr)
            .await
            .map_err(|source| UpstreamError::Connect {
                addr: ep.addr,
                source,
            })?;
        let _ = s.set_nodelay(true);
        return Ok(Box::new(s));
    }
    let certs = proxy.certs.fetch(&proxy.identity).await?;
    let expected =
        Identity::parse(&ep.identity).map_err(|_| UpstreamError::Identity(ep.identity.clone()))?;
    let tls = certs.client_config(std::slice::from_ref(&expected))?;
    let key = PoolKey::new(
        proxy.identity.to_string(),
        proxy.cfg.instance_ip,
        SocketAddr::new(ep.addr.ip(), HBONE_PORT),
        vec![ep.identity.clone()],
    );
    let req = ConnectRequest {
        authority: ep.addr.to_string(),
        headers: HeaderMap::new(),
    };
    let (stream, _) =
        proxy
            .pool
            .connect(key, tls, req)
            .await
            .map_err(|source| UpstreamError::Hbone {
                addr: ep.addr,
                source,
            })?;
    Ok(Box::new(stream))
}

/// Idle HTTP connections per backend, reused across requests: opening a fresh HBONE stream and
/// HTTP handshake for every request would dominate the cost of a small one. HTTP/2 connections
/// multiplex every request; HTTP/1.1 ones are taken one request at a time and become ready again
/// once the previous response body has been read. A connection that has carried the
/// DestinationRule's `maxRequestsPerConnection` requests is not used again.
#[derive(Default)]
pub struct HttpPool {
    conns: Mutex<HashMap<ConnKey, Conns>>,
}

/// One backend as seen by the pool (its identity too: a pod IP reused by another workload must
/// not get a connection authenticated for the previous one).
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct ConnKey {
    addr: SocketAddr,
    identity: String,
    hbone: bool,
    h2: bool,
}

/// A connection and the requests it has been given.
struct Counted<S> {
    sender: S,
    used: u32,
}

enum Conns {
    H1(Vec<Counted<hyper::client::conn::http1::SendRequest<RespBody>>>),
    H2(Counted<hyper::client::conn::http2::SendRequest<RespBody>>),
}

/// Idle HTTP/1.1 connections kept per backend.
const MAX_IDLE_H1: usize = 64;

/// May a connection that carried `used` requests take another? (`max` 0 = no limit.)
fn may_reuse(used: u32, max: u32) -> bool {
    max == 0 || used < max
}

impl HttpPool {
    fn take_h1(
        &self,
        key: &ConnKey,
    ) -> Option<Counted<hyper::client::conn::http1::SendRequest<RespBody>>> {
        let mut map = self.conns.lock().ok()?;
        let Some(Conns::H1(list)) = map.get_mut(key) else {
            return None;
        };
        list.retain(|c| !c.sender.is_closed());
        let i = list.iter().position(|c| c.sender.is_ready())?;
        Some(list.swap_remove(i))
    }

    /// Keeps `conn` for reuse unless it is closed, spent (`max`) or the idle list is full.
    fn put_h1(
        &self,
        key: ConnKey,
        conn: Counted<hyper::client::conn::http1::SendRequest<RespBody>>,
        max: u32,
    ) {
        if conn.sender.is_closed() || !may_reuse(conn.used, max) {
            return;
        }
        let Ok(mut map) = self.conns.lock() else {
            return;
        };
        match map.entry(key).or_insert_with(|| Conns::H1(Vec::new())) {
            Conns::H1(list) if list.len() < MAX_IDLE_H1 => list.push(conn),
            _ => {}
        }
    }

    /// The backend's HTTP/2 connection, counting one more request on it; `None` when there is
    /// none, or it is closed or spent (then it is forgotten, and finishes what it carries).
    fn h2(
        &self,
        key: &ConnKey,
        max: u32,
    ) -> Option<hyper::client::conn::http2::SendRequest<RespBody>> {
        let mut map = self.conns.lock().ok()?;
        let Some(Conns::H2(c)) = map.get_mut(key) else {
            return None;
        };
        if c.sender.is_closed() || !may_reuse(c.used, max) {
            map.remove(key);
            return None;
        }
        c.used += 1;
        Some(c.sender.clone())
    }

    /// A new HTTP/2 connection that has just been given its first request.
    fn set_h2(&self, key: ConnKey, sender: hyper::client::conn::http2::SendRequest<RespBody>) {
        if let Ok(mut map) = self.conns.lock() {
            map.insert(key, Conns::H2(Counted { sender, used: 1 }));
        }
    }
}

/// Sends `req` to `ep`, on a reused connection when one is idle, and returns the response head.
/// Upgrade requests always get a connection of their own (it leaves HTTP once upgraded).
/// `max_per_conn` is the backend's `maxRequestsPerConnection` (0 = no limit).
pub async fn send(
    proxy: &Proxy,
    ep: &Endpoint,
    h2: bool,
    max_per_conn: u32,
    req: Request<RespBody>,
) -> Result<Response<Incoming>, UpstreamError> {
    let key = ConnKey {
        addr: ep.addr,
        identity: ep.identity.clone(),
        hbone: ep.hbone,
        h2,
    };
    let span = tracing::debug_span!("upstream", addr = %ep.addr);
    let mut req = req;
    if h2 {
        if let Some(mut sender) = proxy.http.h2(&key, max_per_conn) {
            match sender.try_send_request(req).await {
                Ok(resp) => return Ok(resp),
                Err(mut e) => match e.take_message() {
                    Some(r) => {
                        debug!(error = %e.error(), "upstream HTTP/2 connection went away; reconnecting");
                        req = r;
                    }
                    None => return Err(e.into_error().into()),
                },
            }
        }
        let io = TokioIo::new(connect(proxy, ep).await?);
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
        tokio::spawn(
            async move {
                if let Err(e) = conn.await {
                    debug!(error = %e, "upstream HTTP/2 connection ended with an error");
                }
            }
            .instrument(span),
        );
        proxy.http.set_h2(key, sender.clone());
        return Ok(sender.send_request(req).await?);
    }
    let upgrade = req.headers().contains_key(http::header::UPGRADE);
    if !upgrade {
        if let Some(mut conn) = proxy.http.take_h1(&key) {
            match conn.sender.try_send_request(req).await {
                Ok(resp) => {
                    // Ready again once this response's body has been read; take_h1 checks.
                    conn.used += 1;
                    proxy.http.put_h1(key, conn, max_per_conn);
                    return Ok(resp);
                }
                // The backend closed the idle connection before taking the request: send it on
                // a fresh one. A request it had started on is not replayed.
                Err(mut e) => match e.take_message() {
                    Some(r) => {
                        debug!(error = %e.error(), "idle upstream connection was closed; reconnecting");
                        req = r;
                    }
                    None => return Err(e.into_error().into()),
                },
            }
        }
    }
    let io = TokioIo::new(connect(proxy, ep).await?);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await?;
    tokio::spawn(
        async move {
            if let Err(e) = conn.with_upgrades().await {
                debug!(error = %e, "upstream HTTP/1.1 connection ended with an error");
            }
        }
        .instrument(span),
    );
    let resp = sender.send_request(req).await?;
    if !upgrade {
        proxy
            .http
            .put_h1(key, Counted { sender, used: 1 }, max_per_conn);
    }
    Ok(resp)
}

/// The request as sent upstream: `parts` (headers already edited) with `host` and
/// `path_and_query`, in the client's HTTP version.
pub fn build_request(
    parts: &http::request::Parts,
    host: &str,
    path_and_query: &str,
    body: RespBody,
) -> Result<Request<RespBody>, UpstreamError> {
    let h2 = parts.version == Version::HTTP_2;
    let mut req = Request::new(body);
    *req.method_mut() = parts.method.clone();
    *req.headers_mut() = parts.headers.clone();
    if h2 {
        *req.version_mut() = Version::HTTP_2;
        *req.uri_mut() = Uri::builder()
            .scheme("http")
            .authority(host)
            .path_and_query(path_and_query)
            .build()
            .map_err(|e| UpstreamError::BadRequest(e.to_string()))?;
        req.headers_mut().remove(http::header::HOST);
    } else {
        *req.uri_mut() = path_and_query
            .parse()
            .map_err(|e: http::uri::InvalidUri| UpstreamError::BadRequest(e.to_string()))?;
        if let Ok(v) = HeaderValue::from_str(host) {
            req.headers_mut().insert(http::header::HOST, v);
        }
    }
    Ok(req)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(h2: bool) -> ConnKey {
        ConnKey {
            addr: "10.0.0.1:8080".parse().unwrap(),
            identity: "spiffe://cluster.local/ns/a/sa/b".into(),
            hbone: true,
            h2,
        }
    }

    /// An HTTP/1.1 client connection over an in-memory pipe (the far end is never read: only
    /// the pool's bookkeeping is exercised).
    async fn h1_sender() -> (
        hyper::client::conn::http1::SendRequest<RespBody>,
        tokio::io::DuplexStream,
    ) {
        let (near, far) = tokio::io::duplex(1024);
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(near))
            .await
            .unwrap();
        tokio::spawn(conn);
        // Ready (as after a response was read) once the connection task has run.
        sender.ready().await.unwrap();
        (sender, far)
    }

    #[tokio::test]
    async fn an_http1_connection_is_retired_after_max_requests_per_connection() {
        let pool = HttpPool::default();
        let (sender, _far) = h1_sender().await;
        pool.put_h1(key(false), Counted { sender, used: 1 }, 2);
        let mut c = pool.take_h1(&key(false)).expect("reused after one request");
        assert_eq!(c.used, 1);
        c.used += 1;
        pool.put_h1(key(false), c, 2);
        assert!(pool.take_h1(&key(false)).is_none(), "spent at 2 of 2");
        // No limit: kept however many it carried.
        let (sender, _far2) = h1_sender().await;
        pool.put_h1(key(false), Counted { sender, used: 1000 }, 0);
        assert!(pool.take_h1(&key(false)).is_some());
    }

    #[tokio::test]
    async fn an_http2_connection_is_forgotten_once_spent() {
        let pool = HttpPool::default();
        let (near, _far) = tokio::io::duplex(64 * 1024);
        let exec = TokioExecutor::new();
        // The handshake completes without the far end answering (the preface is only written).
        let (sender, conn) = hyper::client::conn::http2::handshake(exec, TokioIo::new(near))
            .await
            .unwrap();
        tokio::spawn(conn);
        pool.set_h2(key(true), sender);
        assert!(pool.h2(&key(true), 3).is_some(), "second request");
        assert!(pool.h2(&key(true), 3).is_some(), "third request");
        assert!(pool.h2(&key(true), 3).is_none(), "spent after 3");
        assert!(pool.h2(&key(true), 3).is_none(), "and forgotten");
    }

    #[test]
    fn reuse_rule() {
        assert!(may_reuse(5, 0));
        assert!(may_reuse(1, 2));
        assert!(!may_reuse(2, 2));
    }
}

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
/// once the previous response body has been read.
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

enum Conns {
    H1(Vec<hyper::client::conn::http1::SendRequest<RespBody>>),
    H2(hyper::client::conn::http2::SendRequest<RespBody>),
}

/// Idle HTTP/1.1 connections kept per backend.
const MAX_IDLE_H1: usize = 64;

impl HttpPool {
    fn take_h1(&self, key: &ConnKey) -> Option<hyper::client::conn::http1::SendRequest<RespBody>> {
        let mut map = self.conns.lock().ok()?;
        let Some(Conns::H1(list)) = map.get_mut(key) else {
            return None;
        };
        list.retain(|s| !s.is_closed());
        let i = list.iter().position(|s| s.is_ready())?;
        Some(list.swap_remove(i))
    }

    fn put_h1(&self, key: ConnKey, sender: hyper::client::conn::http1::SendRequest<RespBody>) {
        let Ok(mut map) = self.conns.lock() else {
            return;
        };
        match map.entry(key).or_insert_with(|| Conns::H1(Vec::new())) {
            Conns::H1(list) if list.len() < MAX_IDLE_H1 && !sender.is_closed() => list.push(sender),
            _ => {}
        }
    }

    fn h2(&self, key: &ConnKey) -> Option<hyper::client::conn::http2::SendRequest<RespBody>> {
        match self.conns.lock().ok()?.get(key) {
            Some(Conns::H2(s)) if !s.is_closed() => Some(s.clone()),
            _ => None,
        }
    }

    fn set_h2(&self, key: ConnKey, sender: hyper::client::conn::http2::SendRequest<RespBody>) {
        if let Ok(mut map) = self.conns.lock() {
            map.insert(key, Conns::H2(sender));
        }
    }
}

/// Sends `req` to `ep`, on a reused connection when one is idle, and returns the response head.
/// Upgrade requests always get a connection of their own (it leaves HTTP once upgraded).
pub async fn send(
    proxy: &Proxy,
    ep: &Endpoint,
    h2: bool,
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
        if let Some(mut sender) = proxy.http.h2(&key) {
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
        if let Some(mut sender) = proxy.http.take_h1(&key) {
            match sender.try_send_request(req).await {
                Ok(resp) => {
                    // Ready again once this response's body has been read; take_h1 checks.
                    proxy.http.put_h1(key, sender);
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
        proxy.http.put_h1(key, sender);
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

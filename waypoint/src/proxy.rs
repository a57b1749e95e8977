//! The data path: HBONE in (mTLS, CONNECT to a service `VIP:port`), HTTP parsed per stream and
//! routed, each request sent over its own HBONE stream to the chosen backend pod; non-HTTP
//! ports and upgraded connections (WebSocket) are relayed as bytes.

mod mirror;
mod upstream;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_hbone::server::InboundRequest;
use mesh_identity::manager::CertManager;
use mesh_identity::spiffe::Identity;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Instrument};

use crate::config::Config;
use crate::metrics::{RequestRecord, Source, REJECTED_STREAMS, RETRIES_TOTAL};
use crate::routes::{self, Port, RequestView, RetryBudget, Rule, Service, Table};

pub use upstream::UpstreamError;

/// Boxed error of response bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body of every response the waypoint sends.
pub type RespBody = BoxBody<Bytes, BoxError>;

/// Largest request body buffered so it can be retried; larger or unsized bodies are streamed
/// and their requests are not retried.
const MAX_RETRY_BODY: u64 = 64 * 1024;
/// Retry budget: retries in flight ≤ 20 % of requests in flight, at least 3.
const RETRY_BUDGET_PERCENT: u64 = 20;
const RETRY_BUDGET_FLOOR: u64 = 3;

/// Shared by every connection.
pub struct Proxy {
    /// Configuration.
    pub cfg: Arc<Config>,
    /// Our certificate.
    pub certs: Arc<CertManager>,
    /// Our identity.
    pub identity: Identity,
    /// Route table.
    pub routes: watch::Receiver<Arc<Table>>,
    pool: mesh_hbone::client::Pool,
    /// HTTP connections to backends kept for reuse (over the pooled HBONE connections).
    http: upstream::HttpPool,
    budget: Arc<RetryBudget>,
    /// L7 security by Service (AuthorizationPolicy, RequestAuthentication).
    security: watch::Receiver<Arc<crate::security::SecurityTable>>,
}

impl Proxy {
    /// A proxy presenting `identity`'s certificate from `certs`.
    pub fn new(
        cfg: Arc<Config>,
        certs: Arc<CertManager>,
        routes: watch::Receiver<Arc<Table>>,
    ) -> Self {
        Proxy {
            identity: cfg.identity(),
            cfg,
            certs,
            routes,
            pool: mesh_hbone::client::Pool::new(
                mesh_hbone::Config::default(),
                Arc::new(mesh_hbone::client::TcpDialer),
            ),
            http: upstream::HttpPool::default(),
            budget: Arc::new(RetryBudget::new(RETRY_BUDGET_PERCENT, RETRY_BUDGET_FLOOR)),
            security: watch::channel(Arc::default()).1,
        }
    }

    /// Enforces the L7 security published on `security`.
    pub fn with_security(
        mut self,
        security: watch::Receiver<Arc<crate::security::SecurityTable>>,
    ) -> Self {
        self.security = security;
        self
    }
}

/// Accepts HBONE connections until `shutdown`.
pub async fn serve(proxy: Arc<Proxy>, listener: TcpListener, shutdown: CancellationToken) {
    info!(addr = ?listener.local_addr().ok(), "HBONE listener open");
    let mut next_id: u64 = 0;
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => { warn!(error = %e, "accept failed"); continue; }
            },
        };
        next_id += 1;
        let span = tracing::info_span!("conn", id = next_id, %peer);
        tokio::spawn(handle_connection(proxy.clone(), stream, peer).instrument(span));
    }
}

async fn handle_connection(proxy: Arc<Proxy>, stream: TcpStream, peer: SocketAddr) {
    let _ = stream.set_nodelay(true);
    let certs = match proxy.certs.fetch(&proxy.identity).await {
        Ok(c) => c,
        Err(e) => {
            warn!(error = %e, "refusing HBONE connection: no certificate yet");
            return;
        }
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(certs.server.clone());
    let tls = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => {
            warn!(error = %e, "HBONE TLS handshake failed");
            metrics::counter!(REJECTED_STREAMS, "reason" => "tls").increment(1);
            return;
        }
        Err(_) => {
            warn!("HBONE TLS handshake timed out");
            return;
        }
    };
    let Some(src) = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(mesh_identity::cert::peer_identity)
    else {
        warn!("HBONE peer presented no SPIFFE identity");
        return;
    };
    debug!(peer_identity = %src, "HBONE connection established");
    let handler = {
        let proxy = proxy.clone();
        move |req: InboundRequest| {
            let proxy = proxy.clone();
            let src = src.clone();
            async move { handle_stream(proxy, peer, src, req).await }
        }
    };
    if let Err(e) =
        mesh_hbone::server::serve_connection(tls, &mesh_hbone::Config::default(), handler).await
    {
        debug!(error = %e, "HBONE connection ended with an error");
    }
}

/// What every request on one HBONE stream shares.
struct StreamCtx {
    proxy: Arc<Proxy>,
    service: Arc<Service>,
    port: Arc<Port>,
    source: Source,
    peer: SocketAddr,
    /// The mTLS peer (AuthorizationPolicy principals and namespaces).
    src: Identity,
}

async fn handle_stream(proxy: Arc<Proxy>, peer: SocketAddr, src: Identity, req: InboundRequest) {
    if req.method() != http::Method::CONNECT {
        metrics::counter!(REJECTED_STREAMS, "reason" => "not_connect").increment(1);
        req.reject(StatusCode::BAD_REQUEST);
        return;
    }
    let authority = req.authority().unwrap_or_default().to_string();
    let found = proxy.routes.borrow().lookup(&authority);
    let Some((service, port)) = found else {
        // Silent 503s are a known Istio pain (istio#53108): say why, and count it.
        warn!(%authority, source = %src, "no Service of this waypoint has this address and port; refusing (503)");
        metrics::counter!(REJECTED_STREAMS, "reason" => "unknown_authority").increment(1);
        req.reject(StatusCode::SERVICE_UNAVAILABLE);
        return;
    };
    let baggage = req
        .headers()
        .get("baggage")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let stream = match req.accept(HeaderMap::new()) {
        Ok(s) => s,
        Err(e) => {
            debug!(error = %e, "client went away before the CONNECT was accepted");
            return;
        }
    };
    let ctx = Arc::new(StreamCtx {
        source: Source::new(&src, baggage.as_deref()),
        src,
        proxy,
        service,
        port,
        peer,
    });
    if ctx.port.protocol.is_http() {
        let svc = hyper::service::service_fn({
            let ctx = ctx.clone();
            move |req| {
                let ctx = ctx.clone();
                async move { Ok::<_, Infallible>(handle_request(ctx, req).await) }
            }
        });
        let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        if let Err(e) = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), svc)
            .await
        {
            debug!(error = %e, "HTTP connection on the HBONE stream ended with an error");
        }
    } else {
        relay_tcp(ctx, stream).await;
    }
}

/// Non-HTTP port: bytes to an endpoint of the service itself.
async fn relay_tcp(ctx: Arc<StreamCtx>, mut stream: mesh_hbone::H2Stream) {
    let Some(ep) = ctx.port.default_rule.pick_backend().and_then(|b| b.pick()) else {
        warn!(service = %ctx.service.hostname, "no endpoint for TCP relay");
        return;
    };
    match upstream::connect(&ctx.proxy, &ep).await {
        Ok(mut up) => {
            let r = tokio::io::copy_bidirectional(&mut stream, &mut up).await;
            debug!(result = ?r, upstream = %ep.addr, "TCP relay finished");
        }
        Err(e) => warn!(error = %e, upstream = %ep.addr, "TCP relay: upstream connect failed"),
    }
}

fn full(b: impl Into<Bytes>) -> RespBody {
    Full::new(b.into()).map_err(|e| match e {}).boxed()
}

/// A body forwarded frame by frame, with `watch` seeing each frame and living exactly as long as
/// the body: what it holds (a pool slot, a request record) is let go when the body is finished
/// or dropped.
struct Watched<W: Watch> {
    inner: RespBody,
    watch: W,
}

/// What a [`Watched`] body does besides forwarding.
trait Watch: Unpin + Send + Sync + 'static {
    /// Sees each frame as it is forwarded.
    fn frame(&mut self, _frame: &Frame<Bytes>) {}
    /// Runs when the body is dropped, before the inner body is.
    fn done(&mut self) {}
}

impl<W: Watch> Body for Watched<W> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(f))) = &r {
            self.watch.frame(f);
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<W: Watch> Drop for Watched<W> {
    fn drop(&mut self) {
        self.watch.done();
    }
}

/// Completes the record when the response body is finished (or dropped): counts bytes and
/// picks up `grpc-status` from trailers.
struct Tracker {
    record: Option<RequestRecord>,
    start: Instant,
    request_bytes: Arc<AtomicU64>,
}

impl Watch for Tracker {
    fn frame(&mut self, f: &Frame<Bytes>) {
        let (n, status) = match (f.data_ref(), f.trailers_ref()) {
            (Some(d), _) => (d.len() as u64, None),
            (_, Some(t)) => (
                0,
                t.get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string),
            ),
            _ => (0, None),
        };
        if let Some(rec) = self.record.as_mut() {
            rec.response_bytes += n;
            if let Some(s) = status {
                rec.grpc_response_status = s;
            }
        }
    }

    fn done(&mut self) {
        if let Some(mut rec) = self.record.take() {
            rec.duration = self.start.elapsed();
            rec.request_bytes = self.request_bytes.load(Ordering::Relaxed);
            rec.finish();
        }
    }
}

/// What a request holds upstream while its response body flows: its connection-pool slot and
/// its endpoint's in-flight count.
struct InFlight {
    _slot: routes::pool::Admitted,
    _endpoint: routes::cluster::Picked,
}

impl Watch for InFlight {}

/// Counts request body bytes as they are forwarded.
struct CountBytes(Arc<AtomicU64>);

impl Watch for CountBytes {
    fn frame(&mut self, f: &Frame<Bytes>) {
        if let Some(d) = f.data_ref() {
            self.0.fetch_add(d.len() as u64, Ordering::Relaxed);
        }
    }
}

fn respond(
    mut resp: Response<RespBody>,
    mut rec: RequestRecord,
    flags: &'static str,
    start: Instant,
    request_bytes: Arc<AtomicU64>,
) -> Response<RespBody> {
    rec.response_code = resp.status().as_u16();
    rec.response_flags = flags;
    if let Some(s) = resp
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
    {
        rec.grpc_response_status = s.to_string();
    }
    let (parts, body) = resp.into_parts();
    let tracked = Watched {
        inner: body,
        watch: Tracker {
            record: Some(rec),
            start,
            request_bytes,
        },
    };
    resp = Response::from_parts(parts, tracked.boxed());
    resp
}

fn local(status: StatusCode, msg: &str) -> Response<RespBody> {
    let mut r = Response::new(full(format!("{msg}\n")));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain"),
    );
    r
}

/// Headers that belong to one hop and are not forwarded (RFC 9110 §7.6.1).
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "te",
    "trailer",
];

fn strip_hop_by_hop(h: &mut HeaderMap, keep_upgrade: bool) {
    let listed: Vec<String> = h
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !(s.is_empty() || keep_upgrade && s == "upgrade"))
        .collect();
    let te_trailers = h
        .get(http::header::TE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("trailers"));
    for name in HOP_BY_HOP {
        if keep_upgrade && (*name == "upgrade" || *name == "connection") {
            continue;
        }
        h.remove(*name);
    }
    for name in listed {
        h.remove(name.as_str());
    }
    if te_trailers {
        // gRPC needs `te: trailers` end to end.
        h.insert(http::header::TE, HeaderValue::from_static("trailers"));
    }
}

fn redirect_location(
    rd: &routes::Redirect,
    host: &str,
    path: &str,
    query: Option<&str>,
    matched_prefix: Option<&str>,
    service_port: u16,
) -> String {
    let scheme = rd.scheme.clone().unwrap_or_else(|| "http".into());
    let (req_host, req_port) = match host.parse::<http::uri::Authority>() {
        Ok(a) => (a.host().to_string(), a.port_u16()),
        Err(_) => (host.to_string(), None),
    };
    let hostname = rd.hostname.clone().unwrap_or(req_host);
    // Gateway API: no port given → the scheme's well-known port when the scheme is set,
    // else the port the request came in on.
    let port = rd.port.or(if rd.scheme.is_some() {
        None
    } else {
        req_port.or(Some(service_port))
    });
    let default_port = if scheme == "https" { 443 } else { 80 };
    let port = port.filter(|p| *p != default_port);
    let new_path = match &rd.path {
        Some(c) => routes::changed_path(path, c, matched_prefix),
        None => path.to_string(),
    };
    let mut loc = format!("{scheme}://{hostname}");
    if let Some(p) = port {
        loc.push_str(&format!(":{p}"));
    }
    loc.push_str(&new_path);
    if let Some(q) = query {
        loc.push('?');
        loc.push_str(q);
    }
    loc
}

async fn handle_request(ctx: Arc<StreamCtx>, mut req: Request<Incoming>) -> Response<RespBody> {
    let start = Instant::now();
    let request_bytes = Arc::new(AtomicU64::new(0));
    // L7 security before anything reads the request: trace context, path normalization,
    // JWT (401), AuthorizationPolicy (403). See security.rs.
    let verdict = {
        let sec = ctx.proxy.security.borrow().get(&ctx.service.hostname);
        let peer = crate::security::Peer {
            identity: &ctx.src,
            ip: ctx.peer.ip(),
            port: ctx.port.port,
        };
        crate::security::on_request(sec, peer, &mut req).await
    };
    let grpc = req
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"));
    let host = req
        .uri()
        .authority()
        .map(|a| a.to_string())
        .or_else(|| {
            req.headers()
                .get(http::header::HOST)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        })
        .unwrap_or_else(|| ctx.service.hostname.clone());
    let path = req.uri().path().to_string();
    let query = req.uri().query().map(str::to_string);
    let mut rec = RequestRecord {
        source: ctx.source.clone(),
        destination_service: ctx.service.hostname.clone(),
        destination_service_name: ctx.service.name.clone(),
        destination_service_namespace: ctx.service.namespace.clone(),
        request_protocol: if grpc { "grpc" } else { "http" },
        method: req.method().to_string(),
        path: path.clone(),
        authority: host.clone(),
        response_flags: "-",
        ..Default::default()
    };
    if let Some(refused) = verdict.apply(&mut rec) {
        return respond(refused, rec, "-", start, request_bytes);
    }
    let span = tracing::debug_span!("request", method = %req.method(), %path, peer = %ctx.peer);
    let _enter = span.enter();

    let selected = {
        let view = RequestView {
            method: req.method(),
            path: &path,
            query: query.as_deref(),
            headers: req.headers(),
        };
        ctx.port.select(&view)
    };
    let Some(selected) = selected else {
        return respond(
            local(StatusCode::NOT_FOUND, "no route matched"),
            rec,
            "NR",
            start,
            request_bytes,
        );
    };
    let rule = selected.rule.clone();
    rec.route = rule.route.clone();
    if let Some(rd) = &rule.redirect {
        let loc = redirect_location(
            rd,
            &host,
            &path,
            query.as_deref(),
            selected.matched_prefix.as_deref(),
            ctx.port.port,
        );
        let mut r = local(
            StatusCode::from_u16(rd.status).unwrap_or(StatusCode::FOUND),
            "redirect",
        );
        if let Ok(v) = HeaderValue::from_str(&loc) {
            r.headers_mut().insert(http::header::LOCATION, v);
        }
        return respond(r, rec, "-", start, request_bytes);
    }

    // VirtualService fault injection: the delay first, then the abort (Envoy's order).
    let mut delayed = false;
    if let Some(f) = &rule.fault {
        if let Some(d) = f.delay_with(rand::random()) {
            tokio::time::sleep(d).await;
            delayed = true;
        }
        if let Some(status) = f.abort_with(rand::random()) {
            let flags = if delayed { "DI,FI" } else { "FI" };
            return respond(
                local(
                    StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
                    "fault filter abort",
                ),
                rec,
                flags,
                start,
                request_bytes,
            );
        }
    }

    let upgrade =
        req.version() == Version::HTTP_11 && req.headers().contains_key(http::header::UPGRADE);
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    if let Some(e) = &rule.request_headers {
        e.apply(&mut parts.headers);
    }
    let mut new_host = host.clone();
    let mut new_path = path.clone();
    if let Some(rw) = &rule.rewrite {
        if let Some(h) = &rw.hostname {
            new_host = h.clone();
        }
        if let Some(c) = &rw.path {
            new_path = routes::changed_path(&path, c, selected.matched_prefix.as_deref());
        }
    }
    strip_hop_by_hop(&mut parts.headers, upgrade);
    let pq = match &query {
        Some(q) => format!("{new_path}?{q}"),
        None => new_path.clone(),
    };

    // Buffer small bodies so the request can be retried; stream the rest without retries.
    let retry = rule.retry.clone();
    let small = body
        .size_hint()
        .upper()
        .is_some_and(|u| u <= MAX_RETRY_BODY);
    let buffer = (retry.is_some() || !rule.mirrors.is_empty()) && small && !upgrade;
    let (buffered, mut streaming) = if buffer {
        match body.collect().await {
            Ok(c) => {
                let b = c.to_bytes();
                request_bytes.fetch_add(b.len() as u64, Ordering::Relaxed);
                (Some(b), None)
            }
            Err(e) => {
                debug!(error = %e, "client aborted the request body");
                return respond(
                    local(StatusCode::BAD_REQUEST, "request body aborted"),
                    rec,
                    "DC",
                    start,
                    request_bytes,
                );
            }
        }
    } else {
        let counting = Watched {
            inner: body.map_err(|e| Box::new(e) as BoxError).boxed(),
            watch: CountBytes(request_bytes.clone()),
        };
        (None, Some(counting.boxed()))
    };
    if !rule.mirrors.is_empty() {
        match &buffered {
            Some(b) => mirror::spawn(&ctx.proxy, &rule.mirrors, &parts, &new_host, &pq, b),
            // Mirroring a streamed body would hold the client to the mirror's pace.
            None => debug!("request body too large or unsized to mirror; not mirrored"),
        }
    }
    let max_attempts = 1 + retry.as_ref().map_or(0, |r| r.attempts);
    let deadline = rule.timeout.map(|t| start + t);
    let _in_flight = ctx.proxy.budget.request();
    let mut attempt = 0;
    let mut _retry_slot = None;
    let (resp, flags) = loop {
        attempt += 1;
        rec.attempts = attempt;
        let body = match (&buffered, streaming.take()) {
            (Some(b), _) => full(b.clone()),
            (None, Some(s)) => s,
            (None, None) => {
                break (
                    local(StatusCode::SERVICE_UNAVAILABLE, "request body already sent"),
                    "URX",
                )
            }
        };
        let outcome = attempt_once(
            &ctx, &rule, &parts, &new_host, &pq, body, deadline, &mut rec,
        )
        .await;
        let retryable = match &outcome {
            Ok((r, _)) => retry
                .as_ref()
                .is_some_and(|p| p.retries_status(r.status().as_u16())),
            Err(e) => {
                e.retryable()
                    && retry
                        .as_ref()
                        .is_none_or(|p| p.retries_failure(e.failure_kind()))
            }
        };
        let more = attempt < max_attempts
            && buffered.is_some()
            && deadline.is_none_or(|d| Instant::now() < d);
        if retryable && more {
            match ctx.proxy.budget.try_retry() {
                Some(slot) => {
                    metrics::counter!(RETRIES_TOTAL, "outcome" => "sent").increment(1);
                    _retry_slot = Some(slot);
                    if let Some(p) = &retry {
                        tokio::time::sleep(p.backoff).await;
                    }
                    continue;
                }
                None => {
                    metrics::counter!(RETRIES_TOTAL, "outcome" => "budget_exhausted").increment(1);
                }
            }
        }
        break match outcome {
            Ok((r, in_flight)) => {
                let (p, b) = r.into_parts();
                let body = Watched {
                    inner: b.map_err(|e| Box::new(e) as BoxError).boxed(),
                    watch: in_flight,
                };
                (
                    Response::from_parts(p, body.boxed()),
                    if attempt > 1 && retryable { "URX" } else { "-" },
                )
            }
            Err(e) => {
                warn!(error = %e, attempts = attempt, route = %rule.route, "request failed");
                (local(e.status(), &e.to_string()), e.flags())
            }
        };
    };
    let mut resp = resp;
    if let Some(e) = &rule.response_headers {
        e.apply(resp.headers_mut());
    }
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(client) = client_upgrade {
            let upstream = hyper::upgrade::on(&mut resp);
            tokio::spawn(async move {
                match tokio::try_join!(client, upstream) {
                    Ok((c, u)) => {
                        let (mut c, mut u) = (TokioIo::new(c), TokioIo::new(u));
                        let r = tokio::io::copy_bidirectional(&mut c, &mut u).await;
                        debug!(result = ?r, "upgraded connection finished");
                    }
                    Err(e) => debug!(error = %e, "upgrade failed"),
                }
            });
        }
    } else {
        strip_hop_by_hop(resp.headers_mut(), false);
    }
    let flags = if delayed {
        routes::fault::with_delay_flag(flags)
    } else {
        flags
    };
    respond(resp, rec, flags, start, request_bytes)
}

/// One try: pick a backend and endpoint, send, wait for the response head (bounded by the
/// per-try timeout and the request deadline).
#[allow(clippy::too_many_arguments)]
async fn attempt_once(
    ctx: &StreamCtx,
    rule: &Rule,
    parts: &http::request::Parts,
    host: &str,
    path_and_query: &str,
    body: RespBody,
    deadline: Option<Instant>,
    rec: &mut RequestRecord,
) -> Result<(Response<Incoming>, InFlight), UpstreamError> {
    let backend = rule.pick_backend().ok_or(UpstreamError::NoBackend)?;
    // The backend's connection pool first (DestinationRule connectionPool): overflow is UO,
    // waiting in its queue is bounded by the request deadline.
    let admit = backend
        .cluster
        .state
        .pool
        .admit(backend.cluster.policy.pool);
    let admitted = match deadline {
        Some(d) => tokio::time::timeout_at(d.into(), admit)
            .await
            .map_err(|_| UpstreamError::Timeout(rule.timeout.unwrap_or_default()))??,
        None => admit.await?,
    };
    let picked = backend
        .cluster
        .pick(Some(routes::cluster::HashInput {
            headers: &parts.headers,
            query: parts.uri.query(),
            peer: ctx.peer.ip(),
        }))
        .ok_or_else(|| UpstreamError::NoEndpoint(backend.hostname.clone()))?;
    let ep = picked.endpoint.clone();
    rec.destination_service = backend.hostname.clone();
    rec.destination_service_name = backend.name.clone();
    rec.destination_service_namespace = backend.namespace.clone();
    rec.destination_workload = ep.workload.clone();
    rec.destination_workload_namespace = ep.namespace.clone();
    rec.destination_principal = ep.identity.clone();
    rec.destination_canonical_service = ep.canonical_name.clone();
    rec.destination_canonical_revision = ep.canonical_revision.clone();
    rec.destination_cluster = ep.cluster.clone();
    rec.upstream = ep.addr.to_string();

    let h2 = parts.version == Version::HTTP_2;
    let req = upstream::build_request(parts, host, path_and_query, body)?;
    let per_try = rule.backend_timeout;
    let remaining = deadline.map(|d| d.saturating_duration_since(Instant::now()));
    let bound = match (per_try, remaining) {
        (Some(a), Some(b)) => Some((a.min(b), b <= a)),
        (Some(a), None) => Some((a, false)),
        (None, Some(b)) => Some((b, true)),
        (None, None) => None,
    };
    let max_per_conn = backend.cluster.policy.pool.max_requests_per_connection;
    let fut = upstream::send(&ctx.proxy, &ep, h2, max_per_conn, req);
    let result = match bound {
        None => fut.await,
        Some((t, overall)) => match tokio::time::timeout(t, fut).await {
            Ok(r) => r,
            Err(_) if overall => Err(UpstreamError::Timeout(t)),
            Err(_) => Err(UpstreamError::TryTimeout(t)),
        },
    };
    // Outlier detection learns from every attempt's outcome.
    let mut picked = picked;
    picked.record(match &result {
        Ok(r) => routes::outlier::Outcome::Status(r.status().as_u16()),
        Err(_) => routes::outlier::Outcome::LocalFailure,
    });
    // The pool slot and the endpoint's in-flight count (least request) are the request's until
    // its response body ends, not just its head.
    result.map(|r| {
        (
            r,
            InFlight {
                _slot: admitted,
                _endpoint: picked,
            },
        )
    })
}

//! Inbound HBONE: one mTLS listener on `<pod IP>:15008` per HBONE workload of this node, each
//! presenting that workload's certificate (what in-pod mode does per network namespace). Each
//! CONNECT stream is checked (method, authority names this workload and a legal port), then the
//! app is dialled with the caller's source IP, and only then is `200` sent.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderValue, Method, StatusCode};
use mesh_hbone::server::InboundRequest;
use mesh_identity::spiffe::Identity;
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, info, warn, Instrument};

use super::connections::ConnectionDump;
use super::{Proxy, ILLEGAL_PORTS};
use crate::metrics::{ConnectionGuard, ConnectionInfo, Reporter};
use crate::state::{Protocol, Workload};

/// Keeps one HBONE listener per local HBONE workload, following state changes, and tells the
/// certificate manager which identities to keep.
/// `reconciled` is set to the state version the listeners reflect.
pub async fn manage_listeners(proxy: Arc<Proxy>, reconciled: Arc<AtomicU64>) {
    let mut changes = proxy.state.subscribe();
    let mut listeners: HashMap<IpAddr, (String, tokio::task::JoinHandle<()>)> = HashMap::new();
    loop {
        let version = *changes.borrow_and_update();
        let local = track_local_certs(&proxy);
        let wanted: HashMap<IpAddr, Arc<Workload>> = local
            .iter()
            .flat_map(|w| w.workload_ips.iter().map(move |ip| (*ip, w.clone())))
            .collect();
        listeners.retain(|ip, (uid, task)| {
            let keep = wanted.get(ip).map(|w| &w.uid == uid).unwrap_or(false);
            if !keep {
                info!(%ip, %uid, "closing HBONE listener: workload left this node");
                task.abort();
                crate::metrics::proxy_started(false);
            }
            keep
        });
        for (ip, w) in &wanted {
            if listeners.contains_key(ip) {
                continue;
            }
            let addr = SocketAddr::new(*ip, proxy.cfg.hbone_port);
            match bind(addr) {
                Ok(l) => {
                    info!(%addr, workload = %w.name, namespace = %w.namespace, "HBONE listener open");
                    let task = tokio::spawn(accept_hbone(proxy.clone(), l));
                    listeners.insert(*ip, (w.uid.clone(), task));
                    crate::metrics::proxy_started(true);
                }
                Err(e) => {
                    warn!(%addr, error = %e, "cannot open HBONE listener for workload; will retry on the next config change")
                }
            }
        }
        crate::metrics::proxies(listeners.len(), 0);
        reconciled.store(version, Ordering::Release);
        tokio::select! {
            _ = proxy.shutdown.cancelled() => break,
            r = changes.changed() => if r.is_err() { break },
        }
    }
    for (_, (_, task)) in listeners {
        task.abort();
    }
}

/// The HBONE workloads of this node that ztunnel serves (not waypoints, which terminate HBONE
/// themselves); the certificate manager is told to keep (and prefetch) exactly their identities.
pub fn track_local_certs(proxy: &Proxy) -> Vec<Arc<Workload>> {
    let local: Vec<Arc<Workload>> = proxy
        .state
        .workloads_on_node(&proxy.cfg.node_name)
        .into_iter()
        .filter(|w| w.protocol == Protocol::Hbone && !w.native_tunnel)
        .collect();
    proxy
        .certs
        .track(&local.iter().map(|w| w.identity()).collect());
    local
}

fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let s = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    s.set_reuseaddr(true)?;
    s.bind(addr)?;
    s.listen(1024)
}

/// Serves HBONE on `listener`; the destination workload is the one owning the address each
/// connection arrived on (one pod IP per listener, or any IP of the pod in in-pod mode).
pub async fn accept_hbone(proxy: Arc<Proxy>, listener: TcpListener) {
    super::accept_loop(proxy, listener, "hbone", move |proxy, stream, peer| {
        let local_ip = stream.local_addr().map(|a| a.ip().to_canonical());
        let span = tracing::info_span!("inbound", src = %peer, dst_ip = tracing::field::Empty);
        async move {
            match local_ip {
                Ok(ip) => {
                    tracing::Span::current().record("dst_ip", tracing::field::display(ip));
                    serve_tls(proxy, stream, peer, ip).await
                }
                Err(e) => debug!(error = %e, "accepted HBONE connection has no local address"),
            }
        }
        .instrument(span)
    })
    .await
}

async fn serve_tls(proxy: Arc<Proxy>, stream: TcpStream, peer: SocketAddr, local_ip: IpAddr) {
    let Some(wl) = proxy.state.workload_by_ip(local_ip) else {
        return;
    };
    let certs = match proxy.certs.fetch(&wl.identity()).await {
        Ok(c) => c,
        Err(e) => {
            warn!(error = %e, "refusing HBONE connection: no certificate for the destination workload");
            return;
        }
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(certs.server.clone());
    // Boxed so the handshake state is freed once done instead of sizing the connection task.
    let tls = match tokio::time::timeout(Duration::from_secs(10), Box::pin(acceptor.accept(stream)))
        .await
    {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => {
            warn!(error = %e, "HBONE TLS handshake failed");
            metrics::counter!("ztunnel_hbone_handshake_failures_total", "reason" => "tls")
                .increment(1);
            return;
        }
        Err(_) => {
            warn!("HBONE TLS handshake timed out");
            metrics::counter!("ztunnel_hbone_handshake_failures_total", "reason" => "timeout")
                .increment(1);
            return;
        }
    };
    // The verifier already required a SPIFFE id in our trust domain; take the one the chain backs.
    let src_identity = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(mesh_identity::cert::peer_identity);
    let Some(src_identity) = src_identity else {
        warn!("HBONE peer presented no SPIFFE identity");
        return;
    };
    debug!(peer_identity = %src_identity, "HBONE connection established");
    let hcfg = hbone_server_config(&proxy);
    let handler = {
        let proxy = proxy.clone();
        move |req: InboundRequest| {
            let proxy = proxy.clone();
            let src_identity = src_identity.clone();
            async move { handle_stream(proxy, peer, local_ip, src_identity, req).await }
        }
    };
    if let Err(e) = mesh_hbone::server::serve_connection(tls, &hcfg, handler).await {
        debug!(error = %e, "HBONE connection ended with an error");
    }
}

fn hbone_server_config(proxy: &Proxy) -> mesh_hbone::Config {
    let h = &proxy.cfg.hbone;
    mesh_hbone::Config {
        stream_window: h.window_size,
        connection_window: h.connection_window_size,
        max_frame_size: h.frame_size,
        ..Default::default()
    }
}

/// Why a CONNECT was refused, with Istio's status for it.
#[derive(thiserror::Error, Debug)]
enum Refusal {
    #[error("method {0} is not CONNECT")]
    NotConnect(Method),
    #[error("authority {0:?} is not IP:port")]
    BadAuthority(String),
    #[error("authority {0} does not name this workload ({1})")]
    WrongDestination(SocketAddr, IpAddr),
    #[error("port {0} is a ztunnel port")]
    IllegalPort(u16),
    #[error("destination workload is gone")]
    NoWorkload,
    #[error("{0}")]
    Denied(String),
    #[error("connect to the app at {0} failed: {1}")]
    Upstream(SocketAddr, std::io::Error),
}

impl Refusal {
    fn status(&self) -> StatusCode {
        match self {
            Refusal::NoWorkload | Refusal::Upstream(..) => StatusCode::SERVICE_UNAVAILABLE,
            Refusal::Denied(_) => StatusCode::UNAUTHORIZED,
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

async fn handle_stream(
    proxy: Arc<Proxy>,
    peer: SocketAddr,
    local_ip: IpAddr,
    src_identity: Identity,
    req: InboundRequest,
) {
    let dst_wl = proxy.state.workload_by_ip(local_ip);
    // Source labels only from a workload whose identity the certificate backs.
    let src_wl = proxy
        .state
        .workload_by_ip(peer.ip())
        .filter(|w| w.identity() == src_identity);
    let mut info = ConnectionInfo {
        reporter: Some(Reporter::Destination),
        src_addr: Some(peer),
        src_identity: Some(src_identity.to_string()),
        src_workload: src_wl,
        dst_identity: dst_wl.as_ref().map(|w| w.identity().to_string()),
        dst_workload: dst_wl.clone(),
        hbone_addr: Some(SocketAddr::new(local_ip, proxy.cfg.hbone_port)),
        mtls: true,
        ..Default::default()
    };
    let checked = check(&req, dst_wl.as_deref(), local_ip);
    let (dst, dst_wl) = match checked {
        Ok(ok) => ok,
        Err(r) => {
            warn!(error = %r, status = r.status().as_u16(), "refusing HBONE request");
            crate::metrics::failed(&info, "DENY", &r.to_string());
            req.reject(r.status());
            return;
        }
    };
    info.dst_addr = Some(dst);
    let conn = mesh_policy::Connection {
        src_identity: Some(&src_identity),
        src_ip: peer.ip(),
        dst_ip: dst.ip(),
        dst_port: dst.port(),
    };
    if let mesh_policy::Decision::Deny(why) = super::authorize(&proxy.state, &dst_wl, &conn) {
        let r = Refusal::Denied(why);
        warn!(error = %r, status = 401, "refusing HBONE request: not authorized");
        crate::metrics::failed(&info, "DENY", &r.to_string());
        req.reject(r.status());
        return;
    }
    if let Some(host) = forwarded_host(req.headers()) {
        info.dst_service = proxy.state.service_by_host(&host);
    }
    // Dial the app first; only a working upstream earns a 200.
    let mut upstream = match proxy.connect_for(local_ip, Some(peer.ip()), dst).await {
        Ok(s) => s,
        Err(e) => {
            let r = Refusal::Upstream(dst, e);
            warn!(error = %r, "refusing HBONE request");
            crate::metrics::failed(&info, "CONNECT", &r.to_string());
            req.reject(r.status());
            return;
        }
    };
    let mut headers = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(&baggage(&dst_wl)) {
        headers.insert("baggage", v);
    }
    let mut stream = match req.accept(headers) {
        Ok(s) => s,
        Err(e) => {
            debug!(error = %e, "client went away before the 200 was sent");
            return;
        }
    };
    let reg = proxy.open.inbound(
        ConnectionDump::of(&info, "inbound"),
        Some(src_identity.clone()),
        dst_wl.uid.clone(),
    );
    let guard = ConnectionGuard::open(info);
    let (received, sent, err) = super::relay(&mut stream, &mut upstream, &reg.cancel).await;
    guard.close(
        received,
        sent,
        err.as_ref().map(|e| e.to_string()).as_deref(),
    );
}

fn check(
    req: &InboundRequest,
    dst_wl: Option<&Workload>,
    local_ip: IpAddr,
) -> Result<(SocketAddr, Workload), Refusal> {
    if req.method() != Method::CONNECT {
        return Err(Refusal::NotConnect(req.method().clone()));
    }
    let authority = req.authority().unwrap_or_default();
    let dst: SocketAddr = authority
        .parse()
        .map_err(|_| Refusal::BadAuthority(authority.to_string()))?;
    if dst.ip() != local_ip {
        return Err(Refusal::WrongDestination(dst, local_ip));
    }
    if ILLEGAL_PORTS.contains(&dst.port()) {
        return Err(Refusal::IllegalPort(dst.port()));
    }
    let wl = dst_wl.ok_or(Refusal::NoWorkload)?;
    Ok((dst, wl.clone()))
}

/// `host=` from a `forwarded` header (used only to label metrics, never for routing).
fn forwarded_host(h: &HeaderMap) -> Option<String> {
    let v = h.get("forwarded")?.to_str().ok()?;
    v.split(';')
        .find_map(|kv| kv.trim().strip_prefix("host="))
        .map(|s| s.trim_matches('"').to_string())
}

fn baggage(w: &Workload) -> String {
    format!(
        "k8s.cluster.name={},k8s.namespace.name={},k8s.{}.name={},service.name={},service.version={}",
        w.cluster_id, w.namespace, w.workload_type, w.workload_name, w.canonical_name, w.canonical_revision
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_host_is_parsed() {
        let mut h = HeaderMap::new();
        h.insert(
            "forwarded",
            HeaderValue::from_static("for=\"10.0.0.1:1\";host=b.ns.svc.cluster.local"),
        );
        assert_eq!(
            forwarded_host(&h).as_deref(),
            Some("b.ns.svc.cluster.local")
        );
        assert_eq!(forwarded_host(&HeaderMap::new()), None);
    }
}

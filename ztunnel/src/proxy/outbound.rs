//! Outbound: from a local workload to a destination. Service VIPs are resolved to an endpoint
//! on this side (round robin over healthy endpoints); HBONE workloads are reached through an
//! mTLS CONNECT tunnel to `<endpoint IP>:15008`, presenting the source workload's certificate
//! and requiring the destination's SPIFFE identity; everything else is passed through as TCP.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use http::{HeaderMap, HeaderValue};
use mesh_hbone::client::{ConnectRequest, PoolKey};
use mesh_hbone::H2Stream;
use mesh_identity::spiffe::Identity;
use tokio::net::TcpStream;
use tracing::{debug, warn, Instrument};

use super::{Proxy, ILLEGAL_PORTS};
use crate::metrics::{ConnectionGuard, ConnectionInfo, Reporter};
use crate::state::{Protocol, Workload};

/// Where the client asked to go.
#[derive(Clone, Debug)]
pub enum Target {
    Addr(SocketAddr),
    Host(String, u16),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Addr(a) => write!(f, "{a}"),
            Target::Host(h, p) => write!(f, "{h}:{p}"),
        }
    }
}

/// Why an outbound connection could not be set up (each maps to a SOCKS5 reply and a response flag).
#[derive(thiserror::Error, Debug)]
pub enum OutboundError {
    #[error("source {0} is not a known workload on this node; refusing to proxy (no identity to present)")]
    UnknownSource(IpAddr),
    #[error("{0} is ztunnel's own port; refusing a loop")]
    SelfCall(SocketAddr),
    #[error("cannot resolve {0}: not a mesh service and DNS lookup failed")]
    Unresolvable(String),
    #[error("waypoint {0} has no healthy instance")]
    NoWaypoint(String),
    #[error("service {service} has no healthy endpoint for port {port}")]
    NoHealthyUpstream { service: String, port: u16 },
    #[error("no certificate for source identity: {0}")]
    Identity(#[from] crate::identity::CertError),
    #[error("HBONE to {dst} failed: {source}")]
    Hbone {
        dst: SocketAddr,
        source: mesh_hbone::HboneError,
    },
    #[error("connect to {dst} failed: {source}")]
    Connect {
        dst: SocketAddr,
        source: std::io::Error,
    },
}

impl OutboundError {
    /// Istio's response flag for the failed-connection metric.
    pub fn response_flag(&self) -> &'static str {
        match self {
            OutboundError::Hbone {
                source: mesh_hbone::HboneError::Tls(_),
                ..
            } => "TLS_FAILURE",
            OutboundError::Hbone { .. } | OutboundError::Connect { .. } => "CONNECT",
            OutboundError::Identity(_) => "IDENTITY_ERROR",
            OutboundError::NoHealthyUpstream { .. } | OutboundError::NoWaypoint(_) => "UH",
            OutboundError::Unresolvable(_) => "NR",
            _ => "DENY",
        }
    }
}

/// An established upstream, ready to relay.
pub enum Upstream {
    Hbone(H2Stream),
    Tcp(TcpStream),
}

/// Connection state between "upstream connected" and "relay finished".
pub struct Established {
    pub upstream: Upstream,
    pub info: ConnectionInfo,
}

impl Proxy {
    /// Resolves `target` for the local workload at `src` and connects the upstream.
    pub async fn connect_outbound(
        self: &Arc<Self>,
        src: SocketAddr,
        target: Target,
    ) -> Result<Established, OutboundError> {
        let mut info = ConnectionInfo {
            reporter: Some(Reporter::Source),
            src_addr: Some(src),
            ..Default::default()
        };
        // Every refusal, early or late, is counted with what was known by then.
        match self.try_connect_outbound(src, target, &mut info).await {
            Ok(upstream) => Ok(Established { upstream, info }),
            Err(e) => {
                crate::metrics::failed(&info, e.response_flag(), &e.to_string());
                Err(e)
            }
        }
    }

    async fn try_connect_outbound(
        self: &Arc<Self>,
        src: SocketAddr,
        target: Target,
        info: &mut ConnectionInfo,
    ) -> Result<Upstream, OutboundError> {
        let src_wl = self
            .state
            .workload_by_ip(src.ip())
            .filter(|w| w.node == self.cfg.node_name)
            .ok_or(OutboundError::UnknownSource(src.ip()))?;
        info.src_identity = Some(src_wl.identity().to_string());
        info.src_workload = Some(src_wl.clone());
        let (dst, service) = match &target {
            Target::Addr(a) => (*a, self.state.service_by_vip(a.ip())),
            Target::Host(h, port) => match self.state.service_by_host(h) {
                Some(svc) => {
                    let vip = svc
                        .vips
                        .first()
                        .copied()
                        .ok_or_else(|| OutboundError::Unresolvable(h.clone()))?;
                    (SocketAddr::new(vip, *port), Some(svc))
                }
                None => {
                    let addr = tokio::net::lookup_host((h.as_str(), *port))
                        .await
                        .ok()
                        .and_then(|mut a| a.next());
                    (
                        addr.ok_or_else(|| OutboundError::Unresolvable(h.clone()))?,
                        None,
                    )
                }
            },
        };
        if ILLEGAL_PORTS.contains(&dst.port())
            && (self.state.workload_by_ip(dst.ip()).is_some() || dst.ip().is_loopback())
        {
            return Err(OutboundError::SelfCall(dst));
        }
        info.dst_addr = Some(dst);
        info.dst_service = service.clone();
        // A waypoint attached to the service (or, for a pod address, to the pod) sees the
        // traffic first: HBONE to the waypoint with the original destination as authority.
        let waypoint = match &service {
            Some(svc) => svc.waypoint.clone(),
            None => self
                .state
                .workload_by_ip(dst.ip())
                .and_then(|w| w.waypoint.clone()),
        };
        if let Some(wp) = waypoint {
            let wp_wl = self
                .resolve_waypoint(&wp)
                .ok_or_else(|| OutboundError::NoWaypoint(format!("{:?}", wp.target)))?;
            // A waypoint's own traffic to its backends must not loop back into a waypoint.
            if wp_wl.uid != src_wl.uid && !src_wl.native_tunnel {
                let ip = wp_wl.workload_ips.first().copied().unwrap_or(dst.ip());
                let hbone_addr = SocketAddr::new(ip, wp.hbone_port);
                info.hbone_addr = Some(hbone_addr);
                info.dst_identity = Some(wp_wl.identity().to_string());
                info.dst_workload = Some(wp_wl.clone());
                info.mtls = true;
                debug!(waypoint = %wp_wl.name, %hbone_addr, authority = %dst, "sending through the waypoint");
                return self
                    .connect_hbone(&src_wl, src, &wp_wl, None, dst, hbone_addr)
                    .await
                    .map(Upstream::Hbone);
            }
        }
        let (endpoint, port) = match &service {
            Some(svc) => self
                .state
                .pick_endpoint(svc, dst.port())
                .map(|(w, p)| (Some(w), p))
                .ok_or_else(|| OutboundError::NoHealthyUpstream {
                    service: svc.hostname.clone(),
                    port: dst.port(),
                })?,
            None => (self.state.workload_by_ip(dst.ip()), dst.port()),
        };
        match endpoint {
            Some(w) if w.protocol == Protocol::Hbone => {
                let ip = w.workload_ips.first().copied().unwrap_or(dst.ip());
                let target = SocketAddr::new(ip, port);
                let hbone_addr = SocketAddr::new(ip, self.cfg.hbone_port);
                info.hbone_addr = Some(hbone_addr);
                info.dst_identity = Some(w.identity().to_string());
                info.dst_workload = Some(w.clone());
                info.mtls = true;
                self.connect_hbone(&src_wl, src, &w, service.as_deref(), target, hbone_addr)
                    .await
                    .map(Upstream::Hbone)
            }
            other => {
                // Not in the mesh (or not HBONE-capable): plain TCP to the chosen address.
                let target = other
                    .as_ref()
                    .and_then(|w| w.workload_ips.first())
                    .map(|ip| SocketAddr::new(*ip, port))
                    .unwrap_or(dst);
                info.dst_workload = other;
                info.dst_addr = Some(target);
                self.connect_for(src.ip(), None, target)
                    .await
                    .map(Upstream::Tcp)
                    .map_err(|source| OutboundError::Connect {
                        dst: target,
                        source,
                    })
            }
        }
    }

    /// A healthy instance of the waypoint `wp` (round robin over its Service's endpoints).
    fn resolve_waypoint(&self, wp: &crate::state::Waypoint) -> Option<Arc<Workload>> {
        use crate::state::WaypointRef;
        let svc = match &wp.target {
            WaypointRef::Hostname {
                namespace,
                hostname,
            } => self
                .state
                .service_by_host(hostname)
                .filter(|s| namespace.is_empty() || &s.namespace == namespace),
            WaypointRef::Address(ip) => match self.state.service_by_vip(*ip) {
                Some(s) => Some(s),
                None => return self.state.workload_by_ip(*ip).filter(|w| w.healthy),
            },
        }?;
        self.state
            .pick_endpoint(&svc, wp.hbone_port)
            .map(|(w, _)| w)
    }

    async fn connect_hbone(
        &self,
        src_wl: &Workload,
        src: SocketAddr,
        dst_wl: &Workload,
        service: Option<&crate::state::Service>,
        target: SocketAddr,
        hbone_addr: SocketAddr,
    ) -> Result<H2Stream, OutboundError> {
        let certs = self.certs.fetch(&src_wl.identity()).await?;
        let mut expected: Vec<Identity> = vec![dst_wl.identity()];
        if let Some(svc) = service {
            expected.extend(
                svc.subject_alt_names
                    .iter()
                    .filter_map(|s| Identity::parse(s).ok()),
            );
        }
        expected.sort();
        expected.dedup();
        let tls = certs.client_config(&expected)?;
        let key = PoolKey {
            src_identity: src_wl.identity().to_string(),
            src_ip: Some(src.ip()),
            dst: hbone_addr,
            dst_identities: expected.iter().map(|i| i.to_string()).collect(),
        };
        let req = ConnectRequest {
            authority: target.to_string(),
            headers: hbone_headers(src_wl, src, service),
        };
        debug!(%hbone_addr, authority = %target, "HBONE CONNECT");
        let (stream, _resp_headers) =
            self.pool
                .connect(key, tls, req)
                .await
                .map_err(|source| OutboundError::Hbone {
                    dst: hbone_addr,
                    source,
                })?;
        Ok(stream)
    }

    /// Relays an established outbound connection and records its metrics and access log.
    pub async fn relay_outbound(&self, mut downstream: TcpStream, est: Established) {
        let reg = self.open.outbound(super::connections::ConnectionDump::of(
            &est.info, "outbound",
        ));
        let guard = ConnectionGuard::open(est.info);
        let (received, sent, err) = match est.upstream {
            Upstream::Hbone(mut s) => super::relay(&mut downstream, &mut s, &reg.cancel).await,
            Upstream::Tcp(mut s) => super::relay(&mut downstream, &mut s, &reg.cancel).await,
        };
        guard.close(
            received,
            sent,
            err.as_ref().map(|e| e.to_string()).as_deref(),
        );
    }
}

/// Serves one captured outbound connection (15001).
pub async fn serve_captured(proxy: Arc<Proxy>, stream: TcpStream, peer: SocketAddr) {
    let span = tracing::info_span!("outbound", src = %peer, dst = tracing::field::Empty);
    async move {
        let local = stream
            .local_addr()
            .ok()
            .map(|a| SocketAddr::new(a.ip().to_canonical(), a.port()));
        let dst = match super::original_dst(&stream) {
            Ok(d) if Some(d) != local => d,
            Ok(_) | Err(_) => {
                warn!("connection on the outbound port was not redirected; refusing (would loop)");
                return;
            }
        };
        tracing::Span::current().record("dst", tracing::field::display(dst));
        // Boxed: the set-up future (TLS, pool) is large and would otherwise live as long as the
        // connection inside the task.
        match Box::pin(proxy.connect_outbound(peer, Target::Addr(dst))).await {
            Ok(est) => proxy.relay_outbound(stream, est).await,
            Err(e) => warn!(error = %e, "outbound connection failed"),
        }
    }
    .instrument(span)
    .await
}

/// Istio's CONNECT headers: `forwarded`, `baggage`, `traceparent`.
fn hbone_headers(
    src_wl: &Workload,
    src: SocketAddr,
    service: Option<&crate::state::Service>,
) -> HeaderMap {
    let mut h = HeaderMap::new();
    let mut forwarded = format!("for=\"{src}\"");
    if let Some(svc) = service {
        forwarded.push_str(&format!(";host={}", svc.hostname));
    }
    let mut baggage = Vec::new();
    let mut push = |k: String, v: &str| {
        if !v.is_empty() {
            baggage.push(format!("{k}={v}"));
        }
    };
    push("k8s.cluster.name".into(), &src_wl.cluster_id);
    push("k8s.namespace.name".into(), &src_wl.namespace);
    push(
        format!("k8s.{}.name", src_wl.workload_type),
        &src_wl.workload_name,
    );
    push("service.name".into(), &src_wl.canonical_name);
    push("service.version".into(), &src_wl.canonical_revision);
    let trace: u128 = rand::random();
    let span: u64 = rand::random();
    let traceparent = format!("00-{trace:032x}-{span:016x}-00");
    for (k, v) in [
        ("forwarded", forwarded),
        ("baggage", baggage.join(",")),
        ("traceparent", traceparent),
    ] {
        if let Ok(v) = HeaderValue::from_str(&v) {
            h.insert(k, v);
        }
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_follow_istio() {
        let w = crate::state::convert_workload(mesh_proto::workload::Workload {
            uid: "u".into(),
            name: "client-1".into(),
            namespace: "a".into(),
            cluster_id: "Kubernetes".into(),
            canonical_name: "client".into(),
            workload_type: mesh_proto::workload::WorkloadType::Pod as i32,
            ..Default::default()
        })
        .expect("workload");
        let h = hbone_headers(&w, "10.0.0.1:4000".parse().expect("addr"), None);
        assert_eq!(h["forwarded"], "for=\"10.0.0.1:4000\"");
        assert_eq!(h["baggage"], "k8s.cluster.name=Kubernetes,k8s.namespace.name=a,k8s.pod.name=client-1,service.name=client,service.version=latest");
        let tp = h["traceparent"].to_str().expect("ascii");
        assert_eq!(tp.len(), 55);
        assert!(tp.starts_with("00-") && tp.ends_with("-00"));
    }
}

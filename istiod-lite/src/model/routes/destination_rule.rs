//! DestinationRule → the subset labels and the merged traffic policy of one backend.
//!
//! Merging follows Istio: the top-level `trafficPolicy`, overridden by its
//! `portLevelSettings` for the port, then by the subset's `trafficPolicy`, then by the
//! subset's `portLevelSettings` for the port; each of `loadBalancer`, `connectionPool` and
//! `outlierDetection` is replaced whole by the more specific level that sets it (so
//! `localityLbSetting`, inside `loadBalancer`, goes with it). Istio's defaults are filled in
//! here so the waypoint needs none, including whether locality load balancing is in effect.

use std::collections::BTreeMap;
use std::time::Duration;

use mesh_proto::route as pb;

use crate::model::service::{hostname, DOMAIN_SUFFIX};
use crate::source::networking as net;
use crate::source::{ConfigSnapshot, ObjectKey};

/// Istio's outlier detection defaults.
const DEFAULT_CONSECUTIVE_5XX: u32 = 5;
const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);
const DEFAULT_BASE_EJECTION: Duration = Duration::from_secs(30);
const DEFAULT_MAX_EJECTION_PERCENT: u32 = 10;

/// A VirtualService or DestinationRule host as an FQDN: a name without dots is a Service in
/// the object's namespace (Istio's short-name rule); anything with a dot is taken as written.
pub fn resolve_host(host: &str, ns: &str) -> String {
    if host.contains('.') {
        host.to_string()
    } else {
        hostname(host, ns)
    }
}

/// `(namespace, name)` of a Service FQDN `<name>.<ns>.svc.cluster.local`.
pub fn service_of(fqdn: &str) -> Option<(&str, &str)> {
    let rest = fqdn.strip_suffix(&format!(".svc.{DOMAIN_SUFFIX}"))?;
    let (name, ns) = rest.split_once('.')?;
    (!ns.contains('.')).then_some((ns, name))
}

/// The DestinationRule for `host`: one in the Service's namespace first, then the oldest,
/// then by `namespace/name` (a warning names the ones ignored).
pub fn find<'a>(
    cfg: &'a ConfigSnapshot,
    host: &str,
    svc_ns: &str,
) -> Option<(&'a ObjectKey, &'a net::DestinationRule)> {
    let mut found: Vec<(&ObjectKey, &net::DestinationRule)> = cfg
        .destination_rules
        .iter()
        .filter(|(k, d)| resolve_host(&d.spec.host, &k.namespace) == host)
        .map(|(k, d)| (k, d.as_ref()))
        .collect();
    found.sort_by(|a, b| {
        let key = |x: &(&ObjectKey, &net::DestinationRule)| {
            (
                x.0.namespace != svc_ns,
                x.1.metadata.creation_timestamp.clone().unwrap_or_default(),
                x.0.to_string(),
            )
        };
        key(a).cmp(&key(b))
    });
    if found.len() > 1 {
        let ignored: Vec<String> = found[1..].iter().map(|(k, _)| k.to_string()).collect();
        tracing::warn!(%host, used = %found[0].0, ?ignored, "several DestinationRules for one host; only one applies");
    }
    found.into_iter().next()
}

/// Labels of subset `name`.
pub fn subset_labels<'a>(
    dr: &'a net::DestinationRule,
    name: &str,
) -> Option<&'a BTreeMap<String, String>> {
    dr.spec
        .subsets
        .iter()
        .find(|s| s.name == name)
        .map(|s| &s.labels)
}

#[derive(Default)]
struct Merged<'a> {
    lb: Option<&'a net::LoadBalancer>,
    pool: Option<&'a net::ConnectionPool>,
    outlier: Option<&'a net::OutlierDetection>,
}

impl<'a> Merged<'a> {
    fn apply(&mut self, tp: &'a net::TrafficPolicy, port: u16) {
        self.lb = tp.load_balancer.as_ref().or(self.lb);
        self.pool = tp.connection_pool.as_ref().or(self.pool);
        self.outlier = tp.outlier_detection.as_ref().or(self.outlier);
        for pl in tp
            .port_level_settings
            .iter()
            .filter(|p| p.port.is_some_and(|p| p.number == port))
        {
            self.lb = pl.load_balancer.as_ref().or(self.lb);
            self.pool = pl.connection_pool.as_ref().or(self.pool);
            self.outlier = pl.outlier_detection.as_ref().or(self.outlier);
        }
    }
}

fn ms(v: Option<&String>, default: Duration) -> u64 {
    let d = v
        .and_then(|s| mesh_config::parse_duration(s).ok())
        .unwrap_or(default);
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn load_balancer(lb: &net::LoadBalancer) -> pb::LoadBalancer {
    let mut out = pb::LoadBalancer::default();
    if let Some(h) = &lb.consistent_hash {
        use pb::consistent_hash::Key;
        let key = if let Some(n) = &h.http_header_name {
            Key::HttpHeaderName(n.clone())
        } else if let Some(c) = &h.http_cookie {
            Key::HttpCookie(c.name.clone())
        } else if let Some(q) = &h.http_query_parameter_name {
            Key::HttpQueryParameterName(q.clone())
        } else {
            Key::UseSourceIp(true)
        };
        out.consistent_hash = Some(pb::ConsistentHash {
            key: Some(key),
            minimum_ring_size: h
                .ring_hash
                .as_ref()
                .and_then(|r| r.minimum_ring_size)
                .or(h.maglev.as_ref().and_then(|m| m.table_size))
                .or(h.minimum_ring_size)
                .unwrap_or(0),
        });
        return out;
    }
    out.set_simple(match lb.simple.as_deref() {
        Some("LEAST_REQUEST" | "LEAST_CONN") => pb::load_balancer::Simple::LeastRequest,
        Some("RANDOM") => pb::load_balancer::Simple::Random,
        _ => pb::load_balancer::Simple::RoundRobin,
    });
    out
}

/// Locality load balancing as Istio applies it: on unless `localityLbSetting.enabled` is false
/// (the mesh-wide default is on); `distribute` applies by itself, while the priority failover
/// needs outlier detection on the same backend (without it no endpoint is ever seen unhealthy,
/// so traffic would never leave the local level and Istio leaves priorities off).
fn locality_lb(lb: Option<&net::LoadBalancer>, outlier: bool) -> Option<pb::LocalityLb> {
    let setting = lb.and_then(|l| l.locality_lb_setting.as_ref());
    if setting.is_some_and(|s| s.enabled == Some(false)) {
        return None;
    }
    let distribute: Vec<pb::LocalityDistribute> = setting
        .map(|s| {
            s.distribute
                .iter()
                .map(|d| pb::LocalityDistribute {
                    from: d.from.clone(),
                    to: d
                        .to
                        .iter()
                        .map(|(locality, weight)| pb::LocalityWeight {
                            locality: locality.clone(),
                            weight: *weight,
                        })
                        .collect(),
                })
                .collect()
        })
        .unwrap_or_default();
    if distribute.is_empty() && !outlier {
        return None;
    }
    Some(pb::LocalityLb {
        failover: setting
            .map(|s| {
                s.failover
                    .iter()
                    .map(|f| pb::LocalityFailover {
                        from: f.from.clone(),
                        to: f.to.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default(),
        distribute,
    })
}

/// The policy of `dr` for `port` and `subset`; `None` when it sets nothing relevant.
pub fn policy(
    dr: &net::DestinationRule,
    port: u16,
    subset: Option<&str>,
) -> Option<pb::TrafficPolicy> {
    let mut m = Merged::default();
    if let Some(tp) = &dr.spec.traffic_policy {
        m.apply(tp, port);
    }
    if let Some(tp) = subset
        .and_then(|s| dr.spec.subsets.iter().find(|x| x.name == s))
        .and_then(|s| s.traffic_policy.as_ref())
    {
        m.apply(tp, port);
    }
    if m.lb.is_none() && m.pool.is_none() && m.outlier.is_none() {
        return None;
    }
    let mut lb = m.lb.map(load_balancer);
    if let Some(l) = locality_lb(m.lb, m.outlier.is_some()) {
        lb.get_or_insert_with(Default::default).locality = Some(l);
    }
    Some(pb::TrafficPolicy {
        load_balancer: lb,
        connection_pool: m.pool.map(|p| pb::ConnectionPool {
            max_connections: p.tcp.as_ref().and_then(|t| t.max_connections).unwrap_or(0),
            http1_max_pending_requests: p
                .http
                .as_ref()
                .and_then(|h| h.http1_max_pending_requests)
                .unwrap_or(0),
            http2_max_requests: p
                .http
                .as_ref()
                .and_then(|h| h.http2_max_requests)
                .unwrap_or(0),
            max_requests_per_connection: p
                .http
                .as_ref()
                .and_then(|h| h.max_requests_per_connection)
                .unwrap_or(0),
        }),
        outlier_detection: m.outlier.map(|o| pb::OutlierDetection {
            consecutive_5xx_errors: o.consecutive_5xx_errors.unwrap_or(DEFAULT_CONSECUTIVE_5XX),
            consecutive_gateway_errors: o.consecutive_gateway_errors.unwrap_or(0),
            interval_ms: ms(o.interval.as_ref(), DEFAULT_INTERVAL),
            base_ejection_time_ms: ms(o.base_ejection_time.as_ref(), DEFAULT_BASE_EJECTION),
            max_ejection_percent: o
                .max_ejection_percent
                .unwrap_or(DEFAULT_MAX_EJECTION_PERCENT),
        }),
    })
}

//! From Istio's metrics to golden-metric rows; pure, so scrape deltas and Prometheus answers
//! go through the same arithmetic.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::dump::Workload;
use crate::prom::{Labels, Sample};

/// Connections opened (Istio's name).
pub const TCP_OPENED: &str = "istio_tcp_connections_opened_total";
/// Connections closed.
pub const TCP_CLOSED: &str = "istio_tcp_connections_closed_total";
/// Connections that failed before opening (ambient-rs; response_flags say why).
pub const TCP_FAILED: &str = "istio_tcp_connections_failed_total";
/// Bytes received from the client.
pub const TCP_RECEIVED: &str = "istio_tcp_received_bytes_total";
/// Bytes sent to the client.
pub const TCP_SENT: &str = "istio_tcp_sent_bytes_total";
/// L7 requests (waypoint).
pub const REQUESTS: &str = "istio_requests_total";
/// L7 request duration histogram buckets (waypoint).
pub const DURATION_BUCKET: &str = "istio_request_duration_milliseconds_bucket";

/// Every metric `stat` reads.
pub const METRICS: [&str; 7] = [
    TCP_OPENED,
    TCP_CLOSED,
    TCP_FAILED,
    TCP_RECEIVED,
    TCP_SENT,
    REQUESTS,
    DURATION_BUCKET,
];

/// How a value relates to the window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Increase over the window.
    Delta,
    /// Value at the end of the window.
    Instant,
}

/// Sums for one (reporter, namespace, workload).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Figures {
    /// Any istio_tcp_* series seen.
    pub l4: bool,
    /// Connections opened in the window.
    pub opened: f64,
    /// ... of which mutual TLS.
    pub opened_mtls: f64,
    /// Connections that failed to open in the window.
    pub failed: f64,
    /// Open at the end of the window (opened - closed).
    pub open_now: f64,
    /// ... of which mutual TLS.
    pub open_now_mtls: f64,
    /// Bytes received from clients in the window.
    pub bytes_in: f64,
    /// Bytes sent to clients in the window.
    pub bytes_out: f64,
    /// Any istio_requests_* series seen.
    pub l7: bool,
    /// Requests in the window.
    pub requests: f64,
    /// ... answered 5xx.
    pub errors: f64,
    /// Duration histogram increase: upper bound (ms) -> cumulative count.
    pub buckets: Vec<(f64, f64)>,
}

/// Figures keyed by (reporter, destination namespace, destination workload).
pub type ByReporter = BTreeMap<(String, String, String), Figures>;

fn label<'a>(l: &'a Labels, k: &str) -> &'a str {
    l.get(k).map_or("unknown", String::as_str)
}

/// Adds one series' value to `acc`.
pub fn observe(acc: &mut ByReporter, s: &Sample, kind: Kind) {
    let metric = s.name.as_str();
    if !METRICS.contains(&metric) || !s.value.is_finite() {
        return;
    }
    let key = (
        label(&s.labels, "reporter").to_string(),
        label(&s.labels, "destination_workload_namespace").to_string(),
        label(&s.labels, "destination_workload").to_string(),
    );
    let f = acc.entry(key).or_default();
    let mtls = s
        .labels
        .get("connection_security_policy")
        .is_some_and(|p| p == "mutual_tls");
    let v = s.value;
    match (metric, kind) {
        (TCP_OPENED, Kind::Delta) => {
            f.opened += v;
            if mtls {
                f.opened_mtls += v;
            }
        }
        (TCP_OPENED, Kind::Instant) => {
            f.open_now += v;
            if mtls {
                f.open_now_mtls += v;
            }
        }
        (TCP_CLOSED, Kind::Instant) => {
            f.open_now -= v;
            if mtls {
                f.open_now_mtls -= v;
            }
        }
        (TCP_FAILED, Kind::Delta) => f.failed += v,
        (TCP_RECEIVED, Kind::Delta) => f.bytes_in += v,
        (TCP_SENT, Kind::Delta) => f.bytes_out += v,
        (REQUESTS, Kind::Delta) => {
            f.l7 = true;
            f.requests += v;
            if s.labels
                .get("response_code")
                .is_some_and(|c| c.starts_with('5'))
            {
                f.errors += v;
            }
        }
        (DURATION_BUCKET, Kind::Delta) => {
            f.l7 = true;
            let le = s.labels.get("le").and_then(|l| match l.as_str() {
                "+Inf" | "Inf" => Some(f64::INFINITY),
                x => x.parse().ok(),
            });
            if let Some(le) = le {
                match f.buckets.iter_mut().find(|(b, _)| *b == le) {
                    Some((_, c)) => *c += v,
                    None => f.buckets.push((le, v)),
                }
            }
        }
        _ => {}
    }
    if metric.starts_with("istio_tcp_") {
        f.l4 = true;
    }
}

/// The `q` quantile (0..1) of a cumulative histogram, as Prometheus' histogram_quantile
/// estimates it (linear within the bucket; the highest finite bound if it falls in +Inf).
pub fn quantile(q: f64, buckets: &[(f64, f64)]) -> Option<f64> {
    let mut b: Vec<(f64, f64)> = buckets.to_vec();
    b.sort_by(|x, y| x.0.total_cmp(&y.0));
    let total = b.last().filter(|(le, _)| le.is_infinite())?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let (mut prev_le, mut prev_count) = (0.0, 0.0);
    for &(le, count) in &b {
        if count >= rank {
            if le.is_infinite() {
                return Some(prev_le);
            }
            let width = count - prev_count;
            if width <= 0.0 {
                return Some(le);
            }
            return Some(prev_le + (le - prev_le) * (rank - prev_count) / width);
        }
        (prev_le, prev_count) = (le, count);
    }
    None
}

/// One row of the table.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Row {
    /// `namespace/workload`.
    pub name: String,
    /// Pods meshed (HBONE).
    pub meshed_pods: Option<usize>,
    /// Pods known.
    pub total_pods: Option<usize>,
    /// Success rate, 0..1 (L7 when there are requests, else connection attempts that opened).
    pub success: Option<f64>,
    /// L7 requests per second.
    pub rps: Option<f64>,
    /// L7 latency percentiles, ms.
    pub latency_p50_ms: Option<f64>,
    /// .
    pub latency_p95_ms: Option<f64>,
    /// .
    pub latency_p99_ms: Option<f64>,
    /// Connections open at the end of the window.
    pub tcp_connections: Option<f64>,
    /// Share of connections with mutual TLS, 0..1.
    pub mtls: Option<f64>,
    /// Connections opened per second.
    pub connections_per_second: Option<f64>,
    /// Bytes per second received from clients.
    pub bytes_in_per_second: Option<f64>,
    /// Bytes per second sent to clients.
    pub bytes_out_per_second: Option<f64>,
}

/// Which workloads to show.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector {
    /// Only this namespace.
    pub namespace: Option<String>,
    /// Only this workload (needs the namespace).
    pub workload: Option<String>,
}

impl Selector {
    /// Parses `ns` or `ns/workload`.
    pub fn parse(s: Option<&str>) -> Result<Selector, String> {
        let Some(s) = s.filter(|s| !s.is_empty()) else {
            return Ok(Selector::default());
        };
        let (ns, wl) = match s.split_once('/') {
            Some((n, w)) => (n, Some(w)),
            None => (s, None),
        };
        if ns.is_empty() || wl.is_some_and(|w| w.is_empty() || w.contains('/')) {
            return Err(format!("{s:?}: expected NAMESPACE or NAMESPACE/WORKLOAD"));
        }
        Ok(Selector {
            namespace: Some(ns.to_string()),
            workload: wl.map(str::to_string),
        })
    }

    fn matches(&self, ns: &str, wl: &str) -> bool {
        self.namespace.as_deref().is_none_or(|n| n == ns)
            && self.workload.as_deref().is_none_or(|w| w == wl)
    }
}

/// Rows for the selected workloads: every workload with traffic, plus every workload the
/// agents know (so MESHED shows for idle ones). `seconds` is the window length.
pub fn rows(
    acc: &ByReporter,
    workloads: Option<&[Workload]>,
    sel: &Selector,
    seconds: f64,
) -> Vec<Row> {
    let mut names: BTreeSet<(String, String)> = acc
        .keys()
        .filter(|(_, ns, wl)| wl != "unknown" && ns != "unknown")
        .map(|(_, ns, wl)| (ns.clone(), wl.clone()))
        .collect();
    if let Some(ws) = workloads {
        names.extend(
            ws.iter()
                .map(|w| (w.namespace.clone(), w.workload().to_string())),
        );
    }
    names
        .into_iter()
        .filter(|(ns, wl)| sel.matches(ns, wl))
        .map(|(ns, wl)| row(acc, workloads, &ns, &wl, seconds))
        .collect()
}

fn pick<'a>(
    acc: &'a ByReporter,
    ns: &str,
    wl: &str,
    reporters: &[&str],
    has: impl Fn(&Figures) -> bool,
) -> Option<&'a Figures> {
    reporters.iter().find_map(|r| {
        acc.get(&(r.to_string(), ns.to_string(), wl.to_string()))
            .filter(|f| has(f))
    })
}

fn row(acc: &ByReporter, workloads: Option<&[Workload]>, ns: &str, wl: &str, secs: f64) -> Row {
    let mut r = Row {
        name: format!("{ns}/{wl}"),
        ..Default::default()
    };
    if let Some(ws) = workloads {
        let pods: Vec<&Workload> = ws
            .iter()
            .filter(|w| w.namespace == ns && w.workload() == wl)
            .collect();
        r.total_pods = Some(pods.len());
        r.meshed_pods = Some(pods.iter().filter(|w| w.protocol == "HBONE").count());
    }
    let ratio = |a: f64, b: f64| (b > 0.0).then(|| (a / b).clamp(0.0, 1.0));
    let rate = |v: f64| (secs > 0.0).then(|| v / secs);
    // The destination's own ztunnel sees every inbound connection; fall back to the clients'
    // reports for destinations outside the mesh.
    if let Some(f) = pick(acc, ns, wl, &["destination", "source"], |f| f.l4) {
        r.tcp_connections = Some(f.open_now.max(0.0));
        r.success = ratio(f.opened, f.opened + f.failed);
        r.mtls = ratio(f.opened_mtls, f.opened).or_else(|| ratio(f.open_now_mtls, f.open_now));
        r.connections_per_second = rate(f.opened);
        r.bytes_in_per_second = rate(f.bytes_in);
        r.bytes_out_per_second = rate(f.bytes_out);
    }
    if let Some(f) = pick(acc, ns, wl, &["waypoint", "destination", "source"], |f| {
        f.l7
    }) {
        r.rps = rate(f.requests);
        if f.requests > 0.0 {
            r.success = ratio(f.requests - f.errors, f.requests);
        }
        r.latency_p50_ms = quantile(0.5, &f.buckets);
        r.latency_p95_ms = quantile(0.95, &f.buckets);
        r.latency_p99_ms = quantile(0.99, &f.buckets);
    }
    r
}

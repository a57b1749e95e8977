//! The route table: pushed `ambient.route.v1.ServiceRoutes` compiled for the data path.
//!
//! * Lookup by the HBONE `:authority` (a service VIP and port) or by `<hostname>:<port>`.
//! * Rule selection with Gateway API precedence across every match of every rule attached to a
//!   port: Exact path, then the longest PathPrefix, then RegularExpression (longest first);
//!   then a method match; then more header matches; then more query matches; ties go to the
//!   oldest route, then `namespace/name` alphabetically, then rule and match order.
//! * Filters (request/response header modifiers, redirect, URL rewrite), weighted backends,
//!   endpoints chosen by the backend's DestinationRule policy ([`cluster`]: load balancer,
//!   [`locality`] preference, connection pool, outlier detection), fault injection
//!   ([`fault`]), mirrors, and the retry budget.
//! * VirtualService rules (a port's `ordered` flag) keep their order: the first match wins.

pub mod cluster;
pub mod fault;
pub mod lb;
pub mod locality;
#[cfg(test)]
mod locality_tests;
pub mod outlier;
pub mod pool;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Method};
use mesh_proto::route as pb;
use regex::Regex;

/// Why a pushed resource could not be used (the xDS client NACKs it).
#[derive(thiserror::Error, Debug)]
pub enum RouteError {
    /// A regular expression does not compile.
    #[error("{route}: invalid regular expression {pattern:?}: {source}")]
    Regex {
        /// Route (`ns/name`).
        route: String,
        /// The pattern.
        pattern: String,
        /// Why.
        source: regex::Error,
    },
    /// A header name or value is not valid HTTP.
    #[error("{route}: invalid header {name:?}")]
    Header {
        /// Route (`ns/name`).
        route: String,
        /// The header.
        name: String,
    },
    /// An address is not 4 or 16 bytes.
    #[error("{0}: address is not 4 or 16 bytes")]
    Address(String),
}

/// L7 protocol of a service port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// Relayed as bytes.
    Tcp,
    /// HTTP/1.1 (HTTP/2 with prior knowledge is accepted too).
    Http1,
    /// HTTP/2.
    Http2,
    /// gRPC (HTTP/2).
    Grpc,
}

impl Protocol {
    /// True for the protocols the waypoint parses.
    pub fn is_http(self) -> bool {
        !matches!(self, Protocol::Tcp)
    }
}

/// One backend pod.
#[derive(Debug)]
pub struct Endpoint {
    /// `<pod IP>:<target port>`.
    pub addr: SocketAddr,
    /// SPIFFE id it must present.
    pub identity: String,
    /// Reached over HBONE (else plain TCP).
    pub hbone: bool,
    /// Workload name (metrics).
    pub workload: String,
    /// Namespace (metrics).
    pub namespace: String,
    /// Canonical service (metrics).
    pub canonical_name: String,
    /// Canonical revision (metrics).
    pub canonical_revision: String,
    /// Cluster (metrics).
    pub cluster: String,
    /// Where it runs (locality load balancing).
    pub locality: locality::Locality,
}

/// A weighted backend Service (or DestinationRule subset of one) with its endpoints.
#[derive(Debug)]
pub struct Backend {
    /// Service name.
    pub name: String,
    /// Service namespace.
    pub namespace: String,
    /// Service hostname.
    pub hostname: String,
    /// DestinationRule subset ("" = the whole Service).
    pub subset: String,
    /// Relative weight.
    pub weight: u32,
    /// Endpoints.
    pub endpoints: Vec<Arc<Endpoint>>,
    /// Policy and live state (load balancer, pool, outlier detection).
    pub cluster: cluster::Cluster,
}

impl Backend {
    /// An endpoint by the backend's load balancer, without request data (TCP relay);
    /// `None` when the backend has none that is not ejected.
    pub fn pick(&self) -> Option<Arc<Endpoint>> {
        self.cluster.pick(None).map(|p| p.endpoint.clone())
    }
}

/// A mirror target: a copy of the request goes there, its answer is discarded.
#[derive(Debug)]
pub struct Mirror {
    /// Where.
    pub backend: Arc<Backend>,
    /// Share of requests mirrored (0-100).
    pub percent: f64,
}

/// Header changes of a modifier filter.
#[derive(Debug, Default, Clone)]
pub struct HeaderEdits {
    set: Vec<(HeaderName, HeaderValue)>,
    add: Vec<(HeaderName, HeaderValue)>,
    remove: Vec<HeaderName>,
}

impl HeaderEdits {
    /// Applies set (replace), add (append), remove, in Gateway API's order.
    pub fn apply(&self, h: &mut HeaderMap) {
        for (n, v) in &self.set {
            h.insert(n.clone(), v.clone());
        }
        for (n, v) in &self.add {
            h.append(n.clone(), v.clone());
        }
        for n in &self.remove {
            h.remove(n);
        }
    }
}

/// How a redirect or rewrite changes the path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathChange {
    /// Replace the whole path.
    Full(String),
    /// Replace the matched PathPrefix.
    Prefix(String),
    /// Replace the matched string prefix literally (VirtualService rewrite after
    /// `uri.prefix`).
    Literal(String),
}

/// RequestRedirect.
#[derive(Debug, Clone)]
pub struct Redirect {
    /// New scheme.
    pub scheme: Option<String>,
    /// New host.
    pub hostname: Option<String>,
    /// New path.
    pub path: Option<PathChange>,
    /// New port.
    pub port: Option<u16>,
    /// 301, 302, 303, 307 or 308.
    pub status: u16,
}

/// URLRewrite.
#[derive(Debug, Clone)]
pub struct Rewrite {
    /// New Host / :authority.
    pub hostname: Option<String>,
    /// New path.
    pub path: Option<PathChange>,
}

/// VirtualService `retryOn` conditions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetryOn {
    /// `5xx`.
    pub server_error: bool,
    /// `gateway-error`.
    pub gateway_error: bool,
    /// `connect-failure`, `refused-stream`.
    pub connect_failure: bool,
    /// `retriable-4xx` (409).
    pub retriable_4xx: bool,
    /// `reset`.
    pub reset: bool,
}

/// Kinds of attempt failures the retry conditions distinguish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// No connection (or the stream was refused).
    Connect,
    /// The connection or stream broke.
    Reset,
    /// The per-try timeout passed.
    Timeout,
}

/// Retry policy of a rule.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Retries after the first attempt.
    pub attempts: u32,
    /// Status codes retried (with HTTPRoute semantics 503 always is).
    pub codes: Vec<u16>,
    /// Pause between attempts.
    pub backoff: Duration,
    /// VirtualService `retryOn`; `None` = HTTPRoute semantics.
    pub on: Option<RetryOn>,
}

impl RetryPolicy {
    /// True when a response with `status` should be retried. HTTPRoute: the listed codes,
    /// plus 503 as Istio's retry-on `unavailable`. VirtualService: the listed codes and the
    /// `retryOn` classes.
    pub fn retries_status(&self, status: u16) -> bool {
        if self.codes.contains(&status) {
            return true;
        }
        match &self.on {
            None => status == 503,
            Some(on) => {
                (on.server_error && status >= 500)
                    || (on.gateway_error && matches!(status, 502..=504))
                    || (on.retriable_4xx && status == 409)
            }
        }
    }

    /// True when an attempt that failed without a response should be retried.
    pub fn retries_failure(&self, kind: FailureKind) -> bool {
        match &self.on {
            None => true,
            Some(on) => match kind {
                FailureKind::Connect => on.connect_failure || on.server_error || on.gateway_error,
                FailureKind::Reset => on.reset || on.server_error,
                FailureKind::Timeout => on.server_error || on.gateway_error,
            },
        }
    }
}

/// Default pause between retries (Envoy's base interval).
const DEFAULT_BACKOFF: Duration = Duration::from_millis(25);

/// One rule: what happens to a request it selects.
#[derive(Debug)]
pub struct Rule {
    /// `namespace/name` of the route (access log).
    pub route: String,
    /// Request header edits.
    pub request_headers: Option<HeaderEdits>,
    /// Response header edits.
    pub response_headers: Option<HeaderEdits>,
    /// Redirect instead of proxying.
    pub redirect: Option<Redirect>,
    /// Rewrite before proxying.
    pub rewrite: Option<Rewrite>,
    /// Weighted backends.
    pub backends: Vec<Arc<Backend>>,
    total_weight: u64,
    /// Whole-request timeout (retries included).
    pub timeout: Option<Duration>,
    /// Per-attempt timeout.
    pub backend_timeout: Option<Duration>,
    /// Retries.
    pub retry: Option<RetryPolicy>,
    /// Fault injection.
    pub fault: Option<fault::Fault>,
    /// Mirrors.
    pub mirrors: Vec<Mirror>,
}

impl Rule {
    /// Picks a backend by weight using `roll` in `0..total_weight`; `None` when there are no
    /// backends or every weight is 0 (Gateway API: answer 500).
    pub fn pick_backend_with(&self, roll: u64) -> Option<&Arc<Backend>> {
        if self.total_weight == 0 {
            return None;
        }
        let mut r = roll % self.total_weight;
        for b in &self.backends {
            let w = u64::from(b.weight);
            if r < w {
                return Some(b);
            }
            r -= w;
        }
        None
    }

    /// Picks a backend by weight.
    pub fn pick_backend(&self) -> Option<&Arc<Backend>> {
        if self.total_weight == 0 {
            return None;
        }
        self.pick_backend_with(rand::random_range(0..self.total_weight))
    }
}

#[derive(Debug, Clone)]
enum PathMatcher {
    Exact(String),
    /// Normalised prefix (no trailing slash unless it is "/").
    Prefix(String),
    Regex(Regex),
    /// Plain string prefix (VirtualService).
    StringPrefix(String),
}

#[derive(Debug, Clone)]
enum ValueMatcher {
    Exact(String),
    Regex(Regex),
}

impl ValueMatcher {
    fn matches(&self, v: &str) -> bool {
        match self {
            ValueMatcher::Exact(e) => e == v,
            ValueMatcher::Regex(r) => r.is_match(v),
        }
    }
}

/// One match of one rule, with its precedence key.
#[derive(Debug)]
struct Entry {
    path: PathMatcher,
    method: Option<Method>,
    headers: Vec<(HeaderName, ValueMatcher)>,
    query: Vec<(String, ValueMatcher)>,
    rule: Arc<Rule>,
}

/// The parts of a request that routing looks at.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    /// Method.
    pub method: &'a Method,
    /// Path without the query.
    pub path: &'a str,
    /// Raw query string (without `?`).
    pub query: Option<&'a str>,
    /// Headers.
    pub headers: &'a HeaderMap,
}

/// The selected rule and what its match consumed (for ReplacePrefixMatch).
#[derive(Debug, Clone)]
pub struct Selected {
    /// The rule.
    pub rule: Arc<Rule>,
    /// The matched PathPrefix, when the match was one.
    pub matched_prefix: Option<String>,
}

fn prefix_matches(prefix: &str, path: &str) -> bool {
    if prefix == "/" {
        return true;
    }
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

fn query_value<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    // Gateway API: the first value of a repeated parameter is the one matched.
    query?
        .split('&')
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k == name).then_some(v)
        })
        .next()
}

impl Entry {
    fn matches(&self, r: &RequestView<'_>) -> bool {
        let path_ok = match &self.path {
            PathMatcher::Exact(p) => r.path == p,
            PathMatcher::Prefix(p) => prefix_matches(p, r.path),
            PathMatcher::Regex(re) => re.is_match(r.path),
            PathMatcher::StringPrefix(p) => r.path.starts_with(p.as_str()),
        };
        path_ok
            && self.method.as_ref().is_none_or(|m| m == r.method)
            && self.headers.iter().all(|(n, m)| {
                r.headers
                    .get(n)
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|v| m.matches(v))
            })
            && self
                .query
                .iter()
                .all(|(n, m)| query_value(r.query, n).is_some_and(|v| m.matches(v)))
    }
}

/// A service port with its rules in precedence order.
#[derive(Debug)]
pub struct Port {
    /// Service port.
    pub port: u16,
    /// Protocol.
    pub protocol: Protocol,
    entries: Vec<Entry>,
    /// True when any route is attached (then no match = 404).
    pub has_routes: bool,
    /// The service itself, used when no route is attached.
    pub default_rule: Arc<Rule>,
}

impl Port {
    /// The rule for a request: the first matching entry in precedence order; the default rule
    /// when no route is attached; `None` (404) when routes are attached but none matches.
    pub fn select(&self, r: &RequestView<'_>) -> Option<Selected> {
        if !self.has_routes {
            return Some(Selected {
                rule: self.default_rule.clone(),
                matched_prefix: None,
            });
        }
        self.entries
            .iter()
            .find(|e| e.matches(r))
            .map(|e| Selected {
                rule: e.rule.clone(),
                matched_prefix: match &e.path {
                    PathMatcher::Prefix(p) | PathMatcher::StringPrefix(p) => Some(p.clone()),
                    _ => None,
                },
            })
    }
}

/// A Service the waypoint serves.
#[derive(Debug)]
pub struct Service {
    /// Name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// Hostname.
    pub hostname: String,
    /// VIPs.
    pub addresses: Vec<IpAddr>,
    /// Ports by number.
    pub ports: HashMap<u16, Arc<Port>>,
    /// This waypoint's own locality, as the resource gave it (empty = unknown).
    pub locality: locality::Locality,
}

fn ip(bytes: &[u8], what: &str) -> Result<IpAddr, RouteError> {
    match bytes.len() {
        4 => Ok(IpAddr::from(
            <[u8; 4]>::try_from(bytes).map_err(|_| RouteError::Address(what.into()))?,
        )),
        16 => Ok(IpAddr::from(
            <[u8; 16]>::try_from(bytes).map_err(|_| RouteError::Address(what.into()))?,
        )),
        _ => Err(RouteError::Address(what.into())),
    }
}

fn regex(route: &str, pattern: &str) -> Result<Regex, RouteError> {
    // Gateway API regexes match the whole value.
    Regex::new(&format!("^(?:{pattern})$")).map_err(|source| RouteError::Regex {
        route: route.into(),
        pattern: pattern.into(),
        source,
    })
}

fn value_matcher(route: &str, m: &pb::ValueMatch) -> Result<ValueMatcher, RouteError> {
    Ok(if m.regex {
        ValueMatcher::Regex(regex(route, &m.value)?)
    } else {
        ValueMatcher::Exact(m.value.clone())
    })
}

fn header_edits(route: &str, m: &pb::HeaderModifier) -> Result<HeaderEdits, RouteError> {
    let bad = |name: &str| RouteError::Header {
        route: route.into(),
        name: name.into(),
    };
    let pair = |h: &pb::Header| -> Result<(HeaderName, HeaderValue), RouteError> {
        Ok((
            HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| bad(&h.name))?,
            HeaderValue::from_str(&h.value).map_err(|_| bad(&h.name))?,
        ))
    };
    Ok(HeaderEdits {
        set: m.set.iter().map(pair).collect::<Result<_, _>>()?,
        add: m.add.iter().map(pair).collect::<Result<_, _>>()?,
        remove: m
            .remove
            .iter()
            .map(|n| HeaderName::from_bytes(n.as_bytes()).map_err(|_| bad(n)))
            .collect::<Result<_, _>>()?,
    })
}

fn path_change(p: &pb::PathModifier) -> PathChange {
    match p.kind() {
        pb::path_modifier::Kind::Prefix => PathChange::Prefix(p.value.clone()),
        pb::path_modifier::Kind::Full => PathChange::Full(p.value.clone()),
        pb::path_modifier::Kind::LiteralPrefix => PathChange::Literal(p.value.clone()),
    }
}

fn backend(b: &pb::Backend, own: &locality::Locality) -> Result<Backend, RouteError> {
    let endpoints = b
        .endpoints
        .iter()
        .map(|e| {
            let port = u16::try_from(e.port).unwrap_or(0);
            Ok(Arc::new(Endpoint {
                addr: SocketAddr::new(ip(&e.address, &b.hostname)?, port),
                identity: e.identity.clone(),
                hbone: e.hbone,
                workload: e.workload_name.clone(),
                namespace: e.namespace.clone(),
                canonical_name: e.canonical_name.clone(),
                canonical_revision: e.canonical_revision.clone(),
                cluster: e.cluster_id.clone(),
                locality: locality::Locality::from_pb(e.locality.as_ref()),
            }))
        })
        .collect::<Result<Vec<_>, RouteError>>()?;
    let policy = policy(&b.hostname, b.policy.as_ref())?;
    let cluster = cluster::Cluster::new(
        format!("{}|{}|{}", b.hostname, b.subset, b.port),
        policy,
        endpoints.clone(),
        own,
    );
    Ok(Backend {
        name: b.name.clone(),
        namespace: b.namespace.clone(),
        hostname: b.hostname.clone(),
        subset: b.subset.clone(),
        weight: b.weight,
        endpoints,
        cluster,
    })
}

/// Istio's default ring size (`minimumRingSize`).
const DEFAULT_RING_SIZE: u64 = 1024;
/// Largest ring we build, whatever the config says (memory per backend).
const MAX_RING_SIZE: u64 = 1 << 16;

fn policy(host: &str, p: Option<&pb::TrafficPolicy>) -> Result<cluster::Policy, RouteError> {
    let Some(p) = p else {
        return Ok(cluster::Policy::default());
    };
    let lb = match &p.load_balancer {
        None => lb::LbPolicy::RoundRobin,
        Some(l) => match l.consistent_hash.as_ref() {
            Some(h) => {
                use pb::consistent_hash::Key;
                let key = match &h.key {
                    Some(Key::HttpHeaderName(n)) => lb::HashKey::Header(
                        HeaderName::from_bytes(n.to_ascii_lowercase().as_bytes()).map_err(
                            |_| RouteError::Header {
                                route: host.into(),
                                name: n.clone(),
                            },
                        )?,
                    ),
                    Some(Key::HttpCookie(n)) => lb::HashKey::Cookie(n.clone()),
                    Some(Key::UseSourceIp(_)) => lb::HashKey::SourceIp,
                    Some(Key::HttpQueryParameterName(n)) => lb::HashKey::QueryParam(n.clone()),
                    None => lb::HashKey::SourceIp,
                };
                let size = if h.minimum_ring_size == 0 {
                    DEFAULT_RING_SIZE
                } else {
                    h.minimum_ring_size.min(MAX_RING_SIZE)
                };
                lb::LbPolicy::RingHash {
                    key,
                    ring_size: usize::try_from(size).unwrap_or(1024),
                }
            }
            None => match l.simple() {
                pb::load_balancer::Simple::RoundRobin => lb::LbPolicy::RoundRobin,
                pb::load_balancer::Simple::LeastRequest => lb::LbPolicy::LeastRequest,
                pb::load_balancer::Simple::Random => lb::LbPolicy::Random,
            },
        },
    };
    let pool = p
        .connection_pool
        .as_ref()
        .map(|c| pool::PoolLimits {
            max_connections: c.max_connections,
            max_pending: c.http1_max_pending_requests,
            max_requests: c.http2_max_requests,
            max_requests_per_connection: c.max_requests_per_connection,
        })
        .unwrap_or_default();
    let outlier = p
        .outlier_detection
        .as_ref()
        .filter(|o| o.consecutive_5xx_errors > 0 || o.consecutive_gateway_errors > 0)
        .map(|o| outlier::OutlierConfig {
            consecutive_5xx: o.consecutive_5xx_errors,
            consecutive_gateway: o.consecutive_gateway_errors,
            interval: Duration::from_millis(o.interval_ms),
            base_ejection: Duration::from_millis(o.base_ejection_time_ms),
            max_ejection_percent: o.max_ejection_percent,
        });
    let locality = p
        .load_balancer
        .as_ref()
        .and_then(|l| l.locality.as_ref())
        .map(locality::LocalityPolicy::from_pb);
    Ok(cluster::Policy {
        lb,
        pool,
        outlier,
        locality,
    })
}

fn ms(v: u64) -> Option<Duration> {
    (v > 0).then(|| Duration::from_millis(v))
}

fn rule(r: &pb::RouteRule, own: &locality::Locality) -> Result<Rule, RouteError> {
    let route = r.route.as_str();
    let retry_on = |p: &pb::RetryPolicy| {
        p.retry_on.as_ref().map(|o| RetryOn {
            server_error: o.server_error,
            gateway_error: o.gateway_error,
            connect_failure: o.connect_failure,
            retriable_4xx: o.retriable_4xx,
            reset: o.reset,
        })
    };
    // perTryTimeout (VirtualService) and backendRequest (HTTPRoute) are the same knob.
    let per_try = r.retry.as_ref().map_or(0, |p| p.per_try_timeout_ms);
    let mut out = Rule {
        route: route.to_string(),
        request_headers: None,
        response_headers: None,
        redirect: None,
        rewrite: None,
        backends: r
            .backends
            .iter()
            .map(|b| backend(b, own).map(Arc::new))
            .collect::<Result<_, _>>()?,
        total_weight: 0,
        timeout: ms(r.request_timeout_ms),
        backend_timeout: ms(r.backend_request_timeout_ms).or(ms(per_try)),
        retry: r
            .retry
            .as_ref()
            .filter(|p| p.attempts > 0)
            .map(|p| RetryPolicy {
                attempts: p.attempts,
                codes: p
                    .codes
                    .iter()
                    .filter_map(|c| u16::try_from(*c).ok())
                    .collect(),
                backoff: ms(p.backoff_ms).unwrap_or(DEFAULT_BACKOFF),
                on: retry_on(p),
            }),
        fault: r.fault.as_ref().map(|f| fault::Fault {
            delay: f
                .delay
                .as_ref()
                .map(|d| (Duration::from_millis(d.fixed_delay_ms), d.percent)),
            abort: f.abort.as_ref().and_then(|a| {
                u16::try_from(a.http_status)
                    .ok()
                    .filter(|s| (200..=599).contains(s))
                    .map(|s| (s, a.percent))
            }),
        }),
        mirrors: Vec::new(),
    };
    out.total_weight = out.backends.iter().map(|b| u64::from(b.weight)).sum();
    for f in &r.filters {
        match &f.kind {
            Some(pb::filter::Kind::RequestHeaderModifier(m)) => {
                out.request_headers = Some(header_edits(route, m)?)
            }
            Some(pb::filter::Kind::ResponseHeaderModifier(m)) => {
                out.response_headers = Some(header_edits(route, m)?)
            }
            Some(pb::filter::Kind::RequestRedirect(rd)) => {
                let nonempty = |s: &str| (!s.is_empty()).then(|| s.to_string());
                out.redirect = Some(Redirect {
                    scheme: nonempty(&rd.scheme),
                    hostname: nonempty(&rd.hostname),
                    path: rd.path.as_ref().map(path_change),
                    port: u16::try_from(rd.port).ok().filter(|p| *p != 0),
                    status: match rd.status_code {
                        c @ (301 | 303 | 307 | 308) => u16::try_from(c).unwrap_or(302),
                        _ => 302,
                    },
                })
            }
            Some(pb::filter::Kind::UrlRewrite(rw)) => {
                out.rewrite = Some(Rewrite {
                    hostname: (!rw.hostname.is_empty()).then(|| rw.hostname.clone()),
                    path: rw.path.as_ref().map(path_change),
                })
            }
            Some(pb::filter::Kind::RequestMirror(m)) => {
                if let Some(b) = &m.backend {
                    out.mirrors.push(Mirror {
                        backend: Arc::new(backend(b, own)?),
                        percent: m.percent,
                    });
                }
            }
            None => {}
        }
    }
    Ok(out)
}

/// Precedence key: smaller sorts first.
type Key = (
    u8,
    std::cmp::Reverse<usize>,
    bool,
    std::cmp::Reverse<usize>,
    std::cmp::Reverse<usize>,
    String,
    String,
    u32,
    usize,
);

fn entries(
    rules: &[pb::RouteRule],
    ordered: bool,
    own: &locality::Locality,
) -> Result<Vec<Entry>, RouteError> {
    let mut keyed: Vec<(Key, Entry)> = Vec::new();
    for (position, r) in rules.iter().enumerate() {
        let compiled = Arc::new(rule(r, own)?);
        let default_match = [pb::RouteMatch::default()];
        let matches: &[pb::RouteMatch] = if r.matches.is_empty() {
            &default_match
        } else {
            &r.matches
        };
        for (mi, m) in matches.iter().enumerate() {
            let (rank, len, path) = match &m.path {
                None => (1, 1, PathMatcher::Prefix("/".into())),
                Some(p) => match p.kind() {
                    pb::path_match::Kind::Exact => {
                        (0, p.value.len(), PathMatcher::Exact(p.value.clone()))
                    }
                    pb::path_match::Kind::Prefix => {
                        let v = if p.value.len() > 1 {
                            p.value.trim_end_matches('/').to_string()
                        } else {
                            "/".to_string()
                        };
                        let v = if v.is_empty() { "/".to_string() } else { v };
                        (1, v.len(), PathMatcher::Prefix(v))
                    }
                    pb::path_match::Kind::Regex => (
                        2,
                        p.value.len(),
                        PathMatcher::Regex(regex(&r.route, &p.value)?),
                    ),
                    pb::path_match::Kind::StringPrefix => {
                        (1, p.value.len(), PathMatcher::StringPrefix(p.value.clone()))
                    }
                },
            };
            let method = if m.method.is_empty() {
                None
            } else {
                Some(
                    Method::from_bytes(m.method.as_bytes()).map_err(|_| RouteError::Header {
                        route: r.route.clone(),
                        name: format!("method {}", m.method),
                    })?,
                )
            };
            let headers =
                m.headers
                    .iter()
                    .map(|h| {
                        Ok((
                            HeaderName::from_bytes(h.name.to_ascii_lowercase().as_bytes())
                                .map_err(|_| RouteError::Header {
                                    route: r.route.clone(),
                                    name: h.name.clone(),
                                })?,
                            value_matcher(&r.route, h)?,
                        ))
                    })
                    .collect::<Result<Vec<_>, RouteError>>()?;
            let query = m
                .query_params
                .iter()
                .map(|q| Ok((q.name.clone(), value_matcher(&r.route, q)?)))
                .collect::<Result<Vec<_>, RouteError>>()?;
            let key: Key = if ordered {
                // VirtualService: http[] order, then match order; nothing else counts.
                (
                    0,
                    std::cmp::Reverse(0),
                    false,
                    std::cmp::Reverse(0),
                    std::cmp::Reverse(0),
                    String::new(),
                    String::new(),
                    u32::try_from(position).unwrap_or(u32::MAX),
                    mi,
                )
            } else {
                (
                    rank,
                    std::cmp::Reverse(len),
                    method.is_none(),
                    std::cmp::Reverse(headers.len()),
                    std::cmp::Reverse(query.len()),
                    r.creation_timestamp.clone(),
                    r.route.clone(),
                    r.rule_index,
                    mi,
                )
            };
            keyed.push((
                key,
                Entry {
                    path,
                    method,
                    headers,
                    query,
                    rule: compiled.clone(),
                },
            ));
        }
    }
    keyed.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(keyed.into_iter().map(|(_, e)| e).collect())
}

/// Compiles one pushed resource for a waypoint whose locality is unknown.
pub fn compile(s: &pb::ServiceRoutes) -> Result<Service, RouteError> {
    compile_for(s, "")
}

/// Compiles one pushed resource for the waypoint pod `pod_name`: its locality (from the
/// resource's `waypoint_instances`) ranks the endpoints of backends with locality load
/// balancing.
pub fn compile_for(s: &pb::ServiceRoutes, pod_name: &str) -> Result<Service, RouteError> {
    let own = locality::Locality::from_pb(
        s.waypoint_instances
            .iter()
            .find(|w| !pod_name.is_empty() && w.pod_name == pod_name)
            .and_then(|w| w.locality.as_ref()),
    );
    let own = &own;
    let mut ports = HashMap::new();
    for p in &s.ports {
        let protocol = match p.protocol() {
            pb::Protocol::Tcp => Protocol::Tcp,
            pb::Protocol::Http1 => Protocol::Http1,
            pb::Protocol::Http2 => Protocol::Http2,
            pb::Protocol::Grpc => Protocol::Grpc,
        };
        let default = p.default_backend.clone().unwrap_or_default();
        let default_rule = Arc::new(rule(
            &pb::RouteRule {
                route: format!("{}/{} (default)", s.namespace, s.name),
                backends: vec![pb::Backend {
                    weight: 1,
                    ..default
                }],
                ..Default::default()
            },
            own,
        )?);
        let port = u16::try_from(p.port).unwrap_or(0);
        ports.insert(
            port,
            Arc::new(Port {
                port,
                protocol,
                entries: entries(&p.rules, p.ordered, own)?,
                has_routes: !p.rules.is_empty(),
                default_rule,
            }),
        );
    }
    Ok(Service {
        name: s.name.clone(),
        namespace: s.namespace.clone(),
        hostname: s.hostname.clone(),
        addresses: s
            .addresses
            .iter()
            .map(|a| ip(a, &s.hostname))
            .collect::<Result<_, _>>()?,
        ports,
        locality: own.clone(),
    })
}

/// Every Service of this waypoint, indexed by VIP:port and hostname.
#[derive(Debug, Default)]
pub struct Table {
    services: HashMap<String, Arc<Service>>,
    by_vip: HashMap<IpAddr, Arc<Service>>,
    by_host: HashMap<String, Arc<Service>>,
}

impl Table {
    /// Builds the indexes from resources by name.
    pub fn new(services: HashMap<String, Arc<Service>>) -> Self {
        let mut by_vip = HashMap::new();
        let mut by_host = HashMap::new();
        for s in services.values() {
            for a in &s.addresses {
                by_vip.insert(*a, s.clone());
            }
            by_host.insert(s.hostname.clone(), s.clone());
        }
        Table {
            services,
            by_vip,
            by_host,
        }
    }

    /// Resources by name.
    pub fn services(&self) -> &HashMap<String, Arc<Service>> {
        &self.services
    }

    /// The service and port an HBONE `:authority` names: `VIP:port` or `hostname:port`.
    pub fn lookup(&self, authority: &str) -> Option<(Arc<Service>, Arc<Port>)> {
        let (host, port) = match authority.parse::<SocketAddr>() {
            Ok(sa) => (None, sa),
            Err(_) => {
                let (h, p) = authority.rsplit_once(':')?;
                (
                    Some(h),
                    SocketAddr::new(IpAddr::from([0, 0, 0, 0]), p.parse().ok()?),
                )
            }
        };
        let svc = match host {
            Some(h) => self.by_host.get(h)?,
            None => self.by_vip.get(&port.ip())?,
        };
        let p = svc.ports.get(&port.port())?;
        Some((svc.clone(), p.clone()))
    }
}

/// Envoy-style retry budget: retries in flight may not exceed `percent` of requests in flight,
/// with a floor so a lightly loaded waypoint can still retry. A failing backend therefore
/// cannot be stormed: under load the retry traffic is capped at a fraction of the real
/// traffic.
#[derive(Debug)]
pub struct RetryBudget {
    percent: u64,
    floor: u64,
    active_requests: AtomicU64,
    active_retries: AtomicU64,
}

impl RetryBudget {
    /// `percent` of active requests (20 in Istio's defaults), at least `floor` (3).
    pub fn new(percent: u64, floor: u64) -> Self {
        RetryBudget {
            percent,
            floor,
            active_requests: AtomicU64::new(0),
            active_retries: AtomicU64::new(0),
        }
    }

    /// Counts a request in flight until the guard drops.
    pub fn request(self: &Arc<Self>) -> BudgetGuard {
        self.active_requests.fetch_add(1, Ordering::Relaxed);
        BudgetGuard {
            budget: self.clone(),
            retry: false,
        }
    }

    /// A retry slot if the budget allows one (held until the guard drops).
    pub fn try_retry(self: &Arc<Self>) -> Option<BudgetGuard> {
        let requests = self.active_requests.load(Ordering::Relaxed);
        let limit = (requests * self.percent / 100).max(self.floor);
        let prev = self.active_retries.fetch_add(1, Ordering::Relaxed);
        if prev >= limit {
            self.active_retries.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(BudgetGuard {
            budget: self.clone(),
            retry: true,
        })
    }
}

/// Releases a request or retry slot of the [`RetryBudget`].
#[derive(Debug)]
pub struct BudgetGuard {
    budget: Arc<RetryBudget>,
    retry: bool,
}

impl Drop for BudgetGuard {
    fn drop(&mut self) {
        let c = if self.retry {
            &self.budget.active_retries
        } else {
            &self.budget.active_requests
        };
        c.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Replaces `matched` (a PathPrefix) at the start of `path` with `with`, element-wise:
/// `/foo/bar` with prefix `/foo` → `/xyz/bar` (with `/xyz`) or `/bar` (with `/`).
pub fn replace_prefix(path: &str, matched: &str, with: &str) -> String {
    let rest = if matched == "/" {
        path
    } else {
        path.strip_prefix(matched).unwrap_or(path)
    };
    let rest = rest.trim_start_matches('/');
    let base = with.trim_end_matches('/');
    match (base.is_empty(), rest.is_empty()) {
        (true, true) => "/".to_string(),
        (true, false) => format!("/{rest}"),
        (false, true) => base.to_string(),
        (false, false) => format!("{base}/{rest}"),
    }
}

/// The new path of a redirect or rewrite.
pub fn changed_path(path: &str, change: &PathChange, matched_prefix: Option<&str>) -> String {
    match change {
        PathChange::Full(p) => p.clone(),
        PathChange::Prefix(p) => replace_prefix(path, matched_prefix.unwrap_or("/"), p),
        // After an exact or regex match there is no prefix: the whole path is replaced.
        PathChange::Literal(p) => match matched_prefix.and_then(|m| path.strip_prefix(m)) {
            Some(rest) => format!("{p}{rest}"),
            None => p.clone(),
        },
    }
}

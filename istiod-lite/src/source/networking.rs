//! `networking.istio.io` kinds the waypoint honours: VirtualService (HTTP routing, retries,
//! timeouts, fault injection, mirroring, header edits, rewrite, redirect) and DestinationRule
//! (subsets and traffic policy: load balancer with locality settings, connection pool, outlier
//! detection).
//!
//! Validation refuses, per object and with the field's path, what the waypoint cannot honour,
//! rather than dropping it silently: TCP/TLS routes, delegates, direct responses, CORS, match
//! conditions other than uri/headers/queryParams/method/port, PASSTHROUGH load balancing,
//! `localityLbSetting.failoverPriority`. Fields that do not change routing at a waypoint
//! (DestinationRule `tls`, `exportTo`, connect and idle timeouts) are accepted and ignored;
//! docs/waypoint.md lists them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::gateway::parse_duration;
use super::kinds::{null_default, FieldError, Kind, ObjectMeta};

/// API group of the kinds in this module.
pub const NETWORKING_GROUP: &str = "networking.istio.io";
/// Versions accepted (`apiVersion` may also be left out in local config).
pub const NETWORKING_VERSIONS: [&str; 3] = ["v1", "v1beta1", "v1alpha3"];

/// A field we refuse when present (kept as raw YAML only to notice it).
pub type Unsupported = Option<serde_yaml_ng::Value>;

/// Istio's `StringMatch`: exactly one of exact, prefix, regex (RE2, whole value).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
pub struct StringMatch {
    /// Exact value.
    #[serde(default)]
    pub exact: Option<String>,
    /// Prefix.
    #[serde(default)]
    pub prefix: Option<String>,
    /// Regular expression.
    #[serde(default)]
    pub regex: Option<String>,
}

/// A percentage 0-100 (`{value: 12.5}`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize, Serialize)]
pub struct Percent {
    /// Value.
    #[serde(default)]
    pub value: f64,
}
// Percentages are compared only to detect unchanged objects; NaN is refused by validation.
impl Eq for Percent {}

/// `port: {number: N}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub struct PortSelector {
    /// Port number.
    pub number: u16,
}

/// One `http[].match[]` entry: all its conditions must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpMatchRequest {
    /// Name (logs only).
    #[serde(default)]
    pub name: Option<String>,
    /// Path.
    #[serde(default)]
    pub uri: Option<StringMatch>,
    /// Headers (lower-case names).
    #[serde(default, deserialize_with = "null_default")]
    pub headers: BTreeMap<String, StringMatch>,
    /// Query parameters.
    #[serde(default, deserialize_with = "null_default")]
    pub query_params: BTreeMap<String, StringMatch>,
    /// Method (exact only).
    #[serde(default)]
    pub method: Option<StringMatch>,
    /// Service port.
    #[serde(default)]
    pub port: Option<u16>,
    /// Refused.
    #[serde(default, skip_serializing)]
    pub authority: Unsupported,
    /// Refused.
    #[serde(default, skip_serializing)]
    pub without_headers: Unsupported,
    /// Refused.
    #[serde(default, skip_serializing)]
    pub source_labels: Unsupported,
    /// Refused.
    #[serde(default, skip_serializing)]
    pub source_namespace: Unsupported,
    /// Refused.
    #[serde(default, skip_serializing)]
    pub ignore_uri_case: Unsupported,
    /// Refused.
    #[serde(default, skip_serializing)]
    pub scheme: Unsupported,
    /// Refused.
    #[serde(default, skip_serializing)]
    pub gateways: Unsupported,
}

/// `destination`: a Service host, optionally a DestinationRule subset and a port.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
pub struct Destination {
    /// Short name (the VirtualService's namespace) or FQDN.
    pub host: String,
    /// DestinationRule subset.
    #[serde(default)]
    pub subset: Option<String>,
    /// Port (required when the Service has several and it is not the request's).
    #[serde(default)]
    pub port: Option<PortSelector>,
}

/// One weighted destination of `route`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct RouteDestination {
    /// Where.
    pub destination: Destination,
    /// Relative weight (Istio: they add up to 100; a single destination defaults to 100).
    #[serde(default)]
    pub weight: Option<u32>,
    /// Refused (per-destination header edits).
    #[serde(default, skip_serializing)]
    pub headers: Unsupported,
}

/// set / add / remove.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
pub struct HeaderOperations {
    /// Replace.
    #[serde(default, deserialize_with = "null_default")]
    pub set: BTreeMap<String, String>,
    /// Append.
    #[serde(default, deserialize_with = "null_default")]
    pub add: BTreeMap<String, String>,
    /// Remove.
    #[serde(default, deserialize_with = "null_default")]
    pub remove: Vec<String>,
}

/// `headers` of an http route.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
pub struct Headers {
    /// Request edits.
    #[serde(default)]
    pub request: Option<HeaderOperations>,
    /// Response edits.
    #[serde(default)]
    pub response: Option<HeaderOperations>,
}

/// `redirect`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRedirect {
    /// New path.
    #[serde(default)]
    pub uri: Option<String>,
    /// New host.
    #[serde(default)]
    pub authority: Option<String>,
    /// New port.
    #[serde(default)]
    pub port: Option<u16>,
    /// New scheme.
    #[serde(default)]
    pub scheme: Option<String>,
    /// 301 (default), 302, 303, 307, 308.
    #[serde(default)]
    pub redirect_code: Option<u16>,
}

/// `rewrite`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRewrite {
    /// Replaces the matched uri prefix (or the whole path after an exact/regex match).
    #[serde(default)]
    pub uri: Option<String>,
    /// New Host / :authority.
    #[serde(default)]
    pub authority: Option<String>,
    /// Refused.
    #[serde(default, skip_serializing)]
    pub uri_regex_rewrite: Unsupported,
}

/// `retries`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRetry {
    /// Retries after the first attempt (0 disables retries).
    #[serde(default)]
    pub attempts: Option<u32>,
    /// Timeout of each attempt.
    #[serde(default)]
    pub per_try_timeout: Option<String>,
    /// Comma-separated conditions and status codes.
    #[serde(default)]
    pub retry_on: Option<String>,
}

/// `fault.delay`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FaultDelay {
    /// Delay.
    #[serde(default)]
    pub fixed_delay: Option<String>,
    /// Share of requests (default 100 when absent, as Istio's `percent` default).
    #[serde(default)]
    pub percentage: Option<Percent>,
}

/// `fault.abort`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FaultAbort {
    /// Status to answer.
    #[serde(default)]
    pub http_status: Option<u16>,
    /// Share of requests.
    #[serde(default)]
    pub percentage: Option<Percent>,
    /// Refused.
    #[serde(default, skip_serializing)]
    pub grpc_status: Unsupported,
}

/// `fault`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
pub struct HttpFault {
    /// Delay.
    #[serde(default)]
    pub delay: Option<FaultDelay>,
    /// Abort.
    #[serde(default)]
    pub abort: Option<FaultAbort>,
}

/// One of `mirrors`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct HttpMirror {
    /// Where.
    pub destination: Destination,
    /// Share of requests (default 100).
    #[serde(default)]
    pub percentage: Option<Percent>,
}

/// One `http[]` rule.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRoute {
    /// Name (logs).
    #[serde(default)]
    pub name: Option<String>,
    /// Matches (OR); none = every request.
    #[serde(default, rename = "match", deserialize_with = "null_default")]
    pub matches: Vec<HttpMatchRequest>,
    /// Weighted destinations.
    #[serde(default, deserialize_with = "null_default")]
    pub route: Vec<RouteDestination>,
    /// Redirect instead of routing.
    #[serde(default)]
    pub redirect: Option<HttpRedirect>,
    /// Rewrite before routing.
    #[serde(default)]
    pub rewrite: Option<HttpRewrite>,
    /// Whole-request timeout.
    #[serde(default)]
    pub timeout: Option<String>,
    /// Retries.
    #[serde(default)]
    pub retries: Option<HttpRetry>,
    /// Fault injection.
    #[serde(default)]
    pub fault: Option<HttpFault>,
    /// Mirror target (legacy single form).
    #[serde(default)]
    pub mirror: Option<Destination>,
    /// Share mirrored for `mirror` (default 100).
    #[serde(default)]
    pub mirror_percentage: Option<Percent>,
    /// Mirror targets.
    #[serde(default, deserialize_with = "null_default")]
    pub mirrors: Vec<HttpMirror>,
    /// Header edits.
    #[serde(default)]
    pub headers: Option<Headers>,
    /// Refused.
    #[serde(default, skip_serializing)]
    pub delegate: Unsupported,
    /// Refused.
    #[serde(default, skip_serializing)]
    pub direct_response: Unsupported,
    /// Refused.
    #[serde(default, skip_serializing)]
    pub cors_policy: Unsupported,
}

/// VirtualService spec.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
pub struct VirtualServiceSpec {
    /// Service hosts (short names resolve in the VirtualService's namespace).
    #[serde(default, deserialize_with = "null_default")]
    pub hosts: Vec<String>,
    /// Empty or containing `mesh`: applies to mesh traffic (the waypoint).
    #[serde(default, deserialize_with = "null_default")]
    pub gateways: Vec<String>,
    /// HTTP rules, first match wins.
    #[serde(default, deserialize_with = "null_default")]
    pub http: Vec<HttpRoute>,
    /// Refused.
    #[serde(default, skip_serializing)]
    pub tcp: Unsupported,
    /// Refused.
    #[serde(default, skip_serializing)]
    pub tls: Unsupported,
}

/// networking.istio.io VirtualService.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct VirtualService {
    /// Metadata.
    pub metadata: ObjectMeta,
    /// Spec.
    #[serde(default)]
    pub spec: VirtualServiceSpec,
}

impl VirtualService {
    /// True when it applies to mesh traffic (gateways empty or naming `mesh`).
    pub fn for_mesh(&self) -> bool {
        self.spec.gateways.is_empty() || self.spec.gateways.iter().any(|g| g == "mesh")
    }
}

/// `consistentHash.httpCookie`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
pub struct HttpCookie {
    /// Cookie name.
    #[serde(default)]
    pub name: String,
    /// Ignored (no cookie is generated).
    #[serde(default)]
    pub path: Option<String>,
    /// Ignored (no cookie is generated).
    #[serde(default)]
    pub ttl: Option<String>,
}

/// `ringHash` / `maglev` table settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RingSettings {
    /// Ring size.
    #[serde(default)]
    pub minimum_ring_size: Option<u64>,
    /// Maglev table size (used as the ring size).
    #[serde(default)]
    pub table_size: Option<u64>,
}

/// `loadBalancer.consistentHash`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConsistentHash {
    /// Header.
    #[serde(default)]
    pub http_header_name: Option<String>,
    /// Cookie.
    #[serde(default)]
    pub http_cookie: Option<HttpCookie>,
    /// Source IP.
    #[serde(default)]
    pub use_source_ip: Option<bool>,
    /// Query parameter.
    #[serde(default)]
    pub http_query_parameter_name: Option<String>,
    /// Ring hash settings.
    #[serde(default)]
    pub ring_hash: Option<RingSettings>,
    /// Maglev: served by the ring hash (same stickiness guarantees).
    #[serde(default)]
    pub maglev: Option<RingSettings>,
    /// Deprecated top-level ring size.
    #[serde(default)]
    pub minimum_ring_size: Option<u64>,
}

/// `localityLbSetting.failover[]`: region `from` fails over to region `to` first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
pub struct LocalityFailover {
    /// The waypoint's region.
    #[serde(default)]
    pub from: String,
    /// The region preferred when `from` has no healthy endpoints.
    #[serde(default)]
    pub to: String,
}

/// `localityLbSetting.distribute[]`: traffic from `from` split over the `to` localities.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
pub struct LocalityDistribute {
    /// Originating locality (`region/zone/subzone`, terminal `*` wildcards).
    #[serde(default)]
    pub from: String,
    /// Destination localities and their weights (summing to 100).
    #[serde(default, deserialize_with = "null_default")]
    pub to: BTreeMap<String, u32>,
}

/// `loadBalancer.localityLbSetting`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LocalityLbSetting {
    /// `false` turns locality load balancing off for this host.
    #[serde(default)]
    pub enabled: Option<bool>,
    /// Weighted distribution between localities.
    #[serde(default, deserialize_with = "null_default")]
    pub distribute: Vec<LocalityDistribute>,
    /// Region failover overrides.
    #[serde(default, deserialize_with = "null_default")]
    pub failover: Vec<LocalityFailover>,
    /// Refused by validation (label-based priorities are not implemented).
    #[serde(default, deserialize_with = "null_default")]
    pub failover_priority: Vec<String>,
}

/// `loadBalancer`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LoadBalancer {
    /// ROUND_ROBIN, LEAST_REQUEST (LEAST_CONN), RANDOM.
    #[serde(default)]
    pub simple: Option<String>,
    /// Consistent hash.
    #[serde(default)]
    pub consistent_hash: Option<ConsistentHash>,
    /// Locality-aware load balancing.
    #[serde(default)]
    pub locality_lb_setting: Option<LocalityLbSetting>,
}

/// `connectionPool.tcp`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TcpPool {
    /// Upstream connections (= requests being sent: one stream per request).
    #[serde(default)]
    pub max_connections: Option<u32>,
}

/// `connectionPool.http`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpPool {
    /// Queue for a connection.
    #[serde(default)]
    pub http1_max_pending_requests: Option<u32>,
    /// Requests in flight.
    #[serde(default)]
    pub http2_max_requests: Option<u32>,
    /// Requests per upstream connection before the waypoint retires it (0 = no limit).
    #[serde(default)]
    pub max_requests_per_connection: Option<u32>,
}

/// `connectionPool`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
pub struct ConnectionPool {
    /// TCP settings.
    #[serde(default)]
    pub tcp: Option<TcpPool>,
    /// HTTP settings.
    #[serde(default)]
    pub http: Option<HttpPool>,
}

/// `outlierDetection`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OutlierDetection {
    /// Default 5; 0 disables.
    #[serde(default)]
    pub consecutive_5xx_errors: Option<u32>,
    /// Default 0 (off).
    #[serde(default)]
    pub consecutive_gateway_errors: Option<u32>,
    /// Default 10s.
    #[serde(default)]
    pub interval: Option<String>,
    /// Default 30s.
    #[serde(default)]
    pub base_ejection_time: Option<String>,
    /// Default 10.
    #[serde(default)]
    pub max_ejection_percent: Option<u32>,
}

/// Policy for one port.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PortTrafficPolicy {
    /// The port.
    #[serde(default)]
    pub port: Option<PortSelector>,
    /// Load balancer.
    #[serde(default)]
    pub load_balancer: Option<LoadBalancer>,
    /// Pool.
    #[serde(default)]
    pub connection_pool: Option<ConnectionPool>,
    /// Outlier detection.
    #[serde(default)]
    pub outlier_detection: Option<OutlierDetection>,
}

/// `trafficPolicy`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TrafficPolicy {
    /// Load balancer.
    #[serde(default)]
    pub load_balancer: Option<LoadBalancer>,
    /// Pool.
    #[serde(default)]
    pub connection_pool: Option<ConnectionPool>,
    /// Outlier detection.
    #[serde(default)]
    pub outlier_detection: Option<OutlierDetection>,
    /// Per-port overrides.
    #[serde(default, deserialize_with = "null_default")]
    pub port_level_settings: Vec<PortTrafficPolicy>,
}

/// A subset: endpoints with these labels, with its own policy overrides.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Subset {
    /// Name (`destination.subset`).
    pub name: String,
    /// Pod labels.
    #[serde(default, deserialize_with = "null_default")]
    pub labels: BTreeMap<String, String>,
    /// Overrides.
    #[serde(default)]
    pub traffic_policy: Option<TrafficPolicy>,
}

/// DestinationRule spec.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DestinationRuleSpec {
    /// Service host (short names resolve in the rule's namespace).
    #[serde(default)]
    pub host: String,
    /// Policy for every subset and port.
    #[serde(default)]
    pub traffic_policy: Option<TrafficPolicy>,
    /// Subsets.
    #[serde(default, deserialize_with = "null_default")]
    pub subsets: Vec<Subset>,
}

/// networking.istio.io DestinationRule.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct DestinationRule {
    /// Metadata.
    pub metadata: ObjectMeta,
    /// Spec.
    #[serde(default)]
    pub spec: DestinationRuleSpec,
}

fn check_regex(field: &str, re: &str) -> Result<(), FieldError> {
    regex::Regex::new(re)
        .map(|_| ())
        .map_err(|e| FieldError::new(field, format!("invalid regular expression: {e}")))
}

fn check_string_match(field: &str, m: &StringMatch) -> Result<(), FieldError> {
    let set = [&m.exact, &m.prefix, &m.regex]
        .iter()
        .filter(|v| v.is_some())
        .count();
    if set != 1 {
        return Err(FieldError::new(
            field,
            "exactly one of exact, prefix, regex is required",
        ));
    }
    match &m.regex {
        Some(r) => check_regex(&format!("{field}.regex"), r),
        None => Ok(()),
    }
}

fn refuse(field: &str, v: &Unsupported, what: &str) -> Result<(), FieldError> {
    match v {
        Some(_) => Err(FieldError::new(
            field,
            format!("{what} is not supported by the waypoint yet"),
        )),
        None => Ok(()),
    }
}

fn check_percent(field: &str, p: &Option<Percent>) -> Result<(), FieldError> {
    match p {
        Some(p) if !(0.0..=100.0).contains(&p.value) => Err(FieldError::new(
            format!("{field}.value"),
            format!("{} is not 0-100", p.value),
        )),
        _ => Ok(()),
    }
}

fn check_destination(field: &str, d: &Destination) -> Result<(), FieldError> {
    if d.host.is_empty() {
        return Err(FieldError::new(format!("{field}.host"), "required"));
    }
    if d.host.contains('*') {
        return Err(FieldError::new(
            format!("{field}.host"),
            "wildcard hosts are not supported by the waypoint",
        ));
    }
    Ok(())
}

/// The conditions of a `retryOn` list we understand. gRPC conditions (cancelled,
/// deadline-exceeded, internal, resource-exhausted, unavailable) are accepted and have no
/// effect on HTTP/1.1 and HTTP/2 responses; numbers are status codes.
pub const RETRY_ON: [&str; 12] = [
    "5xx",
    "gateway-error",
    "connect-failure",
    "refused-stream",
    "retriable-4xx",
    "reset",
    "retriable-status-codes",
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "unavailable",
];

fn check_retry_on(field: &str, v: &str) -> Result<(), FieldError> {
    for c in v.split(',').map(str::trim).filter(|c| !c.is_empty()) {
        if RETRY_ON.contains(&c) {
            continue;
        }
        match c.parse::<u16>() {
            Ok(n) if (400..=599).contains(&n) => {}
            _ => {
                return Err(FieldError::new(
                    field,
                    format!(
                        "{c:?} is not a retry condition ({}) or a 4xx/5xx status",
                        RETRY_ON.join(", ")
                    ),
                ))
            }
        }
    }
    Ok(())
}

impl Kind for VirtualService {
    const KIND: &'static str = "VirtualService";
    const NAMESPACED: bool = true;
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
    fn validate(&mut self) -> Result<(), FieldError> {
        let s = &self.spec;
        if s.hosts.is_empty() {
            return Err(FieldError::new(
                "spec.hosts",
                "at least one host is required",
            ));
        }
        refuse("spec.tcp", &s.tcp, "TCP routing")?;
        refuse("spec.tls", &s.tls, "TLS routing")?;
        for (ri, r) in s.http.iter().enumerate() {
            let rf = format!("spec.http[{ri}]");
            refuse(&format!("{rf}.delegate"), &r.delegate, "delegate")?;
            refuse(
                &format!("{rf}.directResponse"),
                &r.direct_response,
                "directResponse",
            )?;
            refuse(&format!("{rf}.corsPolicy"), &r.cors_policy, "corsPolicy")?;
            for (mi, m) in r.matches.iter().enumerate() {
                let mf = format!("{rf}.match[{mi}]");
                if let Some(u) = &m.uri {
                    check_string_match(&format!("{mf}.uri"), u)?;
                }
                for (k, v) in &m.headers {
                    check_string_match(&format!("{mf}.headers.{k}"), v)?;
                }
                for (k, v) in &m.query_params {
                    check_string_match(&format!("{mf}.queryParams.{k}"), v)?;
                }
                if let Some(me) = &m.method {
                    check_string_match(&format!("{mf}.method"), me)?;
                    if me.exact.is_none() {
                        return Err(FieldError::new(
                            format!("{mf}.method"),
                            "only exact method matches are supported by the waypoint",
                        ));
                    }
                }
                refuse(&format!("{mf}.authority"), &m.authority, "authority match")?;
                refuse(
                    &format!("{mf}.withoutHeaders"),
                    &m.without_headers,
                    "withoutHeaders",
                )?;
                refuse(
                    &format!("{mf}.sourceLabels"),
                    &m.source_labels,
                    "sourceLabels",
                )?;
                refuse(
                    &format!("{mf}.sourceNamespace"),
                    &m.source_namespace,
                    "sourceNamespace",
                )?;
                refuse(
                    &format!("{mf}.ignoreUriCase"),
                    &m.ignore_uri_case,
                    "ignoreUriCase",
                )?;
                refuse(&format!("{mf}.scheme"), &m.scheme, "scheme match")?;
                refuse(&format!("{mf}.gateways"), &m.gateways, "per-match gateways")?;
            }
            match (r.route.is_empty(), &r.redirect) {
                (true, None) => {
                    return Err(FieldError::new(
                        format!("{rf}.route"),
                        "one of route or redirect is required",
                    ))
                }
                (false, Some(_)) => {
                    return Err(FieldError::new(
                        format!("{rf}.redirect"),
                        "route and redirect are mutually exclusive",
                    ))
                }
                _ => {}
            }
            for (di, d) in r.route.iter().enumerate() {
                let df = format!("{rf}.route[{di}]");
                check_destination(&format!("{df}.destination"), &d.destination)?;
                refuse(
                    &format!("{df}.headers"),
                    &d.headers,
                    "per-destination headers",
                )?;
            }
            if let Some(rd) = &r.redirect {
                if let Some(c) = rd
                    .redirect_code
                    .filter(|c| ![301, 302, 303, 307, 308].contains(c))
                {
                    return Err(FieldError::new(
                        format!("{rf}.redirect.redirectCode"),
                        format!("{c} is not 301, 302, 303, 307 or 308"),
                    ));
                }
                if let Some(u) = rd.uri.as_deref().filter(|u| !u.starts_with('/')) {
                    return Err(FieldError::new(
                        format!("{rf}.redirect.uri"),
                        format!("{u:?} must start with /"),
                    ));
                }
            }
            if let Some(rw) = &r.rewrite {
                refuse(
                    &format!("{rf}.rewrite.uriRegexRewrite"),
                    &rw.uri_regex_rewrite,
                    "uriRegexRewrite",
                )?;
            }
            if let Some(t) = &r.timeout {
                parse_duration(&format!("{rf}.timeout"), t)?;
            }
            if let Some(rt) = &r.retries {
                if let Some(t) = &rt.per_try_timeout {
                    parse_duration(&format!("{rf}.retries.perTryTimeout"), t)?;
                }
                if let Some(on) = &rt.retry_on {
                    check_retry_on(&format!("{rf}.retries.retryOn"), on)?;
                }
            }
            if let Some(f) = &r.fault {
                if let Some(d) = &f.delay {
                    match &d.fixed_delay {
                        Some(v) => {
                            parse_duration(&format!("{rf}.fault.delay.fixedDelay"), v)?;
                        }
                        None => {
                            return Err(FieldError::new(
                                format!("{rf}.fault.delay.fixedDelay"),
                                "required (exponentialDelay is not supported)",
                            ))
                        }
                    }
                    check_percent(&format!("{rf}.fault.delay.percentage"), &d.percentage)?;
                }
                if let Some(a) = &f.abort {
                    refuse(
                        &format!("{rf}.fault.abort.grpcStatus"),
                        &a.grpc_status,
                        "grpcStatus abort",
                    )?;
                    match a.http_status {
                        Some(c) if (200..=599).contains(&c) => {}
                        Some(c) => {
                            return Err(FieldError::new(
                                format!("{rf}.fault.abort.httpStatus"),
                                format!("{c} is not 200-599"),
                            ))
                        }
                        None => {
                            return Err(FieldError::new(
                                format!("{rf}.fault.abort.httpStatus"),
                                "required",
                            ))
                        }
                    }
                    check_percent(&format!("{rf}.fault.abort.percentage"), &a.percentage)?;
                }
            }
            if let Some(m) = &r.mirror {
                check_destination(&format!("{rf}.mirror"), m)?;
            }
            check_percent(&format!("{rf}.mirrorPercentage"), &r.mirror_percentage)?;
            for (i, m) in r.mirrors.iter().enumerate() {
                check_destination(&format!("{rf}.mirrors[{i}].destination"), &m.destination)?;
                check_percent(&format!("{rf}.mirrors[{i}].percentage"), &m.percentage)?;
            }
            if let Some(h) = &r.headers {
                for (which, ops) in [("request", &h.request), ("response", &h.response)] {
                    let Some(ops) = ops else { continue };
                    for name in ops
                        .set
                        .keys()
                        .chain(ops.add.keys())
                        .chain(ops.remove.iter())
                    {
                        if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                            return Err(FieldError::new(
                                format!("{rf}.headers.{which}"),
                                format!("{name:?} is not a valid header name"),
                            ));
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

fn check_policy(field: &str, p: &TrafficPolicy) -> Result<(), FieldError> {
    check_parts(
        field,
        p.load_balancer.as_ref(),
        p.outlier_detection.as_ref(),
    )?;
    for (i, pl) in p.port_level_settings.iter().enumerate() {
        let f = format!("{field}.portLevelSettings[{i}]");
        if pl.port.is_none() {
            return Err(FieldError::new(format!("{f}.port"), "required"));
        }
        check_parts(&f, pl.load_balancer.as_ref(), pl.outlier_detection.as_ref())?;
    }
    Ok(())
}

fn check_parts(
    field: &str,
    lb: Option<&LoadBalancer>,
    od: Option<&OutlierDetection>,
) -> Result<(), FieldError> {
    if let Some(lb) = lb {
        let f = format!("{field}.loadBalancer");
        if lb.simple.is_some() && lb.consistent_hash.is_some() {
            return Err(FieldError::new(
                f,
                "simple and consistentHash are mutually exclusive",
            ));
        }
        if let Some(s) = &lb.simple {
            if !matches!(
                s.as_str(),
                "UNSPECIFIED" | "ROUND_ROBIN" | "LEAST_REQUEST" | "LEAST_CONN" | "RANDOM"
            ) {
                return Err(FieldError::new(
                    format!("{f}.simple"),
                    format!("{s:?} is not ROUND_ROBIN, LEAST_REQUEST or RANDOM (PASSTHROUGH is not supported by the waypoint)"),
                ));
            }
        }
        if let Some(h) = &lb.consistent_hash {
            let keys = [
                h.http_header_name.is_some(),
                h.http_cookie.is_some(),
                h.use_source_ip == Some(true),
                h.http_query_parameter_name.is_some(),
            ]
            .iter()
            .filter(|k| **k)
            .count();
            if keys != 1 {
                return Err(FieldError::new(
                    format!("{f}.consistentHash"),
                    "exactly one of httpHeaderName, httpCookie, useSourceIp, httpQueryParameterName is required",
                ));
            }
            if h.http_cookie.as_ref().is_some_and(|c| c.name.is_empty()) {
                return Err(FieldError::new(
                    format!("{f}.consistentHash.httpCookie.name"),
                    "required",
                ));
            }
            if let Some(n) = &h.http_header_name {
                if http::HeaderName::from_bytes(n.as_bytes()).is_err() {
                    return Err(FieldError::new(
                        format!("{f}.consistentHash.httpHeaderName"),
                        format!("{n:?} is not a valid header name"),
                    ));
                }
            }
        }
    }
    if let Some(l) = lb.and_then(|lb| lb.locality_lb_setting.as_ref()) {
        let f = format!("{field}.loadBalancer.localityLbSetting");
        check_locality_lb(&f, l)?;
        if !l.distribute.is_empty() && lb.is_some_and(|lb| lb.consistent_hash.is_some()) {
            return Err(FieldError::new(
                format!("{f}.distribute"),
                "locality weights cannot be combined with consistentHash (a hash picks the endpoint, not a weight)",
            ));
        }
    }
    if let Some(o) = od {
        let f = format!("{field}.outlierDetection");
        if let Some(v) = &o.interval {
            parse_duration(&format!("{f}.interval"), v)?;
        }
        if let Some(v) = &o.base_ejection_time {
            parse_duration(&format!("{f}.baseEjectionTime"), v)?;
        }
        if let Some(p) = o.max_ejection_percent.filter(|p| *p > 100) {
            return Err(FieldError::new(
                format!("{f}.maxEjectionPercent"),
                format!("{p} is not 0-100"),
            ));
        }
    }
    Ok(())
}

/// A locality pattern: `region[/zone[/subzone]]`, at most three non-empty segments, `*` only
/// as the whole last segment (`*` alone matches everything).
fn check_locality_pattern(field: &str, v: &str) -> Result<(), FieldError> {
    let parts: Vec<&str> = v.split('/').collect();
    let bad = |why: &str| Err(FieldError::new(field, format!("{v:?}: {why}")));
    if v.is_empty() {
        return bad("must not be empty");
    }
    if parts.len() > 3 {
        return bad("a locality is region/zone/subzone (at most three segments)");
    }
    for (i, p) in parts.iter().enumerate() {
        if p.is_empty() {
            return bad("empty segment");
        }
        if p.contains('*') && (*p != "*" || i + 1 != parts.len()) {
            return bad("`*` is only allowed as the whole last segment");
        }
    }
    Ok(())
}

fn check_locality_lb(f: &str, l: &LocalityLbSetting) -> Result<(), FieldError> {
    if !l.failover_priority.is_empty() {
        return Err(FieldError::new(
            format!("{f}.failoverPriority"),
            "not supported by the waypoint (use failover between regions, or distribute)",
        ));
    }
    if !l.distribute.is_empty() && !l.failover.is_empty() {
        return Err(FieldError::new(
            f,
            "only one of distribute and failover may be set",
        ));
    }
    let mut froms = std::collections::BTreeSet::new();
    for (i, d) in l.failover.iter().enumerate() {
        let ff = format!("{f}.failover[{i}]");
        for (name, v) in [("from", &d.from), ("to", &d.to)] {
            if v.is_empty() {
                return Err(FieldError::new(format!("{ff}.{name}"), "required"));
            }
            if v.contains('/') || v.contains('*') {
                return Err(FieldError::new(
                    format!("{ff}.{name}"),
                    format!("{v:?}: failover is between regions (no zone, no wildcard)"),
                ));
            }
        }
        if d.from == d.to {
            return Err(FieldError::new(
                format!("{ff}.to"),
                format!("{:?} fails over to itself", d.to),
            ));
        }
        if !froms.insert(d.from.as_str()) {
            return Err(FieldError::new(
                format!("{ff}.from"),
                format!("region {:?} is listed twice", d.from),
            ));
        }
    }
    let mut froms = std::collections::BTreeSet::new();
    for (i, d) in l.distribute.iter().enumerate() {
        let df = format!("{f}.distribute[{i}]");
        check_locality_pattern(&format!("{df}.from"), &d.from)?;
        if !froms.insert(d.from.as_str()) {
            return Err(FieldError::new(
                format!("{df}.from"),
                format!("{:?} is listed twice", d.from),
            ));
        }
        if d.to.is_empty() {
            return Err(FieldError::new(format!("{df}.to"), "required"));
        }
        for k in d.to.keys() {
            check_locality_pattern(&format!("{df}.to"), k)?;
        }
        let total: u64 = d.to.values().map(|w| u64::from(*w)).sum();
        if total != 100 {
            return Err(FieldError::new(
                format!("{df}.to"),
                format!("weights add up to {total}, not 100"),
            ));
        }
    }
    Ok(())
}

impl Kind for DestinationRule {
    const KIND: &'static str = "DestinationRule";
    const NAMESPACED: bool = true;
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
    fn validate(&mut self) -> Result<(), FieldError> {
        let s = &self.spec;
        if s.host.is_empty() {
            return Err(FieldError::new("spec.host", "required"));
        }
        if let Some(p) = &s.traffic_policy {
            check_policy("spec.trafficPolicy", p)?;
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, sub) in s.subsets.iter().enumerate() {
            let f = format!("spec.subsets[{i}]");
            if sub.name.is_empty() {
                return Err(FieldError::new(format!("{f}.name"), "required"));
            }
            if !names.insert(sub.name.as_str()) {
                return Err(FieldError::new(
                    format!("{f}.name"),
                    format!("subset {:?} is defined twice", sub.name),
                ));
            }
            if let Some(p) = &sub.traffic_policy {
                check_policy(&format!("{f}.trafficPolicy"), p)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::source::parse_file;
    use std::path::Path;

    fn errors(yaml: &str) -> Vec<(String, String)> {
        parse_file(Path::new("n.yaml"), yaml)
            .errors
            .into_iter()
            .map(|e| (e.field, e.message))
            .collect()
    }

    #[test]
    fn istio_examples_parse() {
        let p = parse_file(
            Path::new("n.yaml"),
            r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: app}
spec:
  hosts: [reviews]
  http:
  - match: [{headers: {end-user: {exact: jason}}, uri: {prefix: /api}, method: {exact: GET}, port: 80}]
    route: [{destination: {host: reviews, subset: v2}}]
    fault: {delay: {fixedDelay: 7s, percentage: {value: 100}}, abort: {httpStatus: 500, percentage: {value: 10.5}}}
  - route:
    - {destination: {host: reviews, subset: v1}, weight: 90}
    - {destination: {host: reviews.app.svc.cluster.local, subset: v3, port: {number: 80}}, weight: 10}
    retries: {attempts: 3, perTryTimeout: 2s, retryOn: "5xx,connect-failure,409"}
    timeout: 10s
    mirror: {host: reviews, subset: v3}
    mirrorPercentage: {value: 50}
    headers: {request: {set: {x-a: b}, remove: [x-c]}, response: {add: {x-d: e}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: app}
spec:
  host: reviews
  trafficPolicy:
    loadBalancer: {simple: LEAST_REQUEST}
    connectionPool: {tcp: {maxConnections: 100, connectTimeout: 30ms}, http: {http1MaxPendingRequests: 10, http2MaxRequests: 100, maxRequestsPerConnection: 10}}
    outlierDetection: {consecutive5xxErrors: 7, interval: 5m, baseEjectionTime: 15m, maxEjectionPercent: 50}
    portLevelSettings: [{port: {number: 80}, loadBalancer: {consistentHash: {httpCookie: {name: user, ttl: 0s}}}}]
  subsets:
  - {name: v1, labels: {version: v1}}
  - name: v2
    labels: {version: v2}
    trafficPolicy: {loadBalancer: {consistentHash: {httpHeaderName: x-user, ringHash: {minimumRingSize: 2048}}}}
  - name: v3
    labels: {version: v3}
    trafficPolicy:
      loadBalancer:
        simple: ROUND_ROBIN
        localityLbSetting:
          enabled: true
          distribute:
          - from: us-west/zone1/*
            to: {"us-west/zone1/*": 80, "us-west/zone2/*": 20}
          - from: "us-west/*"
            to: {"*": 100}
  - name: v4
    labels: {version: v4}
    trafficPolicy: {loadBalancer: {localityLbSetting: {failover: [{from: us-east, to: eu-west}, {from: us-west, to: us-east}]}}}
"#,
        );
        assert!(p.errors.is_empty(), "{:?}", p.errors);
        assert_eq!(p.objects.len(), 2);
    }

    #[test]
    fn bad_objects_name_the_field() {
        let vs = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: v}\nspec:\n  hosts: [r]\n";
        let cases = [
            ("  http: [{route: [{destination: {host: r}}], match: [{uri: {regex: \"(\"}}]}]\n", "spec.http[0].match[0].uri.regex"),
            ("  http: [{route: [{destination: {host: r}}], match: [{uri: {exact: /a, prefix: /b}}]}]\n", "spec.http[0].match[0].uri"),
            ("  http: [{match: [{uri: {exact: /a}}]}]\n", "spec.http[0].route"),
            ("  http: [{route: [{destination: {host: r}}], timeout: soon}]\n", "spec.http[0].timeout"),
            ("  http: [{route: [{destination: {host: r}}], retries: {attempts: 2, retryOn: \"5xx,sometimes\"}}]\n", "spec.http[0].retries.retryOn"),
            ("  http: [{route: [{destination: {host: r}}], fault: {abort: {percentage: {value: 5}}}}]\n", "spec.http[0].fault.abort.httpStatus"),
            ("  http: [{route: [{destination: {host: r}}], fault: {delay: {fixedDelay: 1s, percentage: {value: 150}}}}]\n", "spec.http[0].fault.delay.percentage.value"),
            ("  http: [{route: [{destination: {host: r}}], match: [{authority: {exact: a}}]}]\n", "spec.http[0].match[0].authority"),
            ("  http: [{route: [{destination: {host: r}, headers: {request: {set: {a: b}}}}]}]\n", "spec.http[0].route[0].headers"),
            ("  tcp: [{route: [{destination: {host: r}}]}]\n", "spec.tcp"),
            ("  http: [{route: [{destination: {host: \"\"}}]}]\n", "spec.http[0].route[0].destination.host"),
        ];
        for (body, field) in cases {
            let e = errors(&format!("{vs}{body}"));
            assert_eq!(e.len(), 1, "{body}: {e:?}");
            assert_eq!(e[0].0, field, "{body}: {e:?}");
        }
        let dr = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: d}\nspec:\n  host: r\n";
        let cases = [
            ("  trafficPolicy: {loadBalancer: {simple: PASSTHROUGH}}\n", "spec.trafficPolicy.loadBalancer.simple"),
            ("  trafficPolicy: {loadBalancer: {consistentHash: {httpHeaderName: a, useSourceIp: true}}}\n", "spec.trafficPolicy.loadBalancer.consistentHash"),
            ("  trafficPolicy: {outlierDetection: {interval: often}}\n", "spec.trafficPolicy.outlierDetection.interval"),
            ("  trafficPolicy: {portLevelSettings: [{loadBalancer: {simple: RANDOM}}]}\n", "spec.trafficPolicy.portLevelSettings[0].port"),
            ("  subsets: [{name: a, labels: {v: '1'}}, {name: a}]\n", "spec.subsets[1].name"),
            ("  subsets: [{name: a, trafficPolicy: {outlierDetection: {maxEjectionPercent: 200}}}]\n", "spec.subsets[0].trafficPolicy.outlierDetection.maxEjectionPercent"),
            ("  trafficPolicy: {connectionPool: {tcp: {maxConnections: lots}}}\n", "spec.trafficPolicy.connectionPool.tcp.maxConnections"),
            ("  trafficPolicy: {loadBalancer: {localityLbSetting: {failoverPriority: [topology.kubernetes.io/zone]}}}\n", "spec.trafficPolicy.loadBalancer.localityLbSetting.failoverPriority"),
            ("  trafficPolicy: {loadBalancer: {localityLbSetting: {failover: [{from: a, to: b}], distribute: [{from: a, to: {a: 100}}]}}}\n", "spec.trafficPolicy.loadBalancer.localityLbSetting"),
            ("  trafficPolicy: {loadBalancer: {localityLbSetting: {failover: [{from: us-east, to: us-east}]}}}\n", "spec.trafficPolicy.loadBalancer.localityLbSetting.failover[0].to"),
            ("  trafficPolicy: {loadBalancer: {localityLbSetting: {failover: [{from: us-east/zone-a, to: eu}]}}}\n", "spec.trafficPolicy.loadBalancer.localityLbSetting.failover[0].from"),
            ("  trafficPolicy: {loadBalancer: {localityLbSetting: {failover: [{from: a, to: b}, {from: a, to: c}]}}}\n", "spec.trafficPolicy.loadBalancer.localityLbSetting.failover[1].from"),
            ("  trafficPolicy: {loadBalancer: {localityLbSetting: {distribute: [{from: \"us/*\", to: {\"us/a/*\": 60, \"us/b/*\": 30}}]}}}\n", "spec.trafficPolicy.loadBalancer.localityLbSetting.distribute[0].to"),
            ("  trafficPolicy: {loadBalancer: {localityLbSetting: {distribute: [{from: \"us/*/r1\", to: {\"us/*\": 100}}]}}}\n", "spec.trafficPolicy.loadBalancer.localityLbSetting.distribute[0].from"),
            ("  trafficPolicy: {loadBalancer: {consistentHash: {useSourceIp: true}, localityLbSetting: {distribute: [{from: \"*\", to: {\"*\": 100}}]}}}\n", "spec.trafficPolicy.loadBalancer.localityLbSetting.distribute"),
            ("  subsets: [{name: a, trafficPolicy: {portLevelSettings: [{port: {number: 80}, loadBalancer: {localityLbSetting: {failover: [{from: x}]}}}]}}]\n", "spec.subsets[0].trafficPolicy.portLevelSettings[0].loadBalancer.localityLbSetting.failover[0].to"),
        ];
        for (body, field) in cases {
            let e = errors(&format!("{dr}{body}"));
            assert_eq!(e.len(), 1, "{body}: {e:?}");
            assert_eq!(e[0].0, field, "{body}: {e:?}");
        }
        // Another group's VirtualService is not ours.
        assert!(errors(
            "apiVersion: example.com/v1\nkind: VirtualService\nmetadata: {name: x}\nspec: {}\n"
        )
        .is_empty());
    }
}

//! `gateway.networking.k8s.io` kinds: Gateway (only class `istio-waypoint` means anything
//! here), HTTPRoute and GRPCRoute (v1; parentRefs to a Service — the GAMMA mesh pattern — or to
//! a waypoint Gateway).
//!
//! Validation refuses, per object and with the field's path, what a waypoint could not honour:
//! a bad regex, a duration that does not parse, a filter type we do not implement (Gateway API
//! says an unsupported filter must not be silently skipped), a backendRef that is not a Service.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::kinds::{null_default, FieldError, Kind, ObjectMeta};

/// API group of the kinds in this module.
pub const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";
/// Versions accepted (`apiVersion` may also be left out in local config).
pub const GATEWAY_VERSIONS: [&str; 2] = ["v1", "v1beta1"];
/// `gatewayClassName` of a waypoint.
pub const WAYPOINT_CLASS: &str = "istio-waypoint";
/// Port and protocol of the waypoint's mandatory listener.
pub const WAYPOINT_PORT: u16 = 15008;
/// Label on the Gateway: which traffic the waypoint handles.
pub const WAYPOINT_FOR_LABEL: &str = "istio.io/waypoint-for";
/// Label on a waypoint's Pod naming its Gateway (Istio's convention).
pub const GATEWAY_NAME_LABEL: &str = "gateway.networking.k8s.io/gateway-name";

/// gateway.networking.k8s.io Gateway.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct Gateway {
    /// Metadata (labels carry `istio.io/waypoint-for`).
    pub metadata: ObjectMeta,
    /// Spec.
    pub spec: GatewaySpec,
}

/// The parts of a Gateway spec we use.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewaySpec {
    /// `istio-waypoint` for a waypoint; other classes are kept but ignored.
    pub gateway_class_name: String,
    /// Listeners.
    #[serde(default, deserialize_with = "null_default")]
    pub listeners: Vec<Listener>,
}

/// One Gateway listener.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Listener {
    /// Listener name (`mesh` by convention).
    #[serde(default)]
    pub name: String,
    /// Port.
    pub port: u16,
    /// Protocol (`HBONE` for a waypoint).
    pub protocol: String,
}

/// Which traffic a waypoint handles (`istio.io/waypoint-for`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WaypointFor {
    /// Traffic to Services (Istio's default).
    Service,
    /// Traffic addressed to pods directly.
    Workload,
    /// Both.
    All,
    /// Neither.
    None,
}

impl WaypointFor {
    /// True when service-addressed traffic goes through the waypoint.
    pub fn services(self) -> bool {
        matches!(self, WaypointFor::Service | WaypointFor::All)
    }
    /// True when workload-addressed traffic goes through the waypoint.
    pub fn workloads(self) -> bool {
        matches!(self, WaypointFor::Workload | WaypointFor::All)
    }
}

impl Gateway {
    /// True for `gatewayClassName: istio-waypoint`.
    pub fn is_waypoint(&self) -> bool {
        self.spec.gateway_class_name == WAYPOINT_CLASS
    }

    /// `istio.io/waypoint-for`, default `service` (validated to be one of the four values).
    pub fn waypoint_for(&self) -> WaypointFor {
        match self
            .metadata
            .labels
            .get(WAYPOINT_FOR_LABEL)
            .map(String::as_str)
        {
            Some("workload") => WaypointFor::Workload,
            Some("all") => WaypointFor::All,
            Some("none") => WaypointFor::None,
            _ => WaypointFor::Service,
        }
    }
}

impl Kind for Gateway {
    const KIND: &'static str = "Gateway";
    const NAMESPACED: bool = true;
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
    fn validate(&mut self) -> Result<(), FieldError> {
        if !self.is_waypoint() {
            return Ok(());
        }
        if let Some(v) = self.metadata.labels.get(WAYPOINT_FOR_LABEL) {
            if !matches!(v.as_str(), "service" | "workload" | "all" | "none") {
                return Err(FieldError::new(
                    format!("metadata.labels.{WAYPOINT_FOR_LABEL}"),
                    format!("{v:?} is not one of service, workload, all, none"),
                ));
            }
        }
        let hbone = self
            .spec
            .listeners
            .iter()
            .any(|l| l.port == WAYPOINT_PORT && l.protocol == "HBONE");
        if !hbone {
            return Err(FieldError::new(
                "spec.listeners",
                format!("a waypoint needs a listener {{name: mesh, port: {WAYPOINT_PORT}, protocol: HBONE}}"),
            ));
        }
        Ok(())
    }
}

/// A parentRef or backendRef target.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectRef {
    /// API group: "" (core, a Service) or `gateway.networking.k8s.io` (a Gateway).
    #[serde(default)]
    pub group: Option<String>,
    /// Kind; parentRefs default to Gateway, backendRefs to Service.
    #[serde(default)]
    pub kind: Option<String>,
    /// Name.
    pub name: String,
    /// Namespace; defaults to the route's.
    #[serde(default)]
    pub namespace: Option<String>,
    /// Port (a Service port).
    #[serde(default)]
    pub port: Option<u16>,
    /// Listener name of a Gateway parent.
    #[serde(default)]
    pub section_name: Option<String>,
    /// backendRefs only: relative weight (default 1).
    #[serde(default)]
    pub weight: Option<u32>,
}

impl ObjectRef {
    /// True when the ref is a core Service (explicitly, or by `default_kind`).
    pub fn is_service(&self, default_kind: &str) -> bool {
        let group = self
            .group
            .as_deref()
            .unwrap_or(if default_kind == "Service" {
                ""
            } else {
                GATEWAY_GROUP
            });
        group.is_empty() && self.kind.as_deref().unwrap_or(default_kind) == "Service"
    }

    /// True when the ref is a Gateway.
    pub fn is_gateway(&self) -> bool {
        self.group.as_deref().unwrap_or(GATEWAY_GROUP) == GATEWAY_GROUP
            && self.kind.as_deref().unwrap_or("Gateway") == "Gateway"
    }
}

/// Path match of an HTTPRoute.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpPathMatch {
    /// `Exact`, `PathPrefix` (default) or `RegularExpression`.
    #[serde(default = "path_prefix", rename = "type")]
    pub type_: String,
    /// Value (default "/").
    #[serde(default = "slash")]
    pub value: String,
}

fn path_prefix() -> String {
    "PathPrefix".into()
}
fn slash() -> String {
    "/".into()
}
fn exact() -> String {
    "Exact".into()
}

/// Header or query parameter match.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ValueMatch {
    /// `Exact` (default) or `RegularExpression`.
    #[serde(default = "exact", rename = "type")]
    pub type_: String,
    /// Header or parameter name.
    pub name: String,
    /// Value.
    pub value: String,
}

/// One HTTPRoute match: all its conditions must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRouteMatch {
    /// Path (default PathPrefix /).
    #[serde(default)]
    pub path: Option<HttpPathMatch>,
    /// Headers.
    #[serde(default, deserialize_with = "null_default")]
    pub headers: Vec<ValueMatch>,
    /// Query parameters.
    #[serde(default, deserialize_with = "null_default")]
    pub query_params: Vec<ValueMatch>,
    /// Method.
    #[serde(default)]
    pub method: Option<String>,
}

/// A header name and value.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct HttpHeader {
    /// Name.
    pub name: String,
    /// Value.
    pub value: String,
}

/// RequestHeaderModifier / ResponseHeaderModifier.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
pub struct HeaderModifier {
    /// Replace (or add) these.
    #[serde(default, deserialize_with = "null_default")]
    pub set: Vec<HttpHeader>,
    /// Append these.
    #[serde(default, deserialize_with = "null_default")]
    pub add: Vec<HttpHeader>,
    /// Remove these names.
    #[serde(default, deserialize_with = "null_default")]
    pub remove: Vec<String>,
}

/// Path change of a redirect or rewrite.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PathModifier {
    /// `ReplaceFullPath` or `ReplacePrefixMatch`.
    #[serde(rename = "type")]
    pub type_: String,
    /// For ReplaceFullPath.
    #[serde(default)]
    pub replace_full_path: Option<String>,
    /// For ReplacePrefixMatch.
    #[serde(default)]
    pub replace_prefix_match: Option<String>,
}

/// RequestRedirect.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestRedirect {
    /// `http` or `https`.
    #[serde(default)]
    pub scheme: Option<String>,
    /// Host of the Location.
    #[serde(default)]
    pub hostname: Option<String>,
    /// Path change.
    #[serde(default)]
    pub path: Option<PathModifier>,
    /// Port of the Location.
    #[serde(default)]
    pub port: Option<u16>,
    /// 301 or 302 (default).
    #[serde(default)]
    pub status_code: Option<u16>,
}

/// URLRewrite.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UrlRewrite {
    /// New Host.
    #[serde(default)]
    pub hostname: Option<String>,
    /// Path change.
    #[serde(default)]
    pub path: Option<PathModifier>,
}

/// One route filter.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteFilter {
    /// Filter type.
    #[serde(rename = "type")]
    pub type_: String,
    /// Body of RequestHeaderModifier.
    #[serde(default)]
    pub request_header_modifier: Option<HeaderModifier>,
    /// Body of ResponseHeaderModifier.
    #[serde(default)]
    pub response_header_modifier: Option<HeaderModifier>,
    /// Body of RequestRedirect.
    #[serde(default)]
    pub request_redirect: Option<RequestRedirect>,
    /// Body of URLRewrite.
    #[serde(default)]
    pub url_rewrite: Option<UrlRewrite>,
    /// Body of RequestMirror.
    #[serde(default)]
    pub request_mirror: Option<RequestMirror>,
}

/// RequestMirror: a copy of each request (or of `percent` / `fraction` of them) to a Service.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestMirror {
    /// Where the copies go (a Service with a port).
    pub backend_ref: ObjectRef,
    /// Share of requests, 0-100.
    #[serde(default)]
    pub percent: Option<u32>,
    /// Share of requests as a fraction.
    #[serde(default)]
    pub fraction: Option<Fraction>,
}

/// numerator / denominator (default 100).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct Fraction {
    /// Numerator.
    pub numerator: u32,
    /// Denominator (default 100).
    #[serde(default)]
    pub denominator: Option<u32>,
}

impl RequestMirror {
    /// The share mirrored, 0-100 (everything when neither percent nor fraction is set).
    pub fn percent(&self) -> f64 {
        match (&self.percent, &self.fraction) {
            (Some(p), _) => f64::from(*p),
            (None, Some(f)) => {
                f64::from(f.numerator) * 100.0 / f64::from(f.denominator.unwrap_or(100).max(1))
            }
            (None, None) => 100.0,
        }
    }
}

/// `timeouts` of a rule (Gateway API duration strings: "10s", "500ms", "1m").
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Timeouts {
    /// Whole request, retries included.
    #[serde(default)]
    pub request: Option<String>,
    /// Each attempt.
    #[serde(default)]
    pub backend_request: Option<String>,
}

/// `retry` of a rule (Gateway API experimental channel, as Istio reads it).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Retry {
    /// Retries after the first attempt (Istio's default when `retry` is given: 2).
    #[serde(default)]
    pub attempts: Option<u32>,
    /// Status codes to retry.
    #[serde(default, deserialize_with = "null_default")]
    pub codes: Vec<u16>,
    /// Pause between attempts.
    #[serde(default)]
    pub backoff: Option<String>,
}

/// One HTTPRoute rule.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRouteRule {
    /// Matches (OR); none = everything.
    #[serde(default, deserialize_with = "null_default")]
    pub matches: Vec<HttpRouteMatch>,
    /// Filters.
    #[serde(default, deserialize_with = "null_default")]
    pub filters: Vec<RouteFilter>,
    /// Backends.
    #[serde(default, deserialize_with = "null_default")]
    pub backend_refs: Vec<ObjectRef>,
    /// Timeouts.
    #[serde(default)]
    pub timeouts: Option<Timeouts>,
    /// Retry.
    #[serde(default)]
    pub retry: Option<Retry>,
}

/// HTTPRoute spec.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRouteSpec {
    /// Services or waypoint Gateways the route attaches to.
    #[serde(default, deserialize_with = "null_default")]
    pub parent_refs: Vec<ObjectRef>,
    /// Rules.
    #[serde(default, deserialize_with = "null_default")]
    pub rules: Vec<HttpRouteRule>,
}

/// gateway.networking.k8s.io HTTPRoute.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct HttpRoute {
    /// Metadata.
    pub metadata: ObjectMeta,
    /// Spec.
    #[serde(default)]
    pub spec: HttpRouteSpec,
}

/// GRPCRoute method match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GrpcMethodMatch {
    /// `Exact` (default) or `RegularExpression`.
    #[serde(default = "exact", rename = "type")]
    pub type_: String,
    /// Fully qualified service, e.g. `helloworld.Greeter`.
    #[serde(default)]
    pub service: Option<String>,
    /// Method, e.g. `SayHello`.
    #[serde(default)]
    pub method: Option<String>,
}

/// One GRPCRoute match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GrpcRouteMatch {
    /// Method.
    #[serde(default)]
    pub method: Option<GrpcMethodMatch>,
    /// Headers (metadata).
    #[serde(default, deserialize_with = "null_default")]
    pub headers: Vec<ValueMatch>,
}

/// One GRPCRoute rule.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GrpcRouteRule {
    /// Matches (OR).
    #[serde(default, deserialize_with = "null_default")]
    pub matches: Vec<GrpcRouteMatch>,
    /// Filters (header modifiers only).
    #[serde(default, deserialize_with = "null_default")]
    pub filters: Vec<RouteFilter>,
    /// Backends.
    #[serde(default, deserialize_with = "null_default")]
    pub backend_refs: Vec<ObjectRef>,
}

/// GRPCRoute spec.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GrpcRouteSpec {
    /// Parents.
    #[serde(default, deserialize_with = "null_default")]
    pub parent_refs: Vec<ObjectRef>,
    /// Rules.
    #[serde(default, deserialize_with = "null_default")]
    pub rules: Vec<GrpcRouteRule>,
}

/// gateway.networking.k8s.io GRPCRoute.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct GrpcRoute {
    /// Metadata.
    pub metadata: ObjectMeta,
    /// Spec.
    #[serde(default)]
    pub spec: GrpcRouteSpec,
}

/// Parses a Gateway API duration ("10s", "1m30s", "500ms").
pub fn parse_duration(field: &str, v: &str) -> Result<Duration, FieldError> {
    mesh_config::parse_duration(v).map_err(|e| FieldError::new(field, format!("{v:?}: {e}")))
}

fn check_regex(field: &str, re: &str) -> Result<(), FieldError> {
    regex::Regex::new(re)
        .map(|_| ())
        .map_err(|e| FieldError::new(field, format!("invalid regular expression: {e}")))
}

fn check_value_match(field: &str, m: &ValueMatch) -> Result<(), FieldError> {
    match m.type_.as_str() {
        "Exact" => Ok(()),
        "RegularExpression" => check_regex(&format!("{field}.value"), &m.value),
        other => Err(FieldError::new(
            format!("{field}.type"),
            format!("{other:?} is not Exact or RegularExpression"),
        )),
    }
}

fn check_parents(parents: &[ObjectRef]) -> Result<(), FieldError> {
    if parents.is_empty() {
        return Err(FieldError::new(
            "spec.parentRefs",
            "a mesh route needs a parentRef to a Service or a waypoint Gateway",
        ));
    }
    for (i, p) in parents.iter().enumerate() {
        if !p.is_service("Gateway") && !p.is_gateway() {
            return Err(FieldError::new(
                format!("spec.parentRefs[{i}]"),
                "only a core Service or a Gateway can be a parent",
            ));
        }
    }
    Ok(())
}

fn check_backends(field: &str, refs: &[ObjectRef]) -> Result<(), FieldError> {
    for (i, b) in refs.iter().enumerate() {
        let f = format!("{field}[{i}]");
        if !b.is_service("Service") {
            return Err(FieldError::new(
                f,
                "only Service backends are supported (group \"\", kind Service)",
            ));
        }
        if b.port.is_none() {
            return Err(FieldError::new(
                format!("{f}.port"),
                "required for a Service backend",
            ));
        }
        if b.weight.is_some_and(|w| w > 1_000_000) {
            return Err(FieldError::new(format!("{f}.weight"), "must be 0-1000000"));
        }
    }
    Ok(())
}

fn check_path_modifier(field: &str, p: &PathModifier) -> Result<(), FieldError> {
    let (value, which) = match p.type_.as_str() {
        "ReplaceFullPath" => (&p.replace_full_path, "replaceFullPath"),
        "ReplacePrefixMatch" => (&p.replace_prefix_match, "replacePrefixMatch"),
        other => {
            return Err(FieldError::new(
                format!("{field}.type"),
                format!("{other:?} is not ReplaceFullPath or ReplacePrefixMatch"),
            ))
        }
    };
    match value {
        Some(v) if v.starts_with('/') => Ok(()),
        _ => Err(FieldError::new(
            format!("{field}.{which}"),
            "required, and must start with /",
        )),
    }
}

/// Checks one filter; `grpc` allows only the header modifiers.
fn check_filter(field: &str, f: &RouteFilter, grpc: bool) -> Result<(), FieldError> {
    let missing = |body: &str| {
        FieldError::new(
            format!("{field}.{body}"),
            format!("required for type {}", f.type_),
        )
    };
    match f.type_.as_str() {
        "RequestHeaderModifier" => f
            .request_header_modifier
            .as_ref()
            .map(|_| ())
            .ok_or_else(|| missing("requestHeaderModifier")),
        "ResponseHeaderModifier" => f
            .response_header_modifier
            .as_ref()
            .map(|_| ())
            .ok_or_else(|| missing("responseHeaderModifier")),
        "RequestRedirect" if !grpc => {
            let r = f
                .request_redirect
                .as_ref()
                .ok_or_else(|| missing("requestRedirect"))?;
            if let Some(c) = r.status_code.filter(|c| *c != 301 && *c != 302) {
                return Err(FieldError::new(
                    format!("{field}.requestRedirect.statusCode"),
                    format!("{c} is not 301 or 302"),
                ));
            }
            if let Some(s) = r.scheme.as_deref().filter(|s| *s != "http" && *s != "https") {
                return Err(FieldError::new(
                    format!("{field}.requestRedirect.scheme"),
                    format!("{s:?} is not http or https"),
                ));
            }
            match &r.path {
                Some(p) => check_path_modifier(&format!("{field}.requestRedirect.path"), p),
                None => Ok(()),
            }
        }
        "RequestMirror" => {
            let m = f
                .request_mirror
                .as_ref()
                .ok_or_else(|| missing("requestMirror"))?;
            let mf = format!("{field}.requestMirror");
            if m.percent.is_some() && m.fraction.is_some() {
                return Err(FieldError::new(mf, "percent and fraction are mutually exclusive"));
            }
            if m.percent.is_some_and(|p| p > 100) {
                return Err(FieldError::new(format!("{mf}.percent"), "must be 0-100"));
            }
            if let Some(fr) = &m.fraction {
                if fr.denominator == Some(0) || fr.numerator > fr.denominator.unwrap_or(100) {
                    return Err(FieldError::new(
                        format!("{mf}.fraction"),
                        "numerator must not exceed a non-zero denominator",
                    ));
                }
            }
            check_backends(&format!("{mf}.backendRef"), std::slice::from_ref(&m.backend_ref))
                .map_err(|e| FieldError::new(e.field.replace("backendRef[0]", "backendRef"), e.message))
        }
        "URLRewrite" if !grpc => {
            let r = f
                .url_rewrite
                .as_ref()
                .ok_or_else(|| missing("urlRewrite"))?;
            match &r.path {
                Some(p) => check_path_modifier(&format!("{field}.urlRewrite.path"), p),
                None => Ok(()),
            }
        }
        other => Err(FieldError::new(
            format!("{field}.type"),
            format!("filter {other:?} is not supported by the waypoint yet (supported: RequestHeaderModifier, ResponseHeaderModifier, RequestMirror{})",
                if grpc { "" } else { ", RequestRedirect, URLRewrite" }),
        )),
    }
}

impl Kind for HttpRoute {
    const KIND: &'static str = "HTTPRoute";
    const NAMESPACED: bool = true;
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
    fn validate(&mut self) -> Result<(), FieldError> {
        check_parents(&self.spec.parent_refs)?;
        for (ri, rule) in self.spec.rules.iter().enumerate() {
            let rf = format!("spec.rules[{ri}]");
            for (mi, m) in rule.matches.iter().enumerate() {
                let mf = format!("{rf}.matches[{mi}]");
                if let Some(p) = &m.path {
                    match p.type_.as_str() {
                        "Exact" | "PathPrefix" if !p.value.starts_with('/') => {
                            return Err(FieldError::new(
                                format!("{mf}.path.value"),
                                "must start with /",
                            ))
                        }
                        "Exact" | "PathPrefix" => {}
                        "RegularExpression" => check_regex(&format!("{mf}.path.value"), &p.value)?,
                        other => {
                            return Err(FieldError::new(
                                format!("{mf}.path.type"),
                                format!("{other:?} is not Exact, PathPrefix or RegularExpression"),
                            ))
                        }
                    }
                }
                for (i, h) in m.headers.iter().enumerate() {
                    check_value_match(&format!("{mf}.headers[{i}]"), h)?;
                }
                for (i, q) in m.query_params.iter().enumerate() {
                    check_value_match(&format!("{mf}.queryParams[{i}]"), q)?;
                }
                if let Some(method) = &m.method {
                    if method.is_empty() || !method.chars().all(|c| c.is_ascii_uppercase()) {
                        return Err(FieldError::new(
                            format!("{mf}.method"),
                            format!("{method:?} is not an HTTP method such as GET"),
                        ));
                    }
                }
            }
            for (fi, f) in rule.filters.iter().enumerate() {
                check_filter(&format!("{rf}.filters[{fi}]"), f, false)?;
            }
            check_backends(&format!("{rf}.backendRefs"), &rule.backend_refs)?;
            if let Some(t) = &rule.timeouts {
                if let Some(v) = &t.request {
                    parse_duration(&format!("{rf}.timeouts.request"), v)?;
                }
                if let Some(v) = &t.backend_request {
                    parse_duration(&format!("{rf}.timeouts.backendRequest"), v)?;
                }
            }
            if let Some(r) = &rule.retry {
                if let Some(v) = &r.backoff {
                    parse_duration(&format!("{rf}.retry.backoff"), v)?;
                }
                if let Some(c) = r.codes.iter().find(|c| !(400..=599).contains(*c)) {
                    return Err(FieldError::new(
                        format!("{rf}.retry.codes"),
                        format!("{c} is not a 4xx or 5xx status"),
                    ));
                }
            }
        }
        Ok(())
    }
}

impl Kind for GrpcRoute {
    const KIND: &'static str = "GRPCRoute";
    const NAMESPACED: bool = true;
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
    fn validate(&mut self) -> Result<(), FieldError> {
        check_parents(&self.spec.parent_refs)?;
        for (ri, rule) in self.spec.rules.iter().enumerate() {
            let rf = format!("spec.rules[{ri}]");
            for (mi, m) in rule.matches.iter().enumerate() {
                let mf = format!("{rf}.matches[{mi}]");
                if let Some(method) = &m.method {
                    if method.service.is_none() && method.method.is_none() {
                        return Err(FieldError::new(
                            format!("{mf}.method"),
                            "one of service or method is required",
                        ));
                    }
                    match method.type_.as_str() {
                        "Exact" => {}
                        "RegularExpression" => {
                            for (n, v) in [("service", &method.service), ("method", &method.method)]
                            {
                                if let Some(v) = v {
                                    check_regex(&format!("{mf}.method.{n}"), v)?;
                                }
                            }
                        }
                        other => {
                            return Err(FieldError::new(
                                format!("{mf}.method.type"),
                                format!("{other:?} is not Exact or RegularExpression"),
                            ))
                        }
                    }
                }
                for (i, h) in m.headers.iter().enumerate() {
                    check_value_match(&format!("{mf}.headers[{i}]"), h)?;
                }
            }
            for (fi, f) in rule.filters.iter().enumerate() {
                check_filter(&format!("{rf}.filters[{fi}]"), f, true)?;
            }
            check_backends(&format!("{rf}.backendRefs"), &rule.backend_refs)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::source::parse_file;
    use crate::source::Object;
    use std::path::Path;

    fn errors(yaml: &str) -> Vec<(String, String)> {
        parse_file(Path::new("r.yaml"), yaml)
            .errors
            .into_iter()
            .map(|e| (e.field, e.message))
            .collect()
    }

    #[test]
    fn waypoint_gateway_and_routes_parse() {
        let p = parse_file(
            Path::new("r.yaml"),
            r#"
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: app, labels: {istio.io/waypoint-for: service}}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r, namespace: app}
spec:
  parentRefs: [{group: "", kind: Service, name: echo, port: 80}]
  rules:
  - matches: [{path: {type: RegularExpression, value: "/v[0-9]+/.*"}, method: GET}]
    filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x, value: y}]}}]
    backendRefs: [{name: echo, port: 80, weight: 90}]
    timeouts: {request: 2s}
    retry: {attempts: 3, codes: [503]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: g, namespace: app}
spec:
  parentRefs: [{name: waypoint}]
  rules: [{matches: [{method: {service: helloworld.Greeter}}], backendRefs: [{name: grpc, port: 50051}]}]
"#,
        );
        assert!(p.errors.is_empty(), "{:?}", p.errors);
        assert_eq!(p.objects.len(), 3);
        let Object::Gateway(g) = &p.objects[0] else {
            panic!()
        };
        assert!(g.is_waypoint());
        assert!(g.waypoint_for().services());
    }

    #[test]
    fn bad_routes_name_the_field() {
        let base = "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r}\nspec:\n  parentRefs: [{kind: Service, group: \"\", name: s}]\n  rules:\n";
        let cases = [
            (
                "  - matches: [{path: {type: RegularExpression, value: \"(\"}}]\n",
                "spec.rules[0].matches[0].path.value",
            ),
            (
                "  - matches: [{path: {value: nope}}]\n",
                "spec.rules[0].matches[0].path.value",
            ),
            (
                "  - filters: [{type: CORS}]\n",
                "spec.rules[0].filters[0].type",
            ),
            (
                "  - filters: [{type: RequestMirror}]\n",
                "spec.rules[0].filters[0].requestMirror",
            ),
            (
                "  - filters: [{type: RequestMirror, requestMirror: {backendRef: {name: m}}}]\n",
                "spec.rules[0].filters[0].requestMirror.backendRef.port",
            ),
            (
                "  - backendRefs: [{name: s}]\n",
                "spec.rules[0].backendRefs[0].port",
            ),
            (
                "  - timeouts: {request: soon}\n",
                "spec.rules[0].timeouts.request",
            ),
            (
                "  - matches: [{headers: [{name: a, value: \"[\", type: RegularExpression}]}]\n",
                "spec.rules[0].matches[0].headers[0].value",
            ),
        ];
        for (rule, field) in cases {
            let e = errors(&format!("{base}{rule}"));
            assert_eq!(e.len(), 1, "{rule}: {e:?}");
            assert_eq!(e[0].0, field, "{rule}: {e:?}");
        }
        let e = errors("apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: w}\nspec: {gatewayClassName: istio-waypoint, listeners: [{name: http, port: 80, protocol: HTTP}]}\n");
        assert_eq!(e[0].0, "spec.listeners");
        // Another class is not ours to judge.
        let e = errors("apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: w}\nspec: {gatewayClassName: istio, listeners: [{name: http, port: 80, protocol: HTTP}]}\n");
        assert!(e.is_empty());
    }
}

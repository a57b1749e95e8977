//! `security.istio.io` kinds: AuthorizationPolicy, PeerAuthentication and RequestAuthentication
//! (v1 and v1beta1, which share one schema).
//!
//! Unlike the core kinds, whose structs hold only the fields we use, these hold the whole spec
//! and refuse unknown fields: a misspelt `notPrincipal` silently ignored would change who may
//! connect. Validation follows Istio's admission webhook, so what istiod would refuse is refused
//! here with the field's path.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Deserializer, Serialize};

use super::kinds::{null_default, FieldError, Kind, ObjectMeta};

/// API group of both kinds.
pub const SECURITY_GROUP: &str = "security.istio.io";
/// The versions accepted (`apiVersion` may also be left out in local config).
pub const SECURITY_VERSIONS: [&str; 2] = ["v1", "v1beta1"];

/// security.istio.io AuthorizationPolicy.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct AuthorizationPolicy {
    /// Metadata.
    pub metadata: ObjectMeta,
    /// Spec (an absent spec is an ALLOW policy with no rules: it allows nothing).
    #[serde(default)]
    pub spec: AuthorizationPolicySpec,
}

/// What an AuthorizationPolicy says.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthorizationPolicySpec {
    /// Workloads the policy applies to; absent = the whole namespace (or mesh, in the root
    /// namespace).
    #[serde(default)]
    pub selector: Option<WorkloadSelector>,
    /// Deprecated single target (waypoint policy).
    #[serde(default)]
    pub target_ref: Option<PolicyTargetReference>,
    /// Targets (Gateway, Service, ServiceEntry): the policy is for a waypoint, not ztunnel.
    #[serde(default, deserialize_with = "null_default")]
    pub target_refs: Vec<PolicyTargetReference>,
    /// ALLOW (default), DENY, AUDIT or CUSTOM.
    #[serde(default)]
    pub action: AuthorizationAction,
    /// External authorizer of a CUSTOM policy.
    #[serde(default)]
    pub provider: Option<ExtensionProvider>,
    /// Rules; a request matching any of them matches the policy.
    #[serde(default, deserialize_with = "null_default")]
    pub rules: Vec<Rule>,
}

/// `selector: {matchLabels: ...}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadSelector {
    /// Labels a pod must all carry.
    #[serde(default, deserialize_with = "null_default")]
    pub match_labels: BTreeMap<String, String>,
}

/// A `targetRef(s)` entry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyTargetReference {
    /// API group (`gateway.networking.k8s.io`, `""` for core).
    #[serde(default)]
    pub group: Option<String>,
    /// Kind (Gateway, Service, ServiceEntry, GatewayClass).
    pub kind: String,
    /// Name.
    pub name: String,
    /// Namespace (defaults to the policy's).
    #[serde(default)]
    pub namespace: Option<String>,
}

/// `provider: {name: ...}` of a CUSTOM policy.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ExtensionProvider {
    /// Extension provider name from the mesh config.
    #[serde(default)]
    pub name: String,
}

/// `spec.action`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AuthorizationAction {
    /// Allow matching requests; once any ALLOW policy applies, everything else is denied.
    #[default]
    Allow,
    /// Deny matching requests.
    Deny,
    /// Mark matching requests for audit logging (not enforced by ztunnel).
    Audit,
    /// Ask an external authorizer (not enforced by ztunnel).
    Custom,
}

impl AuthorizationAction {
    /// The name as written in YAML.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthorizationAction::Allow => "ALLOW",
            AuthorizationAction::Deny => "DENY",
            AuthorizationAction::Audit => "AUDIT",
            AuthorizationAction::Custom => "CUSTOM",
        }
    }
}

/// One rule: all of its parts (`from`, `to`, each `when`) must match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Sources (any may match); `None` = any source. `Some([])` is invalid.
    #[serde(default)]
    pub from: Option<Vec<RuleFrom>>,
    /// Operations (any may match); `None` = any operation. `Some([])` is invalid.
    #[serde(default)]
    pub to: Option<Vec<RuleTo>>,
    /// Extra conditions, all of which must hold.
    #[serde(default, deserialize_with = "null_default")]
    pub when: Vec<Condition>,
}

/// A `from` entry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RuleFrom {
    /// The source (required).
    pub source: Source,
}

/// A `to` entry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RuleTo {
    /// The operation (required).
    pub operation: Operation,
}

/// Who is calling. Every list set must match (values in a list are alternatives).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Source {
    /// Peer identities without `spiffe://` (`cluster.local/ns/a/sa/b`; `*`, `prefix*`, `*suffix`).
    #[serde(default, deserialize_with = "null_default")]
    pub principals: Vec<String>,
    /// Excluded peer identities.
    #[serde(default, deserialize_with = "null_default")]
    pub not_principals: Vec<String>,
    /// JWT `iss/sub` (HTTP only).
    #[serde(default, deserialize_with = "null_default")]
    pub request_principals: Vec<String>,
    /// Excluded JWT principals (HTTP only).
    #[serde(default, deserialize_with = "null_default")]
    pub not_request_principals: Vec<String>,
    /// Peer namespaces (from the certificate).
    #[serde(default, deserialize_with = "null_default")]
    pub namespaces: Vec<String>,
    /// Excluded peer namespaces.
    #[serde(default, deserialize_with = "null_default")]
    pub not_namespaces: Vec<String>,
    /// Peer service accounts, `ns/sa` or `sa` (the policy's namespace).
    #[serde(default, deserialize_with = "null_default")]
    pub service_accounts: Vec<String>,
    /// Excluded peer service accounts.
    #[serde(default, deserialize_with = "null_default")]
    pub not_service_accounts: Vec<String>,
    /// Source IPs or CIDRs of the connection.
    #[serde(default, deserialize_with = "null_default")]
    pub ip_blocks: Vec<String>,
    /// Excluded source IPs or CIDRs.
    #[serde(default, deserialize_with = "null_default")]
    pub not_ip_blocks: Vec<String>,
    /// Original client IPs from X-Forwarded-For / PROXY protocol (HTTP only at ztunnel).
    #[serde(default, deserialize_with = "null_default")]
    pub remote_ip_blocks: Vec<String>,
    /// Excluded original client IPs (HTTP only at ztunnel).
    #[serde(default, deserialize_with = "null_default")]
    pub not_remote_ip_blocks: Vec<String>,
}

/// What is being called. Every list set must match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Operation {
    /// Host headers (HTTP only).
    #[serde(default, deserialize_with = "null_default")]
    pub hosts: Vec<String>,
    /// Excluded hosts (HTTP only).
    #[serde(default, deserialize_with = "null_default")]
    pub not_hosts: Vec<String>,
    /// Destination ports, as strings (`"8080"`).
    #[serde(default, deserialize_with = "null_default")]
    pub ports: Vec<String>,
    /// Excluded destination ports.
    #[serde(default, deserialize_with = "null_default")]
    pub not_ports: Vec<String>,
    /// HTTP methods (HTTP only).
    #[serde(default, deserialize_with = "null_default")]
    pub methods: Vec<String>,
    /// Excluded methods (HTTP only).
    #[serde(default, deserialize_with = "null_default")]
    pub not_methods: Vec<String>,
    /// Paths (HTTP only).
    #[serde(default, deserialize_with = "null_default")]
    pub paths: Vec<String>,
    /// Excluded paths (HTTP only).
    #[serde(default, deserialize_with = "null_default")]
    pub not_paths: Vec<String>,
}

/// A `when` condition.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Condition {
    /// Attribute name, e.g. `source.ip`, `destination.port`, `request.headers[x-id]`.
    pub key: String,
    /// Values, any of which matches.
    #[serde(default, deserialize_with = "null_default")]
    pub values: Vec<String>,
    /// Values none of which may match.
    #[serde(default, deserialize_with = "null_default")]
    pub not_values: Vec<String>,
}

/// `when` keys ztunnel can evaluate; every other valid key needs HTTP (a waypoint).
pub const L4_CONDITION_KEYS: [&str; 5] = [
    "source.ip",
    "source.namespace",
    "source.principal",
    "destination.ip",
    "destination.port",
];

/// Exact `when` keys Istio accepts (besides the bracketed and prefixed families below).
const CONDITION_KEYS: [&str; 11] = [
    "source.ip",
    "remote.ip",
    "source.namespace",
    "source.principal",
    "source.serviceAccount",
    "request.auth.principal",
    "request.auth.audiences",
    "request.auth.presenter",
    "destination.ip",
    "destination.port",
    "connection.sni",
];

/// security.istio.io PeerAuthentication.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct PeerAuthentication {
    /// Metadata.
    pub metadata: ObjectMeta,
    /// Spec (absent = mode UNSET: inherit).
    #[serde(default)]
    pub spec: PeerAuthenticationSpec,
}

/// What a PeerAuthentication says.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PeerAuthenticationSpec {
    /// Workloads it applies to; absent = namespace-wide (mesh-wide in the root namespace).
    #[serde(default)]
    pub selector: Option<WorkloadSelector>,
    /// The mode for every port not listed in `portLevelMtls`.
    #[serde(default)]
    pub mtls: Option<MutualTls>,
    /// Per-port modes (workload policies only). `Some(empty)` is invalid.
    #[serde(default)]
    pub port_level_mtls: Option<BTreeMap<PortKey, MutualTls>>,
}

impl PeerAuthenticationSpec {
    /// `mtls.mode`, UNSET when absent.
    pub fn mode(&self) -> MtlsMode {
        self.mtls.as_ref().map(|m| m.mode).unwrap_or_default()
    }
}

/// `mtls: {mode: ...}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MutualTls {
    /// The mode.
    #[serde(default)]
    pub mode: MtlsMode,
}

/// mTLS mode.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum MtlsMode {
    /// Inherit from the parent (namespace, then mesh); PERMISSIVE at the top.
    #[default]
    Unset,
    /// Plaintext accepted (in ambient, the same as PERMISSIVE: HBONE is always mTLS).
    Disable,
    /// mTLS and plaintext accepted.
    Permissive,
    /// Only mTLS (a peer identity) accepted.
    Strict,
}

/// A `portLevelMtls` key: written as a number (`8080:`) or, as in JSON, a string (`"8080":`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct PortKey(pub u64);

impl<'de> Deserialize<'de> for PortKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = PortKey;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a port number")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<PortKey, E> {
                Ok(PortKey(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<PortKey, E> {
                u64::try_from(v)
                    .map(PortKey)
                    .map_err(|_| E::custom(format!("port {v} is not 1-65535")))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<PortKey, E> {
                v.trim()
                    .parse()
                    .map(PortKey)
                    .map_err(|_| E::custom(format!("port {v:?} is not a number")))
            }
        }
        d.deserialize_any(V)
    }
}

/// Parses an `ipBlocks` entry (`10.0.0.0/8`, `10.1.2.3`, `fd00::/64`) into address and prefix
/// length (a bare address is a host: /32 or /128).
pub fn parse_cidr(v: &str) -> Option<(IpAddr, u8)> {
    let v = v.trim();
    match v.split_once('/') {
        Some((ip, len)) => {
            let ip: IpAddr = ip.parse().ok()?;
            let len: u8 = len.parse().ok()?;
            let max = if ip.is_ipv4() { 32 } else { 128 };
            (len <= max).then_some((ip, len))
        }
        None => {
            let ip: IpAddr = v.parse().ok()?;
            Some((ip, if ip.is_ipv4() { 32 } else { 128 }))
        }
    }
}

/// Parses a port string (`"8080"`), 1-65535.
pub fn parse_port(v: &str) -> Option<u16> {
    v.trim().parse::<u16>().ok().filter(|p| *p != 0)
}

/// Splits a `serviceAccounts` entry into (namespace, name); a bare name is in `policy_ns`.
pub fn parse_service_account<'a>(v: &'a str, policy_ns: &'a str) -> Option<(&'a str, &'a str)> {
    match v.split_once('/') {
        Some((ns, sa)) if !ns.is_empty() && !sa.is_empty() && !sa.contains('/') => Some((ns, sa)),
        Some(_) => None,
        None if !v.is_empty() => Some((policy_ns, v)),
        None => None,
    }
}

fn non_empty_values(field: &str, values: &[String]) -> Result<(), FieldError> {
    match values.iter().position(|v| v.trim().is_empty()) {
        Some(i) => Err(FieldError::new(
            format!("{field}[{i}]"),
            "empty value (leave the entry out instead)",
        )),
        None => Ok(()),
    }
}

fn cidrs(field: &str, values: &[String]) -> Result<(), FieldError> {
    non_empty_values(field, values)?;
    for (i, v) in values.iter().enumerate() {
        if parse_cidr(v).is_none() {
            return Err(FieldError::new(
                format!("{field}[{i}]"),
                format!("{v:?} is not an IP address or CIDR (e.g. 10.0.0.0/8)"),
            ));
        }
    }
    Ok(())
}

fn ports(field: &str, values: &[String]) -> Result<(), FieldError> {
    for (i, v) in values.iter().enumerate() {
        if parse_port(v).is_none() {
            return Err(FieldError::new(
                format!("{field}[{i}]"),
                format!("{v:?} is not a port number 1-65535 (port names are not accepted)"),
            ));
        }
    }
    Ok(())
}

fn service_accounts(field: &str, values: &[String]) -> Result<(), FieldError> {
    for (i, v) in values.iter().enumerate() {
        if parse_service_account(v, "ns").is_none() {
            return Err(FieldError::new(
                format!("{field}[{i}]"),
                format!("{v:?} is not a service account (`name`, or `namespace/name`)"),
            ));
        }
    }
    Ok(())
}

/// Kubernetes object names are DNS-1123 subdomains; checking it also keeps user policies from
/// colliding with the converted ones, whose names contain `_`.
fn object_name(meta: &ObjectMeta) -> Result<(), FieldError> {
    let ok = meta.name.len() <= 253
        && meta
            .name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && meta.name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && meta.name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(FieldError::new(
            "metadata.name",
            format!(
                "{:?} is not a valid name (lowercase letters, digits, '-' and '.', starting and \
                 ending with a letter or digit)",
                meta.name
            ),
        ))
    }
}

/// How a policy attaches: a workload selector, or targetRef(s) (to a Gateway or Service), never
/// both; each targetRef names a kind and a name.
fn attachment(
    sel: &Option<WorkloadSelector>,
    target_ref: &Option<PolicyTargetReference>,
    target_refs: &[PolicyTargetReference],
) -> Result<(), FieldError> {
    selector(sel)?;
    let targets = target_ref.iter().chain(target_refs);
    if sel.is_some() && targets.clone().next().is_some() {
        return Err(FieldError::new(
            "spec.targetRefs",
            "selector and targetRef(s) are mutually exclusive",
        ));
    }
    for (i, t) in targets.enumerate() {
        if t.kind.is_empty() || t.name.is_empty() {
            return Err(FieldError::new(
                format!("spec.targetRefs[{i}]"),
                "kind and name must not be empty",
            ));
        }
    }
    Ok(())
}

fn selector(sel: &Option<WorkloadSelector>) -> Result<(), FieldError> {
    let Some(sel) = sel else { return Ok(()) };
    if sel.match_labels.keys().any(|k| k.is_empty()) {
        return Err(FieldError::new(
            "spec.selector.matchLabels",
            "empty label key",
        ));
    }
    Ok(())
}

fn condition(path: &str, c: &Condition) -> Result<(), FieldError> {
    let key = c.key.trim();
    if key.is_empty() {
        return Err(FieldError::new(format!("{path}.key"), "must not be empty"));
    }
    let known = CONDITION_KEYS.contains(&key)
        || (key.starts_with("request.headers[") && key.ends_with(']'))
        || (key.starts_with("request.auth.claims[") && key.ends_with(']'))
        || key.starts_with("experimental.envoy.filters.");
    if !known {
        return Err(FieldError::new(
            format!("{path}.key"),
            format!(
                "unknown attribute {key:?} (L4 keys: {})",
                L4_CONDITION_KEYS.join(", ")
            ),
        ));
    }
    if c.values.is_empty() && c.not_values.is_empty() {
        return Err(FieldError::new(
            path,
            format!("at least one of values or notValues must be set for key {key}"),
        ));
    }
    for (field, values) in [("values", &c.values), ("notValues", &c.not_values)] {
        let field = format!("{path}.{field}");
        match key {
            "source.ip" | "remote.ip" | "destination.ip" => cidrs(&field, values)?,
            "destination.port" => ports(&field, values)?,
            _ => non_empty_values(&field, values)?,
        }
    }
    Ok(())
}

impl Kind for AuthorizationPolicy {
    const KIND: &'static str = "AuthorizationPolicy";
    const NAMESPACED: bool = true;
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
    fn validate(&mut self) -> Result<(), FieldError> {
        object_name(&self.metadata)?;
        let spec = &self.spec;
        attachment(&spec.selector, &spec.target_ref, &spec.target_refs)?;
        match (spec.action, &spec.provider) {
            (AuthorizationAction::Custom, p) if p.as_ref().is_none_or(|p| p.name.is_empty()) => {
                return Err(FieldError::new(
                    "spec.provider.name",
                    "a CUSTOM policy needs the name of an extension provider",
                ));
            }
            (AuthorizationAction::Custom, _) | (_, None) => {}
            (action, Some(_)) => {
                return Err(FieldError::new(
                    "spec.provider",
                    format!(
                        "only a CUSTOM policy takes a provider, this one is {}",
                        action.as_str()
                    ),
                ));
            }
        }
        if spec.action == AuthorizationAction::Deny && spec.rules.is_empty() {
            return Err(FieldError::new(
                "spec.rules",
                "a DENY policy without rules never matches; add an empty rule `{}` to deny everything",
            ));
        }
        for (ri, rule) in spec.rules.iter().enumerate() {
            let rp = format!("spec.rules[{ri}]");
            if rule.from.as_ref().is_some_and(Vec::is_empty) {
                return Err(FieldError::new(
                    format!("{rp}.from"),
                    "must not be empty (leave it out to match any source)",
                ));
            }
            for (fi, from) in rule.from.iter().flatten().enumerate() {
                let p = format!("{rp}.from[{fi}].source");
                let s = &from.source;
                let lists: [(&str, &Vec<String>); 12] = [
                    ("principals", &s.principals),
                    ("notPrincipals", &s.not_principals),
                    ("requestPrincipals", &s.request_principals),
                    ("notRequestPrincipals", &s.not_request_principals),
                    ("namespaces", &s.namespaces),
                    ("notNamespaces", &s.not_namespaces),
                    ("serviceAccounts", &s.service_accounts),
                    ("notServiceAccounts", &s.not_service_accounts),
                    ("ipBlocks", &s.ip_blocks),
                    ("notIpBlocks", &s.not_ip_blocks),
                    ("remoteIpBlocks", &s.remote_ip_blocks),
                    ("notRemoteIpBlocks", &s.not_remote_ip_blocks),
                ];
                if lists.iter().all(|(_, v)| v.is_empty()) {
                    return Err(FieldError::new(&p, "must not be empty"));
                }
                let identity = s.principals.len()
                    + s.not_principals.len()
                    + s.namespaces.len()
                    + s.not_namespaces.len();
                if identity > 0 && s.service_accounts.len() + s.not_service_accounts.len() > 0 {
                    return Err(FieldError::new(
                        format!("{p}.serviceAccounts"),
                        "cannot be combined with principals or namespaces (or their not* forms)",
                    ));
                }
                for (name, values) in &lists[..8] {
                    non_empty_values(&format!("{p}.{name}"), values)?;
                }
                service_accounts(&format!("{p}.serviceAccounts"), &s.service_accounts)?;
                service_accounts(&format!("{p}.notServiceAccounts"), &s.not_service_accounts)?;
                for (name, values) in &lists[8..] {
                    cidrs(&format!("{p}.{name}"), values)?;
                }
            }
            if rule.to.as_ref().is_some_and(Vec::is_empty) {
                return Err(FieldError::new(
                    format!("{rp}.to"),
                    "must not be empty (leave it out to match any operation)",
                ));
            }
            for (ti, to) in rule.to.iter().flatten().enumerate() {
                let p = format!("{rp}.to[{ti}].operation");
                let o = &to.operation;
                let lists: [(&str, &Vec<String>); 8] = [
                    ("ports", &o.ports),
                    ("notPorts", &o.not_ports),
                    ("hosts", &o.hosts),
                    ("notHosts", &o.not_hosts),
                    ("methods", &o.methods),
                    ("notMethods", &o.not_methods),
                    ("paths", &o.paths),
                    ("notPaths", &o.not_paths),
                ];
                if lists.iter().all(|(_, v)| v.is_empty()) {
                    return Err(FieldError::new(&p, "must not be empty"));
                }
                for (name, values) in &lists {
                    non_empty_values(&format!("{p}.{name}"), values)?;
                }
                ports(&format!("{p}.ports"), &o.ports)?;
                ports(&format!("{p}.notPorts"), &o.not_ports)?;
            }
            for (ci, c) in rule.when.iter().enumerate() {
                condition(&format!("{rp}.when[{ci}]"), c)?;
            }
        }
        Ok(())
    }
}

impl Kind for PeerAuthentication {
    const KIND: &'static str = "PeerAuthentication";
    const NAMESPACED: bool = true;
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
    fn validate(&mut self) -> Result<(), FieldError> {
        object_name(&self.metadata)?;
        let spec = &self.spec;
        selector(&spec.selector)?;
        let Some(port_level) = &spec.port_level_mtls else {
            return Ok(());
        };
        if spec
            .selector
            .as_ref()
            .is_none_or(|s| s.match_labels.is_empty())
        {
            return Err(FieldError::new(
                "spec.portLevelMtls",
                "only a workload policy (with spec.selector.matchLabels) may set port-level mTLS",
            ));
        }
        if port_level.is_empty() {
            return Err(FieldError::new(
                "spec.portLevelMtls",
                "must have at least one port when present",
            ));
        }
        if let Some(PortKey(p)) = port_level.keys().find(|p| !(1..=65535).contains(&p.0)) {
            return Err(FieldError::new(
                format!("spec.portLevelMtls.{p}"),
                "port must be 1-65535",
            ));
        }
        Ok(())
    }
}

/// security.istio.io RequestAuthentication: which JWTs a waypoint (targetRefs, or a selector
/// matching the waypoint's pods) validates.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct RequestAuthentication {
    /// Metadata.
    pub metadata: ObjectMeta,
    /// Spec.
    #[serde(default)]
    pub spec: RequestAuthenticationSpec,
}

/// What a RequestAuthentication says.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RequestAuthenticationSpec {
    /// Workloads (here: waypoint pods) it applies to.
    #[serde(default)]
    pub selector: Option<WorkloadSelector>,
    /// Deprecated single target.
    #[serde(default)]
    pub target_ref: Option<PolicyTargetReference>,
    /// Targets (the waypoint Gateway or a Service).
    #[serde(default, deserialize_with = "null_default")]
    pub target_refs: Vec<PolicyTargetReference>,
    /// JWT issuers accepted.
    #[serde(default, deserialize_with = "null_default")]
    pub jwt_rules: Vec<JwtRule>,
}

/// One `jwtRules` entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JwtRule {
    /// `iss` the token must carry.
    #[serde(default)]
    pub issuer: String,
    /// Accepted `aud` values (empty = any).
    #[serde(default, deserialize_with = "null_default")]
    pub audiences: Vec<String>,
    /// Where the waypoint fetches the JWKS (http or https).
    #[serde(default)]
    pub jwks_uri: Option<String>,
    /// Inline JWKS (JSON).
    #[serde(default)]
    pub jwks: Option<String>,
    /// Headers carrying the token (default `Authorization: Bearer`).
    #[serde(default, deserialize_with = "null_default")]
    pub from_headers: Vec<JwtHeader>,
    /// Query parameters carrying the token.
    #[serde(default, deserialize_with = "null_default")]
    pub from_params: Vec<String>,
    /// Not supported (refused).
    #[serde(default, deserialize_with = "null_default")]
    pub from_cookies: Vec<String>,
    /// Not supported (refused).
    #[serde(default)]
    pub output_payload_to_header: Option<String>,
    /// Not supported (refused).
    #[serde(default, deserialize_with = "null_default")]
    pub output_claim_to_headers: Vec<serde_yaml_ng::Value>,
    /// Keep the token when forwarding.
    #[serde(default)]
    pub forward_original_token: bool,
    /// JWKS fetch timeout (accepted; the waypoint uses its own bound).
    #[serde(default)]
    pub timeout: Option<String>,
}

/// A `fromHeaders` entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct JwtHeader {
    /// Header name.
    pub name: String,
    /// Prefix before the token (e.g. `Bearer `).
    #[serde(default)]
    pub prefix: String,
}

impl Kind for RequestAuthentication {
    const KIND: &'static str = "RequestAuthentication";
    const NAMESPACED: bool = true;
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
    fn validate(&mut self) -> Result<(), FieldError> {
        object_name(&self.metadata)?;
        let spec = &self.spec;
        attachment(&spec.selector, &spec.target_ref, &spec.target_refs)?;
        let mut issuers = std::collections::BTreeSet::new();
        for (i, r) in spec.jwt_rules.iter().enumerate() {
            let p = format!("spec.jwtRules[{i}]");
            if r.issuer.trim().is_empty() {
                return Err(FieldError::new(format!("{p}.issuer"), "must not be empty"));
            }
            if !issuers.insert(r.issuer.as_str()) {
                return Err(FieldError::new(
                    format!("{p}.issuer"),
                    format!("issuer {:?} appears in two jwtRules", r.issuer),
                ));
            }
            match (&r.jwks, &r.jwks_uri) {
                (Some(j), _) if !j.trim().is_empty() => {
                    let v: serde_json::Value = serde_json::from_str(j).map_err(|e| {
                        FieldError::new(format!("{p}.jwks"), format!("not JSON: {e}"))
                    })?;
                    if !v.get("keys").is_some_and(serde_json::Value::is_array) {
                        return Err(FieldError::new(
                            format!("{p}.jwks"),
                            "must be a JWKS: an object with a `keys` array",
                        ));
                    }
                }
                (_, Some(u)) if !u.trim().is_empty() => {
                    if !(u.starts_with("http://") || u.starts_with("https://"))
                        || u.parse::<http::Uri>().is_err()
                    {
                        return Err(FieldError::new(
                            format!("{p}.jwksUri"),
                            format!("{u:?} is not an http:// or https:// URL"),
                        ));
                    }
                }
                _ => {
                    return Err(FieldError::new(
                        format!("{p}.jwksUri"),
                        "set jwksUri or jwks (OpenID discovery from the issuer is not supported)",
                    ))
                }
            }
            for (h, fh) in r.from_headers.iter().enumerate() {
                if fh.name.trim().is_empty() || fh.name.parse::<http::HeaderName>().is_err() {
                    return Err(FieldError::new(
                        format!("{p}.fromHeaders[{h}].name"),
                        format!("{:?} is not a header name", fh.name),
                    ));
                }
            }
            non_empty_values(&format!("{p}.fromParams"), &r.from_params)?;
            non_empty_values(&format!("{p}.audiences"), &r.audiences)?;
            let unsupported = [
                ("fromCookies", !r.from_cookies.is_empty()),
                (
                    "outputPayloadToHeader",
                    r.output_payload_to_header.is_some(),
                ),
                (
                    "outputClaimToHeaders",
                    !r.output_claim_to_headers.is_empty(),
                ),
            ];
            if let Some((f, _)) = unsupported.iter().find(|(_, set)| *set) {
                return Err(FieldError::new(
                    format!("{p}.{f}"),
                    "not supported by ambient-rs's waypoint; remove it",
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;

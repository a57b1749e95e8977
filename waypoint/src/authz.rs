//! AuthorizationPolicy at the waypoint (HTTP attributes), as Envoy's RBAC filter does it for
//! Istio: DENY policies first (any match denies), then ALLOW (none present = allow; else one
//! must match), AUDIT only marks. CUSTOM is turned into DENY by istiod-lite.
//!
//! A policy matches when any rule does; a rule when its `from` (any source), `to` (any
//! operation) and every `when` hold; a source/operation when every list it sets holds (a
//! positive list needs one hit, a `not*` list none). String values use Istio's forms: exact,
//! `prefix*`, `*suffix`, `*` (= present). An attribute the request does not have (no JWT, no
//! such header) matches no positive value, so it satisfies every `not*` list.

use std::net::IpAddr;

use http::HeaderMap;
use mesh_proto::route as pb;
use serde::Serialize;

use crate::jwt::Claims;

/// A pushed policy the waypoint cannot use (the resource is NACKed).
#[derive(thiserror::Error, Debug)]
pub enum AuthzError {
    /// A CIDR does not parse.
    #[error("policy {policy}: {value:?} is not an IP address or CIDR")]
    Cidr {
        /// Policy.
        policy: String,
        /// The value.
        value: String,
    },
    /// A port is out of range.
    #[error("policy {policy}: port {port} is out of range")]
    Port {
        /// Policy.
        policy: String,
        /// The value.
        port: u32,
    },
}

/// An Istio string match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StrMatch {
    /// `*`: any non-empty value.
    Presence,
    /// Exact.
    Exact(String),
    /// `abc*`.
    Prefix(String),
    /// `*abc`.
    Suffix(String),
}

impl StrMatch {
    /// Compiles Istio's form.
    pub fn new(v: &str) -> Self {
        if v == "*" {
            StrMatch::Presence
        } else if let Some(p) = v.strip_suffix('*') {
            StrMatch::Prefix(p.to_string())
        } else if let Some(s) = v.strip_prefix('*') {
            StrMatch::Suffix(s.to_string())
        } else {
            StrMatch::Exact(v.to_string())
        }
    }

    /// True when `v` matches.
    pub fn matches(&self, v: &str) -> bool {
        match self {
            StrMatch::Presence => !v.is_empty(),
            StrMatch::Exact(e) => v == e,
            StrMatch::Prefix(p) => v.starts_with(p.as_str()),
            StrMatch::Suffix(s) => v.ends_with(s.as_str()),
        }
    }

    fn matches_ci(&self, v: &str) -> bool {
        let l = v.to_ascii_lowercase();
        match self {
            StrMatch::Presence => !v.is_empty(),
            StrMatch::Exact(e) => l == e.to_ascii_lowercase(),
            StrMatch::Prefix(p) => l.starts_with(&p.to_ascii_lowercase()),
            StrMatch::Suffix(s) => l.ends_with(&s.to_ascii_lowercase()),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Cidr(IpAddr, u8);

impl Cidr {
    fn parse(v: &str) -> Option<Self> {
        let v = v.trim();
        let (ip, len) = match v.split_once('/') {
            Some((ip, l)) => (ip.parse::<IpAddr>().ok()?, l.parse::<u8>().ok()?),
            None => {
                let ip: IpAddr = v.parse().ok()?;
                (ip, if ip.is_ipv4() { 32 } else { 128 })
            }
        };
        let max = if ip.is_ipv4() { 32 } else { 128 };
        (len <= max).then_some(Cidr(ip, len))
    }

    fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self.0, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = if self.1 == 0 {
                    0
                } else {
                    u32::MAX << (32 - self.1)
                };
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = if self.1 == 0 {
                    0
                } else {
                    u128::MAX << (128 - self.1)
                };
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// A list with its negation: positive needs one hit (when set), `not` none.
#[derive(Debug, Default, Clone)]
struct Pair<T> {
    yes: Vec<T>,
    no: Vec<T>,
}

impl<T> Pair<T> {
    fn check(&self, hit: impl Fn(&T) -> bool) -> bool {
        (self.yes.is_empty() || self.yes.iter().any(&hit)) && !self.no.iter().any(&hit)
    }
}

fn strs(yes: &[String], no: &[String]) -> Pair<StrMatch> {
    Pair {
        yes: yes.iter().map(|v| StrMatch::new(v)).collect(),
        no: no.iter().map(|v| StrMatch::new(v)).collect(),
    }
}

fn cidrs(policy: &str, yes: &[String], no: &[String]) -> Result<Pair<Cidr>, AuthzError> {
    let conv = |v: &[String]| {
        v.iter()
            .map(|s| {
                Cidr::parse(s).ok_or_else(|| AuthzError::Cidr {
                    policy: policy.to_string(),
                    value: s.clone(),
                })
            })
            .collect::<Result<Vec<_>, _>>()
    };
    Ok(Pair {
        yes: conv(yes)?,
        no: conv(no)?,
    })
}

#[derive(Debug, Clone)]
struct SourceM {
    principals: Pair<StrMatch>,
    request_principals: Pair<StrMatch>,
    namespaces: Pair<StrMatch>,
    ip_blocks: Pair<Cidr>,
    remote_ip_blocks: Pair<Cidr>,
}

#[derive(Debug, Clone)]
struct OperationM {
    hosts: Pair<StrMatch>,
    ports: Pair<u16>,
    methods: Pair<StrMatch>,
    paths: Pair<StrMatch>,
}

#[derive(Debug, Clone)]
struct ConditionM {
    key: String,
    values: Vec<String>,
    not_values: Vec<String>,
}

#[derive(Debug, Clone)]
struct RuleM {
    from: Vec<SourceM>,
    to: Vec<OperationM>,
    when: Vec<ConditionM>,
}

/// A compiled policy.
#[derive(Debug, Clone)]
pub struct Policy {
    /// `<ns>/<name>`.
    pub name: String,
    rules: Vec<RuleM>,
}

/// The policies of one Service, by action.
#[derive(Debug, Clone, Default)]
pub struct Policies {
    deny: Vec<Policy>,
    allow: Vec<Policy>,
    audit: Vec<Policy>,
}

/// What the request looks like to a policy.
#[derive(Debug, Clone, Copy)]
pub struct Attributes<'a> {
    /// mTLS peer identity without `spiffe://` (`td/ns/N/sa/S`).
    pub principal: Option<&'a str>,
    /// Peer namespace (from the certificate).
    pub namespace: Option<&'a str>,
    /// Peer service account.
    pub service_account: Option<&'a str>,
    /// Source IP of the HBONE connection.
    pub source_ip: IpAddr,
    /// Original client IP (the source IP: no trusted proxies in front of a waypoint).
    pub remote_ip: IpAddr,
    /// Service port.
    pub port: u16,
    /// Method.
    pub method: &'a str,
    /// Normalized path, without query.
    pub path: &'a str,
    /// Host / :authority.
    pub host: &'a str,
    /// Request headers.
    pub headers: &'a HeaderMap,
    /// JWT claims, when a token was validated.
    pub auth: Option<&'a Claims>,
}

/// The verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    /// Allowed?
    pub allowed: bool,
    /// The DENY policy that matched, or `""` when no ALLOW policy matched.
    pub policy: Option<String>,
    /// AUDIT policies that matched.
    pub audit: Vec<String>,
}

impl Policies {
    /// Compiles the pushed policies.
    pub fn compile(pbs: &[pb::L7Policy]) -> Result<Self, AuthzError> {
        let mut out = Policies::default();
        for p in pbs {
            let name = p.name.clone();
            let mut rules = Vec::new();
            for r in &p.rules {
                let from = r
                    .from
                    .iter()
                    .map(|s| {
                        Ok(SourceM {
                            principals: strs(&s.principals, &s.not_principals),
                            request_principals: strs(
                                &s.request_principals,
                                &s.not_request_principals,
                            ),
                            namespaces: strs(&s.namespaces, &s.not_namespaces),
                            ip_blocks: cidrs(&name, &s.ip_blocks, &s.not_ip_blocks)?,
                            remote_ip_blocks: cidrs(
                                &name,
                                &s.remote_ip_blocks,
                                &s.not_remote_ip_blocks,
                            )?,
                        })
                    })
                    .collect::<Result<Vec<_>, AuthzError>>()?;
                let port = |v: &u32| {
                    u16::try_from(*v)
                        .ok()
                        .filter(|p| *p != 0)
                        .ok_or(AuthzError::Port {
                            policy: name.clone(),
                            port: *v,
                        })
                };
                let to =
                    r.to.iter()
                        .map(|o| {
                            Ok(OperationM {
                                hosts: strs(&o.hosts, &o.not_hosts),
                                ports: Pair {
                                    yes: o.ports.iter().map(port).collect::<Result<_, _>>()?,
                                    no: o.not_ports.iter().map(port).collect::<Result<_, _>>()?,
                                },
                                methods: strs(&o.methods, &o.not_methods),
                                paths: strs(&o.paths, &o.not_paths),
                            })
                        })
                        .collect::<Result<Vec<_>, AuthzError>>()?;
                let when = r
                    .when
                    .iter()
                    .map(|c| ConditionM {
                        key: c.key.clone(),
                        values: c.values.clone(),
                        not_values: c.not_values.clone(),
                    })
                    .collect();
                rules.push(RuleM { from, to, when });
            }
            let policy = Policy { name, rules };
            match p.action() {
                pb::l7_policy::Action::Allow => out.allow.push(policy),
                pb::l7_policy::Action::Deny => out.deny.push(policy),
                pb::l7_policy::Action::Audit => out.audit.push(policy),
            }
        }
        Ok(out)
    }

    /// True when there is nothing to evaluate.
    pub fn is_empty(&self) -> bool {
        self.deny.is_empty() && self.allow.is_empty() && self.audit.is_empty()
    }

    /// Evaluates in Istio's order: DENY, then ALLOW; AUDIT is only reported.
    pub fn evaluate(&self, a: &Attributes<'_>) -> Decision {
        let audit = self
            .audit
            .iter()
            .filter(|p| p.matches(a))
            .map(|p| p.name.clone())
            .collect();
        if let Some(p) = self.deny.iter().find(|p| p.matches(a)) {
            return Decision {
                allowed: false,
                policy: Some(p.name.clone()),
                audit,
            };
        }
        if self.allow.is_empty() {
            return Decision {
                allowed: true,
                policy: None,
                audit,
            };
        }
        match self.allow.iter().find(|p| p.matches(a)) {
            Some(p) => Decision {
                allowed: true,
                policy: Some(p.name.clone()),
                audit,
            },
            None => Decision {
                allowed: false,
                policy: None,
                audit,
            },
        }
    }
}

impl Policy {
    fn matches(&self, a: &Attributes<'_>) -> bool {
        self.rules.iter().any(|r| r.matches(a))
    }
}

/// `v` checked against a positive list when it exists; an absent attribute hits nothing.
fn hit(v: Option<&str>) -> impl Fn(&StrMatch) -> bool + '_ {
    move |m| v.is_some_and(|v| m.matches(v))
}

impl RuleM {
    fn matches(&self, a: &Attributes<'_>) -> bool {
        (self.from.is_empty() || self.from.iter().any(|s| s.matches(a)))
            && (self.to.is_empty() || self.to.iter().any(|o| o.matches(a)))
            && self.when.iter().all(|c| c.matches(a))
    }
}

impl SourceM {
    fn matches(&self, a: &Attributes<'_>) -> bool {
        self.principals.check(hit(a.principal))
            && self
                .request_principals
                .check(hit(a.auth.map(|c| c.principal.as_str())))
            && self.namespaces.check(hit(a.namespace))
            && self.ip_blocks.check(|c| c.contains(a.source_ip))
            && self.remote_ip_blocks.check(|c| c.contains(a.remote_ip))
    }
}

/// Istio matches hosts with and without the port, case-insensitively.
fn host_hit<'a>(host: &'a str) -> impl Fn(&StrMatch) -> bool + 'a {
    move |m| {
        let bare = match host.rsplit_once(':') {
            Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) && !h.ends_with(':') => h,
            _ => host,
        };
        m.matches_ci(host) || m.matches_ci(bare)
    }
}

impl OperationM {
    fn matches(&self, a: &Attributes<'_>) -> bool {
        self.hosts.check(host_hit(a.host))
            && self.ports.check(|p| *p == a.port)
            && self.methods.check(|m| m.matches(a.method))
            && self.paths.check(|m| m.matches(a.path))
    }
}

impl ConditionM {
    /// The attribute's values (several for list claims and repeated headers); `None` when the
    /// key is not one the waypoint knows, which then matches no value.
    fn attribute(&self, a: &Attributes<'_>) -> Vec<String> {
        let k = self.key.as_str();
        let one = |v: Option<&str>| v.map(|s| vec![s.to_string()]).unwrap_or_default();
        if let Some(h) = k
            .strip_prefix("request.headers[")
            .and_then(|r| r.strip_suffix(']'))
        {
            let vals: Vec<String> = a
                .headers
                .get_all(h)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .map(str::to_string)
                .collect();
            // Envoy joins repeated headers with ',' for matching.
            return if vals.len() > 1 {
                vec![vals.join(",")]
            } else {
                vals
            };
        }
        if let Some(c) = k
            .strip_prefix("request.auth.claims[")
            .and_then(|r| r.strip_suffix(']'))
        {
            // Nested claims: request.auth.claims[a][b].
            let path: Vec<&str> = c.split("][").collect();
            return a.auth.map(|cl| cl.claim(&path)).unwrap_or_default();
        }
        match k {
            "request.auth.principal" => one(a.auth.map(|c| c.principal.as_str())),
            "request.auth.audiences" => a.auth.map(|c| c.audiences.clone()).unwrap_or_default(),
            "request.auth.presenter" => one(a.auth.and_then(|c| c.presenter.as_deref())),
            "source.principal" => one(a.principal),
            "source.namespace" => one(a.namespace),
            "source.serviceAccount" => match (a.namespace, a.service_account) {
                (Some(n), Some(s)) => vec![format!("{n}/{s}")],
                _ => Vec::new(),
            },
            "destination.port" => vec![a.port.to_string()],
            _ => Vec::new(),
        }
    }

    fn matches(&self, a: &Attributes<'_>) -> bool {
        let ip_key = match self.key.as_str() {
            "source.ip" => Some(a.source_ip),
            "remote.ip" => Some(a.remote_ip),
            _ => None,
        };
        if let Some(ip) = ip_key {
            let hit = |v: &String| Cidr::parse(v).is_some_and(|c| c.contains(ip));
            return (self.values.is_empty() || self.values.iter().any(hit))
                && !self.not_values.iter().any(hit);
        }
        let vals = self.attribute(a);
        let hit = |v: &String| {
            let m = StrMatch::new(v);
            vals.iter().any(|x| m.matches(x))
        };
        (self.values.is_empty() || self.values.iter().any(hit)) && !self.not_values.iter().any(hit)
    }
}

/// RFC 3986 dot-segment removal plus merging of repeated slashes (Istio's
/// `pathNormalization: MERGE_SLASHES` on top of BASE), so `/public/../admin` is matched and
/// forwarded as `/admin`. Percent-encoded slashes are left alone (not decoded).
pub fn normalize_path(path: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for seg in path.split('/').skip(1) {
        match seg {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    let trailing = path.len() > 1
        && (path.ends_with('/') || path.ends_with("/.") || path.ends_with("/.."))
        && !out.is_empty();
    let mut p = String::with_capacity(path.len());
    for s in &out {
        p.push('/');
        p.push_str(s);
    }
    if p.is_empty() || trailing {
        p.push('/');
    }
    p
}

#[cfg(test)]
mod tests;

//! Authorization policies as ztunnel enforces them (Istio's `istio.security.Authorization`):
//! conversion from the pushed protobuf ([`Policy::from_proto`]), which policies apply to a
//! destination workload ([`applies_to`]), and the decision for one connection ([`evaluate`]).
//!
//! Semantics: a policy matches when any of its rules matches; a rule when all its clauses do; a
//! clause when any of its matches does; a match when every field it sets holds (a positive list
//! needs one hit, a `not_` list none). DENY policies are checked first; then, if any ALLOW policy
//! applies, one of them must match. Dry-run policies are evaluated and reported, never enforced.

use std::net::IpAddr;

use mesh_identity::spiffe::Identity;
use mesh_proto::security as pb;
use serde::Serialize;

/// A pushed policy that cannot be enforced as sent.
#[derive(thiserror::Error, Debug)]
pub enum PolicyError {
    #[error("policy {policy}: address of {len} bytes is not an IP")]
    BadAddress { policy: String, len: usize },
    #[error("policy {policy}: prefix length {prefix} is too long for {addr}")]
    BadPrefix {
        policy: String,
        addr: IpAddr,
        prefix: u32,
    },
    #[error("policy {policy}: port {port} is out of range")]
    BadPort { policy: String, port: u32 },
}

/// Where a policy applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Scope {
    Global,
    Namespace,
    WorkloadSelector,
}

/// What a matching policy does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Action {
    Allow,
    Deny,
}

/// A string matcher (exact, prefix, suffix, or presence).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StringMatch {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Presence,
}

impl StringMatch {
    fn matches(&self, v: &str) -> bool {
        match self {
            StringMatch::Exact(s) => v == s,
            StringMatch::Prefix(s) => v.starts_with(s.as_str()),
            StringMatch::Suffix(s) => v.ends_with(s.as_str()),
            StringMatch::Presence => !v.is_empty(),
        }
    }
}

/// An address block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct IpBlock {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl IpBlock {
    fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = if self.prefix == 0 {
                    0
                } else {
                    u32::MAX << (32 - u32::from(self.prefix))
                };
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = if self.prefix == 0 {
                    0
                } else {
                    u128::MAX << (128 - u32::from(self.prefix))
                };
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// One set of conditions; every non-empty field must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Match {
    pub namespaces: Vec<StringMatch>,
    pub not_namespaces: Vec<StringMatch>,
    pub principals: Vec<StringMatch>,
    pub not_principals: Vec<StringMatch>,
    pub source_ips: Vec<IpBlock>,
    pub not_source_ips: Vec<IpBlock>,
    pub destination_ips: Vec<IpBlock>,
    pub not_destination_ips: Vec<IpBlock>,
    pub destination_ports: Vec<u16>,
    pub not_destination_ports: Vec<u16>,
    /// (namespace, service account)
    pub service_accounts: Vec<(String, String)>,
    pub not_service_accounts: Vec<(String, String)>,
}

/// A converted policy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Policy {
    pub name: String,
    pub namespace: String,
    pub scope: Scope,
    pub action: Action,
    /// Rules (OR) of clauses (AND) of matches (OR).
    pub rules: Vec<Vec<Vec<Match>>>,
    pub dry_run: bool,
}

/// What is known about a connection when it is authorized.
#[derive(Clone, Debug)]
pub struct Connection<'a> {
    /// The peer identity the mTLS certificate proves (None for plaintext).
    pub src_identity: Option<&'a Identity>,
    pub src_ip: IpAddr,
    pub dst_ip: IpAddr,
    pub dst_port: u16,
}

/// The outcome.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// Denied; names the DENY policy that matched, or says no ALLOW policy matched.
    Deny(String),
}

fn any<T>(list: &[T], f: impl Fn(&T) -> bool) -> bool {
    list.iter().any(f)
}

/// A positive list holds if empty or any element hits; a negative list if no element hits.
fn check<T>(pos: &[T], neg: &[T], f: impl Fn(&T) -> bool) -> bool {
    (pos.is_empty() || any(pos, &f)) && !any(neg, &f)
}

impl Match {
    fn matches(&self, c: &Connection<'_>) -> bool {
        let principal = c.src_identity.map(|i| i.to_string());
        let principal = principal
            .as_deref()
            .map(|p| p.trim_start_matches("spiffe://"))
            .unwrap_or("");
        let ns = c.src_identity.map(|i| i.namespace.as_str()).unwrap_or("");
        let sa = |(n, s): &(String, String)| {
            c.src_identity
                .map(|i| &i.namespace == n && &i.service_account == s)
                .unwrap_or(false)
        };
        check(&self.namespaces, &self.not_namespaces, |m| m.matches(ns))
            && check(&self.principals, &self.not_principals, |m| {
                m.matches(principal)
            })
            && check(&self.source_ips, &self.not_source_ips, |b| {
                b.contains(c.src_ip)
            })
            && check(&self.destination_ips, &self.not_destination_ips, |b| {
                b.contains(c.dst_ip)
            })
            && check(&self.destination_ports, &self.not_destination_ports, |p| {
                *p == c.dst_port
            })
            && check(&self.service_accounts, &self.not_service_accounts, sa)
    }
}

impl Policy {
    /// The resource name (`<namespace>/<name>`), as listed in `Workload.authorization_policies`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Whether any rule matches the connection.
    pub fn matches(&self, c: &Connection<'_>) -> bool {
        self.rules.iter().any(|clauses| {
            clauses
                .iter()
                .all(|matches| matches.iter().any(|m| m.matches(c)))
        })
    }

    /// Converts a pushed policy, refusing malformed addresses and ports.
    pub fn from_proto(p: pb::Authorization) -> Result<Self, PolicyError> {
        let policy = format!("{}/{}", p.namespace, p.name);
        let strings = |v: Vec<pb::StringMatch>| -> Vec<StringMatch> {
            v.into_iter()
                .filter_map(|s| match s.match_type? {
                    pb::string_match::MatchType::Exact(e) => Some(StringMatch::Exact(e)),
                    pb::string_match::MatchType::Prefix(e) => Some(StringMatch::Prefix(e)),
                    pb::string_match::MatchType::Suffix(e) => Some(StringMatch::Suffix(e)),
                    pb::string_match::MatchType::Presence(_) => Some(StringMatch::Presence),
                })
                .collect()
        };
        let blocks = |v: Vec<pb::Address>| -> Result<Vec<IpBlock>, PolicyError> {
            v.into_iter()
                .map(|a| {
                    let addr = match a.address.len() {
                        4 => IpAddr::from(
                            <[u8; 4]>::try_from(a.address.as_slice()).unwrap_or_default(),
                        ),
                        16 => IpAddr::from(
                            <[u8; 16]>::try_from(a.address.as_slice()).unwrap_or_default(),
                        ),
                        len => {
                            return Err(PolicyError::BadAddress {
                                policy: policy.clone(),
                                len,
                            })
                        }
                    };
                    let max = if addr.is_ipv4() { 32 } else { 128 };
                    if a.length > max {
                        return Err(PolicyError::BadPrefix {
                            policy: policy.clone(),
                            addr,
                            prefix: a.length,
                        });
                    }
                    Ok(IpBlock {
                        addr,
                        prefix: a.length as u8,
                    })
                })
                .collect()
        };
        let ports = |v: Vec<u32>| -> Result<Vec<u16>, PolicyError> {
            v.into_iter()
                .map(|p| {
                    u16::try_from(p).map_err(|_| PolicyError::BadPort {
                        policy: policy.clone(),
                        port: p,
                    })
                })
                .collect()
        };
        let sas = |v: Vec<pb::ServiceAccountMatch>| {
            v.into_iter()
                .map(|s| (s.namespace, s.service_account))
                .collect()
        };
        let mut rules = Vec::with_capacity(p.rules.len());
        for r in p.rules {
            let mut clauses = Vec::with_capacity(r.clauses.len());
            for c in r.clauses {
                let mut matches = Vec::with_capacity(c.matches.len());
                for m in c.matches {
                    matches.push(Match {
                        namespaces: strings(m.namespaces),
                        not_namespaces: strings(m.not_namespaces),
                        principals: strings(m.principals),
                        not_principals: strings(m.not_principals),
                        source_ips: blocks(m.source_ips)?,
                        not_source_ips: blocks(m.not_source_ips)?,
                        destination_ips: blocks(m.destination_ips)?,
                        not_destination_ips: blocks(m.not_destination_ips)?,
                        destination_ports: ports(m.destination_ports)?,
                        not_destination_ports: ports(m.not_destination_ports)?,
                        service_accounts: sas(m.service_accounts),
                        not_service_accounts: sas(m.not_service_accounts),
                    });
                }
                clauses.push(matches);
            }
            rules.push(clauses);
        }
        Ok(Policy {
            scope: match pb::Scope::try_from(p.scope) {
                Ok(pb::Scope::Namespace) => Scope::Namespace,
                Ok(pb::Scope::WorkloadSelector) => Scope::WorkloadSelector,
                _ => Scope::Global,
            },
            action: if p.action == pb::Action::Deny as i32 {
                Action::Deny
            } else {
                Action::Allow
            },
            rules,
            dry_run: p.dry_run,
            name: p.name,
            namespace: p.namespace,
        })
    }
}

/// Whether `p` applies to a destination workload in `namespace` that lists `selected` policies.
pub fn applies_to(p: &Policy, namespace: &str, selected: &[String]) -> bool {
    match p.scope {
        Scope::Global => true,
        Scope::Namespace => p.namespace == namespace,
        Scope::WorkloadSelector => selected.iter().any(|s| *s == p.key()),
    }
}

/// Decides a connection against the policies that apply to its destination. Dry-run policies
/// are reported through `dry_run` (policy key, what it would have decided) and not enforced.
pub fn evaluate<'p>(
    policies: impl IntoIterator<Item = &'p Policy> + Clone,
    c: &Connection<'_>,
    mut dry_run: impl FnMut(&Policy, bool),
) -> Decision {
    for p in policies
        .clone()
        .into_iter()
        .filter(|p| p.action == Action::Deny)
    {
        if p.matches(c) {
            if p.dry_run {
                dry_run(p, false);
                continue;
            }
            return Decision::Deny(format!("denied by DENY policy {}", p.key()));
        }
    }
    let mut allow_applies = false;
    for p in policies.into_iter().filter(|p| p.action == Action::Allow) {
        let hit = p.matches(c);
        if p.dry_run {
            dry_run(p, hit);
            continue;
        }
        allow_applies = true;
        if hit {
            return Decision::Allow;
        }
    }
    if allow_applies {
        Decision::Deny("no ALLOW policy matched".into())
    } else {
        Decision::Allow
    }
}

#[cfg(test)]
mod tests;

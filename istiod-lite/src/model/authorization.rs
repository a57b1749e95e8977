//! AuthorizationPolicy (and, through [`super::peer_authentication`], PeerAuthentication) →
//! `istio.security.Authorization`, the way istiod does it for ztunnel.
//!
//! - Resource name `<namespace>/<name>`, the string workloads list in `authorization_policies`.
//! - Scope: GLOBAL for a selector-less policy in the root namespace, NAMESPACE for a
//!   selector-less policy elsewhere, WORKLOAD_SELECTOR with a selector (then every pod the
//!   selector matches, in the policy's namespace or any namespace for the root namespace, lists
//!   it). Policies with `targetRefs` are for waypoints and are not sent to ztunnel.
//! - Each rule becomes one Rule whose clauses (ANDed) are: one clause for `from` (a Match per
//!   source, ORed), one for `to` (a Match per operation), one per `when` condition.
//! - What ztunnel cannot see (HTTP attributes: methods, paths, hosts, requestPrincipals,
//!   remoteIpBlocks, `request.*` and other non-L4 `when` keys): an ALLOW rule using any of
//!   them is left out (it could only ever allow too much); a DENY rule is kept without them
//!   (it denies more than written; with nothing L4 left it denies everything it applies to).
//!   Both cases, AUDIT and CUSTOM policies (not sent at all) and a few likely mistakes are
//!   reported as [`PolicyWarning`]s.

use std::collections::BTreeMap;
use std::net::IpAddr;

use mesh_proto::security::{
    string_match, Action, Address, Authorization, Clause, Match, Rule as PbRule, Scope,
    ServiceAccountMatch, StringMatch,
};
use serde::Serialize;

use super::peer_authentication::PeerAuthIndex;
use crate::source::security::{
    parse_cidr, parse_port, parse_service_account, AuthorizationAction, AuthorizationPolicy,
    Condition, Operation, Rule, Source, WorkloadSelector, L4_CONDITION_KEYS,
};
use crate::source::ConfigSnapshot;

/// Metric: warnings about policies ztunnel cannot enforce as written, by policy.
pub const POLICY_WARNINGS_TOTAL: &str = "istiod_policy_warnings_total";

/// Annotation that makes a policy dry-run (evaluated and logged, not enforced), as in Istio.
pub const DRY_RUN_ANNOTATION: &str = "istio.io/dry-run";

/// `<namespace>/<name>`.
pub fn policy_key(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

/// Something about a policy an operator should know: ztunnel enforces it differently from
/// what is written (or not at all).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct PolicyWarning {
    /// `AuthorizationPolicy` or `PeerAuthentication`.
    pub kind: &'static str,
    /// `<namespace>/<name>`.
    pub policy: String,
    /// Dotted path of the field concerned.
    pub field: String,
    /// What happens and what to do.
    pub message: String,
}

/// A policy that applies to the pods its labels select.
#[derive(Debug)]
struct Selected {
    key: String,
    namespace: String,
    labels: BTreeMap<String, String>,
}

/// Every Authorization resource of the config, plus what workloads need to list them.
#[derive(Debug)]
pub struct Policies {
    /// Authorization resources by name (`<namespace>/<name>`).
    pub resources: Vec<(String, Authorization)>,
    /// Warnings found while translating, in config order.
    pub warnings: Vec<PolicyWarning>,
    selected: Vec<Selected>,
    peer: PeerAuthIndex,
    root_namespace: String,
}

impl Policies {
    /// Translates every AuthorizationPolicy and PeerAuthentication of `cfg`.
    pub fn build(cfg: &ConfigSnapshot, root_namespace: &str) -> Self {
        let mut warnings = Vec::new();
        let mut resources = Vec::new();
        let mut selected = Vec::new();
        for ap in cfg.authorization_policies.values() {
            let Some(auth) = translate_policy(ap, root_namespace, &mut warnings) else {
                continue;
            };
            let key = policy_key(&auth.namespace, &auth.name);
            if let Some(labels) = selector_labels(&ap.spec.selector) {
                selected.push(Selected {
                    key: key.clone(),
                    namespace: auth.namespace.clone(),
                    labels: labels.clone(),
                });
            }
            resources.push((key, auth));
        }
        let peer = PeerAuthIndex::build(cfg, root_namespace, &mut warnings);
        resources.extend(peer.resources());
        Policies {
            resources,
            warnings,
            selected,
            peer,
            root_namespace: root_namespace.to_string(),
        }
    }

    /// `Workload.authorization_policies` of a pod: the selector policies that select it
    /// (sorted), then the converted PeerAuthentication policies in effect for it.
    pub fn for_workload(&self, namespace: &str, labels: &BTreeMap<String, String>) -> Vec<String> {
        let mut keys: Vec<String> = self
            .selected
            .iter()
            .filter(|s| s.namespace == namespace || s.namespace == self.root_namespace)
            .filter(|s| s.labels.iter().all(|(k, v)| labels.get(k) == Some(v)))
            .map(|s| s.key.clone())
            .collect();
        keys.sort();
        keys.extend(self.peer.keys_for(namespace, labels));
        keys
    }
}

/// `matchLabels` of a selector, `None` when there is no selector or it is empty (an empty
/// selector is treated as none: the policy applies namespace-wide).
pub fn selector_labels(sel: &Option<WorkloadSelector>) -> Option<&BTreeMap<String, String>> {
    sel.as_ref()
        .map(|s| &s.match_labels)
        .filter(|l| !l.is_empty())
}

/// One policy; `None` when it is not for ztunnel (targetRefs, AUDIT, CUSTOM).
pub fn translate_policy(
    ap: &AuthorizationPolicy,
    root_namespace: &str,
    warnings: &mut Vec<PolicyWarning>,
) -> Option<Authorization> {
    let ns = ap.metadata.ns();
    let name = &ap.metadata.name;
    let key = policy_key(ns, name);
    let mut warn = |field: String, message: String| {
        warnings.push(PolicyWarning {
            kind: "AuthorizationPolicy",
            policy: key.clone(),
            field,
            message,
        })
    };
    let spec = &ap.spec;
    if spec.target_ref.is_some() || !spec.target_refs.is_empty() {
        tracing::debug!(policy = %key, "policy with targetRefs is for a waypoint; not sent to ztunnel");
        return None;
    }
    let action = match spec.action {
        AuthorizationAction::Allow => Action::Allow,
        AuthorizationAction::Deny => Action::Deny,
        other => {
            warn(
                "spec.action".into(),
                format!(
                    "ztunnel does not enforce {} policies; this policy is not sent to ztunnel \
                     (only ALLOW and DENY apply at L4)",
                    other.as_str()
                ),
            );
            return None;
        }
    };
    let scope = match selector_labels(&spec.selector) {
        Some(_) => Scope::WorkloadSelector,
        None if ns == root_namespace => Scope::Global,
        None => Scope::Namespace,
    };

    let mut rules = Vec::with_capacity(spec.rules.len());
    for (ri, rule) in spec.rules.iter().enumerate() {
        let path = format!("spec.rules[{ri}]");
        let mut http = Vec::new();
        let mut suspicious = Vec::new();
        let out = translate_rule(ns, rule, &path, &mut http, &mut suspicious);
        for (field, msg) in suspicious {
            warn(field, msg);
        }
        if http.is_empty() {
            rules.push(out);
            continue;
        }
        for (field, attr) in &http {
            let consequence = if action == Action::Allow {
                format!(
                    "rule {ri} of this ALLOW policy is left out, so it can never allow a \
                     connection"
                )
            } else {
                format!(
                    "rule {ri} of this DENY policy is enforced without it and denies more \
                     than written"
                )
            };
            warn(
                field.clone(),
                format!(
                    "`{attr}` needs HTTP, which ztunnel does not parse: {consequence} \
                     (attach the policy to a waypoint with targetRefs to enforce HTTP rules)"
                ),
            );
        }
        if action == Action::Allow {
            continue;
        }
        if matches_everything(&out) {
            warn(
                path,
                "nothing ztunnel can check is left in this DENY rule: it denies every \
                 connection to the workloads the policy applies to"
                    .into(),
            );
        }
        rules.push(out);
    }

    Some(Authorization {
        name: name.clone(),
        namespace: ns.to_string(),
        scope: scope as i32,
        action: action as i32,
        rules,
        dry_run: ap
            .metadata
            .annotations
            .get(DRY_RUN_ANNOTATION)
            .is_some_and(|v| v.eq_ignore_ascii_case("true")),
        extensions: Vec::new(),
    })
}

/// True when every clause has an unconditional match (a rule with no clauses matches all).
fn matches_everything(r: &PbRule) -> bool {
    r.clauses
        .iter()
        .all(|c| c.matches.iter().any(|m| *m == Match::default()))
}

/// Istio's string matcher syntax: `*` any non-empty value, `prefix*`, `*suffix`, else exact.
pub fn string_match(v: &str) -> StringMatch {
    use string_match::MatchType;
    let t = if v == "*" {
        MatchType::Presence(())
    } else if let Some(s) = v.strip_prefix('*') {
        MatchType::Suffix(s.to_string())
    } else if let Some(p) = v.strip_suffix('*') {
        MatchType::Prefix(p.to_string())
    } else {
        MatchType::Exact(v.to_string())
    };
    StringMatch {
        match_type: Some(t),
    }
}

fn strings(v: &[String]) -> Vec<StringMatch> {
    v.iter().map(|s| string_match(s)).collect()
}

/// IP or CIDR → `Address{bytes, prefix length}` (validated when the config was read).
fn addresses(v: &[String]) -> Vec<Address> {
    v.iter()
        .filter_map(|s| parse_cidr(s))
        .map(|(ip, len)| Address {
            address: match ip {
                IpAddr::V4(a) => a.octets().to_vec(),
                IpAddr::V6(a) => a.octets().to_vec(),
            },
            length: u32::from(len),
        })
        .collect()
}

fn ports(v: &[String]) -> Vec<u32> {
    v.iter()
        .filter_map(|s| parse_port(s))
        .map(u32::from)
        .collect()
}

fn service_accounts(v: &[String], policy_ns: &str) -> Vec<ServiceAccountMatch> {
    v.iter()
        .filter_map(|s| parse_service_account(s, policy_ns))
        .map(|(ns, sa)| ServiceAccountMatch {
            namespace: ns.to_string(),
            service_account: sa.to_string(),
        })
        .collect()
}

/// Fields of a source only a waypoint can check.
fn http_source_fields(s: &Source) -> impl Iterator<Item = &'static str> + '_ {
    [
        ("requestPrincipals", &s.request_principals),
        ("notRequestPrincipals", &s.not_request_principals),
        ("remoteIpBlocks", &s.remote_ip_blocks),
        ("notRemoteIpBlocks", &s.not_remote_ip_blocks),
    ]
    .into_iter()
    .filter(|(_, v)| !v.is_empty())
    .map(|(f, _)| f)
}

/// Fields of an operation only a waypoint can check.
fn http_operation_fields(o: &Operation) -> impl Iterator<Item = &'static str> + '_ {
    [
        ("hosts", &o.hosts),
        ("notHosts", &o.not_hosts),
        ("methods", &o.methods),
        ("notMethods", &o.not_methods),
        ("paths", &o.paths),
        ("notPaths", &o.not_paths),
    ]
    .into_iter()
    .filter(|(_, v)| !v.is_empty())
    .map(|(f, _)| f)
}

fn source_match(s: &Source, policy_ns: &str) -> Match {
    Match {
        principals: strings(&s.principals),
        not_principals: strings(&s.not_principals),
        namespaces: strings(&s.namespaces),
        not_namespaces: strings(&s.not_namespaces),
        service_accounts: service_accounts(&s.service_accounts, policy_ns),
        not_service_accounts: service_accounts(&s.not_service_accounts, policy_ns),
        source_ips: addresses(&s.ip_blocks),
        not_source_ips: addresses(&s.not_ip_blocks),
        ..Default::default()
    }
}

/// The Match of an L4 `when` condition; `None` for keys ztunnel cannot evaluate.
fn condition_match(c: &Condition) -> Option<Match> {
    let (v, nv) = (&c.values, &c.not_values);
    let m = match c.key.trim() {
        "source.ip" => Match {
            source_ips: addresses(v),
            not_source_ips: addresses(nv),
            ..Default::default()
        },
        "source.namespace" => Match {
            namespaces: strings(v),
            not_namespaces: strings(nv),
            ..Default::default()
        },
        "source.principal" => Match {
            principals: strings(v),
            not_principals: strings(nv),
            ..Default::default()
        },
        "destination.ip" => Match {
            destination_ips: addresses(v),
            not_destination_ips: addresses(nv),
            ..Default::default()
        },
        "destination.port" => Match {
            destination_ports: ports(v),
            not_destination_ports: ports(nv),
            ..Default::default()
        },
        _ => return None,
    };
    Some(m)
}

/// Translates one rule with every L4 field; HTTP-only fields are left out and reported in
/// `http` as (field path, attribute), likely mistakes in `suspicious` as (field path, message).
fn translate_rule(
    policy_ns: &str,
    rule: &Rule,
    path: &str,
    http: &mut Vec<(String, String)>,
    suspicious: &mut Vec<(String, String)>,
) -> PbRule {
    let mut clauses = Vec::new();
    if let Some(from) = &rule.from {
        let mut matches = Vec::with_capacity(from.len());
        for (i, f) in from.iter().enumerate() {
            let p = format!("{path}.from[{i}].source");
            for attr in http_source_fields(&f.source) {
                http.push((format!("{p}.{attr}"), attr.to_string()));
            }
            for (field, list) in [
                ("principals", &f.source.principals),
                ("notPrincipals", &f.source.not_principals),
            ] {
                for (j, v) in list.iter().enumerate() {
                    if v.starts_with("spiffe://") {
                        suspicious.push((
                            format!("{p}.{field}[{j}]"),
                            format!(
                                "principals are written without `spiffe://` (e.g. \
                                 cluster.local/ns/demo/sa/app); {v:?} never matches"
                            ),
                        ));
                    }
                }
            }
            // A source whose every field needs HTTP still becomes an (unconditional) Match:
            // dropping those fields means "any source" for this entry, as in Istio.
            matches.push(source_match(&f.source, policy_ns));
        }
        clauses.push(Clause { matches });
    }
    if let Some(to) = &rule.to {
        let mut matches = Vec::with_capacity(to.len());
        for (i, t) in to.iter().enumerate() {
            let p = format!("{path}.to[{i}].operation");
            for attr in http_operation_fields(&t.operation) {
                http.push((format!("{p}.{attr}"), attr.to_string()));
            }
            matches.push(Match {
                destination_ports: ports(&t.operation.ports),
                not_destination_ports: ports(&t.operation.not_ports),
                ..Default::default()
            });
        }
        clauses.push(Clause { matches });
    }
    for (i, c) in rule.when.iter().enumerate() {
        match condition_match(c) {
            Some(m) => clauses.push(Clause { matches: vec![m] }),
            None => {
                debug_assert!(!L4_CONDITION_KEYS.contains(&c.key.trim()));
                http.push((format!("{path}.when[{i}]"), c.key.trim().to_string()));
            }
        }
    }
    PbRule { clauses }
}

#[cfg(test)]
mod tests;

//! PeerAuthentication → ztunnel DENY policies, as istiod does it for ambient.
//!
//! In ambient every HBONE connection is mTLS, so a mode only matters for plaintext arriving
//! on a pod's own ports (captured on 15006): STRICT refuses it, PERMISSIVE and DISABLE accept
//! it. STRICT is expressed as a DENY on "no peer identity" (`notPrincipals: [*]`).
//!
//! Because any matching DENY refuses a connection, a mesh-wide STRICT cannot be a GLOBAL DENY
//! that a namespace PERMISSIVE would relax. Instead, as in Istio, the effective mode is worked
//! out per workload (workload policy over namespace policy over mesh policy, UNSET inheriting)
//! and the workload lists what applies to it:
//! - effectively STRICT on every port: the shared `<root>/istio_converted_static_strict`;
//! - a workload policy whose port-level modes make exceptions: that policy converted into
//!   `<ns>/converted_peer_authentication_<name>`, which denies plaintext on its STRICT ports
//!   (`destinationPorts`) or on every port but its PERMISSIVE ones (`notDestinationPorts`);
//! - effectively PERMISSIVE: nothing.
//!
//! When several policies compete at one level (two namespace-wide ones, or two selecting the
//! same pod), the oldest (`metadata.creationTimestamp`, then name) wins, as in Istio.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use mesh_proto::security::{
    string_match, Action, Authorization, Clause, Match, Rule, Scope, StringMatch,
};

use super::authorization::{policy_key, selector_labels, PolicyWarning};
use crate::source::security::{MtlsMode, PeerAuthentication};
use crate::source::ConfigSnapshot;

/// Name of the shared STRICT policy in the root namespace (Istio's; `_` cannot appear in a
/// Kubernetes name, so it never clashes with a user's policy).
pub const STATIC_STRICT_NAME: &str = "istio_converted_static_strict";
/// Prefix of a converted workload PeerAuthentication's name (Istio's).
pub const CONVERTED_PREFIX: &str = "converted_peer_authentication_";

const KIND: &str = "PeerAuthentication";

/// What a workload's effective mode comes down to.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Plan {
    /// STRICT on every port: the static policy.
    Strict,
    /// PERMISSIVE on every port: nothing.
    Permissive,
    /// STRICT except these ports.
    StrictExcept(BTreeSet<u16>),
    /// PERMISSIVE except these STRICT ports.
    PermissiveOnly(BTreeSet<u16>),
}

fn is_strict(mode: MtlsMode) -> bool {
    mode == MtlsMode::Strict
}

/// The plan of workload policy `pa` under an inherited (namespace or mesh) mode.
fn plan(inherited_strict: bool, pa: &PeerAuthentication) -> Plan {
    let strict = match pa.spec.mode() {
        MtlsMode::Strict => true,
        MtlsMode::Permissive | MtlsMode::Disable => false,
        MtlsMode::Unset => inherited_strict,
    };
    // A port left UNSET follows the workload's mode; DISABLE is PERMISSIVE in ambient.
    let ports = |want_strict: bool| -> BTreeSet<u16> {
        pa.spec
            .port_level_mtls
            .iter()
            .flatten()
            .filter(|(_, m)| m.mode != MtlsMode::Unset && is_strict(m.mode) == want_strict)
            .filter_map(|(p, _)| u16::try_from(p.0).ok())
            .collect()
    };
    match (strict, ports(!strict)) {
        (true, e) if e.is_empty() => Plan::Strict,
        (true, e) => Plan::StrictExcept(e),
        (false, s) if s.is_empty() => Plan::Permissive,
        (false, s) => Plan::PermissiveOnly(s),
    }
}

/// Oldest first: creation time (absent = oldest, like Kubernetes' zero time), then name.
fn age_order(a: &PeerAuthentication, b: &PeerAuthentication) -> std::cmp::Ordering {
    let key = |p: &PeerAuthentication| {
        (
            p.metadata.creation_timestamp.clone().unwrap_or_default(),
            p.metadata.name.clone(),
        )
    };
    key(a).cmp(&key(b))
}

/// PeerAuthentications indexed by level.
#[derive(Debug, Default)]
pub struct PeerAuthIndex {
    root_namespace: String,
    /// Whether any PeerAuthentication exists (then the static policy is sent, as in Istio).
    any: bool,
    /// The effective mesh-wide policy.
    mesh: Option<Arc<PeerAuthentication>>,
    /// The effective namespace-wide policy per (non-root) namespace.
    namespaces: BTreeMap<String, Arc<PeerAuthentication>>,
    /// Workload policies per (non-root) namespace, oldest first.
    workloads: BTreeMap<String, Vec<Arc<PeerAuthentication>>>,
}

impl PeerAuthIndex {
    /// Indexes `cfg`'s PeerAuthentications; reports ignored ones in `warnings`.
    pub fn build(
        cfg: &ConfigSnapshot,
        root_namespace: &str,
        warnings: &mut Vec<PolicyWarning>,
    ) -> Self {
        let mut idx = PeerAuthIndex {
            root_namespace: root_namespace.to_string(),
            ..Default::default()
        };
        let mut wide: BTreeMap<String, Vec<Arc<PeerAuthentication>>> = BTreeMap::new();
        for pa in cfg.peer_authentications.values() {
            idx.any = true;
            let ns = pa.metadata.ns();
            match (selector_labels(&pa.spec.selector), ns == root_namespace) {
                (None, _) => wide.entry(ns.to_string()).or_default().push(pa.clone()),
                (Some(_), true) => warnings.push(PolicyWarning {
                    kind: KIND,
                    policy: policy_key(ns, &pa.metadata.name),
                    field: "spec.selector".into(),
                    message: format!(
                        "a PeerAuthentication with a selector in the root namespace \
                         ({root_namespace}) applies to nothing; put it in the namespace of the \
                         workloads it selects"
                    ),
                }),
                (Some(_), false) => idx
                    .workloads
                    .entry(ns.to_string())
                    .or_default()
                    .push(pa.clone()),
            }
        }
        for list in idx.workloads.values_mut() {
            list.sort_by(|a, b| age_order(a, b));
        }
        for (ns, mut list) in wide {
            list.sort_by(|a, b| age_order(a, b));
            let winner = list.remove(0);
            for loser in list {
                warnings.push(PolicyWarning {
                    kind: KIND,
                    policy: policy_key(&ns, &loser.metadata.name),
                    field: "spec".into(),
                    message: format!(
                        "{} {ns}/{} is older and wins; only one {} PeerAuthentication applies",
                        KIND,
                        winner.metadata.name,
                        if ns == root_namespace {
                            "mesh-wide"
                        } else {
                            "namespace-wide"
                        }
                    ),
                });
            }
            if ns == root_namespace {
                idx.mesh = Some(winner);
            } else {
                idx.namespaces.insert(ns, winner);
            }
        }
        idx
    }

    /// The mode a workload in `namespace` inherits: the namespace policy unless UNSET, else
    /// the mesh policy; no policy at all is PERMISSIVE.
    fn inherited_strict(&self, namespace: &str) -> bool {
        let ns_mode = self
            .namespaces
            .get(namespace)
            .map(|p| p.spec.mode())
            .filter(|m| *m != MtlsMode::Unset);
        let mode = ns_mode.or_else(|| self.mesh.as_ref().map(|p| p.spec.mode()));
        mode.is_some_and(is_strict)
    }

    fn static_key(&self) -> String {
        policy_key(&self.root_namespace, STATIC_STRICT_NAME)
    }

    /// The converted policies a pod in `namespace` with `labels` must list.
    pub fn keys_for(&self, namespace: &str, labels: &BTreeMap<String, String>) -> Vec<String> {
        let inherited = self.inherited_strict(namespace);
        let workload = self.workloads.get(namespace).and_then(|list| {
            list.iter().find(|pa| {
                selector_labels(&pa.spec.selector)
                    .is_some_and(|sel| sel.iter().all(|(k, v)| labels.get(k) == Some(v)))
            })
        });
        let plan = match workload {
            Some(pa) => plan(inherited, pa),
            None if inherited => Plan::Strict,
            None => Plan::Permissive,
        };
        match (plan, workload) {
            (Plan::Strict, _) => vec![self.static_key()],
            (Plan::Permissive, _) => Vec::new(),
            (_, Some(pa)) => vec![policy_key(
                namespace,
                &format!("{CONVERTED_PREFIX}{}", pa.metadata.name),
            )],
            (_, None) => Vec::new(),
        }
    }

    /// The Authorization resources: the static STRICT policy when any PeerAuthentication
    /// exists, and every workload policy whose port-level modes make exceptions.
    pub fn resources(&self) -> Vec<(String, Authorization)> {
        let mut out = Vec::new();
        if self.any {
            let rule = Rule {
                clauses: vec![Clause {
                    matches: vec![no_identity()],
                }],
            };
            out.push((
                self.static_key(),
                deny(&self.root_namespace, STATIC_STRICT_NAME, vec![rule]),
            ));
        }
        for (ns, list) in &self.workloads {
            let inherited = self.inherited_strict(ns);
            for pa in list {
                let rule = match plan(inherited, pa) {
                    Plan::Strict | Plan::Permissive => continue,
                    // Plaintext is refused unless it is for one of the PERMISSIVE ports.
                    Plan::StrictExcept(ports) => Rule {
                        clauses: vec![
                            Clause {
                                matches: vec![no_identity()],
                            },
                            Clause {
                                matches: vec![Match {
                                    not_destination_ports: ports
                                        .iter()
                                        .map(|p| u32::from(*p))
                                        .collect(),
                                    ..Default::default()
                                }],
                            },
                        ],
                    },
                    // Plaintext is refused on the STRICT ports only.
                    Plan::PermissiveOnly(ports) => Rule {
                        clauses: vec![Clause {
                            matches: vec![Match {
                                destination_ports: ports.iter().map(|p| u32::from(*p)).collect(),
                                ..no_identity()
                            }],
                        }],
                    },
                };
                let name = format!("{CONVERTED_PREFIX}{}", pa.metadata.name);
                out.push((policy_key(ns, &name), deny(ns, &name, vec![rule])));
            }
        }
        out
    }
}

/// A Match on "the peer presented no identity" (plaintext).
fn no_identity() -> Match {
    Match {
        not_principals: vec![StringMatch {
            match_type: Some(string_match::MatchType::Presence(())),
        }],
        ..Default::default()
    }
}

fn deny(namespace: &str, name: &str, rules: Vec<Rule>) -> Authorization {
    Authorization {
        name: name.to_string(),
        namespace: namespace.to_string(),
        scope: Scope::WorkloadSelector as i32,
        action: Action::Deny as i32,
        rules,
        dry_run: false,
        extensions: Vec::new(),
    }
}

#[cfg(test)]
mod tests;

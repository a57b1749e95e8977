//! The `WaypointAccepted` condition of policies attached with `targetRefs`, as Istio writes it
//! in `status.conditions`: whether a waypoint enforces the policy.
//!
//! Per target (Istio's rules): a `Gateway` is bound when it is an `istio-waypoint` Gateway
//! (else `TargetNotFound`); a `Service` when a waypoint serves it (`AncestorNotBound` when none
//! does, `TargetNotFound` when it does not exist); the `istio-waypoint` `GatewayClass` only from
//! the root namespace (else `Invalid`). One target gives its own reason and message; several
//! are flattened as Istio does: True when any is bound, reason `Accepted`, `PartiallyInvalid`
//! (some bound) or `Invalid` (none), the unbound ones listed in the message. Policies with a
//! `selector` (or neither) are ztunnel's and get no such condition.
//!
//! Istio writes the condition on AuthorizationPolicies; istiod-lite writes it on
//! RequestAuthentications too, which attach to waypoints the same way.

use serde_json::Value;

use super::Condition;
use crate::model::waypoint::service_waypoint;
use crate::source::gateway::{GATEWAY_GROUP, WAYPOINT_CLASS};
use crate::source::security::{AuthorizationPolicy, PolicyTargetReference, RequestAuthentication};
use crate::source::{ConfigSnapshot, ObjectKey};

/// The condition type.
pub const WAYPOINT_ACCEPTED: &str = "WaypointAccepted";

/// Istio's reasons of `WaypointAccepted`.
pub mod reason {
    /// Bound to a waypoint.
    pub const ACCEPTED: &str = "Accepted";
    /// Not enforceable as written.
    pub const INVALID: &str = "Invalid";
    /// Some targets bound, some not.
    pub const PARTIALLY_INVALID: &str = "PartiallyInvalid";
    /// The targeted Service uses no waypoint.
    pub const ANCESTOR_NOT_BOUND: &str = "AncestorNotBound";
    /// The target does not exist (or is not a waypoint).
    pub const TARGET_NOT_FOUND: &str = "TargetNotFound";
}

/// What a policy's `WaypointAccepted` is computed from.
#[derive(Debug, Clone)]
pub struct PolicyRefs {
    /// `AuthorizationPolicy` or `RequestAuthentication`.
    pub kind: &'static str,
    /// The policy's namespace.
    pub namespace: String,
    /// `targetRef` and `targetRefs`.
    pub target_refs: Vec<PolicyTargetReference>,
    /// Why the decoder refused the policy (it then applies nowhere).
    pub invalid: Option<String>,
}

impl PolicyRefs {
    /// Of a valid AuthorizationPolicy.
    pub fn of_authorization(p: &AuthorizationPolicy) -> Self {
        let targets = p.spec.target_ref.iter().chain(&p.spec.target_refs);
        Self::of_valid("AuthorizationPolicy", p.metadata.ns(), targets)
    }

    /// Of a valid RequestAuthentication.
    pub fn of_request_authentication(p: &RequestAuthentication) -> Self {
        let targets = p.spec.target_ref.iter().chain(&p.spec.target_refs);
        Self::of_valid("RequestAuthentication", p.metadata.ns(), targets)
    }

    /// Of a valid policy of either kind in `namespace` (`targets`: targetRef, then targetRefs).
    fn of_valid<'a>(
        kind: &'static str,
        namespace: &str,
        targets: impl Iterator<Item = &'a PolicyTargetReference>,
    ) -> Self {
        PolicyRefs {
            kind,
            namespace: namespace.to_string(),
            target_refs: targets.cloned().collect(),
            invalid: None,
        }
    }

    /// From a `spec` as the API server serves it; targets that do not parse are skipped.
    pub fn from_spec(
        kind: &'static str,
        namespace: &str,
        spec: &Value,
        invalid: Option<String>,
    ) -> Self {
        let one = serde_json::from_value::<PolicyTargetReference>(spec["targetRef"].clone()).ok();
        let many = spec["targetRefs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| serde_json::from_value(t.clone()).ok());
        PolicyRefs {
            kind,
            namespace: namespace.to_string(),
            target_refs: one.into_iter().chain(many).collect(),
            invalid,
        }
    }
}

struct Binding {
    ancestor: String,
    bound: bool,
    reason: &'static str,
    message: String,
}

fn bind(cfg: &ConfigSnapshot, root_ns: &str, p: &PolicyRefs, t: &PolicyTargetReference) -> Binding {
    let ns = t.namespace.as_deref().unwrap_or(&p.namespace);
    let group = t.group.as_deref().unwrap_or("");
    let key = format!("{ns}/{}", t.name);
    let ancestor = format!(
        "{}.{}:{key}",
        t.kind,
        if group.is_empty() { "core" } else { group }
    );
    let (bound, reason, message) = match t.kind.as_str() {
        "Gateway" if group.is_empty() || group == GATEWAY_GROUP => {
            match cfg.gateways.get(&ObjectKey::new(ns, t.name.clone())) {
                Some(g) if g.is_waypoint() => (true, reason::ACCEPTED, format!("bound to {key}")),
                Some(_) => (
                    false,
                    reason::TARGET_NOT_FOUND,
                    format!("Gateway {key} is not an {WAYPOINT_CLASS} Gateway"),
                ),
                None => (
                    false,
                    reason::TARGET_NOT_FOUND,
                    format!("Gateway {key} was not found"),
                ),
            }
        }
        "GatewayClass" if group.is_empty() || group == GATEWAY_GROUP => {
            if p.namespace != root_ns {
                (
                    false,
                    reason::INVALID,
                    format!(
                        "{} must be in the root namespace `{root_ns}` when referencing a GatewayClass",
                        p.kind
                    ),
                )
            } else if t.name != WAYPOINT_CLASS {
                (
                    false,
                    reason::INVALID,
                    format!("GatewayClass {} is not {WAYPOINT_CLASS}", t.name),
                )
            } else {
                (true, reason::ACCEPTED, format!("bound to {WAYPOINT_CLASS}"))
            }
        }
        "Service" if group.is_empty() || group == "core" => {
            match cfg.services.get(&ObjectKey::new(ns, t.name.clone())) {
                Some(svc) => match service_waypoint(cfg, svc) {
                    Some(wp) => (true, reason::ACCEPTED, format!("bound to {wp}")),
                    None => (
                        false,
                        reason::ANCESTOR_NOT_BOUND,
                        format!("Service {key} is not bound to a waypoint"),
                    ),
                },
                None => (
                    false,
                    reason::TARGET_NOT_FOUND,
                    format!("Service {key} was not found"),
                ),
            }
        }
        other => (
            false,
            reason::INVALID,
            format!("targetRef {ancestor}: kind {other} (group {group:?}) is not supported; use Gateway, GatewayClass or Service"),
        ),
    };
    Binding {
        ancestor,
        bound,
        reason,
        message,
    }
}

/// `WaypointAccepted` of policy `p`; `None` for a policy without targetRefs. `root_ns` is the
/// mesh root namespace (GatewayClass targets).
pub fn waypoint_accepted(cfg: &ConfigSnapshot, root_ns: &str, p: &PolicyRefs) -> Option<Condition> {
    if p.target_refs.is_empty() {
        return None;
    }
    if let Some(e) = &p.invalid {
        return Some(Condition {
            kind: WAYPOINT_ACCEPTED,
            status: "False",
            reason: reason::INVALID,
            message: format!("the policy is not applied: {e}"),
        });
    }
    let bindings: Vec<Binding> = p
        .target_refs
        .iter()
        .map(|t| bind(cfg, root_ns, p, t))
        .collect();
    if let [b] = bindings.as_slice() {
        return Some(Condition {
            kind: WAYPOINT_ACCEPTED,
            status: if b.bound { "True" } else { "False" },
            reason: b.reason,
            message: b.message.clone(),
        });
    }
    let bound: Vec<&Binding> = bindings.iter().filter(|b| b.bound).collect();
    let unbound: Vec<&str> = bindings
        .iter()
        .filter(|b| !b.bound)
        .map(|b| b.ancestor.as_str())
        .collect();
    let reason = match (bound.is_empty(), unbound.is_empty()) {
        (false, true) => reason::ACCEPTED,
        (false, false) => reason::PARTIALLY_INVALID,
        (true, _) => reason::INVALID,
    };
    let message = if unbound.is_empty() {
        bound
            .iter()
            .map(|b| b.message.as_str())
            .collect::<Vec<_>>()
            .join("; ")
    } else {
        format!("Invalid targetRefs: {}", unbound.join(", "))
    };
    Some(Condition {
        kind: WAYPOINT_ACCEPTED,
        status: if bound.is_empty() { "False" } else { "True" },
        reason,
        message,
    })
}

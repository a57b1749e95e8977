//! HTTPRoute and GRPCRoute status: one `status.parents[]` entry per parent istiod-lite is
//! responsible for, with Gateway API's `Accepted` and `ResolvedRefs` conditions.
//!
//! Parents: a Service (the GAMMA pattern; the mesh is responsible for every Service parent) and
//! an `istio-waypoint` Gateway. A parentRef to a Gateway of another class, to a Gateway that
//! does not exist, or to another kind is not ours: Gateway API says parents an implementation
//! cannot resolve are left out of the list (another controller may own them).
//!
//! `Accepted` (for that parent): False with `NoMatchingParent` for a missing Service, a `port`
//! the Service does not have, or a `sectionName`/`port` matching no listener of the waypoint;
//! `NotAllowedByListeners` for a route in another namespace than its waypoint (the waypoint's
//! listener allows routes from its own namespace, Gateway API's default); `UnsupportedValue`
//! for a route in another namespace than its Service (consumer routes are not supported yet)
//! or a route the decoder refused (the message says why). [`waypoint_parent_problem`] is the
//! same check the route translation uses, so a route is attached exactly when it is Accepted.
//!
//! `ResolvedRefs` (the same for every parent): False with `InvalidKind` for a backendRef that
//! is not a core Service, `RefNotPermitted` for a cross-namespace backendRef (ReferenceGrant is
//! not supported yet), `BackendNotFound` for a missing Service or port; the first problem's
//! reason, every problem in the message.

use std::collections::BTreeSet;

use serde::Serialize;
use serde_json::Value;

use super::Condition;
use crate::source::gateway::{GrpcRoute, HttpRoute, ObjectRef, RouteFilter, GATEWAY_GROUP};
use crate::source::{ConfigSnapshot, ObjectKey};

/// `controllerName` of the parent entries istiod-lite writes (Istio's, so tools that look for
/// Istio's entries find ours).
pub const CONTROLLER_NAME: &str = "istio.io/gateway-controller";

/// Gateway API route condition reasons.
pub mod reason {
    /// Accepted=True.
    pub const ACCEPTED: &str = "Accepted";
    /// No such parent, or no listener matching sectionName/port.
    pub const NO_MATCHING_PARENT: &str = "NoMatchingParent";
    /// The parent's listeners do not allow this route.
    pub const NOT_ALLOWED_BY_LISTENERS: &str = "NotAllowedByListeners";
    /// The route has a value the implementation does not support.
    pub const UNSUPPORTED_VALUE: &str = "UnsupportedValue";
    /// ResolvedRefs=True.
    pub const RESOLVED_REFS: &str = "ResolvedRefs";
    /// A backendRef of a kind the implementation does not support.
    pub const INVALID_KIND: &str = "InvalidKind";
    /// A backendRef to a Service or port that does not exist.
    pub const BACKEND_NOT_FOUND: &str = "BackendNotFound";
    /// A cross-namespace backendRef without a ReferenceGrant.
    pub const REF_NOT_PERMITTED: &str = "RefNotPermitted";
}

/// What a route's status is computed from, read leniently so that a route the decoder refused
/// still gets one.
#[derive(Debug, Clone, Default)]
pub struct RouteRefs {
    /// The route's namespace.
    pub namespace: String,
    /// `spec.parentRefs`, in order.
    pub parent_refs: Vec<ObjectRef>,
    /// Every backendRef: the rules' and their RequestMirror filters'.
    pub backend_refs: Vec<ObjectRef>,
    /// Why the decoder refused the route (it then applies nowhere).
    pub invalid: Option<String>,
}

impl RouteRefs {
    /// Of a valid HTTPRoute.
    pub fn of_http(r: &HttpRoute) -> Self {
        Self::of_valid(r.metadata.ns(), &r.spec.parent_refs, &r.spec.rules, |x| {
            (&x.backend_refs, &x.filters)
        })
    }

    /// Of a valid GRPCRoute.
    pub fn of_grpc(r: &GrpcRoute) -> Self {
        Self::of_valid(r.metadata.ns(), &r.spec.parent_refs, &r.spec.rules, |x| {
            (&x.backend_refs, &x.filters)
        })
    }

    /// Of a valid route of either kind in `namespace`; `refs` gives a rule's backendRefs and
    /// filters (whose RequestMirror backends count too).
    fn of_valid<R>(
        namespace: &str,
        parent_refs: &[ObjectRef],
        rules: &[R],
        refs: impl Fn(&R) -> (&[ObjectRef], &[RouteFilter]),
    ) -> Self {
        RouteRefs {
            namespace: namespace.to_string(),
            parent_refs: parent_refs.to_vec(),
            backend_refs: rules
                .iter()
                .map(refs)
                .flat_map(|(backend_refs, filters)| {
                    backend_refs.iter().chain(
                        filters
                            .iter()
                            .filter_map(|f| f.request_mirror.as_ref().map(|m| &m.backend_ref)),
                    )
                })
                .cloned()
                .collect(),
            invalid: None,
        }
    }

    /// From a `spec` as the API server serves it; a ref that does not parse is skipped (the
    /// route is then refused by the decoder too, and `invalid` says why).
    pub fn from_spec(namespace: &str, spec: &Value, invalid: Option<String>) -> Self {
        let refs = |v: &Value| -> Vec<ObjectRef> {
            v.as_array()
                .into_iter()
                .flatten()
                .filter_map(|r| serde_json::from_value(r.clone()).ok())
                .collect()
        };
        let mut backend_refs = Vec::new();
        for rule in spec["rules"].as_array().into_iter().flatten() {
            backend_refs.extend(refs(&rule["backendRefs"]));
            for f in rule["filters"].as_array().into_iter().flatten() {
                if let Ok(b) = serde_json::from_value(f["requestMirror"]["backendRef"].clone()) {
                    backend_refs.push(b);
                }
            }
        }
        RouteRefs {
            namespace: namespace.to_string(),
            parent_refs: refs(&spec["parentRefs"]),
            backend_refs,
            invalid,
        }
    }
}

/// The status of a route for one parent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ParentStatus {
    /// Index of the parentRef in `spec.parentRefs` (its first occurrence).
    #[serde(skip)]
    pub index: usize,
    /// The parentRef.
    pub parent_ref: ObjectRef,
    /// `controllerName`.
    pub controller_name: &'static str,
    /// Accepted, then ResolvedRefs.
    pub conditions: Vec<Condition>,
}

/// A parentRef in a form two refs to the same parent compare equal in: defaults filled in.
pub fn parent_key(r: &ObjectRef, route_ns: &str) -> String {
    let group = r.group.as_deref().unwrap_or(GATEWAY_GROUP);
    let kind = r.kind.as_deref().unwrap_or("Gateway");
    let ns = r.namespace.as_deref().unwrap_or(route_ns);
    let section = r.section_name.as_deref().unwrap_or("");
    let port = r.port.map(|p| p.to_string()).unwrap_or_default();
    format!("{group}/{kind}/{ns}/{}/{section}/{port}", r.name)
}

/// Why a route in `route_ns` does not attach to the Gateway parent `p` (a waypoint), as
/// (reason, message); `None` when it attaches.
pub fn waypoint_parent_problem(
    cfg: &ConfigSnapshot,
    route_ns: &str,
    p: &ObjectRef,
) -> Option<(&'static str, String)> {
    let ns = p.namespace.as_deref().unwrap_or(route_ns);
    let Some(gw) = cfg.gateways.get(&ObjectKey::new(ns, p.name.clone())) else {
        return Some((
            reason::NO_MATCHING_PARENT,
            format!("Gateway {ns}/{} not found", p.name),
        ));
    };
    let listener = gw.spec.listeners.iter().any(|l| {
        p.section_name.as_ref().is_none_or(|s| *s == l.name) && p.port.is_none_or(|n| n == l.port)
    });
    if !listener {
        return Some((
            reason::NO_MATCHING_PARENT,
            format!(
                "waypoint {ns}/{} has no listener{}{}",
                p.name,
                p.section_name
                    .as_ref()
                    .map(|s| format!(" named {s}"))
                    .unwrap_or_default(),
                p.port.map(|n| format!(" on port {n}")).unwrap_or_default()
            ),
        ));
    }
    if ns != route_ns {
        return Some((
            reason::NOT_ALLOWED_BY_LISTENERS,
            format!(
                "the listeners of waypoint {ns}/{} allow routes from namespace {ns} only",
                p.name
            ),
        ));
    }
    None
}

fn accepted(cfg: &ConfigSnapshot, r: &RouteRefs, p: &ObjectRef) -> Option<Condition> {
    let ns = p.namespace.as_deref().unwrap_or(&r.namespace);
    let problem = if p.is_service("Gateway") {
        if ns != r.namespace {
            Some((
                reason::UNSUPPORTED_VALUE,
                format!(
                    "Service {ns}/{} is in another namespace than the route: consumer routes are not supported yet",
                    p.name
                ),
            ))
        } else {
            missing_service(cfg, ns, p, reason::NO_MATCHING_PARENT)
        }
    } else if p.is_gateway() {
        // Only waypoints are ours; another class's Gateway has its own controller.
        cfg.gateways
            .get(&ObjectKey::new(ns, p.name.clone()))
            .filter(|g| g.is_waypoint())?;
        waypoint_parent_problem(cfg, &r.namespace, p)
    } else {
        return None;
    };
    let problem = problem.or_else(|| {
        r.invalid.as_ref().map(|e| {
            (
                reason::UNSUPPORTED_VALUE,
                format!("the route is not applied: {e}"),
            )
        })
    });
    Some(match problem {
        None => Condition {
            kind: "Accepted",
            status: "True",
            reason: reason::ACCEPTED,
            message: "Route was valid".into(),
        },
        Some((reason, message)) => Condition {
            kind: "Accepted",
            status: "False",
            reason,
            message,
        },
    })
}

/// When the Service `r` names in `ns`, or the `port` it names, does not exist: `reason` and
/// what is missing.
fn missing_service(
    cfg: &ConfigSnapshot,
    ns: &str,
    r: &ObjectRef,
    reason: &'static str,
) -> Option<(&'static str, String)> {
    match cfg.services.get(&ObjectKey::new(ns, r.name.clone())) {
        None => Some((reason, format!("Service {ns}/{} not found", r.name))),
        Some(svc) => match r.port {
            Some(port) if !svc.spec.ports.iter().any(|sp| sp.port == port) => Some((
                reason,
                format!("Service {ns}/{} has no port {port}", r.name),
            )),
            _ => None,
        },
    }
}

fn describe(b: &ObjectRef) -> String {
    let group = b
        .group
        .as_deref()
        .filter(|g| !g.is_empty())
        .unwrap_or("core");
    format!(
        "{group}/{} {}",
        b.kind.as_deref().unwrap_or("Service"),
        b.name
    )
}

fn resolved_refs(cfg: &ConfigSnapshot, r: &RouteRefs) -> Condition {
    let mut problems: Vec<(&'static str, String)> = Vec::new();
    for b in &r.backend_refs {
        let ns = b.namespace.as_deref().unwrap_or(&r.namespace);
        let problem = if !b.is_service("Service") {
            Some((
                reason::INVALID_KIND,
                format!(
                    "backendRef {}: only core Services can be backends",
                    describe(b)
                ),
            ))
        } else if ns != r.namespace {
            Some((
                reason::REF_NOT_PERMITTED,
                format!(
                    "backendRef to Service {ns}/{}: a cross-namespace reference needs a ReferenceGrant, which is not supported yet",
                    b.name
                ),
            ))
        } else {
            missing_service(cfg, ns, b, reason::BACKEND_NOT_FOUND)
        };
        if let Some(p) = problem {
            if !problems.contains(&p) {
                problems.push(p);
            }
        }
    }
    match problems.first() {
        None => Condition {
            kind: "ResolvedRefs",
            status: "True",
            reason: reason::RESOLVED_REFS,
            message: "All references resolved".into(),
        },
        Some((reason, _)) => Condition {
            kind: "ResolvedRefs",
            status: "False",
            reason,
            message: problems
                .iter()
                .map(|(_, m)| m.as_str())
                .collect::<Vec<_>>()
                .join("; "),
        },
    }
}

/// The status of route `r` for each parent istiod-lite is responsible for, in parentRef order
/// (a parent referenced twice is reported once).
pub fn parent_statuses(cfg: &ConfigSnapshot, r: &RouteRefs) -> Vec<ParentStatus> {
    let resolved = resolved_refs(cfg, r);
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for (index, p) in r.parent_refs.iter().enumerate() {
        if !seen.insert(parent_key(p, &r.namespace)) {
            continue;
        }
        let Some(accepted) = accepted(cfg, r, p) else {
            continue;
        };
        out.push(ParentStatus {
            index,
            parent_ref: p.clone(),
            controller_name: CONTROLLER_NAME,
            conditions: vec![accepted, resolved.clone()],
        });
    }
    out
}

/// A route and its parents' status (what `/debug/routes` shows).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RouteStatus {
    /// `HTTPRoute` or `GRPCRoute`.
    pub kind: &'static str,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// One entry per parent we are responsible for.
    pub parents: Vec<ParentStatus>,
}

/// The status of every valid route of the config (routes the decoder refused are reported as
/// config errors instead).
pub fn route_statuses(cfg: &ConfigSnapshot) -> Vec<RouteStatus> {
    let http = cfg
        .http_routes
        .iter()
        .map(|(k, r)| ("HTTPRoute", k, RouteRefs::of_http(r)));
    let grpc = cfg
        .grpc_routes
        .iter()
        .map(|(k, r)| ("GRPCRoute", k, RouteRefs::of_grpc(r)));
    http.chain(grpc)
        .map(|(kind, key, refs)| RouteStatus {
            kind,
            namespace: key.namespace.clone(),
            name: key.name.clone(),
            parents: parent_statuses(cfg, &refs),
        })
        .collect()
}

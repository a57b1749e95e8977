//! Route and policy status computed from the config (what the leader writes and
//! `/debug/routes` shows), and the route translation agreeing with it.

use serde_json::json;

use super::policy::{reason as preason, waypoint_accepted, PolicyRefs};
use super::route::{parent_statuses, reason, route_statuses, RouteRefs, CONTROLLER_NAME};
use super::Condition;
use crate::model::routes;
use crate::model::test_fixtures::{self, params, waypoint_gateway_yaml};
use crate::source::{ConfigSnapshot, ObjectKey};

const BASE: &str = concat!(
    r#"
kind: Namespace
metadata: {name: app}
---
"#,
    waypoint_gateway_yaml!(),
    r#"---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: ingress, namespace: app}
spec: {gatewayClassName: istio, listeners: [{name: http, port: 80, protocol: HTTP}]}
---
kind: Service
metadata: {name: echo, namespace: app, labels: {istio.io/use-waypoint: waypoint}}
spec: {clusterIP: 10.1.0.1, selector: {app: echo}, ports: [{name: http, port: 80}]}
---
kind: Service
metadata: {name: plain, namespace: app}
spec: {clusterIP: 10.1.0.2, selector: {app: plain}, ports: [{name: http, port: 80}]}
---
kind: Service
metadata: {name: other, namespace: team-b, labels: {istio.io/use-waypoint: waypoint}}
spec: {clusterIP: 10.1.0.3, selector: {app: other}, ports: [{name: http, port: 80}]}
"#
);

/// `BASE` and `extra`.
fn cfg(extra: &str) -> ConfigSnapshot {
    test_fixtures::cfg(&format!("{BASE}---\n{extra}"))
}

fn route(ns: &str, parents: &str, backends: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: r, namespace: {ns}}}\nspec:\n  parentRefs: {parents}\n  rules: [{{backendRefs: {backends}}}]\n"
    )
}

fn cond(
    kind: &'static str,
    status: &'static str,
    reason: &'static str,
    message: &str,
) -> Condition {
    Condition {
        kind,
        status,
        reason,
        message: message.into(),
    }
}

fn statuses(c: &ConfigSnapshot, ns: &str) -> Vec<(String, Vec<Condition>)> {
    let r = &c.http_routes[&ObjectKey::new(ns, "r")];
    parent_statuses(c, &RouteRefs::of_http(r))
        .into_iter()
        .map(|p| {
            assert_eq!(p.controller_name, CONTROLLER_NAME);
            (p.parent_ref.name, p.conditions)
        })
        .collect()
}

fn accepted() -> Condition {
    cond("Accepted", "True", reason::ACCEPTED, "Route was valid")
}
fn resolved() -> Condition {
    cond(
        "ResolvedRefs",
        "True",
        reason::RESOLVED_REFS,
        "All references resolved",
    )
}

#[test]
fn service_parents_accepted_or_not_and_missing_backends() {
    let c = cfg(&route(
        "app",
        r#"[{group: "", kind: Service, name: echo, port: 80}, {group: "", kind: Service, name: echo, port: 80}, {group: "", kind: Service, name: nope}, {group: "", kind: Service, name: plain, port: 81}, {name: ingress}, {name: missing-gw}]"#,
        "[{name: echo, port: 80}, {name: gone, port: 80}, {name: echo, port: 9999}]",
    ));
    let refs = cond(
        "ResolvedRefs",
        "False",
        reason::BACKEND_NOT_FOUND,
        "Service app/gone not found; Service app/echo has no port 9999",
    );
    assert_eq!(
        statuses(&c, "app"),
        vec![
            // The repeated parentRef is reported once; Gateways of another class, or missing,
            // are not ours and get no entry.
            ("echo".into(), vec![accepted(), refs.clone()]),
            (
                "nope".into(),
                vec![
                    cond(
                        "Accepted",
                        "False",
                        reason::NO_MATCHING_PARENT,
                        "Service app/nope not found"
                    ),
                    refs.clone()
                ]
            ),
            (
                "plain".into(),
                vec![
                    cond(
                        "Accepted",
                        "False",
                        reason::NO_MATCHING_PARENT,
                        "Service app/plain has no port 81"
                    ),
                    refs
                ]
            ),
        ]
    );
}

#[test]
fn waypoint_parents_follow_listeners_and_namespaces_and_routes_agree() {
    let ok = cfg(&route(
        "app",
        "[{name: waypoint, sectionName: mesh}]",
        "[{name: echo, port: 80}]",
    ));
    assert_eq!(
        statuses(&ok, "app"),
        vec![("waypoint".into(), vec![accepted(), resolved()])]
    );

    let bad_section = cfg(&route(
        "app",
        "[{name: waypoint, sectionName: http}]",
        "[{name: echo, port: 80}]",
    ));
    assert_eq!(
        statuses(&bad_section, "app")[0].1[0],
        cond(
            "Accepted",
            "False",
            reason::NO_MATCHING_PARENT,
            "waypoint app/waypoint has no listener named http"
        )
    );
    let bad_port = cfg(&route(
        "app",
        "[{name: waypoint, port: 8080}]",
        "[{name: echo, port: 80}]",
    ));
    assert_eq!(
        statuses(&bad_port, "app")[0].1[0].reason,
        reason::NO_MATCHING_PARENT
    );

    // A route from another namespace: the waypoint's listener allows its own namespace only.
    let other_ns = cfg(&route(
        "team-b",
        "[{name: waypoint, namespace: app}]",
        "[{name: other, port: 80}]",
    ));
    assert_eq!(
        statuses(&other_ns, "team-b")[0].1[0],
        cond(
            "Accepted",
            "False",
            reason::NOT_ALLOWED_BY_LISTENERS,
            "the listeners of waypoint app/waypoint allow routes from namespace app only"
        )
    );

    // The translation attaches exactly the Accepted ones.
    let rules = |c: &ConfigSnapshot| -> usize {
        routes::translate(c, &params())[&ObjectKey::new("app", "waypoint")]
            .iter()
            .map(|(_, r)| r.ports.iter().map(|p| p.rules.len()).sum::<usize>())
            .sum()
    };
    assert_eq!(
        rules(&ok),
        1,
        "attached to the one Service of the waypoint in app"
    );
    assert_eq!(rules(&bad_section), 0);
    assert_eq!(rules(&bad_port), 0);
    assert_eq!(
        rules(&other_ns),
        0,
        "a route from team-b does not reach app's waypoint"
    );
}

#[test]
fn refused_routes_report_kind_and_reference_problems() {
    let c = cfg("");
    // As served by the API server: the decoder refuses it (a non-Service backend), so only the
    // lenient view exists.
    let spec = json!({
        "parentRefs": [{"group": "", "kind": "Service", "name": "echo"}, {"group": "", "kind": "Service", "name": "other", "namespace": "team-b"}],
        "rules": [{"backendRefs": [
            {"group": "example.com", "kind": "Bucket", "name": "b"},
            {"name": "other", "namespace": "team-b", "port": 80},
        ]}],
    });
    let refs = RouteRefs::from_spec(
        "app",
        &spec,
        Some("spec.rules[0].backendRefs[0]: only Service backends are supported".into()),
    );
    let got = parent_statuses(&c, &refs);
    assert_eq!(got.len(), 2);
    assert_eq!(
        got[0].conditions,
        vec![
            cond(
                "Accepted",
                "False",
                reason::UNSUPPORTED_VALUE,
                "the route is not applied: spec.rules[0].backendRefs[0]: only Service backends are supported"
            ),
            cond(
                "ResolvedRefs",
                "False",
                reason::INVALID_KIND,
                "backendRef example.com/Bucket b: only core Services can be backends; backendRef to Service team-b/other: a cross-namespace reference needs a ReferenceGrant, which is not supported yet"
            ),
        ]
    );
    assert_eq!(got[1].conditions[0].reason, reason::UNSUPPORTED_VALUE);
    assert!(got[1].conditions[0].message.contains("consumer routes"));
}

#[test]
fn debug_view_lists_every_route() {
    let c = cfg(&route(
        "app",
        r#"[{group: "", kind: Service, name: echo}]"#,
        "[{name: echo, port: 80}]",
    ));
    let all = route_statuses(&c);
    assert_eq!(all.len(), 1);
    let v = serde_json::to_value(&all).unwrap();
    assert_eq!(v[0]["kind"], "HTTPRoute");
    assert_eq!(v[0]["parents"][0]["controllerName"], CONTROLLER_NAME);
    assert_eq!(v[0]["parents"][0]["parentRef"]["name"], "echo");
    assert_eq!(v[0]["parents"][0]["conditions"][1]["type"], "ResolvedRefs");
}

fn policy(targets: &str) -> PolicyRefs {
    PolicyRefs::from_spec(
        "AuthorizationPolicy",
        "app",
        &serde_json::from_str(&format!(r#"{{"targetRefs": {targets}}}"#)).unwrap(),
        None,
    )
}

#[test]
fn waypoint_accepted_per_istio() {
    let c = cfg("");
    let wa = |targets: &str| waypoint_accepted(&c, "istio-system", &policy(targets)).unwrap();
    let expect = |status, reason, message: &str| cond("WaypointAccepted", status, reason, message);

    assert_eq!(
        wa(r#"[{"kind": "Service", "group": "", "name": "echo"}]"#),
        expect("True", preason::ACCEPTED, "bound to app/waypoint")
    );
    assert_eq!(
        wa(r#"[{"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": "waypoint"}]"#),
        expect("True", preason::ACCEPTED, "bound to app/waypoint")
    );
    assert_eq!(
        wa(r#"[{"kind": "Service", "group": "", "name": "plain"}]"#),
        expect(
            "False",
            preason::ANCESTOR_NOT_BOUND,
            "Service app/plain is not bound to a waypoint"
        )
    );
    assert_eq!(
        wa(r#"[{"kind": "Service", "group": "", "name": "nope"}]"#),
        expect(
            "False",
            preason::TARGET_NOT_FOUND,
            "Service app/nope was not found"
        )
    );
    assert_eq!(
        wa(r#"[{"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": "ingress"}]"#),
        expect(
            "False",
            preason::TARGET_NOT_FOUND,
            "Gateway app/ingress is not an istio-waypoint Gateway"
        )
    );
    assert_eq!(
        wa(r#"[{"kind": "GatewayClass", "group": "gateway.networking.k8s.io", "name": "istio-waypoint"}]"#),
        expect(
            "False",
            preason::INVALID,
            "AuthorizationPolicy must be in the root namespace `istio-system` when referencing a GatewayClass"
        )
    );
    // Several targets are flattened as Istio does.
    assert_eq!(
        wa(
            r#"[{"kind": "Service", "group": "", "name": "echo"}, {"kind": "Service", "group": "", "name": "nope"}]"#
        ),
        expect(
            "True",
            preason::PARTIALLY_INVALID,
            "Invalid targetRefs: Service.core:app/nope"
        )
    );
    assert_eq!(
        wa(
            r#"[{"kind": "Service", "group": "", "name": "plain"}, {"kind": "Service", "group": "", "name": "nope"}]"#
        ),
        expect(
            "False",
            preason::INVALID,
            "Invalid targetRefs: Service.core:app/plain, Service.core:app/nope"
        )
    );
    // A selector policy is ztunnel's: no condition. A refused one says why.
    assert!(waypoint_accepted(
        &c,
        "istio-system",
        &PolicyRefs::from_spec(
            "AuthorizationPolicy",
            "app",
            &json!({"selector": {"matchLabels": {"a": "b"}}}),
            None
        )
    )
    .is_none());
    let refused = PolicyRefs::from_spec(
        "RequestAuthentication",
        "app",
        &json!({"targetRefs": [{"kind": "Service", "group": "", "name": "echo"}]}),
        Some("spec.jwtRules[0].issuer: required field is missing".into()),
    );
    assert_eq!(
        waypoint_accepted(&c, "istio-system", &refused).unwrap(),
        expect(
            "False",
            preason::INVALID,
            "the policy is not applied: spec.jwtRules[0].issuer: required field is missing"
        )
    );
}

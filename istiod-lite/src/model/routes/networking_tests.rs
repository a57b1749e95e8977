//! VirtualService / DestinationRule / RequestMirror translation into ServiceRoutes.

use super::*;
use crate::model::test_fixtures::{ambient_app_yaml, cfg, echo_pods_yaml, params};
use mesh_proto::route::{consistent_hash, load_balancer};

const BASE: &str = concat!(
    ambient_app_yaml!(),
    "---\n",
    echo_pods_yaml!(),
    r#"---
kind: Service
metadata: {name: echo, namespace: app}
spec: {clusterIP: 10.1.0.1, selector: {app: echo}, ports: [{name: http, port: 80, targetPort: 8080}, {name: http-admin, port: 81, targetPort: 8081}]}
---
kind: Service
metadata: {name: shadow, namespace: app}
spec: {clusterIP: 10.1.0.5, selector: {app: echo, version: v2}, ports: [{port: 9000, targetPort: 8080}]}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: echo, namespace: app}
spec:
  host: echo
  trafficPolicy:
    loadBalancer: {simple: LEAST_REQUEST}
    connectionPool: {tcp: {maxConnections: 10}, http: {http1MaxPendingRequests: 2}}
    portLevelSettings: [{port: {number: 81}, loadBalancer: {simple: RANDOM}}]
  subsets:
  - {name: v1, labels: {version: v1}}
  - name: v2
    labels: {version: v2}
    trafficPolicy:
      loadBalancer: {consistentHash: {httpHeaderName: x-user}}
      outlierDetection: {consecutive5xxErrors: 3, baseEjectionTime: 2s}
"#
);

const VS: &str = r#"
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: echo, namespace: app}
spec:
  hosts: [echo.app.svc.cluster.local]
  http:
  - match: [{headers: {x-canary: {prefix: "tr"}}, uri: {prefix: /api}}]
    route: [{destination: {host: echo, subset: v2}}]
    fault: {abort: {httpStatus: 418, percentage: {value: 25}}, delay: {fixedDelay: 50ms}}
  - match: [{port: 81}]
    route: [{destination: {host: echo, subset: v1}}]
  - route:
    - {destination: {host: echo, subset: v1}, weight: 90}
    - {destination: {host: echo, subset: v2}, weight: 10}
    retries: {attempts: 4, perTryTimeout: 300ms, retryOn: "gateway-error,reset,409"}
    timeout: 2s
    mirror: {host: shadow}
    mirrorPercentage: {value: 30}
    headers: {request: {set: {x-a: b}}, response: {remove: [server]}}
    rewrite: {uri: /v2, authority: new.example}
"#;

fn routes_of(c: &ConfigSnapshot) -> Vec<(String, ServiceRoutes)> {
    translate(c, &params())
        .remove(&ObjectKey::new("app", "waypoint"))
        .unwrap()
}

fn echo(c: &ConfigSnapshot) -> ServiceRoutes {
    routes_of(c)
        .into_iter()
        .find(|(n, _)| n == "app/echo.app.svc.cluster.local")
        .unwrap()
        .1
}

#[test]
fn virtual_service_rules_are_ordered_with_subsets_and_policies() {
    let c = cfg(&format!("{BASE}{VS}"));
    let echo = echo(&c);
    let p80 = &echo.ports[0];
    assert!(p80.ordered);
    assert_eq!(p80.protocol(), Protocol::Http1);
    // The port-81-only rule is not on port 80.
    assert_eq!(p80.rules.len(), 2);
    let r0 = &p80.rules[0];
    assert_eq!(r0.kind, "VirtualService");
    assert_eq!(r0.rule_index, 0);
    let m = &r0.matches[0];
    assert_eq!(
        m.path.as_ref().unwrap().kind(),
        path_match::Kind::StringPrefix
    );
    assert_eq!(m.headers[0].value, "tr.*");
    assert!(m.headers[0].regex);
    // Subset v2: only the v2 pod, with the subset's hash and outlier detection merged over
    // the top-level pool.
    let b = &r0.backends[0];
    assert_eq!(b.subset, "v2");
    assert_eq!(b.weight, 100);
    assert_eq!(b.endpoints.len(), 1);
    assert_eq!(b.endpoints[0].address, vec![10, 0, 0, 2]);
    let pol = b.policy.as_ref().unwrap();
    match &pol
        .load_balancer
        .as_ref()
        .unwrap()
        .consistent_hash
        .as_ref()
        .unwrap()
        .key
    {
        Some(consistent_hash::Key::HttpHeaderName(h)) => assert_eq!(h, "x-user"),
        other => panic!("{other:?}"),
    }
    let od = pol.outlier_detection.as_ref().unwrap();
    assert_eq!(
        (
            od.consecutive_5xx_errors,
            od.base_ejection_time_ms,
            od.interval_ms,
            od.max_ejection_percent
        ),
        (3, 2000, 10_000, 10)
    );
    let pool = pol.connection_pool.as_ref().unwrap();
    assert_eq!(
        (pool.max_connections, pool.http1_max_pending_requests),
        (10, 2)
    );
    let f = r0.fault.as_ref().unwrap();
    assert_eq!(f.abort.as_ref().unwrap().http_status, 418);
    assert_eq!(f.abort.as_ref().unwrap().percent, 25.0);
    assert_eq!(f.delay.as_ref().unwrap().fixed_delay_ms, 50);
    assert_eq!(
        f.delay.as_ref().unwrap().percent,
        100.0,
        "no percentage = every request"
    );
    // No `retries`: Istio's default policy.
    let rt = r0.retry.as_ref().unwrap();
    assert_eq!((rt.attempts, rt.codes.clone()), (2, vec![503]));
    assert!(rt.retry_on.as_ref().unwrap().connect_failure);

    let r1 = &p80.rules[1];
    assert_eq!(r1.rule_index, 2);
    assert_eq!(
        r1.backends
            .iter()
            .map(|b| (b.subset.as_str(), b.weight))
            .collect::<Vec<_>>(),
        vec![("v1", 90), ("v2", 10)]
    );
    let v1 = &r1.backends[0];
    assert_eq!(v1.endpoints[0].address, vec![10, 0, 0, 1]);
    assert_eq!(
        v1.policy
            .as_ref()
            .unwrap()
            .load_balancer
            .as_ref()
            .unwrap()
            .simple(),
        load_balancer::Simple::LeastRequest
    );
    assert_eq!(r1.request_timeout_ms, 2000);
    let rt = r1.retry.as_ref().unwrap();
    assert_eq!(
        (rt.attempts, rt.per_try_timeout_ms, rt.codes.clone()),
        (4, 300, vec![409])
    );
    let on = rt.retry_on.as_ref().unwrap();
    assert!(on.gateway_error && on.reset && !on.server_error && !on.connect_failure);
    let kinds: Vec<&str> = r1
        .filters
        .iter()
        .map(|f| match f.kind.as_ref().unwrap() {
            filter::Kind::RequestHeaderModifier(_) => "req",
            filter::Kind::ResponseHeaderModifier(_) => "resp",
            filter::Kind::UrlRewrite(rw) => {
                assert_eq!(rw.hostname, "new.example");
                assert_eq!(
                    rw.path.as_ref().unwrap().kind(),
                    path_modifier::Kind::LiteralPrefix
                );
                "rewrite"
            }
            filter::Kind::RequestMirror(m) => {
                let b = m.backend.as_ref().unwrap();
                // No port given: the target's only port.
                assert_eq!(
                    (b.hostname.as_str(), b.port),
                    ("shadow.app.svc.cluster.local", 9000)
                );
                assert_eq!(m.percent, 30.0);
                "mirror"
            }
            filter::Kind::RequestRedirect(_) => "redirect",
        })
        .collect();
    assert_eq!(kinds, vec!["req", "resp", "rewrite", "mirror"]);

    // Port 81: every rule, the port rule in its place; port-level RANDOM for the
    // whole-service default backend.
    let p81 = &echo.ports[1];
    assert_eq!(p81.rules.len(), 3);
    assert_eq!(p81.rules[1].rule_index, 1);
    assert_eq!(p81.rules[1].backends[0].subset, "v1");
    assert_eq!(
        p81.default_backend
            .as_ref()
            .unwrap()
            .policy
            .as_ref()
            .unwrap()
            .load_balancer
            .as_ref()
            .unwrap()
            .simple(),
        load_balancer::Simple::Random
    );
}

#[test]
fn httproute_wins_over_a_virtual_service() {
    let c = cfg(&format!("{BASE}{VS}---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: r, namespace: app}}\nspec:\n  parentRefs: [{{group: \"\", kind: Service, name: echo, port: 80}}]\n  rules: [{{backendRefs: [{{name: echo, port: 80}}]}}]\n"));
    let echo = echo(&c);
    assert!(!echo.ports[0].ordered);
    assert_eq!(echo.ports[0].rules.len(), 1);
    assert_eq!(echo.ports[0].rules[0].kind, "HTTPRoute");
    // The HTTPRoute's backend still gets the DestinationRule's policy.
    assert!(echo.ports[0].rules[0].backends[0].policy.is_some());
    // Port 81 has no HTTPRoute: the VirtualService applies there.
    assert!(echo.ports[1].ordered);
}

#[test]
fn unknown_subset_has_no_endpoints_and_gateway_bound_vs_is_ignored() {
    let vs = r#"
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: echo, namespace: app}
spec:
  hosts: [echo]
  http: [{route: [{destination: {host: echo, subset: nope}}]}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ingress, namespace: app}
spec:
  hosts: [shadow]
  gateways: [istio-system/ingress]
  http: [{route: [{destination: {host: echo}}]}]
"#;
    let c = cfg(&format!("{BASE}{vs}"));
    let all = routes_of(&c);
    let echo = &all.iter().find(|(n, _)| n.contains("/echo.")).unwrap().1;
    assert!(echo.ports[0].rules[0].backends[0].endpoints.is_empty());
    let shadow = &all.iter().find(|(n, _)| n.contains("/shadow.")).unwrap().1;
    assert!(!shadow.ports[0].ordered);
    assert!(shadow.ports[0].rules.is_empty());
}

#[test]
fn httproute_request_mirror() {
    let c = cfg(&format!("{BASE}---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: r, namespace: app}}\nspec:\n  parentRefs: [{{group: \"\", kind: Service, name: echo, port: 80}}]\n  rules:\n  - backendRefs: [{{name: echo, port: 80}}]\n    filters: [{{type: RequestMirror, requestMirror: {{backendRef: {{name: shadow, port: 9000}}, fraction: {{numerator: 1, denominator: 4}}}}}}]\n"));
    let echo = echo(&c);
    let f = &echo.ports[0].rules[0].filters[0];
    match f.kind.as_ref().unwrap() {
        filter::Kind::RequestMirror(m) => {
            assert_eq!(m.percent, 25.0);
            let b = m.backend.as_ref().unwrap();
            assert_eq!(b.name, "shadow");
            assert_eq!(b.endpoints.len(), 1);
        }
        other => panic!("{other:?}"),
    }
}

//! The status writer: exact merge patches, only while leading, nothing when the status is
//! already there; end to end from the Kubernetes source through the fake API server.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::watch;

use super::*;
use crate::source::kube::fake::{self, list, Reply};
use crate::source::kube::{KubeSource, KubeSourceOptions, WatchedKind};

const NOW: &str = "2030-01-01T00:00:00Z";
const OURS: &str = "istio.io/gateway-controller";

fn kinds() -> Vec<WatchedKind> {
    [
        "Service",
        "Gateway",
        "HTTPRoute",
        "GRPCRoute",
        "AuthorizationPolicy",
        "RequestAuthentication",
    ]
    .iter()
    .map(|k| *WATCHED_KINDS.iter().find(|w| w.kind == *k).unwrap())
    .collect()
}

fn meta(name: &str, generation: i64, rv: &str) -> Value {
    json!({"name": name, "namespace": "app", "generation": generation, "resourceVersion": rv, "uid": format!("uid-{name}")})
}

fn services() -> Vec<Value> {
    vec![
        json!({"metadata": {"name": "echo", "namespace": "app", "resourceVersion": "1", "labels": {"istio.io/use-waypoint": "waypoint"}},
               "spec": {"clusterIP": "10.1.0.1", "selector": {"app": "echo"}, "ports": [{"name": "http", "port": 80}]}}),
        json!({"metadata": {"name": "plain", "namespace": "app", "resourceVersion": "2"},
               "spec": {"clusterIP": "10.1.0.2", "selector": {"app": "plain"}, "ports": [{"name": "http", "port": 80}]}}),
    ]
}

fn gateways() -> Vec<Value> {
    vec![json!({"metadata": meta("waypoint", 1, "3"),
               "spec": {"gatewayClassName": "istio-waypoint", "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]}})]
}

fn cond(t: &str, s: &str, r: &str, m: &str, g: Value, time: &str) -> Value {
    json!({"type": t, "status": s, "reason": r, "message": m, "observedGeneration": g, "lastTransitionTime": time})
}

fn theirs() -> Value {
    json!({"parentRef": {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "eg", "namespace": "infra"},
           "controllerName": "example.com/gateway-controller",
           "conditions": [cond("Accepted", "True", "Accepted", "theirs", json!(1), "2024-01-01T00:00:00Z")]})
}

const ECHO_REF: &str = r#"{"group": "", "kind": "Service", "name": "echo", "port": 80}"#;
const WP_REF: &str =
    r#"{"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "waypoint"}"#;

fn r(s: &str) -> Value {
    serde_json::from_str(s).unwrap()
}

/// r1 (generation 3): parent echo (ours, shown as of generation 1, all fine then) and eg
/// (another controller's, kept), a stale entry of ours for a parent no longer in the spec, and
/// a backend that does not exist now. r2: already shows exactly what we compute.
fn http_routes() -> Vec<Value> {
    vec![
        json!({"metadata": meta("r1", 3, "11"),
        "spec": {"parentRefs": [r(ECHO_REF), {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "eg", "namespace": "infra"}],
                 "rules": [{"backendRefs": [{"name": "echo", "port": 80}, {"name": "gone", "port": 80}]}]},
        "status": {"parents": [
            theirs(),
            {"parentRef": {"group": "", "kind": "Service", "name": "old"}, "controllerName": OURS,
             "conditions": [cond("Accepted", "True", "Accepted", "Route was valid", json!(1), "2024-02-02T00:00:00Z")]},
            {"parentRef": r(ECHO_REF), "controllerName": OURS, "conditions": [
                cond("Accepted", "True", "Accepted", "Route was valid", json!(1), "2024-02-02T00:00:00Z"),
                cond("ResolvedRefs", "True", "ResolvedRefs", "All references resolved", json!(1), "2024-02-02T00:00:00Z"),
            ]},
        ]}}),
        json!({"metadata": meta("r2", 1, "12"),
        "spec": {"parentRefs": [r(WP_REF)], "rules": [{"backendRefs": [{"name": "echo", "port": 80}]}]},
        "status": {"parents": [
            {"parentRef": r(WP_REF), "controllerName": OURS, "conditions": [
                cond("Accepted", "True", "Accepted", "Route was valid", json!(1), "2024-02-02T00:00:00Z"),
                cond("ResolvedRefs", "True", "ResolvedRefs", "All references resolved", json!(1), "2024-02-02T00:00:00Z"),
            ]},
        ]}}),
    ]
}

fn grpc_routes() -> Vec<Value> {
    vec![json!({"metadata": meta("g1", 1, "13"),
                "spec": {"parentRefs": [r(WP_REF)], "rules": [{"backendRefs": [{"name": "echo", "port": 80}]}]}})]
}

fn authorization_policies() -> Vec<Value> {
    vec![
        // Targets a Service without a waypoint; carries another condition type, kept.
        json!({"metadata": meta("ap1", 2, "21"),
               "spec": {"targetRefs": [{"kind": "Service", "group": "", "name": "plain"}], "action": "DENY",
                        "rules": [{"to": [{"operation": {"methods": ["POST"]}}]}]},
               "status": {"conditions": [cond("ZtunnelAccepted", "True", "Accepted", "attached to ztunnel", json!("1"), "2024-01-01T00:00:00Z")]}}),
        // A selector policy: none of our business.
        json!({"metadata": meta("ap-selector", 1, "22"),
               "spec": {"selector": {"matchLabels": {"app": "echo"}}}}),
    ]
}

fn request_authentications() -> Vec<Value> {
    // Already shows what we compute: no write.
    vec![json!({"metadata": meta("ra1", 1, "31"),
                "spec": {"targetRefs": [r(WP_REF)], "jwtRules": [{"issuer": "https://issuer.example", "jwksUri": "https://issuer.example/jwks"}]},
                "status": {"conditions": [cond("WaypointAccepted", "True", "Accepted", "bound to app/waypoint", json!("1"), "2024-03-03T00:00:00Z")]}})]
}

/// A fake API server serving these objects; PATCHes are answered with the patched status.
fn api() -> (kube::Client, fake::Log) {
    fake::client(|req| {
        if req.method == "PATCH" {
            return Reply::Json(
                200,
                json!({"apiVersion": "v1", "kind": "Object", "metadata": {"name": "x", "namespace": "app", "resourceVersion": "99"},
                       "status": req.body["status"]}),
            );
        }
        if req.is_watch() {
            return Reply::Hang;
        }
        let (kind, av, items) = match req.path.as_str() {
            "/api/v1/services" => ("Service", "v1", services()),
            "/apis/gateway.networking.k8s.io/v1/gateways" => {
                ("Gateway", "gateway.networking.k8s.io/v1", gateways())
            }
            "/apis/gateway.networking.k8s.io/v1/httproutes" => {
                ("HTTPRoute", "gateway.networking.k8s.io/v1", http_routes())
            }
            "/apis/gateway.networking.k8s.io/v1/grpcroutes" => {
                ("GRPCRoute", "gateway.networking.k8s.io/v1", grpc_routes())
            }
            "/apis/security.istio.io/v1/authorizationpolicies" => (
                "AuthorizationPolicy",
                "security.istio.io/v1",
                authorization_policies(),
            ),
            "/apis/security.istio.io/v1/requestauthentications" => (
                "RequestAuthentication",
                "security.istio.io/v1",
                request_authentications(),
            ),
            other => panic!("unexpected request {other} {req:?}"),
        };
        Reply::Json(200, list(kind, av, "100", items))
    })
}

/// `lastTransitionTime`s set to `now` by the writer (not kept from the object) become NOW.
fn pin_new_times(v: &mut Value, kept: &[&str]) {
    match v {
        Value::Object(m) => {
            if let Some(Value::String(t)) = m.get_mut("lastTransitionTime") {
                if !kept.contains(&t.as_str()) {
                    assert!(t.parse::<k8s_openapi::jiff::Timestamp>().is_ok(), "{t}");
                    *t = NOW.to_string();
                }
            }
            m.values_mut().for_each(|x| pin_new_times(x, kept));
        }
        Value::Array(a) => a.iter_mut().for_each(|x| pin_new_times(x, kept)),
        _ => {}
    }
}

fn expected_r1() -> Value {
    json!({"metadata": {"resourceVersion": "11"}, "status": {"parents": [
        theirs(),
        {"parentRef": r(ECHO_REF), "controllerName": OURS, "conditions": [
            // Still True: the transition time is kept, the generation moves on.
            cond("Accepted", "True", "Accepted", "Route was valid", json!(3), "2024-02-02T00:00:00Z"),
            cond("ResolvedRefs", "False", "BackendNotFound", "Service app/gone not found", json!(3), NOW),
        ]},
    ]}})
}

fn expected_g1() -> Value {
    json!({"metadata": {"resourceVersion": "13"}, "status": {"parents": [
        {"parentRef": r(WP_REF), "controllerName": OURS, "conditions": [
            cond("Accepted", "True", "Accepted", "Route was valid", json!(1), NOW),
            cond("ResolvedRefs", "True", "ResolvedRefs", "All references resolved", json!(1), NOW),
        ]},
    ]}})
}

fn expected_ap1() -> Value {
    json!({"metadata": {"resourceVersion": "21"}, "status": {"conditions": [
        cond("ZtunnelAccepted", "True", "Accepted", "attached to ztunnel", json!("1"), "2024-01-01T00:00:00Z"),
        cond("WaypointAccepted", "False", "AncestorNotBound", "Service app/plain is not bound to a waypoint", json!("2"), NOW),
    ]}})
}

fn opts() -> KubeSourceOptions {
    KubeSourceOptions {
        kinds: kinds(),
        backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(50),
        absent_retry: Duration::from_millis(200),
        coalesce: Duration::from_millis(1),
    }
}

fn patches_of(log: &fake::Log) -> Vec<fake::Req> {
    log.lock()
        .unwrap()
        .iter()
        .filter(|r| r.method == "PATCH")
        .cloned()
        .collect()
}

#[tokio::test]
async fn leader_writes_exact_merge_patches_and_nothing_else() {
    let (client, log) = api();
    let (source, _config) = KubeSource::start(client.clone(), opts()).await;
    let writer = StatusWriter::new(client, StatusSettings::new("istio-system"));
    let (leader_tx, leader_rx) = watch::channel(false);
    let (_stop_tx, stop_rx) = watch::channel(false);
    let task = tokio::spawn(writer.run(source.status_inputs(), leader_rx, stop_rx));

    // A follower writes nothing.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(patches_of(&log).is_empty(), "{:?}", patches_of(&log));

    leader_tx.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(10), async {
        while patches_of(&log).len() < 3 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("three status writes");
    // Give a fourth (wrong) write the chance to show up.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let patches = patches_of(&log);
    let paths: Vec<&str> = patches.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(
        paths,
        vec![
            "/apis/security.istio.io/v1/namespaces/app/authorizationpolicies/ap1/status",
            "/apis/gateway.networking.k8s.io/v1/namespaces/app/grpcroutes/g1/status",
            "/apis/gateway.networking.k8s.io/v1/namespaces/app/httproutes/r1/status",
        ],
        "r2, ra1 (status already right) and the selector policy are not written"
    );
    let kept = ["2024-01-01T00:00:00Z", "2024-02-02T00:00:00Z"];
    for (p, want) in patches
        .iter()
        .zip([expected_ap1(), expected_g1(), expected_r1()])
    {
        assert_eq!(p.content_type, "application/merge-patch+json", "{}", p.path);
        assert_eq!(p.param("fieldManager").as_deref(), Some("istiod-lite"));
        let mut body = p.body.clone();
        pin_new_times(&mut body, &kept);
        assert_eq!(body, want, "{}", p.path);
    }

    // Losing the lease stops the writes; the objects are left as they are.
    leader_tx.send(false).unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(patches_of(&log).len(), 3);
    task.abort();
}

fn inputs() -> StatusInputs {
    let obj = |kind: &'static str, api_version: &str, v: Value| {
        let dynamic: kube::api::DynamicObject = serde_json::from_value(v.clone()).unwrap();
        Arc::new(StatusObject {
            kind,
            api_version: api_version.into(),
            key: ObjectKey::new("app", dynamic.metadata.name.clone().unwrap()),
            generation: dynamic.metadata.generation.unwrap_or(0),
            resource_version: dynamic.metadata.resource_version.clone().unwrap(),
            spec: v["spec"].clone(),
            status: v.get("status").cloned().unwrap_or(Value::Null),
            invalid: None,
        })
    };
    let mut yaml = String::new();
    for (kind, av, items) in [
        ("Service", "v1", services()),
        ("Gateway", "gateway.networking.k8s.io/v1", gateways()),
    ] {
        for mut i in items {
            i["kind"] = kind.into();
            i["apiVersion"] = av.into();
            yaml.push_str(&format!("---\n{}\n", serde_json::to_string(&i).unwrap()));
        }
    }
    let parsed = crate::source::parse_file(std::path::Path::new("t.yaml"), &yaml);
    assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
    let config = Arc::new(crate::source::ConfigSnapshot::from_objects(&parsed.objects));
    let mut objects: Vec<Arc<StatusObject>> = http_routes()
        .into_iter()
        .map(|v| obj("HTTPRoute", "gateway.networking.k8s.io/v1", v))
        .collect();
    objects.extend(
        authorization_policies()
            .into_iter()
            .map(|v| obj("AuthorizationPolicy", "security.istio.io/v1", v)),
    );
    StatusInputs { config, objects }
}

/// Applying the computed status to the objects gives objects that need no write: the writer
/// converges instead of looping.
#[test]
fn computed_status_is_a_fixed_point() {
    let first = inputs();
    let written = patches(&first, "istio-system", NOW);
    assert_eq!(written.len(), 2);
    assert_eq!(written[0].body, expected_r1());
    assert_eq!(written[1].body, expected_ap1());
    let mut after = first.clone();
    for p in &written {
        let o = after
            .objects
            .iter_mut()
            .find(|o| o.key == p.object.key && o.kind == p.object.kind)
            .unwrap();
        let mut updated = (**o).clone();
        for (k, v) in p.body["status"].as_object().unwrap() {
            if updated.status.is_null() {
                updated.status = json!({});
            }
            updated.status[k] = v.clone();
        }
        updated.resource_version.push('0');
        *o = Arc::new(updated);
    }
    assert!(patches(&after, "istio-system", "2031-01-01T00:00:00Z").is_empty());
}

/// A policy whose targetRefs were removed loses the WaypointAccepted we wrote, nothing else.
#[test]
fn stale_waypoint_accepted_is_removed() {
    let mut i = inputs();
    let ap = i
        .objects
        .iter_mut()
        .find(|o| o.key.name == "ap-selector")
        .unwrap();
    let mut updated = (**ap).clone();
    updated.status = json!({"conditions": [
        cond("WaypointAccepted", "True", "Accepted", "bound to app/waypoint", json!("1"), "2024-01-01T00:00:00Z"),
        cond("Other", "True", "Fine", "kept", json!("1"), "2024-01-01T00:00:00Z"),
    ]});
    *ap = Arc::new(updated);
    let p = patches(&i, "istio-system", NOW);
    let sel = p
        .iter()
        .find(|p| p.object.key.name == "ap-selector")
        .unwrap();
    assert_eq!(
        sel.body,
        json!({"metadata": {"resourceVersion": "22"}, "status": {"conditions": [
            cond("Other", "True", "Fine", "kept", json!("1"), "2024-01-01T00:00:00Z"),
        ]}})
    );
}

/// A failed write is retried with backoff; a conflict is not (the newer object decides).
#[tokio::test]
async fn failed_writes_are_retried_conflicts_are_not() {
    let mut attempts = std::collections::BTreeMap::<String, u32>::new();
    let (client, log) = fake::client(move |req| {
        if req.method != "PATCH" {
            panic!("unexpected {req:?}");
        }
        let n = attempts.entry(req.path.clone()).or_default();
        *n += 1;
        match (req.path.contains("/httproutes/"), *n) {
            (true, 1) => Reply::Json(500, fake::status(500, "InternalError", "etcd timeout")),
            (true, _) => Reply::Json(
                200,
                json!({"apiVersion": "v1", "kind": "Object", "metadata": {"name": "r1"}}),
            ),
            (false, _) => Reply::Json(
                409,
                fake::status(409, "Conflict", "the object has been modified"),
            ),
        }
    });
    let mut settings = StatusSettings::new("istio-system");
    settings.retry = Duration::from_millis(10);
    let writer = StatusWriter::new(client, settings);
    let (_inputs_tx, inputs_rx) = watch::channel(Arc::new(inputs()));
    let (_leader_tx, leader_rx) = watch::channel(true);
    let (_stop_tx, stop_rx) = watch::channel(false);
    let task = tokio::spawn(writer.run(inputs_rx, leader_rx, stop_rx));
    let route_writes = |log: &fake::Log| fake::count(log, |r| r.path.contains("/httproutes/r1/"));
    tokio::time::timeout(Duration::from_secs(5), async {
        while route_writes(&log) < 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the route's status write retried after the 500");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        route_writes(&log),
        2,
        "written once it succeeded, not again"
    );
    // The policy lost a conflict in both rounds (the retry round recomputes everything) and
    // is not retried on its own: the newer object, when the watch brings it, decides.
    assert_eq!(
        fake::count(&log, |r| r.path.contains("/authorizationpolicies/")),
        2
    );
    task.abort();
}

use std::collections::BTreeSet;

use serde_json::json;

use super::fake::{self, event, list, status, Reply};
use super::*;

const NS: WatchedKind = WatchedKind::core("Namespace", "namespaces");
const POD: WatchedKind = WatchedKind::core("Pod", "pods");
const GW: WatchedKind = WatchedKind::crd("gateway.networking.k8s.io", "v1", "Gateway", "gateways");

fn pod(name: &str, ip: &str, rv: &str) -> serde_json::Value {
    json!({"metadata": {"name": name, "namespace": "app", "resourceVersion": rv, "uid": format!("uid-{name}"),
                        "managedFields": [{"manager": "kubelet"}]},
           "spec": {"nodeName": "node1", "serviceAccountName": "sa", "containers": [{"name": "c"}]},
           "status": {"podIP": ip, "phase": "Running"}})
}

fn ns(name: &str, rv: &str) -> serde_json::Value {
    json!({"metadata": {"name": name, "resourceVersion": rv, "labels": {"istio.io/dataplane-mode": "ambient"}}})
}

fn dyn_obj(v: serde_json::Value) -> DynamicObject {
    serde_json::from_value(v).unwrap()
}

fn pod_names(s: &ConfigSnapshot) -> BTreeSet<String> {
    s.pods.keys().map(|k| k.name.clone()).collect()
}

#[test]
fn store_relist_is_atomic_and_errors_are_reported() {
    let mut st = KubeStore::new(&[NS, POD]);
    assert!(!st.synced());
    st.apply(&POD, watcher::Event::Init);
    st.apply(
        &POD,
        watcher::Event::InitApply(dyn_obj(pod("p1", "10.0.0.1", "1"))),
    );
    st.apply(
        &POD,
        watcher::Event::InitApply(dyn_obj(pod("bad", "nope", "1"))),
    );
    assert!(st.apply(&POD, watcher::Event::InitDone));
    assert!(!st.synced(), "namespaces not listed yet");
    st.apply(&NS, watcher::Event::Init);
    st.apply(&NS, watcher::Event::InitDone);
    assert!(st.synced());

    let s = st.snapshot(1);
    assert_eq!(pod_names(&s), BTreeSet::from(["p1".to_string()]));
    assert_eq!(s.errors.len(), 1);
    let e = &s.errors[0];
    assert_eq!(e.kind.as_deref(), Some("Pod"));
    assert_eq!(e.object.as_deref(), Some("app/bad"));
    assert_eq!(e.field, "status.podIP");
    assert_eq!(
        e.to_string(),
        "kubernetes: Pod app/bad: field status.podIP: \"nope\" is not an IP address"
    );

    // A relist in progress does not change what is served...
    st.apply(&POD, watcher::Event::Init);
    st.apply(
        &POD,
        watcher::Event::InitApply(dyn_obj(pod("p2", "10.0.0.2", "5"))),
    );
    assert_eq!(
        pod_names(&st.snapshot(2)),
        BTreeSet::from(["p1".to_string()])
    );
    // ...until it is complete; then it replaces the kind's objects at once.
    assert!(st.apply(&POD, watcher::Event::InitDone));
    let s = st.snapshot(3);
    assert_eq!(pod_names(&s), BTreeSet::from(["p2".to_string()]));
    assert!(s.errors.is_empty());

    // Same object again: no change to publish. A real change and a delete are.
    assert!(!st.apply(
        &POD,
        watcher::Event::Apply(dyn_obj(pod("p2", "10.0.0.2", "6")))
    ));
    assert!(st.apply(
        &POD,
        watcher::Event::Apply(dyn_obj(pod("p2", "10.0.0.9", "7")))
    ));
    assert!(st.apply(
        &POD,
        watcher::Event::Delete(dyn_obj(pod("p2", "10.0.0.9", "8")))
    ));
    assert!(st.snapshot(4).pods.is_empty());
}

#[test]
fn other_groups_and_unknown_kinds_are_ignored() {
    let mut st = KubeStore::new(&[GW]);
    let other = WatchedKind::crd("example.com", "v1", "Gateway", "gateways");
    st.apply(&other, watcher::Event::Init);
    st.apply(
        &other,
        watcher::Event::InitApply(dyn_obj(
            json!({"metadata": {"name": "g", "namespace": "a"}, "spec": {}}),
        )),
    );
    st.apply(&other, watcher::Event::InitDone);
    let s = st.snapshot(1);
    assert!(s.gateways.is_empty() && s.errors.is_empty());
    assert!(st.mark_absent(&GW));
    assert!(st.synced());
}

fn waypoint_gw() -> serde_json::Value {
    json!({"metadata": {"name": "waypoint", "namespace": "app", "resourceVersion": "3"},
           "spec": {"gatewayClassName": "istio-waypoint",
                    "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]}})
}

async fn wait_for(
    rx: &mut watch::Receiver<Arc<ConfigSnapshot>>,
    what: &str,
    f: impl Fn(&ConfigSnapshot) -> bool,
) -> Arc<ConfigSnapshot> {
    let res = tokio::time::timeout(Duration::from_secs(10), async {
        rx.wait_for(|s| f(s)).await.map(|s| s.clone())
    })
    .await;
    match res {
        Ok(Ok(s)) => s,
        _ => panic!("timed out waiting for {what}; last: {:?}", rx.borrow()),
    }
}

fn opts(kinds: &[WatchedKind]) -> KubeSourceOptions {
    KubeSourceOptions {
        kinds: kinds.to_vec(),
        backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(50),
        absent_retry: Duration::from_millis(200),
        coalesce: Duration::from_millis(1),
    }
}

/// List + watch through a real kube Client: ADDED/MODIFIED/DELETED/BOOKMARK, a watch error
/// that keeps the model, a 410 Gone that relists, and a missing CRD that is skipped.
#[tokio::test]
async fn list_watch_errors_gone_and_missing_crd() {
    let mut ns_watches = 0;
    let mut pod_lists = 0;
    let mut pod_watches = 0;
    let (client, log) = fake::client(move |r| match (r.path.as_str(), r.is_watch()) {
        ("/api/v1/namespaces", false) => {
            Reply::Json(200, list("Namespace", "v1", "10", vec![ns("a", "9")]))
        }
        ("/api/v1/namespaces", true) => {
            ns_watches += 1;
            match ns_watches {
                1 => {
                    assert_eq!(r.param("resourceVersion").as_deref(), Some("10"));
                    Reply::Events(vec![
                        event("ADDED", ns("b", "11")),
                        event(
                            "BOOKMARK",
                            json!({"kind": "Namespace", "apiVersion": "v1", "metadata": {"resourceVersion": "12"}}),
                        ),
                    ])
                }
                // The API server is briefly unavailable: the watch fails to start.
                2 => Reply::Json(
                    500,
                    status(500, "InternalError", "etcdserver: request timed out"),
                ),
                _ => {
                    // Resumes from the bookmark, without relisting.
                    assert_eq!(r.param("resourceVersion").as_deref(), Some("12"));
                    Reply::Hang
                }
            }
        }
        ("/api/v1/pods", false) => {
            pod_lists += 1;
            if pod_lists == 1 {
                Reply::Json(
                    200,
                    list(
                        "Pod",
                        "v1",
                        "20",
                        vec![pod("p1", "10.0.0.1", "18"), pod("bad", "nope", "19")],
                    ),
                )
            } else {
                Reply::Json(
                    200,
                    list(
                        "Pod",
                        "v1",
                        "40",
                        vec![pod("p1", "10.0.0.7", "31"), pod("p3", "10.0.0.3", "32")],
                    ),
                )
            }
        }
        ("/api/v1/pods", true) => {
            pod_watches += 1;
            match pod_watches {
                1 => Reply::Events(vec![
                    event("MODIFIED", pod("p1", "10.0.0.5", "21")),
                    event("DELETED", pod("bad", "nope", "22")),
                    event(
                        "ERROR",
                        status(410, "Expired", "too old resource version: 20 (30)"),
                    ),
                ]),
                _ => Reply::Hang,
            }
        }
        ("/apis/gateway.networking.k8s.io/v1/gateways", false) => Reply::Json(
            404,
            status(
                404,
                "NotFound",
                "the server could not find the requested resource",
            ),
        ),
        other => panic!("unexpected request {other:?} {r:?}"),
    });

    let (_src, mut rx) = KubeSource::start(client, opts(&[NS, POD, GW])).await;
    let first = rx.borrow().clone();
    assert!(first.gateways.is_empty(), "missing CRD is skipped");
    assert!(first.namespaces.contains_key("a"));
    // The first snapshot is complete: nothing is published before every kind listed.
    assert!(pod_names(&first).contains("p1"));

    let s = wait_for(&mut rx, "relisted pods and namespace b", |s| {
        pod_names(s) == BTreeSet::from(["p1".to_string(), "p3".to_string()])
            && s.namespaces.contains_key("b")
    })
    .await;
    let p1 = &s.pods[&ObjectKey::new("app", "p1")];
    assert_eq!(
        p1.status.pod_ip.as_deref(),
        Some("10.0.0.7"),
        "relist replaced the watched state"
    );
    assert!(
        s.errors.is_empty(),
        "the deleted invalid pod's error is gone"
    );

    // The failed namespace watch kept the namespaces, and the watcher came back.
    tokio::time::timeout(Duration::from_secs(10), async {
        while fake::count(&log, |r| r.path == "/api/v1/namespaces" && r.is_watch()) < 3 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("namespace watch retried");
    let s = rx.borrow().clone();
    assert!(s.namespaces.contains_key("a") && s.namespaces.contains_key("b"));
    assert_eq!(
        fake::count(&log, |r| r.path == "/api/v1/namespaces" && !r.is_watch()),
        1
    );
    assert_eq!(
        fake::count(&log, |r| r.path == "/api/v1/pods" && !r.is_watch()),
        2,
        "410 relisted"
    );
    // The missing CRD is looked for again later.
    tokio::time::timeout(Duration::from_secs(10), async {
        while fake::count(&log, |r| r.path.ends_with("/gateways")) < 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("absent kind retried");
}

/// A CRD installed after start is picked up on the next retry.
#[tokio::test]
async fn crd_installed_later_is_picked_up() {
    let mut gw_lists = 0;
    let (client, _log) = fake::client(move |r| match (r.path.as_str(), r.is_watch()) {
        ("/apis/gateway.networking.k8s.io/v1/gateways", false) => {
            gw_lists += 1;
            if gw_lists == 1 {
                Reply::Json(
                    404,
                    status(
                        404,
                        "NotFound",
                        "the server could not find the requested resource",
                    ),
                )
            } else {
                Reply::Json(
                    200,
                    list(
                        "Gateway",
                        "gateway.networking.k8s.io/v1",
                        "5",
                        vec![waypoint_gw()],
                    ),
                )
            }
        }
        ("/apis/gateway.networking.k8s.io/v1/gateways", true) => Reply::Hang,
        other => panic!("unexpected request {other:?}"),
    });
    let (_src, mut rx) = KubeSource::start(client, opts(&[GW])).await;
    assert!(rx.borrow().gateways.is_empty());
    let s = wait_for(&mut rx, "gateway", |s| !s.gateways.is_empty()).await;
    assert!(s.gateways[&ObjectKey::new("app", "waypoint")].is_waypoint());
}

const SVC: WatchedKind = WatchedKind::core("Service", "services");
const SLICE: WatchedKind = WatchedKind {
    group: "discovery.k8s.io",
    optional: true,
    ..WatchedKind::core("EndpointSlice", "endpointslices")
};

fn slice(name: &str, addresses: &[&str], ready: bool, rv: &str) -> serde_json::Value {
    json!({"metadata": {"name": name, "namespace": "app", "resourceVersion": rv,
                        "labels": {"kubernetes.io/service-name": "db", "endpointslice.kubernetes.io/managed-by": "example.com/ctl"}},
           "addressType": "IPv4",
           "endpoints": addresses.iter().map(|a| json!({"addresses": [a], "conditions": {"ready": ready}})).collect::<Vec<_>>(),
           "ports": [{"name": "sql", "port": 5433, "protocol": "TCP"}]})
}

/// The workloads serving `app/db` in the model built from `s`: (address, healthy).
fn db_endpoints(s: &ConfigSnapshot) -> BTreeSet<(String, bool)> {
    use mesh_proto::workload::{address, Address, WorkloadStatus};
    use prost::Message;
    let params = crate::model::ModelParams {
        trust_domain: "cluster.local".into(),
        cluster_id: "Kubernetes".into(),
        root_namespace: "istio-system".into(),
    };
    let snap = crate::model::build(s, &params, None, 1);
    snap.get(mesh_proto::ADDRESS_TYPE_URL)
        .unwrap()
        .resources
        .values()
        .filter_map(
            |r| match Address::decode(r.any.value.as_slice()).unwrap().r#type {
                Some(address::Type::Workload(w))
                    if w.services.contains_key("app/db.app.svc.cluster.local") =>
                {
                    let ip = std::net::IpAddr::from(
                        <[u8; 4]>::try_from(w.addresses[0].as_slice()).unwrap(),
                    );
                    Some((ip.to_string(), w.status() == WorkloadStatus::Healthy))
                }
                _ => None,
            },
        )
        .collect()
}

/// EndpointSlices of a Service without a selector, watched: ADDED, MODIFIED and DELETED
/// slices change the endpoints pushed for the Service.
#[tokio::test]
async fn endpoint_slice_watch_events_change_service_endpoints() {
    let mut slice_watches = 0;
    let (client, _log) = fake::client(move |r| match (r.path.as_str(), r.is_watch()) {
        ("/api/v1/services", false) => Reply::Json(
            200,
            list(
                "Service",
                "v1",
                "5",
                vec![
                    json!({"metadata": {"name": "db", "namespace": "app", "resourceVersion": "4"},
                            "spec": {"clusterIP": "10.1.0.9", "ports": [{"name": "sql", "port": 5432}]}}),
                ],
            ),
        ),
        ("/api/v1/services", true) => Reply::Hang,
        ("/apis/discovery.k8s.io/v1/endpointslices", false) => Reply::Json(
            200,
            list(
                "EndpointSlice",
                "discovery.k8s.io/v1",
                "10",
                vec![slice("db-a", &["192.168.0.1"], true, "9")],
            ),
        ),
        ("/apis/discovery.k8s.io/v1/endpointslices", true) => {
            slice_watches += 1;
            match slice_watches {
                1 => Reply::Events(vec![
                    event("ADDED", slice("db-b", &["192.168.0.2"], true, "11")),
                    event("MODIFIED", slice("db-a", &["192.168.0.3"], true, "12")),
                    event("ADDED", slice("db-c", &["192.168.0.4"], true, "13")),
                ]),
                2 => Reply::Events(vec![
                    event("MODIFIED", slice("db-b", &["192.168.0.2"], false, "14")),
                    event("DELETED", slice("db-c", &["192.168.0.4"], true, "15")),
                ]),
                _ => Reply::Hang,
            }
        }
        other => panic!("unexpected request {other:?} {r:?}"),
    });
    let (_src, mut rx) = KubeSource::start(client, opts(&[SVC, SLICE])).await;
    // The watch ends after each batch and resumes from its last resourceVersion, so both
    // batches arrive, in order; the end state shows every event: db-a modified (.1 -> .3),
    // db-b added then made unready, db-c added then deleted.
    let s = wait_for(&mut rx, "both batches of slice events", |s| {
        s.endpoint_slices.len() == 2
            && s.endpoint_slices
                .get(&ObjectKey::new("app", "db-b"))
                .is_some_and(|b| !b.endpoints[0].is_ready())
    })
    .await;
    let want: BTreeSet<(String, bool)> = [("192.168.0.3", true), ("192.168.0.2", false)]
        .iter()
        .map(|(a, h)| (a.to_string(), *h))
        .collect();
    assert_eq!(db_endpoints(&s), want);
}

/// A status-only change of a route publishes new status inputs but no new config.
#[test]
fn status_only_changes_do_not_touch_the_model() {
    const ROUTE: WatchedKind =
        WatchedKind::crd("gateway.networking.k8s.io", "v1", "HTTPRoute", "httproutes");
    let route = |rv: &str, status: serde_json::Value| {
        dyn_obj(
            json!({"metadata": {"name": "r", "namespace": "app", "resourceVersion": rv, "generation": 2},
                       "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "echo"}],
                                "rules": [{"backendRefs": [{"name": "echo", "port": 80}]}]},
                       "status": status}),
        )
    };
    let mut st = KubeStore::new(&[ROUTE]);
    st.apply(&ROUTE, watcher::Event::Init);
    st.apply(&ROUTE, watcher::Event::InitApply(route("1", json!({}))));
    assert!(st.apply(&ROUTE, watcher::Event::InitDone));
    assert_eq!(st.take_changes(), (true, true));
    let objs = st.status_objects();
    assert_eq!(objs.len(), 1);
    assert_eq!(
        (
            objs[0].kind,
            objs[0].generation,
            objs[0].resource_version.as_str()
        ),
        ("HTTPRoute", 2, "1")
    );
    assert!(objs[0].invalid.is_none());

    let written = json!({"parents": [{"controllerName": "istio.io/gateway-controller"}]});
    assert!(
        !st.apply(&ROUTE, watcher::Event::Apply(route("2", written.clone()))),
        "the model is unchanged"
    );
    assert_eq!(st.take_changes(), (false, true));
    assert_eq!(st.status_objects()[0].status, written);

    // A refused route still has a status object, saying why.
    let mut bad = route("3", written);
    bad.data["spec"]["rules"][0]["backendRefs"][0]["kind"] = "Bucket".into();
    assert!(st.apply(&ROUTE, watcher::Event::Apply(bad)));
    assert!(st.snapshot(2).http_routes.is_empty());
    let invalid = st.status_objects()[0].invalid.clone().unwrap();
    assert!(invalid.contains("backendRefs[0]"), "{invalid}");
}

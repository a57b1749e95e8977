//! The root certificate publisher against the fake API server: a stateful cluster of Namespaces
//! and `istio-ca-root-cert` ConfigMaps answering list, watch, POST and merge PATCH with
//! Kubernetes' JSON shapes. Watch events are scripted per test (the first watch of a kind
//! delivers them, later watches idle).
//!
//! Readiness signal: kube's watcher sends its next watch request only after the loop has
//! handled the previous event (and the writes it caused), so "the Nth watch request of a kind
//! arrived" means everything before it is done.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mesh_identity::ca::CertificateAuthority;
use serde_json::{json, Value};
use tokio::sync::watch;

use super::*;
use crate::source::kube::fake::{self, event, list, status, Reply};

const CM_COLLECTION: &str = "/api/v1/configmaps";
const NS_COLLECTION: &str = "/api/v1/namespaces";

fn root_pem() -> String {
    CertificateAuthority::self_signed("cluster.local")
        .unwrap()
        .roots_pem()
}

fn namespace(name: &str, rv: u64) -> Value {
    json!({"metadata": {"name": name, "uid": format!("uid-ns-{name}"), "resourceVersion": rv.to_string(),
                        "creationTimestamp": "2030-01-01T00:00:00Z",
                        "labels": {"kubernetes.io/metadata.name": name}},
           "spec": {"finalizers": ["kubernetes"]},
           "status": {"phase": "Active"}})
}

fn terminating(name: &str, rv: u64) -> Value {
    let mut ns = namespace(name, rv);
    ns["metadata"]["deletionTimestamp"] = "2030-01-01T00:01:00Z".into();
    ns["status"]["phase"] = "Terminating".into();
    ns
}

fn configmap(ns: &str, rv: u64, data: Value) -> Value {
    json!({"metadata": {"name": "istio-ca-root-cert", "namespace": ns, "uid": format!("uid-cm-{ns}"),
                        "resourceVersion": rv.to_string(), "creationTimestamp": "2030-01-01T00:00:00Z",
                        "labels": {"istio.io/config": "true"}},
           "data": data})
}

/// A watch event object carries kind and apiVersion (list items do not).
fn typed(kind: &str, mut v: Value) -> Value {
    v["kind"] = kind.into();
    v["apiVersion"] = "v1".into();
    v
}

/// A failure the fake answers with instead of doing the write.
type Failure = (u16, Value);

/// The fake cluster.
#[derive(Default)]
struct Cluster {
    namespaces: Vec<Value>,
    /// Namespace → its `istio-ca-root-cert`.
    configmaps: BTreeMap<String, Value>,
    ns_events: Vec<Value>,
    cm_events: Vec<Value>,
    /// Failures of the namespace list, answered in order.
    ns_list_failures: Vec<Failure>,
    /// Per namespace, failures of writes to its ConfigMap, answered in order.
    write_failures: BTreeMap<String, Vec<Failure>>,
    /// Every write (method, namespace) with the time it arrived.
    writes: Vec<(Instant, String, String)>,
    rv: u64,
    ns_watches: usize,
    cm_watches: usize,
}

type Shared = Arc<Mutex<Cluster>>;

fn handle(st: &Shared, r: &fake::Req) -> Reply {
    let mut c = st.lock().unwrap();
    let c = &mut *c;
    match (r.method.as_str(), r.path.as_str(), r.is_watch()) {
        ("GET", NS_COLLECTION, false) => {
            if !c.ns_list_failures.is_empty() {
                let (code, body) = c.ns_list_failures.remove(0);
                return Reply::Json(code, body);
            }
            Reply::Json(200, list("Namespace", "v1", "100", c.namespaces.clone()))
        }
        ("GET", NS_COLLECTION, true) => {
            c.ns_watches += 1;
            if c.ns_watches == 1 {
                Reply::Events(std::mem::take(&mut c.ns_events))
            } else {
                Reply::Hang
            }
        }
        ("GET", CM_COLLECTION, watch) => {
            // Only the ConfigMaps of that name: RBAC limits list/watch to them through it.
            assert_eq!(
                r.param("fieldSelector").as_deref(),
                Some("metadata.name%3Distio-ca-root-cert"),
                "{r:?}"
            );
            if !watch {
                let items = c.configmaps.values().cloned().collect();
                return Reply::Json(200, list("ConfigMap", "v1", "100", items));
            }
            c.cm_watches += 1;
            if c.cm_watches == 1 {
                Reply::Events(std::mem::take(&mut c.cm_events))
            } else {
                Reply::Hang
            }
        }
        (method @ ("POST" | "PATCH"), path, false) => {
            let rest = path.strip_prefix("/api/v1/namespaces/").unwrap_or("");
            let (ns, tail) = rest.split_once('/').unwrap_or(("", ""));
            let ns = ns.to_string();
            match (method, tail) {
                ("POST", "configmaps") | ("PATCH", "configmaps/istio-ca-root-cert") => {}
                other => panic!("unexpected write {other:?} {r:?}"),
            }
            c.writes
                .push((Instant::now(), method.to_string(), ns.clone()));
            if let Some(f) = c.write_failures.get_mut(&ns).filter(|f| !f.is_empty()) {
                let (code, body) = f.remove(0);
                return Reply::Json(code, body);
            }
            c.rv += 1;
            let rv = c.rv.to_string();
            if method == "POST" {
                if c.configmaps.contains_key(&ns) {
                    return Reply::Json(
                        409,
                        status(
                            409,
                            "AlreadyExists",
                            "configmaps \"istio-ca-root-cert\" already exists",
                        ),
                    );
                }
                let mut obj = r.body.clone();
                obj["metadata"]["uid"] = format!("uid-new-{ns}").into();
                obj["metadata"]["resourceVersion"] = rv.into();
                obj["metadata"]["creationTimestamp"] = "2030-01-02T00:00:00Z".into();
                obj["metadata"]["managedFields"] = json!([{"manager": "istiod-lite", "operation": "Update",
                    "apiVersion": "v1", "fieldsType": "FieldsV1", "time": "2030-01-02T00:00:00Z"}]);
                c.configmaps.insert(ns, obj.clone());
                Reply::Json(201, obj)
            } else {
                let Some(obj) = c.configmaps.get_mut(&ns) else {
                    return Reply::Json(
                        404,
                        status(
                            404,
                            "NotFound",
                            "configmaps \"istio-ca-root-cert\" not found",
                        ),
                    );
                };
                // JSON merge patch of the data map.
                for (k, v) in r.body["data"].as_object().into_iter().flatten() {
                    obj["data"][k] = v.clone();
                }
                obj["metadata"]["resourceVersion"] = rv.into();
                Reply::Json(200, typed("ConfigMap", obj.clone()))
            }
        }
        _ => panic!("unexpected {r:?}"),
    }
}

fn fake_cluster(c: Cluster) -> (kube::Client, fake::Log, Shared) {
    let st: Shared = Arc::new(Mutex::new(c));
    let st2 = st.clone();
    let (client, log) = fake::client(move |r| handle(&st2, r));
    (client, log, st)
}

fn settings() -> RootCertSettings {
    RootCertSettings {
        retry: Duration::from_millis(20),
        max_retry: Duration::from_millis(500),
        ..Default::default()
    }
}

struct Running {
    roots: watch::Sender<String>,
    leader: watch::Sender<bool>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

fn start(client: kube::Client, root: &str, leader: bool) -> Running {
    let (roots, roots_rx) = watch::channel(root.to_string());
    let (leader, leader_rx) = watch::channel(leader);
    let (stop, stop_rx) = watch::channel(false);
    let c = RootCertController::new(client, settings());
    let task = tokio::spawn(c.run(roots_rx, leader_rx, stop_rx));
    Running {
        roots,
        leader,
        stop,
        task,
    }
}

impl Running {
    /// Stops the controller; it ends without panicking.
    async fn stop(self) {
        drop(self.roots);
        self.stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), self.task)
            .await
            .expect("controller stops on shutdown")
            .expect("controller did not panic");
        drop(self.leader);
    }
}

async fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let res = tokio::time::timeout(Duration::from_secs(10), async {
        while !f() {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await;
    assert!(res.is_ok(), "timed out waiting for {what}");
}

/// Both kinds listed and their first watch (with its scripted events) handled.
async fn settled(st: &Shared) {
    wait_until("both watches to be handled", || {
        let c = st.lock().unwrap();
        c.ns_watches >= 2 && c.cm_watches >= 2
    })
    .await;
}

/// Both kinds listed, initial writes done (no scripted events).
async fn listed(st: &Shared) {
    wait_until("both kinds to be listed", || {
        let c = st.lock().unwrap();
        c.ns_watches >= 1 && c.cm_watches >= 1
    })
    .await;
}

fn writes(log: &fake::Log) -> Vec<fake::Req> {
    log.lock()
        .unwrap()
        .iter()
        .filter(|r| r.method != "GET")
        .cloned()
        .collect()
}

fn expected_create(ns: &str, root: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap",
           "metadata": {"name": "istio-ca-root-cert", "namespace": ns, "labels": {"istio.io/config": "true"}},
           "data": {"root-cert.pem": root}})
}

fn assert_create(r: &fake::Req, ns: &str, root: &str) {
    assert_eq!(r.method, "POST", "{r:?}");
    assert_eq!(r.path, format!("/api/v1/namespaces/{ns}/configmaps"));
    assert_eq!(r.param("fieldManager").as_deref(), Some("istiod-lite"));
    assert_eq!(r.body, expected_create(ns, root));
}

fn assert_update(r: &fake::Req, ns: &str, root: &str) {
    assert_eq!(r.method, "PATCH", "{r:?}");
    assert_eq!(
        r.path,
        format!("/api/v1/namespaces/{ns}/configmaps/istio-ca-root-cert")
    );
    assert_eq!(r.content_type, "application/merge-patch+json");
    assert_eq!(r.param("fieldManager").as_deref(), Some("istiod-lite"));
    assert_eq!(r.body, json!({"data": {"root-cert.pem": root}}));
}

fn stored_root(st: &Shared, ns: &str) -> Option<String> {
    st.lock().unwrap().configmaps.get(ns)?["data"]["root-cert.pem"]
        .as_str()
        .map(str::to_string)
}

#[tokio::test]
async fn follower_writes_nothing_leader_publishes_everywhere_istio_does() {
    let root = root_pem();
    let names = [
        "default",
        "app",
        "istio-system",
        "kube-system",
        "kube-public",
        "kube-node-lease",
        "local-path-storage",
        "ok",
        "edited",
        "nokey",
    ];
    let mut namespaces: Vec<Value> = names.iter().map(|n| namespace(n, 1)).collect();
    namespaces.push(terminating("doomed", 2));
    let configmaps = BTreeMap::from([
        (
            "ok".to_string(),
            configmap("ok", 3, json!({"root-cert.pem": root})),
        ),
        (
            "edited".to_string(),
            configmap(
                "edited",
                4,
                json!({"root-cert.pem": "tampered", "extra": "theirs"}),
            ),
        ),
        ("nokey".to_string(), configmap("nokey", 5, json!({}))),
    ]);
    let (client, log, st) = fake_cluster(Cluster {
        namespaces,
        configmaps,
        ..Default::default()
    });
    let run = start(client, &root, false);

    // Follower: lists and watches both kinds, writes nothing.
    listed(&st).await;
    assert!(writes(&log).is_empty(), "{:?}", writes(&log));

    // Leader: a ConfigMap in every namespace but Istio's skipped ones (kube-system is not
    // one: ztunnel may run there) and the terminating one; edited data put back.
    run.leader.send(true).unwrap();
    wait_until("the leader's writes", || writes(&log).len() >= 6).await;
    run.stop().await;
    let w = writes(&log);
    assert_eq!(w.len(), 6, "{w:?}");
    // In namespace order.
    assert_create(&w[0], "app", &root);
    assert_create(&w[1], "default", &root);
    assert_update(&w[2], "edited", &root);
    assert_create(&w[3], "istio-system", &root);
    assert_create(&w[4], "kube-system", &root);
    assert_update(&w[5], "nokey", &root);
    for ns in [
        "app",
        "default",
        "istio-system",
        "kube-system",
        "ok",
        "edited",
        "nokey",
    ] {
        assert_eq!(stored_root(&st, ns).as_deref(), Some(root.as_str()), "{ns}");
    }
    // Only our key is ours (as in Istio): other keys stay.
    assert_eq!(
        st.lock().unwrap().configmaps["edited"]["data"]["extra"],
        "theirs"
    );
}

#[tokio::test]
async fn deleted_edited_and_new_are_put_right_echoes_cause_no_writes() {
    let root = root_pem();
    let right = json!({"root-cert.pem": root});
    let (client, log, st) = fake_cluster(Cluster {
        namespaces: ["a", "b", "c"].iter().map(|n| namespace(n, 1)).collect(),
        configmaps: ["a", "b", "c"]
            .iter()
            .map(|n| (n.to_string(), configmap(n, 10, right.clone())))
            .collect(),
        ns_events: vec![
            // A new namespace gets one; a label change or a skipped namespace gets nothing.
            event("ADDED", typed("Namespace", namespace("fresh", 20))),
            event("MODIFIED", typed("Namespace", namespace("c", 21))),
            event(
                "ADDED",
                typed("Namespace", namespace("kube-node-lease", 22)),
            ),
            event("ADDED", typed("Namespace", terminating("leaving", 23))),
        ],
        cm_events: vec![
            event(
                "DELETED",
                typed("ConfigMap", configmap("a", 30, right.clone())),
            ),
            event(
                "MODIFIED",
                typed(
                    "ConfigMap",
                    configmap("b", 31, json!({"root-cert.pem": "edited"})),
                ),
            ),
            // Someone touched c without changing the bundle: nothing to do.
            event(
                "MODIFIED",
                typed("ConfigMap", configmap("c", 32, right.clone())),
            ),
        ],
        ..Default::default()
    });
    let run = start(client, &root, true);
    settled(&st).await;
    run.stop().await;

    let mut w = writes(&log);
    w.sort_by(|x, y| x.path.cmp(&y.path));
    assert_eq!(w.len(), 3, "{w:?}");
    assert_create(&w[0], "a", &root);
    assert_update(&w[1], "b", &root);
    assert_create(&w[2], "fresh", &root);
    for ns in ["a", "b", "c", "fresh"] {
        assert_eq!(stored_root(&st, ns).as_deref(), Some(root.as_str()), "{ns}");
    }
}

#[tokio::test]
async fn nothing_written_when_right_and_root_change_updates_all() {
    let root = root_pem();
    let (client, log, st) = fake_cluster(Cluster {
        namespaces: ["a", "b", "kube-public"]
            .iter()
            .map(|n| namespace(n, 1))
            .collect(),
        configmaps: ["a", "b", "kube-public"]
            .iter()
            .map(|n| {
                (
                    n.to_string(),
                    configmap(n, 10, json!({"root-cert.pem": root})),
                )
            })
            .collect(),
        cm_events: vec![
            // Echoes of the state it already has.
            event(
                "MODIFIED",
                typed(
                    "ConfigMap",
                    configmap("a", 11, json!({"root-cert.pem": root})),
                ),
            ),
        ],
        ..Default::default()
    });
    let run = start(client, &root, true);
    settled(&st).await;
    assert!(writes(&log).is_empty(), "{:?}", writes(&log));

    // CA rotation: a new bundle (old and new roots) goes everywhere, kube-public excepted.
    let rotated = format!("{root}{}", root_pem());
    run.roots.send(rotated.clone()).unwrap();
    wait_until("the rotated bundle to be written", || {
        writes(&log).len() >= 2
    })
    .await;
    run.stop().await;
    let w = writes(&log);
    assert_eq!(w.len(), 2, "{w:?}");
    assert_update(&w[0], "a", &rotated);
    assert_update(&w[1], "b", &rotated);
    assert_eq!(
        stored_root(&st, "kube-public").as_deref(),
        Some(root.as_str())
    );
}

#[tokio::test]
async fn api_errors_are_retried_with_backoff() {
    let root = root_pem();
    let terminating_status = {
        let mut s = status(
            403,
            "Forbidden",
            "configmaps \"istio-ca-root-cert\" is forbidden: unable to create new content in namespace going because it is being terminated",
        );
        s["details"] = json!({"name": "istio-ca-root-cert", "kind": "configmaps",
            "causes": [{"reason": "NamespaceTerminating", "message": "namespace going is being terminated", "field": "metadata.namespace"}]});
        s
    };
    let (client, log, st) = fake_cluster(Cluster {
        namespaces: ["flaky", "going", "gone", "raced"]
            .iter()
            .map(|n| namespace(n, 1))
            .collect(),
        // The first list fails: the watch is retried, nothing is written from a partial view.
        ns_list_failures: vec![(500, status(500, "InternalError", "etcdserver: request timed out"))],
        write_failures: BTreeMap::from([
            (
                "flaky".to_string(),
                vec![
                    (500, status(500, "InternalError", "etcdserver: request timed out")),
                    (429, status(429, "TooManyRequests", "too many requests, please try again later")),
                    (403, status(403, "Forbidden", "configmaps is forbidden: User \"system:serviceaccount:istio-system:istiod-lite\" cannot create resource \"configmaps\"")),
                ],
            ),
            ("going".to_string(), vec![(403, terminating_status)]),
            (
                "gone".to_string(),
                vec![(404, status(404, "NotFound", "namespaces \"gone\" not found"))],
            ),
            (
                "raced".to_string(),
                vec![(
                    409,
                    status(409, "AlreadyExists", "configmaps \"istio-ca-root-cert\" already exists"),
                )],
            ),
        ]),
        ..Default::default()
    });
    let run = start(client, &root, true);
    wait_until("flaky's ConfigMap after three failures", || {
        stored_root(&st, "flaky").is_some()
    })
    .await;
    run.stop().await;

    let c = st.lock().unwrap();
    let attempts = |ns: &str| -> Vec<Instant> {
        c.writes
            .iter()
            .filter(|(_, _, n)| n == ns)
            .map(|(t, _, _)| *t)
            .collect()
    };
    let flaky = attempts("flaky");
    assert_eq!(flaky.len(), 4, "three failures, then the create");
    // Doubling delays: 20 ms, 40 ms, 80 ms.
    for (i, min) in [20u64, 40, 80].iter().enumerate() {
        let gap = flaky[i + 1] - flaky[i];
        assert!(
            gap >= Duration::from_millis(*min),
            "retry {} after {gap:?}, want ≥ {min} ms",
            i + 1
        );
    }
    // A terminating or deleted namespace, or a ConfigMap that exists already, is not retried.
    for ns in ["going", "gone", "raced"] {
        assert_eq!(attempts(ns).len(), 1, "{ns}");
    }
    assert_eq!(
        fake::count(&log, |r| r.method == "GET"
            && r.path == NS_COLLECTION
            && !r.is_watch()),
        2,
        "the failed namespace list was retried once"
    );
}

#[test]
fn doubling_backoff_caps_and_resets() {
    let mut b = Doubling::new(&RootCertSettings {
        retry: Duration::from_millis(100),
        max_retry: Duration::from_millis(300),
        ..Default::default()
    });
    let d: Vec<_> = (&mut b).take(4).map(|d| d.as_millis()).collect();
    assert_eq!(d, vec![100, 200, 300, 300]);
    b.reset();
    assert_eq!(b.next(), Some(Duration::from_millis(100)));
}

#[test]
fn default_skips_istios_namespaces_but_not_kube_system() {
    let s = RootCertSettings::default();
    assert!(s.ignored_namespaces.contains("kube-public"));
    assert!(s.ignored_namespaces.contains("kube-node-lease"));
    assert!(s.ignored_namespaces.contains("local-path-storage"));
    assert!(!s.ignored_namespaces.contains("kube-system"));
}

/// Waypoint Deployments read their root from what this controller publishes.
#[tokio::test]
async fn waypoints_mount_the_published_configmap() {
    use crate::controller::tests::waypoint_settings;
    use crate::controller::waypoint::WaypointController;
    let (client, _log) = fake::client(|r| panic!("unexpected {r:?}"));
    let c = WaypointController::new(client, waypoint_settings());
    let gw = serde_json::from_value(
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
        "metadata": {"name": "waypoint", "namespace": "app", "uid": "u1"},
        "spec": {"gatewayClassName": "istio-waypoint"}}),
    )
    .unwrap();
    let [_, _, deploy] = c.desired(&gw).unwrap();
    let pod = &deploy["spec"]["template"]["spec"];
    let vol = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["configMap"]["name"] == ROOT_CERT_CONFIGMAP)
        .expect("a volume of the published ConfigMap");
    let ctr = &pod["containers"][0];
    let mount = ctr["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == vol["name"])
        .expect("mounted");
    let root_ca = ctr["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "XDS_ROOT_CA")
        .unwrap();
    assert_eq!(
        root_ca["value"].as_str().unwrap(),
        format!("{}/{ROOT_CERT_KEY}", mount["mountPath"].as_str().unwrap())
    );
}

#[tokio::test]
async fn write_errors_name_the_configmap_and_the_rbac_to_check() {
    let (client, _log) = fake::client(|_| {
        Reply::Json(
            403,
            status(
                403,
                "Forbidden",
                "configmaps \"istio-ca-root-cert\" is forbidden: User \"system:serviceaccount:istio-system:istiod-lite\" cannot patch resource \"configmaps\"",
            ),
        )
    });
    let c = RootCertController::new(client, settings());
    let err = c
        .write(&Write::Update("app".into()), "pem")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("updating ConfigMap app/istio-ca-root-cert: ")
            && err.contains("cannot patch")
            && err.ends_with("(RBAC: create and patch on configmaps?)"),
        "{err}"
    );
}

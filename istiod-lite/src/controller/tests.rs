use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kube::api::DynamicObject;
use serde_json::{json, Value};
use tokio::sync::watch;

use super::leader::{LeaderElector, LeaseSettings};
use super::waypoint::{WaypointController, WaypointSettings};
use crate::source::kube::fake::{self, event, list, status, Reply};

const LEASE_PATH: &str =
    "/apis/coordination.k8s.io/v1/namespaces/istio-system/leases/istiod-lite-leader";

/// A fake Lease API with compare-and-swap on resourceVersion.
fn lease_api(state: Arc<Mutex<Option<Value>>>) -> kube::Client {
    let (client, _log) = fake::client(move |r| {
        let mut st = state.lock().unwrap();
        let bump = |v: &mut Value, st_rv: Option<&str>| {
            let rv: u64 = st_rv.and_then(|s| s.parse().ok()).unwrap_or(0) + 1;
            v["metadata"]["resourceVersion"] = rv.to_string().into();
            v["kind"] = "Lease".into();
            v["apiVersion"] = "coordination.k8s.io/v1".into();
        };
        match (r.method.as_str(), r.path.as_str()) {
            ("GET", LEASE_PATH) => match &*st {
                Some(v) => Reply::Json(200, v.clone()),
                None => Reply::Json(
                    404,
                    status(
                        404,
                        "NotFound",
                        "leases.coordination.k8s.io \"istiod-lite-leader\" not found",
                    ),
                ),
            },
            ("POST", "/apis/coordination.k8s.io/v1/namespaces/istio-system/leases") => {
                if st.is_some() {
                    return Reply::Json(409, status(409, "AlreadyExists", "already exists"));
                }
                let mut v = r.body.clone();
                bump(&mut v, None);
                *st = Some(v.clone());
                Reply::Json(201, v)
            }
            ("PUT", LEASE_PATH) => {
                let cur_rv = st.as_ref().and_then(|v| {
                    v["metadata"]["resourceVersion"]
                        .as_str()
                        .map(str::to_string)
                });
                if r.body["metadata"]["resourceVersion"].as_str() != cur_rv.as_deref() {
                    return Reply::Json(
                        409,
                        status(409, "Conflict", "the object has been modified"),
                    );
                }
                let mut v = r.body.clone();
                bump(&mut v, cur_rv.as_deref());
                *st = Some(v.clone());
                Reply::Json(200, v)
            }
            other => panic!("unexpected {other:?}"),
        }
    });
    client
}

fn elector(state: &Arc<Mutex<Option<Value>>>, id: &str) -> LeaderElector {
    LeaderElector::new(
        lease_api(state.clone()),
        LeaseSettings::new("istio-system", id),
    )
}

fn holder(state: &Arc<Mutex<Option<Value>>>) -> Value {
    state.lock().unwrap().as_ref().unwrap()["spec"].clone()
}

#[tokio::test]
async fn leader_election_acquire_renew_lose_takeover() {
    let state = Arc::new(Mutex::new(None));
    let a = elector(&state, "istiod-a");
    let b = elector(&state, "istiod-b");

    // Acquire: no Lease yet, A creates it.
    assert!(a.try_acquire_or_renew().await.unwrap());
    let spec = holder(&state);
    assert_eq!(spec["holderIdentity"], "istiod-a");
    assert_eq!(spec["leaseDurationSeconds"], 15);
    let first_renew = spec["renewTime"].clone();

    // B sees a fresh Lease held by A: follower.
    assert!(!b.try_acquire_or_renew().await.unwrap());
    assert_eq!(holder(&state)["holderIdentity"], "istiod-a");

    // Renew: A updates renewTime, keeps acquireTime.
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert!(a.try_acquire_or_renew().await.unwrap());
    let spec = holder(&state);
    assert_ne!(spec["renewTime"], first_renew);
    assert_eq!(spec["leaseTransitions"], 0);

    // A stops renewing; once the Lease expired B takes over and counts a transition.
    {
        let mut st = state.lock().unwrap();
        let v = st.as_mut().unwrap();
        let old = Timestamp::from_second(Timestamp::now().as_second() - 60).unwrap();
        v["spec"]["renewTime"] = format!("{}", old.strftime("%Y-%m-%dT%H:%M:%S.%6fZ")).into();
    }
    assert!(b.try_acquire_or_renew().await.unwrap());
    let spec = holder(&state);
    assert_eq!(spec["holderIdentity"], "istiod-b");
    assert_eq!(spec["leaseTransitions"], 1);

    // Lose: A's next round sees B holding a fresh Lease.
    assert!(!a.try_acquire_or_renew().await.unwrap());

    // Release hands it back without waiting for expiry.
    b.release().await.unwrap();
    assert!(holder(&state)["holderIdentity"].is_null());
    assert!(a.try_acquire_or_renew().await.unwrap());
}

#[tokio::test]
async fn leader_run_publishes_leadership_and_steps_down_on_shutdown() {
    let state = Arc::new(Mutex::new(None));
    let mut s = LeaseSettings::new("istio-system", "istiod-a");
    s.renew_period = Duration::from_millis(20);
    let a = LeaderElector::new(lease_api(state.clone()), s);
    let (tx, mut rx) = watch::channel(false);
    let (stop_tx, stop_rx) = watch::channel(false);
    let task = tokio::spawn(a.run(tx, stop_rx));
    tokio::time::timeout(Duration::from_secs(5), rx.wait_for(|l| *l))
        .await
        .unwrap()
        .unwrap();
    stop_tx.send(true).unwrap();
    task.await.unwrap();
    assert!(!*rx.borrow());
    assert!(
        holder(&state)["holderIdentity"].is_null(),
        "released on shutdown"
    );
}

/// Settings of a waypoint controller (also what the root-cert tests run one with).
pub(super) fn waypoint_settings() -> WaypointSettings {
    WaypointSettings {
        image: "registry.example/waypoint:1".into(),
        xds_address: "https://istiod.istio-system.svc:15012".into(),
        trust_domain: "cluster.local".into(),
        cluster_id: "Kubernetes".into(),
        token_audience: "istio-ca".into(),
        cluster_domain: "cluster.local".into(),
        resync: Duration::from_secs(300),
    }
}

fn gateway(name: &str, class: &str, status: Value) -> Value {
    json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
           "metadata": {"name": name, "namespace": "app", "uid": format!("uid-{name}"), "generation": 2, "resourceVersion": "7"},
           "spec": {"gatewayClassName": class, "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]},
           "status": status})
}

/// Answers apply patches by echoing them.
fn echo_api() -> (kube::Client, fake::Log) {
    let mut watches = 0;
    fake::client(
        move |r| match (r.method.as_str(), r.path.as_str(), r.is_watch()) {
            ("PATCH", _, _) => Reply::Json(200, r.body.clone()),
            ("GET", "/apis/gateway.networking.k8s.io/v1/gateways", false) => Reply::Json(
                200,
                list(
                    "Gateway",
                    "gateway.networking.k8s.io/v1",
                    "7",
                    vec![
                        gateway("waypoint", "istio-waypoint", json!({})),
                        gateway("ingress", "istio", json!({})),
                    ],
                ),
            ),
            ("GET", "/apis/gateway.networking.k8s.io/v1/gateways", true) => {
                watches += 1;
                if watches > 1 {
                    return Reply::Hang;
                }
                Reply::Events(vec![event(
                    "MODIFIED",
                    gateway("waypoint", "istio-waypoint", json!({})),
                )])
            }
            other => panic!("unexpected {other:?}"),
        },
    )
}

#[tokio::test]
async fn controller_applies_owned_objects_and_writes_status() {
    let (client, log) = echo_api();
    let c = WaypointController::new(client, waypoint_settings());
    let gw: DynamicObject =
        serde_json::from_value(gateway("waypoint", "istio-waypoint", json!({}))).unwrap();
    c.reconcile(&gw).await.unwrap();

    let reqs = log.lock().unwrap().clone();
    let paths: Vec<_> = reqs
        .iter()
        .map(|r| (r.method.as_str(), r.path.as_str()))
        .collect();
    assert_eq!(
        paths,
        vec![
            ("PATCH", "/api/v1/namespaces/app/serviceaccounts/waypoint"),
            ("PATCH", "/api/v1/namespaces/app/services/waypoint"),
            ("PATCH", "/apis/apps/v1/namespaces/app/deployments/waypoint"),
            (
                "PATCH",
                "/apis/gateway.networking.k8s.io/v1/namespaces/app/gateways/waypoint/status"
            ),
        ]
    );
    for r in &reqs {
        assert_eq!(r.content_type, "application/apply-patch+yaml", "{r:?}");
        assert_eq!(r.param("fieldManager").as_deref(), Some("istiod-lite"));
        assert_eq!(r.param("force").as_deref(), Some("true"));
    }
    for r in &reqs[..3] {
        let owner = &r.body["metadata"]["ownerReferences"][0];
        assert_eq!(owner["kind"], "Gateway");
        assert_eq!(owner["uid"], "uid-waypoint");
        assert_eq!(
            r.body["metadata"]["labels"]["gateway.networking.k8s.io/gateway-name"],
            "waypoint"
        );
    }
    let svc = &reqs[1].body;
    let ports: Vec<_> = svc["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["port"].as_u64().unwrap())
        .collect();
    assert_eq!(ports, vec![15008, 15021, 15020]);
    let pod = &reqs[2].body["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "waypoint");
    let ctr = &pod["containers"][0];
    assert_eq!(ctr["image"], "registry.example/waypoint:1");
    let env: std::collections::BTreeMap<String, Value> = ctr["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap().to_string(),
                e.get("value")
                    .cloned()
                    .unwrap_or_else(|| e["valueFrom"].clone()),
            )
        })
        .collect();
    assert_eq!(env["XDS_ADDRESS"], "https://istiod.istio-system.svc:15012");
    assert_eq!(env["GATEWAY_NAME"], "waypoint");
    assert_eq!(env["AUTH_TOKEN"], "/var/run/secrets/tokens/istio-token");
    assert_eq!(
        env["POD_NAMESPACE"]["fieldRef"]["fieldPath"],
        "metadata.namespace"
    );
    assert_eq!(env["INSTANCE_IP"]["fieldRef"]["fieldPath"], "status.podIP");
    assert_eq!(
        pod["volumes"][0]["projected"]["sources"][0]["serviceAccountToken"]["audience"],
        "istio-ca"
    );

    let st = &reqs[3].body["status"];
    assert_eq!(
        st["addresses"],
        json!([{"type": "Hostname", "value": "waypoint.app.svc.cluster.local"}])
    );
    let conds = st["conditions"].as_array().unwrap();
    assert_eq!(conds[0]["type"], "Accepted");
    assert_eq!(conds[0]["status"], "True");
    assert_eq!(conds[1]["type"], "Programmed");
    assert_eq!(conds[1]["status"], "True");
    assert_eq!(conds[1]["observedGeneration"], 2);

    // Status already written: a second reconcile re-applies the objects but skips the status.
    let gw2: DynamicObject =
        serde_json::from_value(gateway("waypoint", "istio-waypoint", st.clone())).unwrap();
    log.lock().unwrap().clear();
    c.reconcile(&gw2).await.unwrap();
    assert_eq!(fake::count(&log, |r| r.path.ends_with("/status")), 0);
    assert_eq!(fake::count(&log, |r| r.method == "PATCH"), 3);
}

#[tokio::test]
async fn controller_reports_apply_failure_in_status() {
    let (client, log) = fake::client(|r| match r.path.as_str() {
        p if p.ends_with("/deployments/waypoint") => Reply::Json(
            403,
            status(
                403,
                "Forbidden",
                "deployments.apps \"waypoint\" is forbidden: User cannot patch resource",
            ),
        ),
        _ => Reply::Json(200, r.body.clone()),
    });
    let c = WaypointController::new(client, waypoint_settings());
    let gw: DynamicObject =
        serde_json::from_value(gateway("waypoint", "istio-waypoint", json!({}))).unwrap();
    let err = c.reconcile(&gw).await.unwrap_err().to_string();
    assert!(err.contains("Deployment app/waypoint"), "{err}");
    let reqs = log.lock().unwrap().clone();
    let st = &reqs.last().unwrap().body["status"]["conditions"][1];
    assert_eq!(st["status"], "False");
    assert_eq!(st["reason"], "NoResources");
}

#[tokio::test]
async fn controller_writes_only_while_leader() {
    let (client, log) = echo_api();
    let c = WaypointController::new(client, waypoint_settings());
    let (leader_tx, leader_rx) = watch::channel(false);
    let (_stop_tx, stop_rx) = watch::channel(false);
    let task = tokio::spawn(c.run(leader_rx, stop_rx));
    // Follower: lists and watches, writes nothing.
    tokio::time::timeout(Duration::from_secs(5), async {
        while fake::count(&log, |r| r.is_watch()) < 1 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(fake::count(&log, |r| r.method == "PATCH"), 0);

    // Leader: reconciles the waypoint Gateway only (not the `istio` class one), once per generation.
    leader_tx.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(5), async {
        while fake::count(&log, |r| r.path.ends_with("/status")) < 1 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(fake::count(&log, |r| r.path.contains("ingress")), 0);
    assert_eq!(
        fake::count(&log, |r| r.path.ends_with("/deployments/waypoint")),
        1
    );
    task.abort();
}

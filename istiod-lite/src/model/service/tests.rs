//! Endpoints of Services without a selector, from EndpointSlices: what ztunnel is pushed
//! (workloads) and what the waypoint is pushed (route backends).

use mesh_proto::workload::{
    address, Address, NetworkMode, TunnelProtocol, Workload, WorkloadStatus,
};
use mesh_proto::ADDRESS_TYPE_URL;
use prost::Message;

use crate::model::test_fixtures::{cfg, params_in, waypoint_gateway_yaml};
use crate::model::{build, routes, ModelParams};
use crate::source::{ConfigSnapshot, ObjectKey};

/// The identities below are asserted in trust domain `example.org`.
fn params() -> ModelParams {
    params_in("example.org")
}

const BASE: &str = concat!(
    r#"
kind: Namespace
metadata: {name: app, labels: {istio.io/dataplane-mode: ambient}}
---
"#,
    waypoint_gateway_yaml!(),
    r#"---
kind: Service
metadata: {name: db, namespace: app, labels: {istio.io/use-waypoint: waypoint}}
spec:
  clusterIP: 10.1.0.9
  ports: [{name: sql, port: 5432, targetPort: 1111}, {name: admin, port: 9000}]
---
kind: Service
metadata: {name: web, namespace: app}
spec: {clusterIP: 10.1.0.8, selector: {app: web}, ports: [{name: http, port: 80, targetPort: 8080}]}
---
kind: Pod
metadata: {name: db-0, namespace: app, labels: {app: db}}
spec: {nodeName: n1, serviceAccountName: db}
status: {podIP: 10.0.0.5, conditions: [{type: Ready, status: "True"}]}
---
kind: Pod
metadata: {name: web-0, namespace: app, labels: {app: web}}
spec: {nodeName: n1}
status: {podIP: 10.0.0.6}
"#
);

/// The slice of `db`: a pod endpoint, a ready and an unready address endpoint, an endpoint
/// naming a pod nobody has; port `sql` on 5433 (not the Service's targetPort 1111), a UDP port.
const DB_SLICE: &str = r#"
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: db-x1, namespace: app, labels: {kubernetes.io/service-name: db}}
addressType: IPv4
endpoints:
- addresses: [10.0.0.5]
  targetRef: {kind: Pod, name: db-0}
- addresses: [192.168.7.1]
  conditions: {ready: true}
- addresses: [192.168.7.2]
  conditions: {ready: false}
- addresses: [10.0.0.99]
  targetRef: {kind: Pod, name: gone}
ports:
- {name: sql, port: 5433}
- {name: admin, port: 9000, protocol: UDP}
"#;

/// Slices that change nothing: one of a Service with a selector (its pods are the truth), an
/// FQDN slice, one for a Service that does not exist.
const IGNORED_SLICES: &str = r#"
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-x1, namespace: app, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
endpoints: [{addresses: [192.168.9.9]}]
ports: [{name: http, port: 8080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: db-fqdn, namespace: app, labels: {kubernetes.io/service-name: db}}
addressType: FQDN
endpoints: [{addresses: [db.example.com]}]
ports: [{name: sql, port: 5432}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: nosvc-x1, namespace: app, labels: {kubernetes.io/service-name: nosvc}}
addressType: IPv4
endpoints: [{addresses: [192.168.9.8]}]
ports: [{name: sql, port: 5432}]
"#;

fn workloads(c: &ConfigSnapshot) -> Vec<Workload> {
    let snap = build(c, &params(), None, 1);
    snap.get(ADDRESS_TYPE_URL)
        .unwrap()
        .resources
        .values()
        .filter_map(
            |r| match Address::decode(r.any.value.as_slice()).unwrap().r#type {
                Some(address::Type::Workload(w)) => Some(w),
                _ => None,
            },
        )
        .collect()
}

const DB_KEY: &str = "app/db.app.svc.cluster.local";

#[test]
fn selectorless_service_endpoints_reach_ztunnel() {
    let c = cfg(&format!("{BASE}---{DB_SLICE}---{IGNORED_SLICES}"));
    let ws = workloads(&c);
    let by_name = |n: &str| ws.iter().find(|w| w.name == n).cloned();

    // The pod named by targetRef serves db on the slice's port, as the pod's own workload.
    let pod = by_name("db-0").expect("pod workload");
    let ports = &pod.services[DB_KEY].ports;
    assert_eq!(ports.len(), 1, "the UDP port is left out: {ports:?}");
    assert_eq!((ports[0].service_port, ports[0].target_port), (5432, 5433));
    assert_eq!(pod.tunnel_protocol(), TunnelProtocol::Hbone);

    // The address-only endpoints: one workload each, Istio's uid, health from conditions.ready.
    let addr: Vec<&Workload> = ws.iter().filter(|w| w.name == "db-x1").collect();
    assert_eq!(addr.len(), 2, "{addr:?}");
    let ready = addr
        .iter()
        .find(|w| w.uid == "Kubernetes/discovery.k8s.io/EndpointSlice/app/db-x1/192.168.7.1")
        .expect("uid of the ready endpoint");
    assert_eq!(ready.addresses, vec![vec![192, 168, 7, 1]]);
    assert_eq!(ready.status(), WorkloadStatus::Healthy);
    assert_eq!(ready.tunnel_protocol(), TunnelProtocol::None);
    assert_eq!(ready.network_mode(), NetworkMode::HostNetwork);
    assert!(ready.service_account.is_empty());
    assert_eq!(ready.services[DB_KEY].ports[0].target_port, 5433);
    let unready = addr
        .iter()
        .find(|w| w.uid.ends_with("/192.168.7.2"))
        .unwrap();
    assert_eq!(unready.status(), WorkloadStatus::Unhealthy);

    // Nothing from the ignored slices, nor from the endpoint naming an unknown pod.
    for w in &ws {
        for a in [&[192, 168, 9, 9][..], &[192, 168, 9, 8], &[10, 0, 0, 99]] {
            assert!(!w.addresses.iter().any(|x| x == a), "{w:?}");
        }
    }
    let web = by_name("web-0").unwrap();
    assert_eq!(
        web.services["app/web.app.svc.cluster.local"].ports[0].target_port, 8080,
        "a Service with a selector keeps its pods"
    );
    assert!(!web.services.contains_key(DB_KEY));
}

#[test]
fn selectorless_service_endpoints_reach_the_waypoint() {
    let c = cfg(&format!("{BASE}---{DB_SLICE}"));
    let views = routes::translate(&c, &params());
    let db = views[&ObjectKey::new("app", "waypoint")]
        .iter()
        .find(|(n, _)| n == DB_KEY)
        .map(|(_, r)| r.clone())
        .expect("db routes");
    let sql = db.ports.iter().find(|p| p.port == 5432).unwrap();
    let eps = &sql.default_backend.as_ref().unwrap().endpoints;
    let got: Vec<(Vec<u8>, u32, &str, bool)> = eps
        .iter()
        .map(|e| (e.address.clone(), e.port, e.identity.as_str(), e.hbone))
        .collect();
    assert_eq!(
        got,
        vec![
            (
                vec![10, 0, 0, 5],
                5433,
                "spiffe://example.org/ns/app/sa/db",
                true
            ),
            (vec![192, 168, 7, 1], 5433, "", false),
        ],
        "the pod with its identity over HBONE, the ready address in plain TCP; not the unready one"
    );
    // The admin port has only a UDP port in the slice: no endpoints.
    let admin = db.ports.iter().find(|p| p.port == 9000).unwrap();
    assert!(admin.default_backend.as_ref().unwrap().endpoints.is_empty());

    // Without slices the Service has no endpoints at all (and no workloads serve it).
    let bare = cfg(BASE);
    let views = routes::translate(&bare, &params());
    let db = &views[&ObjectKey::new("app", "waypoint")]
        .iter()
        .find(|(n, _)| n == DB_KEY)
        .unwrap()
        .1;
    assert!(db.ports[0]
        .default_backend
        .as_ref()
        .unwrap()
        .endpoints
        .is_empty());
    assert!(workloads(&bare)
        .iter()
        .all(|w| !w.services.contains_key(DB_KEY)));
}

#[test]
fn a_pod_in_two_slices_of_a_service_merges_its_ports() {
    let second = DB_SLICE
        .replace("db-x1", "db-x2")
        .replace("{name: sql, port: 5433}", "{name: admin, port: 9001}");
    let c = cfg(&format!("{BASE}---{DB_SLICE}---{second}"));
    let pod = workloads(&c)
        .into_iter()
        .find(|w| w.name == "db-0")
        .unwrap();
    let mut ports: Vec<(u32, u32)> = pod.services[DB_KEY]
        .ports
        .iter()
        .map(|p| (p.service_port, p.target_port))
        .collect();
    ports.sort();
    assert_eq!(ports, vec![(5432, 5433), (9000, 9001)]);
}

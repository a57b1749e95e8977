//! Localities from Node labels (and the pod's subzone label) into workload xDS and the
//! waypoint's routes; DestinationRule `localityLbSetting` into the backend's load balancer.

use super::*;
use crate::model::test_fixtures::{ambient_app_yaml, cfg, params, waypoint_pod_yaml};
use mesh_proto::route::{LocalityDistribute, LocalityFailover, LocalityWeight};

fn loc(region: &str, zone: &str, subzone: &str) -> route::Locality {
    route::Locality {
        region: region.into(),
        zone: zone.into(),
        subzone: subzone.into(),
    }
}

const BASE: &str = concat!(
    r#"
apiVersion: v1
kind: Node
metadata:
  name: n1
  labels: {topology.kubernetes.io/region: us-east, topology.kubernetes.io/zone: zone-a, topology.istio.io/subzone: rack-1}
---
apiVersion: v1
kind: Node
metadata:
  name: n2
  namespace: ignored
  labels: {failure-domain.beta.kubernetes.io/region: us-east, failure-domain.beta.kubernetes.io/zone: zone-b}
---
"#,
    ambient_app_yaml!(),
    "---\n",
    waypoint_pod_yaml!(),
    r#"---
kind: Pod
metadata: {name: wp-1, namespace: app, labels: {gateway.networking.k8s.io/gateway-name: waypoint}}
spec: {serviceAccountName: waypoint, nodeName: n3}
status: {podIP: 10.0.0.8}
---
kind: Pod
metadata: {name: echo-a, namespace: app, labels: {app: echo, topology.istio.io/subzone: rack-7}}
spec: {serviceAccountName: echo, nodeName: n1}
status: {podIP: 10.0.0.1}
---
kind: Pod
metadata: {name: echo-b, namespace: app, labels: {app: echo}}
spec: {serviceAccountName: echo, nodeName: n2}
status: {podIP: 10.0.0.2}
---
kind: Pod
metadata: {name: echo-nowhere, namespace: app, labels: {app: echo}}
spec: {serviceAccountName: echo, nodeName: n3}
status: {podIP: 10.0.0.3}
---
kind: Service
metadata: {name: echo, namespace: app}
spec: {clusterIP: 10.1.0.1, selector: {app: echo}, ports: [{name: http, port: 80, targetPort: 8080}, {name: http-alt, port: 81, targetPort: 8081}]}
"#
);

#[test]
fn node_labels_and_the_pod_subzone_give_workload_and_endpoint_localities() {
    let c = cfg(BASE);
    // Nodes are cluster-scoped: a namespace written on one is dropped.
    assert_eq!(c.nodes["n2"].metadata.namespace, None);

    let policies = super::super::authorization::Policies::build(&c, "istio-system");
    let pods = super::super::workload::translate(&c, &params(), &policies);
    let workload_locality = |name: &str| {
        pods.iter()
            .find(|(_, w)| w.name == name)
            .unwrap()
            .1
            .locality
            .clone()
    };
    let wl = |r: &str, z: &str, s: &str| mesh_proto::workload::Locality {
        region: r.into(),
        zone: z.into(),
        subzone: s.into(),
    };
    // The pod's own subzone label wins over its node's.
    assert_eq!(
        workload_locality("echo-a"),
        Some(wl("us-east", "zone-a", "rack-7"))
    );
    // The deprecated failure-domain labels still count.
    assert_eq!(
        workload_locality("echo-b"),
        Some(wl("us-east", "zone-b", ""))
    );
    // A pod on a node we have no object for has no locality.
    assert_eq!(workload_locality("echo-nowhere"), None);
    assert_eq!(
        workload_locality("wp-0"),
        Some(wl("us-east", "zone-a", "rack-1"))
    );

    let all = translate(&c, &params());
    let routes = &all[&ObjectKey::new("app", "waypoint")];
    let echo = &routes
        .iter()
        .find(|(n, _)| n == "app/echo.app.svc.cluster.local")
        .unwrap()
        .1;
    let eps = &echo.ports[0].default_backend.as_ref().unwrap().endpoints;
    let by_ip = |last: u8| {
        eps.iter()
            .find(|e| e.address == vec![10, 0, 0, last])
            .unwrap()
            .locality
            .clone()
    };
    assert_eq!(by_ip(1), Some(loc("us-east", "zone-a", "rack-7")));
    assert_eq!(by_ip(2), Some(loc("us-east", "zone-b", "")));
    assert_eq!(by_ip(3), None);
    // The waypoint's own pods, for each replica to find itself; wp-1's node is unknown.
    assert_eq!(
        echo.waypoint_instances,
        vec![route::WaypointInstance {
            pod_name: "wp-0".into(),
            locality: Some(loc("us-east", "zone-a", "rack-1")),
        }]
    );
}

fn echo_backend(c: &ConfigSnapshot, port: usize) -> Backend {
    let all = translate(c, &params());
    let routes = &all[&ObjectKey::new("app", "waypoint")];
    routes
        .iter()
        .find(|(n, _)| n == "app/echo.app.svc.cluster.local")
        .unwrap()
        .1
        .ports[port]
        .default_backend
        .clone()
        .unwrap()
}

fn dr(traffic_policy: &str) -> String {
    format!("{BASE}---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: echo, namespace: app}}\nspec:\n  host: echo\n  trafficPolicy: {traffic_policy}\n")
}

fn locality_lb(b: &Backend) -> Option<route::LocalityLb> {
    b.policy.as_ref()?.load_balancer.as_ref()?.locality.clone()
}

#[test]
fn locality_lb_follows_istio_rules() {
    // Outlier detection alone turns on priority failover (locality LB is on mesh-wide).
    let c = cfg(&dr("{outlierDetection: {consecutive5xxErrors: 2}}"));
    let b = echo_backend(&c, 0);
    assert_eq!(locality_lb(&b), Some(route::LocalityLb::default()));
    // ... keeping round robin as the algorithm within a level.
    assert_eq!(
        b.policy.unwrap().load_balancer.unwrap().simple(),
        route::load_balancer::Simple::RoundRobin
    );

    // Without outlier detection there is no failover: nothing would ever be unhealthy.
    let c = cfg(&dr("{loadBalancer: {simple: RANDOM, localityLbSetting: {failover: [{from: us-east, to: eu-west}]}}}"));
    assert_eq!(locality_lb(&echo_backend(&c, 0)), None);

    // enabled: false turns it off even with outlier detection.
    let c = cfg(&dr("{outlierDetection: {consecutive5xxErrors: 2}, loadBalancer: {localityLbSetting: {enabled: false, failover: [{from: us-east, to: eu-west}]}}}"));
    assert_eq!(locality_lb(&echo_backend(&c, 0)), None);

    // The failover mapping is passed on.
    let c = cfg(&dr("{outlierDetection: {consecutive5xxErrors: 2}, loadBalancer: {simple: LEAST_REQUEST, localityLbSetting: {failover: [{from: us-east, to: eu-west}]}}}"));
    let b = echo_backend(&c, 0);
    assert_eq!(
        locality_lb(&b).unwrap().failover,
        vec![LocalityFailover {
            from: "us-east".into(),
            to: "eu-west".into()
        }]
    );
    assert_eq!(
        b.policy.unwrap().load_balancer.unwrap().simple(),
        route::load_balancer::Simple::LeastRequest
    );

    // distribute applies without outlier detection; weights sorted by locality.
    let c = cfg(&dr("{loadBalancer: {localityLbSetting: {distribute: [{from: \"us-east/zone-a/*\", to: {\"us-east/zone-b/*\": 30, \"us-east/zone-a/*\": 70}}]}}}"));
    assert_eq!(
        locality_lb(&echo_backend(&c, 0)).unwrap().distribute,
        vec![LocalityDistribute {
            from: "us-east/zone-a/*".into(),
            to: vec![
                LocalityWeight {
                    locality: "us-east/zone-a/*".into(),
                    weight: 70
                },
                LocalityWeight {
                    locality: "us-east/zone-b/*".into(),
                    weight: 30
                },
            ],
        }]
    );

    // A port-level loadBalancer replaces the top-level one whole, localityLbSetting included.
    let c = cfg(&dr("{outlierDetection: {consecutive5xxErrors: 2}, loadBalancer: {localityLbSetting: {enabled: false}}, portLevelSettings: [{port: {number: 81}, loadBalancer: {simple: RANDOM}}]}"));
    assert_eq!(locality_lb(&echo_backend(&c, 0)), None);
    assert_eq!(
        locality_lb(&echo_backend(&c, 1)),
        Some(route::LocalityLb::default())
    );
}

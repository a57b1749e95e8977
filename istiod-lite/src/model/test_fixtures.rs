//! What the model's unit tests share: a config from YAML, the model parameters, and the YAML of
//! the namespace, waypoint and pods most of them route through.

use crate::model::ModelParams;
use crate::source::{parse_file, ConfigSnapshot};

/// The config of `yaml`; fails the test when any of it does not parse.
pub fn cfg(yaml: &str) -> ConfigSnapshot {
    let parsed = parse_file(std::path::Path::new("t.yaml"), yaml);
    assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
    ConfigSnapshot::from_objects(&parsed.objects)
}

/// Model parameters of cluster `Kubernetes` with trust domain `cluster.local`.
pub fn params() -> ModelParams {
    params_in("cluster.local")
}

/// Model parameters of cluster `Kubernetes` with trust domain `trust_domain`.
pub fn params_in(trust_domain: &str) -> ModelParams {
    ModelParams {
        trust_domain: trust_domain.into(),
        cluster_id: "Kubernetes".into(),
        root_namespace: "istio-system".into(),
    }
}

// YAML fixtures are macros, not constants, so that a test's own fixture constant can `concat!`
// them. Each is whole YAML documents; join them with "---\n".

/// The `istio-waypoint` Gateway `app/waypoint` with its HBONE listener.
macro_rules! waypoint_gateway_yaml {
    () => {
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: app}
spec: {gatewayClassName: istio-waypoint, listeners: [{name: mesh, port: 15008, protocol: HBONE}]}
"#
    };
}
pub(crate) use waypoint_gateway_yaml;

/// Namespace `app` in ambient mode, its Services using waypoint `app/waypoint` unless they say
/// otherwise, and that waypoint's Gateway.
macro_rules! ambient_app_yaml {
    () => {
        concat!(
            r#"kind: Namespace
metadata: {name: app, labels: {istio.io/dataplane-mode: ambient, istio.io/use-waypoint: waypoint}}
---
"#,
            $crate::model::test_fixtures::waypoint_gateway_yaml!()
        )
    };
}
pub(crate) use ambient_app_yaml;

/// `wp-0`, the pod of waypoint `app/waypoint`: service account `waypoint`, node `n1`, IP
/// 10.0.0.9.
macro_rules! waypoint_pod_yaml {
    () => {
        r#"kind: Pod
metadata: {name: wp-0, namespace: app, labels: {gateway.networking.k8s.io/gateway-name: waypoint}}
spec: {serviceAccountName: waypoint, nodeName: n1}
status: {podIP: 10.0.0.9}
"#
    };
}
pub(crate) use waypoint_pod_yaml;

/// Pods `echo-v1` (10.0.0.1) and `echo-v2` (10.0.0.2) in `app`, labelled `app: echo` and
/// `version: v1|v2`: service account `echo`, node `n1`.
macro_rules! echo_pods_yaml {
    () => {
        r#"kind: Pod
metadata: {name: echo-v1, namespace: app, labels: {app: echo, version: v1}}
spec: {serviceAccountName: echo, nodeName: n1}
status: {podIP: 10.0.0.1}
---
kind: Pod
metadata: {name: echo-v2, namespace: app, labels: {app: echo, version: v2}}
spec: {serviceAccountName: echo, nodeName: n1}
status: {podIP: 10.0.0.2}
"#
    };
}
pub(crate) use echo_pods_yaml;

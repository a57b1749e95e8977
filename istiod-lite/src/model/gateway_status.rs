//! Status as Gateway API (and Istio) report it: waypoint Gateways' `Accepted` and `Programmed`
//! (here), routes' per-parent `Accepted` and `ResolvedRefs` ([`route`]), and the
//! `WaypointAccepted` condition of policies attached with `targetRefs` ([`policy`]).
//!
//! In Kubernetes mode the leader writes these to the objects (the waypoint controller for
//! Gateways, [`crate::controller::status`] for routes and policies); in local mode nothing can
//! be written back to the YAML files, so istiod-lite serves them at `/debug/gateways` (what
//! `meshctl waypoint status|list --wait` read) and `/debug/routes`.
//!
//! `Accepted`: the Gateway parsed and is of class `istio-waypoint` with its HBONE listener
//! (invalid ones never reach the snapshot: their errors are reported by the source).
//! `Programmed`: at least one waypoint pod (label `gateway.networking.k8s.io/gateway-name`) is
//! ready with an IP, so clients have somewhere to send the traffic.

pub mod policy;
pub mod route;

use serde::Serialize;

use super::service::hostname;
use crate::source::gateway::GATEWAY_NAME_LABEL;
use crate::source::ConfigSnapshot;

/// One condition, Gateway API's shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Condition {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub status: &'static str,
    pub reason: &'static str,
    pub message: String,
}

/// A waypoint Gateway and its conditions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewayStatus {
    pub namespace: String,
    pub name: String,
    pub gateway_class_name: String,
    /// `istio.io/waypoint-for`.
    pub waypoint_for: String,
    /// The address clients use (the waypoint Service's hostname).
    pub address: String,
    /// Ready waypoint pods (`namespace/name ip`).
    pub instances: Vec<String>,
    pub conditions: Vec<Condition>,
}

/// Status of every waypoint Gateway in the config, sorted by namespace and name.
pub fn waypoint_statuses(cfg: &ConfigSnapshot) -> Vec<GatewayStatus> {
    cfg.gateways
        .iter()
        .filter(|(_, g)| g.is_waypoint())
        .map(|(key, g)| {
            let instances: Vec<String> = cfg
                .pods
                .values()
                .filter(|p| {
                    p.metadata.ns() == key.namespace
                        && p.metadata.labels.get(GATEWAY_NAME_LABEL) == Some(&key.name)
                        && p.is_ready()
                        && !p.is_terminated()
                })
                .filter_map(|p| {
                    p.status
                        .ip
                        .map(|ip| format!("{}/{} {ip}", p.metadata.ns(), p.metadata.name))
                })
                .collect();
            let programmed = if instances.is_empty() {
                Condition {
                    kind: "Programmed",
                    status: "False",
                    reason: "Pending",
                    message: format!(
                        "no ready waypoint pod (a pod in {} labelled {GATEWAY_NAME_LABEL}={})",
                        key.namespace, key.name
                    ),
                }
            } else {
                Condition {
                    kind: "Programmed",
                    status: "True",
                    reason: "Programmed",
                    message: format!("{} ready waypoint pod(s)", instances.len()),
                }
            };
            GatewayStatus {
                namespace: key.namespace.clone(),
                name: key.name.clone(),
                gateway_class_name: g.spec.gateway_class_name.clone(),
                waypoint_for: format!("{:?}", g.waypoint_for()).to_lowercase(),
                address: hostname(&key.name, &key.namespace),
                instances,
                conditions: vec![
                    Condition {
                        kind: "Accepted",
                        status: "True",
                        reason: "Accepted",
                        message: "waypoint Gateway with an HBONE listener on 15008".into(),
                    },
                    programmed,
                ],
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(pod_status: &str) -> ConfigSnapshot {
        let yaml = format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: waypoint, namespace: app}}\nspec:\n  gatewayClassName: istio-waypoint\n  listeners: [{{name: mesh, port: 15008, protocol: HBONE}}]\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: ingress, namespace: app}}\nspec:\n  gatewayClassName: istio\n  listeners: [{{name: http, port: 80, protocol: HTTP}}]\n---\napiVersion: v1\nkind: Pod\nmetadata: {{name: waypoint-0, namespace: app, labels: {{gateway.networking.k8s.io/gateway-name: waypoint}}}}\nspec: {{nodeName: n1, serviceAccountName: waypoint}}\n{pod_status}"
        );
        let parsed = crate::source::parse::parse_file(std::path::Path::new("t.yaml"), &yaml);
        assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
        ConfigSnapshot::from_objects(&parsed.objects)
    }

    #[test]
    fn programmed_follows_ready_waypoint_pods() {
        let pending = waypoint_statuses(&snapshot(""));
        assert_eq!(pending.len(), 1, "only istio-waypoint Gateways");
        let s = &pending[0];
        assert_eq!((s.namespace.as_str(), s.name.as_str()), ("app", "waypoint"));
        assert_eq!(s.address, "waypoint.app.svc.cluster.local");
        assert_eq!(s.conditions[0].kind, "Accepted");
        assert_eq!(
            (s.conditions[1].status, s.conditions[1].reason),
            ("False", "Pending")
        );
        let ready = waypoint_statuses(&snapshot(
            "status: {podIP: 10.0.0.7, phase: Running, conditions: [{type: Ready, status: \"True\"}]}\n",
        ));
        assert_eq!(ready[0].conditions[1].status, "True");
        assert_eq!(ready[0].instances, vec!["app/waypoint-0 10.0.0.7"]);
    }
}

#[cfg(test)]
mod status_tests;

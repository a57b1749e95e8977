//! Waypoints: which Gateways are waypoints, which Services and Pods use one
//! (`istio.io/use-waypoint`), and the `GatewayAddress` pushed for them.
//!
//! Attachment follows Istio: the label on the Service (or Pod) wins over the label on its
//! Namespace; the value `none` opts out of a namespace-wide waypoint;
//! `istio.io/use-waypoint-namespace` names a waypoint in another namespace. A Service uses the
//! waypoint only if the Gateway's `istio.io/waypoint-for` covers services (`service`, the
//! default, or `all`); a Pod only if it covers workloads (`workload` or `all`). A waypoint's own
//! pods and Service never get a waypoint.
//!
//! The pushed address is the hostname form, as Istio's control plane sends it:
//! `{hostname: {namespace: <gw ns>, hostname: <gw>.<ns>.svc.cluster.local}, hbone_mtls_port: 15008}`.
//! It names the waypoint's Service; in local mode nobody creates that Service, so istiod-lite
//! synthesizes it (see [`waypoint_services`]) unless the config has a Service of that name. A
//! client resolves it like any Service: its endpoints are the waypoint pods (the pods labelled
//! `gateway.networking.k8s.io/gateway-name: <gw>`), dialed at `<pod IP>:15008`.

use std::collections::BTreeMap;
use std::sync::Arc;

use mesh_proto::workload::{
    gateway_address, GatewayAddress, NamespacedHostname, Port, Service as XdsService,
};

use super::service::{hostname, service_key};
use crate::source::gateway::{Gateway, GATEWAY_NAME_LABEL, WAYPOINT_PORT};
use crate::source::{ConfigSnapshot, ObjectKey, Pod, Service};

/// Label naming the waypoint to use (Namespace, Service, Pod).
pub const USE_WAYPOINT_LABEL: &str = "istio.io/use-waypoint";
/// Label naming the namespace of that waypoint (default: the object's own).
pub const USE_WAYPOINT_NAMESPACE_LABEL: &str = "istio.io/use-waypoint-namespace";

/// The waypoint Gateway `key` refers to, if it exists and is a waypoint.
fn waypoint<'a>(cfg: &'a ConfigSnapshot, key: &ObjectKey) -> Option<&'a Arc<Gateway>> {
    cfg.gateways.get(key).filter(|g| g.is_waypoint())
}

/// The Gateway named by `use-waypoint` labels: the object's own labels first, then its
/// namespace's. `None` for no label, `none`, or a label naming no waypoint Gateway.
fn chosen_waypoint(
    cfg: &ConfigSnapshot,
    namespace: &str,
    labels: &BTreeMap<String, String>,
) -> Option<ObjectKey> {
    let from = |l: &BTreeMap<String, String>| {
        l.get(USE_WAYPOINT_LABEL).map(|name| {
            let ns = l
                .get(USE_WAYPOINT_NAMESPACE_LABEL)
                .cloned()
                .unwrap_or_else(|| namespace.to_string());
            (name.clone(), ns)
        })
    };
    let (name, ns) = from(labels).or_else(|| cfg.namespace_labels(namespace).and_then(from))?;
    if name == "none" || name.is_empty() {
        return None;
    }
    let key = ObjectKey::new(ns, name);
    if waypoint(cfg, &key).is_none() {
        tracing::debug!(waypoint = %key, "use-waypoint names no istio-waypoint Gateway; ignored");
        return None;
    }
    Some(key)
}

/// True when `pod` runs a waypoint (Istio's gateway-name label naming a waypoint Gateway of its
/// namespace).
pub fn is_waypoint_pod(cfg: &ConfigSnapshot, pod: &Pod) -> bool {
    pod.metadata
        .labels
        .get(GATEWAY_NAME_LABEL)
        .is_some_and(|gw| waypoint(cfg, &ObjectKey::new(pod.metadata.ns(), gw.clone())).is_some())
}

/// True when `svc` is a waypoint's own Service (named after a waypoint Gateway).
fn is_waypoint_service(cfg: &ConfigSnapshot, svc: &Service) -> bool {
    waypoint(
        cfg,
        &ObjectKey::new(svc.metadata.ns(), svc.metadata.name.clone()),
    )
    .is_some()
}

/// The waypoint serving `svc`, if any.
pub fn service_waypoint(cfg: &ConfigSnapshot, svc: &Service) -> Option<ObjectKey> {
    if is_waypoint_service(cfg, svc) {
        return None;
    }
    let key = chosen_waypoint(cfg, svc.metadata.ns(), &svc.metadata.labels)?;
    waypoint(cfg, &key)
        .filter(|g| g.waypoint_for().services())
        .map(|_| key)
}

/// The waypoint serving traffic addressed to `pod` directly, if any.
pub fn pod_waypoint(cfg: &ConfigSnapshot, pod: &Pod) -> Option<ObjectKey> {
    if is_waypoint_pod(cfg, pod) {
        return None;
    }
    let key = chosen_waypoint(cfg, pod.metadata.ns(), &pod.metadata.labels)?;
    waypoint(cfg, &key)
        .filter(|g| g.waypoint_for().workloads())
        .map(|_| key)
}

/// The `GatewayAddress` of waypoint `key` (hostname form, HBONE port 15008).
pub fn gateway_address(key: &ObjectKey) -> GatewayAddress {
    GatewayAddress {
        destination: Some(gateway_address::Destination::Hostname(NamespacedHostname {
            namespace: key.namespace.clone(),
            hostname: hostname(&key.name, &key.namespace),
        })),
        hbone_mtls_port: u32::from(WAYPOINT_PORT),
    }
}

/// The Services of waypoints that have none in the config (local mode: nothing deploys them),
/// keyed like every Service. No VIP: clients reach the waypoint pods through the Service's
/// endpoints (`Workload.services` of the waypoint pods, port 15008).
pub fn waypoint_services(cfg: &ConfigSnapshot) -> Vec<(String, XdsService)> {
    cfg.gateways
        .iter()
        .filter(|(key, g)| g.is_waypoint() && !cfg.services.contains_key(*key))
        .map(|(key, _)| {
            let host = hostname(&key.name, &key.namespace);
            let svc = XdsService {
                name: key.name.clone(),
                namespace: key.namespace.clone(),
                hostname: host.clone(),
                ports: vec![Port {
                    service_port: u32::from(WAYPOINT_PORT),
                    target_port: u32::from(WAYPOINT_PORT),
                    ..Default::default()
                }],
                ..Default::default()
            };
            (service_key(&key.namespace, &host), svc)
        })
        .collect()
}

/// For a waypoint pod whose Service is synthesized: its entry in `Workload.services`.
pub fn waypoint_pod_service(cfg: &ConfigSnapshot, pod: &Pod) -> Option<(String, Port)> {
    let gw = pod.metadata.labels.get(GATEWAY_NAME_LABEL)?;
    let key = ObjectKey::new(pod.metadata.ns(), gw.clone());
    if waypoint(cfg, &key).is_none() || cfg.services.contains_key(&key) {
        return None;
    }
    Some((
        service_key(&key.namespace, &hostname(&key.name, &key.namespace)),
        Port {
            service_port: u32::from(WAYPOINT_PORT),
            target_port: u32::from(WAYPOINT_PORT),
            ..Default::default()
        },
    ))
}

//! Pod → `istio.workload.Workload`, and the address-only workloads of EndpointSlice endpoints
//! that are not pods (see [`super::service`] for how Services get their endpoints).

use std::collections::BTreeMap;
use std::net::IpAddr;

use mesh_proto::workload::{
    NetworkMode, PortList, TunnelProtocol, Workload, WorkloadStatus, WorkloadType,
};

use super::authorization::Policies;
use super::service::{address_workload_uid, hostname, resolve_port, service_key, SliceIndex};
use super::ModelParams;
use crate::source::{ConfigSnapshot, Pod};

/// Label (pod or namespace) that opts into ambient; a pod's `none` opts out.
pub const DATAPLANE_MODE_LABEL: &str = "istio.io/dataplane-mode";

/// Workload uid, which is also its xDS resource name.
pub fn workload_uid(cluster_id: &str, namespace: &str, name: &str) -> String {
    format!("{cluster_id}//Pod/{namespace}/{name}")
}

/// Pod is captured if labelled `ambient`, or its namespace is and the pod is not `none`.
pub fn is_ambient(pod: &Pod, namespace_labels: Option<&BTreeMap<String, String>>) -> bool {
    match pod
        .metadata
        .labels
        .get(DATAPLANE_MODE_LABEL)
        .map(String::as_str)
    {
        Some("none") => false,
        Some("ambient") => true,
        _ => namespace_labels
            .and_then(|l| l.get(DATAPLANE_MODE_LABEL))
            .is_some_and(|m| m == "ambient"),
    }
}

fn first_label<'a>(labels: &'a BTreeMap<String, String>, keys: &[&str]) -> Option<&'a str> {
    keys.iter()
        .find_map(|k| labels.get(*k))
        .map(String::as_str)
        .filter(|v| !v.is_empty())
}

/// Canonical service name: Istio's label precedence, else the pod name.
pub fn canonical_name(pod: &Pod) -> String {
    first_label(
        &pod.metadata.labels,
        &[
            "service.istio.io/canonical-name",
            "app.kubernetes.io/name",
            "app",
        ],
    )
    .unwrap_or(&pod.metadata.name)
    .to_string()
}

/// Canonical revision: Istio's label precedence, else "latest".
pub fn canonical_revision(pod: &Pod) -> String {
    first_label(
        &pod.metadata.labels,
        &[
            "service.istio.io/canonical-revision",
            "app.kubernetes.io/version",
            "version",
        ],
    )
    .unwrap_or("latest")
    .to_string()
}

pub(crate) fn ip_bytes(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

/// Translates one pod; `None` when it has no IP yet or has terminated. `policies` gives the
/// selector-scoped and PeerAuthentication policies it lists; `slices` the selector-less
/// Services whose EndpointSlices name it.
pub fn translate_pod(
    cfg: &ConfigSnapshot,
    params: &ModelParams,
    policies: &Policies,
    slices: &SliceIndex<'_>,
    pod: &Pod,
) -> Option<Workload> {
    // A scheduled pod is pushed before it has an IP (without addresses): its node's ztunnel
    // must know the pod belongs in the mesh when the CNI plugin enrolls it, which happens while
    // the pod's network is being set up, before any IP is reported.
    if pod.is_terminated() || (pod.status.ip.is_none() && pod.spec.node_name.is_none()) {
        return None;
    }
    let ns = pod.metadata.ns();
    let name = &pod.metadata.name;
    let is_waypoint = super::waypoint::is_waypoint_pod(cfg, pod);
    // A waypoint terminates HBONE itself (its own 15008 listener): it is reached over HBONE
    // but is not captured by ztunnel (native_tunnel), whatever its namespace's mode.
    let tunnel = if is_waypoint || is_ambient(pod, cfg.namespace_labels(ns)) {
        TunnelProtocol::Hbone
    } else {
        TunnelProtocol::None
    };

    let mut services = std::collections::HashMap::new();
    let range =
        crate::source::ObjectKey::new(ns, "")..crate::source::ObjectKey::new(format!("{ns}\0"), "");
    for svc in cfg.services.range(range).map(|(_, s)| s) {
        let sel = &svc.spec.selector;
        // A Service without a selector selects nothing: its EndpointSlices say (below).
        if sel.is_empty()
            || !sel
                .iter()
                .all(|(k, v)| pod.metadata.labels.get(k) == Some(v))
        {
            continue;
        }
        let ports = svc
            .spec
            .ports
            .iter()
            .filter_map(|p| resolve_port(svc, p, Some(pod)))
            .collect();
        services.insert(
            service_key(ns, &hostname(&svc.metadata.name, ns)),
            PortList { ports },
        );
    }

    let pod_key = crate::source::ObjectKey::new(ns, name.clone());
    for (key, ports) in slices.pods.get(&pod_key).into_iter().flatten() {
        services.insert(
            key.clone(),
            PortList {
                ports: ports.clone(),
            },
        );
    }

    if let Some((key, port)) = super::waypoint::waypoint_pod_service(cfg, pod) {
        services.insert(key, PortList { ports: vec![port] });
    }

    let mut w = Workload {
        uid: workload_uid(&params.cluster_id, ns, name),
        name: name.clone(),
        namespace: ns.to_string(),
        addresses: pod.status.ip.map(ip_bytes).into_iter().collect(),
        trust_domain: params.trust_domain.clone(),
        service_account: pod.service_account().to_string(),
        node: pod.spec.node_name.clone().unwrap_or_default(),
        canonical_name: canonical_name(pod),
        canonical_revision: canonical_revision(pod),
        workload_name: name.clone(),
        services,
        authorization_policies: policies.for_workload(ns, &pod.metadata.labels),
        cluster_id: params.cluster_id.clone(),
        native_tunnel: is_waypoint,
        waypoint: super::waypoint::pod_waypoint(cfg, pod)
            .map(|k| super::waypoint::gateway_address(&k)),
        locality: cfg
            .pod_locality(pod)
            .map(|l| mesh_proto::workload::Locality {
                region: l.region,
                zone: l.zone,
                subzone: l.subzone,
            }),
        ..Default::default()
    };
    w.set_tunnel_protocol(tunnel);
    w.set_workload_type(WorkloadType::Pod);
    w.set_status(if pod.is_ready() && pod.status.ip.is_some() {
        WorkloadStatus::Healthy
    } else {
        WorkloadStatus::Unhealthy
    });
    Some(w)
}

/// All workloads of the config, keyed by uid.
pub fn translate(
    cfg: &ConfigSnapshot,
    params: &ModelParams,
    policies: &Policies,
) -> Vec<(String, Workload)> {
    let slices = SliceIndex::build(cfg);
    let mut out: Vec<(String, Workload)> = cfg
        .pods
        .values()
        .filter_map(|pod| {
            let w = translate_pod(cfg, params, policies, &slices, pod);
            if w.is_none() {
                tracing::debug!(namespace = pod.metadata.ns(), pod = %pod.metadata.name, "unscheduled or terminated pod not pushed");
            }
            w
        })
        .map(|w| (w.uid.clone(), w))
        .collect();
    out.extend(address_workloads(params, &slices));
    out
}

/// The workloads of EndpointSlice endpoints that are not pods, as Istio pushes them: no
/// identity, no HBONE, no policies; a shared (host network) address, since nothing says it is
/// unique; healthy unless `conditions.ready` is false. One workload per endpoint per slice,
/// serving the slice's Service.
pub fn address_workloads(params: &ModelParams, slices: &SliceIndex<'_>) -> Vec<(String, Workload)> {
    let mut out: Vec<(String, Workload)> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (svc, ep) in &slices.addresses {
        let ns = ep.slice.metadata.ns();
        let Some(first) = ep.endpoint.ips.first() else {
            continue;
        };
        let uid = address_workload_uid(&params.cluster_id, ns, &ep.slice.metadata.name, *first);
        if !seen.insert(uid.clone()) {
            tracing::warn!(slice = %format!("{ns}/{}", ep.slice.metadata.name), address = %first, "address listed twice in one EndpointSlice; the second is ignored");
            continue;
        }
        let key = service_key(ns, &hostname(&svc.metadata.name, svc.metadata.ns()));
        let mut w = Workload {
            uid: uid.clone(),
            name: ep.slice.metadata.name.clone(),
            namespace: ns.to_string(),
            addresses: ep.endpoint.ips.iter().copied().map(ip_bytes).collect(),
            trust_domain: params.trust_domain.clone(),
            services: [(
                key,
                PortList {
                    ports: ep.ports.clone(),
                },
            )]
            .into(),
            cluster_id: params.cluster_id.clone(),
            ..Default::default()
        };
        w.set_tunnel_protocol(TunnelProtocol::None);
        w.set_network_mode(NetworkMode::HostNetwork);
        w.set_status(if ep.endpoint.is_ready() {
            WorkloadStatus::Healthy
        } else {
            WorkloadStatus::Unhealthy
        });
        out.push((uid, w));
    }
    out
}

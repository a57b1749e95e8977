//! Service → `istio.workload.Service`, plus port and protocol helpers shared with workloads,
//! and the endpoints of Services without a selector.
//!
//! Endpoints, as Istio's ambient index computes them: a Service with a selector has the pods it
//! selects (`Workload.services` of each pod). A Service without one has the endpoints of its
//! EndpointSlices (labelled `kubernetes.io/service-name`): an endpoint whose `targetRef` is a
//! Pod makes that pod's workload an endpoint (its health is the pod's); any other endpoint is
//! pushed as an address-only workload of its own ([`address_workload_uid`]), healthy when
//! `conditions.ready` is true or absent, reached without HBONE. A slice port
//! serves the Service port of the same name, on the slice's port number. FQDN slices, non-TCP
//! ports and endpoints naming a Pod the config does not have are skipped. A Service with a
//! selector ignores its EndpointSlices: the pods are the truth.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use mesh_proto::workload::{AppProtocol, NetworkAddress, Port, Service as XdsService};

use crate::source::discovery::{EndpointSlice, SliceEndpoint};
use crate::source::kinds::{ServicePort, TargetPort};
use crate::source::{ConfigSnapshot, ObjectKey, Pod, Service};

/// Kubernetes cluster domain of service hostnames (independent of the SPIFFE trust domain).
pub const DOMAIN_SUFFIX: &str = "cluster.local";

/// `<name>.<namespace>.svc.cluster.local`.
pub fn hostname(name: &str, namespace: &str) -> String {
    format!("{name}.{namespace}.svc.{DOMAIN_SUFFIX}")
}

/// `<namespace>/<hostname>`: the Service's resource name and its key in `Workload.services`.
pub fn service_key(namespace: &str, hostname: &str) -> String {
    format!("{namespace}/{hostname}")
}

fn protocol_from(s: &str) -> AppProtocol {
    match s.to_ascii_lowercase().as_str() {
        "http" | "http1" | "http11" => AppProtocol::Http11,
        "http2" | "h2c" | "kubernetes.io/h2c" => AppProtocol::Http2,
        "grpc" | "grpc-web" => AppProtocol::Grpc,
        "tcp" => AppProtocol::Tcp,
        "tls" | "https" => AppProtocol::Tls,
        _ => AppProtocol::Unknown,
    }
}

/// `appProtocol` when it names a known protocol, else the port name's prefix (`http-web` → HTTP).
pub fn app_protocol(port: &ServicePort) -> AppProtocol {
    let explicit = port
        .app_protocol
        .as_deref()
        .map(protocol_from)
        .unwrap_or(AppProtocol::Unknown);
    if explicit != AppProtocol::Unknown {
        return explicit;
    }
    port.name
        .as_deref()
        .and_then(|n| n.split('-').next())
        .map(protocol_from)
        .unwrap_or(AppProtocol::Unknown)
}

/// The xDS port of `port`. With a pod, a named targetPort is resolved from the pod's container
/// ports (`None` + warning when the pod has no such port). Without a pod (the Service resource
/// itself) a named targetPort is sent as 0, as Istio does: clients then take the per-workload
/// port from `Workload.services`.
pub fn resolve_port(svc: &Service, port: &ServicePort, pod: Option<&Pod>) -> Option<Port> {
    let target = match (port.target(), pod) {
        (TargetPort::Number(n), _) => n,
        (TargetPort::Named(_), None) => 0,
        (TargetPort::Named(name), Some(pod)) => match pod.named_port(&name) {
            Some(n) => n,
            None => {
                tracing::warn!(
                    service = %format!("{}/{}", svc.metadata.ns(), svc.metadata.name),
                    pod = %pod.metadata.name, port = port.port, target_port = %name,
                    "pod has no container port with this name; port left out of the pod's service ports"
                );
                return None;
            }
        },
    };
    Some(xds_port(port, target))
}

/// Service port `port` served on `target`, with its protocol.
fn xds_port(port: &ServicePort, target: u16) -> Port {
    let mut p = Port {
        service_port: u32::from(port.port),
        target_port: u32::from(target),
        ..Default::default()
    };
    p.set_app_protocol(app_protocol(port));
    p
}

/// Translates one Service.
pub fn translate_service(svc: &Service) -> XdsService {
    let ns = svc.metadata.ns();
    let addresses = svc
        .spec
        .ip
        .map(|ip| NetworkAddress {
            network: String::new(),
            address: match ip {
                std::net::IpAddr::V4(v4) => v4.octets().to_vec(),
                std::net::IpAddr::V6(v6) => v6.octets().to_vec(),
            },
            length: None,
        })
        .into_iter()
        .collect();
    XdsService {
        name: svc.metadata.name.clone(),
        namespace: ns.to_string(),
        hostname: hostname(&svc.metadata.name, ns),
        addresses,
        ports: svc
            .spec
            .ports
            .iter()
            .filter_map(|p| resolve_port(svc, p, None))
            .collect(),
        ..Default::default()
    }
}

/// All services, keyed by `<namespace>/<hostname>`, with their waypoint, plus the Services of
/// waypoints the config does not declare (see [`super::waypoint::waypoint_services`]).
pub fn translate(cfg: &ConfigSnapshot) -> Vec<(String, XdsService)> {
    let mut out: Vec<(String, XdsService)> = cfg
        .services
        .values()
        .map(|svc| {
            let mut s = translate_service(svc);
            s.waypoint = super::waypoint::service_waypoint(cfg, svc)
                .map(|k| super::waypoint::gateway_address(&k));
            (service_key(&s.namespace, &s.hostname), s)
        })
        .collect();
    out.extend(super::waypoint::waypoint_services(cfg));
    out
}

/// True when `svc`'s endpoints come from its EndpointSlices (it has no selector).
pub fn uses_endpoint_slices(svc: &Service) -> bool {
    svc.spec.selector.is_empty()
}

/// The address EndpointSlices of `svc` (FQDN slices left out).
pub fn endpoint_slices<'a>(
    cfg: &'a ConfigSnapshot,
    svc: &'a Service,
) -> impl Iterator<Item = &'a Arc<EndpointSlice>> + 'a {
    let ns = svc.metadata.ns();
    let range = ObjectKey::new(ns, "")..ObjectKey::new(format!("{ns}\0"), "");
    cfg.endpoint_slices
        .range(range)
        .map(|(_, s)| s)
        .filter(move |s| s.has_ips() && s.service_name() == Some(svc.metadata.name.as_str()))
}

/// The ports of `slice` as ports of `svc`: a slice port serves the Service port of the same
/// name ("" for a single unnamed port) on the slice's port number. Non-TCP ports and ports no
/// Service port is named after are left out.
pub fn slice_ports(svc: &Service, slice: &EndpointSlice) -> Vec<Port> {
    slice
        .ports
        .iter()
        .filter_map(|sp| {
            let target = sp.tcp_port()?;
            let name = sp.name.as_deref().unwrap_or("");
            let port = svc
                .spec
                .ports
                .iter()
                .find(|p| p.name.as_deref().unwrap_or("") == name)?;
            Some(xds_port(port, target))
        })
        .collect()
}

/// An endpoint of a selector-less Service, from one of its EndpointSlices.
#[derive(Debug, Clone)]
pub struct SliceEndpointRef<'a> {
    /// The slice it is listed in.
    pub slice: &'a Arc<EndpointSlice>,
    /// The endpoint.
    pub endpoint: &'a SliceEndpoint,
    /// The Pod behind it (its `targetRef`), when the config has that pod.
    pub pod: Option<&'a Arc<Pod>>,
    /// Its ports, as ports of the Service.
    pub ports: Vec<Port>,
}

/// Every usable endpoint of selector-less `svc` (nothing for a Service with a selector). An
/// endpoint naming a Pod the config does not have is left out: there is nothing to identify it
/// by until the pod is known.
pub fn slice_endpoints<'a>(cfg: &'a ConfigSnapshot, svc: &'a Service) -> Vec<SliceEndpointRef<'a>> {
    if !uses_endpoint_slices(svc) {
        return Vec::new();
    }
    let mut out = Vec::new();
    for slice in endpoint_slices(cfg, svc) {
        let ports = slice_ports(svc, slice);
        for ep in &slice.endpoints {
            if ep.ips.is_empty() {
                continue;
            }
            let pod = match ep.pod_ref(slice.metadata.ns()) {
                None => None,
                Some((ns, name)) => match cfg.pods.get(&ObjectKey::new(ns, name)) {
                    Some(p) => Some(p),
                    None => {
                        tracing::debug!(slice = %slice.metadata.name, pod = %format!("{ns}/{name}"), "EndpointSlice endpoint names an unknown Pod; skipped");
                        continue;
                    }
                },
            };
            out.push(SliceEndpointRef {
                slice,
                endpoint: ep,
                pod,
                ports: ports.clone(),
            });
        }
    }
    out
}

/// Uid of the workload of an address-only endpoint (Istio's form).
pub fn address_workload_uid(cluster_id: &str, namespace: &str, slice: &str, ip: IpAddr) -> String {
    format!("{cluster_id}/discovery.k8s.io/EndpointSlice/{namespace}/{slice}/{ip}")
}

/// The EndpointSlice endpoints of every selector-less Service, indexed once per model build.
#[derive(Debug, Default)]
pub struct SliceIndex<'a> {
    /// Pod `namespace/name` → (service key, ports) of the selector-less Services it serves.
    pub pods: HashMap<ObjectKey, Vec<(String, Vec<Port>)>>,
    /// Endpoints that are not a known Pod, with their Service.
    pub addresses: Vec<(&'a Arc<Service>, SliceEndpointRef<'a>)>,
}

impl<'a> SliceIndex<'a> {
    /// Indexes the slices of every Service without a selector.
    pub fn build(cfg: &'a ConfigSnapshot) -> Self {
        let mut idx = SliceIndex::default();
        for svc in cfg.services.values().filter(|s| uses_endpoint_slices(s)) {
            let key = service_key(
                svc.metadata.ns(),
                &hostname(&svc.metadata.name, svc.metadata.ns()),
            );
            for ep in slice_endpoints(cfg, svc) {
                match ep.pod {
                    Some(pod) => {
                        let entry = idx
                            .pods
                            .entry(ObjectKey::new(pod.metadata.ns(), pod.metadata.name.clone()))
                            .or_default();
                        // One pod can be listed in several slices of a Service (one per
                        // address family, or a slice being replaced): merge its ports.
                        match entry.iter_mut().find(|(k, _)| *k == key) {
                            Some((_, ports)) => {
                                for p in ep.ports {
                                    if !ports.contains(&p) {
                                        ports.push(p);
                                    }
                                }
                            }
                            None => entry.push((key.clone(), ep.ports)),
                        }
                    }
                    None => idx.addresses.push((svc, ep)),
                }
            }
        }
        idx
    }
}

#[cfg(test)]
mod tests;

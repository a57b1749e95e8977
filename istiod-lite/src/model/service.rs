//! Service → `istio.workload.Service`, plus port and protocol helpers shared with workloads.

use mesh_proto::workload::{AppProtocol, NetworkAddress, Port, Service as XdsService};

use crate::source::kinds::{ServicePort, TargetPort};
use crate::source::{ConfigSnapshot, Pod, Service};

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
    let mut p = Port {
        service_port: u32::from(port.port),
        target_port: u32::from(target),
        ..Default::default()
    };
    p.set_app_protocol(app_protocol(port));
    Some(p)
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

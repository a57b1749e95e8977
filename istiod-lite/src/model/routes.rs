//! HTTPRoute / GRPCRoute → per-waypoint `ambient.route.v1.ServiceRoutes`.
//!
//! Each waypoint gets one resource per Service it serves (the Services whose `use-waypoint`
//! resolves to it), named `<namespace>/<hostname>` like the Service. A resource carries every
//! rule attached to each port, the backends with their endpoints, and the default backend (the
//! Service itself) used when no route is attached.
//!
//! Attachment: a route in the Service's namespace with a parentRef to the Service (optionally
//! narrowed by `port`), the GAMMA "producer route"; or a route with a parentRef to the waypoint
//! Gateway, which applies to every Service of that waypoint. Consumer routes (a route in
//! another namespace than the Service) and cross-namespace backendRefs (which need a
//! ReferenceGrant) are not supported yet and are left out with a warning.
//!
//! networking.istio.io VirtualServices ([`virtual_service`]) feed the same model: a port with
//! no Gateway API route takes the rules of the VirtualService bound to the Service's host
//! (pushed with `ordered`, first match wins). When both exist for a port, the HTTPRoute or
//! GRPCRoute wins and the VirtualService is ignored for that port, with a warning.
//! DestinationRules ([`destination_rule`]) give every backend its subset's endpoints and its
//! merged traffic policy, whichever API routed to it.
//!
//! Localities: every endpoint carries its pod's locality (node topology labels), and each
//! resource lists the waypoint's own pods with theirs, so a replica can rank endpoints relative
//! to where it runs (`localityLbSetting`, evaluated by the waypoint).

mod destination_rule;
#[cfg(test)]
mod locality_tests;
#[cfg(test)]
mod networking_tests;
mod virtual_service;

use std::collections::BTreeMap;

use mesh_proto::route::{
    self, filter, path_match, path_modifier, Backend, Endpoint, HeaderModifier, PathMatch,
    PathModifier, Protocol, RouteMatch, RouteRule, ServicePort, ServiceRoutes, ValueMatch,
};
use mesh_proto::workload::AppProtocol;

use super::service::{app_protocol, hostname, resolve_port, service_key};
use super::workload::{canonical_name, canonical_revision, ip_bytes, is_ambient};
use super::ModelParams;
use crate::source::gateway::{self as gw, ObjectRef, GATEWAY_NAME_LABEL};
use crate::source::{ConfigSnapshot, ObjectKey, Service};

/// Istio's default number of retries when a rule has a `retry` without `attempts`.
const DEFAULT_RETRY_ATTEMPTS: u32 = 2;

/// Resources of every waypoint: waypoint `namespace/name` → (resource name, resource).
pub fn translate(
    cfg: &ConfigSnapshot,
    params: &ModelParams,
) -> BTreeMap<ObjectKey, Vec<(String, ServiceRoutes)>> {
    let mut out: BTreeMap<ObjectKey, Vec<(String, ServiceRoutes)>> = cfg
        .gateways
        .iter()
        .filter(|(_, g)| g.is_waypoint())
        .map(|(k, _)| (k.clone(), Vec::new()))
        .collect();
    for svc in cfg.services.values() {
        let Some(wp) = super::waypoint::service_waypoint(cfg, svc) else {
            continue;
        };
        let r = service_routes(cfg, params, svc, &wp);
        let name = service_key(&r.namespace, &r.hostname);
        out.entry(wp).or_default().push((name, r));
    }
    out
}

/// A route attached to `svc` (port `port`) or to its waypoint `wp` (a listener it names, from
/// the waypoint's own namespace: the same rule its status reports, see
/// [`super::gateway_status::route`]).
fn attached(
    cfg: &ConfigSnapshot,
    route_ns: &str,
    parents: &[ObjectRef],
    svc: &Service,
    port: u16,
    wp: &ObjectKey,
) -> bool {
    parents.iter().any(|p| {
        let ns = p.namespace.as_deref().unwrap_or(route_ns);
        if p.is_service("Gateway") {
            route_ns == svc.metadata.ns()
                && ns == svc.metadata.ns()
                && p.name == svc.metadata.name
                && p.port.is_none_or(|pp| pp == port)
        } else {
            p.is_gateway()
                && ns == wp.namespace
                && p.name == wp.name
                && super::gateway_status::route::waypoint_parent_problem(cfg, route_ns, p).is_none()
        }
    })
}

fn service_routes(
    cfg: &ConfigSnapshot,
    params: &ModelParams,
    svc: &Service,
    wp: &ObjectKey,
) -> ServiceRoutes {
    let ns = svc.metadata.ns();
    let mut ports = Vec::new();
    for sp in &svc.spec.ports {
        let mut rules = Vec::new();
        let mut http = false;
        let mut grpc = false;
        for (key, r) in &cfg.http_routes {
            if attached(cfg, &key.namespace, &r.spec.parent_refs, svc, sp.port, wp) {
                http = true;
                for (i, rule) in r.spec.rules.iter().enumerate() {
                    rules.push(http_rule(
                        cfg,
                        params,
                        key,
                        r.metadata.creation_timestamp.as_deref(),
                        i,
                        rule,
                    ));
                }
            }
        }
        for (key, r) in &cfg.grpc_routes {
            if attached(cfg, &key.namespace, &r.spec.parent_refs, svc, sp.port, wp) {
                grpc = true;
                for (i, rule) in r.spec.rules.iter().enumerate() {
                    rules.push(grpc_rule(
                        cfg,
                        params,
                        key,
                        r.metadata.creation_timestamp.as_deref(),
                        i,
                        rule,
                    ));
                }
            }
        }
        if let Some((key, _)) = cfg.http_routes.iter().find(|(k, r)| {
            k.namespace != ns
                && r.spec.parent_refs.iter().any(|p| {
                    p.is_service("Gateway")
                        && p.name == svc.metadata.name
                        && p.namespace.as_deref() == Some(ns)
                })
        }) {
            tracing::debug!(route = %key, service = %svc.metadata.name, "consumer route (other namespace) not supported yet; ignored");
        }
        // Istio's protocol selection; an attached route makes an undeclared port HTTP.
        let mut ordered = false;
        match virtual_service::rules_for(cfg, params, svc, sp.port) {
            Some((vs, _)) if http || grpc => {
                tracing::warn!(virtual_service = %vs, service = %svc.metadata.name, port = sp.port, "an HTTPRoute/GRPCRoute is attached to this port; it takes precedence and the VirtualService is ignored here");
            }
            Some((_, vs_rules)) => {
                rules = vs_rules;
                ordered = true;
                http = true;
            }
            None => {}
        }
        let protocol = match app_protocol(sp) {
            AppProtocol::Http11 => Protocol::Http1,
            AppProtocol::Http2 => Protocol::Http2,
            AppProtocol::Grpc => Protocol::Grpc,
            AppProtocol::Unknown if grpc => Protocol::Grpc,
            AppProtocol::Unknown if http => Protocol::Http1,
            _ => Protocol::Tcp,
        };
        let mut p = ServicePort {
            port: u32::from(sp.port),
            rules,
            default_backend: Some(backend(
                cfg,
                params,
                ns,
                &svc.metadata.name,
                sp.port,
                1,
                None,
            )),
            ordered,
            ..Default::default()
        };
        p.set_protocol(protocol);
        ports.push(p);
    }
    ServiceRoutes {
        name: svc.metadata.name.clone(),
        namespace: ns.to_string(),
        hostname: hostname(&svc.metadata.name, ns),
        addresses: svc.spec.ip.map(ip_bytes).into_iter().collect(),
        ports,
        waypoint_instances: waypoint_instances(cfg, wp),
        ..Default::default()
    }
}

fn locality(l: crate::source::Locality) -> route::Locality {
    route::Locality {
        region: l.region,
        zone: l.zone,
        subzone: l.subzone,
    }
}

/// The pods of waypoint `wp` whose locality is known, by name: each replica looks itself up
/// to rank endpoints by locality relative to its own (replicas may run in different zones, so
/// one shared view cannot carry per-replica priorities).
fn waypoint_instances(cfg: &ConfigSnapshot, wp: &ObjectKey) -> Vec<route::WaypointInstance> {
    let range =
        ObjectKey::new(&wp.namespace, "")..ObjectKey::new(format!("{}\0", wp.namespace), "");
    cfg.pods
        .range(range)
        .map(|(_, p)| p)
        .filter(|p| p.metadata.labels.get(GATEWAY_NAME_LABEL) == Some(&wp.name))
        .filter(|p| !p.is_terminated())
        .filter_map(|p| {
            Some(route::WaypointInstance {
                pod_name: p.metadata.name.clone(),
                locality: Some(locality(cfg.pod_locality(p)?)),
            })
        })
        .collect()
}

/// Backend `name.ns:port` with the endpoints of the pods the Service selects (narrowed to
/// the DestinationRule subset's labels when `subset` is given) and the DestinationRule's
/// traffic policy for that port and subset.
fn backend(
    cfg: &ConfigSnapshot,
    params: &ModelParams,
    ns: &str,
    name: &str,
    port: u16,
    weight: u32,
    subset: Option<&str>,
) -> Backend {
    let host = hostname(name, ns);
    let dr = destination_rule::find(cfg, &host, ns);
    let mut b = Backend {
        name: name.to_string(),
        namespace: ns.to_string(),
        hostname: host.clone(),
        port: u32::from(port),
        weight,
        endpoints: Vec::new(),
        subset: subset.unwrap_or_default().to_string(),
        policy: dr.and_then(|(_, d)| destination_rule::policy(d, port, subset)),
    };
    let subset_labels = match subset {
        None => None,
        Some(name) => match dr.and_then(|(_, d)| destination_rule::subset_labels(d, name)) {
            Some(l) => Some(l),
            None => {
                tracing::warn!(host = %host, subset = name, "no DestinationRule defines this subset; the backend has no endpoints (503 UH)");
                return b;
            }
        },
    };
    let Some(svc) = cfg.services.get(&ObjectKey::new(ns, name)) else {
        tracing::debug!(service = %format!("{ns}/{name}"), "backendRef names no Service; it has no endpoints");
        return b;
    };
    let Some(sp) = svc.spec.ports.iter().find(|p| p.port == port) else {
        tracing::debug!(service = %format!("{ns}/{name}"), port, "backendRef port is not a port of the Service");
        return b;
    };
    let sel = &svc.spec.selector;
    if sel.is_empty() {
        b.endpoints = slice_backend_endpoints(cfg, params, svc, port, subset_labels);
        return b;
    }
    let range = ObjectKey::new(ns, "")..ObjectKey::new(format!("{ns}\0"), "");
    for pod in cfg.pods.range(range).map(|(_, p)| p) {
        if !sel
            .iter()
            .chain(subset_labels.into_iter().flatten())
            .all(|(k, v)| pod.metadata.labels.get(k) == Some(v))
            || pod.is_terminated()
            || !pod.is_ready()
        {
            continue;
        }
        let (Some(ip), Some(p)) = (pod.status.ip, resolve_port(svc, sp, Some(pod))) else {
            continue;
        };
        b.endpoints
            .push(pod_endpoint(cfg, params, pod, ip, p.target_port));
    }
    b
}

/// The endpoint of a ready `pod` at `ip:port`.
fn pod_endpoint(
    cfg: &ConfigSnapshot,
    params: &ModelParams,
    pod: &crate::source::Pod,
    ip: std::net::IpAddr,
    port: u32,
) -> Endpoint {
    let ns = pod.metadata.ns();
    Endpoint {
        address: ip_bytes(ip),
        port,
        identity: format!(
            "spiffe://{}/ns/{ns}/sa/{}",
            params.trust_domain,
            pod.service_account()
        ),
        workload_name: pod.metadata.name.clone(),
        namespace: ns.to_string(),
        canonical_name: canonical_name(pod),
        canonical_revision: canonical_revision(pod),
        cluster_id: params.cluster_id.clone(),
        healthy: true,
        hbone: is_ambient(pod, cfg.namespace_labels(ns)),
        locality: cfg.pod_locality(pod).map(locality),
    }
}

/// Endpoints of selector-less `svc` on `port`, from its EndpointSlices (see
/// [`super::service`]): ready pods named by `targetRef`, and ready address-only endpoints
/// (plain TCP, no identity; a subset, which selects by pod labels, never includes them).
fn slice_backend_endpoints(
    cfg: &ConfigSnapshot,
    params: &ModelParams,
    svc: &Service,
    port: u16,
    subset_labels: Option<&std::collections::BTreeMap<String, String>>,
) -> Vec<Endpoint> {
    let mut out = Vec::new();
    for ep in super::service::slice_endpoints(cfg, svc) {
        let Some(p) = ep.ports.iter().find(|p| p.service_port == u32::from(port)) else {
            continue;
        };
        let Some(ip) = ep.endpoint.ips.first().copied() else {
            continue;
        };
        match ep.pod {
            Some(pod) => {
                let selected = subset_labels
                    .into_iter()
                    .flatten()
                    .all(|(k, v)| pod.metadata.labels.get(k) == Some(v));
                if selected && pod.is_ready() && !pod.is_terminated() {
                    out.push(pod_endpoint(cfg, params, pod, ip, p.target_port));
                }
            }
            None if subset_labels.is_none_or(|l| l.is_empty()) && ep.endpoint.is_ready() => {
                out.push(Endpoint {
                    address: ip_bytes(ip),
                    port: p.target_port,
                    workload_name: ep.slice.metadata.name.clone(),
                    namespace: ep.slice.metadata.ns().to_string(),
                    cluster_id: params.cluster_id.clone(),
                    healthy: true,
                    ..Default::default()
                });
            }
            None => {}
        }
    }
    out
}

fn backends(
    cfg: &ConfigSnapshot,
    params: &ModelParams,
    route: &ObjectKey,
    refs: &[ObjectRef],
) -> Vec<Backend> {
    refs.iter()
        .filter_map(|r| {
            let ns = r.namespace.as_deref().unwrap_or(&route.namespace);
            if ns != route.namespace {
                tracing::warn!(%route, backend = %format!("{ns}/{}", r.name), "cross-namespace backendRef needs a ReferenceGrant, which is not supported yet; backend left out");
                return None;
            }
            Some(backend(cfg, params, ns, &r.name, r.port.unwrap_or(0), r.weight.unwrap_or(1), None))
        })
        .collect()
}

fn value_match(m: &gw::ValueMatch) -> ValueMatch {
    ValueMatch {
        name: m.name.clone(),
        value: m.value.clone(),
        regex: m.type_ == "RegularExpression",
    }
}

fn path_modifier(p: &gw::PathModifier) -> PathModifier {
    let mut out = PathModifier::default();
    if p.type_ == "ReplacePrefixMatch" {
        out.set_kind(path_modifier::Kind::Prefix);
        out.value = p.replace_prefix_match.clone().unwrap_or_default();
    } else {
        out.set_kind(path_modifier::Kind::Full);
        out.value = p.replace_full_path.clone().unwrap_or_default();
    }
    out
}

fn header_modifier(m: &gw::HeaderModifier) -> HeaderModifier {
    let h = |v: &Vec<gw::HttpHeader>| {
        v.iter()
            .map(|h| route::Header {
                name: h.name.clone(),
                value: h.value.clone(),
            })
            .collect()
    };
    HeaderModifier {
        set: h(&m.set),
        add: h(&m.add),
        remove: m.remove.clone(),
    }
}

fn filters(
    cfg: &ConfigSnapshot,
    params: &ModelParams,
    route_key: &ObjectKey,
    fs: &[gw::RouteFilter],
) -> Vec<route::Filter> {
    fs.iter()
        .filter_map(|f| {
            let kind = match f.type_.as_str() {
                "RequestHeaderModifier" => filter::Kind::RequestHeaderModifier(header_modifier(
                    f.request_header_modifier.as_ref()?,
                )),
                "ResponseHeaderModifier" => filter::Kind::ResponseHeaderModifier(header_modifier(
                    f.response_header_modifier.as_ref()?,
                )),
                "RequestRedirect" => {
                    let r = f.request_redirect.as_ref()?;
                    filter::Kind::RequestRedirect(route::Redirect {
                        scheme: r.scheme.clone().unwrap_or_default(),
                        hostname: r.hostname.clone().unwrap_or_default(),
                        path: r.path.as_ref().map(path_modifier),
                        port: r.port.map(u32::from).unwrap_or(0),
                        status_code: u32::from(r.status_code.unwrap_or(302)),
                    })
                }
                "URLRewrite" => {
                    let r = f.url_rewrite.as_ref()?;
                    filter::Kind::UrlRewrite(route::Rewrite {
                        hostname: r.hostname.clone().unwrap_or_default(),
                        path: r.path.as_ref().map(path_modifier),
                    })
                }
                "RequestMirror" => {
                    let m = f.request_mirror.as_ref()?;
                    let b = backends(cfg, params, route_key, std::slice::from_ref(&m.backend_ref))
                        .pop()?;
                    filter::Kind::RequestMirror(route::Mirror {
                        backend: Some(Backend { weight: 1, ..b }),
                        percent: m.percent(),
                    })
                }
                // Validation refused every other type.
                _ => return None,
            };
            Some(route::Filter { kind: Some(kind) })
        })
        .collect()
}

fn millis(v: Option<&String>) -> u64 {
    v.and_then(|v| mesh_config::parse_duration(v).ok())
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn http_rule(
    cfg: &ConfigSnapshot,
    params: &ModelParams,
    key: &ObjectKey,
    created: Option<&str>,
    index: usize,
    rule: &gw::HttpRouteRule,
) -> RouteRule {
    let matches = rule
        .matches
        .iter()
        .map(|m| RouteMatch {
            path: m.path.as_ref().map(|p| {
                let mut pm = PathMatch {
                    value: p.value.clone(),
                    ..Default::default()
                };
                pm.set_kind(match p.type_.as_str() {
                    "Exact" => path_match::Kind::Exact,
                    "RegularExpression" => path_match::Kind::Regex,
                    _ => path_match::Kind::Prefix,
                });
                pm
            }),
            headers: m.headers.iter().map(value_match).collect(),
            query_params: m.query_params.iter().map(value_match).collect(),
            method: m.method.clone().unwrap_or_default(),
        })
        .collect();
    let timeouts = rule.timeouts.clone().unwrap_or_default();
    RouteRule {
        route: key.to_string(),
        kind: "HTTPRoute".into(),
        rule_index: u32::try_from(index).unwrap_or(u32::MAX),
        creation_timestamp: created.unwrap_or_default().to_string(),
        matches,
        filters: filters(cfg, params, key, &rule.filters),
        backends: backends(cfg, params, key, &rule.backend_refs),
        request_timeout_ms: millis(timeouts.request.as_ref()),
        backend_request_timeout_ms: millis(timeouts.backend_request.as_ref()),
        retry: rule.retry.as_ref().map(|r| route::RetryPolicy {
            attempts: r.attempts.unwrap_or(DEFAULT_RETRY_ATTEMPTS),
            codes: r.codes.iter().map(|c| u32::from(*c)).collect(),
            backoff_ms: millis(r.backoff.as_ref()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A GRPCRoute method match as a path match on `/<service>/<method>`.
fn grpc_path(m: &gw::GrpcMethodMatch) -> PathMatch {
    let mut pm = PathMatch::default();
    if m.type_ == "RegularExpression" {
        pm.set_kind(path_match::Kind::Regex);
        pm.value = format!(
            "/{}/{}",
            m.service.as_deref().unwrap_or("[^/]+"),
            m.method.as_deref().unwrap_or("[^/]+")
        );
        return pm;
    }
    match (&m.service, &m.method) {
        (Some(s), Some(me)) => {
            pm.set_kind(path_match::Kind::Exact);
            pm.value = format!("/{s}/{me}");
        }
        (Some(s), None) => {
            pm.set_kind(path_match::Kind::Prefix);
            pm.value = format!("/{s}/");
        }
        (None, me) => {
            pm.set_kind(path_match::Kind::Regex);
            pm.value = format!("/[^/]+/{}", regex::escape(me.as_deref().unwrap_or("")));
        }
    }
    pm
}

fn grpc_rule(
    cfg: &ConfigSnapshot,
    params: &ModelParams,
    key: &ObjectKey,
    created: Option<&str>,
    index: usize,
    rule: &gw::GrpcRouteRule,
) -> RouteRule {
    RouteRule {
        route: key.to_string(),
        kind: "GRPCRoute".into(),
        rule_index: u32::try_from(index).unwrap_or(u32::MAX),
        creation_timestamp: created.unwrap_or_default().to_string(),
        matches: rule
            .matches
            .iter()
            .map(|m| RouteMatch {
                path: m.method.as_ref().map(grpc_path),
                headers: m.headers.iter().map(value_match).collect(),
                query_params: Vec::new(),
                // gRPC is always POST; matching on it adds nothing.
                method: String::new(),
            })
            .collect(),
        filters: filters(cfg, params, key, &rule.filters),
        backends: backends(cfg, params, key, &rule.backend_refs),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::test_fixtures::{
        ambient_app_yaml, cfg, echo_pods_yaml, params, waypoint_pod_yaml,
    };

    const BASE: &str = concat!(
        ambient_app_yaml!(),
        "---\n",
        waypoint_pod_yaml!(),
        "---\n",
        echo_pods_yaml!(),
        r#"---
kind: Service
metadata: {name: echo, namespace: app}
spec: {clusterIP: 10.1.0.1, selector: {app: echo}, ports: [{name: http, port: 80, targetPort: 8080}]}
---
kind: Service
metadata: {name: echo-v2, namespace: app}
spec: {clusterIP: 10.1.0.2, selector: {app: echo, version: v2}, ports: [{name: http, port: 80, targetPort: 8080}]}
---
kind: Service
metadata: {name: plain, namespace: app, labels: {istio.io/use-waypoint: none}}
spec: {clusterIP: 10.1.0.3, selector: {app: echo}, ports: [{port: 90}]}
"#
    );

    #[test]
    fn services_of_the_waypoint_get_routes_with_endpoints() {
        let c = cfg(&format!(
            "{BASE}---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: split, namespace: app}}\nspec:\n  parentRefs: [{{group: \"\", kind: Service, name: echo, port: 80}}]\n  rules:\n  - backendRefs: [{{name: echo, port: 80, weight: 90}}, {{name: echo-v2, port: 80, weight: 10}}]\n    timeouts: {{request: 1s}}\n    retry: {{codes: [503]}}\n"
        ));
        let all = translate(&c, &params());
        let routes = &all[&ObjectKey::new("app", "waypoint")];
        let names: Vec<&str> = routes.iter().map(|(n, _)| n.as_str()).collect();
        // `plain` opted out with use-waypoint: none.
        assert_eq!(
            names,
            vec![
                "app/echo.app.svc.cluster.local",
                "app/echo-v2.app.svc.cluster.local"
            ]
        );
        let echo = &routes[0].1;
        assert_eq!(echo.addresses, vec![vec![10, 1, 0, 1]]);
        let port = &echo.ports[0];
        assert_eq!(port.protocol(), Protocol::Http1);
        assert_eq!(port.rules.len(), 1);
        let rule = &port.rules[0];
        assert_eq!(rule.request_timeout_ms, 1000);
        assert_eq!(rule.retry.as_ref().unwrap().attempts, 2);
        assert_eq!(rule.backends[0].weight, 90);
        assert_eq!(rule.backends[0].endpoints.len(), 2);
        assert_eq!(rule.backends[1].endpoints.len(), 1);
        let ep = &rule.backends[1].endpoints[0];
        assert_eq!(ep.address, vec![10, 0, 0, 2]);
        assert_eq!(ep.port, 8080);
        assert_eq!(ep.identity, "spiffe://cluster.local/ns/app/sa/echo");
        assert!(ep.hbone);
        // echo-v2 has no route: its default backend is itself.
        let v2 = &routes[1].1.ports[0];
        assert!(v2.rules.is_empty());
        assert_eq!(v2.default_backend.as_ref().unwrap().endpoints.len(), 1);
    }

    #[test]
    fn waypoint_addresses_and_service_are_pushed() {
        let c = cfg(BASE);
        let services = super::super::service::translate(&c);
        let echo = services
            .iter()
            .find(|(k, _)| k == "app/echo.app.svc.cluster.local")
            .unwrap();
        let wp = echo.1.waypoint.as_ref().unwrap();
        assert_eq!(wp.hbone_mtls_port, 15008);
        match wp.destination.as_ref().unwrap() {
            mesh_proto::workload::gateway_address::Destination::Hostname(h) => {
                assert_eq!(h.hostname, "waypoint.app.svc.cluster.local");
                assert_eq!(h.namespace, "app");
            }
            other => panic!("{other:?}"),
        }
        let plain = services
            .iter()
            .find(|(k, _)| k == "app/plain.app.svc.cluster.local")
            .unwrap();
        assert!(plain.1.waypoint.is_none());
        // The waypoint's own Service is synthesized and has no waypoint itself.
        let own = services
            .iter()
            .find(|(k, _)| k == "app/waypoint.app.svc.cluster.local")
            .unwrap();
        assert!(own.1.waypoint.is_none());
        assert_eq!(own.1.ports[0].service_port, 15008);
        // The waypoint pod: native HBONE, endpoint of its Service, no waypoint of its own.
        let policies = super::super::authorization::Policies::build(&c, "istio-system");
        let pods = super::super::workload::translate(&c, &params(), &policies);
        let wp_pod = pods.iter().find(|(_, w)| w.name == "wp-0").unwrap();
        assert!(wp_pod.1.native_tunnel);
        assert!(wp_pod.1.waypoint.is_none());
        assert!(wp_pod
            .1
            .services
            .contains_key("app/waypoint.app.svc.cluster.local"));
        // waypoint-for defaults to service: pods addressed directly do not use it.
        let echo_pod = pods.iter().find(|(_, w)| w.name == "echo-v1").unwrap();
        assert!(echo_pod.1.waypoint.is_none());
    }

    #[test]
    fn workload_waypoint_and_gateway_parent() {
        let yaml = BASE.replace(
            "metadata: {name: waypoint, namespace: app}",
            "metadata: {name: waypoint, namespace: app, labels: {istio.io/waypoint-for: all}}",
        );
        let c = cfg(&format!("{yaml}---\napiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\nmetadata: {{name: g, namespace: app}}\nspec:\n  parentRefs: [{{name: waypoint}}]\n  rules: [{{matches: [{{method: {{service: pkg.Svc, method: Get}}}}]}}]\n"));
        let policies = super::super::authorization::Policies::build(&c, "istio-system");
        let pods = super::super::workload::translate(&c, &params(), &policies);
        let echo_pod = pods.iter().find(|(_, w)| w.name == "echo-v1").unwrap();
        assert!(echo_pod.1.waypoint.is_some());
        let all = translate(&c, &params());
        // Attached to the Gateway: every service of the waypoint gets the rule.
        for (_, r) in &all[&ObjectKey::new("app", "waypoint")] {
            let p = &r.ports[0];
            assert_eq!(p.protocol(), Protocol::Http1, "declared http wins");
            let m = p.rules[0].matches[0].path.as_ref().unwrap();
            assert_eq!(
                (m.kind(), m.value.as_str()),
                (path_match::Kind::Exact, "/pkg.Svc/Get")
            );
        }
    }
}

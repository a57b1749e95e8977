//! Pushed resources as JSON, in protobuf's JSON mapping (lowerCamelCase names, enums by name,
//! default values left out, `@type` on an Any), except that IP addresses are shown as text
//! rather than base64 bytes, as ztunnel's own dump does.

use std::net::IpAddr;

use mesh_proto::security::{self, Authorization};
use mesh_proto::workload::{self as pb, Address};
use mesh_proto::{ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL};
use prost::Message;
use serde_json::{Map, Value};

/// Decodes an Address or Authorization resource; other types and undecodable bytes come out
/// as `@type` plus the reason.
pub fn decode_resource(any: &prost_types::Any) -> Value {
    let decoded = match any.type_url.as_str() {
        ADDRESS_TYPE_URL => Address::decode(any.value.as_slice()).map(|a| address(&a)),
        AUTHORIZATION_TYPE_URL => {
            Authorization::decode(any.value.as_slice()).map(|a| authorization(&a))
        }
        _ => {
            let mut o = Obj::default();
            o.str("@type", &any.type_url);
            o.str("error", "not a type istiod-lite decodes");
            return o.done();
        }
    };
    let mut o = Obj::default();
    o.str("@type", &any.type_url);
    match decoded {
        Ok(Value::Object(m)) => o.0.extend(m),
        Ok(other) => o.set("value", other),
        Err(e) => o.str("error", &format!("cannot decode: {e}")),
    }
    o.done()
}

/// Builds an object, leaving out default values as protobuf's JSON mapping does.
#[derive(Default)]
struct Obj(Map<String, Value>);

impl Obj {
    fn set(&mut self, k: &str, v: Value) {
        let empty = match &v {
            Value::Null => true,
            Value::String(s) => s.is_empty(),
            Value::Array(a) => a.is_empty(),
            Value::Object(o) => o.is_empty(),
            Value::Bool(b) => !b,
            Value::Number(n) => n.as_u64() == Some(0),
        };
        if !empty {
            self.0.insert(k.to_string(), v);
        }
    }
    fn str(&mut self, k: &str, v: &str) {
        self.set(k, Value::String(v.to_string()));
    }
    fn strs(&mut self, k: &str, v: &[String]) {
        self.set(k, v.iter().map(|s| Value::from(s.as_str())).collect());
    }
    fn num(&mut self, k: &str, v: u32) {
        self.set(k, v.into());
    }
    fn bool(&mut self, k: &str, v: bool) {
        self.set(k, v.into());
    }
    /// Enums are always shown (their default is meaningful to a reader), by name.
    fn enumeration(&mut self, k: &str, name: Option<&str>, raw: i32) {
        let v = name.map(Value::from).unwrap_or_else(|| raw.into());
        self.0.insert(k.to_string(), v);
    }
    fn done(self) -> Value {
        Value::Object(self.0)
    }
}

fn ip(bytes: &[u8]) -> Value {
    let parsed = match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes).ok().map(IpAddr::from),
        16 => <[u8; 16]>::try_from(bytes).ok().map(IpAddr::from),
        _ => None,
    };
    match parsed {
        Some(a) => a.to_string().into(),
        None => format!("<{} bytes: not an IP address>", bytes.len()).into(),
    }
}

fn address(a: &Address) -> Value {
    let mut o = Obj::default();
    match &a.r#type {
        Some(pb::address::Type::Workload(w)) => o.set("workload", workload(w)),
        Some(pb::address::Type::Service(s)) => o.set("service", service(s)),
        None => {}
    }
    o.done()
}

fn workload(w: &pb::Workload) -> Value {
    let mut o = Obj::default();
    o.str("uid", &w.uid);
    o.str("name", &w.name);
    o.str("namespace", &w.namespace);
    o.set("addresses", w.addresses.iter().map(|a| ip(a)).collect());
    o.str("hostname", &w.hostname);
    o.str("network", &w.network);
    o.enumeration(
        "tunnelProtocol",
        pb::TunnelProtocol::try_from(w.tunnel_protocol)
            .ok()
            .map(|p| p.as_str_name()),
        w.tunnel_protocol,
    );
    o.str("trustDomain", &w.trust_domain);
    o.str("serviceAccount", &w.service_account);
    o.set("waypoint", w.waypoint.as_ref().map_or(Value::Null, gateway));
    o.set(
        "networkGateway",
        w.network_gateway.as_ref().map_or(Value::Null, gateway),
    );
    o.str("node", &w.node);
    o.str("canonicalName", &w.canonical_name);
    o.str("canonicalRevision", &w.canonical_revision);
    o.enumeration(
        "workloadType",
        pb::WorkloadType::try_from(w.workload_type)
            .ok()
            .map(|t| t.as_str_name()),
        w.workload_type,
    );
    o.str("workloadName", &w.workload_name);
    o.bool("nativeTunnel", w.native_tunnel);
    if let Some(t) = &w.application_tunnel {
        let mut a = Obj::default();
        a.enumeration(
            "protocol",
            pb::application_tunnel::Protocol::try_from(t.protocol)
                .ok()
                .map(|p| p.as_str_name()),
            t.protocol,
        );
        a.num("port", t.port);
        o.set("applicationTunnel", a.done());
    }
    let services: Map<String, Value> = w
        .services
        .iter()
        .map(|(k, v)| (k.clone(), ports(&v.ports)))
        .collect();
    o.set("services", Value::Object(services));
    o.strs("authorizationPolicies", &w.authorization_policies);
    o.enumeration(
        "status",
        pb::WorkloadStatus::try_from(w.status)
            .ok()
            .map(|s| s.as_str_name()),
        w.status,
    );
    o.str("clusterId", &w.cluster_id);
    if let Some(l) = &w.locality {
        let mut lo = Obj::default();
        lo.str("region", &l.region);
        lo.str("zone", &l.zone);
        lo.str("subzone", &l.subzone);
        o.set("locality", lo.done());
    }
    if w.network_mode != 0 {
        o.enumeration(
            "networkMode",
            pb::NetworkMode::try_from(w.network_mode)
                .ok()
                .map(|m| m.as_str_name()),
            w.network_mode,
        );
    }
    o.set("extensions", extensions(&w.extensions));
    if let Some(c) = w.capacity {
        o.0.insert("capacity".into(), c.into());
    }
    o.done()
}

fn ports(ports: &[pb::Port]) -> Value {
    ports
        .iter()
        .map(|p| {
            let mut o = Obj::default();
            o.num("servicePort", p.service_port);
            o.num("targetPort", p.target_port);
            o.enumeration(
                "appProtocol",
                pb::AppProtocol::try_from(p.app_protocol)
                    .ok()
                    .map(|a| a.as_str_name()),
                p.app_protocol,
            );
            o.done()
        })
        .collect()
}

fn network_address(a: &pb::NetworkAddress) -> Value {
    let mut o = Obj::default();
    o.str("network", &a.network);
    o.set("address", ip(&a.address));
    if let Some(l) = a.length {
        o.0.insert("length".into(), l.into());
    }
    o.done()
}

fn gateway(g: &pb::GatewayAddress) -> Value {
    let mut o = Obj::default();
    match &g.destination {
        Some(pb::gateway_address::Destination::Hostname(h)) => {
            let mut n = Obj::default();
            n.str("namespace", &h.namespace);
            n.str("hostname", &h.hostname);
            o.set("hostname", n.done());
        }
        Some(pb::gateway_address::Destination::Address(a)) => o.set("address", network_address(a)),
        None => {}
    }
    o.num("hboneMtlsPort", g.hbone_mtls_port);
    o.done()
}

fn extensions(e: &[pb::Extension]) -> Value {
    e.iter()
        .map(|x| {
            let mut o = Obj::default();
            o.str("name", &x.name);
            if let Some(c) = &x.config {
                o.str("configType", &c.type_url);
            }
            o.done()
        })
        .collect()
}

fn service(s: &pb::Service) -> Value {
    let mut o = Obj::default();
    o.str("name", &s.name);
    o.str("namespace", &s.namespace);
    o.str("hostname", &s.hostname);
    o.set(
        "addresses",
        s.addresses.iter().map(network_address).collect(),
    );
    o.set("ports", ports(&s.ports));
    o.strs("subjectAltNames", &s.subject_alt_names);
    o.set("waypoint", s.waypoint.as_ref().map_or(Value::Null, gateway));
    if let Some(lb) = &s.load_balancing {
        let mut l = Obj::default();
        let prefs: Vec<Value> = lb
            .routing_preference
            .iter()
            .map(|p| {
                pb::load_balancing::Scope::try_from(*p)
                    .map(|s| Value::from(s.as_str_name()))
                    .unwrap_or_else(|_| (*p).into())
            })
            .collect();
        l.set("routingPreference", prefs.into());
        l.enumeration(
            "mode",
            pb::load_balancing::Mode::try_from(lb.mode)
                .ok()
                .map(|m| m.as_str_name()),
            lb.mode,
        );
        l.enumeration(
            "healthPolicy",
            pb::load_balancing::HealthPolicy::try_from(lb.health_policy)
                .ok()
                .map(|m| m.as_str_name()),
            lb.health_policy,
        );
        o.set("loadBalancing", l.done());
    }
    if s.ip_families != 0 {
        o.enumeration(
            "ipFamilies",
            pb::IpFamilies::try_from(s.ip_families)
                .ok()
                .map(|f| f.as_str_name()),
            s.ip_families,
        );
    }
    o.set("extensions", extensions(&s.extensions));
    o.bool("canonical", s.canonical);
    o.bool("ingressUseWaypoint", s.ingress_use_waypoint);
    let weighted: Vec<Value> = s
        .weighted_waypoints
        .iter()
        .map(|w| {
            let mut x = Obj::default();
            x.set(
                "destination",
                w.destination.as_ref().map_or(Value::Null, gateway),
            );
            x.num("weight", w.weight);
            x.done()
        })
        .collect();
    o.set("weightedWaypoints", weighted.into());
    if s.visibility != 0 {
        o.enumeration(
            "visibility",
            pb::service::Visibility::try_from(s.visibility)
                .ok()
                .map(|v| v.as_str_name()),
            s.visibility,
        );
    }
    o.done()
}

fn authorization(a: &Authorization) -> Value {
    let mut o = Obj::default();
    o.str("name", &a.name);
    o.str("namespace", &a.namespace);
    o.enumeration(
        "scope",
        security::Scope::try_from(a.scope)
            .ok()
            .map(|s| s.as_str_name()),
        a.scope,
    );
    o.enumeration(
        "action",
        security::Action::try_from(a.action)
            .ok()
            .map(|s| s.as_str_name()),
        a.action,
    );
    let rules: Vec<Value> = a
        .rules
        .iter()
        .map(|r| {
            let clauses: Vec<Value> = r
                .clauses
                .iter()
                .map(|c| {
                    let mut co = Obj::default();
                    co.set("matches", c.matches.iter().map(matcher).collect());
                    co.done()
                })
                .collect();
            let mut ro = Obj::default();
            ro.set("clauses", clauses.into());
            ro.done()
        })
        .collect();
    o.set("rules", rules.into());
    o.bool("dryRun", a.dry_run);
    o.set("extensions", extensions(&a.extensions));
    o.done()
}

fn matcher(m: &security::Match) -> Value {
    let strings = |v: &[security::StringMatch]| -> Value {
        v.iter()
            .map(|s| {
                use security::string_match::MatchType;
                let mut o = Obj::default();
                match &s.match_type {
                    Some(MatchType::Exact(x)) => o.0.insert("exact".into(), x.as_str().into()),
                    Some(MatchType::Prefix(x)) => o.0.insert("prefix".into(), x.as_str().into()),
                    Some(MatchType::Suffix(x)) => o.0.insert("suffix".into(), x.as_str().into()),
                    Some(MatchType::Presence(_)) => {
                        o.0.insert("presence".into(), Value::Object(Map::new()))
                    }
                    None => None,
                };
                o.done()
            })
            .collect()
    };
    let cidrs = |v: &[security::Address]| -> Value {
        v.iter()
            .map(|a| {
                let mut o = Obj::default();
                o.set("address", ip(&a.address));
                o.0.insert("length".into(), a.length.into());
                o.done()
            })
            .collect()
    };
    let accounts = |v: &[security::ServiceAccountMatch]| -> Value {
        v.iter()
            .map(|s| {
                let mut o = Obj::default();
                o.str("namespace", &s.namespace);
                o.str("serviceAccount", &s.service_account);
                o.done()
            })
            .collect()
    };
    let mut o = Obj::default();
    o.set("namespaces", strings(&m.namespaces));
    o.set("notNamespaces", strings(&m.not_namespaces));
    o.set("principals", strings(&m.principals));
    o.set("notPrincipals", strings(&m.not_principals));
    o.set("sourceIps", cidrs(&m.source_ips));
    o.set("notSourceIps", cidrs(&m.not_source_ips));
    o.set("destinationIps", cidrs(&m.destination_ips));
    o.set("notDestinationIps", cidrs(&m.not_destination_ips));
    o.set(
        "destinationPorts",
        m.destination_ports
            .iter()
            .map(|p| Value::from(*p))
            .collect(),
    );
    o.set(
        "notDestinationPorts",
        m.not_destination_ports
            .iter()
            .map(|p| Value::from(*p))
            .collect(),
    );
    o.set("serviceAccounts", accounts(&m.service_accounts));
    o.set("notServiceAccounts", accounts(&m.not_service_accounts));
    o.set("extensions", extensions(&m.extensions));
    o.done()
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_proto::to_any;

    #[test]
    fn workload_service_and_policy_decode_with_ip_text_and_enum_names() {
        let w = Address {
            r#type: Some(pb::address::Type::Workload(pb::Workload {
                uid: "Kubernetes//Pod/ns/a".into(),
                name: "a".into(),
                namespace: "ns".into(),
                addresses: vec![vec![10, 0, 0, 1]],
                tunnel_protocol: pb::TunnelProtocol::Hbone as i32,
                services: [(
                    "ns/s.ns.svc.cluster.local".to_string(),
                    pb::PortList {
                        ports: vec![pb::Port {
                            service_port: 80,
                            target_port: 8080,
                            app_protocol: pb::AppProtocol::Http11 as i32,
                        }],
                    },
                )]
                .into(),
                ..Default::default()
            })),
        };
        let v = decode_resource(&to_any(ADDRESS_TYPE_URL, &w));
        assert_eq!(v["@type"], ADDRESS_TYPE_URL);
        assert_eq!(v["workload"]["addresses"][0], "10.0.0.1");
        assert_eq!(v["workload"]["tunnelProtocol"], "HBONE");
        assert_eq!(
            v["workload"]["services"]["ns/s.ns.svc.cluster.local"][0]["appProtocol"],
            "HTTP11"
        );
        assert!(v["workload"].get("hostname").is_none(), "defaults left out");

        let s = Address {
            r#type: Some(pb::address::Type::Service(pb::Service {
                name: "s".into(),
                namespace: "ns".into(),
                hostname: "s.ns.svc.cluster.local".into(),
                addresses: vec![pb::NetworkAddress {
                    network: String::new(),
                    address: vec![10, 96, 0, 1],
                    length: None,
                }],
                ..Default::default()
            })),
        };
        let v = decode_resource(&to_any(ADDRESS_TYPE_URL, &s));
        assert_eq!(v["service"]["addresses"][0]["address"], "10.96.0.1");

        let p = Authorization {
            name: "deny".into(),
            namespace: "ns".into(),
            action: security::Action::Deny as i32,
            rules: vec![security::Rule {
                clauses: vec![security::Clause {
                    matches: vec![security::Match {
                        destination_ports: vec![9090],
                        principals: vec![security::StringMatch {
                            match_type: Some(security::string_match::MatchType::Prefix(
                                "spiffe://x".into(),
                            )),
                        }],
                        ..Default::default()
                    }],
                }],
            }],
            ..Default::default()
        };
        let v = decode_resource(&to_any(AUTHORIZATION_TYPE_URL, &p));
        assert_eq!(v["action"], "DENY");
        assert_eq!(v["scope"], "GLOBAL");
        let m = &v["rules"][0]["clauses"][0]["matches"][0];
        assert_eq!(m["destinationPorts"][0], 9090);
        assert_eq!(m["principals"][0]["prefix"], "spiffe://x");
    }

    #[test]
    fn garbage_and_unknown_types_say_why() {
        let v = decode_resource(&prost_types::Any {
            type_url: ADDRESS_TYPE_URL.into(),
            value: vec![0xff, 0xff],
        });
        assert!(v["error"].as_str().unwrap().starts_with("cannot decode"));
        let v = decode_resource(&prost_types::Any {
            type_url: "type.googleapis.com/x.Y".into(),
            value: vec![],
        });
        assert_eq!(v["@type"], "type.googleapis.com/x.Y");
    }
}

use super::*;

fn workload(uid: &str, ip: [u8; 4], svc: Option<(&str, u32, u32)>, healthy: bool) -> pb::Workload {
    let mut services = std::collections::HashMap::new();
    if let Some((k, sp, tp)) = svc {
        services.insert(
            k.to_string(),
            pb::PortList {
                ports: vec![pb::Port {
                    service_port: sp,
                    target_port: tp,
                    app_protocol: 0,
                }],
            },
        );
    }
    pb::Workload {
        uid: uid.into(),
        name: uid.into(),
        namespace: "ns".into(),
        addresses: vec![ip.to_vec()],
        tunnel_protocol: pb::TunnelProtocol::Hbone as i32,
        node: "n1".into(),
        services,
        status: if healthy { 0 } else { 1 },
        ..Default::default()
    }
}

fn service(vip: [u8; 4]) -> pb::Service {
    pb::Service {
        name: "svc".into(),
        namespace: "ns".into(),
        hostname: "svc.ns.svc.cluster.local".into(),
        addresses: vec![pb::NetworkAddress {
            network: String::new(),
            address: vip.to_vec(),
            length: None,
        }],
        ports: vec![pb::Port {
            service_port: 80,
            target_port: 8080,
            app_protocol: 0,
        }],
        ..Default::default()
    }
}

const KEY: &str = "ns/svc.ns.svc.cluster.local";

#[test]
fn defaults_and_identity() {
    let w = convert_workload(workload("u1", [10, 0, 0, 1], None, true)).expect("convert");
    assert_eq!(
        w.identity().to_string(),
        "spiffe://cluster.local/ns/ns/sa/default"
    );
    assert_eq!(w.protocol, Protocol::Hbone);
    assert_eq!(w.canonical_revision, "latest");
}

#[test]
fn bad_address_is_an_error_not_a_panic() {
    let mut w = workload("u1", [10, 0, 0, 1], None, true);
    w.addresses = vec![vec![1, 2, 3]];
    assert!(convert_workload(w).is_err());
    let mut w = workload("", [10, 0, 0, 1], None, true);
    w.uid.clear();
    assert!(convert_workload(w).is_err());
}

#[test]
fn round_robin_over_healthy_endpoints() {
    let s = State::default();
    s.upsert(Address::Service(
        convert_service(service([10, 96, 0, 1])).expect("svc"),
    ));
    s.upsert(Address::Workload(
        convert_workload(workload("a", [10, 0, 0, 1], Some((KEY, 80, 8080)), true)).expect("w"),
    ));
    s.upsert(Address::Workload(
        convert_workload(workload("b", [10, 0, 0, 2], Some((KEY, 80, 8080)), true)).expect("w"),
    ));
    s.upsert(Address::Workload(
        convert_workload(workload("c", [10, 0, 0, 3], Some((KEY, 80, 8080)), false)).expect("w"),
    ));
    let svc = s
        .service_by_vip("10.96.0.1".parse().expect("ip"))
        .expect("svc");
    let mut seen = std::collections::HashMap::new();
    for _ in 0..10 {
        let (w, port) = s.pick_endpoint(&svc, 80).expect("endpoint");
        assert_eq!(port, 8080);
        *seen.entry(w.uid.clone()).or_insert(0) += 1;
    }
    assert_eq!(seen.get("a"), Some(&5));
    assert_eq!(seen.get("b"), Some(&5));
    assert!(!seen.contains_key("c"), "unhealthy endpoint picked");
    assert!(s.pick_endpoint(&svc, 81).is_none());
}

#[test]
fn removal_cleans_indexes() {
    let s = State::default();
    s.upsert(Address::Service(
        convert_service(service([10, 96, 0, 1])).expect("svc"),
    ));
    s.upsert(Address::Workload(
        convert_workload(workload("a", [10, 0, 0, 1], Some((KEY, 80, 8080)), true)).expect("w"),
    ));
    assert!(s.workload_by_ip("10.0.0.1".parse().expect("ip")).is_some());
    assert!(s.remove_address("a"));
    assert!(s.workload_by_ip("10.0.0.1".parse().expect("ip")).is_none());
    let svc = s.service_by_host("svc.ns").expect("short name");
    assert!(s.pick_endpoint(&svc, 80).is_none());
    assert!(s.remove_address(KEY));
    assert!(s.service_by_vip("10.96.0.1".parse().expect("ip")).is_none());
    assert!(!s.remove_address("nope"));
}

#[test]
fn moved_ip_follows_the_new_owner() {
    let s = State::default();
    s.upsert(Address::Workload(
        convert_workload(workload("a", [10, 0, 0, 1], None, true)).expect("w"),
    ));
    s.upsert(Address::Workload(
        convert_workload(workload("b", [10, 0, 0, 1], None, true)).expect("w"),
    ));
    s.remove_address("a");
    assert_eq!(
        s.workload_by_ip("10.0.0.1".parse().expect("ip"))
            .map(|w| w.uid.clone()),
        Some("b".into())
    );
}

#[test]
fn policies_apply_by_scope_and_decide_inbound() {
    use mesh_proto::security as sec;
    let s = State::default();
    let mut w = workload("a", [10, 0, 0, 1], None, true);
    w.authorization_policies = vec!["ns/selected".into()];
    s.upsert(Address::Workload(convert_workload(w).expect("w")));
    let mk = |name: &str, scope: sec::Scope, action: sec::Action, port: u32| {
        mesh_policy::Policy::from_proto(sec::Authorization {
            name: name.into(),
            namespace: "ns".into(),
            scope: scope as i32,
            action: action as i32,
            rules: vec![sec::Rule {
                clauses: vec![sec::Clause {
                    matches: vec![sec::Match {
                        destination_ports: vec![port],
                        ..Default::default()
                    }],
                }],
            }],
            ..Default::default()
        })
        .expect("policy")
    };
    s.upsert_policy(
        "ns/selected",
        mk(
            "selected",
            sec::Scope::WorkloadSelector,
            sec::Action::Deny,
            9000,
        ),
    );
    s.upsert_policy(
        "ns/unselected",
        mk(
            "unselected",
            sec::Scope::WorkloadSelector,
            sec::Action::Deny,
            80,
        ),
    );
    s.upsert_policy(
        "other/ns-wide",
        mesh_policy::Policy {
            namespace: "other".into(),
            ..mk("ns-wide", sec::Scope::Namespace, sec::Action::Deny, 80)
        },
    );
    let wl = s
        .workload_by_ip("10.0.0.1".parse().expect("ip"))
        .expect("w");
    let applied: Vec<String> = s.policies_for(&wl).iter().map(|p| p.key()).collect();
    assert_eq!(applied, vec!["ns/selected".to_string()]);
    let id = wl.identity();
    let conn = |port| mesh_policy::Connection {
        src_identity: Some(&id),
        src_ip: "10.0.0.9".parse().expect("ip"),
        dst_ip: "10.0.0.1".parse().expect("ip"),
        dst_port: port,
    };
    assert_eq!(
        crate::proxy::authorize(&s, &wl, &conn(80)),
        mesh_policy::Decision::Allow
    );
    assert_eq!(
        crate::proxy::authorize(&s, &wl, &conn(9000)),
        mesh_policy::Decision::Deny("denied by DENY policy ns/selected".into())
    );
}

#[test]
fn waypoint_references_are_converted_and_checked() {
    let mut s = service([10, 96, 0, 1]);
    s.waypoint = Some(pb::GatewayAddress {
        destination: Some(pb::gateway_address::Destination::Hostname(
            pb::NamespacedHostname {
                namespace: "ns".into(),
                hostname: "waypoint.ns.svc.cluster.local".into(),
            },
        )),
        hbone_mtls_port: 15008,
    });
    let svc = convert_service(s.clone()).expect("service");
    assert_eq!(
        svc.waypoint,
        Some(Waypoint {
            target: WaypointRef::Hostname {
                namespace: "ns".into(),
                hostname: "waypoint.ns.svc.cluster.local".into()
            },
            hbone_port: 15008
        })
    );
    let mut w = workload("w", [10, 0, 0, 1], None, true);
    w.waypoint = Some(pb::GatewayAddress {
        destination: Some(pb::gateway_address::Destination::Address(
            pb::NetworkAddress {
                network: String::new(),
                address: vec![10, 0, 0, 9],
                length: None,
            },
        )),
        hbone_mtls_port: 0,
    });
    let wl = convert_workload(w).expect("workload");
    assert_eq!(
        wl.waypoint,
        Some(Waypoint {
            target: WaypointRef::Address("10.0.0.9".parse().expect("ip")),
            hbone_port: 15008
        }),
        "port 0 means Istio's default"
    );
    // A waypoint that names nothing, or a malformed address, is an error naming the resource.
    s.waypoint = Some(pb::GatewayAddress {
        destination: None,
        hbone_mtls_port: 15008,
    });
    let e = convert_service(s).expect_err("invalid");
    assert!(e.to_string().contains("svc.ns.svc.cluster.local"), "{e}");
}

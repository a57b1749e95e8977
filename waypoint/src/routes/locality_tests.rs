//! Locality load balancing through the whole compile path: a pushed ServiceRoutes with the
//! waypoint's pods and endpoint localities, compiled for one waypoint pod, then picks.

use std::collections::{HashMap, HashSet};

use super::outlier::Outcome;
use super::*;

/// One endpoint per `(last IP octet, "region/zone/subzone")`.
fn endpoints(eps: &[(u8, &str)]) -> Vec<pb::Endpoint> {
    eps.iter()
        .map(|(i, l)| {
            let mut p = l.split('/');
            pb::Endpoint {
                address: vec![10, 0, 0, *i],
                port: 8080,
                workload_name: format!("ep{i}"),
                hbone: true,
                locality: Some(pb::Locality {
                    region: p.next().unwrap_or_default().into(),
                    zone: p.next().unwrap_or_default().into(),
                    subzone: p.next().unwrap_or_default().into(),
                }),
                ..Default::default()
            }
        })
        .collect()
}

fn outlier() -> pb::OutlierDetection {
    pb::OutlierDetection {
        consecutive_5xx_errors: 2,
        interval_ms: 10_000,
        base_ejection_time_ms: 30_000,
        max_ejection_percent: 100,
        ..Default::default()
    }
}

/// Service `name` whose default backend has `eps`, load balancer `lb`, and (when `od`)
/// outlier detection; the waypoint pod `wp-0` runs in `us-east/zone-a/rack-1`.
fn service(name: &str, eps: &[(u8, &str)], lb: pb::LoadBalancer, od: bool) -> pb::ServiceRoutes {
    pb::ServiceRoutes {
        name: name.into(),
        namespace: "app".into(),
        hostname: format!("{name}.app.svc.cluster.local"),
        addresses: vec![vec![10, 1, 0, 1]],
        ports: vec![pb::ServicePort {
            port: 80,
            protocol: pb::Protocol::Http1 as i32,
            default_backend: Some(pb::Backend {
                name: name.into(),
                namespace: "app".into(),
                hostname: format!("{name}.app.svc.cluster.local"),
                port: 80,
                endpoints: endpoints(eps),
                policy: Some(pb::TrafficPolicy {
                    load_balancer: Some(lb),
                    outlier_detection: od.then(outlier),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }],
        waypoint_instances: vec![
            pb::WaypointInstance {
                pod_name: "wp-0".into(),
                locality: Some(pb::Locality {
                    region: "us-east".into(),
                    zone: "zone-a".into(),
                    subzone: "rack-1".into(),
                }),
            },
            pb::WaypointInstance {
                pod_name: "wp-1".into(),
                locality: Some(pb::Locality {
                    region: "eu-west".into(),
                    zone: "zone-x".into(),
                    subzone: String::new(),
                }),
            },
        ],
        ..Default::default()
    }
}

fn failover_lb(simple: pb::load_balancer::Simple, failover: &[(&str, &str)]) -> pb::LoadBalancer {
    let mut lb = pb::LoadBalancer {
        locality: Some(pb::LocalityLb {
            failover: failover
                .iter()
                .map(|(f, t)| pb::LocalityFailover {
                    from: f.to_string(),
                    to: t.to_string(),
                })
                .collect(),
            distribute: vec![],
        }),
        ..Default::default()
    };
    lb.set_simple(simple);
    lb
}

fn backend_of(s: &pb::ServiceRoutes, pod: &str) -> Arc<Backend> {
    let svc = compile_for(s, pod).expect("compile");
    svc.ports[&80].default_rule.backends[0].clone()
}

/// The default backend of service `name` (with outlier detection) as waypoint pod `pod` has it.
fn backend(name: &str, eps: &[(u8, &str)], lb: pb::LoadBalancer, pod: &str) -> Arc<Backend> {
    backend_of(&service(name, eps, lb, true), pod)
}

/// Round robin within a level, with the `failover` region mapping.
fn round_robin(failover: &[(&str, &str)]) -> pb::LoadBalancer {
    failover_lb(pb::load_balancer::Simple::RoundRobin, failover)
}

/// Picks per workload, as [`picks`] counts them.
fn counts(c: &[(&str, u32)]) -> HashMap<String, u32> {
    c.iter().map(|(w, n)| (w.to_string(), *n)).collect()
}

/// Workload names of `n` picks, each finished with `outcome(workload)`.
fn picks(b: &Backend, n: usize, outcome: impl Fn(&str) -> Outcome) -> HashMap<String, u32> {
    let mut m = HashMap::new();
    for _ in 0..n {
        let p = b.cluster.pick(None).expect("an endpoint");
        let w = p.endpoint.workload.clone();
        p.finish(outcome(&w));
        *m.entry(w).or_default() += 1;
    }
    m
}

fn ok(_: &str) -> Outcome {
    Outcome::Status(200)
}

#[test]
fn all_traffic_stays_in_the_best_level_of_the_waypoint_replica() {
    let eps = [
        (1, "us-east/zone-a/rack-1"),
        (2, "us-east/zone-a/rack-2"),
        (3, "us-east/zone-b/rack-1"),
        (4, "eu-west/zone-x/"),
    ];
    // wp-0 (us-east/zone-a/rack-1): only the same-subzone endpoint.
    let b = backend("loc-levels", &eps, round_robin(&[]), "wp-0");
    assert_eq!(picks(&b, 50, ok), counts(&[("ep1", 50)]));
    // wp-1 (eu-west/zone-x) prefers its own region's endpoint: priorities are per replica.
    let b = backend("loc-levels-eu", &eps, round_robin(&[]), "wp-1");
    assert_eq!(picks(&b, 50, ok), counts(&[("ep4", 50)]));
}

#[test]
fn an_ejected_local_level_fails_over_to_the_next_and_the_algorithm_works_within_it() {
    let eps = [
        (1, "us-east/zone-a/rack-1"),
        (2, "us-east/zone-b/rack-1"),
        (3, "us-east/zone-b/rack-2"),
        (4, "eu-west/zone-x/"),
    ];
    let b = backend("loc-failover", &eps, round_robin(&[]), "wp-0");
    // ep1 answers 5xx twice in a row: ejected, and traffic moves to zone-b (not eu-west),
    // round robin over both of its endpoints.
    let seen = picks(&b, 2, |_| Outcome::Status(503));
    assert_eq!(seen, counts(&[("ep1", 2)]));
    let after = picks(&b, 40, ok);
    assert_eq!(after, counts(&[("ep2", 20), ("ep3", 20)]));
    // zone-b fails too. Once one of its two endpoints is ejected, 30 % of the traffic already
    // spills to the last level (1.4 × 50 % healthy); once both are, eu-west takes it all.
    let zone_b_down = |w: &str| {
        if w == "ep4" {
            Outcome::Status(200)
        } else {
            Outcome::LocalFailure
        }
    };
    let seen = picks(&b, 40, zone_b_down);
    assert!(seen.get("ep4").is_some_and(|n| *n > 0), "{seen:?}");
    assert_eq!(picks(&b, 10, ok), counts(&[("ep4", 10)]));
}

#[test]
fn without_locality_lb_every_endpoint_gets_traffic() {
    // What istiod-lite sends for `enabled: false` or without outlier detection: no locality.
    let eps = [(1, "us-east/zone-a/rack-1"), (2, "eu-west/zone-x/")];
    let mut lb = pb::LoadBalancer::default();
    lb.set_simple(pb::load_balancer::Simple::RoundRobin);
    let b = backend("loc-off", &eps, lb, "wp-0");
    assert!(b.cluster.plan.is_none());
    assert_eq!(picks(&b, 20, ok), counts(&[("ep1", 10), ("ep2", 10)]));
}

#[test]
fn the_failover_mapping_picks_the_region_to_fail_over_to() {
    // Nothing in us-east: with `us-east -> ap-south`, ap-south comes before eu-west.
    let eps = [(1, "eu-west/zone-x/"), (2, "ap-south/zone-p/")];
    let mapping = [("us-east", "ap-south")];
    let b = backend("loc-mapping", &eps, round_robin(&mapping), "wp-0");
    assert_eq!(picks(&b, 20, ok), counts(&[("ep2", 20)]));
    // Without the mapping both are "another region": shared.
    let b = backend("loc-nomapping", &eps, round_robin(&[]), "wp-0");
    assert_eq!(picks(&b, 20, ok), counts(&[("ep1", 10), ("ep2", 10)]));
    // ap-south ejected: eu-west after all.
    let b = backend("loc-mapping-ejected", &eps, round_robin(&mapping), "wp-0");
    picks(&b, 2, |_| Outcome::Status(500));
    assert_eq!(picks(&b, 10, ok), counts(&[("ep1", 10)]));
}

#[test]
fn least_request_and_ring_hash_choose_within_the_level() {
    let eps = [
        (1, "us-east/zone-a/rack-1"),
        (2, "us-east/zone-a/rack-1"),
        (3, "eu-west/zone-x/"),
    ];
    let lb = failover_lb(pb::load_balancer::Simple::LeastRequest, &[]);
    let b = backend("loc-lr", &eps, lb, "wp-0");
    // A request held on one local endpoint: the other local one takes the next, never eu-west.
    let held = b.cluster.pick(None).unwrap();
    for _ in 0..30 {
        let p = b.cluster.pick(None).unwrap();
        assert_ne!(p.endpoint.workload, held.endpoint.workload);
        assert_ne!(p.endpoint.workload, "ep3");
        p.finish(Outcome::Status(200));
    }
    drop(held);

    let mut lb = round_robin(&[]);
    lb.consistent_hash = Some(pb::ConsistentHash {
        key: Some(pb::consistent_hash::Key::HttpHeaderName("x-user".into())),
        minimum_ring_size: 1024,
    });
    let b = backend("loc-ring", &eps, lb, "wp-0");
    let peer: IpAddr = "10.9.9.9".parse().unwrap();
    let mut used = HashSet::new();
    for u in 0..40 {
        let mut h = HeaderMap::new();
        h.insert("x-user", format!("user{u}").parse().unwrap());
        let input = cluster::HashInput {
            headers: &h,
            query: None,
            peer,
        };
        let first = b
            .cluster
            .pick(Some(input))
            .unwrap()
            .endpoint
            .workload
            .clone();
        assert_ne!(first, "ep3", "a hashed request left the local level");
        for _ in 0..5 {
            assert_eq!(
                b.cluster.pick(Some(input)).unwrap().endpoint.workload,
                first
            );
        }
        used.insert(first);
    }
    assert_eq!(used.len(), 2, "both local endpoints used: {used:?}");
}

#[test]
fn distribute_splits_by_locality_weight() {
    let eps = [(1, "us-east/zone-a/rack-1"), (2, "us-east/zone-b/rack-1")];
    let lb = pb::LoadBalancer {
        locality: Some(pb::LocalityLb {
            failover: vec![],
            distribute: vec![pb::LocalityDistribute {
                from: "us-east/zone-a/*".into(),
                to: vec![
                    pb::LocalityWeight {
                        locality: "us-east/zone-a/*".into(),
                        weight: 80,
                    },
                    pb::LocalityWeight {
                        locality: "us-east/zone-b/*".into(),
                        weight: 20,
                    },
                ],
            }],
        }),
        ..Default::default()
    };
    // No outlier detection needed for distribute.
    let s = service("loc-distribute", &eps, lb, false);
    let b = backend_of(&s, "wp-0");
    let m = picks(&b, 4000, ok);
    // 800 ± 4.5 σ (σ ≈ 25) to zone-b.
    let to_b = m.get("ep2").copied().unwrap_or(0);
    assert!((687..=913).contains(&to_b), "{m:?}");
}

#[test]
fn an_unlisted_pod_has_no_locality_and_the_dump_shows_the_own_one() {
    let s = service(
        "loc-unknown",
        &[(1, "us-east/zone-a/rack-1")],
        round_robin(&[]),
        true,
    );
    assert_eq!(
        compile_for(&s, "wp-9").unwrap().locality,
        locality::Locality::default()
    );
    assert_eq!(compile(&s).unwrap().locality, locality::Locality::default());
    assert_eq!(
        compile_for(&s, "wp-0").unwrap().locality.to_string(),
        "us-east/zone-a/rack-1"
    );
}

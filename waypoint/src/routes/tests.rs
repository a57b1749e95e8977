use super::*;
use pb::{path_match, Backend as PbBackend, PathMatch, RouteMatch, RouteRule, ValueMatch};

fn backend(name: &str, weight: u32, ip: [u8; 4]) -> PbBackend {
    PbBackend {
        name: name.into(),
        namespace: "app".into(),
        hostname: format!("{name}.app.svc.cluster.local"),
        port: 80,
        weight,
        endpoints: vec![pb::Endpoint {
            address: ip.to_vec(),
            port: 8080,
            identity: "spiffe://cluster.local/ns/app/sa/x".into(),
            hbone: true,
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn path(kind: path_match::Kind, v: &str) -> Option<PathMatch> {
    let mut p = PathMatch {
        value: v.into(),
        ..Default::default()
    };
    p.set_kind(kind);
    Some(p)
}

fn rule(name: &str, idx: u32, matches: Vec<RouteMatch>, target: &str) -> RouteRule {
    RouteRule {
        route: format!("app/{name}"),
        rule_index: idx,
        matches,
        backends: vec![backend(target, 1, [10, 0, 0, 1])],
        ..Default::default()
    }
}

fn port(rules: Vec<RouteRule>) -> Arc<Port> {
    let s = pb::ServiceRoutes {
        name: "svc".into(),
        namespace: "app".into(),
        hostname: "svc.app.svc.cluster.local".into(),
        addresses: vec![vec![10, 1, 0, 1]],
        ports: vec![pb::ServicePort {
            port: 80,
            protocol: pb::Protocol::Http1 as i32,
            rules,
            default_backend: Some(backend("svc", 1, [10, 0, 0, 9])),
            ..Default::default()
        }],
        ..Default::default()
    };
    let svc = compile(&s).expect("compile");
    svc.ports.get(&80).cloned().expect("port")
}

/// Which backend a request goes to ("404" when nothing matches).
fn target(p: &Port, method: &str, uri: &str, headers: &[(&str, &str)]) -> String {
    let m = Method::from_bytes(method.as_bytes()).unwrap();
    let (path, query) = match uri.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (uri, None),
    };
    let mut h = HeaderMap::new();
    for (k, v) in headers {
        h.insert(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    let view = RequestView {
        method: &m,
        path,
        query,
        headers: &h,
    };
    match p.select(&view) {
        Some(s) => s.rule.backends[0].name.clone(),
        None => "404".into(),
    }
}

fn m(p: Option<PathMatch>) -> RouteMatch {
    RouteMatch {
        path: p,
        ..Default::default()
    }
}

#[test]
fn path_precedence_exact_then_longest_prefix_then_regex() {
    use path_match::Kind::*;
    let p = port(vec![
        rule("a", 0, vec![m(path(Regex, "/api/.*"))], "regex"),
        rule("a", 1, vec![m(path(Prefix, "/api"))], "short"),
        rule("a", 2, vec![m(path(Prefix, "/api/v1/"))], "long"),
        rule("a", 3, vec![m(path(Exact, "/api/v1/exact"))], "exact"),
    ]);
    assert_eq!(target(&p, "GET", "/api/v1/exact", &[]), "exact");
    assert_eq!(target(&p, "GET", "/api/v1/other", &[]), "long");
    assert_eq!(target(&p, "GET", "/api/v1", &[]), "long");
    assert_eq!(target(&p, "GET", "/api/v2", &[]), "short");
    // PathPrefix matches whole path elements only; the regex catches the rest.
    assert_eq!(target(&p, "GET", "/api/v1x/y", &[]), "short");
    assert_eq!(target(&p, "GET", "/apix", &[]), "404");
    assert_eq!(target(&p, "GET", "/other", &[]), "404");
}

#[test]
fn method_headers_and_query_break_ties_in_that_order() {
    use path_match::Kind::*;
    let hdr = |n: &str, v: &str, regex: bool| ValueMatch {
        name: n.into(),
        value: v.into(),
        regex,
    };
    let p = port(vec![
        rule("a", 0, vec![m(path(Prefix, "/"))], "plain"),
        rule(
            "a",
            1,
            vec![RouteMatch {
                path: path(Prefix, "/"),
                query_params: vec![hdr("v", "2", false)],
                ..Default::default()
            }],
            "query",
        ),
        rule(
            "a",
            2,
            vec![RouteMatch {
                path: path(Prefix, "/"),
                headers: vec![hdr("X-Canary", "t.*", true)],
                ..Default::default()
            }],
            "header",
        ),
        rule(
            "a",
            3,
            vec![RouteMatch {
                path: path(Prefix, "/"),
                method: "POST".into(),
                ..Default::default()
            }],
            "method",
        ),
    ]);
    assert_eq!(target(&p, "GET", "/x", &[]), "plain");
    assert_eq!(target(&p, "GET", "/x?a=1&v=2", &[]), "query");
    assert_eq!(
        target(&p, "GET", "/x?v=3&v=2", &[]),
        "plain",
        "first value counts"
    );
    assert_eq!(
        target(&p, "GET", "/x?v=2", &[("x-canary", "true")]),
        "header"
    );
    assert_eq!(target(&p, "GET", "/x", &[("x-canary", "nope")]), "plain");
    assert_eq!(
        target(&p, "POST", "/x?v=2", &[("x-canary", "true")]),
        "method"
    );
}

#[test]
fn ties_go_to_the_oldest_route_then_by_name() {
    use path_match::Kind::*;
    let mut newer = rule("a-newer", 0, vec![m(path(Prefix, "/"))], "newer");
    newer.creation_timestamp = "2024-02-01T00:00:00Z".into();
    let mut older = rule("z-older", 0, vec![m(path(Prefix, "/"))], "older");
    older.creation_timestamp = "2024-01-01T00:00:00Z".into();
    let p = port(vec![newer, older]);
    assert_eq!(target(&p, "GET", "/", &[]), "older");
    let p = port(vec![
        rule("b", 0, vec![m(path(Prefix, "/"))], "b"),
        rule("a", 0, vec![m(path(Prefix, "/"))], "a"),
    ]);
    assert_eq!(target(&p, "GET", "/", &[]), "a");
}

#[test]
fn no_routes_means_the_service_itself() {
    let p = port(vec![]);
    assert_eq!(target(&p, "GET", "/anything", &[]), "svc");
}

#[test]
fn weighted_backends_follow_their_weights() {
    let r = RouteRule {
        route: "app/split".into(),
        backends: vec![
            backend("v1", 90, [10, 0, 0, 1]),
            backend("v2", 10, [10, 0, 0, 2]),
            backend("off", 0, [10, 0, 0, 3]),
        ],
        ..Default::default()
    };
    let compiled = super::rule(&r, &Default::default()).unwrap();
    let mut counts = HashMap::new();
    for roll in 0..100 {
        let b = compiled.pick_backend_with(roll).unwrap();
        *counts.entry(b.name.clone()).or_insert(0) += 1;
    }
    assert_eq!(counts["v1"], 90);
    assert_eq!(counts["v2"], 10);
    assert!(!counts.contains_key("off"));
    let mut random = HashMap::new();
    for _ in 0..10_000 {
        *random
            .entry(compiled.pick_backend().unwrap().name.clone())
            .or_insert(0) += 1;
    }
    let v2 = random["v2"];
    assert!((800..1200).contains(&v2), "{v2} of 10000 to v2");
    let none = super::rule(
        &RouteRule {
            backends: vec![backend("off", 0, [10, 0, 0, 3])],
            ..Default::default()
        },
        &Default::default(),
    )
    .unwrap();
    assert!(none.pick_backend().is_none());
}

#[test]
fn endpoints_round_robin() {
    let mut b = backend("v1", 1, [10, 0, 0, 1]);
    b.endpoints.push(pb::Endpoint {
        address: vec![10, 0, 0, 2],
        port: 8080,
        ..Default::default()
    });
    let b = super::backend(&b, &Default::default()).unwrap();
    let picks: Vec<String> = (0..4).map(|_| b.pick().unwrap().addr.to_string()).collect();
    assert_eq!(
        picks,
        [
            "10.0.0.1:8080",
            "10.0.0.2:8080",
            "10.0.0.1:8080",
            "10.0.0.2:8080"
        ]
    );
}

#[test]
fn header_edits_set_add_remove() {
    let e = header_edits(
        "r",
        &pb::HeaderModifier {
            set: vec![pb::Header {
                name: "x-set".into(),
                value: "new".into(),
            }],
            add: vec![pb::Header {
                name: "x-add".into(),
                value: "2".into(),
            }],
            remove: vec!["x-gone".into()],
        },
    )
    .unwrap();
    let mut h = HeaderMap::new();
    h.insert("x-set", "old".parse().unwrap());
    h.insert("x-add", "1".parse().unwrap());
    h.insert("x-gone", "bye".parse().unwrap());
    e.apply(&mut h);
    assert_eq!(h["x-set"], "new");
    assert_eq!(h.get_all("x-add").iter().count(), 2);
    assert!(!h.contains_key("x-gone"));
    assert!(header_edits(
        "r",
        &pb::HeaderModifier {
            set: vec![pb::Header {
                name: "bad name".into(),
                value: "v".into()
            }],
            ..Default::default()
        }
    )
    .is_err());
}

#[test]
fn prefix_rewrites() {
    assert_eq!(replace_prefix("/foo/bar", "/foo", "/xyz"), "/xyz/bar");
    assert_eq!(replace_prefix("/foo", "/foo", "/xyz"), "/xyz");
    assert_eq!(replace_prefix("/foo/bar", "/foo", "/"), "/bar");
    assert_eq!(replace_prefix("/foo", "/foo", "/"), "/");
    assert_eq!(replace_prefix("/bar", "/", "/xyz"), "/xyz/bar");
    assert_eq!(replace_prefix("/foo/bar", "/foo", "/xyz/"), "/xyz/bar");
    assert_eq!(
        changed_path("/a/b", &PathChange::Full("/new".into()), Some("/a")),
        "/new"
    );
}

#[test]
fn retry_budget_has_a_floor_and_a_percentage() {
    let b = Arc::new(RetryBudget::new(20, 3));
    let _reqs: Vec<BudgetGuard> = (0..10).map(|_| b.request()).collect();
    // 20% of 10 = 2, but the floor is 3.
    let r: Vec<_> = (0..5).filter_map(|_| b.try_retry()).collect();
    assert_eq!(r.len(), 3);
    drop(r);
    let _more: Vec<BudgetGuard> = (0..90).map(|_| b.request()).collect();
    let r: Vec<_> = (0..50).filter_map(|_| b.try_retry()).collect();
    assert_eq!(r.len(), 20, "20% of 100 requests in flight");
}

#[test]
fn table_lookup_by_vip_and_hostname_and_bad_regex_is_an_error() {
    let s = pb::ServiceRoutes {
        name: "svc".into(),
        namespace: "app".into(),
        hostname: "svc.app.svc.cluster.local".into(),
        addresses: vec![vec![10, 1, 0, 1]],
        ports: vec![pb::ServicePort {
            port: 80,
            ..Default::default()
        }],
        ..Default::default()
    };
    let t = Table::new([("app/svc".to_string(), Arc::new(compile(&s).unwrap()))].into());
    assert!(t.lookup("10.1.0.1:80").is_some());
    assert!(t.lookup("svc.app.svc.cluster.local:80").is_some());
    assert!(t.lookup("10.1.0.1:81").is_none());
    assert!(t.lookup("10.1.0.2:80").is_none());
    assert!(t.lookup("garbage").is_none());
    let mut bad = s.clone();
    bad.ports[0].rules = vec![rule(
        "r",
        0,
        vec![m(path(path_match::Kind::Regex, "("))],
        "x",
    )];
    assert!(matches!(compile(&bad), Err(RouteError::Regex { .. })));
}

fn ordered_port(rules: Vec<RouteRule>) -> Arc<Port> {
    let s = pb::ServiceRoutes {
        name: "svc".into(),
        namespace: "app".into(),
        hostname: "svc.app.svc.cluster.local".into(),
        addresses: vec![vec![10, 1, 0, 1]],
        ports: vec![pb::ServicePort {
            port: 80,
            protocol: pb::Protocol::Http1 as i32,
            rules,
            ordered: true,
            ..Default::default()
        }],
        ..Default::default()
    };
    compile(&s).unwrap().ports.get(&80).cloned().unwrap()
}

#[test]
fn virtual_service_rules_keep_their_order_and_prefixes_are_plain_strings() {
    // In Gateway API precedence the Exact match would win; a VirtualService lists the prefix
    // first, so the prefix wins.
    let p = ordered_port(vec![
        rule(
            "vs",
            0,
            vec![m(path(path_match::Kind::StringPrefix, "/foo"))],
            "first",
        ),
        rule(
            "vs",
            1,
            vec![m(path(path_match::Kind::Exact, "/foo/bar"))],
            "second",
        ),
        rule("vs", 2, vec![], "catch-all"),
    ]);
    assert_eq!(target(&p, "GET", "/foo/bar", &[]), "first");
    // A plain string prefix: "/foo" matches "/foobar" (unlike PathPrefix).
    assert_eq!(target(&p, "GET", "/foobar", &[]), "first");
    assert_eq!(target(&p, "GET", "/other", &[]), "catch-all");
}

#[test]
fn literal_prefix_rewrite() {
    let c = PathChange::Literal("/v2".into());
    assert_eq!(changed_path("/api/x", &c, Some("/api")), "/v2/x");
    assert_eq!(changed_path("/apix", &c, Some("/api")), "/v2x");
    // After an exact or regex match (no prefix) the whole path is replaced.
    assert_eq!(changed_path("/api/x", &c, None), "/v2");
}

#[test]
fn retry_on_conditions() {
    let p = |on: RetryOn, codes: Vec<u16>| RetryPolicy {
        attempts: 2,
        codes,
        backoff: Duration::from_millis(1),
        on: Some(on),
    };
    let gw = p(
        RetryOn {
            gateway_error: true,
            ..Default::default()
        },
        vec![],
    );
    assert!(gw.retries_status(502) && gw.retries_status(504));
    assert!(!gw.retries_status(500));
    assert!(gw.retries_failure(FailureKind::Connect));
    assert!(!gw.retries_failure(FailureKind::Reset));
    let five = p(
        RetryOn {
            server_error: true,
            ..Default::default()
        },
        vec![],
    );
    assert!(five.retries_status(500) && five.retries_failure(FailureKind::Reset));
    let codes = p(RetryOn::default(), vec![429]);
    assert!(codes.retries_status(429) && !codes.retries_status(503));
    assert!(!codes.retries_failure(FailureKind::Connect));
    let r4 = p(
        RetryOn {
            retriable_4xx: true,
            ..Default::default()
        },
        vec![],
    );
    assert!(r4.retries_status(409) && !r4.retries_status(404));
    // HTTPRoute semantics: 503 always, every failure.
    let legacy = RetryPolicy { on: None, ..codes };
    assert!(legacy.retries_status(503) && legacy.retries_failure(FailureKind::Reset));
}

#[test]
fn traffic_policy_and_fault_and_mirror_compile() {
    let mut r = rule("vs", 0, vec![], "svc");
    r.backends[0].subset = "v1".into();
    r.backends[0].policy = Some(pb::TrafficPolicy {
        load_balancer: Some(pb::LoadBalancer {
            consistent_hash: Some(pb::ConsistentHash {
                key: Some(pb::consistent_hash::Key::HttpHeaderName("X-User".into())),
                minimum_ring_size: 0,
            }),
            ..Default::default()
        }),
        connection_pool: Some(pb::ConnectionPool {
            max_connections: 1,
            http1_max_pending_requests: 2,
            http2_max_requests: 3,
            max_requests_per_connection: 4,
        }),
        outlier_detection: Some(pb::OutlierDetection {
            consecutive_5xx_errors: 5,
            consecutive_gateway_errors: 0,
            interval_ms: 1000,
            base_ejection_time_ms: 2000,
            max_ejection_percent: 50,
        }),
    });
    r.fault = Some(pb::FaultInjection {
        delay: Some(pb::fault_injection::Delay {
            fixed_delay_ms: 10,
            percent: 100.0,
        }),
        abort: Some(pb::fault_injection::Abort {
            http_status: 0,
            percent: 50.0,
        }),
    });
    r.filters.push(pb::Filter {
        kind: Some(pb::filter::Kind::RequestMirror(pb::Mirror {
            backend: Some(backend("shadow", 1, [10, 0, 0, 7])),
            percent: 10.0,
        })),
    });
    let p = ordered_port(vec![r]);
    let rule = p
        .select(&RequestView {
            method: &Method::GET,
            path: "/",
            query: None,
            headers: &HeaderMap::new(),
        })
        .unwrap()
        .rule;
    let b = &rule.backends[0];
    assert_eq!(b.subset, "v1");
    assert_eq!(b.cluster.name, "svc.app.svc.cluster.local|v1|80");
    let pol = &b.cluster.policy;
    assert_eq!(
        pol.lb,
        lb::LbPolicy::RingHash {
            key: lb::HashKey::Header("x-user".parse().unwrap()),
            ring_size: 1024
        }
    );
    assert_eq!(
        pol.pool,
        pool::PoolLimits {
            max_connections: 1,
            max_pending: 2,
            max_requests: 3,
            max_requests_per_connection: 4
        }
    );
    let od = pol.outlier.as_ref().unwrap();
    assert_eq!(od.base_ejection, Duration::from_secs(2));
    let f = rule.fault.as_ref().unwrap();
    assert_eq!(f.delay, Some((Duration::from_millis(10), 100.0)));
    // An abort status outside 200-599 is dropped rather than sent.
    assert_eq!(f.abort, None);
    assert_eq!(rule.mirrors.len(), 1);
    assert_eq!(rule.mirrors[0].backend.name, "shadow");
}

use super::figures::*;
use super::*;
use crate::dump::ConfigDump;
use crate::golden::{assert_golden, CONFIG_DUMP};

/// One ztunnel's exposition: `opened`/`closed` mTLS connections to demo-b/server reported by
/// the destination (and by the source), plus a plaintext one, failures, bytes.
fn scrape(opened: u32, closed: u32, failed: u32, bytes: u32) -> Vec<Sample> {
    let dst = r#"reporter="destination",destination_workload="server",destination_workload_namespace="demo-b",source_workload="client""#;
    let src = r#"reporter="source",destination_workload="server",destination_workload_namespace="demo-b",source_workload="client""#;
    let text = format!(
        "# TYPE istio_tcp_connections_opened_total counter\n\
         istio_tcp_connections_opened_total{{{dst},connection_security_policy=\"mutual_tls\"}} {opened}\n\
         istio_tcp_connections_opened_total{{{dst},connection_security_policy=\"unknown\"}} 1\n\
         istio_tcp_connections_closed_total{{{dst},connection_security_policy=\"mutual_tls\"}} {closed}\n\
         istio_tcp_connections_closed_total{{{dst},connection_security_policy=\"unknown\"}} 1\n\
         istio_tcp_connections_failed_total{{{dst},connection_security_policy=\"unknown\",response_flags=\"UF\"}} {failed}\n\
         istio_tcp_received_bytes_total{{{dst},connection_security_policy=\"mutual_tls\"}} {bytes}\n\
         istio_tcp_sent_bytes_total{{{dst},connection_security_policy=\"mutual_tls\"}} {}\n\
         istio_tcp_connections_opened_total{{{src},connection_security_policy=\"mutual_tls\"}} 999\n\
         istio_tcp_connections_opened_total{{reporter=\"source\",destination_workload=\"unknown\",destination_workload_namespace=\"unknown\"}} 5\n\
         istio_build{{component=\"ztunnel\"}} 1\n",
        bytes * 2
    );
    prom::parse_text(&text)
}

/// Waypoint L7 series for demo-b/server: `ok` 200s, `err` 503s, all in the 5 ms bucket but one
/// slow request in the 100 ms bucket.
fn waypoint(ok: u32, err: u32) -> Vec<Sample> {
    let l = r#"reporter="waypoint",destination_workload="server",destination_workload_namespace="demo-b""#;
    let total = ok + err;
    let text = format!(
        "istio_requests_total{{{l},response_code=\"200\"}} {ok}\n\
         istio_requests_total{{{l},response_code=\"503\"}} {err}\n\
         istio_request_duration_milliseconds_bucket{{{l},le=\"5\"}} {}\n\
         istio_request_duration_milliseconds_bucket{{{l},le=\"100\"}} {total}\n\
         istio_request_duration_milliseconds_bucket{{{l},le=\"+Inf\"}} {total}\n",
        total.saturating_sub(1)
    );
    prom::parse_text(&text)
}

fn fixture_workloads() -> Vec<crate::dump::Workload> {
    ConfigDump::parse(CONFIG_DUMP.as_bytes()).unwrap().workloads
}

#[test]
fn l4_rows_from_two_scrapes_match_golden() {
    // Window of 2 s: 4 mTLS connections opened (one failed attempt), 3 closed; the source's
    // report and traffic to unknown destinations are not counted for the row.
    let before = vec![Some(scrape(10, 8, 0, 1000)), None];
    let after = vec![Some(scrape(14, 11, 1, 5096)), None];
    let acc = fold_scrapes(&before, &after);
    let ws = fixture_workloads();
    let rows = rows(&acc, Some(&ws), &Selector::default(), 2.0);
    let server = rows.iter().find(|r| r.name == "demo-b/server").unwrap();
    assert_eq!(server.meshed_pods, Some(2));
    assert_eq!(
        server.tcp_connections,
        Some(3.0),
        "14 + 1 opened - 11 - 1 closed"
    );
    assert_eq!(server.success, Some(0.8));
    assert_eq!(server.mtls, Some(1.0));
    assert_eq!(server.connections_per_second, Some(2.0));
    assert_eq!(server.rps, None, "no L7 without a waypoint");
    let report = StatReport {
        source: "scrape",
        window_seconds: 2.0,
        rows,
    };
    let mut out = Vec::new();
    render(&report, &Selector::default(), Format::Table, &mut out).unwrap();
    assert_golden("stat.txt", &String::from_utf8(out).unwrap());
    let mut out = Vec::new();
    render(&report, &Selector::default(), Format::Wide, &mut out).unwrap();
    assert_golden("stat_wide.txt", &String::from_utf8(out).unwrap());
    let mut out = Vec::new();
    render(&report, &Selector::default(), Format::Json, &mut out).unwrap();
    assert_golden("stat.json", &String::from_utf8(out).unwrap());
}

#[test]
fn l7_figures_from_a_waypoint_take_over_success_and_fill_latency() {
    let before = vec![Some(waypoint(0, 0))];
    let after = vec![Some(waypoint(95, 5))];
    let acc = fold_scrapes(&before, &after);
    let sel = Selector::parse(Some("demo-b/server")).unwrap();
    let rows = rows(&acc, None, &sel, 10.0);
    assert_eq!(rows.len(), 1);
    let r = &rows[0];
    assert_eq!(r.rps, Some(10.0));
    assert_eq!(r.success, Some(0.95));
    assert_eq!(r.meshed_pods, None);
    let p50 = r.latency_p50_ms.unwrap();
    assert!((2.4..2.6).contains(&p50), "{p50}");
    // 99 of 100 requests are in the 5 ms bucket: p99 is its upper bound.
    assert_eq!(r.latency_p99_ms, Some(5.0));
    let t = table(&rows, false).render();
    assert!(
        t.contains("demo-b/server -      95.00%  10.0rps 2.5ms"),
        "{t}"
    );
}

#[test]
fn counter_reset_and_new_series_count_from_zero() {
    let before = vec![Some(scrape(50, 40, 3, 9000))];
    let after = vec![Some(scrape(2, 1, 0, 10))];
    let acc = fold_scrapes(&before, &after);
    let f = &acc[&(
        "destination".to_string(),
        "demo-b".to_string(),
        "server".to_string(),
    )];
    assert_eq!(
        f.opened, 2.0,
        "a restarted counter counts its whole value, an unchanged one nothing"
    );
}

#[test]
fn quantiles_follow_histogram_quantile() {
    let b = [(1.0, 10.0), (10.0, 20.0), (f64::INFINITY, 20.0)];
    assert_eq!(quantile(0.5, &b), Some(1.0));
    assert_eq!(quantile(0.75, &b), Some(5.5));
    assert_eq!(quantile(0.5, &[(f64::INFINITY, 0.0)]), None);
    assert_eq!(
        quantile(0.99, &[(5.0, 1.0), (f64::INFINITY, 10.0)]),
        Some(5.0)
    );
}

#[test]
fn selectors() {
    assert_eq!(Selector::parse(None).unwrap(), Selector::default());
    let s = Selector::parse(Some("ns")).unwrap();
    assert_eq!((s.namespace.as_deref(), s.workload), (Some("ns"), None));
    assert!(Selector::parse(Some("ns/")).is_err());
    assert!(Selector::parse(Some("a/b/c")).is_err());
    let rows = rows(
        &ByReporter::new(),
        Some(&fixture_workloads()),
        &Selector::parse(Some("demo-a")).unwrap(),
        1.0,
    );
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].name, "demo-a/client");
    let mut out = Vec::new();
    let sel = Selector::parse(Some("nope")).unwrap();
    render(
        &StatReport {
            source: "scrape",
            window_seconds: 1.0,
            rows: vec![],
        },
        &sel,
        Format::Table,
        &mut out,
    )
    .unwrap();
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "No traffic and no known workloads in namespace nope.\n"
    );
}

#[test]
fn prometheus_queries_and_answers_feed_the_same_figures() {
    let qs = prometheus_queries("60s");
    assert_eq!(qs.len(), 8);
    for (q, _) in &qs {
        assert!(!query_metric(q).is_empty(), "{q}");
    }
    assert!(qs[0].0.starts_with("sum by (reporter, destination_workload_namespace, destination_workload, connection_security_policy) (increase(istio_tcp_connections_opened_total[60s]))"));
    assert_eq!(query_metric(&qs[5].0), TCP_CLOSED);
    let body = br#"{"status":"success","data":{"resultType":"vector","result":[
        {"metric":{"reporter":"destination","destination_workload":"server","destination_workload_namespace":"demo-b","connection_security_policy":"mutual_tls"},"value":[1,"6"]}]}}"#;
    let mut acc = ByReporter::new();
    for mut s in prom::parse_vector(body).unwrap() {
        s.name = query_metric(&qs[0].0).to_string();
        observe(&mut acc, &s, qs[0].1);
    }
    let rows = rows(&acc, None, &Selector::default(), 60.0);
    assert_eq!(rows[0].connections_per_second, Some(0.1));
    assert_eq!(rows[0].mtls, Some(1.0));
}

#[test]
fn local_sources_are_every_ztunnel_and_waypoint() {
    let e = Endpoint::in_netns;
    let c = local::Components {
        istiod: e("ambrs-c", "10.243.0.1:15014"),
        istiod_log: None,
        ztunnels: ["node-1", "node-2"]
            .into_iter()
            .map(|node| local::NodeAgent {
                node: node.into(),
                admin: e(&format!("ambrs-c.{node}"), "127.0.0.1:15000"),
                readiness: e(&format!("ambrs-c.{node}"), "127.0.0.1:15021"),
                stats: e(&format!("ambrs-c.{node}"), "127.0.0.1:15020"),
                log: None,
            })
            .collect(),
        waypoints: vec![(
            "demo/waypoint".into(),
            e("ambrs-c.demo.waypoint", "127.0.0.1:15020"),
        )],
    };
    let cluster = crate::cli::LocalCluster {
        name: "c".into(),
        dir: "/run/ambient-rs/local/c".into(),
    };
    let s = Sources::of_local(&cluster, &c);
    let shown = |v: &[Endpoint]| v.iter().map(ToString::to_string).collect::<Vec<_>>();
    assert_eq!(
        shown(&s.scrape),
        [
            "127.0.0.1:15020 in netns ambrs-c.node-1",
            "127.0.0.1:15020 in netns ambrs-c.node-2",
            "127.0.0.1:15020 in netns ambrs-c.demo.waypoint"
        ]
    );
    assert_eq!(
        shown(&s.admins),
        [
            "127.0.0.1:15000 in netns ambrs-c.node-1",
            "127.0.0.1:15000 in netns ambrs-c.node-2"
        ]
    );
    assert!(
        s.hint.contains("meshctl local status --name c"),
        "{}",
        s.hint
    );
}

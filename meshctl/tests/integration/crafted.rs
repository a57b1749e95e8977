//! meshctl against crafted answers: an expired certificate, Prometheus, usage errors.

use crate::support::*;

const EXPIRED_DUMP: &str = include_str!("../../testdata/config_dump_expired.json");

/// Serves an istiod-lite and a ztunnel whose dump has an expired certificate.
fn expired_agent() -> FakeServer {
    FakeServer::start(|path| match path {
        "/ready" | "/healthz/ready" => (200, "ready\n".into()),
        "/debug/connections" => (200, r#"[{"node_name": "node1"}]"#.into()),
        "/config_dump" => (200, EXPIRED_DUMP.into()),
        _ => (404, "not found\n".into()),
    })
}

#[test]
fn check_reports_an_expired_certificate() {
    let fake = expired_agent();
    let addr = fake.addr();
    let zt = format!("{addr},{addr}");
    let r = meshctl(
        &["check", "--post", "--istiod", &addr, "--ztunnel", &zt],
        &[],
    );
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stdout.contains("✓ istiod-lite is ready"), "{r:?}");
    assert!(
        r.stdout
            .contains("✓ connected to istiod-lite as node node1"),
        "{r:?}"
    );
    assert!(
        r.stdout.contains(
            "✗ spiffe://cluster.local/ns/demo-a/sa/client Leaf certificate (serial 0badce11) expired at 2020-12-02T00:00:00Z"
        ),
        "{r:?}"
    );
    assert!(
        r.stdout
            .contains("✗ spiffe://cluster.local/ns/demo-a/sa/client Root certificate"),
        "{r:?}"
    );
    assert!(r.stdout.ends_with("Status check results are ✗\n"), "{r:?}");

    // The same as JSON, with the addresses from the environment.
    let r = meshctl(
        &["check", "--post", "-o", "json"],
        &[("MESHCTL_ISTIOD", &addr), ("MESHCTL_ZTUNNELS", &zt)],
    );
    assert_eq!(r.code, 1, "{r:?}");
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["success"], false);
    assert_eq!(v["summary"]["failed"], 2, "{r:?}");
}

#[test]
fn not_ready_agent_and_a_non_dump_answer_fail_the_check() {
    let fake = FakeServer::start(|path| match path {
        "/ready" => (200, "ready\n".into()),
        "/debug/connections" => (200, "[]".into()),
        "/healthz/ready" => (503, "not ready: workload certificates\n".into()),
        _ => (200, "<html>not a dump</html>".into()),
    });
    let addr = fake.addr();
    let r = meshctl(
        &[
            "check",
            "--post",
            "--istiod",
            &addr,
            "--ztunnel",
            &format!("{addr},{addr}"),
        ],
        &[],
    );
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stdout.contains("‼ no xDS client is connected"), "{r:?}");
    assert!(r.stdout.contains("✗ agent is not ready"), "{r:?}");
    assert!(
        r.stdout.contains("not ready: workload certificates"),
        "{r:?}"
    );
    assert!(r.stdout.contains("✗ certificates not checked"), "{r:?}");
    let r = meshctl(&["ztunnel-config", "workloads", "--admin", &addr], &[]);
    assert_eq!(r.code, 3, "{r:?}");
    assert!(r.stderr.contains("not a config dump"), "{r:?}");
}

#[test]
fn stat_from_prometheus() {
    let prom = FakeServer::start(|path| {
        let hit = path.starts_with("/prom/api/v1/query?query=")
            && path.contains("istio_tcp_connections_opened_total%5B60s%5D");
        let result = if hit {
            r#"[{"metric":{"reporter":"destination","destination_workload":"server","destination_workload_namespace":"demo-b","connection_security_policy":"mutual_tls"},"value":[1,"30"]}]"#
        } else {
            "[]"
        };
        (
            200,
            format!(r#"{{"status":"success","data":{{"resultType":"vector","result":{result}}}}}"#),
        )
    });
    // A ztunnel nobody runs: MESHED stays "-" and nothing fails.
    let nobody = format!("{},{}", free_addr(), free_addr());
    let url = format!("http://{}/prom", prom.addr());
    let r = meshctl(
        &[
            "stat",
            "demo-b",
            "--prometheus",
            &url,
            "--window",
            "1m",
            "--ztunnel",
            &nobody,
            "-o",
            "wide",
        ],
        &[],
    );
    assert_eq!(r.code, 0, "{r:?}");
    let line = r
        .stdout
        .lines()
        .find(|l| l.starts_with("demo-b/server"))
        .unwrap_or_else(|| panic!("{r:?}"));
    let cells: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(cells[1], "-", "MESHED: {r:?}");
    assert_eq!(cells[8], "100%", "MTLS: {r:?}");
    assert_eq!(cells[9], "0.5", "CONN/S: {r:?}");
}

#[test]
fn usage_errors_exit_2_and_unreachable_exit_3() {
    for args in [
        &["ztunnel-config", "nope"][..],
        &["check", "--ztunnel", "not-an-address"],
        &["stat", "a/b/c"],
        &["stat", "--prometheus", "127.0.0.1:9090"],
        &["check", "--pre", "--post"],
    ] {
        let r = meshctl(args, &[]);
        assert_eq!(r.code, 2, "{args:?}: {r:?}");
        assert!(!r.stderr.is_empty(), "{args:?}: {r:?}");
    }
    let r = meshctl(&["--help"], &[]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout.contains("ztunnel-config") && r.stdout.contains("Exit codes"),
        "{r:?}"
    );

    let dead = free_addr();
    let r = meshctl(&["stat", "--scrape", &dead, "--interval", "10ms"], &[]);
    assert_eq!(r.code, 3, "{r:?}");
    assert!(
        r.stderr
            .contains(&format!("cannot reach metrics endpoint at {dead}")),
        "{r:?}"
    );
}

//! Golden files for every meshctl table and JSON/YAML shape, from a running mesh: istiod-lite
//! and two ztunnels on loopback (explicit mode, no root), the example pods, an
//! AuthorizationPolicy, an HTTPRoute, a waypoint Gateway, and real traffic through SOCKS5.
//!
//! Each output is normalised (`tests/e2e/src/golden.rs`: ports, times, serials, durations,
//! rates become placeholders; columns, headers, names, identities, statuses and counts stay)
//! and compared with `testdata/golden/live/<name>`. `UPDATE_GOLDEN=1` rewrites the files.
//! Every mismatch is collected and reported at the end, each with a line diff.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::golden::{
    under_traffic, ztunnel_config_outputs, Collector, JsonLines, Kind, Normalizer, STAT_OUTPUTS,
    WAYPOINT_OUTPUTS,
};
use crate::mesh::{Mesh, MeshOptions};
use crate::support::*;

const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 1, 1);
const SERVER_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 1, 2);
/// Service demo-b/server (examples/local/server.yaml): 127.0.2.1:80 -> 8080.
const VIP: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(127, 0, 2, 1), 80);
/// A second port of the server pod, for the tap's warm-up traffic (told apart by port).
const WARMUP: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(127, 0, 1, 2), 9090);

const AUTHZ: &str = "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: server-callers, namespace: demo-b}
spec:
  selector: {matchLabels: {app: server}}
  action: ALLOW
  rules:
  - from:
    - source: {principals: [\"cluster.local/ns/demo-a/sa/client\"]}
";

const ROUTE: &str = "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: server, namespace: demo-b}
spec:
  parentRefs: [{group: \"\", kind: Service, name: server, port: 80}]
  rules:
  - backendRefs: [{name: server, port: 80}]
";

/// The golden files of this layer.
fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata/golden/live")
}

/// Compares an output (exit code `code`; a run with another code fails with its stdout and
/// stderr).
fn compare(g: &mut Collector, name: &str, kind: Kind, r: &Run, code: i32) {
    if r.code != code {
        g.fail(format!("{name}: expected exit {code}, got {r:?}"));
        return;
    }
    g.output(name, kind, r.code, code, &r.stdout);
}

/// Polls `f` every 50 ms until it returns Some (readiness only observable by asking).
fn poll<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < READY_WITHIN,
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn every_meshctl_table_and_json_shape_matches_its_golden_file() {
    // The server pod's app listens on 127.0.1.2:8080 and the ztunnels on 127.0.1.x:15008, as
    // in the end-to-end tests: hold their lock.
    let _lock = LoopbackLock::acquire();
    let mut m = Mesh::start(MeshOptions {
        nodes: vec!["node1", "node2"],
        hbone_port: None,
        config: vec![
            ("authz.yaml", AUTHZ.into()),
            ("httproute.yaml", ROUTE.into()),
        ],
    });
    let _app = App::start(SERVER_IP, &[8080, WARMUP.port()]);
    let (z1, z2) = (m.ztunnel("node1"), m.ztunnel("node2"));
    let (e1, e2) = (z1.entry(), z2.entry());
    let (admin1, socks1) = (z1.admin.clone(), z1.socks.clone());
    let mut norm = Normalizer::new()
        .literal(m.dir.path().display().to_string(), "<TMP>")
        .literal(m.monitoring.clone(), "<ISTIOD>");
    for z in &m.ztunnels {
        norm = norm
            .literal(z.admin.clone(), format!("<{} ADMIN>", z.node))
            .literal(z.readiness.clone(), format!("<{} READINESS>", z.node))
            .literal(z.stats.clone(), format!("<{} STATS>", z.node))
            .literal(z.socks.clone(), format!("<{} SOCKS5>", z.node));
    }
    let mut g = Collector::new(golden_dir(), norm);

    // Config and certificates have reached both agents once a request goes through.
    poll("a request through the mesh", || {
        http_get_via(&socks1, CLIENT_IP, VIP).ok()
    });

    // ztunnel-config, every section in every format, with one connection held open.
    let held = socks_connect(&socks1, CLIENT_IP, VIP).unwrap();
    poll("node1's dump to list exactly the held connection", || {
        let r = meshctl(
            &[
                "ztunnel-config",
                "connections",
                "-o",
                "json",
                "--admin",
                &admin1,
            ],
            &[],
        );
        let v: Value = serde_json::from_str(&r.stdout).ok()?;
        (v.as_array()?.len() == 1).then_some(())
    });
    for (args, name, kind) in ztunnel_config_outputs() {
        let mut a = vec!["ztunnel-config"];
        a.extend(args);
        a.extend(["--admin", &admin1]);
        compare(&mut g, &name, kind, &meshctl(&a, &[]), 0);
    }
    drop(held);

    // describe: the capturing agent, identity, policy, route.
    let ask = [
        "--ztunnel",
        &e1,
        "--ztunnel",
        &e2,
        "--istiod",
        &m.monitoring,
    ];
    for (kind, name, ns) in [
        ("pod", "client", "demo-a"),
        ("pod", "server", "demo-b"),
        ("service", "server", "demo-b"),
    ] {
        let mut args = vec!["describe", kind, name, "-n", ns];
        args.extend(ask);
        compare(
            &mut g,
            &format!("describe_{kind}_{name}.txt"),
            Kind::Text,
            &meshctl(&args, &[]),
            0,
        );
    }

    // stat while traffic flows (the rates cover the window between two scrapes).
    for (extra, name, kind) in STAT_OUTPUTS {
        let mut args = vec![
            "stat",
            "--interval",
            "2s",
            "--ztunnel",
            &e1,
            "--ztunnel",
            &e2,
        ];
        args.extend(extra);
        let socks = socks1.clone();
        let request = move || http_get_via(&socks, CLIENT_IP, VIP).is_ok_and(|b| b == APP_REPLY);
        let r = under_traffic(request, || meshctl(&args, &[])).unwrap();
        compare(&mut g, name, kind, &r, 0);
    }

    // tap -o json: warm up (to port 9090) until both agents stream, then exactly two requests
    // to the service; their events are the golden.
    let tap = tap_events(&m, &e1, &e2, &socks1);
    g.output("tap.ndjson", Kind::Ndjson, 0, 0, &tap);

    // waypoint: a Gateway istiod-lite accepts; no waypoint process runs here, so it is not
    // programmed (status exits 1; the root tests cover a running one).
    let config_dir = m.config_dir().display().to_string();
    let wp = |args: &[&str]| {
        let mut a = vec![
            "waypoint",
            "-n",
            "demo-b",
            "--config-dir",
            &config_dir,
            "--istiod",
            &m.monitoring,
        ];
        a.extend(args);
        meshctl(&a, &[])
    };
    let r = wp(&["apply"]);
    assert_eq!(r.code, 0, "{r:?}");
    poll("istiod-lite to list the waypoint", || {
        let v: Value = serde_json::from_str(&wp(&["list", "-o", "json"]).stdout).ok()?;
        (!v.as_array()?.is_empty()).then_some(())
    });
    for (args, name, kind) in WAYPOINT_OUTPUTS {
        let code = if args[0] == "status" { 1 } else { 0 };
        compare(&mut g, name, kind, &wp(args), code);
    }

    // check: healthy, then with the control plane down (✗ and exit 1).
    let check = |format: &str| {
        meshctl(
            &[
                "check",
                "--post",
                "-o",
                format,
                "--istiod",
                &m.monitoring,
                "--ztunnel",
                &e1,
                "--ztunnel",
                &e2,
            ],
            &[],
        )
    };
    let (table, json) = (Kind::Text, Kind::Json);
    compare(&mut g, "check_healthy.txt", table, &check("table"), 0);
    compare(&mut g, "check_healthy.json", json, &check("json"), 0);
    m.istiod.kill();
    compare(&mut g, "check_istiod_down.txt", table, &check("table"), 1);
    compare(&mut g, "check_istiod_down.json", json, &check("json"), 1);

    if let Err(e) = g.finish() {
        panic!("{e}\n\nlogs:\n{}", m.logs());
    }
}

/// `meshctl tap demo-a/client -o json` on both agents: warm-up requests to the server's
/// second port until each agent has streamed an event (the tap is subscribed), then two
/// requests to the service. Returns the events of those two requests, as NDJSON.
fn tap_events(m: &Mesh, e1: &str, e2: &str, socks: &str) -> String {
    let tap = JsonLines::spawn(
        Command::new(env!("CARGO_BIN_EXE_meshctl"))
            .args([
                "tap",
                "demo-a/client",
                "-o",
                "json",
                "--ztunnel",
                e1,
                "--ztunnel",
                e2,
            ])
            .env_remove("MESHCTL_ZTUNNELS")
            .env_remove("MESHCTL_LOCAL")
            .stdin(Stdio::null())
            .stderr(Stdio::null()),
    )
    .expect("starting meshctl tap");
    let admins: Vec<String> = m.ztunnels.iter().map(|z| z.admin.clone()).collect();
    poll("the tap to stream from both ztunnels", || {
        let _ = http_get_via(socks, CLIENT_IP, WARMUP);
        admins
            .iter()
            .all(|a| {
                !tap.matching(|ev| ev["ztunnel"] == a.as_str())
                    .unwrap()
                    .is_empty()
            })
            .then_some(())
    });
    for _ in 0..2 {
        assert_eq!(http_get_via(socks, CLIENT_IP, VIP).unwrap(), APP_REPLY);
    }
    let warmup = |ev: &Value| {
        ["src", "dst"].iter().any(|side| {
            ev[side]["addr"]
                .as_str()
                .is_some_and(|a| a.ends_with(":9090"))
        })
    };
    // Two connections, each opened and closed, seen by both agents.
    let want = 8;
    let events = poll("the tap to show both requests", || {
        let ev = tap.matching(|e| !warmup(e)).unwrap();
        (ev.len() >= want).then_some(ev)
    });
    drop(tap);
    assert_eq!(events.len(), want, "{events:#?}");
    events.iter().map(|e| format!("{e}\n")).collect()
}

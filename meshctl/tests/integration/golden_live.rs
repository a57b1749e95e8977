//! Golden files for every meshctl table and JSON/YAML shape, from a running mesh: istiod-lite
//! and two ztunnels on loopback (explicit mode, no root), the example pods, an
//! AuthorizationPolicy, an HTTPRoute, a waypoint Gateway, and real traffic through SOCKS5.
//!
//! Each output is normalised (`tests/e2e/src/golden.rs`: ports, times, serials, durations,
//! rates become placeholders; columns, headers, names, identities, statuses and counts stay)
//! and compared with `testdata/golden/live/<name>`. `UPDATE_GOLDEN=1` rewrites the files.
//! Every mismatch is collected and reported at the end, each with a line diff.

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::golden::{Collector, Kind, Normalizer};
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

/// Compares a table or text output (exit code `code`; a run with another code fails with its
/// stdout and stderr).
fn text(g: &mut Collector, name: &str, r: &Run, code: i32) {
    compare(g, name, Kind::Text, r, code);
}

/// Compares a JSON output.
fn json(g: &mut Collector, name: &str, r: &Run, code: i32) {
    compare(g, name, Kind::Json, r, code);
}

fn compare(g: &mut Collector, name: &str, kind: Kind, r: &Run, code: i32) {
    if r.code != code {
        g.fail(format!("{name}: expected exit {code}, got {r:?}"));
        return;
    }
    g.output(name, kind, r.code, code, &r.stdout);
}

/// Runs `f` while a thread sends requests to the service through node1's ztunnel; fails if
/// any of them failed (that would change the SUCCESS column, not only the rates).
fn with_traffic<T>(socks: &str, f: impl FnOnce() -> T) -> T {
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let t = {
        let (stop, ok, failed, socks) =
            (stop.clone(), ok.clone(), failed.clone(), socks.to_string());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Acquire) {
                match http_get_via(&socks, CLIENT_IP, VIP) {
                    Ok(body) if body == APP_REPLY => ok.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        })
    };
    let out = f();
    stop.store(true, Ordering::Release);
    t.join().unwrap();
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "requests failed during the stat window"
    );
    assert!(
        ok.load(Ordering::Relaxed) > 0,
        "no request during the stat window"
    );
    out
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
    for section in [
        "workloads",
        "services",
        "policies",
        "certificates",
        "connections",
        "all",
    ] {
        for (format, ext) in [("table", "txt"), ("json", "json"), ("yaml", "yaml")] {
            let name = format!("ztunnel-config_{section}.{ext}");
            let r = meshctl(
                &["ztunnel-config", section, "-o", format, "--admin", &admin1],
                &[],
            );
            match format {
                "json" => json(&mut g, &name, &r, 0),
                _ => text(&mut g, &name, &r, 0),
            }
        }
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
        text(
            &mut g,
            &format!("describe_{kind}_{name}.txt"),
            &meshctl(&args, &[]),
            0,
        );
    }

    // stat while traffic flows (the rates cover the window between two scrapes).
    let stat = |extra: &[&str]| {
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
        with_traffic(&socks1, || meshctl(&args, &[]))
    };
    text(&mut g, "stat.txt", &stat(&[]), 0);
    text(&mut g, "stat_wide.txt", &stat(&["-o", "wide"]), 0);
    json(&mut g, "stat.json", &stat(&["-o", "json"]), 0);

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
    text(&mut g, "waypoint_list.txt", &wp(&["list"]), 0);
    text(&mut g, "waypoint_list_all.txt", &wp(&["list", "-A"]), 0);
    json(
        &mut g,
        "waypoint_list.json",
        &wp(&["list", "-o", "json"]),
        0,
    );
    text(&mut g, "waypoint_status.txt", &wp(&["status"]), 1);
    json(
        &mut g,
        "waypoint_status.json",
        &wp(&["status", "-o", "json"]),
        1,
    );

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
    text(&mut g, "check_healthy.txt", &check("table"), 0);
    json(&mut g, "check_healthy.json", &check("json"), 0);
    m.istiod.kill();
    text(&mut g, "check_istiod_down.txt", &check("table"), 1);
    json(&mut g, "check_istiod_down.json", &check("json"), 1);

    if let Err(e) = g.finish() {
        panic!("{e}\n\nlogs:\n{}", m.logs());
    }
}

/// `meshctl tap demo-a/client -o json` on both agents: warm-up requests to the server's
/// second port until each agent has streamed an event (the tap is subscribed), then two
/// requests to the service. Returns the events of those two requests, as NDJSON.
fn tap_events(m: &Mesh, e1: &str, e2: &str, socks: &str) -> String {
    let mut child = KillOnDrop(
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
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting meshctl tap"),
    );
    let lines = Arc::new(Mutex::new(Vec::<Value>::new()));
    {
        let lines = lines.clone();
        let out = child.0.stdout.take().expect("stdout");
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                let v: Value = serde_json::from_str(&l)
                    .unwrap_or_else(|e| panic!("tap printed a line that is not JSON ({e}): {l}"));
                lines.lock().unwrap().push(v);
            }
        });
    }
    let admins: Vec<String> = m.ztunnels.iter().map(|z| z.admin.clone()).collect();
    poll("the tap to stream from both ztunnels", || {
        let _ = http_get_via(socks, CLIENT_IP, WARMUP);
        let seen = lines.lock().unwrap();
        admins
            .iter()
            .all(|a| seen.iter().any(|ev| ev["ztunnel"] == a.as_str()))
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
        let seen = lines.lock().unwrap();
        let ev: Vec<Value> = seen.iter().filter(|e| !warmup(e)).cloned().collect();
        (ev.len() >= want).then_some(ev)
    });
    drop(child);
    assert_eq!(events.len(), want, "{events:#?}");
    events.iter().map(|e| format!("{e}\n")).collect()
}

/// A child killed (and reaped) on drop.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

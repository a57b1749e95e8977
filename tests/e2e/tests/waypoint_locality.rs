//! Locality-aware load balancing at the waypoint, end to end (root only): a 2-node
//! `meshctl local` cluster whose Node objects carry topology labels (zone-a, zone-b), the
//! namespace's waypoint in zone-a, one backend per zone, and curl in a captured client pod.
//!
//! What an Istio user is promised: with a DestinationRule that has outlier detection, every
//! request goes to the backend in the waypoint's own zone; when that backend fails (5xx) it
//! is ejected and traffic fails over to the other zone; after baseEjectionTime it is back and
//! takes the traffic again. The localities come from the Node labels, into both the workload
//! xDS (what ztunnels are sent) and the waypoint's routes.
//!
//! Without root this test skips with a printed reason; with CI=true it fails instead.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use mesh_e2e::local::{curl_in, get_in, poll, with_ambient_cluster, LocalCluster};
use serde_json::Value;

const VIP: &str = "10.96.0.20";
const ISTIOD_MONITORING: &str = "10.243.0.1:15014";

/// A backend that names itself and answers 503 while its flag file exists.
const BACKEND_PY: &str = r#"
import http.server, os, sys
pod, port, flag = sys.argv[1], int(sys.argv[2]), sys.argv[3]
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = ("pod=%s\n" % pod).encode()
        self.send_response(503 if os.path.exists(flag) else 200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("0.0.0.0", port), H).serve_forever()
"#;

/// Labels node `node` with a region and zone, the way docs/local-cluster.md tells users to:
/// by editing the Node object `meshctl local up` wrote (here: rewriting it with the labels).
fn set_node_locality(c: &LocalCluster, node: &str, region: &str, zone: &str) -> anyhow::Result<()> {
    let file = format!("node.{node}.yaml");
    let path = c.dir.join("config").join(&file);
    let text = std::fs::read_to_string(&path).with_context(|| format!("{}", path.display()))?;
    anyhow::ensure!(
        text.contains("kind: Node") && text.contains(&format!("name: {node}")),
        "meshctl local up did not write Node {node}: {text}"
    );
    c.write_config(&file,
        &format!(
            "apiVersion: v1\nkind: Node\nmetadata:\n  name: {node}\n  labels:\n    kubernetes.io/hostname: {node}\n    topology.kubernetes.io/region: {region}\n    topology.kubernetes.io/zone: {zone}\n"
        ),
    )
}

/// A backend pod `name` on `node` (label app=server), failing while `flag` exists.
fn backend(
    c: &LocalCluster,
    script: &Path,
    name: &str,
    node: &str,
    flag: &Path,
) -> anyhow::Result<()> {
    let script = script.to_string_lossy().into_owned();
    let flag = flag.to_string_lossy().into_owned();
    c.ok(&[
        "pod",
        "add",
        name,
        "-n",
        "demo",
        "--sa",
        "server",
        "--node",
        node,
        "--label",
        "app=server",
        "--",
        "python3",
        &script,
        name,
        "8080",
        &flag,
    ])?;
    Ok(())
}

/// One request from the client pod through the waypoint: (status, answering pod).
fn request(c: &LocalCluster) -> anyhow::Result<(u16, String)> {
    let out = curl_in(
        &c.pod_netns("demo", "client"),
        &["-w", "\n%{http_code}", &format!("http://{VIP}/")],
    )?;
    anyhow::ensure!(
        out.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').context("no status line")?;
    let pod = body
        .lines()
        .find_map(|l| l.strip_prefix("pod="))
        .unwrap_or("")
        .to_string();
    Ok((code.trim().parse()?, pod))
}

/// `count` requests in a row, every one answered 200 by `pod`.
fn answered_by(c: &LocalCluster, pod: &str, count: usize, when: &str) -> anyhow::Result<()> {
    for i in 0..count {
        let r = request(c)?;
        anyhow::ensure!(
            r == (200, pod.to_string()),
            "request {i} {when}: {r:?}, not (200, {pod})"
        );
    }
    Ok(())
}

/// The first JSON object anywhere in `v` with `"name": name` and a `locality`.
fn workload_locality<'a>(v: &'a Value, name: &str) -> Option<&'a Value> {
    match v {
        Value::Object(m) => {
            if m.get("name").and_then(Value::as_str) == Some(name) {
                if let Some(l) = m.get("locality") {
                    return Some(l);
                }
            }
            m.values().find_map(|x| workload_locality(x, name))
        }
        Value::Array(a) => a.iter().find_map(|x| workload_locality(x, name)),
        _ => None,
    }
}

/// Waits until node-1's ztunnel was last sent workload `pod` with locality us-east/`zone`.
fn pushed_locality(c: &LocalCluster, pod: &str, zone: &str) -> anyhow::Result<()> {
    let l = poll(
        &format!("{pod}'s locality in the workload xDS sent to node-1"),
        Duration::from_secs(20),
        || {
            let text = get_in(
                &format!("ambrs-{}", c.name),
                &format!("http://{ISTIOD_MONITORING}/debug/config_dump?proxyID=node-1"),
            )?;
            let v: Value = serde_json::from_str(&text)?;
            Ok(workload_locality(&v, pod).cloned())
        },
    )?;
    anyhow::ensure!(
        l["region"] == "us-east" && l["zone"] == zone,
        "{pod}'s locality in workload xDS: {l}"
    );
    Ok(())
}

#[test]
fn waypoint_prefers_its_zone_and_fails_over_while_the_local_backend_is_ejected() {
    with_ambient_cluster(2, |c| {
        // The namespace's waypoint; wherever it lands is zone-a.
        c.apply_namespace_waypoint("demo")?;
        let wp_node = c.pod_status("demo", "waypoint")?["node"]
            .as_str()
            .context("waypoint pod's node in status")?
            .to_string();
        let other = if wp_node == "node-1" {
            "node-2"
        } else {
            "node-1"
        };
        set_node_locality(c, &wp_node, "us-east", "zone-a")?;
        set_node_locality(c, other, "us-east", "zone-b")?;

        let script = c.dir.join("backend.py");
        std::fs::write(&script, BACKEND_PY)?;
        let fail_a = c.dir.join("fail-be-a");
        // Each backend's workload, as ztunnels are sent it, carries its node's locality. The
        // debug dump holds the last response only, so each is checked right after its pod
        // starts (and before the next change is pushed).
        backend(c, &script, "be-a", &wp_node, &fail_a)?;
        pushed_locality(c, "be-a", "zone-a")?;
        backend(c, &script, "be-b", other, &c.dir.join("fail-be-b"))?;
        pushed_locality(c, "be-b", "zone-b")?;
        c.ok(&[
            "pod", "add", "client", "-n", "demo", "--sa", "client", "--node", other,
        ])?;
        c.write_config("locality.yaml",
            &format!(
                r#"apiVersion: v1
kind: Service
metadata: {{name: server, namespace: demo}}
spec:
  selector: {{app: server}}
  clusterIP: {VIP}
  ports: [{{name: http, port: 80, targetPort: 8080}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: server, namespace: demo}}
spec:
  host: server
  trafficPolicy:
    outlierDetection: {{consecutive5xxErrors: 2, interval: 1s, baseEjectionTime: 5s, maxEjectionPercent: 50}}
"#
            ),
        )?;

        // The waypoint found its own locality in the pushed routes.
        poll(
            "the waypoint knowing it runs in zone-a",
            Duration::from_secs(20),
            || {
                let text = get_in(
                    &c.pod_netns("demo", "waypoint"),
                    "http://127.0.0.1:15000/config_dump",
                )?;
                let v: Value = serde_json::from_str(&text)?;
                let ok = v["services"].as_array().is_some_and(|s| {
                    s.iter().any(|s| {
                        s["hostname"] == "server.demo.svc.cluster.local"
                            && s["locality"] == "us-east/zone-a/"
                    })
                });
                Ok(ok.then_some(()))
            },
        )?;

        // Everything lands in zone-a: once the routes with localities are in, 40 requests in
        // a row are answered by be-a.
        poll(
            "10 requests in a row answered by be-a",
            Duration::from_secs(30),
            || {
                for _ in 0..10 {
                    if request(c)? != (200, "be-a".to_string()) {
                        return Ok(None);
                    }
                }
                Ok(Some(()))
            },
        )?;
        answered_by(c, "be-a", 40, "in zone-a")?;

        // be-a fails: after its consecutive 5xx it is ejected and zone-b takes the traffic.
        std::fs::write(&fail_a, "")?;
        let mut failures = 0;
        let ejected = poll(
            "traffic failing over to be-b",
            Duration::from_secs(20),
            || match request(c)? {
                (200, p) if p == "be-b" => Ok(Some(Instant::now())),
                (503, p) if p == "be-a" => {
                    failures += 1;
                    Ok(None)
                }
                other => anyhow::bail!("unexpected answer {other:?}"),
            },
        )?;
        println!("failover: {failures} failed requests before be-a was ejected");
        anyhow::ensure!(
            failures <= 2,
            "{failures} failed requests before be-a was ejected (consecutive5xxErrors: 2)"
        );
        answered_by(c, "be-b", 20, "after the ejection")?;
        anyhow::ensure!(
            ejected.elapsed() < Duration::from_secs(5),
            "the checks outlasted baseEjectionTime; the failover was not measured"
        );

        // be-a recovers: after baseEjectionTime it is readmitted and zone-a is preferred again.
        std::fs::remove_file(&fail_a)?;
        poll(
            "be-a taking the traffic back after baseEjectionTime",
            Duration::from_secs(20),
            || Ok((request(c)? == (200, "be-a".to_string())).then_some(())),
        )?;
        let back_after = ejected.elapsed();
        println!("be-a back {back_after:?} after the failover (baseEjectionTime 5s)");
        anyhow::ensure!(
            back_after >= Duration::from_secs(4),
            "be-a came back after {back_after:?}, before baseEjectionTime"
        );
        answered_by(c, "be-a", 20, "after readmission")?;
        Ok(())
    });
}

//! Golden files for meshctl's output from a `meshctl local` cluster (root only): two nodes,
//! in-pod ztunnels, pods `server` (node-2), `client` and `warm` (node-1) in the ambient
//! namespace `demo`, Service `server`, an AuthorizationPolicy, an HTTPRoute and a namespace
//! waypoint, with real traffic from the pods.
//!
//! Covered, every command aimed at the cluster with `--local` (one `check` through
//! `MESHCTL_LOCAL` instead): `ztunnel-config` (every section, table/json/yaml, all nodes merged,
//! and one node), `describe pod|service`, `waypoint list|status`, `tap -o json`, `stat`
//! (table/wide/json: every ztunnel and the waypoint scraped, with the waypoint's L7 figures)
//! and `check` (istiod-lite and every node's ztunnel: healthy, then with istiod-lite killed: ✗
//! and exit 1). Outputs are normalised by `mesh_e2e::golden` and compared with
//! `tests/e2e/golden/<name>`; `UPDATE_GOLDEN=1` rewrites them.
//!
//! Without root these tests skip with a printed reason; with CI=true they fail instead.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context;
use mesh_e2e::golden::{
    under_traffic, ztunnel_config_outputs, Collector, JsonLines, Kind, Normalizer, STAT_OUTPUTS,
    WAYPOINT_OUTPUTS,
};
use mesh_e2e::local::{get_in, poll, with_ambient_cluster, LocalCluster};
use serde_json::Value;

const VIP: &str = "10.96.0.10";

const SERVICE: &str = "apiVersion: v1
kind: Service
metadata: {name: server, namespace: demo}
spec:
  selector: {app: server}
  clusterIP: 10.96.0.10
  ports: [{name: http, port: 80, targetPort: 8080}]
";

/// L4 policy on the server: callers from namespace demo (the clients and the waypoint).
const AUTHZ: &str = "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: server-callers, namespace: demo}
spec:
  selector: {matchLabels: {app: server}}
  action: ALLOW
  rules:
  - from:
    - source: {namespaces: [demo]}
";

const ROUTE: &str = "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: server, namespace: demo}
spec:
  parentRefs: [{group: \"\", kind: Service, name: server, port: 80}]
  rules:
  - backendRefs: [{name: server, port: 80}]
";

#[test]
fn meshctl_output_from_a_local_cluster_matches_the_golden_files() {
    with_ambient_cluster(2, run);
}

fn run(c: &LocalCluster) -> anyhow::Result<()> {
    // Pods in a fixed order, so host-local hands out the same IPs every run.
    let server_ip = c.add_pod("demo", "server", "node-2", &["app=server"], true)?;
    c.add_pod("demo", "client", "node-1", &[], false)?;
    c.add_pod("demo", "warm", "node-1", &[], false)?;
    c.write_config("service.demo.server.yaml", SERVICE)?;
    c.write_config("authz.demo.yaml", AUTHZ)?;
    c.write_config("httproute.demo.server.yaml", ROUTE)?;
    c.apply_namespace_waypoint("demo")?;

    let norm = Normalizer::new()
        .literal(c.dir.display().to_string(), "<STATE_DIR>")
        .literal(c.name.clone(), "<CLUSTER>");
    let mut g = Collector::new(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("golden"),
        norm,
    );

    // Both clients have talked to the server pod directly (pod IPs bypass a waypoint that is
    // for services), so every agent holds its pods' certificates.
    let direct = format!("http://{server_ip}:8080/");
    for p in ["client", "warm"] {
        c.curl_eventually("demo", p, &direct)?;
    }
    poll(
        "every agent to know every pod, policy and certificate",
        Duration::from_secs(30),
        || {
            let v = ztunnel_config_json(c, "all")?;
            let n = |k: &str| v[k].as_array().map_or(0, Vec::len);
            let certs_ok = v["certificates"]
                .as_array()
                .is_some_and(|a| a.iter().all(|c| c["state"] == "Available"));
            Ok(
                (n("workloads") == 4 && n("policies") == 1 && n("certificates") == 3 && certs_ok)
                    .then_some(()),
            )
        },
    )?;

    // ztunnel-config --local, every section in every format, while the client holds one
    // connection to the server pod (seen outbound on node-1, inbound on node-2).
    let held = Held::connect(c, "client", &server_ip, 8080)?;
    poll(
        "exactly the held connection in the agents",
        Duration::from_secs(20),
        || {
            let v = ztunnel_config_json(c, "connections")?;
            Ok((v.as_array().map_or(0, Vec::len) == 2).then_some(()))
        },
    )?;
    for (args, name, kind) in ztunnel_config_outputs() {
        let mut a = vec!["ztunnel-config"];
        a.extend(args);
        let (code, out) = c.cli_exit(&a)?;
        g.output(&name, kind, code, 0, &out);
    }
    // One node's agent: its own dump, workloads on that node only.
    let (code, out) = c.cli_exit(&["ztunnel-config", "all", "--node", "node-2"])?;
    g.output("ztunnel-config_all_node-2.txt", Kind::Text, code, 0, &out);
    drop(held);

    // describe: capture, identity, waypoint, policy, route.
    for (kind, name) in [
        ("pod", "client"),
        ("pod", "server"),
        ("pod", "waypoint"),
        ("service", "server"),
    ] {
        let (code, out) = c.cli_exit(&["describe", kind, name, "-n", "demo"])?;
        g.output(
            &format!("describe_{kind}_{name}.txt"),
            Kind::Text,
            code,
            0,
            &out,
        );
    }

    // waypoint list and status: programmed (its pod runs).
    for (args, name, kind) in WAYPOINT_OUTPUTS {
        let mut a = vec!["waypoint", "-n", "demo"];
        a.extend(args);
        let (code, out) = c.cli_exit(&a)?;
        g.output(name, kind, code, 0, &out);
    }

    // tap -o json through the waypoint.
    let events = tap_events(c)?;
    g.output("tap.ndjson", Kind::Ndjson, 0, 0, &events);

    // stat --local: every ztunnel and the waypoint scraped, every ztunnel's dump for MESHED,
    // while the client sends requests through the waypoint.
    for (extra, name, kind) in STAT_OUTPUTS {
        let mut args = vec!["stat", "demo", "--interval", "2s"];
        args.extend(extra);
        let client = c.pod_netns("demo", "client");
        let request = move || get_in(&client, &format!("http://{VIP}/stat")).is_ok();
        let (code, out) =
            under_traffic(request, || c.cli_exit(&args)).map_err(anyhow::Error::msg)??;
        g.output(name, kind, code, 0, &out);
    }

    // check --local: istiod-lite and every node's ztunnel, healthy, then the control plane
    // killed. The JSON runs name the cluster through MESHCTL_LOCAL instead of the flag.
    let check = |format: &str| -> anyhow::Result<(i32, String)> {
        let args = ["check", "--post", "-o", format];
        if format == "json" {
            c.cli_exit_from_env(&args)
        } else {
            c.cli_exit(&args)
        }
    };
    let (code, out) = check("table")?;
    g.output("check_healthy.txt", Kind::Text, code, 0, &out);
    let (code, out) = check("json")?;
    g.output("check_healthy.json", Kind::Json, code, 0, &out);
    let pid = c.status()?["istiod"]["pid"]
        .as_u64()
        .context("istiod-lite's pid in status")?;
    let killed = Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()?;
    anyhow::ensure!(killed.success(), "kill -9 {pid} (istiod-lite)");
    poll("istiod-lite to be gone", Duration::from_secs(10), || {
        // Gone, or a zombie its parent has not reaped yet (its sockets are closed either way).
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.chars().next());
        Ok(matches!(state, None | Some('Z' | 'X')).then_some(()))
    })?;
    let (code, out) = check("table")?;
    g.output("check_istiod_down.txt", Kind::Text, code, 1, &out);
    let (code, out) = check("json")?;
    g.output("check_istiod_down.json", Kind::Json, code, 1, &out);

    g.finish().map_err(anyhow::Error::msg)
}

/// `ztunnel-config <section> -o json --local ...`, parsed.
fn ztunnel_config_json(c: &LocalCluster, section: &str) -> anyhow::Result<Value> {
    let out = c.cli(&["ztunnel-config", section, "-o", "json"])?;
    Ok(serde_json::from_str(&out)?)
}

/// A TCP connection held open from a pod (python3 inside its namespace) until dropped.
struct Held(Child);

impl Held {
    fn connect(c: &LocalCluster, from: &str, ip: &str, port: u16) -> anyhow::Result<Held> {
        let script = format!(
            "import socket, sys\ns = socket.create_connection(('{ip}', {port}), timeout=5)\nprint('connected', flush=True)\nsys.stdin.read()\n"
        );
        let mut child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", c.pod_netns("demo", from)))
            .args(["--", "python3", "-c", &script])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().context("stdout")?).read_line(&mut line)?;
        let held = Held(child);
        anyhow::ensure!(line.trim() == "connected", "holder said {line:?}");
        Ok(held)
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        // Closing stdin ends the script (and its connection) normally.
        if let Some(mut i) = self.0.stdin.take() {
            let _ = i.flush();
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `meshctl tap demo --local -o json`: warm-up requests from pod `warm` until node-1's ztunnel
/// and the waypoint both stream (the tap is subscribed), then two requests from `client`.
/// Returns the client's events (two connections opened and closed on node-1, two requests at
/// the waypoint) as NDJSON; everything else in the namespace (the warm-up, the waypoint's own
/// pooled connections to the server) is left out.
fn tap_events(c: &LocalCluster) -> anyhow::Result<String> {
    let tap = JsonLines::spawn(
        c.cli_command(&["tap", "demo", "-o", "json"])
            .stdin(Stdio::null())
            .stderr(Stdio::null()),
    )?;
    let seen = |keep: &dyn Fn(&Value) -> bool| tap.matching(keep).map_err(anyhow::Error::msg);
    poll(
        "the tap to stream from node-1's ztunnel and the waypoint",
        Duration::from_secs(20),
        || {
            let _ = c.curl("demo", "warm", &format!("http://{VIP}/warmup"));
            let from = |src: &str| -> anyhow::Result<bool> {
                Ok(!seen(&|e: &Value| e["ztunnel"] == src)?.is_empty())
            };
            Ok((from("ztunnel node-1")? && from("waypoint demo/waypoint")?).then_some(()))
        },
    )?;
    for _ in 0..2 {
        c.curl("demo", "client", &format!("http://{VIP}/golden"))?;
    }
    let from_client = |e: &Value| e["src"]["workload"] == "client";
    let want = 6;
    let events = poll(
        "the tap to show the client's requests",
        Duration::from_secs(20),
        || {
            let ev = seen(&from_client)?;
            Ok((ev.len() >= want).then_some(ev))
        },
    )?;
    drop(tap);
    anyhow::ensure!(events.len() == want, "{events:#?}");
    Ok(events.iter().map(|e| format!("{e}\n")).collect())
}

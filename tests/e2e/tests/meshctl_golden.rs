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
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use mesh_e2e::golden::{Collector, Kind, Normalizer};
use mesh_e2e::local::{poll, prerequisites, repo_root, LocalCluster, CNI_DIR};
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
    if !prerequisites() {
        return;
    }
    let c = LocalCluster::new().expect("cluster");
    if let Err(e) = run(&c) {
        c.print_logs();
        panic!("{e:#}");
    }
}

fn run(c: &LocalCluster) -> anyhow::Result<()> {
    c.ok(&["up", "--nodes", "2", "--cni-dir", CNI_DIR])?;
    c.ok(&[
        "namespace",
        "demo",
        "--label",
        "istio.io/dataplane-mode=ambient",
    ])?;
    // Pods in a fixed order, so host-local hands out the same IPs every run.
    let server_ip = pod(c, "server", "node-2", &["app=server"], true)?;
    pod(c, "client", "node-1", &[], false)?;
    pod(c, "warm", "node-1", &[], false)?;
    write_config(c, "service.demo.server.yaml", SERVICE)?;
    write_config(c, "authz.demo.yaml", AUTHZ)?;
    write_config(c, "httproute.demo.server.yaml", ROUTE)?;
    let out = c.cli(&[
        "waypoint",
        "-n",
        "demo",
        "apply",
        "--enroll-namespace",
        "--wait",
    ])?;
    anyhow::ensure!(out.contains("is ready"), "{out}");

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
        curl_eventually(c, p, &direct)?;
    }
    poll(
        "every agent to know every pod, policy and certificate",
        Duration::from_secs(30),
        || {
            let v: Value =
                serde_json::from_str(&c.cli(&["ztunnel-config", "all", "-o", "json"])?)?;
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
            let v: Value =
                serde_json::from_str(&c.cli(&["ztunnel-config", "connections", "-o", "json"])?)?;
            Ok((v.as_array().map_or(0, Vec::len) == 2).then_some(()))
        },
    )?;
    for section in [
        "workloads",
        "services",
        "policies",
        "certificates",
        "connections",
        "all",
    ] {
        for (format, ext, kind) in [
            ("table", "txt", Kind::Text),
            ("json", "json", Kind::Json),
            ("yaml", "yaml", Kind::Text),
        ] {
            let (code, out) = cli(c, &["ztunnel-config", section, "-o", format])?;
            g.output(
                &format!("ztunnel-config_{section}.{ext}"),
                kind,
                code,
                0,
                &out,
            );
        }
    }
    // One node's agent: its own dump, workloads on that node only.
    let (code, out) = cli(c, &["ztunnel-config", "all", "--node", "node-2"])?;
    g.output("ztunnel-config_all_node-2.txt", Kind::Text, code, 0, &out);
    drop(held);

    // describe: capture, identity, waypoint, policy, route.
    for (kind, name) in [
        ("pod", "client"),
        ("pod", "server"),
        ("pod", "waypoint"),
        ("service", "server"),
    ] {
        let (code, out) = cli(c, &["describe", kind, name, "-n", "demo"])?;
        g.output(
            &format!("describe_{kind}_{name}.txt"),
            Kind::Text,
            code,
            0,
            &out,
        );
    }

    // waypoint list and status: programmed (its pod runs).
    for (name, args, kind) in [
        ("waypoint_list.txt", vec!["list"], Kind::Text),
        ("waypoint_list_all.txt", vec!["list", "-A"], Kind::Text),
        ("waypoint_list.json", vec!["list", "-o", "json"], Kind::Json),
        ("waypoint_status.txt", vec!["status"], Kind::Text),
        (
            "waypoint_status.json",
            vec!["status", "-o", "json"],
            Kind::Json,
        ),
    ] {
        let mut a = vec!["waypoint", "-n", "demo"];
        a.extend(args);
        let (code, out) = cli(c, &a)?;
        g.output(name, kind, code, 0, &out);
    }

    // tap -o json through the waypoint.
    let events = tap_events(c)?;
    g.output("tap.ndjson", Kind::Ndjson, 0, 0, &events);

    // stat --local: every ztunnel and the waypoint scraped, every ztunnel's dump for MESHED,
    // while the client sends requests through the waypoint.
    for (name, extra, kind) in [
        ("stat.txt", vec![], Kind::Text),
        ("stat_wide.txt", vec!["-o", "wide"], Kind::Text),
        ("stat.json", vec!["-o", "json"], Kind::Json),
    ] {
        let mut args = vec!["stat", "demo", "--interval", "2s"];
        args.extend(extra);
        let (code, out) = with_traffic(c, || cli(c, &args))??;
        g.output(name, kind, code, 0, &out);
    }

    // check --local: istiod-lite and every node's ztunnel, healthy, then the control plane
    // killed. The JSON runs name the cluster through MESHCTL_LOCAL instead of the flag.
    let check = |format: &str| -> anyhow::Result<(i32, String)> {
        let args = ["check", "--post", "-o", format];
        if format == "json" {
            check_from_env(c, &args)
        } else {
            cli(c, &args)
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

/// `meshctl <args> --local ...`: exit code and stdout.
fn cli(c: &LocalCluster, args: &[&str]) -> anyhow::Result<(i32, String)> {
    let out = c.cli_command(args).output()?;
    if !out.status.success() {
        eprintln!(
            "$ meshctl {} -> {}\n{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    ))
}

/// `meshctl <args> --state-dir D` with `MESHCTL_LOCAL=N` in its environment rather than
/// `--local N`: exit code and stdout.
fn check_from_env(c: &LocalCluster, args: &[&str]) -> anyhow::Result<(i32, String)> {
    let out = Command::new(mesh_e2e::bins::bin("meshctl")?)
        .args(args)
        .arg("--state-dir")
        .arg(&c.dir)
        .env("MESHCTL_LOCAL", &c.name)
        .env("NO_COLOR", "1")
        .env_remove("MESHCTL_ZTUNNELS")
        .env_remove("MESHCTL_ISTIOD")
        .output()?;
    if !out.status.success() {
        eprintln!(
            "$ MESHCTL_LOCAL=.. meshctl {} -> {}\n{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    ))
}

/// Adds pod `name` in `demo` (optionally running server.py on 8080); its IP.
fn pod(
    c: &LocalCluster,
    name: &str,
    node: &str,
    labels: &[&str],
    server: bool,
) -> anyhow::Result<String> {
    let mut args = vec![
        "pod", "add", name, "-n", "demo", "--sa", name, "--node", node,
    ];
    for l in labels {
        args.extend(["--label", l]);
    }
    let server_py = repo_root().join("examples/apps/server.py");
    let server_py = server_py.to_string_lossy().into_owned();
    if server {
        args.extend([
            "--", "python3", &server_py, "--pod", name, "--bind", "0.0.0.0", "--port", "8080",
        ]);
    }
    let ip = c.ok(&args)?.trim().to_string();
    anyhow::ensure!(
        ip.parse::<std::net::Ipv4Addr>().is_ok(),
        "pod add printed {ip:?}"
    );
    Ok(ip)
}

fn write_config(c: &LocalCluster, file: &str, yaml: &str) -> anyhow::Result<()> {
    let dir = c.dir.join("config");
    let tmp = dir.join(format!(".{file}.tmp"));
    std::fs::write(&tmp, yaml)?;
    std::fs::rename(&tmp, dir.join(file))?;
    Ok(())
}

/// `curl` from pod `demo/<name>`; the body on success.
fn curl(c: &LocalCluster, name: &str, url: &str) -> anyhow::Result<String> {
    let out = LocalCluster::in_netns(
        &c.pod_netns("demo", name),
        &["curl", "-fsS", "--max-time", "3", url],
    )?;
    anyhow::ensure!(
        out.status.success(),
        "curl {url} from demo/{name}: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn curl_eventually(c: &LocalCluster, name: &str, url: &str) -> anyhow::Result<String> {
    poll(
        &format!("demo/{name} reaching {url}"),
        Duration::from_secs(20),
        || Ok(curl(c, name, url).ok()),
    )
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

/// Runs `f` while the client sends requests to the service (through the waypoint) in a loop;
/// fails if any request failed (SUCCESS would not be 100%).
fn with_traffic<T>(c: &LocalCluster, f: impl FnOnce() -> T) -> anyhow::Result<T> {
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let netns = c.pod_netns("demo", "client");
    let t = {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        std::thread::spawn(move || {
            let url = format!("http://{VIP}/stat");
            while !stop.load(Ordering::Acquire) {
                let r = LocalCluster::in_netns(&netns, &["curl", "-fsS", "--max-time", "3", &url]);
                match r {
                    Ok(o) if o.status.success() => ok.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        })
    };
    let out = f();
    stop.store(true, Ordering::Release);
    let _ = t.join();
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    anyhow::ensure!(
        failed == 0 && ok > 0,
        "requests during the window: {ok} ok, {failed} failed"
    );
    Ok(out)
}

/// `meshctl tap demo --local -o json`: warm-up requests from pod `warm` until node-1's ztunnel
/// and the waypoint both stream (the tap is subscribed), then two requests from `client`.
/// Returns the client's events (two connections opened and closed on node-1, two requests at
/// the waypoint) as NDJSON; everything else in the namespace (the warm-up, the waypoint's own
/// pooled connections to the server) is left out.
fn tap_events(c: &LocalCluster) -> anyhow::Result<String> {
    let mut child = Tap(c
        .cli_command(&["tap", "demo", "-o", "json"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?);
    let lines = Arc::new(Mutex::new(Vec::<Value>::new()));
    {
        let lines = lines.clone();
        let out = child.0.stdout.take().context("tap stdout")?;
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<Value>(&l) {
                    lines.lock().unwrap_or_else(|e| e.into_inner()).push(v);
                } else {
                    eprintln!("tap printed a line that is not JSON: {l}");
                }
            }
        });
    }
    let seen = |pred: &dyn Fn(&Value) -> bool| {
        lines
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|e| pred(e))
            .cloned()
            .collect::<Vec<Value>>()
    };
    poll(
        "the tap to stream from node-1's ztunnel and the waypoint",
        Duration::from_secs(20),
        || {
            let _ = curl(c, "warm", &format!("http://{VIP}/warmup"));
            let from = |src: &str| !seen(&|e: &Value| e["ztunnel"] == src).is_empty();
            Ok((from("ztunnel node-1") && from("waypoint demo/waypoint")).then_some(()))
        },
    )?;
    for _ in 0..2 {
        curl(c, "client", &format!("http://{VIP}/golden"))?;
    }
    let from_client = |e: &Value| e["src"]["workload"] == "client";
    let want = 6;
    let events = poll(
        "the tap to show the client's requests",
        Duration::from_secs(20),
        || {
            let ev = seen(&from_client);
            Ok((ev.len() >= want).then_some(ev))
        },
    )?;
    drop(child);
    anyhow::ensure!(events.len() == want, "{events:#?}");
    Ok(events.iter().map(|e| format!("{e}\n")).collect())
}

/// The tap process, killed on drop.
struct Tap(Child);

impl Drop for Tap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

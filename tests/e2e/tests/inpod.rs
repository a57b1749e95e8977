//! Transparent capture end to end (root only): `meshctl local` clusters whose pods are wired by
//! Debian's CNI plugins chained with ambient-cni, one in-pod ztunnel per node, and unmodified
//! clients (curl, python3) inside the pods. What an ambient user is promised:
//!
//! - a pod in an ambient namespace reaches a service by VIP, pod IP and DNS name, over mTLS,
//!   and the server sees the client pod's own IP;
//! - no plaintext byte of the payload crosses the pod bridge (a raw-socket capture on every port
//!   of the node's bridge sees the marker for pods outside the mesh, never for meshed ones);
//! - `istio.io/dataplane-mode=none` opts a pod out; a namespace label flip releases and
//!   re-enrolls running pods;
//! - PeerAuthentication STRICT refuses plaintext from a pod outside the mesh, PERMISSIVE accepts it;
//! - AuthorizationPolicy is enforced on captured traffic;
//! - a ztunnel killed and restarted keeps its pods captured and serves them right after ready.
//!
//! Without root these tests skip with a printed reason; with CI=true they fail instead.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use mesh_e2e::local::{curl_in, get_in, poll, repo_root, with_ambient_cluster, LocalCluster};
use serde_json::Value;

const VIP: &str = "10.96.0.10";

/// The Service `server.demo` (VIP 10.96.0.10:80 -> 8080) selecting `app=server`.
fn write_service(c: &LocalCluster) -> anyhow::Result<()> {
    let yaml = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: server, namespace: demo}}\nspec:\n  selector: {{app: server}}\n  clusterIP: {VIP}\n  ports: [{{name: http, port: 80, targetPort: 8080}}]\n"
    );
    c.write_config("service.demo.server.yaml", &yaml)
}

/// Polls until `curl` from the pod fails (the mesh refuses it); returns the error.
fn curl_refused_eventually(
    c: &LocalCluster,
    ns: &str,
    name: &str,
    url: &str,
) -> anyhow::Result<String> {
    poll(
        &format!("{ns}/{name} refused at {url}"),
        Duration::from_secs(20),
        || Ok(c.curl(ns, name, url).err().map(|e| e.to_string())),
    )
}

/// The in-pod nat rules of a pod: true when our ISTIO_OUTPUT chain is installed.
fn captured(c: &LocalCluster, ns: &str, name: &str) -> anyhow::Result<bool> {
    let out = LocalCluster::in_netns(&c.pod_netns(ns, name), &["iptables-save", "-t", "nat"])?;
    anyhow::ensure!(out.status.success(), "iptables-save failed");
    Ok(String::from_utf8_lossy(&out.stdout).contains("-j REDIRECT --to-ports 15001"))
}

/// ztunnel's metrics on `node`.
fn metrics(c: &LocalCluster, node: &str) -> anyhow::Result<String> {
    get_in(&c.node_netns(node), "http://127.0.0.1:15020/metrics")
}

/// ztunnel's `/config_dump` on `node`.
fn config_dump(c: &LocalCluster, node: &str) -> anyhow::Result<Value> {
    Ok(serde_json::from_str(&get_in(
        &c.node_netns(node),
        "http://127.0.0.1:15000/config_dump",
    )?)?)
}

/// The metrics of the waypoint pod `demo/waypoint`.
fn waypoint_metrics(c: &LocalCluster) -> anyhow::Result<String> {
    get_in(
        &c.pod_netns("demo", "waypoint"),
        "http://127.0.0.1:15020/stats/prometheus",
    )
}

/// Sum of `istio_tcp_connections_opened_total` series containing every one of `parts`.
fn opened(metrics: &str, parts: &[&str]) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("istio_tcp_connections_opened_total{"))
        .filter(|l| parts.iter().all(|p| l.contains(p)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn captured_pods_reach_a_service_by_vip_pod_ip_and_dns_name_over_mtls() {
    with_ambient_cluster(2, |c| {
        let server_ip = c.add_pod("demo", "server", "node-2", &["app=server"], true)?;
        let client_ip = c.add_pod("demo", "client", "node-1", &[], false)?;
        write_service(c)?;
        anyhow::ensure!(captured(c, "demo", "client")? && captured(c, "demo", "server")?);
        let caller = format!("you called from {client_ip}:");
        for url in [
            format!("http://{VIP}/"),
            format!("http://{server_ip}:8080/"),
            // Resolved by ztunnel's DNS proxy in the pod (UDP 53 redirected to 15053).
            "http://server.demo/".to_string(),
            "http://server.demo.svc.cluster.local/".to_string(),
        ] {
            let body = c.curl_eventually("demo", "client", &url)?;
            anyhow::ensure!(
                body.contains("hello from pod server") && body.contains(&caller),
                "{url}: the server must see the client pod's own IP: {body}"
            );
        }
        // Both ends counted the connections as mutual TLS between the two identities.
        let principal = "source_principal=\"spiffe://cluster.local/ns/demo/sa/client\"";
        let dst = "destination_principal=\"spiffe://cluster.local/ns/demo/sa/server\"";
        let mtls = "connection_security_policy=\"mutual_tls\"";
        let src = opened(
            &metrics(c, "node-1")?,
            &["reporter=\"source\"", principal, dst, mtls],
        );
        let dest = opened(
            &metrics(c, "node-2")?,
            &["reporter=\"destination\"", principal, dst, mtls],
        );
        anyhow::ensure!(
            src >= 4.0 && dest >= 4.0,
            "mTLS connections: source {src}, destination {dest}"
        );
        // `meshctl tap` shows the client's connections live, with both identities.
        let tap = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", c.node_netns("node-1")))
            .arg("--")
            .arg(mesh_e2e::bins::bin("meshctl")?)
            .args([
                "tap",
                "demo/client",
                "--ztunnel",
                "127.0.0.1:15000",
                "--limit",
                "2",
                "-o",
                "json",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let mut tap = KillOnDrop(tap);
        let exited = poll(
            "meshctl tap to see two events",
            Duration::from_secs(20),
            || {
                c.curl("demo", "client", &format!("http://{VIP}/"))?;
                Ok(tap.0.try_wait()?.map(|_| ()))
            },
        );
        let out = tap.finish()?;
        exited?;
        let events: Vec<Value> = String::from_utf8_lossy(&out)
            .lines()
            .map(serde_json::from_str)
            .collect::<Result<_, _>>()
            .context("tap -o json prints one JSON object per line")?;
        anyhow::ensure!(events.len() == 2, "{events:?}");
        for ev in &events {
            anyhow::ensure!(
                ev["src"]["workload"] == "client"
                    && ev["src"]["identity"] == "spiffe://cluster.local/ns/demo/sa/client"
                    && ev["dst"]["identity"] == "spiffe://cluster.local/ns/demo/sa/server"
                    && ev["security"] == "mutual_tls"
                    && ev["direction"] == "outbound",
                "{ev}"
            );
        }

        // Each node agent enrolled exactly its own pod.
        for (node, pod) in [("node-1", "client"), ("node-2", "server")] {
            let dump = config_dump(c, node)?;
            let pods = dump["inpodPods"].as_array().context("inpodPods")?;
            anyhow::ensure!(
                pods.len() == 1 && pods[0]["name"] == pod && pods[0]["enrolled"] == true,
                "{node}: {pods:?}"
            );
        }
        Ok(())
    });
}

/// A child killed on drop (a test that fails half-way must not leave it running).
struct KillOnDrop(std::process::Child);

impl KillOnDrop {
    /// Ends the child if it still runs and returns everything it printed.
    fn finish(&mut self) -> anyhow::Result<Vec<u8>> {
        use std::io::Read;
        let _ = self.0.kill();
        let _ = self.0.wait();
        let mut buf = Vec::new();
        if let Some(mut o) = self.0.stdout.take() {
            o.read_to_end(&mut buf)?;
        }
        Ok(buf)
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Captures on `iface` (or `all`) in `netns` until [`Sniffer::finish`].
struct Sniffer {
    child: std::process::Child,
}

impl Sniffer {
    fn start(netns: &str, iface: &str, marker: &str) -> anyhow::Result<Sniffer> {
        let script = repo_root().join("tests/e2e/scripts/sniff.py");
        let mut child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{netns}"))
            .args(["--", "python3"])
            .arg(script)
            .args(["--iface", iface, "--marker", marker])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().context("stdout")?).read_line(&mut line)?;
        anyhow::ensure!(line.trim() == "listening", "sniffer said {line:?}");
        Ok(Sniffer { child })
    }

    /// (frames, frames containing the marker).
    fn finish(mut self) -> anyhow::Result<(u64, u64)> {
        drop(self.child.stdin.take());
        let out = self.child.wait_with_output()?;
        let v: Value = serde_json::from_slice(&out.stdout).context("sniffer result")?;
        Ok((
            v["frames"].as_u64().unwrap_or_default(),
            v["marker_frames"].as_u64().unwrap_or_default(),
        ))
    }
}

#[test]
fn no_plaintext_payload_crosses_the_pod_bridge_between_meshed_pods() {
    with_ambient_cluster(1, |c| {
        let server_ip = c.add_pod("demo", "server", "node-1", &["app=server"], true)?;
        c.add_pod("demo", "client", "node-1", &[], false)?;
        // The same pair outside the mesh, on the same bridge: proves the capture sees payloads.
        let plain_ip = c.add_pod("plain", "server", "node-1", &[], true)?;
        c.add_pod("plain", "client", "node-1", &[], false)?;
        c.curl_eventually("demo", "client", &format!("http://{server_ip}:8080/"))?;
        c.curl_eventually("plain", "client", &format!("http://{plain_ip}:8080/"))?;

        let marker = format!("MARKER-{:08x}", rand::random::<u32>());
        let header = format!("X-Marker: {marker}");
        let node = c.node_netns("node-1");
        // `count` requests carrying the marker from `ns`/client to its server.
        let send_marked = |ns: &str, server_ip: &str, count: usize| -> anyhow::Result<()> {
            let url = format!("http://{server_ip}:8080/");
            for _ in 0..count {
                let out = curl_in(&c.pod_netns(ns, "client"), &["-H", &header, &url])?;
                anyhow::ensure!(out.status.success(), "{ns} request failed");
            }
            Ok(())
        };
        let sniff = Sniffer::start(&node, "all", &marker)?;
        send_marked("demo", &server_ip, 5)?;
        let (frames, seen) = sniff.finish()?;
        anyhow::ensure!(frames > 0, "the capture saw no frames at all");
        anyhow::ensure!(
            seen == 0,
            "the marker crossed the bridge in clear text ({seen} frames of {frames})"
        );

        let sniff = Sniffer::start(&node, "all", &marker)?;
        send_marked("plain", &plain_ip, 1)?;
        let (_, seen_plain) = sniff.finish()?;
        anyhow::ensure!(
            seen_plain > 0,
            "control: the marker of a pod outside the mesh must be visible"
        );
        Ok(())
    });
}

#[test]
fn opt_out_label_and_namespace_label_flip_release_and_enroll_running_pods() {
    with_ambient_cluster(1, |c| {
        let server_ip = c.add_pod("demo", "server", "node-1", &["app=server"], true)?;
        let client_ip = c.add_pod("demo", "client", "node-1", &[], false)?;
        let optout_ip = c.add_pod(
            "demo",
            "optout",
            "node-1",
            &["istio.io/dataplane-mode=none"],
            false,
        )?;
        let url = format!("http://{server_ip}:8080/");
        anyhow::ensure!(captured(c, "demo", "client")?, "client must be captured");
        anyhow::ensure!(
            !captured(c, "demo", "optout")?,
            "a pod labelled none is not captured"
        );
        // The opted-out pod still reaches the meshed server (plaintext into its 15006,
        // PERMISSIVE), as itself.
        let body = c.curl_eventually("demo", "optout", &url)?;
        anyhow::ensure!(
            body.contains(&format!("you called from {optout_ip}:")),
            "{body}"
        );
        let log = c.dir.join("logs/ztunnel-node-1.log");
        let mtls_lines = || -> usize {
            std::fs::read_to_string(&log)
                .unwrap_or_default()
                .lines()
                .filter(|l| {
                    l.contains("connection complete")
                        && l.contains("spiffe://cluster.local/ns/demo/sa/client")
                        && l.contains("mutual_tls")
                })
                .count()
        };
        c.curl_eventually("demo", "client", &url)?;
        // The access-log line is written when ztunnel sees the connection close.
        poll(
            "the client's request logged as mTLS",
            Duration::from_secs(10),
            || Ok((mtls_lines() > 0).then_some(())),
        )?;

        // Label removed: the running pods are released and their rules removed by the agent.
        c.ok(&["namespace", "demo"])?;
        poll("client released", Duration::from_secs(20), || {
            Ok((!captured(c, "demo", "client")? && !captured(c, "demo", "server")?).then_some(()))
        })?;
        let body = c.curl_eventually("demo", "client", &url)?;
        anyhow::ensure!(
            body.contains(&format!("you called from {client_ip}:")),
            "{body}"
        );
        poll("every pod shown released", Duration::from_secs(10), || {
            let dump = config_dump(c, "node-1")?;
            let pods = dump["inpodPods"].as_array().context("inpodPods")?.clone();
            Ok(pods.iter().all(|p| p["enrolled"] == false).then_some(()))
        })?;

        // Label back: enrolled again, rules reinstalled, traffic tunnelled again.
        c.ok(&[
            "namespace",
            "demo",
            "--label",
            "istio.io/dataplane-mode=ambient",
        ])?;
        poll("client enrolled again", Duration::from_secs(20), || {
            Ok((captured(c, "demo", "client")? && captured(c, "demo", "server")?).then_some(()))
        })?;
        anyhow::ensure!(
            !captured(c, "demo", "optout")?,
            "the opted-out pod stays out"
        );
        let mtls_before = mtls_lines();
        c.curl_eventually("demo", "client", &url)?;
        poll(
            "a new mTLS connection after re-enrollment",
            Duration::from_secs(10),
            || Ok((mtls_lines() > mtls_before).then_some(())),
        )?;
        Ok(())
    });
}

#[test]
fn strict_peer_authentication_refuses_plaintext_from_a_pod_outside_the_mesh() {
    with_ambient_cluster(1, |c| {
        let server_ip = c.add_pod("demo", "server", "node-1", &["app=server"], true)?;
        c.add_pod("demo", "client", "node-1", &[], false)?;
        let stranger_ip = c.add_pod("outside", "stranger", "node-1", &[], false)?;
        let url = format!("http://{server_ip}:8080/");
        // PERMISSIVE (the default): plaintext from outside is accepted, meshed traffic too.
        let body = c.curl_eventually("outside", "stranger", &url)?;
        anyhow::ensure!(
            body.contains(&format!("you called from {stranger_ip}:")),
            "{body}"
        );
        c.curl_eventually("demo", "client", &url)?;

        c.write_config("peerauthentication.demo.yaml",
            "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: demo}\nspec:\n  mtls: {mode: STRICT}\n",
        )?;
        curl_refused_eventually(c, "outside", "stranger", &url)?;
        // mTLS from a meshed pod is still accepted under STRICT.
        c.curl("demo", "client", &url)?;
        let m = metrics(c, "node-1")?;
        anyhow::ensure!(
            m.lines()
                .any(|l| l.starts_with("istio_tcp_connections_failed_total{")
                    && l.contains("reporter=\"destination\"")
                    && l.contains("response_flags=\"DENY\"")),
            "the refusal must be counted with response_flags=DENY"
        );

        c.write_config("peerauthentication.demo.yaml",
            "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: demo}\nspec:\n  mtls: {mode: PERMISSIVE}\n",
        )?;
        c.curl_eventually("outside", "stranger", &url)?;
        Ok(())
    });
}

#[test]
fn authorization_policy_is_enforced_on_captured_traffic() {
    with_ambient_cluster(1, |c| {
        let server_ip = c.add_pod("demo", "server", "node-1", &["app=server"], true)?;
        c.add_pod("demo", "client", "node-1", &[], false)?;
        c.add_pod("demo", "other", "node-1", &[], false)?;
        let url = format!("http://{server_ip}:8080/");
        c.curl_eventually("demo", "client", &url)?;
        c.curl_eventually("demo", "other", &url)?;
        let policy = |principal: &str| {
            format!(
                "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: server-callers, namespace: demo}}\nspec:\n  selector: {{matchLabels: {{app: server}}}}\n  action: ALLOW\n  rules:\n  - from:\n    - source: {{principals: [\"cluster.local/ns/demo/sa/{principal}\"]}}\n"
            )
        };
        c.write_config("authz.demo.yaml", &policy("client"))?;
        curl_refused_eventually(c, "demo", "other", &url)?;
        c.curl("demo", "client", &url)?;
        // Changed: now only `other` may call.
        c.write_config("authz.demo.yaml", &policy("other"))?;
        curl_refused_eventually(c, "demo", "client", &url)?;
        c.curl("demo", "other", &url)?;
        Ok(())
    });
}

#[test]
fn ztunnel_killed_and_restarted_under_traffic_keeps_pods_captured() {
    with_ambient_cluster(2, |c| {
        let server_ip = c.add_pod("demo", "server", "node-2", &["app=server"], true)?;
        let client_ip = c.add_pod("demo", "client", "node-1", &[], false)?;
        let url = format!("http://{server_ip}:8080/");
        c.curl_eventually("demo", "client", &url)?;

        // Traffic keeps flowing from the client while the server's node agent crashes.
        let mut load = Command::new("nsenter")
            .arg(format!(
                "--net=/run/netns/{}",
                c.pod_netns("demo", "client")
            ))
            .args(["--", "python3"])
            .arg(repo_root().join("tests/e2e/scripts/load.py"))
            .arg(&url)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let mut first = String::new();
        let mut reader = BufReader::new(load.stdout.take().context("stdout")?);
        reader.read_line(&mut first)?;
        anyhow::ensure!(first.trim() == "started", "load generator said {first:?}");

        c.ok(&["restart-ztunnel", "node-2", "--kill"])?;
        let ready = Instant::now();
        // New connections succeed within 1 s of readiness.
        let body = poll(
            "a request right after the restart",
            Duration::from_secs(1),
            || Ok(c.curl("demo", "client", &url).ok()),
        )?;
        eprintln!("first request after ready took {:?}", ready.elapsed());
        anyhow::ensure!(
            body.contains(&format!("you called from {client_ip}:")),
            "{body}"
        );
        // Rules never left the pods, and the new agent re-adopted its pod.
        anyhow::ensure!(captured(c, "demo", "server")? && captured(c, "demo", "client")?);
        let dump = config_dump(c, "node-2")?;
        let pods = dump["inpodPods"].as_array().context("inpodPods")?;
        anyhow::ensure!(
            pods.len() == 1 && pods[0]["name"] == "server" && pods[0]["enrolled"] == true,
            "{pods:?}"
        );
        let log = std::fs::read_to_string(c.dir.join("logs/ztunnel-node-2.log"))?;
        anyhow::ensure!(
            log.contains("re-adopting pod from the previous run"),
            "no re-adoption in the log"
        );

        drop(load.stdin.take());
        let mut counts = String::new();
        reader.read_line(&mut counts)?;
        let _ = load.wait();
        let nums: Vec<u64> = counts
            .split_whitespace()
            .filter_map(|n| n.parse().ok())
            .collect();
        anyhow::ensure!(nums.len() == 2 && nums[0] > 0, "load generator: {counts:?}");
        eprintln!(
            "requests during the restart: {} ok, {} failed",
            nums[0], nums[1]
        );
        // Every request the server answered came from the client's own IP through the mesh:
        // the destination ztunnel counted only mTLS connections from the client.
        let m = metrics(c, "node-2")?;
        let plaintext = opened(
            &m,
            &[
                "reporter=\"destination\"",
                "connection_security_policy=\"unknown\"",
            ],
        );
        anyhow::ensure!(
            plaintext == 0.0,
            "{plaintext} plaintext connections reached the server pod"
        );
        Ok(())
    });
}

/// A waypoint running in its own pod of the local cluster, attached to namespace `demo` with
/// `istio.io/use-waypoint`: a captured client's request to the Service goes client ztunnel →
/// HBONE to the waypoint (authority = the VIP) → HTTPRoute → HBONE to the server pod.
#[test]
fn captured_traffic_to_a_service_goes_through_its_namespace_waypoint() {
    with_ambient_cluster(1, |c| {
        // A route with a redirect rule: only a waypoint can answer that one.
        c.write_config("httproute.demo.server.yaml",
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: server, namespace: demo}\nspec:\n  parentRefs: [{group: \"\", kind: Service, name: server, port: 80}]\n  rules:\n  - matches: [{path: {type: PathPrefix, value: /old}}]\n    filters: [{type: RequestRedirect, requestRedirect: {path: {type: ReplaceFullPath, replaceFullPath: /new}, statusCode: 301}}]\n  - backendRefs: [{name: server, port: 80}]\n",
        )?;
        // As istioctl: the Gateway, the waypoint pod (the tool's stand-in for the waypoint
        // controller), the namespace label, and a wait until it is programmed.
        c.apply_namespace_waypoint("demo")?;
        let list: Value =
            serde_json::from_str(&c.cli(&["waypoint", "-n", "demo", "list", "-o", "json"])?)?;
        anyhow::ensure!(
            list[0]["name"] == "waypoint" && list[0]["waypointFor"] == "service",
            "{list}"
        );
        let status = c.cli(&["waypoint", "-n", "demo", "status"])?;
        anyhow::ensure!(
            status
                .lines()
                .any(|l| l.contains("True") && l.contains("Programmed")),
            "{status}"
        );
        let wp_ip = c.pod_status("demo", "waypoint")?["ip"]
            .as_str()
            .context("waypoint pod IP in status")?
            .to_string();
        anyhow::ensure!(
            !captured(c, "demo", "waypoint")?,
            "the waypoint pod must not be captured"
        );
        c.add_pod("demo", "server", "node-1", &["app=server"], true)?;
        let client_ip = c.add_pod("demo", "client", "node-1", &[], false)?;
        write_service(c)?;

        // The redirect can only come from the waypoint's route.
        let out = poll("a 301 from the waypoint", Duration::from_secs(20), || {
            let out = curl_in(
                &c.pod_netns("demo", "client"),
                &[
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code} %{redirect_url}",
                    &format!("http://{VIP}/old"),
                ],
            )?;
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            Ok(text.starts_with("301").then_some(text))
        })?;
        anyhow::ensure!(out.contains("/new"), "Location of the redirect: {out}");
        // Other paths reach the server, from the waypoint's address (the waypoint made the
        // upstream connection, as in Istio).
        let body = c.curl_eventually("demo", "client", &format!("http://{VIP}/"))?;
        anyhow::ensure!(
            body.contains("hello from pod server")
                && body.contains(&format!("you called from {wp_ip}:")),
            "{body}"
        );
        // The waypoint counted the requests with the client's identity.
        let m = waypoint_metrics(c)?;
        anyhow::ensure!(
            m.lines().any(|l| l.starts_with("istio_requests_total{")
                && l.contains("reporter=\"waypoint\"")
                && l.contains("response_code=\"301\"")
                && l.contains("source_principal=\"spiffe://cluster.local/ns/demo/sa/client\"")),
            "istio_requests_total lacks the client's 301: {m}"
        );
        // `meshctl tap --local` streams both kinds of events: the client's connections from its
        // ztunnel and its requests from the waypoint.
        let tap = Command::new(mesh_e2e::bins::bin("meshctl")?)
            .args(["tap", "demo/client", "--local", &c.name, "--state-dir"])
            .arg(&c.dir)
            .args(["--limit", "12", "-o", "json"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let mut tap = KillOnDrop(tap);
        let tapped = poll(
            "meshctl tap to see 12 events",
            Duration::from_secs(20),
            || {
                let _ = c.curl("demo", "client", &format!("http://{VIP}/old"));
                Ok(tap.0.try_wait()?.map(|_| ()))
            },
        );
        let out = tap.finish()?;
        tapped?;
        let events: Vec<Value> = String::from_utf8_lossy(&out)
            .lines()
            .map(serde_json::from_str)
            .collect::<Result<_, _>>()?;
        anyhow::ensure!(
            events.iter().any(|e| e["event"] == "request"
                && e["method"] == "GET"
                && e["path"] == "/old"
                && e["status"] == 301
                && e["src"]["identity"] == "spiffe://cluster.local/ns/demo/sa/client"),
            "no waypoint request event in the tap: {events:?}"
        );
        anyhow::ensure!(
            events
                .iter()
                .any(|e| e["event"] == "close" && e["direction"] == "outbound"),
            "no ztunnel connection event in the tap: {events:?}"
        );

        // `meshctl describe` explains it: the service's waypoint and route, the pod's capture.
        let svc = c.cli(&["describe", "service", "server", "-n", "demo"])?;
        for want in [
            "server.demo.svc.cluster.local",
            VIP,
            "Waypoint:         waypoint",
            "HTTPRoute demo/server (2 rules)",
        ] {
            anyhow::ensure!(
                svc.contains(want),
                "describe service lacks {want:?}:\n{svc}"
            );
        }
        let pod_desc = c.cli(&["describe", "pod", "server", "-n", "demo"])?;
        for want in [
            "spiffe://cluster.local/ns/demo/sa/server",
            "Captured:         yes: in-pod, by the ztunnel of node-1",
            "waypoint (traffic to server.demo.svc.cluster.local)",
        ] {
            anyhow::ensure!(
                pod_desc.contains(want),
                "describe pod lacks {want:?}:\n{pod_desc}"
            );
        }
        let wp_desc = c.cli(&["describe", "pod", "waypoint", "-n", "demo"])?;
        anyhow::ensure!(wp_desc.contains("no: a waypoint"), "{wp_desc}");

        // The client's ztunnel sent it to the waypoint over mTLS.
        let zm = metrics(c, "node-1")?;
        let to_wp = opened(
            &zm,
            &[
                "reporter=\"source\"",
                "source_principal=\"spiffe://cluster.local/ns/demo/sa/client\"",
                "destination_principal=\"spiffe://cluster.local/ns/demo/sa/waypoint\"",
                "connection_security_policy=\"mutual_tls\"",
            ],
        );
        anyhow::ensure!(to_wp >= 2.0, "client -> waypoint mTLS connections: {to_wp}");

        // Deleted: the Gateway and its pod go, and the Service is served directly again
        // (server.py answers /old itself).
        c.cli(&["waypoint", "-n", "demo", "delete", "waypoint"])?;
        let body = poll(
            "/old served without the waypoint",
            Duration::from_secs(20),
            || {
                Ok(c.curl("demo", "client", &format!("http://{VIP}/old"))
                    .ok()
                    .filter(|b| b.contains("hello from pod server")))
            },
        )?;
        anyhow::ensure!(
            body.contains(&format!("you called from {client_ip}:")),
            "{body}"
        );
        Ok(())
    });
}

/// Runs the grpcio client in a pod; its JSON answer.
fn grpc_call(
    c: &LocalCluster,
    ns: &str,
    pod: &str,
    target: &str,
    method: &str,
    data: &str,
) -> anyhow::Result<Value> {
    let app = repo_root().join("tests/e2e/python/grpc_app.py");
    let app = app.to_string_lossy();
    let out = LocalCluster::in_netns(
        &c.pod_netns(ns, pod),
        &[
            "python3",
            &app,
            "call",
            "--target",
            target,
            "--method",
            method,
            "--data",
            data,
            "--timeout",
            "3",
        ],
    )?;
    anyhow::ensure!(
        out.status.success(),
        "grpc client: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// GRPCRoute through the namespace's waypoint with real grpcio clients and servers: routing by
/// service/method to two backends, unary and server-streaming calls, and a gRPC error status
/// carried back (trailers) and counted in `grpc_response_status`.
#[test]
fn grpcroute_routes_grpc_calls_by_method_through_the_waypoint() {
    if !mesh_e2e::netns::have("python3")
        || Command::new("python3")
            .args(["-c", "import grpc"])
            .status()
            .map(|s| !s.success())
            .unwrap_or(true)
    {
        mesh_e2e::skip("python grpcio is not installed (make prereqs installs it)");
        return;
    }
    with_ambient_cluster(1, |c| {
        let app = repo_root().join("tests/e2e/python/grpc_app.py");
        let app = app.to_string_lossy().into_owned();
        for (name, label) in [("grpc-a", "app=grpc-a"), ("grpc-b", "app=grpc-b")] {
            c.ok(&[
                "pod", "add", name, "-n", "demo", "--sa", name, "--node", "node-1", "--label",
                label, "--", "python3", &app, "serve", "--name", name, "--port", "9090",
            ])?;
        }
        c.add_pod("demo", "client", "node-1", &[], false)?;
        let svc = |name: &str, selector: &str, vip: &str| {
            format!("apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: demo}}\nspec:\n  selector: {{app: {selector}}}\n  clusterIP: {vip}\n  ports: [{{name: grpc, port: 9090, targetPort: 9090, appProtocol: grpc}}]\n")
        };
        c.write_config(
            "service.demo.grpc.yaml",
            &svc("grpc", "grpc-a", "10.96.0.20"),
        )?;
        c.write_config(
            "service.demo.grpc-a.yaml",
            &svc("grpc-a", "grpc-a", "10.96.0.21"),
        )?;
        c.write_config(
            "service.demo.grpc-b.yaml",
            &svc("grpc-b", "grpc-b", "10.96.0.22"),
        )?;
        c.write_config("grpcroute.demo.grpc.yaml",
            "apiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\nmetadata: {name: grpc, namespace: demo}\nspec:\n  parentRefs: [{group: \"\", kind: Service, name: grpc, port: 9090}]\n  rules:\n  - matches: [{method: {service: demo.Echo, method: Count}}]\n    backendRefs: [{name: grpc-b, port: 9090}]\n  - backendRefs: [{name: grpc-a, port: 9090}]\n",
        )?;
        c.apply_namespace_waypoint("demo")?;

        let target = "10.96.0.20:9090";
        // Unary: the default rule, backend grpc-a.
        let v = poll(
            "a unary call through the waypoint",
            Duration::from_secs(20),
            || {
                let v = grpc_call(c, "demo", "client", target, "Say", "hi")?;
                Ok((v["code"] == "OK").then_some(v))
            },
        )?;
        anyhow::ensure!(v["replies"] == serde_json::json!(["grpc-a:hi"]), "{v}");
        // Server streaming, routed by method to grpc-b; every message arrives.
        let v = grpc_call(c, "demo", "client", target, "Count", "5")?;
        anyhow::ensure!(
            v["code"] == "OK"
                && v["replies"]
                    == serde_json::json!([
                        "grpc-b:0", "grpc-b:1", "grpc-b:2", "grpc-b:3", "grpc-b:4"
                    ]),
            "{v}"
        );
        // A gRPC error travels back in the trailers.
        let v = grpc_call(c, "demo", "client", target, "Fail", "NOT_FOUND")?;
        anyhow::ensure!(
            v["code"] == "NOT_FOUND" && v["details"] == "grpc-a failed as asked",
            "{v}"
        );
        let m = waypoint_metrics(c)?;
        anyhow::ensure!(
            m.lines().any(|l| l.starts_with("istio_requests_total{")
                && l.contains("request_protocol=\"grpc\"")
                && l.contains("grpc_response_status=\"5\"")),
            "no grpc_response_status=\"5\" series: {m}"
        );
        Ok(())
    });
}

/// Through a waypoint, an HTTP/1.1 Upgrade (what WebSocket uses) switches to a byte stream
/// both ways, and a non-HTTP service port is relayed as plain TCP.
#[test]
fn waypoint_passes_upgrades_and_relays_non_http_ports() {
    with_ambient_cluster(1, |c| {
        let app = repo_root().join("tests/e2e/python/upgrade_echo.py");
        let app = app.to_string_lossy().into_owned();
        c.ok(&[
            "pod", "add", "echo", "-n", "demo", "--sa", "echo", "--node", "node-1", "--label",
            "app=echo", "--", "python3", &app, "serve", "--port", "7070", "--port", "7071",
        ])?;
        c.add_pod("demo", "client", "node-1", &[], false)?;
        c.write_config("service.demo.echo.yaml",
            "apiVersion: v1\nkind: Service\nmetadata: {name: echo, namespace: demo}\nspec:\n  selector: {app: echo}\n  clusterIP: 10.96.0.40\n  ports:\n  - {name: http-ws, port: 7070, targetPort: 7070}\n  - {name: tcp-echo, port: 7071, targetPort: 7071}\n",
        )?;
        c.apply_namespace_waypoint("demo")?;
        let run = |mode: &str, target: &str, data: &str| -> anyhow::Result<String> {
            let out = LocalCluster::in_netns(
                &c.pod_netns("demo", "client"),
                &["python3", &app, mode, "--target", target, "--data", data],
            )?;
            anyhow::ensure!(
                out.status.success(),
                "{mode} {target}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        };
        poll(
            "an upgraded stream echoed through the waypoint",
            Duration::from_secs(20),
            || {
                Ok(run("upgrade", "10.96.0.40:7070", "hello-upgrade")?
                    .eq("hello-upgrade")
                    .then_some(()))
            },
        )?;
        let echoed = run("raw", "10.96.0.40:7071", "hello-tcp")?;
        anyhow::ensure!(
            echoed == "hello-tcp",
            "raw TCP through the waypoint echoed {echoed:?}"
        );
        // Both went through the waypoint: ztunnel sent the client's connections to it.
        let zm = metrics(c, "node-1")?;
        let to_wp = opened(
            &zm,
            &[
                "reporter=\"source\"",
                "source_principal=\"spiffe://cluster.local/ns/demo/sa/client\"",
                "destination_principal=\"spiffe://cluster.local/ns/demo/sa/waypoint\"",
            ],
        );
        anyhow::ensure!(to_wp >= 2.0, "client -> waypoint connections: {to_wp}");
        Ok(())
    });
}

//! The waypoint end to end: istiod-lite pushes Gateway API routes to a real waypoint process;
//! a test client opens HBONE to the waypoint with a workload certificate and sends HTTP/1.1 and
//! HTTP/2 requests for service VIPs; the waypoint routes them over HBONE, with its own
//! identity, through node1's ztunnel inbound to small hyper backends on pod IPs.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_e2e::prom::Metrics;
use mesh_e2e::topology::Pod;
use mesh_e2e::waypoint::{self as wp, send, Answer, Mode};
use mesh_e2e::{eventually, http as mhttp, Mesh, MeshOptions, Topology};

const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 1, 20);
const V1_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 1, 21);
const V2_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 1, 22);
const FLAKY_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 1, 23);
const SLOW_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 1, 24);
const WAYPOINT_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 1, 30);
const ECHO_VIP: &str = "127.0.2.21:80";
const FLAKY_VIP: &str = "127.0.2.24:80";
const SLOW_VIP: &str = "127.0.2.25:80";
const WAYPOINT_ID: &str = "spiffe://cluster.local/ns/app/sa/waypoint";
const CLIENT_ID: &str = "spiffe://cluster.local/ns/client/sa/client";
const ECHO_ID: &str = "spiffe://cluster.local/ns/app/sa/echo";

fn topology() -> Topology {
    let pod = |name: &str, sa: &str, ip, labels: &[(&str, &str)]| {
        let mut p = Pod::new("app", name, sa, "node1", ip, "x");
        p.labels = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        p
    };
    let mut waypoint = pod(
        "waypoint-0",
        "waypoint",
        WAYPOINT_IP,
        &[("gateway.networking.k8s.io/gateway-name", "waypoint")],
    );
    // The waypoint runs on a node without a ztunnel: it terminates HBONE itself.
    waypoint.node = "wpnode".into();
    Topology {
        ambient_namespaces: vec!["app".into(), "client".into()],
        pods: vec![
            Pod::new("client", "client", "client", "node1", CLIENT_IP, "client"),
            pod(
                "echo-v1",
                "echo",
                V1_IP,
                &[("app", "echo"), ("version", "v1")],
            ),
            pod(
                "echo-v2",
                "echo",
                V2_IP,
                &[("app", "echo"), ("version", "v2")],
            ),
            pod("flaky", "echo", FLAKY_IP, &[("app", "flaky")]),
            pod("slow", "echo", SLOW_IP, &[("app", "slow")]),
            waypoint,
        ],
        services: vec![],
    }
}

fn service(name: &str, vip: &str, selector: &str) -> String {
    wp::service_yaml(name, vip, selector)
}

fn config() -> String {
    let mut y = String::from(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: app, labels: {istio.io/waypoint-for: service}}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
"#,
    );
    y += &service("echo", ECHO_VIP, "app: echo");
    y += &service("echo-v1", "127.0.2.22:80", "app: echo, version: v1");
    y += &service("echo-v2", "127.0.2.23:80", "app: echo, version: v2");
    y += &service("flaky", FLAKY_VIP, "app: flaky");
    y += &service("slow", SLOW_VIP, "app: slow");
    y += r#"---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: echo, namespace: app}
spec:
  parentRefs: [{group: "", kind: Service, name: echo, port: 80}]
  rules:
  - matches: [{path: {type: Exact, value: /exact}}]
    backendRefs: [{name: echo-v2, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /prefix}}]
    filters:
    - {type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x-route, value: prefix}], remove: [x-drop]}}
    - {type: ResponseHeaderModifier, responseHeaderModifier: {add: [{name: x-resp, value: "yes"}]}}
    backendRefs: [{name: echo-v1, port: 80}]
  - matches: [{path: {type: RegularExpression, value: "/regex/[0-9]+"}}]
    backendRefs: [{name: echo-v2, port: 80}]
  - matches: [{headers: [{name: x-canary, value: "true"}]}]
    backendRefs: [{name: echo-v2, port: 80}]
  - matches: [{queryParams: [{name: v, value: "2"}]}]
    backendRefs: [{name: echo-v2, port: 80}]
  - matches: [{method: POST}]
    backendRefs: [{name: echo-v2, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /v1}}]
    backendRefs: [{name: echo-v1, port: 80}]
  - matches: [{path: {type: Exact, value: /redirect}}]
    filters: [{type: RequestRedirect, requestRedirect: {hostname: example.com, statusCode: 301, path: {type: ReplaceFullPath, replaceFullPath: /new}}}]
  - matches: [{path: {type: PathPrefix, value: /rewrite}}]
    filters: [{type: URLRewrite, urlRewrite: {hostname: rewritten.example, path: {type: ReplacePrefixMatch, replacePrefixMatch: /rewritten}}}]
    backendRefs: [{name: echo-v1, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /split}}]
    backendRefs: [{name: echo-v1, port: 80, weight: 90}, {name: echo-v2, port: 80, weight: 10}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: flaky, namespace: app}
spec:
  parentRefs: [{group: "", kind: Service, name: flaky}]
  rules:
  - backendRefs: [{name: flaky, port: 80}]
    retry: {attempts: 8, codes: [503], backoff: 1ms}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: slow, namespace: app}
spec:
  parentRefs: [{group: "", kind: Service, name: slow}]
  rules:
  - backendRefs: [{name: slow, port: 80}]
    timeouts: {request: 300ms}
"#;
    y
}

async fn backend(ip: Ipv4Addr, name: &'static str, mode: Mode) -> anyhow::Result<wp::Backend> {
    wp::backend(ip, name, mode).await
}

async fn start_waypoint(mesh: &Mesh) -> anyhow::Result<wp::Waypoint> {
    wp::start_waypoint(mesh, WAYPOINT_IP, "app", "waypoint", &[]).await
}

async fn client(mesh: &Mesh) -> anyhow::Result<wp::Client> {
    wp::client(
        mesh,
        "node1",
        CLIENT_ID,
        CLIENT_IP,
        WAYPOINT_ID,
        WAYPOINT_IP,
    )
    .await
}

/// One routing-matrix case: method, URI, request headers, expected backend pod ("404": none).
type Case = (
    &'static str,
    &'static str,
    &'static [(&'static str, &'static str)],
    &'static str,
);

fn pod(a: &Answer) -> &str {
    a.pod()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waypoint_routes_http_over_hbone() {
    let opts = MeshOptions {
        nodes: Some(vec!["node1".into()]),
        ..Default::default()
    };
    let mesh = Mesh::start(topology(), opts).await;
    mesh.check(async {
        let _b = [
            backend(V1_IP, "v1", Mode::Echo).await?,
            backend(V2_IP, "v2", Mode::Echo).await?,
            backend(FLAKY_IP, "flaky", Mode::FailHalf).await?,
            backend(SLOW_IP, "slow", Mode::Sleep).await?,
        ];
        mesh.write_config("waypoint", &config())?;
        let wp = start_waypoint(&mesh).await?;
        let c = client(&mesh).await?;
        // Routes arrive with the config push; wait until the exact match routes.
        let mut s = eventually(
            "the waypoint routes /exact",
            Duration::from_secs(20),
            Duration::from_millis(100),
            || async {
                let mut s = c.http1(ECHO_VIP).await?;
                let a = send(&mut s, "GET", "/exact", &[]).await?;
                Ok((a.status == 200 && pod(&a) == "v2").then_some(s))
            },
        )
        .await?;

        // Routing matrix: (method, uri, headers) -> backend pod.
        let matrix: &[Case] = &[
            ("GET", "/exact", &[], "v2"),
            ("GET", "/exact/more", &[], "404"),
            ("GET", "/prefix", &[], "v1"),
            ("GET", "/prefix/a/b", &[], "v1"),
            ("GET", "/prefixx", &[], "404"),
            ("GET", "/regex/42", &[], "v2"),
            ("GET", "/regex/abc", &[], "404"),
            ("GET", "/any", &[("x-canary", "true")], "v2"),
            ("GET", "/any?a=1&v=2", &[], "v2"),
            ("POST", "/any", &[], "v2"),
            ("GET", "/any", &[], "404"),
            ("GET", "/v1/x", &[], "v1"),
            // Exact beats the header match; the longer prefix beats the method match.
            ("GET", "/exact", &[("x-canary", "false")], "v2"),
            ("POST", "/v1/x", &[], "v1"),
        ];
        for (method, uri, headers, want) in matrix {
            let a = send(&mut s, method, uri, headers).await?;
            let got = if a.status == 404 { "404" } else { pod(&a) };
            anyhow::ensure!(
                got == *want,
                "{method} {uri} {headers:?}: want {want}, got {got} ({})",
                a.status
            );
        }

        // Header modifiers, both ways.
        let a = send(
            &mut s,
            "GET",
            "/prefix/h",
            &[("x-drop", "1"), ("x-route", "client")],
        )
        .await?;
        anyhow::ensure!(
            a.body["headers"]["x-route"] == "prefix",
            "request header not set: {}",
            a.body
        );
        anyhow::ensure!(
            a.body["headers"].get("x-drop").is_none(),
            "x-drop not removed: {}",
            a.body
        );
        anyhow::ensure!(
            a.headers.get("x-resp").is_some_and(|v| v == "yes"),
            "response header not added"
        );

        // Redirect and rewrite.
        let a = send(&mut s, "GET", "/redirect?q=1", &[]).await?;
        anyhow::ensure!(a.status == 301, "redirect status {}", a.status);
        let loc = a
            .headers
            .get("location")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        anyhow::ensure!(loc == "http://example.com/new?q=1", "Location {loc}");
        let a = send(&mut s, "GET", "/rewrite/x", &[]).await?;
        anyhow::ensure!(
            a.body["path"] == "/rewritten/x" && a.body["host"] == "rewritten.example",
            "rewrite: {}",
            a.body
        );
        // The backend saw the waypoint: HBONE from the waypoint's pod IP, via ztunnel inbound.
        anyhow::ensure!(
            a.body["peer"] == WAYPOINT_IP.to_string(),
            "backend peer {}",
            a.body["peer"]
        );

        // HTTP/2 (h2c prior knowledge inside the tunnel) end to end.
        let (mut h2, conn) = hyper::client::conn::http2::handshake(
            TokioExecutor::new(),
            TokioIo::new(c.stream(ECHO_VIP).await?),
        )
        .await?;
        tokio::spawn(conn);
        let resp = h2
            .send_request(
                Request::builder()
                    .uri("http://echo.app.svc.cluster.local/exact")
                    .body(Full::new(Bytes::new()))?,
            )
            .await?;
        let body: serde_json::Value =
            serde_json::from_slice(&resp.into_body().collect().await?.to_bytes())?;
        anyhow::ensure!(
            body["pod"] == "v2" && body["version"] == "HTTP/2.0",
            "h2: {body}"
        );

        // 90/10 split over 2,000 requests: v2 gets 10% ± 4.5 standard deviations (13.4).
        let mut v2 = 0;
        for _ in 0..2000 {
            let a = send(&mut s, "GET", "/split", &[]).await?;
            anyhow::ensure!(a.status == 200, "split answered {}", a.status);
            if pod(&a) == "v2" {
                v2 += 1;
            }
        }
        println!("split: {v2}/2000 to v2");
        anyhow::ensure!(
            (140..=260).contains(&v2),
            "{v2} of 2000 went to v2; expected about 200"
        );

        // Retries turn a backend failing half the time into ≥ 99 % success.
        let mut f = c.http1(FLAKY_VIP).await?;
        let mut ok = 0;
        for _ in 0..300 {
            if send(&mut f, "GET", "/", &[]).await?.status == 200 {
                ok += 1;
            }
        }
        println!("flaky with retries: {ok}/300 succeeded");
        anyhow::ensure!(ok >= 297, "only {ok}/300 succeeded with retries");

        // The request timeout fires at its bound (300 ms; the backend takes 2 s).
        let mut t = c.http1(SLOW_VIP).await?;
        let started = Instant::now();
        let a = send(&mut t, "GET", "/", &[]).await?;
        let took = started.elapsed();
        anyhow::ensure!(a.status == 504, "timeout answered {}", a.status);
        anyhow::ensure!(
            took >= Duration::from_millis(290) && took < Duration::from_millis(1500),
            "timeout took {took:?}"
        );

        // An address the waypoint does not serve is refused at the CONNECT.
        let e = c
            .stream("127.0.2.99:80")
            .await
            .err()
            .context("unknown authority accepted")?;
        anyhow::ensure!(e.to_string().contains("503"), "unknown authority: {e}");

        // Metrics with Istio's labels.
        let m = Metrics::parse(&mhttp::get(wp.stats, "/stats/prometheus").await?.body);
        let ok_v2 = m.sum(
            "istio_requests_total",
            &[
                ("reporter", "waypoint"),
                ("source_principal", CLIENT_ID),
                ("destination_service", "echo-v2.app.svc.cluster.local"),
                ("destination_principal", ECHO_ID),
                ("destination_workload", "echo-v2"),
                ("response_code", "200"),
                ("request_protocol", "http"),
                ("connection_security_policy", "mutual_tls"),
            ],
        );
        anyhow::ensure!(ok_v2 >= 140.0, "istio_requests_total for echo-v2: {ok_v2}");
        let timeouts = m.sum(
            "istio_requests_total",
            &[("response_code", "504"), ("response_flags", "UT")],
        );
        anyhow::ensure!(timeouts >= 1.0, "no 504/UT sample");
        let not_found = m.sum(
            "istio_requests_total",
            &[("response_code", "404"), ("response_flags", "NR")],
        );
        anyhow::ensure!(not_found >= 4.0, "404/NR samples: {not_found}");
        anyhow::ensure!(
            !m.find(
                "istio_request_duration_milliseconds_bucket",
                &[("reporter", "waypoint")]
            )
            .is_empty(),
            "no duration histogram"
        );
        anyhow::ensure!(
            !m.find("istio_response_bytes_bucket", &[("reporter", "waypoint")])
                .is_empty(),
            "no response bytes histogram"
        );
        // And the backend's ztunnel saw the waypoint's identity over mTLS.
        mesh.ztunnel("node1")
            .wait_for_count(
                "istio_tcp_connections_opened_total",
                &[
                    ("reporter", "destination"),
                    ("source_principal", WAYPOINT_ID),
                ],
                1.0,
            )
            .await?;
        Ok(())
    })
    .await;
}

//! The waypoint end to end: istiod-lite pushes Gateway API routes to a real waypoint process;
//! a test client opens HBONE to the waypoint with a workload certificate and sends HTTP/1.1 and
//! HTTP/2 requests for service VIPs; the waypoint routes them over HBONE, with its own
//! identity, through node1's ztunnel inbound to small hyper backends on pod IPs.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_e2e::process::Process;
use mesh_e2e::prom::Metrics;
use mesh_e2e::topology::Pod;
use mesh_e2e::{bins, ca, eventually, http as mhttp, mesh, Mesh, MeshOptions, Topology};
use mesh_identity::spiffe::Identity;

const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 1, 20);
const V1_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 1, 21);
const V2_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 1, 22);
const FLAKY_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 1, 23);
const SLOW_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 1, 24);
const WAYPOINT_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 1, 30);
const ECHO_VIP: &str = "127.0.2.21:80";
const FLAKY_VIP: &str = "127.0.2.24:80";
const SLOW_VIP: &str = "127.0.2.25:80";
const APP_PORT: u16 = 8080;
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
    let ip = vip.split(':').next().unwrap_or_default();
    format!("---\napiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: app\n  labels: {{istio.io/use-waypoint: waypoint}}\nspec:\n  clusterIP: {ip}\n  selector: {{{selector}}}\n  ports: [{{name: http, port: 80, targetPort: {APP_PORT}}}]\n")
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

/// How a backend answers.
#[derive(Clone, Copy)]
enum Mode {
    Echo,
    FailHalf,
    Sleep,
}

/// A hyper backend (HTTP/1.1 and h2c) answering with JSON describing the request it saw.
async fn backend(
    ip: Ipv4Addr,
    name: &'static str,
    mode: Mode,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let l = tokio::net::TcpListener::bind((ip, APP_PORT))
        .await
        .with_context(|| format!("backend {name} cannot listen on {ip}:{APP_PORT}"))?;
    Ok(tokio::spawn(async move {
        while let Ok((s, peer)) = l.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    move |req: Request<hyper::body::Incoming>| async move {
                        let status = match mode {
                            Mode::FailHalf if rand::random::<bool>() => {
                                StatusCode::SERVICE_UNAVAILABLE
                            }
                            Mode::Sleep => {
                                tokio::time::sleep(Duration::from_secs(2)).await;
                                StatusCode::OK
                            }
                            _ => StatusCode::OK,
                        };
                        let headers: HashMap<String, String> = req
                            .headers()
                            .iter()
                            .map(|(k, v)| {
                                (k.to_string(), v.to_str().unwrap_or_default().to_string())
                            })
                            .collect();
                        let host = req
                            .uri()
                            .authority()
                            .map(|a| a.to_string())
                            .or_else(|| headers.get("host").cloned())
                            .unwrap_or_default();
                        let body = serde_json::json!({
                            "pod": name,
                            "method": req.method().as_str(),
                            "path": req.uri().path(),
                            "version": format!("{:?}", req.version()),
                            "host": host,
                            "headers": headers,
                            "peer": peer.ip().to_string(),
                        });
                        Ok::<_, Infallible>(
                            Response::builder()
                                .status(status)
                                .body(Full::new(Bytes::from(body.to_string())))
                                .unwrap_or_default(),
                        )
                    },
                );
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    }))
}

/// A test client holding HBONE to the waypoint, as a ztunnel would.
struct Client {
    pool: mesh_hbone::client::Pool,
    tls: Arc<rustls::ClientConfig>,
}

struct Answer {
    status: StatusCode,
    headers: http::HeaderMap,
    body: serde_json::Value,
}

impl Client {
    async fn stream(&self, vip: &str) -> anyhow::Result<mesh_hbone::H2Stream> {
        let key = mesh_hbone::client::PoolKey::new(
            CLIENT_ID,
            Some(IpAddr::V4(CLIENT_IP)),
            SocketAddr::new(WAYPOINT_IP.into(), 15008),
            vec![WAYPOINT_ID.to_string()],
        );
        let req = mesh_hbone::client::ConnectRequest {
            authority: vip.to_string(),
            headers: http::HeaderMap::new(),
        };
        Ok(self.pool.connect(key, self.tls.clone(), req).await?.0)
    }

    /// An HTTP/1.1 connection (keep-alive) to `vip` through the waypoint.
    async fn http1(
        &self,
        vip: &str,
    ) -> anyhow::Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>> {
        let (sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(self.stream(vip).await?)).await?;
        tokio::spawn(conn);
        Ok(sender)
    }
}

async fn send(
    s: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    method: &str,
    uri: &str,
    headers: &[(&str, &str)],
) -> anyhow::Result<Answer> {
    let mut b = Request::builder()
        .method(method)
        .uri(uri)
        .header("host", "echo.app.svc.cluster.local");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    s.ready().await?;
    let resp = s.send_request(b.body(Full::new(Bytes::new()))?).await?;
    let (parts, body) = resp.into_parts();
    let bytes = body.collect().await?.to_bytes();
    Ok(Answer {
        status: parts.status,
        headers: parts.headers,
        body: serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
    })
}

struct Waypoint {
    stats: SocketAddr,
    readiness: SocketAddr,
    _proc: Process,
}

async fn start_waypoint(mesh: &Mesh) -> anyhow::Result<Waypoint> {
    let out = Command::new(bins::bin("istiod-lite")?)
        .args(["waypoint-token", "--state-dir"])
        .arg(mesh.state_dir())
        .args(["--namespace", "app", "--gateway", "waypoint"])
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "waypoint-token: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = mesh.dir.join("tokens").join("waypoint");
    std::fs::write(&token, out.stdout)?;
    let stats = mesh::free_addr(WAYPOINT_IP)?;
    let readiness = mesh::free_addr(WAYPOINT_IP)?;
    let admin = mesh::free_addr(WAYPOINT_IP)?;
    let mut cmd = Command::new(bins::bin("waypoint")?);
    cmd.env(
        "XDS_ADDRESS",
        format!("http://{}", mesh.istiod.xds_plaintext),
    )
    .env_remove("CA_ADDRESS")
    .env("AUTH_TOKEN", &token)
    .env("POD_NAMESPACE", "app")
    .env("GATEWAY_NAME", "waypoint")
    .env("POD_NAME", "waypoint-0")
    .env("INSTANCE_IP", WAYPOINT_IP.to_string())
    .env("LISTEN_ADDR", format!("{WAYPOINT_IP}:15008"))
    .env("STATS_ADDR", stats.to_string())
    .env("READINESS_ADDR", readiness.to_string())
    .env("ADMIN_ADDR", admin.to_string())
    .env(
        "RUST_LOG",
        std::env::var("MESH_E2E_LOG").unwrap_or_else(|_| "info".into()),
    );
    let proc = Process::spawn("waypoint", cmd, &mesh.dir.join("logs").join("waypoint.log"))?;
    let wp = Waypoint {
        stats,
        readiness,
        _proc: proc,
    };
    eventually(
        "waypoint /healthz/ready == 200",
        Duration::from_secs(60),
        Duration::from_millis(50),
        || async {
            Ok(mhttp::get(wp.readiness, "/healthz/ready")
                .await
                .ok()
                .filter(|r| r.status == 200)
                .map(|_| ()))
        },
    )
    .await?;
    Ok(wp)
}

async fn client(mesh: &Mesh) -> anyhow::Result<Client> {
    let token = mesh.node_token("node1")?;
    let id = Identity::parse(CLIENT_ID)?;
    let issued = ca::request_cert(mesh.istiod.xds_plaintext, Some(&token), &id)
        .await
        .map_err(|s| anyhow::anyhow!("client certificate: {s}"))?;
    let cert = mesh_identity::cert::WorkloadCert::from_pem(&issued.key_pem, &issued.chain)?;
    let tls = mesh_identity::tls::client_config(&cert, &[Identity::parse(WAYPOINT_ID)?])?;
    Ok(Client {
        pool: mesh_hbone::client::Pool::new(
            mesh_hbone::Config::default(),
            Arc::new(mesh_hbone::client::TcpDialer),
        ),
        tls,
    })
}

/// One routing-matrix case: method, URI, request headers, expected backend pod ("404": none).
type Case = (
    &'static str,
    &'static str,
    &'static [(&'static str, &'static str)],
    &'static str,
);

fn pod(a: &Answer) -> &str {
    a.body["pod"].as_str().unwrap_or("-")
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

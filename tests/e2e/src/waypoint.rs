//! Shared pieces of the waypoint end-to-end tests (`tests/waypoint*.rs`): starting a real
//! waypoint process, a test client that speaks HBONE to it as a ztunnel would, and small hyper
//! backends bound to pod IPs that describe the request they saw.
//!
//! The API is kept stable for every waypoint test file; add to it rather than changing it.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_identity::spiffe::Identity;

use crate::process::Process;
use crate::{bins, ca, eventually, http as mhttp, mesh, Mesh};

/// Port every test backend listens on (the Services' targetPort).
pub const APP_PORT: u16 = 8080;

/// How a [`backend`] answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// 200 at once.
    Echo,
    /// 503 half of the time (at random), else 200.
    FailHalf,
    /// 200 after 2 s.
    Sleep,
    /// This status at once.
    Status(u16),
    /// 200 after this many milliseconds.
    Delay(u64),
    /// This status after this many milliseconds.
    StatusAfter(u16, u64),
}

/// A running backend: its task, how many requests it received, and a switch that makes it
/// answer 500 to everything (for outlier detection tests).
pub struct Backend {
    /// Requests received.
    pub hits: Arc<AtomicU64>,
    /// When true, every request gets a 500 regardless of the mode.
    pub failing: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Backend {
    /// Requests received so far.
    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }

    /// Makes every answer a 500 (`true`) or the mode's answer again (`false`).
    pub fn set_failing(&self, v: bool) {
        self.failing.store(v, Ordering::Relaxed);
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A hyper backend (HTTP/1.1 and h2c) on `ip:APP_PORT` answering with JSON describing the
/// request it saw: `pod`, `method`, `path`, `version`, `host`, `headers`, `peer`.
pub async fn backend(ip: Ipv4Addr, name: &'static str, mode: Mode) -> anyhow::Result<Backend> {
    let l = tokio::net::TcpListener::bind((ip, APP_PORT))
        .await
        .with_context(|| format!("backend {name} cannot listen on {ip}:{APP_PORT}"))?;
    let hits = Arc::new(AtomicU64::new(0));
    let failing = Arc::new(AtomicBool::new(false));
    let (h, f) = (hits.clone(), failing.clone());
    let task = tokio::spawn(async move {
        while let Ok((s, peer)) = l.accept().await {
            let (h, f) = (h.clone(), f.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let (h, f) = (h.clone(), f.clone());
                    async move {
                        h.fetch_add(1, Ordering::Relaxed);
                        let status = if f.load(Ordering::Relaxed) {
                            StatusCode::INTERNAL_SERVER_ERROR
                        } else {
                            let (code, delay) = match mode {
                                Mode::Echo => (200, 0),
                                Mode::FailHalf if rand::random::<bool>() => (503, 0),
                                Mode::FailHalf => (200, 0),
                                Mode::Sleep => (200, 2000),
                                Mode::Status(c) => (c, 0),
                                Mode::Delay(ms) => (200, ms),
                                Mode::StatusAfter(c, ms) => (c, ms),
                            };
                            if delay > 0 {
                                tokio::time::sleep(Duration::from_millis(delay)).await;
                            }
                            StatusCode::from_u16(code).unwrap_or(StatusCode::OK)
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
                            "query": req.uri().query(),
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
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    Ok(Backend {
        hits,
        failing,
        task,
    })
}

/// A test client holding HBONE to the waypoint, as a ztunnel would.
pub struct Client {
    pool: mesh_hbone::client::Pool,
    tls: Arc<rustls::ClientConfig>,
    /// Our SPIFFE id.
    pub id: String,
    /// Our (pod) IP.
    pub ip: Ipv4Addr,
    /// The waypoint's pod IP.
    pub waypoint_ip: Ipv4Addr,
    /// The waypoint's SPIFFE id.
    pub waypoint_id: String,
}

/// A response read whole; `body` is the backend's JSON (Null when not JSON).
pub struct Answer {
    /// Status.
    pub status: StatusCode,
    /// Headers.
    pub headers: http::HeaderMap,
    /// Parsed body.
    pub body: serde_json::Value,
}

impl Answer {
    /// The backend pod that answered (`-` for local answers).
    pub fn pod(&self) -> &str {
        self.body["pod"].as_str().unwrap_or("-")
    }
}

/// One HTTP/1.1 connection through the waypoint.
pub type Http1 = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

impl Client {
    /// An HBONE stream to the waypoint with `:authority` = `vip`.
    pub async fn stream(&self, vip: &str) -> anyhow::Result<mesh_hbone::H2Stream> {
        self.stream_with(vip, http::HeaderMap::new()).await
    }

    /// As [`Client::stream`], with extra CONNECT headers (e.g. `baggage`).
    pub async fn stream_with(
        &self,
        vip: &str,
        headers: http::HeaderMap,
    ) -> anyhow::Result<mesh_hbone::H2Stream> {
        let key = mesh_hbone::client::PoolKey::new(
            self.id.clone(),
            Some(IpAddr::V4(self.ip)),
            SocketAddr::new(self.waypoint_ip.into(), 15008),
            vec![self.waypoint_id.clone()],
        );
        let req = mesh_hbone::client::ConnectRequest {
            authority: vip.to_string(),
            headers,
        };
        Ok(self.pool.connect(key, self.tls.clone(), req).await?.0)
    }

    /// An HTTP/1.1 connection (keep-alive) to `vip` through the waypoint.
    pub async fn http1(&self, vip: &str) -> anyhow::Result<Http1> {
        let (sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(self.stream(vip).await?)).await?;
        tokio::spawn(conn);
        Ok(sender)
    }
}

/// Sends one request (Host `echo.app.svc.cluster.local`, empty body) and reads the answer.
pub async fn send(
    s: &mut Http1,
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

/// A running waypoint process.
pub struct Waypoint {
    /// STATS_ADDR.
    pub stats: SocketAddr,
    /// READINESS_ADDR.
    pub readiness: SocketAddr,
    /// ADMIN_ADDR.
    pub admin: SocketAddr,
    _proc: Process,
}

impl Waypoint {
    /// Scrapes `/stats/prometheus`.
    pub async fn metrics(&self) -> anyhow::Result<crate::prom::Metrics> {
        Ok(crate::prom::Metrics::parse(
            &mhttp::get(self.stats, "/stats/prometheus").await?.body,
        ))
    }
}

/// Starts the waypoint of Gateway `namespace/gateway` on `ip` (HBONE on `ip:15008`) with a
/// token from `istiod-lite waypoint-token`, and waits for `/healthz/ready`.
pub async fn start_waypoint(
    mesh: &Mesh,
    ip: Ipv4Addr,
    namespace: &str,
    gateway: &str,
    extra_env: &[(&str, &str)],
) -> anyhow::Result<Waypoint> {
    let out = Command::new(bins::bin("istiod-lite")?)
        .args(["waypoint-token", "--state-dir"])
        .arg(mesh.state_dir())
        .args(["--namespace", namespace, "--gateway", gateway])
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "waypoint-token: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tokens = mesh.dir.join("tokens");
    std::fs::create_dir_all(&tokens)?;
    let token = tokens.join(format!("waypoint-{namespace}-{gateway}"));
    std::fs::write(&token, out.stdout)?;
    let stats = mesh::free_addr(ip)?;
    let readiness = mesh::free_addr(ip)?;
    let admin = mesh::free_addr(ip)?;
    let mut cmd = Command::new(bins::bin("waypoint")?);
    cmd.env(
        "XDS_ADDRESS",
        format!("http://{}", mesh.istiod.xds_plaintext),
    )
    .env_remove("CA_ADDRESS")
    .env("AUTH_TOKEN", &token)
    .env("POD_NAMESPACE", namespace)
    .env("GATEWAY_NAME", gateway)
    .env("POD_NAME", format!("{gateway}-0"))
    .env("INSTANCE_IP", ip.to_string())
    .env("LISTEN_ADDR", format!("{ip}:15008"))
    .env("STATS_ADDR", stats.to_string())
    .env("READINESS_ADDR", readiness.to_string())
    .env("ADMIN_ADDR", admin.to_string())
    .env(
        "RUST_LOG",
        std::env::var("MESH_E2E_LOG").unwrap_or_else(|_| "info".into()),
    );
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    let log = mesh
        .dir
        .join("logs")
        .join(format!("waypoint-{gateway}.log"));
    let proc = Process::spawn("waypoint", cmd, &log)?;
    let wp = Waypoint {
        stats,
        readiness,
        admin,
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

/// A client with identity `client_id` on `client_ip` (certificate issued with `node`'s token)
/// that talks HBONE to the waypoint at `waypoint_ip`, expecting `waypoint_id`.
pub async fn client(
    mesh: &Mesh,
    node: &str,
    client_id: &str,
    client_ip: Ipv4Addr,
    waypoint_id: &str,
    waypoint_ip: Ipv4Addr,
) -> anyhow::Result<Client> {
    let token = mesh.node_token(node)?;
    let id = Identity::parse(client_id)?;
    let issued = ca::request_cert(mesh.istiod.xds_plaintext, Some(&token), &id)
        .await
        .map_err(|s| anyhow::anyhow!("client certificate: {s}"))?;
    let cert = mesh_identity::cert::WorkloadCert::from_pem(&issued.key_pem, &issued.chain)?;
    let tls = mesh_identity::tls::client_config(&cert, &[Identity::parse(waypoint_id)?])?;
    Ok(Client {
        pool: mesh_hbone::client::Pool::new(
            mesh_hbone::Config::default(),
            Arc::new(mesh_hbone::client::TcpDialer),
        ),
        tls,
        id: client_id.to_string(),
        ip: client_ip,
        waypoint_ip,
        waypoint_id: waypoint_id.to_string(),
    })
}

/// A Service YAML document in namespace `app` using waypoint `waypoint`, port 80 →
/// [`APP_PORT`], selecting `selector` (e.g. `"app: echo"`).
pub fn service_yaml(name: &str, vip: &str, selector: &str) -> String {
    let ip = vip.split(':').next().unwrap_or_default();
    format!("---\napiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: app\n  labels: {{istio.io/use-waypoint: waypoint}}\nspec:\n  clusterIP: {ip}\n  selector: {{{selector}}}\n  ports: [{{name: http, port: 80, targetPort: {APP_PORT}}}]\n")
}

/// The waypoint Gateway `app/waypoint` (for services).
pub const WAYPOINT_GATEWAY_YAML: &str = r#"apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: app, labels: {istio.io/waypoint-for: service}}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
"#;

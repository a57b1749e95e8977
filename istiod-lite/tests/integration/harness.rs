//! An in-process istiod-lite on loopback ports with temp CONFIG_DIR / STATE_DIR, and small
//! xDS / CA / HTTP clients.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use istiod_lite::app::{self, RunningApp};
use istiod_lite::config::Config;
use mesh_proto::ca::istio_certificate_service_client::IstioCertificateServiceClient;
use mesh_proto::ca::{IstioCertificateRequest, IstioCertificateResponse};
use mesh_proto::workload::{address, Address};
use mesh_proto::xds::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use mesh_proto::xds::{DeltaDiscoveryRequest, DeltaDiscoveryResponse, Node};
use mesh_proto::{ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL};
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Request, Status, Streaming};

/// Two ambient namespaces, a client pod on node1 and a server pod + service on node2.
pub const BASE_CONFIG: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: demo-a, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Namespace
metadata: {name: demo-b, labels: {istio.io/dataplane-mode: ambient}}
"#;

pub const CLIENT_POD: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: demo-a, labels: {app: client}}
spec: {nodeName: node1, serviceAccountName: client}
status: {podIP: 127.0.1.1}
"#;

pub const SERVER: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: server, namespace: demo-b, labels: {app: server}}
spec: {nodeName: node2, serviceAccountName: server}
status: {podIP: 127.0.1.2}
---
apiVersion: v1
kind: Service
metadata: {name: server, namespace: demo-b}
spec:
  selector: {app: server}
  clusterIP: 127.0.2.1
  ports: [{name: tcp, port: 80, targetPort: 8080, appProtocol: tcp}]
"#;

pub const CLIENT_UID: &str = "Kubernetes//Pod/demo-a/client";
pub const SERVER_UID: &str = "Kubernetes//Pod/demo-b/server";
pub const SERVICE_NAME: &str = "demo-b/server.demo-b.svc.cluster.local";

/// How long a test waits for something that should be immediate.
pub const WAIT: Duration = Duration::from_secs(5);

pub struct Harness {
    pub app: Option<RunningApp>,
    pub config_dir: tempfile::TempDir,
    pub state_dir: tempfile::TempDir,
}

impl Harness {
    /// Starts with namespaces.yaml, client.yaml and server.yaml in CONFIG_DIR.
    pub async fn start() -> Harness {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> Harness {
        // Logs show with --nocapture (RUST_LOG overrides the level).
        let filter =
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_env_filter(filter)
            .try_init();
        let config_dir = tempfile::tempdir().unwrap();
        let state_dir = tempfile::tempdir().unwrap();
        std::fs::write(config_dir.path().join("namespaces.yaml"), BASE_CONFIG).unwrap();
        std::fs::write(config_dir.path().join("client.yaml"), CLIENT_POD).unwrap();
        std::fs::write(config_dir.path().join("server.yaml"), SERVER).unwrap();
        let mut cfg = Config::with_defaults();
        cfg.config_dir = Some(config_dir.path().to_path_buf());
        cfg.state_dir = state_dir.path().join("istiod");
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        (
            cfg.xds_plaintext_addr,
            cfg.xds_tls_addr,
            cfg.monitoring_addr,
        ) = (any, any, any);
        tweak(&mut cfg);
        let app = app::start(cfg).await.unwrap();
        Harness {
            app: Some(app),
            config_dir,
            state_dir,
        }
    }

    pub fn app(&self) -> &RunningApp {
        self.app.as_ref().unwrap()
    }

    pub fn token(&self, node: &str) -> String {
        self.app().tokens.token_for(node)
    }

    pub fn config_file(&self, name: &str) -> PathBuf {
        self.config_dir.path().join(name)
    }

    pub fn state_path(&self, name: &str) -> PathBuf {
        self.state_dir.path().join("istiod").join(name)
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.app().xds_plaintext_addr))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    /// GET `path` on the monitoring port; returns (status, body).
    pub async fn http_get(&self, path: &str) -> (u16, String) {
        let mut s = tokio::net::TcpStream::connect(self.app().monitoring_addr)
            .await
            .unwrap();
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut buf = String::new();
        tokio::time::timeout(WAIT, s.read_to_string(&mut buf))
            .await
            .unwrap()
            .unwrap();
        let status = buf.split(' ').nth(1).unwrap().parse().unwrap();
        let body = buf
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        (status, body)
    }

    /// Value of a metric series line starting with `prefix` (e.g. `pilot_total_xds_rejects{type="wds"}`).
    pub async fn metric(&self, prefix: &str) -> Option<f64> {
        let (_, body) = self.http_get("/metrics").await;
        body.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }

    /// Calls CreateCertificate on the plaintext port.
    pub async fn create_certificate(
        &self,
        token: Option<&str>,
        csr: &str,
        validity_secs: i64,
        impersonate: Option<&str>,
    ) -> Result<IstioCertificateResponse, Status> {
        let mut client = IstioCertificateServiceClient::new(self.channel().await);
        let metadata = impersonate.map(|id| prost_types::Struct {
            fields: [(
                "ImpersonatedIdentity".to_string(),
                prost_types::Value {
                    kind: Some(prost_types::value::Kind::StringValue(id.to_string())),
                },
            )]
            .into(),
        });
        let mut req = Request::new(IstioCertificateRequest {
            csr: csr.to_string(),
            validity_duration: validity_secs,
            metadata,
        });
        if let Some(t) = token {
            req.metadata_mut()
                .insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        client.create_certificate(req).await.map(|r| r.into_inner())
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        // Shut down in the background; the runtime may already be gone at the end of a test.
        if let Some(app) = self.app.take() {
            if let Ok(h) = tokio::runtime::Handle::try_current() {
                h.spawn(app.shutdown());
            }
        }
    }
}

pub fn node(name: &str) -> Node {
    Node {
        id: format!("ztunnel~127.0.0.1~ztunnel-{name}.istio-system~istio-system.svc.cluster.local"),
        metadata: Some(prost_types::Struct {
            fields: [(
                "NODE_NAME".to_string(),
                prost_types::Value {
                    kind: Some(prost_types::value::Kind::StringValue(name.to_string())),
                },
            )]
            .into(),
        }),
        ..Default::default()
    }
}

pub struct XdsClient {
    tx: mpsc::Sender<DeltaDiscoveryRequest>,
    rx: Streaming<DeltaDiscoveryResponse>,
}

impl XdsClient {
    /// Opens a stream (token for `token_node`, NODE_NAME `node_name`) and subscribes to both
    /// types with the given initial versions of the Address type.
    pub async fn connect(
        h: &Harness,
        token: Option<String>,
        node_name: &str,
        initial_addresses: HashMap<String, String>,
    ) -> Result<XdsClient, Status> {
        let (tx, rx) = mpsc::channel(16);
        tx.send(DeltaDiscoveryRequest {
            node: Some(node(node_name)),
            type_url: ADDRESS_TYPE_URL.to_string(),
            initial_resource_versions: initial_addresses,
            ..Default::default()
        })
        .await
        .unwrap();
        tx.send(DeltaDiscoveryRequest {
            type_url: AUTHORIZATION_TYPE_URL.to_string(),
            ..Default::default()
        })
        .await
        .unwrap();
        let mut req = Request::new(ReceiverStream::new(rx));
        if let Some(t) = token {
            req.metadata_mut()
                .insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        let mut client = AggregatedDiscoveryServiceClient::new(h.channel().await);
        let stream = client.delta_aggregated_resources(req).await?.into_inner();
        Ok(XdsClient { tx, rx: stream })
    }

    /// Next response, or the stream's error status; panics after `timeout`.
    pub async fn try_recv_within(
        &mut self,
        timeout: Duration,
    ) -> Result<DeltaDiscoveryResponse, Status> {
        match tokio::time::timeout(timeout, self.rx.message()).await {
            Ok(Ok(Some(r))) => Ok(r),
            Ok(Ok(None)) => Err(Status::cancelled("stream ended")),
            Ok(Err(s)) => Err(s),
            Err(_) => panic!("no xDS response within {timeout:?}"),
        }
    }

    pub async fn recv_within(&mut self, timeout: Duration) -> DeltaDiscoveryResponse {
        self.try_recv_within(timeout).await.unwrap()
    }

    pub async fn recv(&mut self) -> DeltaDiscoveryResponse {
        self.recv_within(WAIT).await
    }

    /// Receives the first response of each type, ACKs both, returns the Address one.
    pub async fn initial(&mut self) -> DeltaDiscoveryResponse {
        let mut addresses = None;
        for _ in 0..2 {
            let r = self.recv().await;
            self.ack(&r).await;
            if r.type_url == ADDRESS_TYPE_URL {
                addresses = Some(r);
            } else {
                assert_eq!(r.type_url, AUTHORIZATION_TYPE_URL);
                assert!(r.resources.is_empty(), "no policies yet");
            }
        }
        addresses.expect("an Address response")
    }

    pub async fn ack(&self, r: &DeltaDiscoveryResponse) {
        self.tx
            .send(DeltaDiscoveryRequest {
                type_url: r.type_url.clone(),
                response_nonce: r.nonce.clone(),
                ..Default::default()
            })
            .await
            .unwrap();
    }

    pub async fn nack(&self, r: &DeltaDiscoveryResponse, message: &str) {
        self.tx
            .send(DeltaDiscoveryRequest {
                type_url: r.type_url.clone(),
                response_nonce: r.nonce.clone(),
                error_detail: Some(mesh_proto::google::rpc::Status {
                    code: 3,
                    message: message.into(),
                    details: vec![],
                }),
                ..Default::default()
            })
            .await
            .unwrap();
    }
}

pub fn names(r: &DeltaDiscoveryResponse) -> Vec<String> {
    let mut n: Vec<_> = r.resources.iter().map(|r| r.name.clone()).collect();
    n.sort();
    n
}

pub fn versions(r: &DeltaDiscoveryResponse) -> HashMap<String, String> {
    r.resources
        .iter()
        .map(|r| (r.name.clone(), r.version.clone()))
        .collect()
}

pub fn decode(r: &DeltaDiscoveryResponse, name: &str) -> address::Type {
    let res = r
        .resources
        .iter()
        .find(|x| x.name == name)
        .unwrap_or_else(|| panic!("{name} not in response"));
    let any = res.resource.as_ref().unwrap();
    assert_eq!(any.type_url, ADDRESS_TYPE_URL);
    Address::decode(any.value.as_slice())
        .unwrap()
        .r#type
        .unwrap()
}

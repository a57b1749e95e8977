//! Delta ADS client: subscribes (wildcard) to the configured types, hands every resource to a
//! [`Handler`], ACKs or NACKs each response, and reconnects with backoff. The handler's state
//! is kept while the control plane is away, so the data plane keeps serving from the last good
//! config.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use mesh_proto::google::rpc::Status;
use mesh_proto::xds::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use mesh_proto::xds::{DeltaDiscoveryRequest, DeltaDiscoveryResponse, Node};
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tracing::{debug, info, warn};

use crate::auth::{CallCredentials, ChannelError};
use crate::Readiness;

/// Why a stream ended.
#[derive(thiserror::Error, Debug)]
pub enum XdsError {
    /// The control plane could not be reached or refused the stream.
    #[error("control plane unreachable at {addr}: {status}")]
    Connect {
        /// XDS_ADDRESS.
        addr: String,
        /// What gRPC said.
        status: tonic::Status,
    },
    /// The stream failed after it was established.
    #[error("xDS stream broke: {0}")]
    Stream(tonic::Status),
    /// The control plane ended the stream.
    #[error("control plane closed the xDS stream")]
    Closed,
    /// The channel could not be built (address, root CA, token).
    #[error(transparent)]
    Channel(#[from] ChannelError),
}

/// Where to connect and what to ask for.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// `http://host:port` or `https://host:port`.
    pub address: String,
    /// Root certificate for `https://`.
    pub root_ca: Option<PathBuf>,
    /// Bearer token file.
    pub auth_token: Option<PathBuf>,
    /// `clusterid` metadata.
    pub cluster_id: String,
    /// Node sent in the first request.
    pub node: Node,
    /// Type URLs subscribed (wildcard), in this order.
    pub types: Vec<&'static str>,
}

/// What the client does with resources. Called on the client's task; keep it quick.
pub trait Handler: Send + 'static {
    /// Applies an added or changed resource; an `Err` message becomes part of the NACK (the
    /// other resources of the response are still applied).
    fn upsert(
        &mut self,
        type_url: &'static str,
        name: &str,
        resource: &prost_types::Any,
    ) -> Result<(), String>;
    /// Removes a resource; returns whether it existed.
    fn remove(&mut self, type_url: &'static str, name: &str) -> bool;
    /// Called once a whole response of `type_url` was applied (batch point).
    fn applied(&mut self, _type_url: &'static str) {}
}

/// The xDS client task.
pub struct XdsClient<H> {
    cfg: ClientConfig,
    handler: H,
    readiness: Readiness,
    /// type URL -> resource name -> version, sent as `initial_resource_versions` on reconnect.
    versions: HashMap<&'static str, HashMap<String, String>>,
}

/// Name of the readiness task of a type ("xds Address").
pub fn ready_task(type_url: &str) -> String {
    format!("xds {}", type_url.rsplit('/').next().unwrap_or(type_url))
}

impl<H: Handler> XdsClient<H> {
    /// Creates the client and registers one readiness task per subscribed type.
    pub fn new(cfg: ClientConfig, handler: H, readiness: Readiness) -> Self {
        for t in &cfg.types {
            readiness.register(ready_task(t));
        }
        XdsClient {
            cfg,
            handler,
            readiness,
            versions: HashMap::new(),
        }
    }

    /// The handler (tests inspect it).
    pub fn handler(&self) -> &H {
        &self.handler
    }

    /// The readiness set this client reports to.
    pub fn readiness(&self) -> &Readiness {
        &self.readiness
    }

    /// Versions of the resources of `type_url` we hold.
    pub fn versions(&self, type_url: &str) -> Option<&HashMap<String, String>> {
        self.versions.get(type_url)
    }

    /// Runs forever: connect, stream, reconnect with exponential backoff (100 ms .. 15 s).
    pub async fn run(mut self) {
        let mut backoff = Duration::from_millis(100);
        loop {
            let started = std::time::Instant::now();
            let reason = match self.run_once().await {
                Ok(()) => "Complete",
                Err(XdsError::Connect { addr, status }) => {
                    warn!(%addr, error = %status.message(), "xDS connection failed; serving from the last good config");
                    "ConnectionError"
                }
                Err(e) => {
                    warn!(error = %e, "xDS stream ended; serving from the last good config");
                    "Error"
                }
            };
            metrics::counter!("istio_xds_connection_terminations_total", "reason" => reason)
                .increment(1);
            if started.elapsed() > Duration::from_secs(30) {
                backoff = Duration::from_millis(100);
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(15));
        }
    }

    async fn run_once(&mut self) -> Result<(), XdsError> {
        let channel = crate::auth::channel(&self.cfg.address, self.cfg.root_ca.as_ref())?;
        let creds = CallCredentials::load(self.cfg.auth_token.as_ref(), &self.cfg.cluster_id)?;
        let mut client = AggregatedDiscoveryServiceClient::with_interceptor(channel, creds)
            .max_decoding_message_size(200 * 1024 * 1024);
        let (tx, rx) = mpsc::channel(16);
        for (i, t) in self.cfg.types.iter().enumerate() {
            let req = DeltaDiscoveryRequest {
                node: (i == 0).then(|| self.cfg.node.clone()),
                type_url: t.to_string(),
                initial_resource_versions: self.versions.get(t).cloned().unwrap_or_default(),
                ..Default::default()
            };
            // The receiver is alive: the stream has not been handed to tonic yet.
            let _ = tx.send(req).await;
        }
        let mut stream = client
            .delta_aggregated_resources(ReceiverStream::new(rx))
            .await
            .map_err(|status| XdsError::Connect {
                addr: self.cfg.address.clone(),
                status,
            })?
            .into_inner();
        info!(addr = %self.cfg.address, "xDS stream established");
        loop {
            let resp = match stream.message().await {
                Ok(Some(r)) => r,
                Ok(None) => return Err(XdsError::Closed),
                Err(s) => return Err(XdsError::Stream(s)),
            };
            let ack = self.handle(resp);
            if tx.send(ack).await.is_err() {
                return Err(XdsError::Closed);
            }
        }
    }

    /// Applies one response and returns the ACK or NACK for it.
    pub fn handle(&mut self, resp: DeltaDiscoveryResponse) -> DeltaDiscoveryRequest {
        let Some(type_url) = self.cfg.types.iter().copied().find(|t| *t == resp.type_url) else {
            warn!(type_url = %resp.type_url, "xDS response for a type we did not subscribe to");
            return nack(&resp, format!("unsubscribed type {}", resp.type_url));
        };
        metrics::counter!("istio_xds_message_total", "url" => type_url).increment(1);
        metrics::counter!("istio_xds_message_bytes_total", "url" => type_url)
            .increment(resp.encoded_len() as u64);
        let errors = self.apply(type_url, &resp);
        self.handler.applied(type_url);
        debug!(type_url, updated = resp.resources.len(), removed = resp.removed_resources.len(), nonce = %resp.nonce, "applied xDS response");
        if errors.is_empty() {
            self.readiness.done(&ready_task(type_url));
            DeltaDiscoveryRequest {
                type_url: type_url.into(),
                response_nonce: resp.nonce.clone(),
                ..Default::default()
            }
        } else {
            let msg = errors.join("; ");
            warn!(type_url, error = %msg, "rejecting (NACK) part of an xDS response; valid resources were applied");
            nack(&resp, msg)
        }
    }

    fn apply(&mut self, type_url: &'static str, resp: &DeltaDiscoveryResponse) -> Vec<String> {
        let mut errors = Vec::new();
        let versions = self.versions.entry(type_url).or_default();
        for name in &resp.removed_resources {
            let removed = self.handler.remove(type_url, name);
            versions.remove(name);
            debug!(type_url, %name, removed, "resource removed");
        }
        for r in &resp.resources {
            let Some(any) = &r.resource else {
                errors.push(format!("{}: resource without a body", r.name));
                continue;
            };
            match self.handler.upsert(type_url, &r.name, any) {
                Ok(()) => {
                    versions.insert(r.name.clone(), r.version.clone());
                }
                Err(e) => errors.push(e),
            }
        }
        errors
    }
}

fn nack(resp: &DeltaDiscoveryResponse, message: String) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        type_url: resp.type_url.clone(),
        response_nonce: resp.nonce.clone(),
        error_detail: Some(Status {
            code: tonic::Code::InvalidArgument as i32,
            message,
            details: vec![],
        }),
        ..Default::default()
    }
}

/// A string value for `Node.metadata`.
pub fn metadata_string(s: &str) -> prost_types::Value {
    prost_types::Value {
        kind: Some(prost_types::value::Kind::StringValue(s.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_proto::xds::Resource;

    #[derive(Default)]
    struct Names(std::collections::BTreeSet<String>);

    impl Handler for Names {
        fn upsert(
            &mut self,
            _: &'static str,
            name: &str,
            any: &prost_types::Any,
        ) -> Result<(), String> {
            if any.value.is_empty() {
                return Err(format!("{name}: empty"));
            }
            self.0.insert(name.to_string());
            Ok(())
        }
        fn remove(&mut self, _: &'static str, name: &str) -> bool {
            self.0.remove(name)
        }
    }

    fn client() -> XdsClient<Names> {
        let cfg = ClientConfig {
            address: "http://127.0.0.1:1".into(),
            root_ca: None,
            auth_token: None,
            cluster_id: "Kubernetes".into(),
            node: Node::default(),
            types: vec!["t/A", "t/B"],
        };
        XdsClient::new(cfg, Names::default(), Readiness::default())
    }

    fn res(name: &str, body: &[u8]) -> Resource {
        Resource {
            name: name.into(),
            version: "v1".into(),
            resource: Some(prost_types::Any {
                type_url: "t/A".into(),
                value: body.to_vec(),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn ack_nack_versions_and_readiness() {
        let mut c = client();
        let ack = c.handle(DeltaDiscoveryResponse {
            type_url: "t/A".into(),
            nonce: "1".into(),
            resources: vec![res("a", b"x")],
            ..Default::default()
        });
        assert!(ack.error_detail.is_none());
        assert_eq!(c.readiness().pending(), vec![ready_task("t/B")]);
        assert_eq!(c.versions("t/A").unwrap()["a"], "v1");
        let nack = c.handle(DeltaDiscoveryResponse {
            type_url: "t/A".into(),
            nonce: "2".into(),
            resources: vec![res("b", b""), res("c", b"y")],
            removed_resources: vec!["a".into()],
            ..Default::default()
        });
        assert!(nack.error_detail.unwrap().message.contains("b: empty"));
        assert_eq!(c.handler().0.iter().collect::<Vec<_>>(), vec!["c"]);
        let other = c.handle(DeltaDiscoveryResponse {
            type_url: "t/C".into(),
            ..Default::default()
        });
        assert!(other.error_detail.is_some());
    }
}

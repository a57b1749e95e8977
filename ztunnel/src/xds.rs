//! Delta ADS client: subscribes (wildcard) to `istio.workload.Address` and
//! `istio.security.Authorization`, applies pushes to [`State`], ACKs or NACKs each response, and
//! reconnects with backoff. The state is kept while the control plane is away, so the data plane
//! keeps serving from the last good config.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use mesh_proto::google::rpc::Status;
use mesh_proto::xds::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use mesh_proto::xds::{DeltaDiscoveryRequest, DeltaDiscoveryResponse, Node};
use mesh_proto::{security, workload, ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL};
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tracing::{debug, info, warn};

use crate::auth::CallCredentials;
use crate::config::Config;
use crate::readiness::Readiness;
use crate::state::{self, State};

/// The types we subscribe to, in order.
pub const TYPES: [&str; 2] = [ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL];

/// Why a stream ended.
#[derive(thiserror::Error, Debug)]
pub enum XdsError {
    #[error("control plane unreachable at {addr}: {status}")]
    Connect { addr: String, status: tonic::Status },
    #[error("xDS stream broke: {0}")]
    Stream(tonic::Status),
    #[error("control plane closed the xDS stream")]
    Closed,
    #[error(transparent)]
    Channel(#[from] crate::auth::ChannelError),
}

/// The xDS client task.
pub struct XdsClient {
    cfg: Arc<Config>,
    state: Arc<State>,
    readiness: Readiness,
    /// type URL -> resource name -> version, sent as `initial_resource_versions` on reconnect.
    versions: HashMap<&'static str, HashMap<String, String>>,
}

fn ready_task(type_url: &str) -> String {
    format!("xds {}", type_url.rsplit('/').next().unwrap_or(type_url))
}

impl XdsClient {
    /// Creates the client and registers one readiness task per subscribed type.
    pub fn new(cfg: Arc<Config>, state: Arc<State>, readiness: Readiness) -> Self {
        for t in TYPES {
            readiness.register(ready_task(t));
        }
        XdsClient {
            cfg,
            state,
            readiness,
            versions: HashMap::new(),
        }
    }

    fn node(&self) -> Node {
        let meta = |s: &str| prost_types::Value {
            kind: Some(prost_types::value::Kind::StringValue(s.to_string())),
        };
        let mut fields = std::collections::BTreeMap::new();
        fields.insert("NODE_NAME".to_string(), meta(&self.cfg.node_name));
        fields.insert("CLUSTER_ID".to_string(), meta(&self.cfg.cluster_id));
        Node {
            id: format!(
                "ztunnel~0.0.0.0~ztunnel-{}.istio-system~istio-system.svc.cluster.local",
                self.cfg.node_name
            ),
            cluster: self.cfg.cluster_id.clone(),
            metadata: Some(prost_types::Struct { fields }),
            build_version: env!("CARGO_PKG_VERSION").to_string(),
        }
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
        let channel = crate::auth::channel(&self.cfg.xds_address, self.cfg.xds_root_ca.as_ref())?;
        let creds = CallCredentials::load(self.cfg.auth_token.as_ref(), &self.cfg.cluster_id)?;
        let mut client = AggregatedDiscoveryServiceClient::with_interceptor(channel, creds)
            .max_decoding_message_size(200 * 1024 * 1024);
        let (tx, rx) = mpsc::channel(16);
        for (i, t) in TYPES.iter().enumerate() {
            let req = DeltaDiscoveryRequest {
                node: (i == 0).then(|| self.node()),
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
                addr: self.cfg.xds_address.clone(),
                status,
            })?
            .into_inner();
        info!(addr = %self.cfg.xds_address, "xDS stream established");
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
    fn handle(&mut self, resp: DeltaDiscoveryResponse) -> DeltaDiscoveryRequest {
        let Some(type_url) = TYPES.iter().copied().find(|t| *t == resp.type_url) else {
            warn!(type_url = %resp.type_url, "xDS response for a type we did not subscribe to");
            return nack(&resp, format!("unsubscribed type {}", resp.type_url));
        };
        metrics::counter!("istio_xds_message_total", "url" => type_url).increment(1);
        metrics::counter!("istio_xds_message_bytes_total", "url" => type_url)
            .increment(resp.encoded_len() as u64);
        let errors = self.apply(type_url, &resp);
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
            let removed = if type_url == ADDRESS_TYPE_URL {
                self.state.remove_address(name)
            } else {
                self.state.remove_policy(name)
            };
            versions.remove(name);
            debug!(type_url, %name, removed, "resource removed");
        }
        for r in &resp.resources {
            let Some(any) = &r.resource else {
                errors.push(format!("{}: resource without a body", r.name));
                continue;
            };
            let result = if type_url == ADDRESS_TYPE_URL {
                workload::Address::decode(any.value.as_slice())
                    .map_err(|e| format!("{}: undecodable Address: {e}", r.name))
                    .and_then(|a| state::convert_address(&r.name, a).map_err(|e| e.to_string()))
                    .map(|a| self.state.upsert(a))
            } else {
                security::Authorization::decode(any.value.as_slice())
                    .map_err(|e| format!("{}: undecodable Authorization: {e}", r.name))
                    .and_then(|p| mesh_policy::Policy::from_proto(p).map_err(|e| e.to_string()))
                    .map(|p| self.state.upsert_policy(&r.name, p))
            };
            match result {
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

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_proto::xds::Resource;

    fn client() -> XdsClient {
        let cfg = Config::from_source(&HashMap::from([(
            "NODE_NAME".to_string(),
            "n1".to_string(),
        )]))
        .expect("cfg");
        XdsClient::new(
            Arc::new(cfg),
            Arc::new(State::default()),
            Readiness::default(),
        )
    }

    fn resource(name: &str, w: workload::Workload) -> Resource {
        let a = workload::Address {
            r#type: Some(workload::address::Type::Workload(w)),
        };
        Resource {
            name: name.into(),
            version: "v1".into(),
            resource: Some(mesh_proto::to_any(ADDRESS_TYPE_URL, &a)),
            ..Default::default()
        }
    }

    #[test]
    fn ack_applies_and_marks_ready() {
        let mut c = client();
        let w = workload::Workload {
            uid: "u1".into(),
            name: "p".into(),
            namespace: "ns".into(),
            addresses: vec![vec![10, 0, 0, 1]],
            ..Default::default()
        };
        let resp = DeltaDiscoveryResponse {
            type_url: ADDRESS_TYPE_URL.into(),
            nonce: "n1".into(),
            resources: vec![resource("u1", w)],
            ..Default::default()
        };
        let ack = c.handle(resp);
        assert_eq!(ack.response_nonce, "n1");
        assert!(ack.error_detail.is_none());
        assert!(c
            .state
            .workload_by_ip("10.0.0.1".parse().expect("ip"))
            .is_some());
        assert_eq!(
            c.readiness.pending(),
            vec![ready_task(AUTHORIZATION_TYPE_URL)]
        );
        assert_eq!(c.versions[ADDRESS_TYPE_URL]["u1"], "v1");
    }

    #[test]
    fn bad_resource_is_nacked_and_good_ones_still_apply() {
        let mut c = client();
        let good = workload::Workload {
            uid: "u1".into(),
            addresses: vec![vec![10, 0, 0, 1]],
            ..Default::default()
        };
        let bad = workload::Workload {
            uid: "u2".into(),
            addresses: vec![vec![1, 2, 3]],
            ..Default::default()
        };
        let garbage = Resource {
            name: "g".into(),
            resource: Some(prost_types::Any {
                type_url: ADDRESS_TYPE_URL.into(),
                value: vec![0xff, 0xff, 0xff],
            }),
            ..Default::default()
        };
        let resp = DeltaDiscoveryResponse {
            type_url: ADDRESS_TYPE_URL.into(),
            nonce: "n2".into(),
            resources: vec![resource("u1", good), resource("u2", bad), garbage],
            ..Default::default()
        };
        let nack = c.handle(resp);
        let detail = nack.error_detail.expect("nack");
        assert!(
            detail.message.contains("u2") && detail.message.contains("g:"),
            "{}",
            detail.message
        );
        assert!(c
            .state
            .workload_by_ip("10.0.0.1".parse().expect("ip"))
            .is_some());
        assert!(c
            .readiness
            .pending()
            .contains(&ready_task(ADDRESS_TYPE_URL)));
    }

    #[test]
    fn removal_forgets_version() {
        let mut c = client();
        let w = workload::Workload {
            uid: "u1".into(),
            addresses: vec![vec![10, 0, 0, 1]],
            ..Default::default()
        };
        c.handle(DeltaDiscoveryResponse {
            type_url: ADDRESS_TYPE_URL.into(),
            nonce: "a".into(),
            resources: vec![resource("u1", w)],
            ..Default::default()
        });
        c.handle(DeltaDiscoveryResponse {
            type_url: ADDRESS_TYPE_URL.into(),
            nonce: "b".into(),
            removed_resources: vec!["u1".into()],
            ..Default::default()
        });
        assert!(c
            .state
            .workload_by_ip("10.0.0.1".parse().expect("ip"))
            .is_none());
        assert!(c.versions[ADDRESS_TYPE_URL].is_empty());
    }
}

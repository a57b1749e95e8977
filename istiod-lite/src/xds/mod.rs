//! Delta ADS server (`DeltaAggregatedResources`) for the Address and Authorization types, and
//! for waypoints the `ambient.route.v1.ServiceRoutes` type.
//!
//! One task per stream. Who is on the other end comes from the bearer token: a node (ztunnel)
//! or a waypoint (`waypoint:<ns>/<gateway>`). A waypoint's ServiceRoutes subscription is served
//! from its own per-waypoint view, so it never sees another waypoint's routes; anyone else
//! subscribing to that type gets nothing. The first request of a type gets the full state (minus what the client
//! says it has); later snapshots (already debounced by the model) produce only the changes.

pub mod debug;
pub mod registry;
pub mod state;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use mesh_proto::xds::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use mesh_proto::xds::{DeltaDiscoveryRequest, DeltaDiscoveryResponse, Node};
use mesh_proto::{ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL, SERVICE_ROUTES_TYPE_URL};
use prost::Message;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use self::registry::{now_rfc3339, ClientInfo, ClientRegistry, NackInfo, SentResponse};
use self::state::{empty_type, Reply, TypeState};
use crate::auth::{Authenticator, Principal};
use crate::model::{Snapshot, TypeSnapshot};
use crate::source::ObjectKey;

/// Metric: connected xDS clients, by client version (Istio's name).
pub const PILOT_XDS: &str = "pilot_xds";
/// Metric: responses pushed, by type (Istio's name).
pub const PILOT_XDS_PUSHES: &str = "pilot_xds_pushes";
/// Metric: seconds from snapshot (or request) to response sent, by type (Istio's name).
pub const PILOT_XDS_PUSH_TIME: &str = "pilot_xds_push_time";
/// Metric: encoded response size, by type (Istio's name).
pub const PILOT_XDS_CONFIG_SIZE_BYTES: &str = "pilot_xds_config_size_bytes";
/// Metric: NACKs, by type (Istio's name).
pub const PILOT_TOTAL_XDS_REJECTS: &str = "pilot_total_xds_rejects";

/// Histogram buckets of [`PILOT_XDS_PUSH_TIME`] (Istio's).
pub const PUSH_TIME_BUCKETS: &[f64] = &[0.01, 0.1, 0.5, 1.0, 3.0, 5.0, 10.0, 20.0, 30.0];
/// Histogram buckets of [`PILOT_XDS_CONFIG_SIZE_BYTES`] (Istio's).
pub const CONFIG_SIZE_BUCKETS: &[f64] =
    &[1.0, 10000.0, 1000000.0, 4000000.0, 10000000.0, 40000000.0];

/// Registers this module's metric descriptions.
pub fn describe_metrics() {
    metrics::describe_gauge!(PILOT_XDS, "Number of connected xDS clients");
    metrics::describe_counter!(PILOT_XDS_PUSHES, "xDS responses sent, by type");
    metrics::describe_histogram!(
        PILOT_XDS_PUSH_TIME,
        metrics::Unit::Seconds,
        "Time from config change to response sent"
    );
    metrics::describe_histogram!(
        PILOT_XDS_CONFIG_SIZE_BYTES,
        metrics::Unit::Bytes,
        "Size of xDS responses"
    );
    metrics::describe_counter!(
        PILOT_TOTAL_XDS_REJECTS,
        "xDS responses rejected (NACKed) by clients, by type"
    );
}

/// Istio's short metric label of a type URL.
pub fn metric_type(type_url: &str) -> &str {
    match type_url {
        ADDRESS_TYPE_URL => "wds",
        AUTHORIZATION_TYPE_URL => "wads",
        SERVICE_ROUTES_TYPE_URL => "routes",
        other => other,
    }
}

/// Node metadata key carrying the Kubernetes node name.
const NODE_NAME_KEY: &str = "NODE_NAME";
/// Queue of responses per stream; small so a slow client pushes back on its own task only.
const RESPONSE_QUEUE: usize = 4;

/// The ADS service.
#[derive(Clone)]
pub struct XdsServer {
    auth: Authenticator,
    snapshots: watch::Receiver<Arc<Snapshot>>,
    registry: Arc<ClientRegistry>,
    shutdown: watch::Receiver<bool>,
}

impl XdsServer {
    /// Serves `snapshots`, authenticating callers with `tokens`; streams end when `shutdown` turns true.
    pub fn new(
        auth: impl Into<Authenticator>,
        snapshots: watch::Receiver<Arc<Snapshot>>,
        registry: Arc<ClientRegistry>,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        XdsServer {
            auth: auth.into(),
            snapshots,
            registry,
            shutdown,
        }
    }

    /// The tonic service.
    pub fn into_service(self) -> AggregatedDiscoveryServiceServer<Self> {
        // ztunnel allows 200 MiB messages; a full push of a large mesh can be tens of MiB.
        AggregatedDiscoveryServiceServer::new(self)
            .max_decoding_message_size(16 << 20)
            .max_encoding_message_size(256 << 20)
    }
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for XdsServer {
    type DeltaAggregatedResourcesStream = ReceiverStream<Result<DeltaDiscoveryResponse, Status>>;

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let peer = request.remote_addr();
        let principal = self
            .auth
            .authenticate_principal(request.metadata())
            .await
            .map_err(|e| {
                tracing::warn!(peer = ?peer, error = %e, "xDS stream refused");
                Status::new(e.code(), e.to_string())
            })?;
        let token_node = principal.to_string();
        let id = self.registry.next_id();
        let (tx, rx) = mpsc::channel(RESPONSE_QUEUE);
        let conn = Connection {
            id,
            peer,
            token_node: token_node.clone(),
            waypoint: match principal {
                Principal::Waypoint { namespace, name } => Some(ObjectKey::new(namespace, name)),
                Principal::Node(_) => None,
            },
            server: self.clone(),
            tx,
            types: BTreeMap::new(),
        };
        let span = tracing::info_span!("xds", conn = id, node = %token_node, peer = ?peer);
        tokio::spawn(conn.run(request.into_inner()).instrument(span));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

fn node_metadata<'a>(node: &'a Node, key: &str) -> Option<&'a str> {
    match node.metadata.as_ref()?.fields.get(key)?.kind.as_ref()? {
        prost_types::value::Kind::StringValue(s) => Some(s),
        _ => None,
    }
}

/// One stream's state.
struct Connection {
    id: u64,
    peer: Option<SocketAddr>,
    token_node: String,
    /// Gateway `namespace/name` when the caller holds a waypoint token.
    waypoint: Option<ObjectKey>,
    server: XdsServer,
    tx: mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>,
    types: BTreeMap<String, TypeState>,
}

/// Why a stream ended.
enum End {
    ClientClosed,
    ClientGone,
}

impl Connection {
    async fn run(mut self, mut requests: Streaming<DeltaDiscoveryRequest>) {
        let first = match requests.message().await {
            Ok(Some(r)) => r,
            Ok(None) => return,
            Err(e) => {
                tracing::debug!(error = %e, "stream failed before its first request");
                return;
            }
        };
        let node = first.node.clone().unwrap_or_default();
        let node_name = node_metadata(&node, NODE_NAME_KEY)
            .unwrap_or_default()
            .to_string();
        // A waypoint is not on a node of ours: its token names its Gateway instead.
        if self.waypoint.is_none() && node_name != self.token_node {
            let why = if node_name.is_empty() {
                format!(
                    "node.metadata.{NODE_NAME_KEY} is missing; it must name the token's node {:?}",
                    self.token_node
                )
            } else {
                format!("node.metadata.{NODE_NAME_KEY}={node_name:?} does not match the token's node {:?}", self.token_node)
            };
            tracing::warn!(node_id = %node.id, "xDS stream refused: {why}");
            let _ = self.tx.send(Err(Status::permission_denied(why))).await;
            return;
        }
        let version = node_metadata(&node, "ISTIO_VERSION")
            .map(str::to_string)
            .or_else(|| (!node.build_version.is_empty()).then(|| node.build_version.clone()))
            .unwrap_or_else(|| "unknown".to_string());
        let _guard = self.server.registry.register(ClientInfo {
            id: self.id,
            peer: self.peer.map(|p| p.to_string()),
            node_id: node.id.clone(),
            node_name,
            version,
            connected_since: now_rfc3339(),
            types: BTreeMap::new(),
        });
        tracing::info!(node_id = %node.id, "xDS client connected");

        let mut snapshots = self.server.snapshots.clone();
        let mut shutdown = self.server.shutdown.clone();
        let mut next = Some(first);
        let end = loop {
            if let Some(req) = next.take() {
                if let Err(end) = self.handle_request(req, &snapshots).await {
                    break end;
                }
            }
            tokio::select! {
                msg = requests.message() => match msg {
                    Ok(Some(req)) => next = Some(req),
                    Ok(None) => break End::ClientClosed,
                    Err(e) => {
                        tracing::debug!(error = %e, "xDS stream error");
                        break End::ClientGone;
                    }
                },
                changed = snapshots.changed() => {
                    if changed.is_err() { break End::ClientGone }
                    let snap = snapshots.borrow_and_update().clone();
                    if let Err(end) = self.push_all(&snap).await { break end }
                }
                _ = shutdown.changed() => {
                    tracing::info!("closing xDS stream for shutdown");
                    return;
                }
            }
        };
        match end {
            End::ClientClosed => tracing::info!("xDS client disconnected"),
            End::ClientGone => tracing::info!("xDS client connection lost"),
        }
    }

    async fn handle_request(
        &mut self,
        req: DeltaDiscoveryRequest,
        snapshots: &watch::Receiver<Arc<Snapshot>>,
    ) -> Result<(), End> {
        let type_url = req.type_url.clone();
        let received = Instant::now();
        // Not borrow_and_update: the snapshot-change branch must still see changes for the
        // types already subscribed.
        let snap = snapshots.borrow().clone();

        if !self.types.contains_key(&type_url) {
            if type_url != ADDRESS_TYPE_URL
                && type_url != AUTHORIZATION_TYPE_URL
                && type_url != SERVICE_ROUTES_TYPE_URL
            {
                tracing::warn!(type_url = %type_url, "subscription to a type we do not serve; it will stay empty");
            }
            let mut st = TypeState::new(&req);
            tracing::debug!(type_url = %type_url, subscription = %st.subscription(), initial = req.initial_resource_versions.len(), "subscribed");
            let resp = st.next_response_from(&snap, self.view(&snap, &type_url), true);
            self.types.insert(type_url.clone(), st);
            if let Some(resp) = resp {
                self.send(resp, received).await?;
            }
            return Ok(());
        }

        if !req.response_nonce.is_empty() {
            self.handle_reply(&req);
        }
        let view = Self::view_of(self.waypoint.as_ref(), &snap, &type_url);
        let Some(st) = self.types.get_mut(&type_url) else {
            return Ok(());
        };
        if st.update_subscription(
            &req.resource_names_subscribe,
            &req.resource_names_unsubscribe,
        ) {
            if let Some(resp) = st.next_response_from(&snap, view, false) {
                self.send(resp, received).await?;
            }
        }
        Ok(())
    }

    /// What this client may see of `type_url`: its waypoint's own view for ServiceRoutes.
    fn view<'a>(&self, snap: &'a Snapshot, type_url: &str) -> &'a TypeSnapshot {
        Self::view_of(self.waypoint.as_ref(), snap, type_url)
    }

    fn view_of<'a>(
        waypoint: Option<&ObjectKey>,
        snap: &'a Snapshot,
        type_url: &str,
    ) -> &'a TypeSnapshot {
        if type_url == SERVICE_ROUTES_TYPE_URL {
            return waypoint
                .and_then(|w| snap.waypoint(w))
                .unwrap_or_else(|| empty_type());
        }
        snap.get(type_url).unwrap_or_else(|| empty_type())
    }

    fn handle_reply(&mut self, req: &DeltaDiscoveryRequest) {
        let Some(st) = self.types.get_mut(&req.type_url) else {
            return;
        };
        let accepted = req.error_detail.is_none();
        let reply = st.reply(&req.response_nonce, accepted);
        let resources = st.resource_count();
        let type_url = req.type_url.clone();
        let nonce = req.response_nonce.clone();
        match reply {
            Reply::Ack { generation } => {
                tracing::debug!(type_url = %type_url, nonce = %nonce, version = generation, "ACK");
                self.server.registry.update(self.id, |c| {
                    let t = c.types.entry(type_url).or_default();
                    t.history.answered(&nonce, true);
                    t.last_acked_nonce = nonce;
                    t.last_acked_version = generation.to_string();
                    t.resources = resources;
                });
            }
            Reply::Nack { generation } => {
                let detail = req.error_detail.clone().unwrap_or_default();
                tracing::warn!(
                    node = %self.token_node, type_url = %type_url, nonce = %nonce, version = generation,
                    code = detail.code, error = %detail.message, "client rejected config (NACK)"
                );
                metrics::counter!(PILOT_TOTAL_XDS_REJECTS, "type" => metric_type(&type_url).to_string()).increment(1);
                self.server.registry.update(self.id, |c| {
                    let t = c.types.entry(type_url).or_default();
                    t.history.answered(&nonce, false);
                    t.nacks += 1;
                    t.resources = resources;
                    t.last_nack = Some(NackInfo {
                        nonce,
                        version: generation.to_string(),
                        code: detail.code,
                        message: detail.message,
                        at: now_rfc3339(),
                    });
                });
            }
            Reply::Unknown => {
                tracing::debug!(type_url = %type_url, nonce = %nonce, nack = !accepted, "reply to an unknown or stale nonce ignored");
            }
        }
    }

    async fn push_all(&mut self, snap: &Snapshot) -> Result<(), End> {
        let mut responses = Vec::new();
        for (type_url, st) in self.types.iter_mut() {
            let view = Self::view_of(self.waypoint.as_ref(), snap, type_url);
            if let Some(resp) = st.next_response_from(snap, view, false) {
                responses.push(resp);
            }
        }
        for resp in responses {
            self.send(resp, snap.created).await?;
        }
        Ok(())
    }

    async fn send(&mut self, resp: DeltaDiscoveryResponse, since: Instant) -> Result<(), End> {
        let type_label = metric_type(&resp.type_url).to_string();
        let size = resp.encoded_len();
        let (nonce, version, type_url) = (
            resp.nonce.clone(),
            resp.system_version_info.clone(),
            resp.type_url.clone(),
        );
        let (updated, removed) = (resp.resources.len(), resp.removed_resources.len());
        self.tx.send(Ok(resp)).await.map_err(|_| End::ClientGone)?;
        metrics::counter!(PILOT_XDS_PUSHES, "type" => type_label.clone()).increment(1);
        metrics::histogram!(PILOT_XDS_CONFIG_SIZE_BYTES, "type" => type_label.clone())
            .record(size as f64);
        metrics::histogram!(PILOT_XDS_PUSH_TIME, "type" => type_label)
            .record(since.elapsed().as_secs_f64());
        tracing::debug!(type_url = %type_url, nonce = %nonce, version = %version, updated, removed, bytes = size, "pushed");
        let st = self.types.get_mut(&type_url);
        let (subscription, resources, built) = st
            .map(|s| (s.subscription(), s.resource_count(), s.take_built(&nonce)))
            .unwrap_or_default();
        let sent_at = now_rfc3339();
        self.server.registry.update(self.id, |c| {
            let t = c.types.entry(type_url).or_default();
            if let Some(b) = built {
                t.history.sent(Arc::new(SentResponse {
                    nonce: b.nonce,
                    version: b.generation.to_string(),
                    sent_at: sent_at.clone(),
                    resources: b.resources,
                    removed: b.removed,
                }));
            }
            t.subscription = subscription;
            t.resources = resources;
            t.pushes += 1;
            t.last_sent_nonce = nonce;
            t.last_sent_version = version;
            t.last_sent_at = Some(sent_at);
        });
        Ok(())
    }
}

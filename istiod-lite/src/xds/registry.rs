//! Connected xDS clients, for /debug/connections, /debug/config_dump and the `pilot_xds` gauge.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;

use super::PILOT_XDS;
use crate::model::Resource;

/// What we know about one connected client.
#[derive(Debug, Clone, Serialize)]
pub struct ClientInfo {
    /// Connection id (also in log spans).
    pub id: u64,
    /// Peer socket address.
    pub peer: Option<String>,
    /// Node.id of the first request.
    pub node_id: String,
    /// Node.metadata.NODE_NAME (equal to the token's node).
    pub node_name: String,
    /// ISTIO_VERSION metadata or build_version, else "unknown".
    pub version: String,
    /// RFC 3339 time of connection.
    pub connected_since: String,
    /// Per subscribed type URL.
    pub types: BTreeMap<String, TypeInfo>,
}

/// Per-type push and ACK state of a client.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TypeInfo {
    /// "*", "* + N names" or "N names".
    pub subscription: String,
    /// Resources the client holds (as far as we know).
    pub resources: usize,
    /// Responses sent.
    pub pushes: u64,
    /// Nonce of the last response sent.
    pub last_sent_nonce: String,
    /// Snapshot generation of the last response sent.
    pub last_sent_version: String,
    /// When the last response was sent.
    pub last_sent_at: Option<String>,
    /// Nonce of the last ACKed response.
    pub last_acked_nonce: String,
    /// Snapshot generation of the last ACKed response.
    pub last_acked_version: String,
    /// NACKs received.
    pub nacks: u64,
    /// The last NACK.
    pub last_nack: Option<NackInfo>,
    /// What the last responses carried (for /debug/config_dump; not in /debug/connections).
    #[serde(skip)]
    pub history: SentHistory,
}

/// What one response carried. Resources are the shared `Arc`s of the snapshot, so keeping them
/// costs a pointer each.
#[derive(Debug)]
pub struct SentResponse {
    /// Response nonce.
    pub nonce: String,
    /// `system_version_info` (snapshot generation).
    pub version: String,
    /// When it was handed to the stream (RFC 3339).
    pub sent_at: String,
    /// Added or changed resources.
    pub resources: Vec<Arc<Resource>>,
    /// Names of removed resources.
    pub removed: Vec<Arc<str>>,
}

/// An answered response and when the answer came.
#[derive(Debug, Clone)]
pub struct Answered {
    /// The response.
    pub response: Arc<SentResponse>,
    /// When the ACK or NACK was received (RFC 3339).
    pub at: String,
}

/// Unanswered responses remembered per type (as many as the stream state keeps in flight).
const MAX_UNANSWERED: usize = 32;

/// Per-type record of the last responses sent, ACKed and NACKed.
#[derive(Debug, Clone, Default)]
pub struct SentHistory {
    /// Sent but not yet answered, oldest first.
    unanswered: VecDeque<Arc<SentResponse>>,
    /// The last response sent.
    pub last_sent: Option<Arc<SentResponse>>,
    /// The last response ACKed.
    pub last_acked: Option<Answered>,
    /// The last response NACKed.
    pub last_nacked: Option<Answered>,
}

impl SentHistory {
    /// Records a response handed to the stream.
    pub fn sent(&mut self, r: Arc<SentResponse>) {
        self.unanswered.push_back(r.clone());
        while self.unanswered.len() > MAX_UNANSWERED {
            self.unanswered.pop_front();
        }
        self.last_sent = Some(r);
    }

    /// Records the client's reply to `nonce`. Replies come in order, so older unanswered
    /// responses are settled (as the stream state counts them: accepted) along the way.
    pub fn answered(&mut self, nonce: &str, accepted: bool) {
        let Some(pos) = self.unanswered.iter().position(|r| r.nonce == nonce) else {
            return;
        };
        let Some(response) = self.unanswered.drain(..=pos).next_back() else {
            return;
        };
        let answer = Some(Answered {
            response,
            at: now_rfc3339(),
        });
        if accepted {
            self.last_acked = answer;
        } else {
            self.last_nacked = answer;
        }
    }

    /// True when `nonce` is sent and not yet answered.
    pub fn is_unanswered(&self, nonce: &str) -> bool {
        self.unanswered.iter().any(|r| r.nonce == nonce)
    }
}

/// A rejected response.
#[derive(Debug, Clone, Serialize)]
pub struct NackInfo {
    /// Nonce of the rejected response.
    pub nonce: String,
    /// Generation of the rejected response.
    pub version: String,
    /// error_detail.code.
    pub code: i32,
    /// error_detail.message.
    pub message: String,
    /// When it was received.
    pub at: String,
}

/// Shared registry of connected clients.
#[derive(Debug, Default)]
pub struct ClientRegistry {
    next_id: AtomicU64,
    clients: Mutex<BTreeMap<u64, ClientInfo>>,
}

impl ClientRegistry {
    /// A fresh connection id.
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Adds a client; it is removed (and the gauge decremented) when the guard drops.
    pub fn register(self: &Arc<Self>, info: ClientInfo) -> ClientGuard {
        let id = info.id;
        let version = info.version.clone();
        metrics::gauge!(PILOT_XDS, "version" => version.clone()).increment(1.0);
        self.lock().insert(id, info);
        ClientGuard {
            registry: self.clone(),
            id,
            version,
        }
    }

    /// Mutates a client's entry.
    pub fn update(&self, id: u64, f: impl FnOnce(&mut ClientInfo)) {
        if let Some(c) = self.lock().get_mut(&id) {
            f(c);
        }
    }

    /// Snapshot of all connected clients.
    pub fn list(&self) -> Vec<ClientInfo> {
        self.lock().values().cloned().collect()
    }

    /// The connected clients `proxy_id` names, newest first. It matches the node id, the node
    /// name, or Istio's `<pod>.<namespace>` proxy id (the third `~` field of the node id).
    pub fn find(&self, proxy_id: &str) -> Vec<ClientInfo> {
        let mut found: Vec<ClientInfo> = self
            .lock()
            .values()
            .filter(|c| {
                c.node_id == proxy_id
                    || c.node_name == proxy_id
                    || c.node_id.split('~').nth(2) == Some(proxy_id)
            })
            .cloned()
            .collect();
        found.reverse();
        found
    }

    /// Number of connected clients.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True when no client is connected.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, ClientInfo>> {
        // A panic while holding this lock leaves plain data behind; keep serving it.
        self.clients.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Removes a client from the registry when its stream ends.
#[derive(Debug)]
pub struct ClientGuard {
    registry: Arc<ClientRegistry>,
    id: u64,
    version: String,
}

impl Drop for ClientGuard {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.id);
        metrics::gauge!(PILOT_XDS, "version" => self.version.clone()).decrement(1.0);
    }
}

/// Current time as RFC 3339.
pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

//! Connected xDS clients, for /debug/connections and the `pilot_xds` gauge.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;

use super::PILOT_XDS;

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

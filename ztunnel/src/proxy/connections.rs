//! Open proxied connections, for `/config_dump` and for re-authorizing inbound connections when
//! policies change: one that a new policy no longer allows is closed (Istio's behaviour).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use mesh_identity::spiffe::Identity;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::state::State;

/// One open connection as shown in `/config_dump`.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionDump {
    pub direction: &'static str,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub src_identity: Option<String>,
    pub dst_identity: Option<String>,
    pub mutual_tls: bool,
    pub started: String,
}

struct Entry {
    dump: ConnectionDump,
    /// For inbound connections: the peer identity and destination workload, re-authorized on change.
    inbound: Option<(Option<Identity>, String)>,
    cancel: CancellationToken,
}

/// All open connections of this ztunnel.
#[derive(Default)]
pub struct Registry {
    next: AtomicU64,
    open: Mutex<HashMap<u64, Entry>>,
}

/// Removes its connection from the registry when dropped.
pub struct Registration {
    registry: Arc<Registry>,
    id: u64,
    /// Fires when the connection must be closed.
    pub cancel: CancellationToken,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.registry
            .open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.id);
    }
}

impl Registry {
    /// Registers an outbound connection (dump only).
    pub fn outbound(self: &Arc<Self>, dump: ConnectionDump) -> Registration {
        self.insert(dump, None)
    }

    /// Registers an inbound connection to the local workload `dst_uid`, authorized for `peer`.
    pub fn inbound(
        self: &Arc<Self>,
        dump: ConnectionDump,
        peer: Option<Identity>,
        dst_uid: String,
    ) -> Registration {
        self.insert(dump, Some((peer, dst_uid)))
    }

    fn insert(
        self: &Arc<Self>,
        dump: ConnectionDump,
        inbound: Option<(Option<Identity>, String)>,
    ) -> Registration {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let cancel = CancellationToken::new();
        self.open.lock().unwrap_or_else(|e| e.into_inner()).insert(
            id,
            Entry {
                dump,
                inbound,
                cancel: cancel.clone(),
            },
        );
        Registration {
            registry: self.clone(),
            id,
            cancel,
        }
    }

    /// Re-authorizes every inbound connection against the current policies and closes the ones
    /// no longer allowed (or whose destination workload is gone). Returns how many were closed.
    pub fn revalidate(&self, state: &State) -> usize {
        let open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let mut closed = 0;
        for e in open.values() {
            let Some((peer, uid)) = &e.inbound else {
                continue;
            };
            if e.cancel.is_cancelled() {
                continue;
            }
            let decision = match state
                .workload_by_ip(e.dump.dst.ip())
                .filter(|w| &w.uid == uid)
            {
                Some(w) => {
                    let conn = mesh_policy::Connection {
                        src_identity: peer.as_ref(),
                        src_ip: e.dump.src.ip(),
                        dst_ip: e.dump.dst.ip(),
                        dst_port: e.dump.dst.port(),
                    };
                    super::authorize(state, &w, &conn)
                }
                None => mesh_policy::Decision::Deny("destination workload removed".into()),
            };
            if let mesh_policy::Decision::Deny(why) = decision {
                tracing::info!(src = %e.dump.src, dst = %e.dump.dst, reason = %why, "closing open connection: no longer authorized");
                metrics::counter!("ztunnel_connections_closed_by_policy_total").increment(1);
                e.cancel.cancel();
                closed += 1;
            }
        }
        closed
    }

    /// Open connections, oldest first.
    pub fn dump(&self) -> Vec<ConnectionDump> {
        let open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<(u64, ConnectionDump)> =
            open.iter().map(|(id, e)| (*id, e.dump.clone())).collect();
        v.sort_by_key(|(id, _)| *id);
        v.into_iter().map(|(_, d)| d).collect()
    }
}

impl ConnectionDump {
    /// The dump row for a connection described by `info`.
    pub fn of(info: &crate::metrics::ConnectionInfo, direction: &'static str) -> Self {
        let unspecified = SocketAddr::from(([0, 0, 0, 0], 0));
        ConnectionDump {
            direction,
            src: info.src_addr.unwrap_or(unspecified),
            dst: info.dst_addr.unwrap_or(unspecified),
            src_identity: info.src_identity.clone(),
            dst_identity: info.dst_identity.clone(),
            mutual_tls: info.mtls,
            started: now(),
        }
    }
}

/// Now as RFC 3339, for `started`.
pub fn now() -> String {
    time::OffsetDateTime::from(SystemTime::now())
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Re-authorizes open connections after every state change, until shutdown.
pub async fn revalidate_on_change(
    registry: Arc<Registry>,
    state: Arc<State>,
    shutdown: CancellationToken,
) {
    let mut changes = state.subscribe();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            r = changes.changed() => if r.is_err() { return },
        }
        registry.revalidate(&state);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{convert_workload, Address};
    use mesh_proto::{security as sec, workload as pb};

    fn dump(direction: &'static str) -> ConnectionDump {
        ConnectionDump {
            direction,
            src: "10.0.0.9:5000".parse().expect("addr"),
            dst: "10.0.0.1:8080".parse().expect("addr"),
            src_identity: None,
            dst_identity: None,
            mutual_tls: true,
            started: now(),
        }
    }

    #[test]
    fn a_new_deny_policy_closes_matching_inbound_connections_only() {
        let state = State::default();
        let w = pb::Workload {
            uid: "u1".into(),
            name: "server".into(),
            namespace: "ns".into(),
            addresses: vec![vec![10, 0, 0, 1]],
            ..Default::default()
        };
        state.upsert(Address::Workload(convert_workload(w).expect("workload")));
        let reg = Arc::new(Registry::default());
        let client = Identity::new("cluster.local", "a", "client");
        let other = Identity::new("cluster.local", "a", "other");
        let denied = reg.inbound(dump("inbound"), Some(client), "u1".into());
        let kept = reg.inbound(dump("inbound"), Some(other), "u1".into());
        let outbound = reg.outbound(dump("outbound"));
        assert_eq!(reg.revalidate(&state), 0);
        assert_eq!(reg.dump().len(), 3);

        let principal = sec::StringMatch {
            match_type: Some(sec::string_match::MatchType::Exact(
                "cluster.local/ns/a/sa/client".into(),
            )),
        };
        let policy = mesh_policy::Policy::from_proto(sec::Authorization {
            name: "deny-client".into(),
            namespace: "ns".into(),
            scope: sec::Scope::Namespace as i32,
            action: sec::Action::Deny as i32,
            rules: vec![sec::Rule {
                clauses: vec![sec::Clause {
                    matches: vec![sec::Match {
                        principals: vec![principal],
                        ..Default::default()
                    }],
                }],
            }],
            ..Default::default()
        })
        .expect("policy");
        state.upsert_policy("ns/deny-client", policy);
        assert_eq!(reg.revalidate(&state), 1);
        assert!(denied.cancel.is_cancelled());
        assert!(!kept.cancel.is_cancelled());
        assert!(!outbound.cancel.is_cancelled());

        // The workload leaving closes what is left of its inbound connections.
        state.remove_address("u1");
        assert_eq!(reg.revalidate(&state), 1);
        assert!(kept.cancel.is_cancelled());
        drop((denied, kept));
        assert_eq!(
            reg.dump().len(),
            1,
            "registrations leave the registry when dropped"
        );
    }
}

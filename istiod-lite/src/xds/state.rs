//! Per-stream, per-type delta xDS bookkeeping: what the client has, what is in flight, and the
//! next response. Pure logic (no IO) so it is unit-tested directly.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use mesh_proto::xds::{DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource as XdsResource};

use crate::model::{format_version, parse_version, Resource, Snapshot, TypeSnapshot};

/// A fresh nonce: process-unique, and distinct across restarts (seeded from the clock).
pub fn next_nonce() -> String {
    static SEED: OnceLock<u64> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let seed = *SEED.get_or_init(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
    });
    format!(
        "{:x}",
        seed.wrapping_add(COUNTER.fetch_add(1, Ordering::Relaxed))
    )
}

/// A type with no resources (types we do not serve, waypoints that do not exist).
pub fn empty_type() -> &'static TypeSnapshot {
    static EMPTY: OnceLock<TypeSnapshot> = OnceLock::new();
    EMPTY.get_or_init(TypeSnapshot::default)
}

/// Unanswered responses remembered per type; ztunnel answers each one right away.
const MAX_IN_FLIGHT: usize = 32;

/// A response sent but not yet ACKed or NACKed, with what to undo on NACK.
#[derive(Debug)]
struct InFlight {
    nonce: String,
    generation: u64,
    /// Previous view entries of every name the response touched.
    undo: Vec<(Arc<str>, Option<u64>)>,
}

/// Outcome of a client's reply to one of our responses.
#[derive(Debug, PartialEq, Eq)]
pub enum Reply {
    /// Accepted the response with this generation.
    Ack {
        /// Snapshot generation of the ACKed response.
        generation: u64,
    },
    /// Rejected it; the view was rolled back.
    Nack {
        /// Snapshot generation of the NACKed response.
        generation: u64,
    },
    /// A nonce we do not have in flight (stale or from another server).
    Unknown,
}

/// What the last built response carried, picked up by the stream for the debug history.
#[derive(Debug)]
pub struct Built {
    /// Nonce of the response.
    pub nonce: String,
    /// Snapshot generation it was built from.
    pub generation: u64,
    /// Added or changed resources.
    pub resources: Vec<Arc<Resource>>,
    /// Removed names.
    pub removed: Vec<Arc<str>>,
}

/// One subscribed type on one stream.
#[derive(Debug)]
pub struct TypeState {
    type_url: String,
    wildcard: bool,
    names: BTreeSet<String>,
    /// Resources the client has (or will have once in-flight responses are applied): name → version.
    view: HashMap<Arc<str>, u64>,
    /// Generation `view` is an exact copy of (wildcard subscriptions only); enables the
    /// precomputed-delta fast path.
    view_generation: Option<u64>,
    in_flight: VecDeque<InFlight>,
    /// Content of the last response built, until the stream takes it.
    built: Option<Built>,
}

impl TypeState {
    /// Starts a subscription from the type's first request (wildcard when it names nothing;
    /// `initial_resource_versions` tell what a reconnecting client already has).
    pub fn new(req: &DeltaDiscoveryRequest) -> Self {
        let mut s = TypeState {
            type_url: req.type_url.clone(),
            wildcard: req.resource_names_subscribe.is_empty()
                && req.resource_names_unsubscribe.is_empty(),
            names: BTreeSet::new(),
            view: req
                .initial_resource_versions
                .iter()
                .map(|(name, v)| (Arc::from(name.as_str()), parse_version(v)))
                .collect(),
            view_generation: None,
            in_flight: VecDeque::new(),
            built: None,
        };
        s.update_subscription(
            &req.resource_names_subscribe,
            &req.resource_names_unsubscribe,
        );
        s
    }

    /// Applies subscribe/unsubscribe lists (`*` toggles the wildcard). Returns true if the
    /// subscription changed.
    pub fn update_subscription(&mut self, subscribe: &[String], unsubscribe: &[String]) -> bool {
        let mut changed = false;
        for n in subscribe {
            changed |= if n == "*" {
                !std::mem::replace(&mut self.wildcard, true)
            } else {
                self.names.insert(n.clone())
            };
        }
        for n in unsubscribe {
            changed |= if n == "*" {
                std::mem::replace(&mut self.wildcard, false)
            } else {
                self.names.remove(n)
            };
            if n != "*" {
                // An unsubscribed resource is dropped by the client itself.
                self.view.remove(n.as_str());
            }
        }
        if changed {
            self.view_generation = None;
        }
        changed
    }

    /// Human summary of the subscription for /debug.
    pub fn subscription(&self) -> String {
        match (self.wildcard, self.names.len()) {
            (true, 0) => "*".to_string(),
            (true, n) => format!("* + {n} names"),
            (false, n) => format!("{n} names"),
        }
    }

    /// Number of resources the client has (as far as we know).
    pub fn resource_count(&self) -> usize {
        self.view.len()
    }

    /// The response that brings the client from its view to `snap`; `None` when nothing changed,
    /// unless `always` (a type's first response is sent even when empty so clients get ready).
    pub fn next_response(
        &mut self,
        snap: &Snapshot,
        always: bool,
    ) -> Option<DeltaDiscoveryResponse> {
        let ts = snap.get(&self.type_url).unwrap_or_else(|| empty_type());
        self.next_response_from(snap, ts, always)
    }

    /// [`TypeState::next_response`] from a given view of the type (a waypoint's own routes)
    /// instead of the snapshot's shared one.
    pub fn next_response_from(
        &mut self,
        snap: &Snapshot,
        ts: &TypeSnapshot,
        always: bool,
    ) -> Option<DeltaDiscoveryResponse> {
        let (updates, removed) = self.changes(ts);
        if updates.is_empty() && removed.is_empty() && !always {
            self.view_generation = self.wildcard.then_some(snap.generation);
            return None;
        }

        let mut undo = Vec::with_capacity(updates.len() + removed.len());
        for r in &updates {
            undo.push((r.name.clone(), self.view.insert(r.name.clone(), r.version)));
        }
        for name in &removed {
            undo.push((name.clone(), self.view.remove(name)));
        }
        self.view_generation = (self.wildcard && self.names.is_empty()).then_some(snap.generation);
        let nonce = next_nonce();
        self.in_flight.push_back(InFlight {
            nonce: nonce.clone(),
            generation: snap.generation,
            undo,
        });
        // A client that never replies must not grow our memory: forget (count as accepted)
        // the oldest unanswered responses.
        while self.in_flight.len() > MAX_IN_FLIGHT {
            self.in_flight.pop_front();
        }
        let response = DeltaDiscoveryResponse {
            system_version_info: snap.generation.to_string(),
            resources: updates
                .iter()
                .map(|r| XdsResource {
                    name: r.name.to_string(),
                    version: format_version(r.version),
                    resource: Some(r.any.clone()),
                    ..Default::default()
                })
                .collect(),
            type_url: self.type_url.clone(),
            removed_resources: removed.iter().map(|n| n.to_string()).collect(),
            nonce: nonce.clone(),
        };
        self.built = Some(Built {
            nonce,
            generation: snap.generation,
            resources: updates,
            removed,
        });
        Some(response)
    }

    /// Takes the content of the response with `nonce` if it is the last one built.
    pub fn take_built(&mut self, nonce: &str) -> Option<Built> {
        match &self.built {
            Some(b) if b.nonce == nonce => self.built.take(),
            _ => None,
        }
    }

    fn changes(&self, ts: &TypeSnapshot) -> (Vec<Arc<Resource>>, Vec<Arc<str>>) {
        let differs = |r: &Resource| self.view.get(&r.name) != Some(&r.version);
        let mut updates = Vec::new();
        let mut removed = Vec::new();
        if self.wildcard && self.names.is_empty() {
            match &ts.delta {
                // The client is exactly at the previous generation: the shared delta is its delta.
                Some(d) if self.view_generation == Some(d.prev_generation) => {
                    updates.extend(
                        d.updated
                            .iter()
                            .filter_map(|n| ts.resources.get(n))
                            .filter(|r| differs(r))
                            .cloned(),
                    );
                    removed.extend(
                        d.removed
                            .iter()
                            .filter(|n| self.view.contains_key(*n))
                            .cloned(),
                    );
                }
                _ => {
                    updates.extend(ts.resources.values().filter(|r| differs(r)).cloned());
                    removed.extend(
                        self.view
                            .keys()
                            .filter(|n| !ts.resources.contains_key(*n))
                            .cloned(),
                    );
                }
            }
        } else if self.wildcard {
            updates.extend(ts.resources.values().filter(|r| differs(r)).cloned());
            removed.extend(
                self.view
                    .keys()
                    .filter(|n| !ts.resources.contains_key(*n))
                    .cloned(),
            );
        } else {
            for name in &self.names {
                match ts.resources.get(name.as_str()) {
                    Some(r) if differs(r) => updates.push(r.clone()),
                    Some(_) => {}
                    None => {
                        if let Some((n, _)) = self.view.get_key_value(name.as_str()) {
                            removed.push(n.clone());
                        }
                    }
                }
            }
        }
        removed.sort();
        (updates, removed)
    }

    /// Handles the client's reply to `nonce`. Replies come in order, so responses before the
    /// replied one count as accepted. A NACK rolls the view back to what the client last
    /// accepted: the rejected resources are sent again with the next change.
    pub fn reply(&mut self, nonce: &str, accepted: bool) -> Reply {
        let Some(pos) = self.in_flight.iter().position(|f| f.nonce == nonce) else {
            return Reply::Unknown;
        };
        self.in_flight.drain(..pos);
        let Some(entry) = self.in_flight.pop_front() else {
            return Reply::Unknown;
        };
        if accepted {
            return Reply::Ack {
                generation: entry.generation,
            };
        }
        for (name, old) in entry.undo.into_iter().rev() {
            match old {
                Some(v) => self.view.insert(name, v),
                None => self.view.remove(&name),
            };
        }
        self.view_generation = None;
        Reply::Nack {
            generation: entry.generation,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{self, ModelParams};
    use crate::source::{parse_file, ConfigSnapshot};
    use mesh_proto::ADDRESS_TYPE_URL;

    fn snap(yaml: &str, prev: Option<&Snapshot>) -> Snapshot {
        let parsed = parse_file(std::path::Path::new("t.yaml"), yaml);
        assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
        let cfg = ConfigSnapshot::from_objects(&parsed.objects);
        let params = ModelParams {
            trust_domain: "cluster.local".into(),
            cluster_id: "Kubernetes".into(),
            root_namespace: "istio-system".into(),
        };
        model::build(&cfg, &params, prev, prev.map_or(1, |p| p.generation + 1))
    }

    fn pod(name: &str, ip: &str) -> String {
        format!(
            "---\nkind: Pod\nmetadata: {{name: {name}, namespace: ns}}\nstatus: {{podIP: {ip}}}\n"
        )
    }

    fn wildcard(initial: &[(&str, &str)]) -> TypeState {
        TypeState::new(&DeltaDiscoveryRequest {
            type_url: ADDRESS_TYPE_URL.into(),
            initial_resource_versions: initial
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        })
    }

    fn names(r: &DeltaDiscoveryResponse) -> Vec<String> {
        r.resources.iter().map(|r| r.name.clone()).collect()
    }

    #[test]
    fn initial_then_incremental_then_remove() {
        let s1 = snap(&(pod("a", "10.0.0.1") + &pod("b", "10.0.0.2")), None);
        let mut st = wildcard(&[]);
        let r = st.next_response(&s1, true).unwrap();
        assert_eq!(
            names(&r),
            vec!["Kubernetes//Pod/ns/a", "Kubernetes//Pod/ns/b"]
        );
        assert_eq!(st.reply(&r.nonce, true), Reply::Ack { generation: 1 });
        assert!(st.next_response(&s1, false).is_none());

        let s2 = snap(&(pod("a", "10.0.0.9") + &pod("c", "10.0.0.3")), Some(&s1));
        let r = st.next_response(&s2, false).unwrap();
        assert_eq!(
            names(&r),
            vec!["Kubernetes//Pod/ns/a", "Kubernetes//Pod/ns/c"]
        );
        assert_eq!(r.removed_resources, vec!["Kubernetes//Pod/ns/b"]);
        assert_ne!(r.nonce, "");
    }

    #[test]
    fn first_response_is_sent_even_when_empty() {
        let s = snap("", None);
        let mut st = wildcard(&[]);
        let r = st.next_response(&s, true).unwrap();
        assert!(r.resources.is_empty() && r.removed_resources.is_empty());
    }

    #[test]
    fn initial_versions_skip_known_and_remove_gone() {
        let s1 = snap(&(pod("a", "10.0.0.1") + &pod("b", "10.0.0.2")), None);
        let va =
            s1.get(ADDRESS_TYPE_URL).unwrap().resources["Kubernetes//Pod/ns/a"].version_string();
        let mut st = wildcard(&[
            ("Kubernetes//Pod/ns/a", &va),
            ("Kubernetes//Pod/ns/gone", "0000000000000001"),
        ]);
        let r = st.next_response(&s1, true).unwrap();
        assert_eq!(names(&r), vec!["Kubernetes//Pod/ns/b"]);
        assert_eq!(r.removed_resources, vec!["Kubernetes//Pod/ns/gone"]);
    }

    #[test]
    fn nack_rolls_back_so_the_next_change_resends() {
        let s1 = snap(&pod("a", "10.0.0.1"), None);
        let mut st = wildcard(&[]);
        let r1 = st.next_response(&s1, true).unwrap();
        st.reply(&r1.nonce, true);
        let s2 = snap(&(pod("a", "10.0.0.1") + &pod("b", "10.0.0.2")), Some(&s1));
        let r2 = st.next_response(&s2, false).unwrap();
        assert_eq!(st.reply(&r2.nonce, false), Reply::Nack { generation: 2 });
        assert_eq!(st.reply(&r2.nonce, false), Reply::Unknown);
        let s3 = snap(
            &(pod("a", "10.0.0.1") + &pod("b", "10.0.0.2") + &pod("c", "10.0.0.3")),
            Some(&s2),
        );
        let r3 = st.next_response(&s3, false).unwrap();
        assert_eq!(
            names(&r3),
            vec!["Kubernetes//Pod/ns/b", "Kubernetes//Pod/ns/c"]
        );
    }

    #[test]
    fn explicit_names_only() {
        let s1 = snap(&(pod("a", "10.0.0.1") + &pod("b", "10.0.0.2")), None);
        let mut st = TypeState::new(&DeltaDiscoveryRequest {
            type_url: ADDRESS_TYPE_URL.into(),
            resource_names_subscribe: vec!["*".into(), "Kubernetes//Pod/ns/b".into()],
            resource_names_unsubscribe: vec!["*".into()],
            ..Default::default()
        });
        let r = st.next_response(&s1, true).unwrap();
        assert_eq!(names(&r), vec!["Kubernetes//Pod/ns/b"]);
        let s2 = snap(&pod("a", "10.0.0.1"), Some(&s1));
        let r = st.next_response(&s2, false).unwrap();
        assert_eq!(r.removed_resources, vec!["Kubernetes//Pod/ns/b"]);
    }
}

//! The model: config snapshot → per-type xDS resources, versioned, with the delta to the
//! previous snapshot precomputed once for all clients.

pub mod authorization;
pub mod gateway_status;
pub mod l7_authz;
pub mod peer_authentication;
pub mod routes;
pub mod service;
pub mod waypoint;
pub mod workload;

#[cfg(test)]
mod test_fixtures;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mesh_proto::workload::{address, Address};
use mesh_proto::{to_any, ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL, SERVICE_ROUTES_TYPE_URL};
use tokio::sync::watch;

use self::authorization::{PolicyWarning, POLICY_WARNINGS_TOTAL};
use crate::source::{ConfigSnapshot, ObjectKey};

/// Metric: debounced pushes triggered by config changes (Istio's name).
pub const PUSH_TRIGGERS: &str = "pilot_push_triggers";
/// Metric: number of services in the model (Istio's name).
pub const SERVICES: &str = "pilot_services";
/// Metric: number of workloads in the model.
pub const WORKLOADS: &str = "istiod_workloads";

/// Registers this module's metric descriptions.
pub fn describe_metrics() {
    metrics::describe_counter!(
        PUSH_TRIGGERS,
        "Model rebuilds pushed to clients, by trigger type"
    );
    metrics::describe_gauge!(SERVICES, "Services in the model");
    metrics::describe_gauge!(WORKLOADS, "Workloads in the model");
    metrics::describe_counter!(
        POLICY_WARNINGS_TOTAL,
        "Security policies ztunnel enforces differently from what is written (or not at all), by policy"
    );
}

/// The types every client is served, in the order they are pushed on a change.
pub const TYPE_URLS: [&str; 2] = [ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL];

/// Inputs of translation that are not config objects.
#[derive(Debug, Clone)]
pub struct ModelParams {
    /// Trust domain written into workloads.
    pub trust_domain: String,
    /// Cluster id (uid prefix and `Workload.cluster_id`).
    pub cluster_id: String,
    /// Namespace whose selector-less security policies apply mesh-wide.
    pub root_namespace: String,
}

/// One resource, encoded once and shared by every client.
#[derive(Debug)]
pub struct Resource {
    /// Resource name.
    pub name: Arc<str>,
    /// Hash of the encoded bytes; sent as 16 hex digits.
    pub version: u64,
    /// The encoded resource.
    pub any: prost_types::Any,
}

impl Resource {
    fn new(type_url: &str, name: String, msg: &impl prost::Message) -> Self {
        let any = to_any(type_url, msg);
        Resource {
            name: name.into(),
            version: version_of(&any.value),
            any,
        }
    }

    /// The version string sent on the wire.
    pub fn version_string(&self) -> String {
        format_version(self.version)
    }
}

/// Version marker for "the client said it has this resource with a version we cannot parse":
/// never equal to a real version, so the resource is re-sent.
pub const UNKNOWN_VERSION: u64 = u64::MAX;

/// First 8 bytes of SHA-256: stable across restarts and builds, so a reconnecting client's
/// `initial_resource_versions` still match after istiod-lite restarts.
fn version_of(bytes: &[u8]) -> u64 {
    let d = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut b = [0u8; 8];
    b.copy_from_slice(&d.as_ref()[..8]);
    u64::from_be_bytes(b).min(UNKNOWN_VERSION - 1)
}

/// 16 hex digits.
pub fn format_version(v: u64) -> String {
    format!("{v:016x}")
}

/// Parses a version string a client sent back (anything else maps to [`UNKNOWN_VERSION`]).
pub fn parse_version(s: &str) -> u64 {
    if s.len() == 16 {
        u64::from_str_radix(s, 16).unwrap_or(UNKNOWN_VERSION)
    } else {
        UNKNOWN_VERSION
    }
}

/// Resources of one type by name.
pub type ResourceMap = BTreeMap<Arc<str>, Arc<Resource>>;

/// What changed in one type since the previous snapshot.
#[derive(Debug, Default)]
pub struct TypeDelta {
    /// Generation this delta starts from.
    pub prev_generation: u64,
    /// Added or changed names.
    pub updated: Vec<Arc<str>>,
    /// Removed names.
    pub removed: Vec<Arc<str>>,
}

impl TypeDelta {
    /// True when nothing changed.
    pub fn is_empty(&self) -> bool {
        self.updated.is_empty() && self.removed.is_empty()
    }
}

/// All resources of one type.
#[derive(Debug, Default)]
pub struct TypeSnapshot {
    /// Resources by name.
    pub resources: ResourceMap,
    /// Change since the previous snapshot, when there was one.
    pub delta: Option<TypeDelta>,
}

/// The complete xDS state at one generation.
#[derive(Debug)]
pub struct Snapshot {
    /// Increments with each published snapshot.
    pub generation: u64,
    /// When it was built (push-time metric starts here).
    pub created: Instant,
    /// Per type URL.
    pub types: BTreeMap<&'static str, TypeSnapshot>,
    /// Policy warnings of this generation (each logged and counted once, when it first appears).
    pub policy_warnings: BTreeSet<PolicyWarning>,
    /// Per-waypoint views of `ambient.route.v1.ServiceRoutes`, by Gateway `namespace/name`:
    /// each waypoint is served only its own Services' routes.
    pub waypoints: BTreeMap<ObjectKey, TypeSnapshot>,
}

impl Snapshot {
    /// An empty snapshot at generation 0.
    pub fn empty() -> Self {
        Snapshot {
            generation: 0,
            created: Instant::now(),
            types: TYPE_URLS
                .iter()
                .map(|t| (*t, TypeSnapshot::default()))
                .collect(),
            policy_warnings: BTreeSet::new(),
            waypoints: BTreeMap::new(),
        }
    }

    /// The route resources of waypoint `key` (None when no such waypoint Gateway exists).
    pub fn waypoint(&self, key: &ObjectKey) -> Option<&TypeSnapshot> {
        self.waypoints.get(key)
    }

    /// Resources of a type (None for types we do not serve).
    pub fn get(&self, type_url: &str) -> Option<&TypeSnapshot> {
        self.types.get(type_url)
    }

    /// True if any type changed relative to the previous snapshot.
    pub fn has_changes(&self) -> bool {
        self.types
            .values()
            .chain(self.waypoints.values())
            .any(|t| t.delta.as_ref().is_none_or(|d| !d.is_empty()))
    }
}

/// Translates `cfg` into a snapshot; with `prev`, records the delta from it.
pub fn build(
    cfg: &ConfigSnapshot,
    params: &ModelParams,
    prev: Option<&Snapshot>,
    generation: u64,
) -> Snapshot {
    let mut addresses = ResourceMap::new();
    let policies = authorization::Policies::build(cfg, &params.root_namespace);
    let l7 = l7_authz::L7Security::build(cfg, &params.root_namespace);
    let mut warnings = policies.warnings.clone();
    warnings.extend(l7.warnings.iter().cloned());
    let policy_warnings = report_policy_warnings(warnings, prev);
    let workloads = workload::translate(cfg, params, &policies);
    let services = service::translate(cfg);
    metrics::gauge!(WORKLOADS).set(workloads.len() as f64);
    metrics::gauge!(SERVICES).set(services.len() as f64);
    for (name, w) in workloads {
        let addr = Address {
            r#type: Some(address::Type::Workload(w)),
        };
        insert(&mut addresses, Resource::new(ADDRESS_TYPE_URL, name, &addr));
    }
    for (name, s) in services {
        let addr = Address {
            r#type: Some(address::Type::Service(s)),
        };
        insert(&mut addresses, Resource::new(ADDRESS_TYPE_URL, name, &addr));
    }
    let mut authz = ResourceMap::new();
    for (name, a) in policies.resources {
        insert(&mut authz, Resource::new(AUTHORIZATION_TYPE_URL, name, &a));
    }

    let mut types = BTreeMap::new();
    for (type_url, resources) in [
        (ADDRESS_TYPE_URL, addresses),
        (AUTHORIZATION_TYPE_URL, authz),
    ] {
        let delta = prev
            .and_then(|p| p.get(type_url).map(|old| (p.generation, old)))
            .map(|(g, old)| diff(g, &old.resources, &resources));
        types.insert(type_url, TypeSnapshot { resources, delta });
    }
    let mut waypoints = BTreeMap::new();
    for (key, routes) in routes::translate(cfg, params) {
        let mut resources = ResourceMap::new();
        for (name, mut r) in routes {
            // L7 security rides in each Service's routes (l7_authz).
            r.security = l7.for_service(
                cfg,
                &key,
                &ObjectKey::new(r.namespace.clone(), r.name.clone()),
            );
            insert(
                &mut resources,
                Resource::new(SERVICE_ROUTES_TYPE_URL, name, &r),
            );
        }
        let delta = prev.map(|p| {
            let empty = ResourceMap::new();
            let old = p.waypoints.get(&key).map_or(&empty, |t| &t.resources);
            diff(p.generation, old, &resources)
        });
        waypoints.insert(key, TypeSnapshot { resources, delta });
    }
    // A waypoint Gateway that went away keeps an empty view for one generation, so its
    // connected clients are sent the removals.
    if let Some(p) = prev {
        for (key, old) in &p.waypoints {
            if !waypoints.contains_key(key) && !old.resources.is_empty() {
                let resources = ResourceMap::new();
                let delta = Some(diff(p.generation, &old.resources, &resources));
                waypoints.insert(key.clone(), TypeSnapshot { resources, delta });
            }
        }
    }
    Snapshot {
        generation,
        created: Instant::now(),
        types,
        policy_warnings,
        waypoints,
    }
}

/// Logs and counts the warnings `prev` did not have: every rebuild translates every policy
/// again, but an operator should hear about a problem once, when it appears.
fn report_policy_warnings(
    warnings: Vec<PolicyWarning>,
    prev: Option<&Snapshot>,
) -> BTreeSet<PolicyWarning> {
    let warnings: BTreeSet<PolicyWarning> = warnings.into_iter().collect();
    for w in &warnings {
        if prev.is_some_and(|p| p.policy_warnings.contains(w)) {
            continue;
        }
        tracing::warn!(kind = w.kind, policy = %w.policy, field = %w.field, "{}", w.message);
        metrics::counter!(POLICY_WARNINGS_TOTAL, "policy" => w.policy.clone()).increment(1);
    }
    warnings
}

fn insert(map: &mut ResourceMap, r: Resource) {
    map.insert(r.name.clone(), Arc::new(r));
}

fn diff(prev_generation: u64, old: &ResourceMap, new: &ResourceMap) -> TypeDelta {
    let updated = new
        .iter()
        .filter(|(name, r)| old.get(*name).is_none_or(|o| o.version != r.version))
        .map(|(name, _)| name.clone())
        .collect();
    let removed = old
        .keys()
        .filter(|name| !new.contains_key(*name))
        .cloned()
        .collect();
    TypeDelta {
        prev_generation,
        updated,
        removed,
    }
}

/// Rebuilds the snapshot after config changes, debounced: a push starts once the config has
/// been quiet for `debounce` (or after `max(debounce, 500 ms)` of continuous changes, so edits
/// still reach clients within a second).
pub async fn run_publisher(
    mut config: watch::Receiver<Arc<ConfigSnapshot>>,
    snapshots: watch::Sender<Arc<Snapshot>>,
    params: ModelParams,
    debounce: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let max_wait = debounce.max(Duration::from_millis(500));
    loop {
        tokio::select! {
            r = config.changed() => if r.is_err() { return },
            _ = shutdown.changed() => return,
        }
        let started = Instant::now();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(debounce) => break,
                r = config.changed() => {
                    if r.is_err() { return }
                    if started.elapsed() >= max_wait { break }
                }
                _ = shutdown.changed() => return,
            }
        }
        let cfg = config.borrow_and_update().clone();
        let prev = snapshots.borrow().clone();
        let prev_for_build = prev.clone();
        let p = params.clone();
        let generation = prev.generation + 1;
        // Translating and encoding thousands of objects is CPU work: keep it off the reactor.
        let built =
            tokio::task::spawn_blocking(move || build(&cfg, &p, Some(&prev_for_build), generation))
                .await;
        let snap = match built {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "model build task failed; keeping the previous snapshot");
                continue;
            }
        };
        if !snap.has_changes() {
            tracing::debug!(
                generation,
                "config changed but no xDS resource did; nothing to push"
            );
            // Still remember new policy warnings (e.g. an AUDIT policy, which sends nothing) so
            // they are not reported again by the next rebuild. Clients see an empty delta.
            if snap.policy_warnings != prev.policy_warnings {
                snapshots.send_replace(Arc::new(snap));
            }
            continue;
        }
        metrics::counter!(PUSH_TRIGGERS, "type" => "config").increment(1);
        for (t, d) in snap
            .types
            .iter()
            .filter_map(|(t, ts)| Some((t, ts.delta.as_ref()?)))
        {
            if !d.is_empty() {
                tracing::info!(
                    generation,
                    type_url = t,
                    updated = d.updated.len(),
                    removed = d.removed.len(),
                    "model updated"
                );
            }
        }
        snapshots.send_replace(Arc::new(snap));
    }
}

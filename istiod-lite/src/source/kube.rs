//! Kubernetes config source: one kube-runtime watcher per kind, converted to the same typed
//! objects the file source produces, merged into the same [`ConfigSnapshot`].
//!
//! Every kind is read as a [`DynamicObject`] and decoded by [`decode_kind`], so a Pod from the
//! API server and a Pod from a YAML file go through exactly the same validation; an invalid
//! object is skipped and reported like a bad document (log line + `istiod_config_errors_total`).
//!
//! Consistency rules:
//! * nothing is published until every kind has listed once (or is known to be absent), so
//!   clients never see a half-listed mesh;
//! * a watch error changes nothing: the last good objects stay until the watcher recovers;
//! * a relist (after `410 Gone`, or any restart of the watch) is buffered and swapped in at
//!   `InitDone`, so it replaces the kind's objects atomically;
//! * a kind whose resource does not exist (Gateway API or Istio CRDs not installed, 404), or
//!   which we may not list (403), is skipped with a warning and retried every
//!   [`KubeSourceOptions::absent_retry`]; the core kinds must list.
//!
//! Nodes are watched for their topology labels only (pod localities); optional, so a cluster
//! that forbids listing them loses localities, nothing else.
//!
//! EndpointSlices give the endpoints of Services without a selector (see
//! [`crate::model::service`]; endpoints of Services with one are computed from pods, as Istio
//! does); optional, so a cluster that forbids listing them loses only those endpoints.
//!
//! For the kinds whose status the leader writes ([`STATUS_KINDS`]: routes and waypoint
//! policies), the store also keeps what the status writer needs that the model does not carry
//! (generation, resourceVersion, the current `status`, the raw `spec`, why an object was
//! refused) and publishes it with the config as [`StatusInputs`]. A status-only change of such
//! an object publishes new status inputs but no new config: the model never sees it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::StreamExt;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::watcher;
use kube::Client;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tracing::Instrument;

use serde_json::Value;

use super::kinds::{decode_kind, FieldError, Object};
use super::parse::ConfigError;
use super::{ConfigSnapshot, ObjectKey, CONFIG_ERRORS_TOTAL};

/// `ConfigError::file` of objects read from the API server.
pub const API_SOURCE: &str = "kubernetes";

/// One kind we watch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatchedKind {
    /// `kind:`.
    pub kind: &'static str,
    /// API group ("" for core).
    pub group: &'static str,
    /// Version served.
    pub version: &'static str,
    /// Resource (plural) name.
    pub plural: &'static str,
    /// Optional (a CRD): a missing resource is skipped with a warning, not waited for.
    pub optional: bool,
}

impl WatchedKind {
    const fn core(kind: &'static str, plural: &'static str) -> Self {
        WatchedKind {
            kind,
            group: "",
            version: "v1",
            plural,
            optional: false,
        }
    }
    const fn crd(
        group: &'static str,
        version: &'static str,
        kind: &'static str,
        plural: &'static str,
    ) -> Self {
        WatchedKind {
            kind,
            group,
            version,
            plural,
            optional: true,
        }
    }

    /// The dynamic API resource.
    pub fn api_resource(&self) -> ApiResource {
        ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk(self.group, self.version, self.kind),
            self.plural,
        )
    }

    fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }
}

/// Every kind the model can use. Kinds that [`decode_kind`] does not know yet (for example
/// while VirtualService or RequestAuthentication support is being added) are watched but
/// ignored, so they start working as soon as the decoder learns them.
pub const WATCHED_KINDS: &[WatchedKind] = &[
    WatchedKind::core("Namespace", "namespaces"),
    WatchedKind::core("Pod", "pods"),
    WatchedKind::core("Service", "services"),
    WatchedKind::core("ServiceAccount", "serviceaccounts"),
    // Optional: without it only the endpoints of Services without a selector are missing.
    WatchedKind {
        group: "discovery.k8s.io",
        optional: true,
        ..WatchedKind::core("EndpointSlice", "endpointslices")
    },
    // Optional: node labels only add localities; a cluster that forbids listing nodes still works.
    WatchedKind {
        optional: true,
        ..WatchedKind::core("Node", "nodes")
    },
    WatchedKind::crd("gateway.networking.k8s.io", "v1", "Gateway", "gateways"),
    WatchedKind::crd("gateway.networking.k8s.io", "v1", "HTTPRoute", "httproutes"),
    WatchedKind::crd("gateway.networking.k8s.io", "v1", "GRPCRoute", "grpcroutes"),
    WatchedKind::crd(
        "security.istio.io",
        "v1",
        "AuthorizationPolicy",
        "authorizationpolicies",
    ),
    WatchedKind::crd(
        "security.istio.io",
        "v1",
        "PeerAuthentication",
        "peerauthentications",
    ),
    WatchedKind::crd(
        "security.istio.io",
        "v1",
        "RequestAuthentication",
        "requestauthentications",
    ),
    WatchedKind::crd(
        "networking.istio.io",
        "v1",
        "DestinationRule",
        "destinationrules",
    ),
    WatchedKind::crd(
        "networking.istio.io",
        "v1",
        "VirtualService",
        "virtualservices",
    ),
];

/// Kinds whose status istiod-lite writes (see [`crate::controller::status`]).
pub const STATUS_KINDS: [&str; 4] = [
    "HTTPRoute",
    "GRPCRoute",
    "AuthorizationPolicy",
    "RequestAuthentication",
];

/// An object whose status the leader writes, as last seen.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusObject {
    /// `kind:`.
    pub kind: &'static str,
    /// API group and version (`gateway.networking.k8s.io/v1`).
    pub api_version: String,
    /// Namespace and name.
    pub key: ObjectKey,
    /// `metadata.generation` (0 when absent).
    pub generation: i64,
    /// `metadata.resourceVersion`: a status write is conditional on it.
    pub resource_version: String,
    /// `spec` as served (routes' parentRefs are echoed into their status as written).
    pub spec: Value,
    /// `status` as served (`Null` when none).
    pub status: Value,
    /// Why the decoder refused the object, which is then not in the model.
    pub invalid: Option<String>,
}

/// What the status writer works from: the model's config and the objects to write status on,
/// taken from the store at the same moment.
#[derive(Debug, Clone, Default)]
pub struct StatusInputs {
    /// The config the model was built from.
    pub config: Arc<ConfigSnapshot>,
    /// Objects of [`STATUS_KINDS`], in kind and key order.
    pub objects: Vec<Arc<StatusObject>>,
}

/// What one API object became.
#[derive(Debug, Clone)]
enum Entry {
    Valid(Object),
    Invalid(ConfigError),
    /// A kind the decoder does not handle (yet), or another group's kind of the same name.
    Ignored,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum SyncState {
    /// Never listed yet.
    #[default]
    Waiting,
    /// Listed at least once.
    Synced,
    /// The resource does not exist or may not be listed (optional kinds only).
    Absent,
}

/// One object as stored: what it became, and for [`STATUS_KINDS`] what its status needs.
#[derive(Debug, Clone)]
struct Stored {
    entry: Entry,
    status: Option<Arc<StatusObject>>,
}

#[derive(Debug, Default)]
struct KindStore {
    live: BTreeMap<ObjectKey, Stored>,
    /// Objects of a relist in progress (between `Init` and `InitDone`).
    pending: Option<BTreeMap<ObjectKey, Stored>>,
    state: SyncState,
}

/// The objects of every watched kind, as last seen. Pure data: the watcher tasks feed it events.
#[derive(Debug, Default)]
pub struct KubeStore {
    kinds: BTreeMap<&'static str, KindStore>,
    /// The published config changed since [`KubeStore::take_changes`].
    model_dirty: bool,
    /// A [`StatusObject`] changed since [`KubeStore::take_changes`].
    status_dirty: bool,
}

impl KubeStore {
    /// A store expecting `kinds`.
    pub fn new(kinds: &[WatchedKind]) -> Self {
        KubeStore {
            kinds: kinds
                .iter()
                .map(|k| (k.kind, KindStore::default()))
                .collect(),
            model_dirty: false,
            status_dirty: false,
        }
    }

    /// Applies one watcher event of kind `wk`; true when the published objects changed.
    pub fn apply(&mut self, wk: &WatchedKind, event: watcher::Event<DynamicObject>) -> bool {
        let (model, status) = self.apply_inner(wk, event);
        self.model_dirty |= model;
        self.status_dirty |= status;
        model
    }

    /// Whether the config and the status inputs changed since the last call; resets both.
    pub fn take_changes(&mut self) -> (bool, bool) {
        let changes = (self.model_dirty, self.status_dirty || self.model_dirty);
        self.model_dirty = false;
        self.status_dirty = false;
        changes
    }

    /// The objects whose status the leader writes, in kind and key order.
    pub fn status_objects(&self) -> Vec<Arc<StatusObject>> {
        self.kinds
            .values()
            .flat_map(|k| k.live.values())
            .filter_map(|s| s.status.clone())
            .collect()
    }

    /// Returns (published objects changed, status inputs changed).
    fn apply_inner(
        &mut self,
        wk: &WatchedKind,
        event: watcher::Event<DynamicObject>,
    ) -> (bool, bool) {
        let ks = self.kinds.entry(wk.kind).or_default();
        match event {
            watcher::Event::Init => {
                ks.pending = Some(BTreeMap::new());
                (false, false)
            }
            watcher::Event::InitApply(obj) => {
                let (key, stored) = convert(wk, obj);
                ks.pending
                    .get_or_insert_with(BTreeMap::new)
                    .insert(key, stored);
                (false, false)
            }
            watcher::Event::InitDone => {
                let fresh = ks.pending.take().unwrap_or_default();
                let was = ks.state;
                ks.state = SyncState::Synced;
                tracing::info!(kind = wk.kind, objects = fresh.len(), "listed");
                let changed = was != SyncState::Synced || !same_entries(&ks.live, &fresh);
                let status = !same_status(&ks.live, &fresh);
                ks.live = fresh;
                (changed, status)
            }
            watcher::Event::Apply(obj) => {
                let (key, stored) = convert(wk, obj);
                let old = ks.live.get(&key);
                let unchanged = old.is_some_and(|old| same_entry(&old.entry, &stored.entry));
                let status = match old {
                    Some(o) => o.status != stored.status,
                    None => stored.status.is_some(),
                };
                ks.live.insert(key, stored);
                (!unchanged, status)
            }
            watcher::Event::Delete(obj) => {
                let key = object_key(&obj);
                match ks.live.remove(&key) {
                    Some(old) => (true, old.status.is_some()),
                    None => (false, false),
                }
            }
        }
    }

    /// Marks an optional kind as absent: it counts as synced and holds no objects.
    pub fn mark_absent(&mut self, wk: &WatchedKind) -> bool {
        let ks = self.kinds.entry(wk.kind).or_default();
        let changed = ks.state == SyncState::Waiting || !ks.live.is_empty();
        self.status_dirty |= ks.live.values().any(|s| s.status.is_some());
        ks.state = SyncState::Absent;
        ks.live.clear();
        ks.pending = None;
        self.model_dirty |= changed;
        changed
    }

    /// True once every kind has listed (or is absent).
    pub fn synced(&self) -> bool {
        self.kinds.values().all(|k| k.state != SyncState::Waiting)
    }

    /// Kinds still waiting for their first list.
    pub fn waiting(&self) -> Vec<&'static str> {
        self.kinds
            .iter()
            .filter(|(_, k)| k.state == SyncState::Waiting)
            .map(|(n, _)| *n)
            .collect()
    }

    /// Merges every kind into one snapshot.
    pub fn snapshot(&self, generation: u64) -> ConfigSnapshot {
        let entries = || {
            self.kinds
                .values()
                .flat_map(|k| k.live.values().map(|s| &s.entry))
        };
        let mut s = ConfigSnapshot::from_objects(entries().filter_map(|e| match e {
            Entry::Valid(o) => Some(o),
            _ => None,
        }));
        s.errors = entries()
            .filter_map(|e| match e {
                Entry::Invalid(err) => Some(err.clone()),
                _ => None,
            })
            .collect();
        s.generation = generation;
        s
    }
}

fn same_entry(a: &Entry, b: &Entry) -> bool {
    match (a, b) {
        (Entry::Valid(x), Entry::Valid(y)) => x == y,
        (Entry::Invalid(x), Entry::Invalid(y)) => x == y,
        (Entry::Ignored, Entry::Ignored) => true,
        _ => false,
    }
}

fn same_entries(a: &BTreeMap<ObjectKey, Stored>, b: &BTreeMap<ObjectKey, Stored>) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|((ka, ea), (kb, eb))| ka == kb && same_entry(&ea.entry, &eb.entry))
}

fn same_status(a: &BTreeMap<ObjectKey, Stored>, b: &BTreeMap<ObjectKey, Stored>) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|((ka, ea), (kb, eb))| ka == kb && ea.status == eb.status)
}

fn object_key(obj: &DynamicObject) -> ObjectKey {
    ObjectKey::new(
        obj.metadata.namespace.clone().unwrap_or_default(),
        obj.metadata.name.clone().unwrap_or_default(),
    )
}

/// Decodes one API object with the file source's decoder; reports an invalid one the same way.
fn convert(wk: &WatchedKind, mut obj: DynamicObject) -> (ObjectKey, Stored) {
    let key = object_key(&obj);
    // Large and never used: skip converting them.
    obj.metadata.managed_fields = None;
    let status_of = STATUS_KINDS.contains(&wk.kind).then(|| {
        (
            obj.metadata.generation.unwrap_or(0),
            obj.metadata.resource_version.clone().unwrap_or_default(),
            obj.data.get("spec").cloned().unwrap_or(Value::Null),
            obj.data.get("status").cloned().unwrap_or(Value::Null),
        )
    });
    let entry = match decode_dynamic(wk, obj) {
        Ok(Some(o)) => Entry::Valid(o),
        Ok(None) => Entry::Ignored,
        Err(FieldError { field, message }) => {
            let err = ConfigError {
                file: PathBuf::from(API_SOURCE),
                document: 0,
                line: 0,
                kind: Some(wk.kind.to_string()),
                object: Some(if key.namespace.is_empty() {
                    key.name.clone()
                } else {
                    key.to_string()
                }),
                field,
                message,
            };
            tracing::error!(
                kind = err.kind_label(),
                "invalid config object skipped: {err}"
            );
            metrics::counter!(CONFIG_ERRORS_TOTAL, "kind" => err.kind_label().to_string())
                .increment(1);
            Entry::Invalid(err)
        }
    };
    let status = status_of.map(|(generation, resource_version, spec, status)| {
        Arc::new(StatusObject {
            kind: wk.kind,
            api_version: wk.api_version(),
            key: key.clone(),
            generation,
            resource_version,
            spec,
            status,
            invalid: match &entry {
                Entry::Invalid(e) => Some(if e.field.is_empty() {
                    e.message.clone()
                } else {
                    format!("{}: {}", e.field, e.message)
                }),
                _ => None,
            },
        })
    });
    // Another group's kind of the same name (Entry::Ignored) is not ours to write status on.
    let status = status.filter(|_| !matches!(entry, Entry::Ignored));
    (key, Stored { entry, status })
}

fn decode_dynamic(wk: &WatchedKind, obj: DynamicObject) -> Result<Option<Object>, FieldError> {
    let mut json = serde_json::to_value(&obj)
        .map_err(|e| FieldError::new("", format!("cannot re-encode the object: {e}")))?;
    // List items carry no apiVersion/kind; the decoder checks the group from apiVersion.
    if let Some(map) = json.as_object_mut() {
        map.insert("apiVersion".into(), wk.api_version().into());
        map.insert("kind".into(), wk.kind.into());
    }
    let value = serde_yaml_ng::to_value(&json)
        .map_err(|e| FieldError::new("", format!("cannot convert the object: {e}")))?;
    decode_kind(wk.kind, value)
}

/// Tunables of [`KubeSource`] (tests shorten them).
#[derive(Debug, Clone)]
pub struct KubeSourceOptions {
    /// Kinds to watch.
    pub kinds: Vec<WatchedKind>,
    /// First retry delay after a watch error; doubles up to [`Self::max_backoff`].
    pub backoff: Duration,
    /// Longest retry delay.
    pub max_backoff: Duration,
    /// How often a missing optional kind is looked for again.
    pub absent_retry: Duration,
    /// Events arriving within this window are published as one snapshot.
    pub coalesce: Duration,
}

impl Default for KubeSourceOptions {
    fn default() -> Self {
        KubeSourceOptions {
            kinds: WATCHED_KINDS.to_vec(),
            backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            absent_retry: Duration::from_secs(60),
            coalesce: Duration::from_millis(10),
        }
    }
}

/// The running watchers and the snapshot publisher.
pub struct KubeSource {
    tasks: Vec<JoinHandle<()>>,
    status: watch::Receiver<Arc<StatusInputs>>,
}

impl Drop for KubeSource {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

struct Shared {
    store: Mutex<KubeStore>,
    changed: Notify,
}

impl KubeSource {
    /// Starts one watcher per kind and a publisher; returns once every kind has listed (or is
    /// known to be absent), with the receiver of snapshots. Waits as long as it takes: serving
    /// a half-listed mesh would tell every ztunnel that most workloads are gone.
    pub async fn start(
        client: Client,
        opts: KubeSourceOptions,
    ) -> (Self, watch::Receiver<Arc<ConfigSnapshot>>) {
        let shared = Arc::new(Shared {
            store: Mutex::new(KubeStore::new(&opts.kinds)),
            changed: Notify::new(),
        });
        let mut tasks = Vec::new();
        for wk in opts.kinds.iter().copied() {
            let api: Api<DynamicObject> = Api::all_with(client.clone(), &wk.api_resource());
            tasks.push(tokio::spawn(
                watch_kind(api, wk, shared.clone(), opts.clone())
                    .instrument(tracing::info_span!("watch", kind = wk.kind)),
            ));
        }

        // Wait for the initial lists.
        let mut last_log = tokio::time::Instant::now();
        loop {
            let notified = shared.changed.notified();
            {
                let store = shared.store.lock().unwrap_or_else(PoisonError::into_inner);
                if store.synced() {
                    break;
                }
                if last_log.elapsed() > Duration::from_secs(10) {
                    tracing::info!(waiting = ?store.waiting(), "waiting for the initial list of kinds");
                    last_log = tokio::time::Instant::now();
                }
            }
            let _ = tokio::time::timeout(Duration::from_secs(10), notified).await;
        }
        let (first, objects) = {
            let mut store = shared.store.lock().unwrap_or_else(PoisonError::into_inner);
            store.take_changes();
            (Arc::new(store.snapshot(1)), store.status_objects())
        };
        tracing::info!(
            namespaces = first.namespaces.len(),
            pods = first.pods.len(),
            services = first.services.len(),
            gateways = first.gateways.len(),
            errors = first.errors.len(),
            "config listed from the API server"
        );
        let (status_tx, status) = watch::channel(Arc::new(StatusInputs {
            config: first.clone(),
            objects,
        }));
        let (tx, rx) = watch::channel(first);
        tasks.push(tokio::spawn(
            publish(shared, tx, status_tx, opts.coalesce)
                .instrument(tracing::info_span!("kube-publisher")),
        ));
        (KubeSource { tasks, status }, rx)
    }

    /// The inputs of the status writer: the config with the objects whose status it writes.
    pub fn status_inputs(&self) -> watch::Receiver<Arc<StatusInputs>> {
        self.status.clone()
    }
}

async fn publish(
    shared: Arc<Shared>,
    tx: watch::Sender<Arc<ConfigSnapshot>>,
    status_tx: watch::Sender<Arc<StatusInputs>>,
    coalesce: Duration,
) {
    let mut generation = 1;
    loop {
        shared.changed.notified().await;
        tokio::time::sleep(coalesce).await;
        let (snap, objects) = {
            let mut store = shared.store.lock().unwrap_or_else(PoisonError::into_inner);
            let (model, status) = store.take_changes();
            let snap = model.then(|| {
                generation += 1;
                Arc::new(store.snapshot(generation))
            });
            (snap, status.then(|| store.status_objects()))
        };
        if let Some(snap) = &snap {
            tracing::debug!(
                generation,
                pods = snap.pods.len(),
                services = snap.services.len(),
                errors = snap.errors.len(),
                "config changed"
            );
            if tx.send(snap.clone()).is_err() {
                return;
            }
        }
        if let Some(objects) = objects {
            let config = snap.unwrap_or_else(|| tx.borrow().clone());
            // Nobody listening (no status writer) is fine: the config still flows.
            status_tx.send_replace(Arc::new(StatusInputs { config, objects }));
        }
    }
}

/// True for the errors that mean "this resource is not there for us" (CRD not installed, or no
/// RBAC to list it).
fn is_absent(err: &watcher::Error) -> bool {
    match err {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s)) => s.code == 404 || s.code == 403,
        _ => false,
    }
}

async fn watch_kind(
    api: Api<DynamicObject>,
    wk: WatchedKind,
    shared: Arc<Shared>,
    opts: KubeSourceOptions,
) {
    loop {
        let mut stream = std::pin::pin!(watcher(api.clone(), watcher::Config::default()));
        let mut failures: u32 = 0;
        let mut absent = false;
        while let Some(item) = stream.next().await {
            match item {
                Ok(event) => {
                    failures = 0;
                    let changed = {
                        let mut store = shared.store.lock().unwrap_or_else(PoisonError::into_inner);
                        store.apply(&wk, event);
                        store.model_dirty || store.status_dirty
                    };
                    if changed {
                        shared.changed.notify_one();
                    }
                }
                Err(e) if wk.optional && is_absent(&e) => {
                    tracing::warn!(
                        kind = wk.kind, api_version = %wk.api_version(), error = %e,
                        "resource not served or not allowed (CRD not installed? RBAC?); skipping this kind, retrying in {:?}",
                        opts.absent_retry
                    );
                    let changed = shared
                        .store
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .mark_absent(&wk);
                    if changed {
                        shared.changed.notify_one();
                    }
                    absent = true;
                    break;
                }
                Err(e) => {
                    // The store is untouched: the last good objects keep being served.
                    failures = failures.saturating_add(1);
                    let delay = opts
                        .backoff
                        .saturating_mul(1 << failures.min(16).saturating_sub(1))
                        .min(opts.max_backoff);
                    tracing::warn!(kind = wk.kind, error = %e, retry_in = ?delay, "watch failed; keeping the last good config");
                    tokio::time::sleep(delay).await;
                }
            }
        }
        if absent {
            tokio::time::sleep(opts.absent_retry).await;
        }
    }
}

#[cfg(test)]
#[path = "kube/fake.rs"]
pub(crate) mod fake;
#[cfg(test)]
#[path = "kube/tests.rs"]
mod tests;

//! Root certificate publisher: the ConfigMap `istio-ca-root-cert` in every namespace, key
//! `root-cert.pem` holding the roots of istiod-lite's CA, as Istio's namespace controller keeps
//! it. ztunnel and waypoints mount it to verify istiod-lite (`XDS_ROOT_CA`); workloads may too.
//!
//! Which namespaces: all but Istio's skipped ones ([`IGNORED_NAMESPACES`]: its
//! injection-ignored namespaces minus `kube-system`, where ztunnel may run) and those being
//! terminated. Istio's shape: label `istio.io/config: "true"`, field manager `istiod-lite`.
//!
//! Watches Namespaces and, with the field selector `metadata.name=istio-ca-root-cert`, only the
//! ConfigMaps of that name, so deletions and edits are seen as they happen; followers watch too,
//! so a new leader starts from a warm cache. While this replica leads, each namespace without
//! the ConfigMap gets one (POST) and one whose `root-cert.pem` differs from the roots gets that
//! key put back (a JSON merge patch of that key alone: other keys and the labels are left as
//! they are, as Istio's update only touches its key). A new root bundle on the roots channel
//! updates every namespace. Nothing is written where the bundle is already right, so our own
//! writes coming back through the watch cause none (no loops).
//!
//! Creating into a namespace that is gone or being terminated, or one whose ConfigMap already
//! exists (the watch is behind), is not an error: the watch brings what happened. Other
//! failures are retried with exponential backoff ([`RootCertSettings::retry`]).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::utils::Backoff;
use kube::runtime::{watcher, WatchStreamExt};
use kube::Client;
use serde_json::json;
use tokio::sync::watch;
use tokio::time::Instant;

use super::waypoint::{FIELD_MANAGER, ROOT_CERT_CONFIGMAP};

/// Data key of the root bundle in the ConfigMap (Istio's `CACertNamespaceConfigMapDataName`).
pub const ROOT_CERT_KEY: &str = "root-cert.pem";
/// Label Istio puts on the ConfigMaps it publishes.
pub const CONFIGMAP_LABEL: (&str, &str) = ("istio.io/config", "true");
/// Namespaces Istio's namespace controller never publishes into.
pub const IGNORED_NAMESPACES: &[&str] = &["kube-public", "kube-node-lease", "local-path-storage"];
/// Status cause of a create refused because the namespace is being terminated.
const NAMESPACE_TERMINATING_CAUSE: &str = "NamespaceTerminating";

/// Errors of one ConfigMap write.
#[derive(Debug, thiserror::Error)]
pub enum RootCertError {
    /// The API server refused or failed the write.
    #[error("{action} ConfigMap {namespace}/{ROOT_CERT_CONFIGMAP}: {source} (RBAC: create and patch on configmaps?)")]
    Api {
        /// "creating" or "updating".
        action: &'static str,
        /// The namespace.
        namespace: String,
        /// The API error.
        source: Box<kube::Error>,
    },
}

/// Tunables of [`RootCertController`].
#[derive(Debug, Clone)]
pub struct RootCertSettings {
    /// Namespaces left alone.
    pub ignored_namespaces: BTreeSet<String>,
    /// First retry delay after a failed write or watch; doubles up to [`Self::max_retry`].
    pub retry: Duration,
    /// Longest retry delay.
    pub max_retry: Duration,
}

impl Default for RootCertSettings {
    fn default() -> Self {
        RootCertSettings {
            ignored_namespaces: IGNORED_NAMESPACES.iter().map(|s| s.to_string()).collect(),
            retry: Duration::from_secs(1),
            max_retry: Duration::from_secs(60),
        }
    }
}

/// Delays doubling from `first` to `max`; `reset` starts over. Paces both the watch streams
/// (through kube's `StreamBackoff`, reset by the next good event) and failed writes.
#[derive(Debug, Clone)]
struct Doubling {
    first: Duration,
    max: Duration,
    next: Duration,
}

impl Doubling {
    fn new(s: &RootCertSettings) -> Self {
        Doubling {
            first: s.retry,
            max: s.max_retry,
            next: s.retry,
        }
    }
}

impl Iterator for Doubling {
    type Item = Duration;
    fn next(&mut self) -> Option<Duration> {
        let d = self.next.min(self.max);
        self.next = d.saturating_mul(2).min(self.max);
        Some(d)
    }
}

impl Backoff for Doubling {
    fn reset(&mut self) {
        self.next = self.first;
    }
}

/// One watched collection, keyed by namespace, with a relist in progress kept apart so a
/// half-done relist never shows.
#[derive(Debug)]
struct Known<T> {
    items: BTreeMap<String, T>,
    relist: BTreeMap<String, T>,
    synced: bool,
}

impl<T> Default for Known<T> {
    fn default() -> Self {
        Known {
            items: BTreeMap::new(),
            relist: BTreeMap::new(),
            synced: false,
        }
    }
}

impl<T> Known<T> {
    /// Applies a watch event; `entry` gives an object's key and value.
    fn apply<K>(&mut self, ev: watcher::Event<K>, entry: impl Fn(&K) -> (String, T)) {
        match ev {
            watcher::Event::Init => self.relist.clear(),
            watcher::Event::InitApply(o) => {
                let (k, v) = entry(&o);
                self.relist.insert(k, v);
            }
            watcher::Event::InitDone => {
                self.items = std::mem::take(&mut self.relist);
                self.synced = true;
            }
            watcher::Event::Apply(o) => {
                let (k, v) = entry(&o);
                self.items.insert(k, v);
            }
            watcher::Event::Delete(o) => {
                self.items.remove(&entry(&o).0);
            }
        }
    }
}

/// A write that makes one namespace hold the roots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    /// The namespace has no ConfigMap: create it.
    Create(String),
    /// Its `root-cert.pem` is missing or differs: put the roots back.
    Update(String),
}

/// What the controller knows of the cluster.
#[derive(Debug, Default)]
struct Cache {
    /// Namespace → being terminated.
    namespaces: Known<bool>,
    /// Namespace → `root-cert.pem` of its ConfigMap (None: the key is missing).
    configmaps: Known<Option<String>>,
}

impl Cache {
    fn apply_namespace(&mut self, ev: watcher::Event<Namespace>) {
        if let watcher::Event::Delete(ns) = &ev {
            // Whatever we assumed about its ConfigMap goes with it; a namespace of the same
            // name created later starts from nothing.
            if let Some(name) = &ns.metadata.name {
                self.configmaps.items.remove(name);
            }
        }
        self.namespaces.apply(ev, |ns| {
            let terminating = ns.metadata.deletion_timestamp.is_some()
                || ns.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Terminating");
            (ns.metadata.name.clone().unwrap_or_default(), terminating)
        });
    }

    fn apply_configmap(&mut self, ev: watcher::Event<ConfigMap>) {
        self.configmaps.apply(ev, |cm| {
            let root = cm.data.as_ref().and_then(|d| d.get(ROOT_CERT_KEY)).cloned();
            (cm.metadata.namespace.clone().unwrap_or_default(), root)
        });
    }

    fn synced(&self) -> bool {
        self.namespaces.synced && self.configmaps.synced
    }

    /// The writes that make every namespace outside `ignored` hold `root`.
    fn plan(&self, root: &str, ignored: &BTreeSet<String>) -> Vec<Write> {
        self.namespaces
            .items
            .iter()
            .filter(|(ns, terminating)| !**terminating && !ignored.contains(*ns))
            .filter_map(|(ns, _)| match self.configmaps.items.get(ns) {
                None => Some(Write::Create(ns.clone())),
                Some(cur) if cur.as_deref() != Some(root) => Some(Write::Update(ns.clone())),
                Some(_) => None,
            })
            .collect()
    }
}

/// The ConfigMap Istio publishes, holding `root`.
pub fn desired_configmap(namespace: &str, root: &str) -> ConfigMap {
    let (label, value) = CONFIGMAP_LABEL;
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(ROOT_CERT_CONFIGMAP.to_string()),
            namespace: Some(namespace.to_string()),
            labels: Some(BTreeMap::from([(label.to_string(), value.to_string())])),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(
            ROOT_CERT_KEY.to_string(),
            root.to_string(),
        )])),
        ..Default::default()
    }
}

fn api_status(e: &kube::Error) -> Option<&kube::core::Status> {
    match e {
        kube::Error::Api(s) => Some(s),
        _ => None,
    }
}

/// True when a create needs no retry: the ConfigMap exists already (the watch is behind), or
/// the namespace is gone or being terminated (the namespace watch brings that).
fn create_moot(e: &kube::Error) -> bool {
    api_status(e).is_some_and(|s| {
        s.code == 409
            || s.code == 404
            || s.details.as_ref().is_some_and(|d| {
                d.causes
                    .iter()
                    .any(|c| c.reason == NAMESPACE_TERMINATING_CAUSE)
            })
    })
}

/// Publishes the root bundle in every namespace while this replica leads.
pub struct RootCertController {
    client: Client,
    s: RootCertSettings,
}

impl RootCertController {
    /// A controller writing through `client`.
    pub fn new(client: Client, settings: RootCertSettings) -> Self {
        RootCertController {
            client,
            s: settings,
        }
    }

    /// Sends one write. `Ok` also when it turned out moot: the ConfigMap exists already, or
    /// its namespace is gone or being terminated (the watches bring what happened).
    pub async fn write(&self, w: &Write, root: &str) -> Result<(), RootCertError> {
        match w {
            Write::Create(ns) => {
                let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), ns);
                let params = PostParams {
                    field_manager: Some(FIELD_MANAGER.to_string()),
                    ..Default::default()
                };
                match api.create(&params, &desired_configmap(ns, root)).await {
                    Ok(_) => {
                        tracing::info!(namespace = %ns, "created ConfigMap {ROOT_CERT_CONFIGMAP}");
                        Ok(())
                    }
                    Err(e) if create_moot(&e) => {
                        tracing::debug!(namespace = %ns, error = %e, "ConfigMap create not needed");
                        Ok(())
                    }
                    Err(source) => Err(RootCertError::Api {
                        action: "creating",
                        namespace: ns.clone(),
                        source: Box::new(source),
                    }),
                }
            }
            Write::Update(ns) => {
                let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), ns);
                let params = PatchParams {
                    field_manager: Some(FIELD_MANAGER.to_string()),
                    ..Default::default()
                };
                let patch = json!({"data": {ROOT_CERT_KEY: root}});
                match api
                    .patch(ROOT_CERT_CONFIGMAP, &params, &Patch::Merge(&patch))
                    .await
                {
                    Ok(_) => {
                        tracing::info!(namespace = %ns, "updated {ROOT_CERT_KEY} of ConfigMap {ROOT_CERT_CONFIGMAP}");
                        Ok(())
                    }
                    // Deleted meanwhile: the watch brings the deletion, and a create follows.
                    Err(e) if api_status(&e).is_some_and(|s| s.code == 404) => Ok(()),
                    Err(source) => Err(RootCertError::Api {
                        action: "updating",
                        namespace: ns.clone(),
                        source: Box::new(source),
                    }),
                }
            }
        }
    }

    /// Writes what `cache` calls for. True when nothing failed.
    async fn sync(&self, cache: &mut Cache, root: &str) -> bool {
        let mut ok = true;
        for w in cache.plan(root, &self.s.ignored_namespaces) {
            match self.write(&w, root).await {
                Ok(()) => {
                    // Assume it took until the watch says otherwise, so the next event does
                    // not repeat the write before its echo arrives.
                    let (Write::Create(ns) | Write::Update(ns)) = w;
                    cache.configmaps.items.insert(ns, Some(root.to_string()));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "publishing the root certificate failed; retrying");
                    ok = false;
                }
            }
        }
        ok
    }

    /// Keeps every namespace's ConfigMap holding the latest bundle of `roots` while `leader`
    /// is true, until `shutdown`.
    pub async fn run(
        self,
        mut roots: watch::Receiver<String>,
        mut leader: watch::Receiver<bool>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let namespaces = watcher(
            Api::<Namespace>::all(self.client.clone()),
            watcher::Config::default(),
        )
        .backoff(Doubling::new(&self.s));
        let configmaps = watcher(
            Api::<ConfigMap>::all(self.client.clone()),
            watcher::Config::default().fields(&format!("metadata.name={ROOT_CERT_CONFIGMAP}")),
        )
        .backoff(Doubling::new(&self.s));
        let mut namespaces = std::pin::pin!(namespaces);
        let mut configmaps = std::pin::pin!(configmaps);
        let mut cache = Cache::default();
        let mut backoff = Doubling::new(&self.s);
        let mut retry_at: Option<Instant> = None;
        let mut roots_open = true;
        let mut warned_empty = false;
        loop {
            let wait_retry = async move {
                match retry_at {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = shutdown.wait_for(|s| *s) => return,
                r = leader.changed() => if r.is_err() { return },
                // Without a sender the last bundle stays; nothing more will come.
                r = roots.changed(), if roots_open => roots_open = r.is_ok(),
                ev = namespaces.next() => match ev {
                    None => return,
                    Some(Ok(ev)) => cache.apply_namespace(ev),
                    Some(Err(e)) => tracing::warn!(error = %e, "watching Namespaces failed; retrying"),
                },
                ev = configmaps.next() => match ev {
                    None => return,
                    Some(Ok(ev)) => cache.apply_configmap(ev),
                    Some(Err(e)) => tracing::warn!(error = %e, "watching ConfigMaps {ROOT_CERT_CONFIGMAP} failed; retrying"),
                },
                _ = wait_retry => retry_at = None,
            }
            if !*leader.borrow() {
                retry_at = None;
                backoff.reset();
                continue;
            }
            // Until both lists are in, a missing ConfigMap may only be one not listed yet; while
            // backing off, events only update the cache.
            if !cache.synced() || retry_at.is_some() {
                continue;
            }
            let root = roots.borrow().clone();
            if root.trim().is_empty() {
                if !warned_empty {
                    tracing::warn!("the CA has no root certificate to publish");
                    warned_empty = true;
                }
                continue;
            }
            if self.sync(&mut cache, &root).await {
                backoff.reset();
            } else {
                let delay = backoff.next().unwrap_or(self.s.max_retry);
                retry_at = Some(Instant::now() + delay);
            }
        }
    }
}

#[cfg(test)]
mod tests;

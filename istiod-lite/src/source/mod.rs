//! Config source: Kubernetes-style YAML objects read from a directory and watched for changes.
//!
//! [`FileStore`] keeps the parsed objects per file; [`FileStore::snapshot`] merges them into one
//! immutable [`ConfigSnapshot`] which the watcher publishes on a `watch` channel.

pub mod discovery;
pub mod gateway;
pub mod kinds;
pub mod kube;
pub mod networking;
pub mod parse;
pub mod security;
mod watch;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use serde::Serialize;

pub use self::gateway::{Gateway, GrpcRoute, HttpRoute};
pub use self::kinds::{
    Locality, Namespace, Node, Object, ObjectMeta, Pod, Service, ServiceAccount,
};
pub use self::parse::{parse_file, ConfigError};
pub use self::security::{AuthorizationPolicy, PeerAuthentication, RequestAuthentication};
pub use self::watch::{ConfigWatcher, FileStore};

/// Metric: invalid objects skipped, by kind.
pub const CONFIG_ERRORS_TOTAL: &str = "istiod_config_errors_total";

/// Registers this module's metric descriptions.
pub fn describe_metrics() {
    metrics::describe_counter!(
        CONFIG_ERRORS_TOTAL,
        "Invalid config objects skipped, by kind"
    );
}

/// Namespace + name of a namespaced object.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct ObjectKey {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl ObjectKey {
    /// Builds a key.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        ObjectKey {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    fn of(meta: &ObjectMeta) -> Self {
        ObjectKey::new(meta.ns(), meta.name.clone())
    }
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// All valid objects of the config, indexed; immutable once published.
#[derive(Debug, Default, Serialize)]
pub struct ConfigSnapshot {
    /// Increments with every published change.
    pub generation: u64,
    /// Namespaces by name.
    pub namespaces: BTreeMap<String, Arc<Namespace>>,
    /// Pods.
    #[serde(serialize_with = "ser_keyed")]
    pub pods: BTreeMap<ObjectKey, Arc<Pod>>,
    /// Services.
    #[serde(serialize_with = "ser_keyed")]
    pub services: BTreeMap<ObjectKey, Arc<Service>>,
    /// ServiceAccounts.
    #[serde(serialize_with = "ser_keyed")]
    pub service_accounts: BTreeMap<ObjectKey, Arc<ServiceAccount>>,
    /// Nodes by name (their labels give pod localities).
    pub nodes: BTreeMap<String, Arc<Node>>,
    /// EndpointSlices (endpoints of Services without a selector).
    #[serde(serialize_with = "ser_keyed")]
    pub endpoint_slices: BTreeMap<ObjectKey, Arc<discovery::EndpointSlice>>,
    /// AuthorizationPolicies.
    #[serde(serialize_with = "ser_keyed")]
    pub authorization_policies: BTreeMap<ObjectKey, Arc<AuthorizationPolicy>>,
    /// PeerAuthentications.
    #[serde(serialize_with = "ser_keyed")]
    pub peer_authentications: BTreeMap<ObjectKey, Arc<PeerAuthentication>>,
    /// RequestAuthentications (JWT rules for waypoints).
    #[serde(serialize_with = "ser_keyed")]
    pub request_authentications: BTreeMap<ObjectKey, Arc<RequestAuthentication>>,
    /// Gateways (waypoints are those of class `istio-waypoint`).
    #[serde(serialize_with = "ser_keyed")]
    pub gateways: BTreeMap<ObjectKey, Arc<Gateway>>,
    /// HTTPRoutes.
    #[serde(serialize_with = "ser_keyed")]
    pub http_routes: BTreeMap<ObjectKey, Arc<HttpRoute>>,
    /// GRPCRoutes.
    #[serde(serialize_with = "ser_keyed")]
    pub grpc_routes: BTreeMap<ObjectKey, Arc<GrpcRoute>>,
    /// networking.istio.io VirtualServices.
    #[serde(serialize_with = "ser_keyed")]
    pub virtual_services: BTreeMap<ObjectKey, Arc<networking::VirtualService>>,
    /// networking.istio.io DestinationRules.
    #[serde(serialize_with = "ser_keyed")]
    pub destination_rules: BTreeMap<ObjectKey, Arc<networking::DestinationRule>>,
    /// Objects currently skipped because they are invalid.
    pub errors: Vec<ConfigError>,
    /// Files read.
    pub files: Vec<PathBuf>,
}

/// JSON map keys must be strings: `namespace/name`.
fn ser_keyed<S: serde::Serializer, V: Serialize>(
    map: &BTreeMap<ObjectKey, V>,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.collect_map(map.iter().map(|(k, v)| (k.to_string(), v)))
}

impl ConfigSnapshot {
    /// Builds a snapshot from objects in precedence order (a later duplicate replaces an earlier one).
    pub fn from_objects<'a>(objects: impl IntoIterator<Item = &'a Object>) -> Self {
        let mut s = ConfigSnapshot::default();
        for obj in objects {
            let replaced = match obj {
                Object::Namespace(o) => s
                    .namespaces
                    .insert(o.metadata.name.clone(), o.clone())
                    .is_some(),
                Object::Pod(o) => s
                    .pods
                    .insert(ObjectKey::of(&o.metadata), o.clone())
                    .is_some(),
                Object::Service(o) => s
                    .services
                    .insert(ObjectKey::of(&o.metadata), o.clone())
                    .is_some(),
                Object::ServiceAccount(o) => s
                    .service_accounts
                    .insert(ObjectKey::of(&o.metadata), o.clone())
                    .is_some(),
                Object::Node(o) => s.nodes.insert(o.metadata.name.clone(), o.clone()).is_some(),
                Object::EndpointSlice(o) => s
                    .endpoint_slices
                    .insert(ObjectKey::of(&o.metadata), o.clone())
                    .is_some(),
                Object::AuthorizationPolicy(o) => s
                    .authorization_policies
                    .insert(ObjectKey::of(&o.metadata), o.clone())
                    .is_some(),
                Object::PeerAuthentication(o) => s
                    .peer_authentications
                    .insert(ObjectKey::of(&o.metadata), o.clone())
                    .is_some(),
                Object::RequestAuthentication(o) => s
                    .request_authentications
                    .insert(ObjectKey::of(&o.metadata), o.clone())
                    .is_some(),
                Object::Gateway(o) => s
                    .gateways
                    .insert(ObjectKey::of(&o.metadata), o.clone())
                    .is_some(),
                Object::HttpRoute(o) => s
                    .http_routes
                    .insert(ObjectKey::of(&o.metadata), o.clone())
                    .is_some(),
                Object::GrpcRoute(o) => s
                    .grpc_routes
                    .insert(ObjectKey::of(&o.metadata), o.clone())
                    .is_some(),
                Object::VirtualService(o) => s
                    .virtual_services
                    .insert(ObjectKey::of(&o.metadata), o.clone())
                    .is_some(),
                Object::DestinationRule(o) => s
                    .destination_rules
                    .insert(ObjectKey::of(&o.metadata), o.clone())
                    .is_some(),
            };
            if replaced {
                let m = obj.meta();
                tracing::warn!(kind = obj.kind(), namespace = m.ns(), name = %m.name, "duplicate object; the one read last wins");
            }
        }
        s
    }

    /// Labels of namespace `ns` (empty when no Namespace object exists).
    pub fn namespace_labels(&self, ns: &str) -> Option<&BTreeMap<String, String>> {
        self.namespaces.get(ns).map(|n| &n.metadata.labels)
    }

    /// Where `pod` runs (its node's topology labels, its own subzone label); `None` when
    /// nothing is known.
    pub fn pod_locality(&self, pod: &Pod) -> Option<Locality> {
        let node = pod
            .spec
            .node_name
            .as_deref()
            .and_then(|n| self.nodes.get(n));
        Locality::of(&pod.metadata.labels, node.map(|n| &n.metadata.labels))
    }

    /// Pods scheduled on `node`.
    pub fn pods_on_node<'a>(&'a self, node: &'a str) -> impl Iterator<Item = &'a Arc<Pod>> + 'a {
        self.pods
            .values()
            .filter(move |p| p.spec.node_name.as_deref() == Some(node))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_serializes_to_json() {
        let parsed = parse_file(
            std::path::Path::new("a.yaml"),
            "kind: Pod\nmetadata: {name: p, namespace: n}\nstatus: {podIP: 10.0.0.1}\n---\nkind: Pod\nmetadata: {name: x}\nstatus: {podIP: nope}\n",
        );
        let mut snap = ConfigSnapshot::from_objects(&parsed.objects);
        snap.errors = parsed.errors;
        let json = serde_json::to_value(&snap).unwrap();
        assert_eq!(json["pods"]["n/p"]["status"]["podIP"], "10.0.0.1");
        assert_eq!(json["errors"][0]["field"], "status.podIP");
    }
}

//! The Kubernetes object kinds istiod-lite reads, as the subset of fields it uses.
//!
//! Adding a kind: write its struct, implement [`Kind`] (validation of the fields serde cannot
//! check), add a variant to [`Object`] and an arm to [`decode_kind`]; then index it in
//! [`super::ConfigSnapshot`]. The `security.istio.io` kinds live in [`super::security`].

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};

use super::discovery::{EndpointSlice, DISCOVERY_GROUP, DISCOVERY_VERSIONS};
use super::gateway::{Gateway, GrpcRoute, HttpRoute, GATEWAY_GROUP, GATEWAY_VERSIONS};
use super::networking::{DestinationRule, VirtualService, NETWORKING_GROUP, NETWORKING_VERSIONS};
use super::security::{
    AuthorizationPolicy, PeerAuthentication, RequestAuthentication, SECURITY_GROUP,
    SECURITY_VERSIONS,
};

/// A field-level problem in one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Dotted path of the field, e.g. `spec.ports[0].port`; empty for the whole document.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl FieldError {
    /// Builds an error for `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Accepts `null` where a list or map is expected (`labels:` with nothing under it).
pub(crate) fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// `metadata` of every object.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    /// Object name (required).
    pub name: String,
    /// Namespace; namespaced kinds default to `default`.
    #[serde(default)]
    pub namespace: Option<String>,
    /// Labels.
    #[serde(default, deserialize_with = "null_default")]
    pub labels: BTreeMap<String, String>,
    /// Annotations.
    #[serde(default, deserialize_with = "null_default")]
    pub annotations: BTreeMap<String, String>,
    /// RFC 3339 creation time, when written (the oldest of conflicting PeerAuthentications
    /// wins, as in Istio; an absent time counts as oldest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_timestamp: Option<String>,
}

impl ObjectMeta {
    /// Namespace, or "" for cluster-scoped objects (after [`Kind::validate`] defaulted it).
    pub fn ns(&self) -> &str {
        self.namespace.as_deref().unwrap_or("")
    }
}

/// core/v1 Namespace.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct Namespace {
    /// Metadata (labels carry `istio.io/dataplane-mode`).
    pub metadata: ObjectMeta,
}

/// core/v1 ServiceAccount.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct ServiceAccount {
    /// Metadata.
    pub metadata: ObjectMeta,
}

/// Node label giving its region (Kubernetes well-known label).
pub const REGION_LABEL: &str = "topology.kubernetes.io/region";
/// Node label giving its zone (Kubernetes well-known label).
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";
/// Istio's sub-zone label: on the node (Istio), or on the pod (overrides the node's here).
pub const SUBZONE_LABEL: &str = "topology.istio.io/subzone";
/// Deprecated forms of the region and zone labels, still read when the GA ones are absent.
const LEGACY_REGION_LABEL: &str = "failure-domain.beta.kubernetes.io/region";
const LEGACY_ZONE_LABEL: &str = "failure-domain.beta.kubernetes.io/zone";

/// core/v1 Node: only its labels are used (the locality of the pods scheduled on it).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct Node {
    /// Metadata (labels carry the topology).
    pub metadata: ObjectMeta,
}

/// Where a workload runs; empty strings are unknown.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Locality {
    /// Region.
    pub region: String,
    /// Zone.
    pub zone: String,
    /// Sub-zone.
    pub subzone: String,
}

impl Locality {
    /// A pod's locality from its labels and its node's: region and zone from the node, the
    /// subzone from the pod's label, else the node's. `None` when nothing is known.
    pub fn of(
        pod_labels: &BTreeMap<String, String>,
        node_labels: Option<&BTreeMap<String, String>>,
    ) -> Option<Locality> {
        let node = |keys: &[&str]| {
            node_labels
                .and_then(|l| keys.iter().find_map(|k| l.get(*k)))
                .cloned()
                .unwrap_or_default()
        };
        let l = Locality {
            region: node(&[REGION_LABEL, LEGACY_REGION_LABEL]),
            zone: node(&[ZONE_LABEL, LEGACY_ZONE_LABEL]),
            subzone: pod_labels
                .get(SUBZONE_LABEL)
                .filter(|s| !s.is_empty())
                .cloned()
                .unwrap_or_else(|| node(&[SUBZONE_LABEL])),
        };
        (!l.region.is_empty() || !l.zone.is_empty() || !l.subzone.is_empty()).then_some(l)
    }
}

/// core/v1 Pod.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct Pod {
    /// Metadata.
    pub metadata: ObjectMeta,
    /// Spec.
    #[serde(default)]
    pub spec: PodSpec,
    /// Status (podIP, conditions).
    #[serde(default)]
    pub status: PodStatus,
}

/// The parts of a pod spec we use.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PodSpec {
    /// Node the pod is scheduled on.
    #[serde(default)]
    pub node_name: Option<String>,
    /// Service account; `default` when absent.
    #[serde(default)]
    pub service_account_name: Option<String>,
    /// Containers (for named ports).
    #[serde(default, deserialize_with = "null_default")]
    pub containers: Vec<Container>,
}

/// A container (only its ports matter here).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
pub struct Container {
    /// Container name.
    #[serde(default)]
    pub name: String,
    /// Declared ports.
    #[serde(default, deserialize_with = "null_default")]
    pub ports: Vec<ContainerPort>,
}

/// A declared container port.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerPort {
    /// Port name (target of a Service's named targetPort).
    #[serde(default)]
    pub name: Option<String>,
    /// Port number.
    pub container_port: u16,
}

/// The parts of a pod status we use.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PodStatus {
    /// Pod IP as written; parsed into [`PodStatus::ip`] by validation.
    #[serde(default, rename = "podIP")]
    pub pod_ip: Option<String>,
    /// Phase (Pending, Running, Succeeded, Failed).
    #[serde(default)]
    pub phase: Option<String>,
    /// Conditions (Ready).
    #[serde(default, deserialize_with = "null_default")]
    pub conditions: Vec<PodCondition>,
    /// Parsed pod IP.
    #[serde(skip)]
    pub ip: Option<IpAddr>,
}

/// One pod condition.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct PodCondition {
    /// Condition type, e.g. Ready.
    #[serde(rename = "type")]
    pub type_: String,
    /// "True", "False" or "Unknown".
    pub status: String,
}

impl Pod {
    /// False only when the pod says so (Ready=False/Unknown); hand-written local config often has no status.
    pub fn is_ready(&self) -> bool {
        self.status
            .conditions
            .iter()
            .find(|c| c.type_ == "Ready")
            .is_none_or(|c| c.status == "True")
    }

    /// Pods that finished will never serve again.
    pub fn is_terminated(&self) -> bool {
        matches!(self.status.phase.as_deref(), Some("Succeeded" | "Failed"))
    }

    /// spec.serviceAccountName, defaulting to `default`.
    pub fn service_account(&self) -> &str {
        self.spec
            .service_account_name
            .as_deref()
            .filter(|s| !s.is_empty())
            .unwrap_or("default")
    }

    /// Number of the container port named `name`.
    pub fn named_port(&self, name: &str) -> Option<u16> {
        self.spec
            .containers
            .iter()
            .flat_map(|c| &c.ports)
            .find(|p| p.name.as_deref() == Some(name))
            .map(|p| p.container_port)
    }
}

/// core/v1 Service.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct Service {
    /// Metadata.
    pub metadata: ObjectMeta,
    /// Spec.
    #[serde(default)]
    pub spec: ServiceSpec,
}

/// The parts of a service spec we use.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    /// Pod selector; a Service without one selects no pods.
    #[serde(default, deserialize_with = "null_default")]
    pub selector: BTreeMap<String, String>,
    /// Ports.
    #[serde(default, deserialize_with = "null_default")]
    pub ports: Vec<ServicePort>,
    /// Cluster IP as written ("None" for headless); parsed into [`ServiceSpec::ip`].
    #[serde(default, rename = "clusterIP")]
    pub cluster_ip: Option<String>,
    /// Parsed cluster IP (None for headless or absent).
    #[serde(skip)]
    pub ip: Option<IpAddr>,
}

/// One service port.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServicePort {
    /// Port name (its prefix may give the protocol: http-, grpc-, ...).
    #[serde(default)]
    pub name: Option<String>,
    /// Service port.
    pub port: u16,
    /// Target port: number, or name of a container port.
    #[serde(default)]
    pub target_port: Option<IntOrString>,
    /// Explicit application protocol.
    #[serde(default)]
    pub app_protocol: Option<String>,
}

/// Kubernetes IntOrString.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum IntOrString {
    /// A number.
    Int(i64),
    /// A name (or a number written as a string).
    Str(String),
}

/// Where a service port sends traffic on the pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetPort {
    /// A fixed port.
    Number(u16),
    /// A container port name, resolved per pod.
    Named(String),
}

impl ServicePort {
    /// The validated target port (defaults to `port`).
    pub fn target(&self) -> TargetPort {
        match &self.target_port {
            None => TargetPort::Number(self.port),
            Some(IntOrString::Int(n)) => TargetPort::Number(u16::try_from(*n).unwrap_or(self.port)),
            Some(IntOrString::Str(s)) => match s.parse::<u16>() {
                Ok(n) => TargetPort::Number(n),
                Err(_) => TargetPort::Named(s.clone()),
            },
        }
    }
}

/// Common behaviour of every supported kind.
pub trait Kind: DeserializeOwned + Into<Object> {
    /// The `kind:` string.
    const KIND: &'static str;
    /// Whether objects of this kind live in a namespace.
    const NAMESPACED: bool;
    /// Mutable metadata (for defaulting the namespace).
    fn meta_mut(&mut self) -> &mut ObjectMeta;
    /// Checks what serde cannot (IP syntax, port ranges) and fills derived fields.
    fn validate(&mut self) -> Result<(), FieldError> {
        Ok(())
    }
}

fn parse_ip(field: &str, v: &str) -> Result<IpAddr, FieldError> {
    v.trim()
        .parse()
        .map_err(|_| FieldError::new(field, format!("{v:?} is not an IP address")))
}

impl Kind for Namespace {
    const KIND: &'static str = "Namespace";
    const NAMESPACED: bool = false;
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

impl Kind for Node {
    const KIND: &'static str = "Node";
    const NAMESPACED: bool = false;
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

impl Kind for ServiceAccount {
    const KIND: &'static str = "ServiceAccount";
    const NAMESPACED: bool = true;
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

impl Kind for Pod {
    const KIND: &'static str = "Pod";
    const NAMESPACED: bool = true;
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
    fn validate(&mut self) -> Result<(), FieldError> {
        if let Some(ip) = self.status.pod_ip.as_deref().filter(|s| !s.is_empty()) {
            self.status.ip = Some(parse_ip("status.podIP", ip)?);
        }
        for (ci, c) in self.spec.containers.iter().enumerate() {
            for (pi, p) in c.ports.iter().enumerate() {
                if p.container_port == 0 {
                    return Err(FieldError::new(
                        format!("spec.containers[{ci}].ports[{pi}].containerPort"),
                        "must be 1-65535",
                    ));
                }
            }
        }
        Ok(())
    }
}

impl Kind for Service {
    const KIND: &'static str = "Service";
    const NAMESPACED: bool = true;
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
    fn validate(&mut self) -> Result<(), FieldError> {
        match self.spec.cluster_ip.as_deref().map(str::trim) {
            None | Some("") | Some("None") => {}
            Some(ip) => self.spec.ip = Some(parse_ip("spec.clusterIP", ip)?),
        }
        for (i, p) in self.spec.ports.iter().enumerate() {
            if p.port == 0 {
                return Err(FieldError::new(
                    format!("spec.ports[{i}].port"),
                    "must be 1-65535",
                ));
            }
            match &p.target_port {
                Some(IntOrString::Int(n)) if !(1..=65535).contains(n) => {
                    return Err(FieldError::new(
                        format!("spec.ports[{i}].targetPort"),
                        format!("{n} is not 1-65535"),
                    ));
                }
                Some(IntOrString::Str(s)) if s.is_empty() => {
                    return Err(FieldError::new(
                        format!("spec.ports[{i}].targetPort"),
                        "empty port name",
                    ));
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// One parsed object of a supported kind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind")]
pub enum Object {
    /// A Namespace.
    Namespace(Arc<Namespace>),
    /// A Pod.
    Pod(Arc<Pod>),
    /// A Service.
    Service(Arc<Service>),
    /// A ServiceAccount.
    ServiceAccount(Arc<ServiceAccount>),
    /// A Node (its topology labels give pods their locality).
    Node(Arc<Node>),
    /// A discovery.k8s.io EndpointSlice (endpoints of Services without a selector).
    EndpointSlice(Arc<EndpointSlice>),
    /// A security.istio.io AuthorizationPolicy.
    AuthorizationPolicy(Arc<AuthorizationPolicy>),
    /// A security.istio.io PeerAuthentication.
    PeerAuthentication(Arc<PeerAuthentication>),
    /// A security.istio.io RequestAuthentication (JWT, enforced by waypoints).
    RequestAuthentication(Arc<RequestAuthentication>),
    /// A gateway.networking.k8s.io Gateway.
    Gateway(Arc<Gateway>),
    /// A gateway.networking.k8s.io HTTPRoute.
    HttpRoute(Arc<HttpRoute>),
    /// A gateway.networking.k8s.io GRPCRoute.
    GrpcRoute(Arc<GrpcRoute>),
    /// A networking.istio.io VirtualService.
    VirtualService(Arc<VirtualService>),
    /// A networking.istio.io DestinationRule.
    DestinationRule(Arc<DestinationRule>),
}

impl From<Namespace> for Object {
    fn from(v: Namespace) -> Self {
        Object::Namespace(Arc::new(v))
    }
}
impl From<Pod> for Object {
    fn from(v: Pod) -> Self {
        Object::Pod(Arc::new(v))
    }
}
impl From<Service> for Object {
    fn from(v: Service) -> Self {
        Object::Service(Arc::new(v))
    }
}
impl From<ServiceAccount> for Object {
    fn from(v: ServiceAccount) -> Self {
        Object::ServiceAccount(Arc::new(v))
    }
}
impl From<Node> for Object {
    fn from(v: Node) -> Self {
        Object::Node(Arc::new(v))
    }
}
impl From<EndpointSlice> for Object {
    fn from(v: EndpointSlice) -> Self {
        Object::EndpointSlice(Arc::new(v))
    }
}
impl From<AuthorizationPolicy> for Object {
    fn from(v: AuthorizationPolicy) -> Self {
        Object::AuthorizationPolicy(Arc::new(v))
    }
}
impl From<PeerAuthentication> for Object {
    fn from(v: PeerAuthentication) -> Self {
        Object::PeerAuthentication(Arc::new(v))
    }
}
impl From<RequestAuthentication> for Object {
    fn from(v: RequestAuthentication) -> Self {
        Object::RequestAuthentication(Arc::new(v))
    }
}

impl From<Gateway> for Object {
    fn from(v: Gateway) -> Self {
        Object::Gateway(Arc::new(v))
    }
}
impl From<HttpRoute> for Object {
    fn from(v: HttpRoute) -> Self {
        Object::HttpRoute(Arc::new(v))
    }
}
impl From<GrpcRoute> for Object {
    fn from(v: GrpcRoute) -> Self {
        Object::GrpcRoute(Arc::new(v))
    }
}
impl From<VirtualService> for Object {
    fn from(v: VirtualService) -> Self {
        Object::VirtualService(Arc::new(v))
    }
}
impl From<DestinationRule> for Object {
    fn from(v: DestinationRule) -> Self {
        Object::DestinationRule(Arc::new(v))
    }
}

impl Object {
    /// The `kind:` string.
    pub fn kind(&self) -> &'static str {
        match self {
            Object::Namespace(_) => Namespace::KIND,
            Object::Pod(_) => Pod::KIND,
            Object::Service(_) => Service::KIND,
            Object::ServiceAccount(_) => ServiceAccount::KIND,
            Object::Node(_) => Node::KIND,
            Object::EndpointSlice(_) => EndpointSlice::KIND,
            Object::AuthorizationPolicy(_) => AuthorizationPolicy::KIND,
            Object::PeerAuthentication(_) => PeerAuthentication::KIND,
            Object::RequestAuthentication(_) => RequestAuthentication::KIND,
            Object::Gateway(_) => Gateway::KIND,
            Object::HttpRoute(_) => HttpRoute::KIND,
            Object::GrpcRoute(_) => GrpcRoute::KIND,
            Object::VirtualService(_) => VirtualService::KIND,
            Object::DestinationRule(_) => DestinationRule::KIND,
        }
    }

    /// Metadata.
    pub fn meta(&self) -> &ObjectMeta {
        match self {
            Object::Namespace(o) => &o.metadata,
            Object::Pod(o) => &o.metadata,
            Object::Service(o) => &o.metadata,
            Object::ServiceAccount(o) => &o.metadata,
            Object::Node(o) => &o.metadata,
            Object::EndpointSlice(o) => &o.metadata,
            Object::AuthorizationPolicy(o) => &o.metadata,
            Object::PeerAuthentication(o) => &o.metadata,
            Object::RequestAuthentication(o) => &o.metadata,
            Object::Gateway(o) => &o.metadata,
            Object::HttpRoute(o) => &o.metadata,
            Object::GrpcRoute(o) => &o.metadata,
            Object::VirtualService(o) => &o.metadata,
            Object::DestinationRule(o) => &o.metadata,
        }
    }
}

/// Decodes `value` as kind `kind`; `Ok(None)` for kinds we do not handle (yet).
pub fn decode_kind(kind: &str, value: serde_yaml_ng::Value) -> Result<Option<Object>, FieldError> {
    match kind {
        Namespace::KIND => decode::<Namespace>(value).map(Some),
        Pod::KIND => decode::<Pod>(value).map(Some),
        Service::KIND => decode::<Service>(value).map(Some),
        ServiceAccount::KIND => decode::<ServiceAccount>(value).map(Some),
        Node::KIND => decode::<Node>(value).map(Some),
        EndpointSlice::KIND => {
            // Only discovery.k8s.io's; another group's kind of the same name is not ours.
            match value
                .get("apiVersion")
                .and_then(serde_yaml_ng::Value::as_str)
            {
                None => {}
                Some(v) => match v.split_once('/') {
                    Some((DISCOVERY_GROUP, version)) if DISCOVERY_VERSIONS.contains(&version) => {}
                    Some((DISCOVERY_GROUP, _)) => {
                        return Err(FieldError::new(
                            "apiVersion",
                            format!("{v} is not supported; use {DISCOVERY_GROUP}/v1"),
                        ))
                    }
                    _ => return Ok(None),
                },
            }
            decode::<EndpointSlice>(value).map(Some)
        }
        AuthorizationPolicy::KIND | PeerAuthentication::KIND | RequestAuthentication::KIND => {
            // Other meshes have kinds of the same name (Linkerd's AuthorizationPolicy): only
            // Istio's group is ours; another group is ignored like any unknown kind.
            match value
                .get("apiVersion")
                .and_then(serde_yaml_ng::Value::as_str)
            {
                None => {}
                Some(v) => match v.split_once('/') {
                    Some((SECURITY_GROUP, version)) if SECURITY_VERSIONS.contains(&version) => {}
                    Some((SECURITY_GROUP, _)) => {
                        return Err(FieldError::new(
                            "apiVersion",
                            format!("{v} is not supported; use {SECURITY_GROUP}/v1 (or v1beta1)"),
                        ))
                    }
                    _ => return Ok(None),
                },
            }
            match kind {
                AuthorizationPolicy::KIND => decode::<AuthorizationPolicy>(value).map(Some),
                RequestAuthentication::KIND => decode::<RequestAuthentication>(value).map(Some),
                _ => decode::<PeerAuthentication>(value).map(Some),
            }
        }
        Gateway::KIND | HttpRoute::KIND | GrpcRoute::KIND => {
            // Only the Gateway API group; another group's kind of the same name is not ours.
            match value
                .get("apiVersion")
                .and_then(serde_yaml_ng::Value::as_str)
            {
                None => {}
                Some(v) => match v.split_once('/') {
                    Some((GATEWAY_GROUP, version)) if GATEWAY_VERSIONS.contains(&version) => {}
                    Some((GATEWAY_GROUP, _)) => {
                        return Err(FieldError::new(
                            "apiVersion",
                            format!("{v} is not supported; use {GATEWAY_GROUP}/v1"),
                        ))
                    }
                    _ => return Ok(None),
                },
            }
            match kind {
                Gateway::KIND => decode::<Gateway>(value).map(Some),
                HttpRoute::KIND => decode::<HttpRoute>(value).map(Some),
                _ => decode::<GrpcRoute>(value).map(Some),
            }
        }
        VirtualService::KIND | DestinationRule::KIND => {
            // Only Istio's networking group is ours.
            match value
                .get("apiVersion")
                .and_then(serde_yaml_ng::Value::as_str)
            {
                None => {}
                Some(v) => match v.split_once('/') {
                    Some((NETWORKING_GROUP, v)) if NETWORKING_VERSIONS.contains(&v) => {}
                    Some((NETWORKING_GROUP, _)) => {
                        return Err(FieldError::new(
                            "apiVersion",
                            format!("{v} is not supported; use {NETWORKING_GROUP}/v1"),
                        ))
                    }
                    _ => return Ok(None),
                },
            }
            if kind == VirtualService::KIND {
                decode::<VirtualService>(value).map(Some)
            } else {
                decode::<DestinationRule>(value).map(Some)
            }
        }
        _ => Ok(None),
    }
}

/// Typed decode with the failing field's path, namespace defaulting and validation.
fn decode<K: Kind>(value: serde_yaml_ng::Value) -> Result<Object, FieldError> {
    let mut obj: K = serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        // serde reports a missing field on its parent ("metadata: missing field `name`");
        // point at the field itself so the operator sees "metadata.name".
        match missing_field(&inner) {
            Some(f) if path == "." => FieldError::new(f, "required field is missing"),
            Some(f) => FieldError::new(format!("{path}.{f}"), "required field is missing"),
            None => FieldError::new(if path == "." { String::new() } else { path }, inner),
        }
    })?;
    let meta = obj.meta_mut();
    if meta.name.is_empty() {
        return Err(FieldError::new("metadata.name", "must not be empty"));
    }
    if K::NAMESPACED {
        if meta.namespace.as_deref().is_none_or(str::is_empty) {
            meta.namespace = Some("default".to_string());
        }
    } else {
        meta.namespace = None;
    }
    obj.validate()?;
    Ok(obj.into())
}

fn missing_field(msg: &str) -> Option<&str> {
    let rest = msg.strip_prefix("missing field `")?;
    rest.split('`').next()
}

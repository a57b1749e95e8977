//! `discovery.k8s.io/v1` EndpointSlice: the endpoints of a Service without a selector.
//!
//! Kubernetes keeps one or more slices per Service, labelled
//! `kubernetes.io/service-name: <service>`; for a Service with a selector its controller writes
//! them from the selected pods (istiod-lite computes those endpoints from the pods itself, as
//! Istio's ambient index does), for a Service without one they are written by hand or by another
//! controller. The model reads them only for the latter (see [`crate::model::service`]).
//!
//! Validation checks what serde cannot: addresses that parse as the slice's `addressType`
//! (IPv4 or IPv6; FQDN slices are accepted and ignored, as Istio ignores them), ports in
//! 1-65535.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::kinds::{null_default, FieldError, Kind, ObjectMeta};

/// API group of EndpointSlice.
pub const DISCOVERY_GROUP: &str = "discovery.k8s.io";
/// Versions accepted (`apiVersion` may also be left out in local config).
pub const DISCOVERY_VERSIONS: [&str; 1] = ["v1"];
/// Label naming the Service a slice belongs to.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// discovery.k8s.io/v1 EndpointSlice.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointSlice {
    /// Metadata (labels carry `kubernetes.io/service-name`).
    pub metadata: ObjectMeta,
    /// `IPv4`, `IPv6` or `FQDN`.
    pub address_type: String,
    /// Endpoints.
    #[serde(default, deserialize_with = "null_default")]
    pub endpoints: Vec<SliceEndpoint>,
    /// Ports every endpoint of the slice serves.
    #[serde(default, deserialize_with = "null_default")]
    pub ports: Vec<SlicePort>,
}

/// One endpoint of a slice.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SliceEndpoint {
    /// Addresses as written; parsed into [`SliceEndpoint::ips`] by validation.
    #[serde(default, deserialize_with = "null_default")]
    pub addresses: Vec<String>,
    /// Readiness.
    #[serde(default)]
    pub conditions: EndpointConditions,
    /// The object behind the endpoint (a Pod, usually).
    #[serde(default)]
    pub target_ref: Option<TargetRef>,
    /// Node hosting the endpoint.
    #[serde(default)]
    pub node_name: Option<String>,
    /// Zone of the endpoint.
    #[serde(default)]
    pub zone: Option<String>,
    /// Parsed addresses (empty for FQDN slices).
    #[serde(skip)]
    pub ips: Vec<IpAddr>,
}

/// `conditions` of an endpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointConditions {
    /// Ready; absent means unknown, which Kubernetes says to read as ready.
    #[serde(default)]
    pub ready: Option<bool>,
    /// Serving (ready or not while terminating).
    #[serde(default)]
    pub serving: Option<bool>,
    /// Terminating.
    #[serde(default)]
    pub terminating: Option<bool>,
}

/// `targetRef` of an endpoint (a core ObjectReference).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TargetRef {
    /// Kind (`Pod`).
    #[serde(default)]
    pub kind: Option<String>,
    /// Namespace (defaults to the slice's).
    #[serde(default)]
    pub namespace: Option<String>,
    /// Name.
    #[serde(default)]
    pub name: Option<String>,
}

/// One port of a slice: `name` is the Service port's name, `port` the port on the endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SlicePort {
    /// Name of the Service port this serves ("" for a Service's single unnamed port).
    #[serde(default)]
    pub name: Option<String>,
    /// Port on the endpoint; absent means "all ports", which a Service cannot use.
    #[serde(default)]
    pub port: Option<i32>,
    /// TCP (default), UDP or SCTP.
    #[serde(default)]
    pub protocol: Option<String>,
    /// Application protocol.
    #[serde(default)]
    pub app_protocol: Option<String>,
}

impl SlicePort {
    /// The port number when it is a TCP port (the only protocol the mesh carries).
    pub fn tcp_port(&self) -> Option<u16> {
        if self.protocol.as_deref().is_some_and(|p| p != "TCP") {
            return None;
        }
        self.port.and_then(|p| u16::try_from(p).ok())
    }
}

impl SliceEndpoint {
    /// `conditions.ready`, absent read as ready (Kubernetes' rule for unknown readiness).
    pub fn is_ready(&self) -> bool {
        self.conditions.ready.unwrap_or(true)
    }

    /// The Pod behind the endpoint: `(namespace, name)`, namespace defaulting to `slice_ns`.
    pub fn pod_ref<'a>(&'a self, slice_ns: &'a str) -> Option<(&'a str, &'a str)> {
        let t = self.target_ref.as_ref()?;
        if t.kind.as_deref() != Some("Pod") {
            return None;
        }
        let ns = t
            .namespace
            .as_deref()
            .filter(|n| !n.is_empty())
            .unwrap_or(slice_ns);
        Some((ns, t.name.as_deref()?))
    }
}

impl EndpointSlice {
    /// The Service this slice belongs to (`kubernetes.io/service-name`).
    pub fn service_name(&self) -> Option<&str> {
        self.metadata
            .labels
            .get(SERVICE_NAME_LABEL)
            .map(String::as_str)
            .filter(|s| !s.is_empty())
    }

    /// False for FQDN slices, which carry hostnames the mesh cannot dial by address.
    pub fn has_ips(&self) -> bool {
        matches!(self.address_type.as_str(), "IPv4" | "IPv6")
    }
}

impl Kind for EndpointSlice {
    const KIND: &'static str = "EndpointSlice";
    const NAMESPACED: bool = true;
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
    fn validate(&mut self) -> Result<(), FieldError> {
        let want_v4 = match self.address_type.as_str() {
            "IPv4" => true,
            "IPv6" => false,
            "FQDN" => return Ok(()),
            other => {
                return Err(FieldError::new(
                    "addressType",
                    format!("{other:?} is not one of IPv4, IPv6, FQDN"),
                ))
            }
        };
        for (i, ep) in self.endpoints.iter_mut().enumerate() {
            let mut ips = Vec::with_capacity(ep.addresses.len());
            for (j, a) in ep.addresses.iter().enumerate() {
                let field = format!("endpoints[{i}].addresses[{j}]");
                let ip: IpAddr = a
                    .trim()
                    .parse()
                    .map_err(|_| FieldError::new(&field, format!("{a:?} is not an IP address")))?;
                if ip.is_ipv4() != want_v4 {
                    return Err(FieldError::new(
                        field,
                        format!("{a} is not an {} address", self.address_type),
                    ));
                }
                ips.push(ip);
            }
            ep.ips = ips;
        }
        for (i, p) in self.ports.iter().enumerate() {
            if let Some(n) = p.port {
                if !(1..=65535).contains(&n) {
                    return Err(FieldError::new(
                        format!("ports[{i}].port"),
                        format!("{n} is not 1-65535"),
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::source::parse::parse_file;
    use crate::source::{FileStore, ObjectKey};

    const SLICE: &str = "apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: db-abc12
  namespace: app
  labels: {kubernetes.io/service-name: db}
addressType: IPv4
endpoints:
- addresses: [10.9.0.1]
  conditions: {ready: true}
- addresses: [10.9.0.2]
  conditions: {ready: false}
  targetRef: {kind: Pod, name: db-0}
ports:
- {name: sql, port: 5432, protocol: TCP}
";

    /// A slice in the config directory reaches the snapshot like any kind, and its edits too.
    #[test]
    fn file_source_reads_endpoint_slices() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("slices.yaml");
        std::fs::write(&f, SLICE).unwrap();
        let mut store = FileStore::default();
        assert!(store.rescan(dir.path()));
        let snap = store.snapshot(1);
        assert!(snap.errors.is_empty(), "{:?}", snap.errors);
        let s = &snap.endpoint_slices[&ObjectKey::new("app", "db-abc12")];
        assert_eq!(s.service_name(), Some("db"));
        assert_eq!(
            s.endpoints[0].ips,
            vec!["10.9.0.1".parse::<std::net::IpAddr>().unwrap()]
        );
        assert!(s.endpoints[0].is_ready());
        assert!(!s.endpoints[1].is_ready());
        assert_eq!(s.endpoints[1].pod_ref("app"), Some(("app", "db-0")));
        assert_eq!(s.ports[0].tcp_port(), Some(5432));

        // Later writes are picked up (new mtime/size), like every other kind.
        std::fs::write(&f, SLICE.replace("10.9.0.1", "10.9.0.111")).unwrap();
        assert!(store.rescan(dir.path()));
        let snap = store.snapshot(2);
        let s = &snap.endpoint_slices[&ObjectKey::new("app", "db-abc12")];
        assert_eq!(s.endpoints[0].addresses, vec!["10.9.0.111".to_string()]);
    }

    #[test]
    fn invalid_slices_are_reported_with_the_field() {
        for (edit, field) in [
            (("addressType: IPv4", "addressType: IPX"), "addressType"),
            (("[10.9.0.1]", "[not-an-ip]"), "endpoints[0].addresses[0]"),
            (("[10.9.0.1]", "[\"fd00::1\"]"), "endpoints[0].addresses[0]"),
            (("port: 5432", "port: 70000"), "ports[0].port"),
        ] {
            let yaml = SLICE.replace(edit.0, edit.1);
            let parsed = parse_file(Path::new("slices.yaml"), &yaml);
            assert_eq!(parsed.errors.len(), 1, "{yaml}");
            assert_eq!(parsed.errors[0].field, field);
        }
        // Another group's EndpointSlice is not ours; FQDN slices are accepted but carry no IPs.
        let other = parse_file(
            Path::new("x.yaml"),
            &SLICE.replace("discovery.k8s.io/v1", "example.com/v1"),
        );
        assert!(other.objects.is_empty() && other.errors.is_empty());
        let fqdn = parse_file(
            Path::new("x.yaml"),
            &SLICE
                .replace("addressType: IPv4", "addressType: FQDN")
                .replace("[10.9.0.1]", "[db.example.com]"),
        );
        assert!(fqdn.errors.is_empty(), "{:?}", fqdn.errors);
    }
}

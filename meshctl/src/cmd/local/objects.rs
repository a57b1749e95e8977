//! The Kubernetes objects istiod-lite reads from the cluster's config directory, written the
//! way the API server would hold them (the shapes of `istiod-lite/src/source/kinds.rs`).
//! Files are written to a hidden temp name and renamed, so istiod-lite's watcher (which skips
//! dot-files) never reads half an object.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use super::error::LocalError;

/// A pod as the API server would have it.
pub struct PodObject<'a> {
    /// metadata.namespace.
    pub namespace: &'a str,
    /// metadata.name.
    pub name: &'a str,
    /// metadata.uid.
    pub uid: &'a str,
    /// metadata.labels.
    pub labels: &'a BTreeMap<String, String>,
    /// spec.nodeName.
    pub node: &'a str,
    /// spec.serviceAccountName.
    pub service_account: &'a str,
    /// status.hostIP (the node's address).
    pub host_ip: &'a str,
    /// status.podIP: None while the network is being set up (phase Pending, not Ready).
    pub ip: Option<&'a str>,
}

/// `pod.<ns>.<name>.yaml` (namespace names have no dots, so the name is unambiguous).
pub fn pod_file(dir: &Path, namespace: &str, name: &str) -> PathBuf {
    dir.join(format!("pod.{namespace}.{name}.yaml"))
}

/// `namespace.<ns>.yaml`.
pub fn namespace_file(dir: &Path, namespace: &str) -> PathBuf {
    dir.join(format!("namespace.{namespace}.yaml"))
}

/// `node.<name>.yaml`.
pub fn node_file(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("node.{name}.yaml"))
}

/// The Node object as YAML. Written once by `up` and never rewritten, so its labels are the
/// user's to edit (like `kubectl label node`): `topology.kubernetes.io/region` and
/// `topology.kubernetes.io/zone` (and `topology.istio.io/subzone`) give its pods a locality.
pub fn node_yaml(name: &str, labels: &BTreeMap<String, String>) -> String {
    let obj = json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": labels},
    });
    String::from(
        "# Node written by `meshctl local up`. meshctl does not rewrite it: edit its labels to\n\
         # give the node a locality, e.g. topology.kubernetes.io/region: us-east and\n\
         # topology.kubernetes.io/zone: zone-a (see docs/local-cluster.md).\n",
    ) + &to_yaml(&obj)
}

/// The Pod object as YAML.
pub fn pod_yaml(p: &PodObject<'_>) -> String {
    let mut status = json!({
        "phase": "Pending",
        "hostIP": p.host_ip,
        "conditions": [{"type": "Ready", "status": "False"}],
    });
    if let Some(ip) = p.ip {
        status = json!({
            "phase": "Running",
            "hostIP": p.host_ip,
            "podIP": ip,
            "podIPs": [{"ip": ip}],
            "conditions": [{"type": "Ready", "status": "True"}],
        });
    }
    let obj = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": p.name,
            "namespace": p.namespace,
            "uid": p.uid,
            "labels": p.labels,
        },
        "spec": {
            "nodeName": p.node,
            "serviceAccountName": p.service_account,
            "containers": [{"name": "app", "image": "local/app"}],
        },
        "status": status,
    });
    header("Pod") + &to_yaml(&obj)
}

/// The Namespace object as YAML.
pub fn namespace_yaml(name: &str, labels: &BTreeMap<String, String>) -> String {
    let obj = json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": name, "labels": labels},
    });
    header("Namespace") + &to_yaml(&obj)
}

fn header(kind: &str) -> String {
    format!(
        "# {kind} written by `meshctl local`; it is rewritten by the tool, edit with meshctl.\n"
    )
}

fn to_yaml(v: &Value) -> String {
    // Serialising a serde_json::Value cannot fail.
    serde_yaml_ng::to_string(v).unwrap_or_default()
}

/// Writes `path` atomically (hidden temp file, then rename).
pub fn write(path: &Path, text: &str) -> Result<(), LocalError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("object");
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).map_err(LocalError::io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(LocalError::io(path))
}

/// Removes `path`; a file that is already gone is fine.
pub fn remove(path: &Path) -> Result<(), LocalError> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(LocalError::io(path)(e)),
        _ => Ok(()),
    }
}

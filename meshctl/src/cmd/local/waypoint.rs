//! Waypoints in a local cluster: `meshctl waypoint apply|delete --local` start and stop the
//! waypoint as a pod of the cluster (its own netns, wired by the CNI chain like every pod),
//! the way a waypoint controller runs a Deployment for each Gateway.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::cluster::{ISTIOD_IP, MONITORING_PORT, XDS_PORT};
use super::error::LocalError;
use super::state::{pod_key, ClusterState};
use crate::cli::{LocalNamespaceArgs, PodAddArgs, PodRefArgs};

/// Label Istio puts on waypoint pods.
pub const GATEWAY_NAME_LABEL: &str = "gateway.networking.k8s.io/gateway-name";

/// The cluster's config directory (where the Gateway object goes).
pub fn config_dir(cluster: &str, dir: &Path) -> Result<PathBuf, LocalError> {
    Ok(load(cluster, dir)?.config_dir())
}

fn load(cluster: &str, dir: &Path) -> Result<ClusterState, LocalError> {
    ClusterState::load(dir)?.ok_or_else(|| LocalError::NoCluster {
        name: cluster.to_string(),
        dir: dir.to_path_buf(),
    })
}

/// GET from istiod-lite's monitoring port inside the cluster namespace.
pub fn istiod_get(
    cluster: &str,
    dir: &Path,
    path: &str,
    timeout: Duration,
) -> Result<crate::http::Response, LocalError> {
    let st = load(cluster, dir)?;
    super::netns::http_get_in(
        &st.netns,
        &format!("{ISTIOD_IP}:{MONITORING_PORT}"),
        path,
        timeout,
    )
    .map_err(|e| LocalError::Invalid(format!("istiod-lite in cluster {cluster}: {e}")))
}

/// Every node's ztunnel `/config_dump` (node name, response), read inside each node netns.
pub fn ztunnel_dumps(
    cluster: &str,
    dir: &Path,
    timeout: Duration,
) -> Result<Vec<(String, crate::http::Response)>, LocalError> {
    let st = load(cluster, dir)?;
    st.nodes
        .iter()
        .map(|n| {
            super::netns::http_get_in(&n.netns, "127.0.0.1:15000", "/config_dump", timeout)
                .map(|r| (n.name.clone(), r))
                .map_err(|e| LocalError::Invalid(format!("ztunnel on {}: {e}", n.name)))
        })
        .collect()
}

/// What `meshctl tap --local` reads: each node's ztunnel and each waypoint pod, as (label,
/// netns path); their admin ports are 127.0.0.1:15000 inside those namespaces.
pub fn tap_sources(cluster: &str, dir: &Path) -> Result<Vec<(String, PathBuf)>, LocalError> {
    let st = load(cluster, dir)?;
    let mut v: Vec<(String, PathBuf)> = st
        .nodes
        .iter()
        .map(|n| (format!("ztunnel {}", n.name), super::netns::path(&n.netns)))
        .collect();
    v.extend(
        st.pods
            .values()
            .filter(|p| p.labels.contains_key(GATEWAY_NAME_LABEL))
            .map(|p| (format!("waypoint {}/{}", p.namespace, p.name), super::netns::path(&p.netns))),
    );
    Ok(v)
}

/// Starts pod `<name>` in `namespace` running the waypoint for Gateway `name` (if not running).
pub fn start(
    cluster: &str,
    dir: &Path,
    namespace: &str,
    name: &str,
    out: &mut dyn Write,
) -> Result<(), LocalError> {
    let st = load(cluster, dir)?;
    if st.pods.contains_key(&pod_key(namespace, name)) {
        writeln!(out, "waypoint pod {namespace}/{name} already runs")
            .map_err(LocalError::io("stdout"))?;
        return Ok(());
    }
    // The waypoint's credential: a token istiod-lite's CA accepts for exactly its identity.
    let token = Command::new(st.bin_dir.join("istiod-lite"))
        .args(["waypoint-token", "--state-dir"])
        .arg(st.dir.join("istiod"))
        .args(["--namespace", namespace, "--gateway", name])
        .output()
        .map_err(LocalError::io(st.bin_dir.join("istiod-lite")))?;
    if !token.status.success() {
        return Err(LocalError::Invalid(format!(
            "istiod-lite waypoint-token failed: {}",
            String::from_utf8_lossy(&token.stderr).trim()
        )));
    }
    let token_file = st.dir.join(format!("waypoint.{namespace}.{name}.token"));
    std::fs::write(&token_file, &token.stdout).map_err(LocalError::io(&token_file))?;
    let a = PodAddArgs {
        pod: name.to_string(),
        namespace: namespace.to_string(),
        node: None,
        service_account: name.to_string(),
        labels: vec![(GATEWAY_NAME_LABEL.to_string(), name.to_string())],
        ready_timeout: Duration::from_secs(30),
        command: vec![
            "env".into(),
            format!("XDS_ADDRESS=http://{ISTIOD_IP}:{XDS_PORT}"),
            format!("AUTH_TOKEN={}", token_file.display()),
            format!("POD_NAMESPACE={namespace}"),
            format!("GATEWAY_NAME={name}"),
            format!("POD_NAME={name}"),
            st.bin_dir.join("waypoint").display().to_string(),
        ],
    };
    super::pod::add(cluster, dir, &a, out)
}

/// Stops and removes the waypoint pod of Gateway `name`, if any.
pub fn stop(
    cluster: &str,
    dir: &Path,
    namespace: &str,
    name: &str,
    out: &mut dyn Write,
) -> Result<(), LocalError> {
    let st = load(cluster, dir)?;
    let key = pod_key(namespace, name);
    let is_waypoint = st
        .pods
        .get(&key)
        .is_some_and(|p| p.labels.get(GATEWAY_NAME_LABEL).map(String::as_str) == Some(name));
    if !is_waypoint {
        return Ok(());
    }
    super::pod::delete(
        cluster,
        dir,
        &PodRefArgs {
            pod: name.to_string(),
            namespace: namespace.to_string(),
        },
        out,
    )
}

/// Sets (or, with `None`, removes) `istio.io/use-waypoint` on `namespace`, keeping its other labels.
pub fn label_namespace(
    cluster: &str,
    dir: &Path,
    namespace: &str,
    waypoint: Option<&str>,
    out: &mut dyn Write,
) -> Result<(), LocalError> {
    let st = load(cluster, dir)?;
    let mut labels: BTreeMap<String, String> =
        st.namespaces.get(namespace).cloned().unwrap_or_default();
    match waypoint {
        Some(w) => labels.insert("istio.io/use-waypoint".into(), w.into()),
        None => labels.remove("istio.io/use-waypoint"),
    };
    super::pod::namespace(
        cluster,
        dir,
        &LocalNamespaceArgs {
            namespace: namespace.to_string(),
            labels: labels.into_iter().collect(),
        },
        out,
    )
}

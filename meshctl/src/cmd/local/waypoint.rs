//! Waypoints in a local cluster, and reading the cluster's components.
//!
//! `meshctl waypoint apply|delete --local` start and stop the waypoint as a pod of the cluster
//! (its own netns, wired by the CNI chain like every pod), the way a waypoint controller runs a
//! Deployment for each Gateway. The commands that read a local cluster (`describe`, `tap`,
//! `check`, `stat`, `ztunnel-config` with `--local`) find istiod-lite, the ztunnels and the
//! waypoints here: every one of them listens inside its own network namespace.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::cluster::{ISTIOD_IP, MONITORING_PORT, XDS_PORT, ZTUNNEL_READINESS};
use super::error::LocalError;
use super::state::{pod_key, ClusterState, NodeState};
use crate::cli::{LocalNamespaceArgs, PodAddArgs, PodRefArgs};
use crate::cmd::Endpoint;
use crate::error::Error;
use crate::http::Response;

/// Label Istio puts on waypoint pods.
pub const GATEWAY_NAME_LABEL: &str = "gateway.networking.k8s.io/gateway-name";
/// Admin address (`/config_dump`, `/debug/tap`) of a ztunnel or waypoint inside its own
/// namespace: Istio's port, which the local cluster gives every one of them.
pub const ADMIN_IN_NETNS: &str = "127.0.0.1:15000";
/// Stats address (`/metrics`) of a ztunnel or waypoint inside its own namespace (both bind
/// every address of it on Istio's 15020).
pub const STATS_IN_NETNS: &str = "127.0.0.1:15020";

/// One node's ztunnel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeAgent {
    /// The node, e.g. `node-1`.
    pub node: String,
    /// Admin port (`/config_dump`).
    pub admin: Endpoint,
    /// Readiness port (`/healthz/ready`).
    pub readiness: Endpoint,
    /// Stats port (`/metrics`).
    pub stats: Endpoint,
    /// Its log file, once it was started.
    pub log: Option<PathBuf>,
}

/// What `check --local` and `stat --local` read in a cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Components {
    /// istiod-lite's monitoring port (`/ready`, `/debug/...`).
    pub istiod: Endpoint,
    /// istiod-lite's log file, once it was started.
    pub istiod_log: Option<PathBuf>,
    /// Every node's ztunnel, in node order (none with `up --no-mesh`).
    pub ztunnels: Vec<NodeAgent>,
    /// Every waypoint pod (`namespace/name`) with its stats port.
    pub waypoints: Vec<(String, Endpoint)>,
}

impl NodeAgent {
    fn of(n: &NodeState) -> NodeAgent {
        NodeAgent {
            node: n.name.clone(),
            admin: Endpoint::in_netns(&n.netns, ADMIN_IN_NETNS),
            readiness: Endpoint::in_netns(&n.netns, ZTUNNEL_READINESS),
            stats: Endpoint::in_netns(&n.netns, STATS_IN_NETNS),
            log: n.ztunnel.as_ref().map(|p| p.log.clone()),
        }
    }
}

impl Components {
    fn of(st: &ClusterState) -> Components {
        Components {
            istiod: istiod_endpoint(st),
            istiod_log: st.istiod.as_ref().map(|p| p.log.clone()),
            ztunnels: if st.mesh {
                st.nodes.iter().map(NodeAgent::of).collect()
            } else {
                Vec::new()
            },
            waypoints: st
                .pods
                .values()
                .filter(|p| p.labels.contains_key(GATEWAY_NAME_LABEL))
                .map(|p| (p.key(), Endpoint::in_netns(&p.netns, STATS_IN_NETNS)))
                .collect(),
        }
    }
}

fn istiod_endpoint(st: &ClusterState) -> Endpoint {
    Endpoint::in_netns(&st.netns, &format!("{ISTIOD_IP}:{MONITORING_PORT}"))
}

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

/// The cluster's state, for reading its components: a valid name and an existing cluster.
fn load_valid(cluster: &str, dir: &Path) -> Result<ClusterState, LocalError> {
    super::validate_cluster_name(cluster)?;
    load(cluster, dir)
}

/// Joining the cluster's namespaces takes CAP_SYS_ADMIN: said up front rather than as an
/// EPERM from every component.
fn need_root(cluster: &str) -> Result<(), LocalError> {
    if super::is_root() {
        return Ok(());
    }
    Err(LocalError::Invalid(format!(
        "reading the components of cluster {cluster} needs root: they listen inside its network namespaces"
    )))
}

fn need_mesh(st: &ClusterState) -> Result<(), LocalError> {
    if st.mesh {
        return Ok(());
    }
    Err(LocalError::Invalid(format!(
        "cluster {} runs without the mesh (`up --no-mesh`): it has no ztunnels",
        st.name
    )))
}

/// Where every component of the cluster answers (root: they are read inside its namespaces).
pub fn components(cluster: &str, dir: &Path) -> Result<Components, LocalError> {
    let st = load_valid(cluster, dir)?;
    need_root(cluster)?;
    Ok(Components::of(&st))
}

/// GET from istiod-lite's monitoring port inside the cluster namespace.
pub fn istiod_get(
    cluster: &str,
    dir: &Path,
    path: &str,
    timeout: Duration,
) -> Result<Response, LocalError> {
    let st = load(cluster, dir)?;
    istiod_endpoint(&st)
        .get(path, timeout)
        .map_err(|e| LocalError::Invalid(format!("istiod-lite in cluster {cluster}: {e}")))
}

/// An agent that does not answer is [`Error::Unreachable`] (exit 3), as on the host.
fn config_dump(agent: &NodeAgent, timeout: Duration) -> Result<Response, Error> {
    agent
        .admin
        .get("/config_dump", timeout)
        .map_err(|source| Error::Unreachable {
            what: format!("the ztunnel on {}", agent.node),
            addr: agent.admin.to_string(),
            source,
            hint: match &agent.log {
                Some(log) => format!("see its log: {}", log.display()),
                None => "it was never started: see `meshctl local status`".into(),
            },
        })
}

/// Every node's ztunnel `/config_dump` (node name, response), read inside each node netns.
pub fn ztunnel_dumps(
    cluster: &str,
    dir: &Path,
    timeout: Duration,
) -> Result<Vec<(String, Response)>, Error> {
    let st = load_valid(cluster, dir)?;
    need_mesh(&st)?;
    need_root(cluster)?;
    st.nodes
        .iter()
        .map(|n| config_dump(&NodeAgent::of(n), timeout).map(|r| (n.name.clone(), r)))
        .collect()
}

/// Node `node`'s ztunnel `/config_dump`, read inside its node netns. The node is looked up
/// before anything needs root, so a wrong name is a usage error whoever runs the command.
pub fn ztunnel_dump(
    cluster: &str,
    dir: &Path,
    node: &str,
    timeout: Duration,
) -> Result<Response, Error> {
    let st = load_valid(cluster, dir)?;
    need_mesh(&st)?;
    let n = st.node(node)?;
    need_root(cluster)?;
    config_dump(&NodeAgent::of(n), timeout)
}

/// What `meshctl tap --local` reads: each node's ztunnel and each waypoint pod, as (label,
/// admin endpoint inside its namespace).
pub fn tap_sources(cluster: &str, dir: &Path) -> Result<Vec<(String, Endpoint)>, LocalError> {
    let st = load(cluster, dir)?;
    let mut v: Vec<(String, Endpoint)> = st
        .nodes
        .iter()
        .map(|n| {
            (
                format!("ztunnel {}", n.name),
                Endpoint::in_netns(&n.netns, ADMIN_IN_NETNS),
            )
        })
        .collect();
    v.extend(
        st.pods
            .values()
            .filter(|p| p.labels.contains_key(GATEWAY_NAME_LABEL))
            .map(|p| {
                (
                    format!("waypoint {}/{}", p.namespace, p.name),
                    Endpoint::in_netns(&p.netns, ADMIN_IN_NETNS),
                )
            }),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn state(mesh: bool) -> ClusterState {
        let nodes: Vec<serde_json::Value> = [1, 2]
            .map(|i| {
                serde_json::json!({
                    "name": format!("node-{i}"), "index": i, "netns": format!("ambrs-c.node-{i}"),
                    "pod_cidr": format!("10.244.{i}.0/24"), "node_ip": format!("10.243.{i}.2"),
                    "cni_socket": "/s/sock", "ztunnel": null})
            })
            .into();
        serde_json::from_value(serde_json::json!({
            "name": "c", "dir": "/s", "bin_dir": "/b", "cni_dir": "/n", "mesh": mesh,
            "netns": "ambrs-c", "istiod_ip": "10.243.0.1",
            "istiod": {"pid": 1, "start_time": 1, "log": "/s/logs/istiod-lite.log", "command": []},
            "nodes": nodes,
            "pods": {
                "demo/waypoint": {"namespace": "demo", "name": "waypoint", "uid": "u1",
                    "node": "node-1", "netns": "ambrs-c.demo.waypoint", "service_account": "waypoint",
                    "labels": {GATEWAY_NAME_LABEL: "waypoint"}, "ip": null, "app": null},
                "demo/client": {"namespace": "demo", "name": "client", "uid": "u2",
                    "node": "node-1", "netns": "ambrs-c.demo.client", "service_account": "client",
                    "labels": {}, "ip": null, "app": null}
            },
            "namespaces": {}
        }))
        .unwrap()
    }

    #[test]
    fn components_are_every_node_agent_and_waypoint_pod_in_their_namespaces() {
        let c = Components::of(&state(true));
        assert_eq!(c.istiod, Endpoint::in_netns("ambrs-c", "10.243.0.1:15014"));
        assert_eq!(c.istiod_log, Some("/s/logs/istiod-lite.log".into()));
        let nodes: Vec<(&str, String, String)> = c
            .ztunnels
            .iter()
            .map(|z| (z.node.as_str(), z.admin.to_string(), z.stats.to_string()))
            .collect();
        assert_eq!(
            nodes,
            [
                (
                    "node-1",
                    "127.0.0.1:15000 in netns ambrs-c.node-1".to_string(),
                    "127.0.0.1:15020 in netns ambrs-c.node-1".to_string()
                ),
                (
                    "node-2",
                    "127.0.0.1:15000 in netns ambrs-c.node-2".to_string(),
                    "127.0.0.1:15020 in netns ambrs-c.node-2".to_string()
                )
            ]
        );
        assert_eq!(c.ztunnels[0].readiness.addr, ZTUNNEL_READINESS);
        assert_eq!(c.ztunnels[0].log, None, "never started");
        assert_eq!(
            c.waypoints,
            [(
                "demo/waypoint".to_string(),
                Endpoint::in_netns("ambrs-c.demo.waypoint", STATS_IN_NETNS)
            )]
        );
        assert!(Components::of(&state(false)).ztunnels.is_empty());
    }

    #[test]
    fn tap_sources_are_every_node_agent_and_waypoint_admin_port_in_their_namespaces() {
        let dir = tempfile::tempdir().unwrap();
        let mut st = state(true);
        st.dir = dir.path().to_path_buf();
        st.save().unwrap();
        let shown: Vec<(String, String)> = tap_sources("c", dir.path())
            .unwrap()
            .into_iter()
            .map(|(label, at)| (label, at.to_string()))
            .collect();
        let want = [
            ("ztunnel node-1", "127.0.0.1:15000 in netns ambrs-c.node-1"),
            ("ztunnel node-2", "127.0.0.1:15000 in netns ambrs-c.node-2"),
            (
                "waypoint demo/waypoint",
                "127.0.0.1:15000 in netns ambrs-c.demo.waypoint",
            ),
        ]
        .map(|(l, a)| (l.to_string(), a.to_string()));
        assert_eq!(shown, want);
    }

    #[test]
    fn an_agent_that_does_not_answer_is_unreachable_naming_its_node_and_log() {
        let addr = crate::cmd::testing::closed_addr();
        let agent = NodeAgent {
            node: "node-2".into(),
            admin: Endpoint::host(&addr),
            readiness: Endpoint::host(&addr),
            stats: Endpoint::host(&addr),
            log: Some("/s/logs/ztunnel-node-2.log".into()),
        };
        let err = config_dump(&agent, Duration::from_secs(1)).unwrap_err();
        assert_eq!(err.exit_code(), crate::error::EXIT_UNREACHABLE, "{err}");
        let text = err.to_string();
        assert!(
            text.starts_with(&format!("cannot reach the ztunnel on node-2 at {addr}"))
                && text.contains("see its log: /s/logs/ztunnel-node-2.log"),
            "{text}"
        );
    }

    #[test]
    fn unknown_nodes_and_meshless_clusters_are_usage_errors_before_any_netns_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let write = |mesh: bool| {
            let mut st = state(mesh);
            st.dir = dir.path().to_path_buf();
            st.save().unwrap();
        };
        write(true);
        let err = ztunnel_dump("c", dir.path(), "node-9", Duration::from_secs(1)).unwrap_err();
        assert!(
            matches!(err, Error::Local(LocalError::NoNode { .. })),
            "{err}"
        );
        write(false);
        for err in [
            ztunnel_dump("c", dir.path(), "node-1", Duration::from_secs(1)).unwrap_err(),
            ztunnel_dumps("c", dir.path(), Duration::from_secs(1)).unwrap_err(),
        ] {
            assert!(err.to_string().contains("runs without the mesh"), "{err}");
        }
        let err = components("bad.name", dir.path()).unwrap_err();
        assert!(err.to_string().contains("cluster name"), "{err}");
    }
}

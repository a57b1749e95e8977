//! The cluster's state file (`<state-dir>/state.json`): what `up` and `pod add` created, so
//! that later invocations (`status`, `pod delete`, `down`) find pids, namespaces and IPs. Every
//! command that changes it holds an exclusive `flock` on `<state-dir>/lock` while it works.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use super::error::LocalError;
use super::process::Proc;

/// File name of the state inside the state directory.
pub const STATE_FILE: &str = "state.json";
/// Lock file name.
pub const LOCK_FILE: &str = "lock";

/// Everything `meshctl local` created for one cluster.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ClusterState {
    /// Cluster name.
    pub name: String,
    /// State directory.
    pub dir: PathBuf,
    /// Directory of istiod-lite, ztunnel, ambient-cni.
    pub bin_dir: PathBuf,
    /// Directory of the CNI reference plugins.
    pub cni_dir: PathBuf,
    /// False with `up --no-mesh`: no ambient-cni, no ztunnels.
    pub mesh: bool,
    /// The cluster network namespace (istiod-lite, router between nodes).
    pub netns: String,
    /// istiod-lite's address inside the cluster namespace (on its `lo`).
    pub istiod_ip: String,
    /// istiod-lite, once started.
    pub istiod: Option<Proc>,
    /// Nodes, in order.
    pub nodes: Vec<NodeState>,
    /// Pods by `namespace/name`.
    pub pods: BTreeMap<String, PodState>,
    /// Namespace objects written, with their labels.
    pub namespaces: BTreeMap<String, BTreeMap<String, String>>,
}

/// One node.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NodeState {
    /// `node-<n>`.
    pub name: String,
    /// Its number n (pod CIDR 10.244.n.0/24, link 10.243.n.0/24).
    pub index: u8,
    /// Its network namespace.
    pub netns: String,
    /// Pod CIDR.
    pub pod_cidr: String,
    /// The node's address on its link to the cluster namespace.
    pub node_ip: String,
    /// The enrollment socket ztunnel serves (ambient-cni's `ztunnel_socket`).
    pub cni_socket: PathBuf,
    /// ztunnel, once started (None with `--no-mesh`).
    pub ztunnel: Option<Proc>,
}

/// One pod.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PodState {
    /// Kubernetes namespace.
    pub namespace: String,
    /// Pod name.
    pub name: String,
    /// metadata.uid (also the CNI container id).
    pub uid: String,
    /// Node it runs on.
    pub node: String,
    /// Its network namespace.
    pub netns: String,
    /// spec.serviceAccountName.
    pub service_account: String,
    /// metadata.labels.
    pub labels: BTreeMap<String, String>,
    /// IP from CNI ADD (None while the pod is being created).
    pub ip: Option<String>,
    /// The command running in it, if any.
    pub app: Option<Proc>,
}

impl PodState {
    /// `namespace/name`.
    pub fn key(&self) -> String {
        pod_key(&self.namespace, &self.name)
    }
}

/// `namespace/name`.
pub fn pod_key(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

impl ClusterState {
    /// Path of the state file.
    pub fn path(&self) -> PathBuf {
        self.dir.join(STATE_FILE)
    }

    /// Loads `<dir>/state.json`; `Ok(None)` when there is none.
    pub fn load(dir: &Path) -> Result<Option<ClusterState>, LocalError> {
        let path = dir.join(STATE_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(LocalError::io(path)(e)),
        };
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|source| LocalError::State { path, source })
    }

    /// Writes the state atomically (temp file + rename), so a crash never leaves half a file.
    pub fn save(&self) -> Result<(), LocalError> {
        let path = self.path();
        let tmp = self.dir.join(format!(".{STATE_FILE}.tmp"));
        let text = serde_json::to_string_pretty(self)
            .map_err(|e| LocalError::Invalid(format!("serialising the state: {e}")))?;
        std::fs::write(&tmp, text + "\n").map_err(LocalError::io(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(LocalError::io(&path))
    }

    /// The node called `name`.
    pub fn node(&self, name: &str) -> Result<&NodeState, LocalError> {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .ok_or_else(|| LocalError::NoNode {
                node: name.to_string(),
                cluster: self.name.clone(),
                nodes: self
                    .nodes
                    .iter()
                    .map(|n| n.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    /// Node with the fewest pods (first on ties): the default placement.
    pub fn least_loaded_node(&self) -> Option<&NodeState> {
        self.nodes
            .iter()
            .min_by_key(|n| self.pods.values().filter(|p| p.node == n.name).count())
    }

    /// istiod-lite's config directory (the YAML it watches).
    pub fn config_dir(&self) -> PathBuf {
        self.dir.join("config")
    }

    /// Directory of a pod's files (CNI results, logs).
    pub fn pod_dir(&self, namespace: &str, name: &str) -> PathBuf {
        self.dir.join("pods").join(format!("{namespace}.{name}"))
    }

    /// Directory of a node's files (conflist, IPAM data, token, socket, ztunnel log).
    pub fn node_dir(&self, node: &str) -> PathBuf {
        self.dir.join("nodes").join(node)
    }
}

/// An exclusive lock on a cluster's state directory, released on drop.
pub struct StateLock {
    _lock: Flock<File>,
}

impl StateLock {
    /// Takes the lock, creating the directory and lock file if needed (waits for other
    /// `meshctl local` commands on the same cluster).
    pub fn acquire(dir: &Path) -> Result<StateLock, LocalError> {
        std::fs::create_dir_all(dir).map_err(LocalError::io(dir))?;
        let path = dir.join(LOCK_FILE);
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(LocalError::io(&path))?;
        let lock = Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, e)| LocalError::Io {
            path,
            source: std::io::Error::from(e),
        })?;
        Ok(StateLock { _lock: lock })
    }
}

//! Errors of `meshctl local`. Each message says what failed and where to look (a log file, a
//! command to run), because the operator cannot see inside the namespaces without help.

use std::path::PathBuf;
use std::time::Duration;

use crate::error::{EXIT_FAILED, EXIT_UNREACHABLE, EXIT_USAGE};

/// Why a `meshctl local` command failed.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    /// Not root: network namespaces, veth pairs and bridges need CAP_SYS_ADMIN and CAP_NET_ADMIN.
    #[error(
        "the local cluster needs root: it creates network namespaces, veth pairs and bridges\n  \
         hint: run it as root (sudo), or use explicit mode without root: apps reach the mesh \
         through ztunnel's SOCKS5 port on loopback (`make demo`, docs/getting-started.md)"
    )]
    NeedsRoot,
    /// Bad input (names, labels, arguments).
    #[error("{0}")]
    Invalid(String),
    /// No state for this cluster.
    #[error(
        "cluster {name:?} does not exist (no {}/state.json)\n  hint: create it with `meshctl local up --name {name}` (and give the same --state-dir to every command)",
        dir.display()
    )]
    NoCluster {
        /// Cluster name.
        name: String,
        /// State directory looked at.
        dir: PathBuf,
    },
    /// `up` found an existing cluster of that name.
    #[error("cluster {name:?} already exists ({why})\n  hint: `meshctl local down --name {name}` removes it")]
    Exists {
        /// Cluster name.
        name: String,
        /// What was found.
        why: String,
    },
    /// A prerequisite (binary, plugin) is missing.
    #[error("{what} not found at {}\n  hint: {hint}", path.display())]
    Missing {
        /// What is missing.
        what: String,
        /// Where it was expected.
        path: PathBuf,
        /// How to get it.
        hint: String,
    },
    /// A helper command (`ip`, `nsenter`) failed.
    #[error("`{cmd}` failed ({status}): {stderr}")]
    Command {
        /// The command line.
        cmd: String,
        /// Exit status.
        status: String,
        /// Its stderr.
        stderr: String,
    },
    /// A CNI plugin returned an error object or garbage (boxed: it is the largest variant).
    #[error(transparent)]
    Plugin(Box<PluginError>),
    /// A component did not become ready in time.
    #[error("{what} was not ready within {timeout:?} ({last})\n  hint: read its log: {}", log.display())]
    NotReady {
        /// "ztunnel on node node-1", ...
        what: String,
        /// How long we waited.
        timeout: Duration,
        /// The last thing we saw.
        last: String,
        /// Its log file.
        log: PathBuf,
    },
    /// A component exited while we waited for it.
    #[error("{what} exited while starting ({status})\n  hint: read its log: {}", log.display())]
    Exited {
        /// Which process.
        what: String,
        /// Its exit status.
        status: String,
        /// Its log file.
        log: PathBuf,
    },
    /// No such node.
    #[error("node {node:?} does not exist in cluster {cluster:?} (nodes: {nodes})")]
    NoNode {
        /// Requested node.
        node: String,
        /// Cluster name.
        cluster: String,
        /// The nodes it has.
        nodes: String,
    },
    /// No such pod.
    #[error("pod {0} does not exist\n  hint: `meshctl local status` lists the pods")]
    NoPod(String),
    /// The pod exists already.
    #[error("pod {0} already exists\n  hint: `meshctl local pod delete` it first")]
    PodExists(String),
    /// Filesystem trouble.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What happened.
        source: std::io::Error,
    },
    /// The state file cannot be parsed.
    #[error("state file {} is unreadable: {source}\n  hint: `meshctl local down` still removes the cluster's namespaces by name", path.display())]
    State {
        /// The file.
        path: PathBuf,
        /// Parse error.
        source: serde_json::Error,
    },
    /// Cleanup finished but some steps failed.
    #[error("cleanup finished with {} problem(s):\n  {}", .0.len(), .0.join("\n  "))]
    Cleanup(Vec<String>),
    /// `exec`: the command exited with this code (nothing more to say).
    #[error("command exited with code {0}")]
    ChildExit(i32),
}

/// What a failed CNI plugin call said.
#[derive(Debug, thiserror::Error)]
#[error(
    "CNI {command} of pod {pod}: plugin {plugin} failed (code {code}): {msg}{details}\n  hint: the plugins' stderr is in {}",
    log.display()
)]
pub struct PluginError {
    /// `ADD`, `DEL`, `CHECK`.
    pub command: String,
    /// `namespace/name`.
    pub pod: String,
    /// Plugin type.
    pub plugin: String,
    /// CNI error code (0 when the plugin did not print an error object).
    pub code: i64,
    /// Error message.
    pub msg: String,
    /// `: details`, or empty.
    pub details: String,
    /// Where the plugins' stderr went.
    pub log: PathBuf,
}

impl LocalError {
    /// Exit code: 2 for usage (including not root), 3 for readiness, the child's code for
    /// `exec`, else 1.
    pub fn exit_code(&self) -> i32 {
        match self {
            LocalError::NeedsRoot
            | LocalError::Invalid(_)
            | LocalError::NoCluster { .. }
            | LocalError::Exists { .. }
            | LocalError::NoNode { .. }
            | LocalError::NoPod(_)
            | LocalError::PodExists(_) => EXIT_USAGE,
            LocalError::NotReady { .. } | LocalError::Exited { .. } => EXIT_UNREACHABLE,
            LocalError::ChildExit(code) => *code,
            _ => EXIT_FAILED,
        }
    }

    /// `exec`'s child already spoke for itself.
    pub fn is_silent(&self) -> bool {
        matches!(self, LocalError::ChildExit(_))
    }

    /// An [`LocalError::Io`] for `path`.
    pub fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> LocalError {
        let path = path.into();
        move |source| LocalError::Io { path, source }
    }
}

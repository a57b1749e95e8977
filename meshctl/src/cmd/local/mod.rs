//! `meshctl local`: a small cluster made of Linux network namespaces on this machine.
//!
//! ```text
//!   ambrs-<C>  (cluster netns: istiod-lite on 10.243.0.1, routes 10.244.n.0/24 -> node n)
//!     | veth-node-1 10.243.1.1 <-> eth0 10.243.1.2   ambrs-<C>.node-1 (ztunnel, bridge cni0 10.244.1.1)
//!     |                                                 `- pods ambrs-<C>.<ns>.<pod>: eth0 10.244.1.x
//!     | veth-node-2 10.243.2.1 <-> eth0 10.243.2.2   ambrs-<C>.node-2 ...
//! ```
//!
//! Pods are wired by the real CNI reference plugins (bridge + host-local, loopback) chained
//! with ambient-cni, called exactly as a container runtime calls them ([`cni`]). The Kubernetes
//! objects istiod-lite reads are written to the cluster's config directory ([`objects`]). What
//! was created is recorded in `<state-dir>/state.json` ([`state`]) so every command is a
//! separate invocation. See docs/local-cluster.md.

mod cluster;
pub mod cni;
mod error;
pub mod netns;
pub mod objects;
mod pod;
pub mod process;
pub mod state;
#[cfg(test)]
mod tests;
pub mod waypoint;

use std::io::Write;
use std::path::{Path, PathBuf};

pub use error::{LocalError, PluginError};

use crate::cli::{LocalArgs, LocalCommand, PodCommand};
use crate::error::Error;

/// Default parent of state directories.
pub const DEFAULT_STATE_ROOT: &str = "/run/ambient-rs/local";
/// Prefix of every namespace the tool creates.
pub const NETNS_PREFIX: &str = "ambrs-";
/// Environment variable with the log filter of `meshctl local` (default `info`).
pub const LOG_ENV: &str = "MESHCTL_LOG";

/// Runs a `meshctl local` command.
pub fn run(args: &LocalArgs, out: &mut dyn Write) -> Result<(), Error> {
    init_logging();
    validate_cluster_name(&args.cluster)?;
    if !is_root() {
        return Err(LocalError::NeedsRoot.into());
    }
    let dir = state_dir(&args.cluster, args.state_dir.as_deref());
    let r = match &args.command {
        LocalCommand::Up(a) => cluster::up(&args.cluster, &dir, a, out),
        LocalCommand::Down => cluster::down(&args.cluster, &dir, out),
        LocalCommand::Status(a) => cluster::status(&args.cluster, &dir, a, out),
        LocalCommand::Pod(PodCommand::Add(a)) => pod::add(&args.cluster, &dir, a, out),
        LocalCommand::Pod(PodCommand::Delete(a)) => pod::delete(&args.cluster, &dir, a, out),
        LocalCommand::Pod(PodCommand::Check(a)) => pod::check(&args.cluster, &dir, a, out),
        LocalCommand::Exec(a) => pod::exec(&args.cluster, &dir, a),
        LocalCommand::Namespace(a) => pod::namespace(&args.cluster, &dir, a, out),
        LocalCommand::RestartZtunnel(a) => cluster::restart_ztunnel(&args.cluster, &dir, a, out),
    };
    Ok(r?)
}

/// Logs go to stderr (stdout carries results such as the pod IP).
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env(LOG_ENV)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .without_time()
        .try_init();
}

/// The state directory: the flag, else `/run/ambient-rs/local/<cluster>`.
pub fn state_dir(cluster: &str, flag: Option<&Path>) -> PathBuf {
    flag.map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_ROOT).join(cluster))
}

/// True when the effective uid is 0 (from /proc: no libc call needed).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

/// Cluster names become namespace names and file names: a short DNS label, no dots (the dot
/// separates the cluster from its nodes and pods in namespace names).
pub fn validate_cluster_name(name: &str) -> Result<(), LocalError> {
    if name.len() > 20 || !is_dns_label(name) {
        return Err(LocalError::Invalid(format!(
            "cluster name {name:?}: use 1-20 lowercase letters, digits and '-', starting and ending with a letter or digit"
        )));
    }
    Ok(())
}

/// A Kubernetes namespace name (DNS label, at most 63 characters).
pub fn validate_namespace(name: &str) -> Result<(), LocalError> {
    if !is_dns_label(name) || name.len() > 63 {
        return Err(LocalError::Invalid(format!(
            "namespace {name:?} is not a DNS label (1-63 lowercase letters, digits, '-')"
        )));
    }
    Ok(())
}

/// A pod or service account name (DNS subdomain, at most 253 characters; we allow 200 so the
/// namespace name `ambrs-<C>.<ns>.<pod>` stays a valid file name).
pub fn validate_object_name(what: &str, name: &str) -> Result<(), LocalError> {
    let ok = !name.is_empty() && name.len() <= 200 && name.split('.').all(is_dns_label);
    if !ok {
        return Err(LocalError::Invalid(format!(
            "{what} {name:?} is not a DNS subdomain (lowercase letters, digits, '-' and '.')"
        )));
    }
    Ok(())
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Namespace names: the cluster's, a node's, a pod's.
pub mod names {
    use super::NETNS_PREFIX;

    /// `ambrs-<cluster>`.
    pub fn cluster(cluster: &str) -> String {
        format!("{NETNS_PREFIX}{cluster}")
    }
    /// `ambrs-<cluster>.<node>`.
    pub fn node(cluster: &str, node: &str) -> String {
        format!("{NETNS_PREFIX}{cluster}.{node}")
    }
    /// `ambrs-<cluster>.<namespace>.<pod>`.
    pub fn pod(cluster: &str, namespace: &str, pod: &str) -> String {
        format!("{NETNS_PREFIX}{cluster}.{namespace}.{pod}")
    }
}

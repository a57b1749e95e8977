//! Network namespaces and links, through `ip` and `nsenter` (iproute2 and util-linux), and
//! HTTP probes run from inside a namespace. Every link, address, route and sysctl is set with
//! `ip -n <ns>` or inside `nsenter --net=...`: nothing here touches the machine's own network
//! namespace; `ip netns add` only creates the bind mount under /run/netns.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use nix::sched::CloneFlags;

use super::error::LocalError;
use crate::http::{HttpError, Response};

/// Where `ip netns add` puts namespaces.
pub const NETNS_DIR: &str = "/run/netns";

/// `/run/netns/<name>`.
pub fn path(name: &str) -> PathBuf {
    PathBuf::from(NETNS_DIR).join(name)
}

/// True when `/run/netns/<name>` exists.
pub fn exists(name: &str) -> bool {
    path(name).exists()
}

/// Runs `cmd`; fails with its stderr.
pub fn run(cmd: &mut Command) -> Result<Output, LocalError> {
    let line = format!("{cmd:?}").replace('"', "");
    tracing::debug!(cmd = %line, "run");
    let out = cmd.output().map_err(|e| LocalError::Command {
        cmd: line.clone(),
        status: "not started".into(),
        stderr: e.to_string(),
    })?;
    if !out.status.success() {
        return Err(LocalError::Command {
            cmd: line,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(out)
}

/// `ip -n <ns> <args...>`.
pub fn ip_in(ns: &str, args: &[&str]) -> Result<(), LocalError> {
    run(Command::new("ip").arg("-n").arg(ns).args(args)).map(drop)
}

/// `ip netns add <name>` and `lo` up.
pub fn create(name: &str) -> Result<(), LocalError> {
    run(Command::new("ip").args(["netns", "add", name]))?;
    ip_in(name, &["link", "set", "lo", "up"])
}

/// `ip netns delete <name>`; a namespace that is already gone is fine.
pub fn delete(name: &str) -> Result<(), LocalError> {
    if !exists(name) {
        return Ok(());
    }
    run(Command::new("ip").args(["netns", "delete", name])).map(drop)
}

/// Namespaces under /run/netns whose name is `prefix` or starts with `prefix.` (the cluster
/// namespace and everything in it).
pub fn list_cluster(prefix: &str) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(NETNS_DIR) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n == prefix || n.starts_with(&format!("{prefix}.")))
        .collect();
    names.sort();
    names
}

/// Sets an IPv4 sysctl (e.g. `ip_forward`) inside `ns`. /proc/sys/net belongs to the reading
/// process's namespace, so writing it from a process nsenter put there changes only `ns`.
pub fn sysctl(ns: &str, key: &str, value: &str) -> Result<(), LocalError> {
    let file = format!("/proc/sys/{}", key.replace('.', "/"));
    run(Command::new("nsenter")
        .arg(format!("--net={}", path(ns).display()))
        .args(["--", "sh", "-c", &format!("echo {value} > {file}")]))
    .map(drop)
}

/// Moves the calling thread into namespace `name`. setns(CLONE_NEWNET) affects only the
/// calling thread, so call it on a thread of its own that serves only that namespace.
pub fn enter(name: &str) -> std::io::Result<()> {
    let file = std::fs::File::open(path(name))?;
    nix::sched::setns(&file, CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)
}

/// GET `http://<addr><path>` from inside namespace `ns`, on a short-lived thread that
/// [`enter`]s it. Not entering the namespace is a failed connection ([`HttpError::Connect`],
/// naming it), and HTTP errors keep their kind: callers report them as they report the same
/// failures on this host.
pub fn http_get_in(
    ns: &str,
    addr: &str,
    req_path: &str,
    timeout: Duration,
) -> Result<Response, HttpError> {
    let entering = |e: std::io::Error| {
        HttpError::Connect(std::io::Error::new(
            e.kind(),
            format!("entering network namespace {ns}: {e}"),
        ))
    };
    let (name, addr, req_path) = (ns.to_string(), addr.to_string(), req_path.to_string());
    let joined = std::thread::spawn(
        move || -> Result<Result<Response, HttpError>, std::io::Error> {
            enter(&name)?;
            Ok(crate::http::get(&addr, &req_path, timeout))
        },
    )
    .join();
    match joined {
        Ok(Ok(answer)) => answer,
        Ok(Err(e)) => Err(entering(e)),
        Err(_) => Err(HttpError::Io(std::io::Error::other(
            "the request thread panicked",
        ))),
    }
}

//! Pods: `pod add|delete|check`, `exec` and `namespace`.
//!
//! `pod add` follows Kubernetes' order, where the Pod object exists before its network:
//! (1) the Pod object without `status.podIP` (istiod-lite pushes it, so the node's ztunnel knows
//! the workload when ambient-cni asks), (2) the CNI ADD chains (loopback for `lo`, then the
//! node's conflist for `eth0`), (3) the Pod object again with `status.podIP`, phase Running.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use super::cluster::{self, CONFLIST_FILE, LOOPBACK_FILE};
use super::cni::{self, Runtime};
use super::error::LocalError;
use super::objects::{self, PodObject};
use super::process::{self, Spec};
use super::state::{pod_key, ClusterState, NodeState, PodState, StateLock};
use super::{names, netns, validate_namespace, validate_object_name};
use crate::cli::{LocalExecArgs, LocalNamespaceArgs, PodAddArgs, PodRefArgs};

/// The two networks of every pod: (interface, config file in the node directory), in ADD order.
const NETWORKS: [(&str, &str); 2] = [("lo", LOOPBACK_FILE), ("eth0", CONFLIST_FILE)];

fn load(cluster: &str, dir: &Path) -> Result<ClusterState, LocalError> {
    ClusterState::load(dir)?.ok_or_else(|| LocalError::NoCluster {
        name: cluster.into(),
        dir: dir.to_path_buf(),
    })
}

/// A random RFC 4122 version-4 UID, like the API server assigns.
fn new_uid() -> Result<String, LocalError> {
    let mut b = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .map_err(LocalError::io("/dev/urandom"))?;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    ))
}

fn read_json(path: &Path) -> Result<Value, LocalError> {
    let text = std::fs::read_to_string(path).map_err(LocalError::io(path))?;
    serde_json::from_str(&text).map_err(|e| LocalError::Invalid(format!("{}: {e}", path.display())))
}

/// The CNI runtime view of `pod` on `node`.
fn runtime<'a>(
    pod: &'a PodState,
    cni_path: &'a [PathBuf],
    host: &'a Path,
    pod_ns: &'a Path,
    log: &'a Path,
    key: &'a str,
) -> Runtime<'a> {
    Runtime {
        cni_path,
        host_netns: Some(host),
        container_id: &pod.uid,
        netns: pod_ns,
        args: cni::k8s_args(&pod.namespace, &pod.name, &pod.uid, &pod.uid),
        pod: key,
        log,
    }
}

fn cached_result(st: &ClusterState, pod: &PodState, ifname: &str) -> Option<Value> {
    read_json(
        &st.pod_dir(&pod.namespace, &pod.name)
            .join(format!("cni-{ifname}.json")),
    )
    .ok()
}

fn pod_object<'a>(pod: &'a PodState, node: &'a NodeState, ip: Option<&'a str>) -> PodObject<'a> {
    PodObject {
        namespace: &pod.namespace,
        name: &pod.name,
        uid: &pod.uid,
        labels: &pod.labels,
        node: &node.name,
        service_account: &pod.service_account,
        host_ip: &node.node_ip,
        ip,
    }
}

/// `meshctl local pod add`.
pub fn add(
    cluster: &str,
    dir: &Path,
    a: &PodAddArgs,
    out: &mut dyn Write,
) -> Result<(), LocalError> {
    validate_namespace(&a.namespace)?;
    validate_object_name("pod name", &a.pod)?;
    validate_object_name("service account", &a.service_account)?;
    let _lock = StateLock::acquire(dir)?;
    let mut st = load(cluster, dir)?;
    let key = pod_key(&a.namespace, &a.pod);
    if st.pods.contains_key(&key) {
        return Err(LocalError::PodExists(key));
    }
    let node = match &a.node {
        Some(n) => st.node(n)?.clone(),
        None => st
            .least_loaded_node()
            .cloned()
            .ok_or_else(|| LocalError::Invalid("the cluster has no nodes".into()))?,
    };
    if st.mesh {
        // ambient-cni asks the node's ztunnel about every pod: without it ADD would fail.
        cluster::wait_node_ready(&st, &node, a.ready_timeout)?;
    }
    let pod_ns = names::pod(cluster, &a.namespace, &a.pod);
    if netns::exists(&pod_ns) {
        return Err(LocalError::Exists {
            name: cluster.into(),
            why: format!("network namespace {pod_ns} of pod {key} is left over; `meshctl local pod delete {} -n {}` removes it", a.pod, a.namespace),
        });
    }
    if !st.namespaces.contains_key(&a.namespace) {
        // kubectl would refuse; creating it (without labels, so not in the mesh) is friendlier.
        tracing::info!(namespace = %a.namespace, "creating Namespace object (no labels)");
        write_namespace(&st, &a.namespace, &BTreeMap::new())?;
        st.namespaces.insert(a.namespace.clone(), BTreeMap::new());
    }
    let pod = PodState {
        namespace: a.namespace.clone(),
        name: a.pod.clone(),
        uid: new_uid()?,
        node: node.name.clone(),
        netns: pod_ns.clone(),
        service_account: a.service_account.clone(),
        labels: a.labels.iter().cloned().collect(),
        ip: None,
        app: None,
    };
    // Recorded before anything is created, so `down` and `pod delete` can undo a crash.
    st.pods.insert(key.clone(), pod.clone());
    st.save()?;

    match create(&st, &node, &pod) {
        Ok(ip) => {
            let p = st
                .pods
                .get_mut(&key)
                .ok_or_else(|| LocalError::NoPod(key.clone()))?;
            p.ip = Some(ip.clone());
            st.save()?;
            if !a.command.is_empty() {
                let log = st.pod_dir(&pod.namespace, &pod.name).join("app.log");
                let mut env: Vec<(String, String)> = std::env::vars().collect();
                env.extend([
                    ("POD_NAME".into(), pod.name.clone()),
                    ("POD_NAMESPACE".into(), pod.namespace.clone()),
                    ("POD_IP".into(), ip.clone()),
                    ("NODE_NAME".into(), node.name.clone()),
                    ("SERVICE_ACCOUNT".into(), pod.service_account.clone()),
                ]);
                let (_child, proc) = process::spawn(&Spec {
                    netns: &pod_ns,
                    argv: &a.command,
                    env: Some(env),
                    log: &log,
                })?;
                if let Some(p) = st.pods.get_mut(&key) {
                    p.app = Some(proc);
                }
                st.save()?;
            }
            tracing::info!(pod = %key, node = %node.name, ip = %ip, netns = %pod_ns, "pod running");
            writeln!(out, "{ip}").map_err(LocalError::io("stdout"))
        }
        Err(e) => {
            for p in teardown(&st, &pod) {
                tracing::warn!("{p}");
            }
            st.pods.remove(&key);
            st.save()?;
            Err(e)
        }
    }
}

/// Steps (1)-(3) of `pod add`; returns the pod IP.
fn create(st: &ClusterState, node: &NodeState, pod: &PodState) -> Result<String, LocalError> {
    let pdir = st.pod_dir(&pod.namespace, &pod.name);
    std::fs::create_dir_all(&pdir).map_err(LocalError::io(&pdir))?;
    let file = objects::pod_file(&st.config_dir(), &pod.namespace, &pod.name);
    objects::write(&file, &objects::pod_yaml(&pod_object(pod, node, None)))?;
    netns::create(&pod.netns)?;
    let cni_path = [st.cni_dir.clone(), st.bin_dir.clone()];
    let host = netns::path(&node.netns);
    let pod_ns = netns::path(&pod.netns);
    let log = pdir.join("cni.log");
    let key = pod.key();
    let rt = runtime(pod, &cni_path, &host, &pod_ns, &log, &key);
    let ndir = st.node_dir(&node.name);
    let mut eth0 = None;
    for (ifname, conf) in NETWORKS {
        let net = read_json(&ndir.join(conf))?;
        let result = rt.add(&net, ifname)?;
        let path = pdir.join(format!("cni-{ifname}.json"));
        std::fs::write(
            &path,
            serde_json::to_string_pretty(&result).unwrap_or_default(),
        )
        .map_err(LocalError::io(&path))?;
        if ifname == "eth0" {
            eth0 = Some(result);
        }
    }
    let ip = eth0.as_ref().and_then(cni::result_ipv4).ok_or_else(|| {
        LocalError::Invalid(format!(
            "CNI ADD of pod {key} returned no IPv4 address (see {})",
            pdir.display()
        ))
    })?;
    objects::write(&file, &objects::pod_yaml(&pod_object(pod, node, Some(&ip))))?;
    Ok(ip)
}

/// Undoes a pod: stops its processes, CNI DEL (eth0 chain in reverse, then lo), deletes its
/// namespace, Pod object and files. Keeps going past failures and returns them.
pub fn teardown(st: &ClusterState, pod: &PodState) -> Vec<String> {
    let mut problems = Vec::new();
    let key = pod.key();
    tracing::info!(pod = %key, netns = %pod.netns, "deleting pod");
    if let Some(app) = &pod.app {
        if let Err(e) = app.stop() {
            problems.push(format!("pod {key} app: {e}"));
        }
    }
    problems.extend(process::stop_all_in_netns(&pod.netns));
    let pdir = st.pod_dir(&pod.namespace, &pod.name);
    match st.node(&pod.node) {
        Ok(node) => {
            let cni_path = [st.cni_dir.clone(), st.bin_dir.clone()];
            let host = netns::path(&node.netns);
            // The spec lets DEL run without a namespace (it may be gone already).
            let pod_ns = if netns::exists(&pod.netns) {
                netns::path(&pod.netns)
            } else {
                PathBuf::new()
            };
            let log = pdir.join("cni.log");
            let _ = std::fs::create_dir_all(&pdir);
            let rt = runtime(pod, &cni_path, &host, &pod_ns, &log, &key);
            let ndir = st.node_dir(&node.name);
            for (ifname, conf) in NETWORKS.iter().rev() {
                match read_json(&ndir.join(conf)) {
                    Ok(net) => {
                        let cached = cached_result(st, pod, ifname);
                        for e in rt.del(&net, ifname, cached.as_ref()) {
                            problems.push(e.to_string());
                        }
                    }
                    Err(e) => problems.push(e.to_string()),
                }
            }
        }
        Err(e) => problems.push(e.to_string()),
    }
    if let Err(e) = netns::delete(&pod.netns) {
        problems.push(e.to_string());
    }
    if let Err(e) = objects::remove(&objects::pod_file(
        &st.config_dir(),
        &pod.namespace,
        &pod.name,
    )) {
        problems.push(e.to_string());
    }
    if problems.is_empty() {
        let _ = std::fs::remove_dir_all(&pdir);
    }
    problems
}

/// `meshctl local pod delete`.
pub fn delete(
    cluster: &str,
    dir: &Path,
    a: &PodRefArgs,
    out: &mut dyn Write,
) -> Result<(), LocalError> {
    let _lock = StateLock::acquire(dir)?;
    let mut st = load(cluster, dir)?;
    let key = pod_key(&a.namespace, &a.pod);
    let pod = st
        .pods
        .get(&key)
        .cloned()
        .ok_or_else(|| LocalError::NoPod(key.clone()))?;
    let problems = teardown(&st, &pod);
    st.pods.remove(&key);
    st.save()?;
    if !problems.is_empty() {
        return Err(LocalError::Cleanup(problems));
    }
    writeln!(out, "pod {key} deleted").map_err(LocalError::io("stdout"))
}

/// `meshctl local pod check`: CNI CHECK of every plugin, with the cached ADD results.
pub fn check(
    cluster: &str,
    dir: &Path,
    a: &PodRefArgs,
    out: &mut dyn Write,
) -> Result<(), LocalError> {
    let st = load(cluster, dir)?;
    let key = pod_key(&a.namespace, &a.pod);
    let pod = st
        .pods
        .get(&key)
        .ok_or_else(|| LocalError::NoPod(key.clone()))?;
    let node = st.node(&pod.node)?;
    let cni_path = [st.cni_dir.clone(), st.bin_dir.clone()];
    let host = netns::path(&node.netns);
    let pod_ns = netns::path(&pod.netns);
    let log = st.pod_dir(&pod.namespace, &pod.name).join("cni.log");
    let rt = runtime(pod, &cni_path, &host, &pod_ns, &log, &key);
    let ndir = st.node_dir(&node.name);
    for (ifname, conf) in NETWORKS {
        let net = read_json(&ndir.join(conf))?;
        let cached = cached_result(&st, pod, ifname).ok_or_else(|| {
            LocalError::Invalid(format!(
                "pod {key} has no cached CNI result for {ifname}: was ADD interrupted?"
            ))
        })?;
        for plugin in rt.check(&net, ifname, &cached)? {
            writeln!(out, "ok  {plugin} ({ifname})").map_err(LocalError::io("stdout"))?;
        }
    }
    Ok(())
}

/// `meshctl local exec`: the command inherits meshctl's stdio; its exit code becomes ours.
pub fn exec(cluster: &str, dir: &Path, a: &LocalExecArgs) -> Result<(), LocalError> {
    let st = load(cluster, dir)?;
    let key = pod_key(&a.namespace, &a.pod);
    let pod = st
        .pods
        .get(&key)
        .ok_or_else(|| LocalError::NoPod(key.clone()))?;
    if !netns::exists(&pod.netns) {
        return Err(LocalError::Invalid(format!(
            "pod {key}: its network namespace {} is gone",
            pod.netns
        )));
    }
    let _ = std::io::stdout().flush();
    let status = Command::new("nsenter")
        .arg(format!("--net={}", netns::path(&pod.netns).display()))
        .arg("--")
        .args(&a.command)
        .env("POD_NAME", &pod.name)
        .env("POD_NAMESPACE", &pod.namespace)
        .env("POD_IP", pod.ip.clone().unwrap_or_default())
        .status()
        .map_err(|e| LocalError::Invalid(format!("cannot run nsenter: {e}")))?;
    match status.code() {
        Some(0) => Ok(()),
        Some(c) => Err(LocalError::ChildExit(c)),
        // Killed by a signal: the shell convention.
        None => Err(LocalError::ChildExit(
            128 + std::os::unix::process::ExitStatusExt::signal(&status).unwrap_or(0),
        )),
    }
}

fn write_namespace(
    st: &ClusterState,
    ns: &str,
    labels: &BTreeMap<String, String>,
) -> Result<(), LocalError> {
    objects::write(
        &objects::namespace_file(&st.config_dir(), ns),
        &objects::namespace_yaml(ns, labels),
    )
}

/// `meshctl local namespace`: writes (or rewrites) the Namespace object; istiod-lite's watcher
/// picks the change up, so flipping `istio.io/dataplane-mode` takes effect without restarts.
pub fn namespace(
    cluster: &str,
    dir: &Path,
    a: &LocalNamespaceArgs,
    out: &mut dyn Write,
) -> Result<(), LocalError> {
    validate_namespace(&a.namespace)?;
    let _lock = StateLock::acquire(dir)?;
    let mut st = load(cluster, dir)?;
    let labels: BTreeMap<String, String> = a.labels.iter().cloned().collect();
    write_namespace(&st, &a.namespace, &labels)?;
    let verb = if st
        .namespaces
        .insert(a.namespace.clone(), labels.clone())
        .is_some()
    {
        "updated"
    } else {
        "created"
    };
    st.save()?;
    let shown: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    writeln!(
        out,
        "namespace {} {verb}{}",
        a.namespace,
        if shown.is_empty() {
            String::new()
        } else {
            format!(" ({})", shown.join(", "))
        }
    )
    .map_err(LocalError::io("stdout"))
}

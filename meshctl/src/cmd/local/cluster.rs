//! `up`, `down` and `status`: the cluster itself (namespaces, links, routes, istiod-lite, the
//! ztunnels).

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::cni::{self, NodeNet};
use super::error::LocalError;
use super::process::{self, Proc, Spec};
use super::state::{ClusterState, NodeState, StateLock};
use super::{names, netns, objects, pod};
use crate::cli::{LocalStatusArgs, LocalUpArgs};
use crate::output::{self, Format, Table};

/// istiod-lite's address on the cluster namespace's `lo` (reachable from every node).
pub const ISTIOD_IP: &str = "10.243.0.1";
/// istiod-lite's plaintext xDS + CA port (Istio's 15010, the local-mode port).
pub const XDS_PORT: u16 = 15010;
/// istiod-lite's TLS xDS + CA port.
pub const XDS_TLS_PORT: u16 = 15012;
/// istiod-lite's monitoring port (`/ready`, `/metrics`).
pub const MONITORING_PORT: u16 = 15014;
/// The label every Kubernetes node carries with its own name.
pub const HOSTNAME_LABEL: &str = "kubernetes.io/hostname";
/// ztunnel's readiness port inside each node namespace.
pub const ZTUNNEL_READINESS: &str = "127.0.0.1:15021";
/// The in-pod mark ztunnel puts on its sockets (istio-cni's 0x539), skipped by the in-pod rules.
pub const PACKET_MARK: &str = "1337";
/// Where ztunnel's enrollment socket lives in each node's directory.
pub const CNI_SOCKET: &str = "cni.sock";
/// The node's conflist file name (what a runtime would read from /etc/cni/net.d).
pub const CONFLIST_FILE: &str = "10-ambrs.conflist";
/// The loopback network's file name.
pub const LOOPBACK_FILE: &str = "99-loopback.conf";
/// Directories searched for the CNI reference plugins when `--cni-dir` is not given.
pub const CNI_DIRS: [&str; 2] = ["/usr/lib/cni", "/opt/cni/bin"];
/// Unix socket paths are limited to 108 bytes (sun_path).
const MAX_SOCKET_PATH: usize = 107;
const POLL: Duration = Duration::from_millis(50);
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Node `n`'s pod CIDR, gateway, its address and the cluster's address on their link.
pub fn node_addrs(n: u8) -> (String, String, String, String) {
    (
        format!("10.244.{n}.0/24"),
        format!("10.244.{n}.1"),
        format!("10.243.{n}.2"),
        format!("10.243.{n}.1"),
    )
}

/// `meshctl local up`.
pub fn up(
    cluster: &str,
    dir: &Path,
    a: &LocalUpArgs,
    out: &mut dyn Write,
) -> Result<(), LocalError> {
    let _lock = StateLock::acquire(dir)?;
    if ClusterState::load(dir)?.is_some() {
        return Err(LocalError::Exists {
            name: cluster.into(),
            why: format!("state in {}", dir.display()),
        });
    }
    let cluster_ns = names::cluster(cluster);
    let leftovers = netns::list_cluster(&cluster_ns);
    if !leftovers.is_empty() {
        return Err(LocalError::Exists {
            name: cluster.into(),
            why: format!("network namespaces {} exist", leftovers.join(", ")),
        });
    }
    let bin_dir = match &a.bin_dir {
        Some(d) => d.clone(),
        None => own_dir()?,
    };
    let cni_dir = match &a.cni_dir {
        Some(d) => d.clone(),
        None => CNI_DIRS
            .iter()
            .map(PathBuf::from)
            .find(|d| d.join("bridge").is_file())
            .unwrap_or_else(|| PathBuf::from(CNI_DIRS[0])),
    };
    let mesh = !a.no_mesh;
    prerequisites(&bin_dir, &cni_dir, mesh, dir)?;
    // A failed earlier `up` may have left logs and config: start from a clean directory.
    for sub in ["config", "istiod", "nodes", "pods", "logs"] {
        let p = dir.join(sub);
        if p.exists() {
            std::fs::remove_dir_all(&p).map_err(LocalError::io(&p))?;
        }
        std::fs::create_dir_all(&p).map_err(LocalError::io(&p))?;
    }
    let mut st = ClusterState {
        name: cluster.into(),
        dir: dir.to_path_buf(),
        bin_dir,
        cni_dir,
        mesh,
        netns: cluster_ns,
        istiod_ip: ISTIOD_IP.into(),
        istiod: None,
        nodes: Vec::new(),
        pods: BTreeMap::new(),
        namespaces: BTreeMap::new(),
    };
    // Saved first, so `down` can clean up whatever a crash leaves behind.
    st.save()?;
    let mut children: Vec<Child> = Vec::new();
    let res = build(&mut st, a, &mut children);
    if let Err(e) = res {
        tracing::error!(error = %e, "up failed: stopping what it started");
        let problems = teardown(&st);
        for mut c in children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for p in problems {
            tracing::warn!("{p}");
        }
        let _ = std::fs::remove_file(st.path());
        tracing::info!(
            "logs kept in {}; `meshctl local down --name {cluster}` removes them",
            dir.join("logs").display()
        );
        return Err(e);
    }
    st.save()?;
    summary(&st, out).map_err(LocalError::io("stdout"))
}

fn own_dir() -> Result<PathBuf, LocalError> {
    let exe = std::env::current_exe().map_err(LocalError::io("/proc/self/exe"))?;
    Ok(exe.parent().map(Path::to_path_buf).unwrap_or_default())
}

fn on_path(prog: &str) -> bool {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/sbin", "/sbin"])
        .any(|d| Path::new(d).join(prog).is_file());
    found
}

fn prerequisites(bin_dir: &Path, cni_dir: &Path, mesh: bool, dir: &Path) -> Result<(), LocalError> {
    for (prog, pkg) in [("ip", "iproute2"), ("nsenter", "util-linux")] {
        if !on_path(prog) {
            return Err(LocalError::Missing {
                what: prog.into(),
                path: PathBuf::from("PATH"),
                hint: format!("apt-get install {pkg}"),
            });
        }
    }
    let mut bins = vec!["istiod-lite"];
    if mesh {
        bins.extend(["ztunnel", "ambient-cni"]);
    }
    for b in bins {
        let p = bin_dir.join(b);
        if !p.is_file() {
            return Err(LocalError::Missing {
                what: b.into(),
                path: p,
                hint: "build it (`cargo build -p istiod-lite -p ztunnel -p ambient-cni`) or point --bin-dir at it".into(),
            });
        }
    }
    for plugin in ["bridge", "host-local", "loopback"] {
        let p = cni_dir.join(plugin);
        if !p.is_file() {
            return Err(LocalError::Missing {
                what: format!("CNI plugin {plugin}"),
                path: p,
                hint: "apt-get install containernetworking-plugins (or `make prereqs`), or point --cni-dir at the plugins".into(),
            });
        }
    }
    let sock = dir.join("nodes").join("node-50").join(CNI_SOCKET);
    if mesh && sock.as_os_str().len() > MAX_SOCKET_PATH {
        return Err(LocalError::Invalid(format!(
            "state directory {} is too long for a unix socket path ({} > {MAX_SOCKET_PATH} bytes): use a shorter --state-dir",
            dir.display(),
            sock.as_os_str().len()
        )));
    }
    Ok(())
}

/// Creates namespaces and links, then starts and waits for the processes. `st` records
/// progress so a failure can be undone.
fn build(
    st: &mut ClusterState,
    a: &LocalUpArgs,
    children: &mut Vec<Child>,
) -> Result<(), LocalError> {
    let cns = st.netns.clone();
    tracing::info!(netns = %cns, "creating the cluster namespace");
    netns::create(&cns)?;
    netns::sysctl(&cns, "net.ipv4.ip_forward", "1")?;
    netns::ip_in(
        &cns,
        &["addr", "add", &format!("{ISTIOD_IP}/32"), "dev", "lo"],
    )?;
    for n in 1..=a.nodes {
        let node = format!("node-{n}");
        let ns = names::node(&st.name, &node);
        let (cidr, gateway, node_ip, peer_ip) = node_addrs(n);
        let veth = format!("veth-{node}");
        tracing::info!(node = %node, netns = %ns, pod_cidr = %cidr, "creating node");
        netns::create(&ns)?;
        // Created from inside the cluster namespace with its peer placed straight into the
        // node's: the link never exists in the machine's own namespace.
        netns::ip_in(
            &cns,
            &[
                "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ],
        )?;
        netns::ip_in(
            &cns,
            &["addr", "add", &format!("{peer_ip}/24"), "dev", &veth],
        )?;
        netns::ip_in(&cns, &["link", "set", &veth, "up"])?;
        netns::ip_in(
            &ns,
            &["addr", "add", &format!("{node_ip}/24"), "dev", "eth0"],
        )?;
        netns::ip_in(&ns, &["link", "set", "eth0", "up"])?;
        netns::ip_in(&ns, &["route", "add", "default", "via", &peer_ip])?;
        netns::ip_in(&cns, &["route", "add", &cidr, "via", &node_ip])?;
        netns::sysctl(&ns, "net.ipv4.ip_forward", "1")?;
        let ndir = st.node_dir(&node);
        std::fs::create_dir_all(ndir.join("ipam")).map_err(LocalError::io(&ndir))?;
        let sock = ndir.join(CNI_SOCKET);
        let ipam = ndir.join("ipam");
        let list = cni::conflist(&NodeNet {
            subnet: &cidr,
            gateway: &gateway,
            ipam_dir: &ipam,
            ztunnel_socket: st.mesh.then_some(sock.as_path()),
        });
        write_json(&ndir.join(CONFLIST_FILE), &list)?;
        write_json(&ndir.join(LOOPBACK_FILE), &cni::loopback_conf())?;
        // The Node object, as an API server holds one per node; its labels (edited by the
        // user) are where pods get their locality from.
        let labels = BTreeMap::from([(HOSTNAME_LABEL.to_string(), node.clone())]);
        objects::write(
            &objects::node_file(&st.config_dir(), &node),
            &objects::node_yaml(&node, &labels),
        )?;
        st.nodes.push(NodeState {
            name: node,
            index: n,
            netns: ns,
            pod_cidr: cidr,
            node_ip,
            cni_socket: sock,
            ztunnel: None,
        });
        st.save()?;
    }

    // istiod-lite, in the cluster namespace.
    let log = st.dir.join("logs").join("istiod-lite.log");
    let env = vec![
        ("CONFIG_DIR".into(), st.config_dir().display().to_string()),
        (
            "STATE_DIR".into(),
            st.dir.join("istiod").display().to_string(),
        ),
        (
            "XDS_PLAINTEXT_ADDR".into(),
            format!("{ISTIOD_IP}:{XDS_PORT}"),
        ),
        ("XDS_TLS_ADDR".into(), format!("{ISTIOD_IP}:{XDS_TLS_PORT}")),
        (
            "MONITORING_ADDR".into(),
            format!("{ISTIOD_IP}:{MONITORING_PORT}"),
        ),
    ];
    let argv = vec![st.bin_dir.join("istiod-lite").display().to_string()];
    let (mut child, proc) = process::spawn(&Spec {
        netns: &cns,
        argv: &argv,
        env: Some(base_env(env)),
        log: &log,
    })?;
    st.istiod = Some(proc);
    st.save()?;
    let mon = format!("{ISTIOD_IP}:{MONITORING_PORT}");
    let waited = wait_ready("istiod-lite", &mut child, &log, a.ready_timeout, || {
        probe_200(&cns, &mon, "/ready")
    });
    children.push(child);
    waited?;
    tracing::info!(addr = %format!("{ISTIOD_IP}:{XDS_PORT}"), "istiod-lite ready");

    if !st.mesh {
        return Ok(());
    }
    let mut started = Vec::new();
    for i in 0..st.nodes.len() {
        let (child, log) = start_ztunnel(st, i)?;
        started.push((st.nodes[i].clone(), child, log));
    }
    let mut result = Ok(());
    for (node, mut child, log) in started {
        if result.is_ok() {
            result = wait_ready(
                &format!("ztunnel on node {}", node.name),
                &mut child,
                &log,
                a.ready_timeout,
                || ztunnel_ready(&node),
            );
            if result.is_ok() {
                tracing::info!(node = %node.name, socket = %node.cni_socket.display(), "ztunnel ready");
            }
        }
        children.push(child);
    }
    result
}

/// Starts node `i`'s ztunnel (in-pod mode, inside the node netns) and records it.
fn start_ztunnel(st: &mut ClusterState, i: usize) -> Result<(Child, PathBuf), LocalError> {
    let node = st.nodes[i].clone();
    let ndir = st.node_dir(&node.name);
    let token = node_token(st, &node.name)?;
    let token_path = ndir.join("token");
    write_secret(&token_path, &token)?;
    let env = vec![
        ("NODE_NAME".into(), node.name.clone()),
        (
            "XDS_ADDRESS".into(),
            format!("http://{ISTIOD_IP}:{XDS_PORT}"),
        ),
        ("AUTH_TOKEN".into(), token_path.display().to_string()),
        ("ADMIN_ADDR".into(), "127.0.0.1:15000".into()),
        ("STATS_ADDR".into(), "0.0.0.0:15020".into()),
        ("READINESS_ADDR".into(), "0.0.0.0:15021".into()),
        // In-pod mode: ztunnel opens 15001/15006/15008/15053 inside each enrolled pod, so
        // nothing listens on them in the node itself, and there is no SOCKS5 port.
        ("SOCKS5_ADDR".into(), String::new()),
        ("OUTBOUND_ADDR".into(), String::new()),
        ("INBOUND_PLAINTEXT_ADDR".into(), String::new()),
        ("PACKET_MARK".into(), PACKET_MARK.into()),
        ("INPOD_UDS".into(), node.cni_socket.display().to_string()),
    ];
    let log = st
        .dir
        .join("logs")
        .join(format!("ztunnel-{}.log", node.name));
    let argv = vec![st.bin_dir.join("ztunnel").display().to_string()];
    let (child, proc) = process::spawn(&Spec {
        netns: &node.netns,
        argv: &argv,
        env: Some(base_env(env)),
        log: &log,
    })?;
    st.nodes[i].ztunnel = Some(proc);
    st.save()?;
    Ok((child, log))
}

/// `restart-ztunnel`: stops a node's ztunnel (SIGTERM and drain, or SIGKILL as a crash), starts
/// a new one and waits until it is ready. The pods keep their rules meanwhile; the new ztunnel
/// re-adopts them from its state file.
pub fn restart_ztunnel(
    cluster: &str,
    dir: &Path,
    a: &crate::cli::RestartZtunnelArgs,
    out: &mut dyn Write,
) -> Result<(), LocalError> {
    let _lock = StateLock::acquire(dir)?;
    let mut st = ClusterState::load(dir)?.ok_or_else(|| LocalError::NoCluster {
        name: cluster.to_string(),
        dir: dir.to_path_buf(),
    })?;
    let i = st
        .nodes
        .iter()
        .position(|n| n.name == a.node)
        .ok_or_else(|| LocalError::Invalid(format!("no node {:?} in cluster {cluster}", a.node)))?;
    if !st.mesh {
        return Err(LocalError::Invalid(
            "this cluster runs without the mesh (--no-mesh): no ztunnel to restart".into(),
        ));
    }
    if let Some(old) = st.nodes[i].ztunnel.take() {
        if a.kill {
            old.kill()?;
        } else {
            old.stop()?;
        }
    }
    let (mut child, log) = start_ztunnel(&mut st, i)?;
    let node = st.nodes[i].clone();
    let waited = wait_ready(
        &format!("ztunnel on node {}", node.name),
        &mut child,
        &log,
        a.ready_timeout,
        || ztunnel_ready(&node),
    );
    // Dropping the handle leaves the process running (its own process group), as after `up`.
    drop(child);
    waited?;
    writeln!(out, "ztunnel on {} restarted and ready", node.name).map_err(LocalError::io(dir))?;
    Ok(())
}

/// The environment every component gets: PATH, RUST_LOG, and its own variables (nothing else
/// from the caller's shell, so a stray XDS_ADDRESS cannot redirect it).
fn base_env(mut vars: Vec<(String, String)>) -> Vec<(String, String)> {
    vars.push((
        "PATH".into(),
        std::env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".into()),
    ));
    vars.push((
        "RUST_LOG".into(),
        std::env::var("MESHCTL_LOCAL_RUST_LOG").unwrap_or_else(|_| "info".into()),
    ));
    vars
}

fn write_json(path: &Path, v: &Value) -> Result<(), LocalError> {
    let text = serde_json::to_string_pretty(v).unwrap_or_default() + "\n";
    std::fs::write(path, text).map_err(LocalError::io(path))
}

fn write_secret(path: &Path, text: &str) -> Result<(), LocalError> {
    std::fs::write(path, text).map_err(LocalError::io(path))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(LocalError::io(path))
}

/// `istiod-lite node-token --state-dir <state>/istiod --node <node>`.
fn node_token(st: &ClusterState, node: &str) -> Result<String, LocalError> {
    let out = netns::run(
        Command::new(st.bin_dir.join("istiod-lite"))
            .arg("node-token")
            .arg("--state-dir")
            .arg(st.dir.join("istiod"))
            .args(["--node", node]),
    )?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn probe_200(ns: &str, addr: &str, path: &str) -> Result<(), String> {
    let r = netns::http_get_in(ns, addr, path, PROBE_TIMEOUT).map_err(|e| e.to_string())?;
    if r.status == 200 {
        Ok(())
    } else {
        Err(format!("{path} answered {}", r.summary()))
    }
}

/// Ready for pods: the enrollment socket exists and `/healthz/ready` answers 200.
pub fn ztunnel_ready(node: &NodeState) -> Result<(), String> {
    match std::fs::metadata(&node.cni_socket) {
        Ok(m) if m.file_type().is_socket() => {}
        Ok(_) => {
            return Err(format!(
                "{} exists but is not a socket",
                node.cni_socket.display()
            ))
        }
        Err(_) => {
            return Err(format!(
                "enrollment socket {} does not exist yet (ztunnel serves it when INPOD_UDS is set)",
                node.cni_socket.display()
            ))
        }
    }
    probe_200(&node.netns, ZTUNNEL_READINESS, "/healthz/ready")
}

/// Polls `probe` until it succeeds, the child exits, or `timeout` passes.
fn wait_ready(
    what: &str,
    child: &mut Child,
    log: &Path,
    timeout: Duration,
    mut probe: impl FnMut() -> Result<(), String>,
) -> Result<(), LocalError> {
    let start = Instant::now();
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(LocalError::Exited {
                what: what.into(),
                status: status.to_string(),
                log: log.to_path_buf(),
            });
        }
        let last = match probe() {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        if start.elapsed() >= timeout {
            return Err(LocalError::NotReady {
                what: what.into(),
                timeout,
                last,
                log: log.to_path_buf(),
            });
        }
        std::thread::sleep(POLL);
    }
}

/// Waits (for `pod add`) until a node's ztunnel, started by an earlier `up`, is ready.
pub fn wait_node_ready(
    st: &ClusterState,
    node: &NodeState,
    timeout: Duration,
) -> Result<(), LocalError> {
    let log = node
        .ztunnel
        .as_ref()
        .map(|p| p.log.clone())
        .unwrap_or_else(|| {
            st.dir
                .join("logs")
                .join(format!("ztunnel-{}.log", node.name))
        });
    let what = format!("ztunnel on node {}", node.name);
    let start = Instant::now();
    loop {
        if !node.ztunnel.as_ref().is_some_and(Proc::alive) {
            return Err(LocalError::Exited {
                what,
                status: "not running".into(),
                log,
            });
        }
        let last = match ztunnel_ready(node) {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        if start.elapsed() >= timeout {
            return Err(LocalError::NotReady {
                what,
                timeout,
                last,
                log,
            });
        }
        std::thread::sleep(POLL);
    }
}

fn summary(st: &ClusterState, out: &mut dyn Write) -> std::io::Result<()> {
    writeln!(
        out,
        "cluster {} is up ({}): istiod-lite at {}:{} in network namespace {}",
        st.name,
        if st.mesh {
            "mesh"
        } else {
            "no mesh: plain CNI networking"
        },
        st.istiod_ip,
        XDS_PORT,
        st.netns
    )?;
    for n in &st.nodes {
        writeln!(
            out,
            "  {}: namespace {}, pods {}",
            n.name, n.netns, n.pod_cidr
        )?;
    }
    writeln!(out, "state and logs: {}", st.dir.display())?;
    writeln!(
        out,
        "next: meshctl local namespace demo --label istio.io/dataplane-mode=ambient{}",
        name_flag(st)
    )?;
    writeln!(
        out,
        "      meshctl local pod add web -n demo --node node-1{} -- python3 examples/apps/server.py --pod web --bind 0.0.0.0 --port 8080",
        name_flag(st)
    )
}

fn name_flag(st: &ClusterState) -> String {
    if st.name == "ambient" {
        String::new()
    } else {
        format!(" --name {}", st.name)
    }
}

/// Stops everything and deletes every namespace of the cluster; returns the problems met
/// (cleanup keeps going past each one).
fn teardown(st: &ClusterState) -> Vec<String> {
    let mut problems = Vec::new();
    // Pods first, while their node's ztunnel still runs (ambient-cni's DEL tells it).
    for p in st.pods.values() {
        problems.extend(pod::teardown(st, p));
    }
    for n in &st.nodes {
        if let Some(z) = &n.ztunnel {
            if let Err(e) = z.stop() {
                problems.push(format!("ztunnel on {}: {e}", n.name));
            }
        }
    }
    if let Some(i) = &st.istiod {
        if let Err(e) = i.stop() {
            problems.push(format!("istiod-lite: {e}"));
        }
    }
    problems.extend(delete_namespaces(&st.name));
    problems
}

/// Deletes `ambrs-<C>` and every `ambrs-<C>.*` namespace (deepest first: pods, nodes, then
/// the cluster), stopping anything still running inside. Deleting a namespace destroys its
/// links, and with them their veth peers in the other namespaces.
fn delete_namespaces(cluster: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let mut all = netns::list_cluster(&names::cluster(cluster));
    all.sort_by_key(|n| std::cmp::Reverse(n.matches('.').count()));
    for ns in all {
        problems.extend(process::stop_all_in_netns(&ns));
        tracing::info!(netns = %ns, "deleting");
        if let Err(e) = netns::delete(&ns) {
            problems.push(e.to_string());
        }
    }
    problems
}

/// `meshctl local down`.
pub fn down(cluster: &str, dir: &Path, out: &mut dyn Write) -> Result<(), LocalError> {
    let existed = dir.exists();
    let lock = StateLock::acquire(dir)?;
    let mut problems = Vec::new();
    let st = match ClusterState::load(dir) {
        Ok(st) => st,
        Err(e) => {
            // Still remove what we can find by name.
            problems.push(e.to_string());
            None
        }
    };
    match &st {
        Some(st) => problems.extend(teardown(st)),
        None => problems.extend(delete_namespaces(cluster)),
    }
    // Remove the files we created; the directory itself too unless the caller's --state-dir
    // held other things.
    for sub in ["config", "istiod", "nodes", "pods", "logs"] {
        let p = dir.join(sub);
        if p.exists() {
            if let Err(e) = std::fs::remove_dir_all(&p) {
                problems.push(format!("{}: {e}", p.display()));
            }
        }
    }
    for f in [super::state::STATE_FILE, super::state::LOCK_FILE] {
        let _ = std::fs::remove_file(dir.join(f));
    }
    drop(lock);
    let _ = std::fs::remove_dir(dir);
    // The default parents (/run/ambient-rs/local, /run/ambient-rs) go too once empty;
    // remove_dir refuses non-empty directories, so another cluster's files are safe.
    if dir.starts_with(super::DEFAULT_STATE_ROOT) {
        for parent in [super::DEFAULT_STATE_ROOT, "/run/ambient-rs"] {
            let _ = std::fs::remove_dir(parent);
        }
    }
    if existed || st.is_some() {
        writeln!(out, "cluster {cluster} removed").map_err(LocalError::io("stdout"))?;
    } else {
        writeln!(out, "cluster {cluster} does not exist; nothing to do")
            .map_err(LocalError::io("stdout"))?;
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(LocalError::Cleanup(problems))
    }
}

fn alive_word(p: Option<&Proc>) -> String {
    match p {
        None => "-".into(),
        Some(p) if p.alive() => format!("pid {} running", p.pid),
        Some(p) => format!("pid {} exited", p.pid),
    }
}

/// `meshctl local status`.
pub fn status(
    cluster: &str,
    dir: &Path,
    a: &LocalStatusArgs,
    out: &mut dyn Write,
) -> Result<(), LocalError> {
    let st = ClusterState::load(dir)?.ok_or_else(|| LocalError::NoCluster {
        name: cluster.into(),
        dir: dir.to_path_buf(),
    })?;
    let w = LocalError::io("stdout");
    if matches!(a.output, Format::Json | Format::Yaml) {
        let v = status_json(&st);
        let text = if a.output == Format::Json {
            output::to_json(&v)
        } else {
            serde_yaml_ng::to_string(&v).unwrap_or_default()
        };
        return writeln!(out, "{}", text.trim_end()).map_err(w);
    }
    let mut text = format!(
        "cluster {} ({}), state {}\nistiod-lite {}:{} in {}: {}\n\n",
        st.name,
        if st.mesh { "mesh" } else { "no mesh" },
        st.dir.display(),
        st.istiod_ip,
        XDS_PORT,
        st.netns,
        alive_word(st.istiod.as_ref())
    );
    let mut nodes = Table::new(&["NODE", "NETNS", "NODE IP", "POD CIDR", "PODS", "ZTUNNEL"]);
    for n in &st.nodes {
        let z = if st.mesh {
            let mut s = alive_word(n.ztunnel.as_ref());
            if n.ztunnel.as_ref().is_some_and(Proc::alive) {
                s += if ztunnel_ready(n).is_ok() {
                    ", ready"
                } else {
                    ", not ready"
                };
            }
            s
        } else {
            "- (no mesh)".into()
        };
        let count = st.pods.values().filter(|p| p.node == n.name).count();
        nodes.row(vec![
            n.name.clone(),
            n.netns.clone(),
            n.node_ip.clone(),
            n.pod_cidr.clone(),
            count.to_string(),
            z,
        ]);
    }
    text += &nodes.render();
    let mut pods = Table::new(&["NAMESPACE", "POD", "NODE", "IP", "APP"]);
    for p in st.pods.values() {
        pods.row(vec![
            p.namespace.clone(),
            p.name.clone(),
            p.node.clone(),
            p.ip.clone().unwrap_or_else(|| "<pending>".into()),
            alive_word(p.app.as_ref()),
        ]);
    }
    text += "\n";
    if pods.is_empty() {
        text += "no pods\n";
    } else {
        text += &pods.render();
    }
    write!(out, "{}", text).map_err(w)
}

fn status_json(st: &ClusterState) -> Value {
    let mut v = serde_json::to_value(st).unwrap_or(Value::Null);
    let alive = |p: Option<&Proc>| json!(p.is_some_and(Proc::alive));
    v["istiod_alive"] = alive(st.istiod.as_ref());
    if let Some(nodes) = v["nodes"].as_array_mut() {
        for (j, n) in nodes.iter_mut().enumerate() {
            let node = &st.nodes[j];
            n["ztunnel_alive"] = alive(node.ztunnel.as_ref());
            n["netns_exists"] = json!(netns::exists(&node.netns));
        }
    }
    if let Some(pods) = v["pods"].as_object_mut() {
        for (k, p) in pods.iter_mut() {
            let app = st.pods.get(k).and_then(|p| p.app.as_ref());
            p["app_alive"] = alive(app);
        }
    }
    v
}

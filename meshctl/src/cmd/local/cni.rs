//! Calling CNI plugins the way a container runtime does (libcni's behaviour, CNI spec 1.0):
//! one process per plugin, `CNI_*` in the environment, the plugin's config on stdin with `name`,
//! `cniVersion` and `prevResult` injected, the result on stdout. ADD runs the list in order,
//! feeding each result to the next plugin as `prevResult`; CHECK runs it in order and DEL in
//! reverse, each with the cached result of the ADD as `prevResult`.
//!
//! Plugins run inside the *node's* network namespace (`nsenter --net=...`), exactly as a
//! runtime on that node would run them: the bridge and the host side of the pod's veth end up
//! in the node, never in the machine's own namespace.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::{json, Map, Value};

use super::error::{LocalError, PluginError};

/// The spec version of our configs (the reference plugins 1.x speak it).
pub const CNI_VERSION: &str = "1.0.0";
/// Name of the pod network.
pub const NETWORK_NAME: &str = "ambrs-pods";
/// The bridge the bridge plugin creates in each node namespace.
pub const BRIDGE: &str = "cni0";

/// Inputs of the node's conflist.
pub struct NodeNet<'a> {
    /// Pod subnet, e.g. `10.244.1.0/24`.
    pub subnet: &'a str,
    /// Gateway (the bridge's address), e.g. `10.244.1.1`.
    pub gateway: &'a str,
    /// host-local's data directory (under the state dir: never /var/lib/cni).
    pub ipam_dir: &'a Path,
    /// ambient-cni's `ztunnel_socket`; None leaves ambient-cni out (`--no-mesh`).
    pub ztunnel_socket: Option<&'a Path>,
}

/// The node's pod network: bridge (+ host-local) then, in mesh mode, ambient-cni.
pub fn conflist(n: &NodeNet<'_>) -> Value {
    let mut plugins = vec![json!({
        "type": "bridge",
        "bridge": BRIDGE,
        "isGateway": true,
        "ipMasq": false,
        "ipam": {
            "type": "host-local",
            "ranges": [[{"subnet": n.subnet, "gateway": n.gateway}]],
            "routes": [{"dst": "0.0.0.0/0"}],
            "dataDir": n.ipam_dir,
        }
    })];
    if let Some(sock) = n.ztunnel_socket {
        // DNS capture on: pods have no cluster DNS, ztunnel's proxy on 15053 answers mesh names.
        plugins.push(json!({
            "type": "ambient-cni",
            "ztunnel_socket": sock,
            "log_level": "info",
            "dns_capture": true,
        }));
    }
    json!({"cniVersion": CNI_VERSION, "name": NETWORK_NAME, "plugins": plugins})
}

/// The pod's loopback, a network of its own (as runtimes configure it).
pub fn loopback_conf() -> Value {
    json!({"cniVersion": CNI_VERSION, "name": "lo", "type": "loopback"})
}

/// The plugins of a conf or conflist (a single conf is a list of one).
fn plugins(net: &Value) -> Vec<Value> {
    match net.get("plugins").and_then(Value::as_array) {
        Some(list) => list.clone(),
        None => {
            let mut p = net.clone();
            if let Some(m) = p.as_object_mut() {
                m.remove("name");
                m.remove("cniVersion");
            }
            vec![p]
        }
    }
}

/// One plugin's stdin: its own keys, the network's `name` and `cniVersion`, and `prevResult`.
pub fn plugin_stdin(net: &Value, plugin: &Value, prev: Option<&Value>) -> Value {
    let mut conf: Map<String, Value> = plugin.as_object().cloned().unwrap_or_default();
    conf.insert(
        "cniVersion".into(),
        net.get("cniVersion").cloned().unwrap_or(json!(CNI_VERSION)),
    );
    conf.insert("name".into(), net.get("name").cloned().unwrap_or(json!("")));
    match prev {
        Some(p) => {
            conf.insert("prevResult".into(), p.clone());
        }
        None => {
            conf.remove("prevResult");
        }
    }
    Value::Object(conf)
}

/// Who calls the plugins and for which container.
pub struct Runtime<'a> {
    /// Directories searched for plugin binaries (`CNI_PATH`).
    pub cni_path: &'a [PathBuf],
    /// Run the plugins inside this namespace (`/run/netns/<node>`); None runs them here.
    pub host_netns: Option<&'a Path>,
    /// `CNI_CONTAINERID`.
    pub container_id: &'a str,
    /// `CNI_NETNS` (the pod's namespace path).
    pub netns: &'a Path,
    /// `CNI_ARGS`.
    pub args: String,
    /// `namespace/name`, for messages.
    pub pod: &'a str,
    /// Plugins' stderr is appended here.
    pub log: &'a Path,
}

/// `CNI_ARGS` for a Kubernetes pod, as kubelet/CRI pass it (`IgnoreUnknown=1` so the reference
/// plugins accept keys they do not know).
pub fn k8s_args(namespace: &str, name: &str, uid: &str, container_id: &str) -> String {
    format!(
        "IgnoreUnknown=1;K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={name};K8S_POD_INFRA_CONTAINER_ID={container_id};K8S_POD_UID={uid}"
    )
}

impl Runtime<'_> {
    fn find(&self, kind: &str) -> Result<PathBuf, LocalError> {
        if kind.is_empty() || kind.contains('/') {
            return Err(LocalError::Invalid(format!(
                "CNI plugin type {kind:?} is not a plugin name"
            )));
        }
        self.cni_path
            .iter()
            .map(|d| d.join(kind))
            .find(|p| p.is_file())
            .ok_or_else(|| LocalError::Missing {
                what: format!("CNI plugin {kind:?}"),
                path: self.cni_path.first().cloned().unwrap_or_default(),
                hint: format!(
                    "searched {}; the reference plugins come with `apt-get install containernetworking-plugins`, ambient-cni with `cargo build -p ambient-cni`",
                    self.cni_path.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(":")
                ),
            })
    }

    /// Runs one plugin; returns its parsed stdout (None when empty).
    pub fn exec(
        &self,
        command: &str,
        ifname: &str,
        stdin: &Value,
    ) -> Result<Option<Value>, LocalError> {
        let kind = stdin
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let bin = self.find(&kind)?;
        let mut cmd = match self.host_netns {
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net={}", ns.display())).arg("--").arg(&bin);
                c
            }
            None => Command::new(&bin),
        };
        let cni_path = std::env::join_paths(self.cni_path)
            .map_err(|e| LocalError::Invalid(format!("CNI_PATH: {e}")))?;
        // A runtime gives plugins a clean environment: PATH (they run iptables, ip) and CNI_*.
        cmd.env_clear()
            .env(
                "PATH",
                std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into()),
            )
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", self.container_id)
            .env("CNI_NETNS", self.netns)
            .env("CNI_IFNAME", ifname)
            .env("CNI_ARGS", &self.args)
            .env("CNI_PATH", cni_path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        tracing::debug!(plugin = %kind, command, ifname, pod = self.pod, "CNI call");
        let fail = |code: i64, msg: String, details: String| {
            LocalError::Plugin(Box::new(PluginError {
                command: command.to_string(),
                pod: self.pod.to_string(),
                plugin: kind.clone(),
                code,
                msg,
                details,
                log: self.log.to_path_buf(),
            }))
        };
        let mut child = cmd.spawn().map_err(|e| {
            fail(
                0,
                format!("cannot run {}: {e}", bin.display()),
                String::new(),
            )
        })?;
        if let Some(mut input) = child.stdin.take() {
            // A plugin that exits without reading its stdin is reported below by its status.
            let _ = input.write_all(stdin.to_string().as_bytes());
        }
        let out = child.wait_with_output().map_err(|e| {
            fail(
                0,
                format!("waiting for {}: {e}", bin.display()),
                String::new(),
            )
        })?;
        if !out.stderr.is_empty() {
            if let Ok(mut f) = std::fs::File::options()
                .create(true)
                .append(true)
                .open(self.log)
            {
                let _ = writeln!(f, "--- {kind} {command} {ifname} ---");
                let _ = f.write_all(&out.stderr);
            }
        }
        let parsed: Option<Value> = if out.stdout.iter().all(u8::is_ascii_whitespace) {
            None
        } else {
            Some(serde_json::from_slice(&out.stdout).map_err(|e| {
                fail(
                    0,
                    format!("printed something that is not JSON ({e})"),
                    format!(": {}", String::from_utf8_lossy(&out.stdout).trim()),
                )
            })?)
        };
        if !out.status.success() {
            // The spec's error object: {"code", "msg", "details"}.
            let v = parsed.unwrap_or(Value::Null);
            let code = v.get("code").and_then(Value::as_i64).unwrap_or(0);
            let msg = v
                .get("msg")
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or_else(|| format!("exited with {}", out.status));
            let details = v
                .get("details")
                .and_then(Value::as_str)
                .filter(|d| !d.is_empty())
                .map(|d| format!(": {d}"))
                .unwrap_or_default();
            return Err(fail(code, msg, details));
        }
        Ok(parsed)
    }

    /// ADD: every plugin in order, each result the next one's `prevResult`; returns the last.
    pub fn add(&self, net: &Value, ifname: &str) -> Result<Value, LocalError> {
        let mut prev: Option<Value> = None;
        for plugin in plugins(net) {
            let stdin = plugin_stdin(net, &plugin, prev.as_ref());
            let out = self.exec("ADD", ifname, &stdin)?;
            let kind = plugin
                .get("type")
                .and_then(Value::as_str)
                .unwrap_or_default();
            prev = Some(out.ok_or_else(|| {
                LocalError::Plugin(Box::new(PluginError {
                    command: "ADD".into(),
                    pod: self.pod.to_string(),
                    plugin: kind.to_string(),
                    code: 0,
                    msg: "printed no result".into(),
                    details: String::new(),
                    log: self.log.to_path_buf(),
                }))
            })?);
        }
        prev.ok_or_else(|| LocalError::Invalid("network has no plugins".into()))
    }

    /// CHECK: every plugin in order with the cached ADD result; the plugin types checked.
    pub fn check(
        &self,
        net: &Value,
        ifname: &str,
        cached: &Value,
    ) -> Result<Vec<String>, LocalError> {
        let mut checked = Vec::new();
        for plugin in plugins(net) {
            self.exec("CHECK", ifname, &plugin_stdin(net, &plugin, Some(cached)))?;
            checked.push(
                plugin
                    .get("type")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
            );
        }
        Ok(checked)
    }

    /// DEL: every plugin in reverse order, with the cached ADD result when there is one. Keeps
    /// going after a failure (the pod is going away regardless) and returns every failure.
    pub fn del(&self, net: &Value, ifname: &str, cached: Option<&Value>) -> Vec<LocalError> {
        let mut errors = Vec::new();
        for plugin in plugins(net).iter().rev() {
            if let Err(e) = self.exec("DEL", ifname, &plugin_stdin(net, plugin, cached)) {
                errors.push(e);
            }
        }
        errors
    }
}

/// The pod's IPv4 address from a CNI result (`ips[].address`, `10.244.1.5/24` -> `10.244.1.5`),
/// preferring one on the container's interface.
pub fn result_ipv4(result: &Value) -> Option<String> {
    result
        .get("ips")?
        .as_array()?
        .iter()
        .filter_map(|ip| ip.get("address")?.as_str())
        .filter_map(|a| a.split('/').next())
        .find(|a| {
            a.parse::<std::net::Ipv4Addr>()
                .is_ok_and(|ip| !ip.is_loopback())
        })
        .map(str::to_string)
}

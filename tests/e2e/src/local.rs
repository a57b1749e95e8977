//! Driving `meshctl local` from tests (root only): a [`LocalCluster`] guard that runs the real
//! `meshctl` binary with a private cluster name and state directory and always takes the
//! cluster down on drop, and [`RootNet`], a snapshot of the machine's own network namespace to
//! prove the tool never touched it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::Value;

use crate::bins;

/// Where Debian's containernetworking-plugins installs the reference plugins.
pub const CNI_DIR: &str = "/usr/lib/cni";

/// Root and the tools `meshctl local` drives; false (after printing why) when the test must
/// skip (and a failure instead under CI=true, see [`crate::skip`]).
pub fn prerequisites() -> bool {
    use crate::netns::{have, is_root};
    if !is_root() {
        return !crate::skip("needs root: meshctl local creates network namespaces");
    }
    for prog in ["ip", "nsenter", "curl", "python3", "iptables-save"] {
        if !have(prog) {
            return !crate::skip(&format!("{prog} not found (make test installs it)"));
        }
    }
    for plugin in ["bridge", "host-local", "loopback"] {
        if !Path::new(CNI_DIR).join(plugin).is_file() {
            return !crate::skip(&format!(
                "{CNI_DIR}/{plugin} not found: apt-get install containernetworking-plugins (make prereqs)"
            ));
        }
    }
    true
}

/// Where `ip netns add` puts namespaces.
pub const NETNS_DIR: &str = "/run/netns";

/// A cluster created by `meshctl local up`; `meshctl local down` (then a by-name sweep of its
/// namespaces) runs on drop, whatever happened in the test.
pub struct LocalCluster {
    /// Cluster name (`--name`).
    pub name: String,
    /// State directory (`--state-dir`).
    pub dir: PathBuf,
    meshctl: PathBuf,
    _tmp: tempfile::TempDir,
}

impl LocalCluster {
    /// A fresh name and state directory; nothing is created until [`LocalCluster::meshctl`]
    /// runs `up`.
    pub fn new() -> anyhow::Result<Self> {
        let name = format!("e2e-{:06x}", rand::random::<u32>() & 0xff_ffff);
        // Short: ztunnel's unix socket lives under it (108-byte limit).
        let tmp = tempfile::Builder::new()
            .prefix("ambrs-")
            .tempdir_in("/tmp")
            .context("creating the state dir")?;
        Ok(LocalCluster {
            name,
            dir: tmp.path().join("state"),
            meshctl: bins::bin("meshctl")?,
            _tmp: tmp,
        })
    }

    /// `meshctl local --name N --state-dir D <args>`; returns the output whatever the status.
    pub fn meshctl(&self, args: &[&str]) -> anyhow::Result<Output> {
        let mut c = self.meshctl_command(&["local", "--name", &self.name]);
        c.arg("--state-dir").arg(&self.dir).args(args);
        run_echoed(&mut c, &format!("meshctl local {}", args.join(" ")))
    }

    /// Like [`LocalCluster::meshctl`] but requires success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self.meshctl(args)?;
        anyhow::ensure!(
            out.status.success(),
            "meshctl local {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `meshctl <args> --local N --state-dir D` (a command aimed at this cluster, e.g.
    /// `waypoint ...`, `describe ...`); stdout on success.
    pub fn cli(&self, args: &[&str]) -> anyhow::Result<String> {
        let (code, stdout) = self.cli_exit(args)?;
        anyhow::ensure!(code == 0, "meshctl {} failed (exit {code})", args.join(" "));
        Ok(stdout)
    }

    /// `meshctl <args> --local N --state-dir D`: the exit code and stdout, whatever the status.
    pub fn cli_exit(&self, args: &[&str]) -> anyhow::Result<(i32, String)> {
        let out = run_echoed(
            &mut self.cli_command(args),
            &format!("meshctl {}", args.join(" ")),
        )?;
        Ok((
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        ))
    }

    /// `meshctl <args> --state-dir D` with `MESHCTL_LOCAL=N` in its environment rather than
    /// `--local N`: the exit code and stdout, whatever the status.
    pub fn cli_exit_from_env(&self, args: &[&str]) -> anyhow::Result<(i32, String)> {
        let mut c = self.meshctl_command(args);
        c.arg("--state-dir")
            .arg(&self.dir)
            .env("MESHCTL_LOCAL", &self.name);
        let out = run_echoed(
            &mut c,
            &format!("MESHCTL_LOCAL=.. meshctl {}", args.join(" ")),
        )?;
        Ok((
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        ))
    }

    /// `meshctl <args> --local N --state-dir D` as a command not yet run: to spawn it (a tap)
    /// or to read an exit code other than 0.
    pub fn cli_command(&self, args: &[&str]) -> Command {
        let mut c = self.meshctl_command(args);
        c.args(["--local", &self.name])
            .arg("--state-dir")
            .arg(&self.dir);
        c
    }

    /// `meshctl <args>` ([`clean_env`]).
    fn meshctl_command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.meshctl);
        clean_env(c.args(args));
        c
    }

    /// `meshctl <args>` run inside network namespace `netns` (for commands that take
    /// addresses, such as `check` and `stat`: a node's ztunnel admin port is on its loopback);
    /// the output whatever the status.
    pub fn meshctl_in(&self, netns: &str, args: &[&str]) -> anyhow::Result<Output> {
        let mut c = Command::new("nsenter");
        clean_env(
            c.arg(format!("--net={NETNS_DIR}/{netns}"))
                .arg("--")
                .arg(&self.meshctl)
                .args(args),
        );
        run_echoed(&mut c, &format!("[{netns}] meshctl {}", args.join(" ")))
    }

    /// Prints the last lines of every log of the cluster (its processes' and each pod's
    /// app.log) to stderr: what a failing test shows.
    pub fn print_logs(&self) {
        let mut logs: Vec<PathBuf> = std::fs::read_dir(self.dir.join("logs"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .collect();
        for pod in std::fs::read_dir(self.dir.join("pods"))
            .into_iter()
            .flatten()
            .flatten()
        {
            logs.push(pod.path().join("app.log"));
        }
        for log in logs.iter().filter(|p| p.exists()) {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(60).collect();
            eprintln!("===== {} (last lines) =====", log.display());
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
        }
    }

    /// Writes `yaml` as `config/<file>` for istiod-lite, atomically (it watches the directory).
    pub fn write_config(&self, file: &str, yaml: &str) -> anyhow::Result<()> {
        let dir = self.dir.join("config");
        let tmp = dir.join(format!(".{file}.tmp"));
        std::fs::write(&tmp, yaml)?;
        std::fs::rename(&tmp, dir.join(file))?;
        Ok(())
    }

    /// `pod add NAME -n NS --sa NAME --node NODE [--label L]...`, running examples/apps/server.py
    /// on 8080 when `server`; returns the pod's IP.
    pub fn add_pod(
        &self,
        ns: &str,
        name: &str,
        node: &str,
        labels: &[&str],
        server: bool,
    ) -> anyhow::Result<String> {
        let mut args = vec!["pod", "add", name, "-n", ns, "--sa", name, "--node", node];
        for l in labels {
            args.extend(["--label", l]);
        }
        let server_py = repo_root().join("examples/apps/server.py");
        let server_py = server_py.to_string_lossy().into_owned();
        if server {
            args.extend([
                "--", "python3", &server_py, "--pod", name, "--bind", "0.0.0.0", "--port", "8080",
            ]);
        }
        let ip = self.ok(&args)?.trim().to_string();
        anyhow::ensure!(
            ip.parse::<std::net::Ipv4Addr>().is_ok(),
            "pod add printed {ip:?}"
        );
        Ok(ip)
    }

    /// GET `url` from inside pod `ns/name` (curl in its namespace): the body of a 2xx answer.
    pub fn curl(&self, ns: &str, name: &str, url: &str) -> anyhow::Result<String> {
        get_in(&self.pod_netns(ns, name), url)
    }

    /// Polls [`LocalCluster::curl`] until it succeeds (20 s: the server pod may still be
    /// starting, the mesh still sending the config); the body.
    pub fn curl_eventually(&self, ns: &str, name: &str, url: &str) -> anyhow::Result<String> {
        poll(
            &format!("{ns}/{name} reaching {url}"),
            Duration::from_secs(20),
            || Ok(self.curl(ns, name, url).ok()),
        )
    }

    /// `meshctl waypoint -n NS apply --enroll-namespace --wait`: namespace `ns`'s waypoint
    /// `waypoint` runs as a pod, is programmed, and the namespace uses it.
    pub fn apply_namespace_waypoint(&self, ns: &str) -> anyhow::Result<()> {
        let out = self.cli(&[
            "waypoint",
            "-n",
            ns,
            "apply",
            "--enroll-namespace",
            "--wait",
        ])?;
        anyhow::ensure!(
            out.contains(&format!("waypoint {ns}/waypoint is ready")),
            "{out}"
        );
        Ok(())
    }

    /// Pod `ns/name` as `status -o json` shows it (node, ip, netns, app, ...).
    pub fn pod_status(&self, ns: &str, name: &str) -> anyhow::Result<Value> {
        let mut st = self.status()?;
        let pod = st["pods"][format!("{ns}/{name}")].take();
        anyhow::ensure!(pod.is_object(), "no pod {ns}/{name} in status: {st}");
        Ok(pod)
    }

    /// The network namespace of node `node` (`ambrs-<cluster>.<node>`).
    pub fn node_netns(&self, node: &str) -> String {
        format!("ambrs-{}.{node}", self.name)
    }

    /// The network namespace of pod `ns/name` (`ambrs-<cluster>.<ns>.<name>`).
    pub fn pod_netns(&self, ns: &str, name: &str) -> String {
        format!("ambrs-{}.{ns}.{name}", self.name)
    }

    /// `status -o json`.
    pub fn status(&self) -> anyhow::Result<Value> {
        Ok(serde_json::from_str(&self.ok(&["status", "-o", "json"])?)?)
    }

    /// The namespaces of this cluster present under /run/netns.
    pub fn namespaces(&self) -> Vec<String> {
        let prefix = format!("ambrs-{}", self.name);
        let mut v: Vec<String> = std::fs::read_dir(NETNS_DIR)
            .map(|d| {
                d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                    .filter(|n| *n == prefix || n.starts_with(&format!("{prefix}.")))
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// Runs `argv` inside namespace `ns` (`nsenter --net=/run/netns/<ns>`).
    pub fn in_netns(ns: &str, argv: &[&str]) -> anyhow::Result<Output> {
        Command::new("nsenter")
            .arg(format!("--net={NETNS_DIR}/{ns}"))
            .arg("--")
            .args(argv)
            .output()
            .with_context(|| format!("nsenter into {ns}"))
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        let _ = self.meshctl(&["down"]);
        // If down failed, sweep by name: stop what runs inside, then delete.
        for ns in self.namespaces() {
            if let Ok(out) = Command::new("ip").args(["netns", "pids", &ns]).output() {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    let _ = Command::new("kill").args(["-9", pid]).status();
                }
            }
            let _ = Command::new("ip").args(["netns", "delete", &ns]).status();
        }
    }
}

/// The machine's own network configuration: `ip -j addr|route|rule|link`, with the fields that
/// change by themselves (address lifetimes) removed.
#[derive(Debug, PartialEq, Eq)]
pub struct RootNet {
    /// (what, normalised JSON).
    pub parts: Vec<(String, String)>,
}

impl RootNet {
    /// Takes the snapshot.
    pub fn take() -> anyhow::Result<RootNet> {
        let mut parts = Vec::new();
        for what in ["addr", "route", "rule", "link"] {
            let out = Command::new("ip").args(["-j", what]).output()?;
            anyhow::ensure!(out.status.success(), "ip -j {what} failed");
            let mut v: Value = serde_json::from_slice(&out.stdout)
                .with_context(|| format!("ip -j {what} is not JSON"))?;
            strip(&mut v);
            parts.push((what.to_string(), v.to_string()));
        }
        Ok(RootNet { parts })
    }

    /// Fails naming the first part that differs from `before`.
    pub fn ensure_same_as(&self, before: &RootNet) -> anyhow::Result<()> {
        for ((what, a), (_, b)) in before.parts.iter().zip(&self.parts) {
            anyhow::ensure!(
                a == b,
                "the root network namespace changed (`ip -j {what}`):\nbefore: {a}\nafter:  {b}"
            );
        }
        Ok(())
    }
}

fn strip(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.remove("valid_life_time");
            m.remove("preferred_life_time");
            m.values_mut().for_each(strip);
        }
        Value::Array(a) => a.iter_mut().for_each(strip),
        _ => {}
    }
}

/// Skips (printing why) without root or tools; else runs `body` on a fresh mesh cluster of
/// `nodes` nodes with namespace `demo` labelled ambient, printing the cluster's logs before
/// panicking when setting it up or `body` fails.
pub fn with_ambient_cluster(nodes: u8, body: impl FnOnce(&LocalCluster) -> anyhow::Result<()>) {
    if !prerequisites() {
        return;
    }
    let c = LocalCluster::new().expect("cluster state dir");
    let res = c
        .ok(&["up", "--nodes", &nodes.to_string(), "--cni-dir", CNI_DIR])
        .and_then(|_| {
            c.ok(&[
                "namespace",
                "demo",
                "--label",
                "istio.io/dataplane-mode=ambient",
            ])
        })
        .and_then(|_| body(&c));
    if let Err(e) = res {
        c.print_logs();
        panic!("{e:#}");
    }
}

/// No colour, and none of the caller's MESHCTL_* variables: a developer's shell must not point
/// meshctl elsewhere.
fn clean_env(c: &mut Command) -> &mut Command {
    c.env("NO_COLOR", "1")
        .env_remove("MESHCTL_LOCAL")
        .env_remove("MESHCTL_ZTUNNELS")
        .env_remove("MESHCTL_ISTIOD")
}

/// Runs `cmd`, echoing `$ <shown> -> <status>` and its output to stderr: what a failing test
/// shows.
fn run_echoed(cmd: &mut Command, shown: &str) -> anyhow::Result<Output> {
    let out = cmd.output().with_context(|| format!("running {shown}"))?;
    eprintln!(
        "$ {shown} -> {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(out)
}

/// `curl -sS --max-time 3 <args>` inside network namespace `netns`: its output, whatever the
/// status (for requests that read the status code or send headers).
pub fn curl_in(netns: &str, args: &[&str]) -> anyhow::Result<Output> {
    let mut argv = vec!["curl", "-sS", "--max-time", "3"];
    argv.extend(args);
    LocalCluster::in_netns(netns, &argv)
}

/// GET `url` from inside network namespace `netns` (curl); the body of a 2xx answer.
pub fn get_in(netns: &str, url: &str) -> anyhow::Result<String> {
    let out = curl_in(netns, &["-f", url])?;
    anyhow::ensure!(
        out.status.success(),
        "GET {url} in {netns}: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Polls `check` every 100 ms until it returns `Some`, or fails after `timeout` naming `what`
/// (the readiness signal of a synchronous test).
pub fn poll<T>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> anyhow::Result<Option<T>>,
) -> anyhow::Result<T> {
    let start = Instant::now();
    let mut last = String::new();
    loop {
        match check() {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last = format!("{e:#}"),
        }
        anyhow::ensure!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}; last error: {last}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The repository root (for examples/apps/server.py).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

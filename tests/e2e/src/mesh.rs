//! A running mesh: istiod-lite plus one ztunnel per node, all on loopback.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::net::TcpStream;

use crate::process::Process;
use crate::prom::Metrics;
use crate::socks5::{self, Dest};
use crate::topology::Topology;
use crate::{bins, eventually, http};

/// How long a component may take to report ready.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(25);
/// ztunnel's HBONE port on every pod IP.
pub const HBONE_PORT: u16 = 15008;
/// Upper bound of one test body run by [`Mesh::check`].
pub const TEST_TIMEOUT: Duration = Duration::from_secs(240);

/// Knobs of [`Mesh::start`].
#[derive(Clone, Debug)]
pub struct MeshOptions {
    /// ztunnels talk to istiod over TLS (`https://...` with `XDS_ROOT_CA`) instead of plaintext.
    pub xds_tls: bool,
    /// Nodes to run a ztunnel for (default: every node with a pod).
    pub nodes: Option<Vec<String>>,
    /// `OUTBOUND_ADDR` per node (default disabled: explicit mode needs no capture).
    pub outbound_addr: BTreeMap<String, String>,
    /// `INBOUND_PLAINTEXT_ADDR` per node (default disabled).
    pub inbound_plaintext_addr: BTreeMap<String, String>,
    /// `PACKET_MARK` for every ztunnel (needs root; lets capture rules skip ztunnel's own traffic).
    pub packet_mark: Option<u32>,
    /// Serialise with other meshes on this machine (they share the fixed pod addresses). Off
    /// only inside a private network namespace.
    pub lock: bool,
}

impl Default for MeshOptions {
    fn default() -> Self {
        MeshOptions {
            xds_tls: false,
            nodes: None,
            outbound_addr: BTreeMap::new(),
            inbound_plaintext_addr: BTreeMap::new(),
            packet_mark: None,
            lock: true,
        }
    }
}

/// Addresses of istiod-lite's listeners.
#[derive(Clone, Copy, Debug)]
pub struct IstiodAddrs {
    /// Plaintext gRPC (ADS + CA).
    pub xds_plaintext: SocketAddr,
    /// TLS gRPC (ADS + CA).
    pub xds_tls: SocketAddr,
    /// `/metrics`, `/ready`.
    pub monitoring: SocketAddr,
}

/// One node agent.
pub struct Ztunnel {
    /// NODE_NAME.
    pub node: String,
    /// ADMIN_ADDR (`/config_dump`).
    pub admin: SocketAddr,
    /// STATS_ADDR (`/metrics`).
    pub stats: SocketAddr,
    /// READINESS_ADDR (`/healthz/ready`).
    pub readiness: SocketAddr,
    /// SOCKS5_ADDR.
    pub socks5: SocketAddr,
    process: Mutex<Process>,
}

impl Ztunnel {
    /// Everything this ztunnel printed so far.
    pub fn log(&self) -> String {
        self.process.lock().unwrap_or_else(|e| e.into_inner()).log()
    }

    /// OS process id.
    pub fn pid(&self) -> Option<u32> {
        self.process.lock().unwrap_or_else(|e| e.into_inner()).pid()
    }

    /// Fails if the process has exited.
    pub fn check_running(&self) -> anyhow::Result<()> {
        self.process
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .check_running()
    }

    /// Waits until `/healthz/ready` answers 200 (fails with the last answer, or if the process exits).
    pub async fn wait_ready(&self) -> anyhow::Result<()> {
        wait_ztunnel_ready(self).await
    }

    /// Scrapes `/metrics`.
    pub async fn metrics(&self) -> anyhow::Result<Metrics> {
        let r = http::get(self.stats, "/metrics").await?;
        anyhow::ensure!(
            r.status == 200,
            "{} /metrics answered {}",
            self.node,
            r.status
        );
        Ok(Metrics::parse(&r.body))
    }

    /// Waits (up to 10 s, polling `/metrics`) until the series of `name` matching `labels` sum to
    /// at least `min`; returns the sum.
    pub async fn wait_for_count(
        &self,
        name: &str,
        labels: &[(&str, &str)],
        min: f64,
    ) -> anyhow::Result<f64> {
        crate::eventually(
            &format!("{name}{labels:?} >= {min} on ztunnel {}", self.node),
            std::time::Duration::from_secs(10),
            std::time::Duration::from_millis(50),
            || async {
                let n = self.metrics().await?.sum(name, labels);
                Ok((n >= min).then_some(n))
            },
        )
        .await
    }

    /// Fetches `/config_dump` as JSON.
    pub async fn config_dump(&self) -> anyhow::Result<serde_json::Value> {
        let r = http::get(self.admin, "/config_dump").await?;
        anyhow::ensure!(
            r.status == 200,
            "{} /config_dump answered {}",
            self.node,
            r.status
        );
        serde_json::from_str(&r.body)
            .with_context(|| format!("{} /config_dump is not JSON", self.node))
    }

    /// `GET /healthz/ready` status.
    pub async fn ready_status(&self) -> anyhow::Result<u16> {
        Ok(http::get(self.readiness, "/healthz/ready").await?.status)
    }

    /// SOCKS5 CONNECT through this ztunnel, from `src` (a pod IP on this node).
    pub async fn socks(&self, src: Ipv4Addr, dest: &Dest) -> anyhow::Result<TcpStream> {
        socks5::connect(self.socks5, src.into(), dest).await
    }

    /// Access-log lines ("connection complete") written so far.
    pub fn access_log(&self) -> Vec<String> {
        self.log()
            .lines()
            .filter(|l| l.contains("connection complete"))
            .map(str::to_string)
            .collect()
    }
}

/// Deviations from a normal ztunnel, for [`Mesh::spawn_ztunnel_with`].
#[derive(Clone, Debug, Default)]
pub struct ZtunnelOverrides {
    /// XDS_ADDRESS instead of istiod-lite's (e.g. a port nobody listens on).
    pub xds_address: Option<String>,
    /// Use this node's token file instead of its own (the token must exist: see [`Mesh::write_token`]).
    pub token_of: Option<String>,
    /// Extra environment variables (e.g. `DNS_PROXY_ADDR`).
    pub env: Vec<(String, String)>,
}

/// istiod-lite + ztunnels + a temp dir with config, state, tokens and logs. Killed on drop;
/// logs are printed when the test fails (panics, or [`Mesh::check`] sees an error).
pub struct Mesh {
    /// The topology it was started with.
    pub topology: Topology,
    /// Options it was started with.
    pub options: MeshOptions,
    /// istiod-lite's addresses.
    pub istiod: IstiodAddrs,
    /// Temp dir root (config/, state/, tokens/, logs/).
    pub dir: PathBuf,
    ztunnels: Vec<Ztunnel>,
    istiod_proc: Mutex<Option<Process>>,
    logs_printed: Mutex<bool>,
    _tmp: tempfile::TempDir,
    _lock: Option<crate::netns::LoopbackLock>,
}

impl Mesh {
    /// Starts istiod-lite with `topology` and a ztunnel per node; returns once all are ready.
    /// Panics (after printing every log) if anything fails to start.
    pub async fn start(topology: Topology, options: MeshOptions) -> Mesh {
        match Self::try_start(topology, options).await {
            Ok(m) => m,
            Err(e) => panic!("mesh failed to start: {e:#}"),
        }
    }

    /// [`Mesh::start`] returning errors (the partial mesh's logs are printed before returning).
    pub async fn try_start(topology: Topology, options: MeshOptions) -> anyhow::Result<Mesh> {
        let lock = if options.lock {
            Some(crate::netns::LoopbackLock::acquire().await?)
        } else {
            None
        };
        let tmp = tempfile::Builder::new()
            .prefix("mesh-e2e-")
            .tempdir()
            .context("creating temp dir")?;
        let dir = tmp.path().to_path_buf();
        for d in ["config", "state", "tokens", "logs"] {
            std::fs::create_dir_all(dir.join(d))?;
        }
        std::fs::write(dir.join("config").join("mesh.yaml"), topology.to_yaml())?;
        let istiod = IstiodAddrs {
            xds_plaintext: free_addr(Ipv4Addr::LOCALHOST)?,
            xds_tls: free_addr(Ipv4Addr::LOCALHOST)?,
            monitoring: free_addr(Ipv4Addr::LOCALHOST)?,
        };
        let mut mesh = Mesh {
            topology,
            options,
            istiod,
            dir,
            ztunnels: Vec::new(),
            istiod_proc: Mutex::new(None),
            logs_printed: Mutex::new(false),
            _tmp: tmp,
            _lock: lock,
        };
        if let Err(e) = mesh.boot().await {
            mesh.print_logs();
            return Err(e);
        }
        Ok(mesh)
    }

    async fn boot(&mut self) -> anyhow::Result<()> {
        let nodes = self
            .options
            .nodes
            .clone()
            .unwrap_or_else(|| self.topology.nodes());
        // ztunnel only warns when a pod's HBONE address is taken (and retries later); a leftover
        // demo or manual mesh on this machine would then answer instead. Fail clearly up front.
        for pod in self
            .topology
            .pods
            .iter()
            .filter(|p| nodes.contains(&p.node))
        {
            let addr = SocketAddr::new(pod.ip.into(), HBONE_PORT);
            if let Err(e) = std::net::TcpListener::bind(addr) {
                anyhow::bail!(
                    "{addr} (HBONE address of pod {}/{}) is not free: {e}. Is a `make demo` or a manual mesh still \
                     running? Stop it, or run the tests in a network namespace of their own: \
                     `ip netns add t && ip -n t link set lo up && ip netns exec t make test`",
                    pod.namespace,
                    pod.name
                );
            }
        }
        for node in &nodes {
            let token = self.node_token(node)?;
            std::fs::write(self.token_path(node), token)?;
        }
        self.start_istiod().await?;
        for (i, node) in nodes.iter().enumerate() {
            let ip = Ipv4Addr::new(127, 0, 0, 11 + i as u8);
            let z = self.spawn_ztunnel(node, ip)?;
            self.ztunnels.push(z);
        }
        for z in &self.ztunnels {
            wait_ztunnel_ready(z).await?;
        }
        Ok(())
    }

    /// Writes `node`'s token file (done at start for every node that runs a ztunnel).
    pub fn write_token(&self, node: &str) -> anyhow::Result<()> {
        let token = self.node_token(node)?;
        std::fs::write(self.token_path(node), token)?;
        Ok(())
    }

    fn token_path(&self, node: &str) -> PathBuf {
        self.dir.join("tokens").join(node)
    }

    /// The config directory istiod-lite watches.
    pub fn config_dir(&self) -> PathBuf {
        self.dir.join("config")
    }

    /// istiod-lite's state directory (CA root, token secret, root-cert.pem).
    pub fn state_dir(&self) -> PathBuf {
        self.dir.join("state")
    }

    /// `istiod-lite node-token --state-dir <state> --node <node>`.
    pub fn node_token(&self, node: &str) -> anyhow::Result<String> {
        let out = Command::new(bins::bin("istiod-lite")?)
            .args(["node-token", "--state-dir"])
            .arg(self.state_dir())
            .args(["--node", node])
            .output()
            .context("running istiod-lite node-token")?;
        anyhow::ensure!(
            out.status.success(),
            "istiod-lite node-token failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let token = String::from_utf8(out.stdout)?.trim().to_string();
        anyhow::ensure!(
            token.starts_with(&format!("{node}.")),
            "unexpected token format {token:?}"
        );
        Ok(token)
    }

    /// Starts istiod-lite (again) with the same config, state and ports; waits for `/ready`.
    pub async fn start_istiod(&self) -> anyhow::Result<()> {
        let log = self.dir.join("logs").join("istiod-lite.log");
        let mut cmd = Command::new(bins::bin("istiod-lite")?);
        cmd.env("CONFIG_DIR", self.config_dir())
            .env("STATE_DIR", self.state_dir())
            .env("XDS_PLAINTEXT_ADDR", self.istiod.xds_plaintext.to_string())
            .env("XDS_TLS_ADDR", self.istiod.xds_tls.to_string())
            .env("MONITORING_ADDR", self.istiod.monitoring.to_string())
            .env_remove("CACERTS_DIR")
            .env_remove("TRUST_DOMAIN")
            .env("RUST_LOG", log_level());
        let started = Instant::now();
        let proc = Process::spawn("istiod-lite", cmd, &log)?;
        *self.istiod_proc.lock().unwrap_or_else(|e| e.into_inner()) = Some(proc);
        let mon = self.istiod.monitoring;
        let procs = &self.istiod_proc;
        eventually(
            "istiod-lite /ready == 200",
            READY_TIMEOUT,
            POLL,
            move || async move {
                if let Some(p) = procs.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
                    p.check_running()?;
                }
                Ok(http::get(mon, "/ready")
                    .await
                    .ok()
                    .filter(|r| r.status == 200)
                    .map(|_| ()))
            },
        )
        .await?;
        eprintln!("istiod-lite ready in {:?}", started.elapsed());
        Ok(())
    }

    /// Everything istiod-lite printed so far (across restarts).
    pub fn istiod_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("logs").join("istiod-lite.log")).unwrap_or_default()
    }

    /// SIGKILLs istiod-lite (the crash case).
    pub fn kill_istiod(&self) {
        if let Some(mut p) = self
            .istiod_proc
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            p.kill();
        }
    }

    fn spawn_ztunnel(&self, node: &str, ip: Ipv4Addr) -> anyhow::Result<Ztunnel> {
        self.spawn_ztunnel_with(node, ip, &ZtunnelOverrides::default())
    }

    /// Starts a ztunnel for `node` with its addresses on `ip` (use `127.0.0.2x` to stay clear of
    /// the mesh's own ztunnels) and does not wait for it: for tests of start-up and refusals.
    /// The caller owns it (killed on drop); its log is printed with the mesh's.
    pub fn spawn_ztunnel_with(
        &self,
        node: &str,
        ip: Ipv4Addr,
        o: &ZtunnelOverrides,
    ) -> anyhow::Result<Ztunnel> {
        let z_admin = free_addr(ip)?;
        let stats = free_addr(ip)?;
        let readiness = free_addr(ip)?;
        let socks = free_addr(ip)?;
        let mut cmd = Command::new(bins::bin("ztunnel")?);
        if let Some(xds) = &o.xds_address {
            cmd.env("XDS_ADDRESS", xds).env_remove("XDS_ROOT_CA");
        } else if self.options.xds_tls {
            cmd.env("XDS_ADDRESS", format!("https://{}", self.istiod.xds_tls))
                .env("XDS_ROOT_CA", self.state_dir().join("root-cert.pem"));
        } else {
            cmd.env(
                "XDS_ADDRESS",
                format!("http://{}", self.istiod.xds_plaintext),
            )
            .env_remove("XDS_ROOT_CA");
        }
        cmd.env_remove("CA_ADDRESS")
            .env_remove("CA_ROOT_CA")
            .env_remove("TRUST_DOMAIN")
            .env_remove("HBONE_PORT")
            .env("NODE_NAME", node)
            .env(
                "AUTH_TOKEN",
                self.token_path(o.token_of.as_deref().unwrap_or(node)),
            )
            .env("ADMIN_ADDR", z_admin.to_string())
            .env("STATS_ADDR", stats.to_string())
            .env("READINESS_ADDR", readiness.to_string())
            .env("SOCKS5_ADDR", socks.to_string())
            .env(
                "OUTBOUND_ADDR",
                self.options
                    .outbound_addr
                    .get(node)
                    .cloned()
                    .unwrap_or_default(),
            )
            .env(
                "INBOUND_PLAINTEXT_ADDR",
                self.options
                    .inbound_plaintext_addr
                    .get(node)
                    .cloned()
                    .unwrap_or_default(),
            )
            .env(
                "PACKET_MARK",
                self.options
                    .packet_mark
                    .map(|m| m.to_string())
                    .unwrap_or_default(),
            )
            .env("RUST_LOG", log_level());
        for (k, v) in &o.env {
            cmd.env(k, v);
        }
        let log = self.dir.join("logs").join(format!("ztunnel-{node}.log"));
        let process = Process::spawn(&format!("ztunnel {node}"), cmd, &log)?;
        Ok(Ztunnel {
            node: node.to_string(),
            admin: z_admin,
            stats,
            readiness,
            socks5: socks,
            process: Mutex::new(process),
        })
    }

    /// The ztunnel of `node`.
    pub fn ztunnel(&self, node: &str) -> &Ztunnel {
        self.ztunnels
            .iter()
            .find(|z| z.node == node)
            .unwrap_or_else(|| panic!("no ztunnel for node {node}"))
    }

    /// All ztunnels.
    pub fn ztunnels(&self) -> &[Ztunnel] {
        &self.ztunnels
    }

    /// Writes `config/<name>.yaml` atomically (a hidden temp file renamed into place, so
    /// istiod-lite never reads half a file).
    pub fn write_config(&self, name: &str, yaml: &str) -> anyhow::Result<()> {
        let dir = self.config_dir();
        let tmp = dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, yaml)?;
        std::fs::rename(&tmp, dir.join(format!("{name}.yaml")))?;
        Ok(())
    }

    /// Waits until `node`'s ztunnel is ready again (after a change that needs a certificate).
    pub async fn wait_ready(&self, node: &str) -> anyhow::Result<()> {
        wait_ztunnel_ready(self.ztunnel(node)).await
    }

    /// Runs the test body; on error prints every process's log and panics with the error chain.
    /// The body gets [`TEST_TIMEOUT`]; a hang fails with the logs instead of stalling CI.
    pub async fn check<F: Future<Output = anyhow::Result<()>>>(&self, body: F) {
        let res = match tokio::time::timeout(TEST_TIMEOUT, body).await {
            Ok(r) => r,
            Err(_) => Err(anyhow::anyhow!(
                "test body did not finish within {TEST_TIMEOUT:?}"
            )),
        };
        if let Err(e) = res {
            self.print_logs();
            panic!("{e:#}");
        }
        for z in &self.ztunnels {
            if let Err(e) = z.check_running() {
                self.print_logs();
                panic!("{e:#}");
            }
        }
    }

    /// Prints every process's output to stderr (once).
    pub fn print_logs(&self) {
        let mut printed = self.logs_printed.lock().unwrap_or_else(|e| e.into_inner());
        if *printed {
            return;
        }
        *printed = true;
        let Ok(entries) = std::fs::read_dir(self.dir.join("logs")) else {
            return;
        };
        let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        paths.sort();
        for p in paths {
            print_log(&p);
        }
    }
}

fn print_log(p: &Path) {
    let text = std::fs::read_to_string(p).unwrap_or_default();
    eprintln!(
        "===== {} ({} lines) =====",
        p.display(),
        text.lines().count()
    );
    eprintln!("{text}");
}

impl Drop for Mesh {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.print_logs();
        }
        for z in &self.ztunnels {
            z.process.lock().unwrap_or_else(|e| e.into_inner()).kill();
        }
        self.kill_istiod();
    }
}

async fn wait_ztunnel_ready(z: &Ztunnel) -> anyhow::Result<()> {
    let started = Instant::now();
    let last_cell = Mutex::new(String::new());
    let last = &last_cell;
    let res = eventually(
        &format!("ztunnel {} /healthz/ready == 200", z.node),
        READY_TIMEOUT,
        POLL,
        move || async move {
            z.check_running()?;
            match http::get(z.readiness, "/healthz/ready").await {
                Ok(r) if r.status == 200 => Ok(Some(())),
                Ok(r) => {
                    *last.lock().unwrap_or_else(|e| e.into_inner()) =
                        format!("{} {}", r.status, r.body.trim());
                    Ok(None)
                }
                Err(_) => Ok(None),
            }
        },
    )
    .await;
    res.with_context(|| {
        format!(
            "last readiness answer: {:?}",
            last_cell.lock().unwrap_or_else(|e| e.into_inner())
        )
    })?;
    eprintln!("ztunnel {} ready in {:?}", z.node, started.elapsed());
    Ok(())
}

/// `RUST_LOG` for the processes: `$MESH_E2E_LOG` or `info`.
fn log_level() -> String {
    std::env::var("MESH_E2E_LOG").unwrap_or_else(|_| "info".into())
}

/// Ports handed to components, below Linux's ephemeral range (32768-60999 by default): a port
/// taken from that range could be grabbed, between our check and the component's bind, as the
/// local port of any outgoing connection on the machine.
const TEST_PORTS: std::ops::Range<u16> = 20000..32000;

/// A port free on `ip` right now (bound and released), outside the ephemeral range.
pub fn free_addr(ip: Ipv4Addr) -> anyhow::Result<SocketAddr> {
    for _ in 0..200 {
        let port = rand::random_range(TEST_PORTS);
        if let Ok(l) = std::net::TcpListener::bind((ip, port)) {
            return Ok(l.local_addr()?);
        }
    }
    anyhow::bail!("no free port in {TEST_PORTS:?} on {ip} after 200 tries")
}

/// `ip` as an [`IpAddr`].
pub fn v4(ip: Ipv4Addr) -> IpAddr {
    IpAddr::V4(ip)
}

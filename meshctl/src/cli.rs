//! The command line.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::config::Source;
use crate::error::Error;
use crate::output::Format;

/// Operate an ambient-rs mesh: checks, agent configuration, golden metrics.
///
/// Addresses come from flags, else from MESHCTL_ISTIOD (istiod-lite's monitoring address),
/// MESHCTL_ZTUNNELS (space-separated ADMIN[,READINESS[,STATS]] entries) and MESHCTL_PROMETHEUS,
/// else Istio's default ports on 127.0.0.1 (15014, 15000/15021/15020). With --local CLUSTER
/// (or MESHCTL_LOCAL), the components of that `meshctl local` cluster instead.
///
/// Exit codes: 0 ok, 1 a check failed, 2 usage error, 3 a component could not be reached or
/// gave an unusable answer.
#[derive(Debug, Parser)]
#[command(name = "meshctl", version, max_term_width = 100)]
pub struct Cli {
    /// Timeout of each connect, read and write (e.g. 500ms, 5s).
    #[arg(long, global = true, default_value = "5s", value_parser = parse_duration)]
    pub timeout: Duration,

    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// Commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show what a ztunnel knows, from its admin /config_dump (istioctl's columns).
    ///
    /// With --local, every node's ztunnel of that cluster, merged (workloads, services and
    /// policies once, every agent's certificates and connections), or only one node's with
    /// --node.
    #[command(name = "ztunnel-config")]
    ZtunnelConfig(ZtunnelConfigArgs),
    /// Pre- and post-install checks, one ✓/‼/✗ line each with a hint; exit 1 on any ✗.
    ///
    /// With --local, the post-install checks read that cluster's istiod-lite and every node's
    /// ztunnel inside their namespaces; the host checks are this host's either way.
    Check(CheckArgs),
    /// Golden metrics per workload from the ztunnels' metrics (or Prometheus).
    ///
    /// L4 figures come from istio_tcp_*: SUCCESS is the share of connection attempts that
    /// opened, TCP_CONN the connections open now, MTLS the share of connections with
    /// connection_security_policy="mutual_tls". RPS and the LATENCY columns are L7 figures: they
    /// show "-" until a waypoint reports istio_requests_total (add its stats address to
    /// --scrape). Without --prometheus, every stats address is scraped twice, --interval apart;
    /// with --local, those of every ztunnel and waypoint of that cluster.
    Stat(StatArgs),
    /// A local cluster of network namespaces: nodes, pods wired by real CNI plugins, istiod-lite
    /// and one ztunnel per node (root only; see docs/local-cluster.md).
    Local(LocalArgs),
    /// Live connection events from the ztunnels (/debug/tap): opened, closed and refused
    /// connections with both identities, mTLS or plaintext, bytes, duration and response flags.
    /// Runs until --limit events, --duration, or Ctrl-C; -o json prints one event per line.
    Tap(TapArgs),
    /// Waypoints as istioctl manages them: apply, list, status, delete (Gateway objects of class
    /// istio-waypoint; with --local the waypoint also runs as a pod of that local cluster).
    Waypoint(WaypointArgs),
    /// What the mesh does with a pod or service and why: capturing node agent, identity,
    /// waypoint, L4 policies, routes.
    Describe(DescribeArgs),
}

/// `meshctl describe`.
#[derive(Debug, Args)]
pub struct DescribeArgs {
    /// pod or service.
    #[arg(value_enum)]
    pub kind: DescribeKind,
    /// Its name.
    #[arg(value_name = "NAME")]
    pub name: String,
    /// Its namespace.
    #[arg(long, short = 'n', default_value = "default")]
    pub namespace: String,
    /// ztunnels to ask, ADMIN[,READINESS[,STATS]]; repeatable [env: MESHCTL_ZTUNNELS].
    #[arg(long = "ztunnel", value_name = "ADMIN", conflicts_with = "local")]
    pub ztunnels: Vec<String>,
    /// istiod-lite's monitoring address, for routes [env: MESHCTL_ISTIOD].
    #[arg(long, value_name = "ADDR", conflicts_with = "local")]
    pub istiod: Option<String>,
    /// The local cluster, instead of --ztunnel and --istiod (its ztunnels and istiod-lite).
    #[command(flatten)]
    pub cluster: LocalClusterArgs,
}

/// What `describe` describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DescribeKind {
    /// A pod (workload).
    #[value(alias = "pods", alias = "po")]
    Pod,
    /// A service.
    #[value(alias = "services", alias = "svc")]
    Service,
}

/// `meshctl waypoint`.
#[derive(Debug, Args)]
pub struct WaypointArgs {
    /// Namespace of the waypoint.
    #[arg(long, short = 'n', global = true, default_value = "default")]
    pub namespace: String,
    /// The local cluster to manage waypoints in, instead of --config-dir and --istiod.
    #[command(flatten)]
    pub cluster: LocalClusterArgs,
    /// Without --local: the directory istiod-lite watches (its CONFIG_DIR) [env: MESHCTL_CONFIG_DIR].
    #[arg(long, global = true, value_name = "DIR")]
    pub config_dir: Option<PathBuf>,
    /// Without --local: istiod-lite's monitoring address [env: MESHCTL_ISTIOD].
    #[arg(long, global = true, value_name = "ADDR")]
    pub istiod: Option<String>,
    /// The operation.
    #[command(subcommand)]
    pub command: WaypointCommand,
}

/// `meshctl waypoint` operations.
#[derive(Debug, Subcommand)]
pub enum WaypointCommand {
    /// Create or update a waypoint Gateway (and, with --local, run its pod).
    Apply(WaypointApplyArgs),
    /// Waypoints of the namespace (or all, -A) and whether they are programmed.
    List(WaypointListArgs),
    /// The Accepted and Programmed conditions of the namespace's waypoints; exit 1 if one is
    /// not programmed.
    Status(WaypointStatusArgs),
    /// Delete waypoints (the Gateway objects, and with --local their pods).
    Delete(WaypointDeleteArgs),
}

/// `meshctl waypoint apply`.
#[derive(Debug, Args)]
pub struct WaypointApplyArgs {
    /// Gateway name.
    #[arg(long, default_value = "waypoint")]
    pub name: String,
    /// Traffic the waypoint handles (istio.io/waypoint-for): service, workload, all, none.
    #[arg(long = "for", default_value = "service", value_parser = ["service", "workload", "all", "none"])]
    pub waypoint_for: String,
    /// Also label the namespace istio.io/use-waypoint=<name> (--local only).
    #[arg(long)]
    pub enroll_namespace: bool,
    /// Wait until the waypoint is programmed (a ready waypoint pod exists).
    #[arg(long)]
    pub wait: bool,
    /// How long --wait waits.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub timeout: Duration,
}

/// `meshctl waypoint list`.
#[derive(Debug, Args)]
pub struct WaypointListArgs {
    /// All namespaces.
    #[arg(long, short = 'A')]
    pub all_namespaces: bool,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value = "table")]
    pub output: Format,
}

/// `meshctl waypoint status`.
#[derive(Debug, Args)]
pub struct WaypointStatusArgs {
    /// Only this waypoint.
    #[arg(long)]
    pub name: Option<String>,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value = "table")]
    pub output: Format,
}

/// `meshctl waypoint delete`.
#[derive(Debug, Args)]
pub struct WaypointDeleteArgs {
    /// Waypoint names.
    #[arg(value_name = "NAME")]
    pub names: Vec<String>,
    /// Every waypoint of the namespace.
    #[arg(long)]
    pub all: bool,
}

/// `meshctl tap`.
#[derive(Debug, Args)]
pub struct TapArgs {
    /// NAMESPACE or NAMESPACE/WORKLOAD: only connections with that workload on either side.
    #[arg(value_name = "NS[/WORKLOAD]")]
    pub target: Option<String>,
    /// A ztunnel, ADMIN[,READINESS[,STATS]]; repeatable [env: MESHCTL_ZTUNNELS].
    #[arg(long = "ztunnel", value_name = "ADMIN", conflicts_with = "local")]
    pub ztunnels: Vec<String>,
    /// A waypoint's admin address (request events); repeatable.
    #[arg(long = "waypoint", value_name = "ADMIN", conflicts_with = "local")]
    pub waypoints: Vec<String>,
    /// The local cluster, instead of --ztunnel and --waypoint: every node's ztunnel and every
    /// waypoint pod in it.
    #[command(flatten)]
    pub cluster: LocalClusterArgs,
    /// Stop after this many events.
    #[arg(long)]
    pub limit: Option<u64>,
    /// Stop after this long (e.g. 30s).
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Output format: table (one aligned line per event) or json (one object per line).
    #[arg(long, short = 'o', value_enum, default_value = "table")]
    pub output: Format,
}

/// Sections of `ztunnel-config`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Section {
    /// Pods the agent knows: NAMESPACE POD NAME ADDRESS NODE WAYPOINT PROTOCOL.
    #[value(alias = "workload")]
    Workloads,
    /// Services: NAMESPACE SERVICE NAME SERVICE VIP WAYPOINT ENDPOINTS.
    #[value(alias = "service")]
    Services,
    /// L4 authorization policies: NAMESPACE POLICY NAME ACTION SCOPE.
    #[value(alias = "policy")]
    Policies,
    /// Workload certificates: CERTIFICATE NAME TYPE STATUS VALID CERT SERIAL NUMBER NOT AFTER NOT BEFORE.
    #[value(alias = "certificate", alias = "secret")]
    Certificates,
    /// Open connections: DIRECTION SOURCE DESTINATION SOURCE IDENTITY DESTINATION IDENTITY PROTOCOL STARTED.
    #[value(alias = "connection")]
    Connections,
    /// Every table above (or the whole dump with -o json|yaml).
    All,
}

/// `meshctl ztunnel-config`.
#[derive(Debug, Args)]
pub struct ZtunnelConfigArgs {
    /// What to show.
    #[arg(value_enum)]
    pub section: Section,
    /// ztunnel admin address (its ADMIN_ADDR); default: the first MESHCTL_ZTUNNELS entry, else
    /// 127.0.0.1:15000.
    #[arg(long, value_name = "ADDR", conflicts_with = "local")]
    pub admin: Option<String>,
    /// The local cluster, instead of --admin.
    #[command(flatten)]
    pub cluster: LocalClusterArgs,
    /// Only this namespace (workloads, services, policies).
    #[arg(long, short = 'n', value_name = "NAMESPACE")]
    pub namespace: Option<String>,
    /// Only workloads on this node; with --local, also read only this node's ztunnel.
    #[arg(long, value_name = "NODE")]
    pub node: Option<String>,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value = "table")]
    pub output: Format,
}

/// `meshctl check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// istiod-lite monitoring address (its MONITORING_ADDR) [env: MESHCTL_ISTIOD].
    #[arg(long, value_name = "ADDR", conflicts_with = "local")]
    pub istiod: Option<String>,
    /// A ztunnel to check, ADMIN[,READINESS[,STATS]]; repeatable [env: MESHCTL_ZTUNNELS].
    #[arg(
        long = "ztunnel",
        value_name = "ADMIN,READINESS",
        conflicts_with = "local"
    )]
    pub ztunnels: Vec<String>,
    /// The local cluster, instead of --istiod and --ztunnel.
    #[command(flatten)]
    pub cluster: LocalClusterArgs,
    /// Only the host checks (kernel, netfilter, capabilities, CNI plugins): before installing.
    #[arg(long, conflicts_with = "post")]
    pub pre: bool,
    /// Only the mesh checks (control plane, agents, certificates, clock skew).
    #[arg(long)]
    pub post: bool,
    /// Output format (table = the check lines).
    #[arg(long, short = 'o', value_enum, default_value = "table")]
    pub output: Format,
}

/// `meshctl stat`.
#[derive(Debug, Args)]
pub struct StatArgs {
    /// Namespace, or namespace/workload; all workloads when omitted.
    #[arg(value_name = "NS[/WORKLOAD]")]
    pub target: Option<String>,
    /// Prometheus base URL, http://host:port[/prefix] [env: MESHCTL_PROMETHEUS].
    #[arg(long, value_name = "URL", conflicts_with = "scrape")]
    pub prometheus: Option<String>,
    /// Stats addresses to scrape, comma-separated; repeatable (default: the ztunnels' stats
    /// addresses).
    #[arg(
        long,
        value_name = "ADDR,...",
        value_delimiter = ',',
        conflicts_with = "local"
    )]
    pub scrape: Vec<String>,
    /// A ztunnel, ADMIN[,READINESS[,STATS]]; repeatable [env: MESHCTL_ZTUNNELS]. Its admin
    /// dump fills MESHED and lists workloads without traffic.
    #[arg(
        long = "ztunnel",
        value_name = "ADMIN,READINESS,STATS",
        conflicts_with = "local"
    )]
    pub ztunnels: Vec<String>,
    /// The local cluster, instead of --ztunnel and --scrape (with --prometheus, its ztunnels
    /// still fill MESHED).
    #[command(flatten)]
    pub cluster: LocalClusterArgs,
    /// Time between the two scrapes (the window rates are computed over).
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub interval: Duration,
    /// Window of the Prometheus queries.
    #[arg(long, default_value = "1m", value_parser = parse_duration)]
    pub window: Duration,
    /// Output format (wide adds CONN/S, BYTES_IN/S, BYTES_OUT/S).
    #[arg(long, short = 'o', value_enum, default_value = "table")]
    pub output: Format,
}

/// `--local CLUSTER [--state-dir DIR]`: a command aimed at the components of a `meshctl local`
/// cluster rather than at addresses. Global, so that `waypoint` takes them after its
/// subcommand too (the other commands have no subcommands: it changes nothing for them).
#[derive(Debug, Clone, Default, PartialEq, Eq, Args)]
pub struct LocalClusterArgs {
    /// A `meshctl local` cluster: its components, reached inside their network namespaces
    /// (root) [env: MESHCTL_LOCAL].
    #[arg(long, global = true, value_name = "CLUSTER")]
    pub local: Option<String>,
    /// State directory of that cluster, as given to `meshctl local` [default:
    /// /run/ambient-rs/local/<CLUSTER>].
    #[arg(long, global = true, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
}

/// The `meshctl local` cluster a command reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalCluster {
    /// Its name.
    pub name: String,
    /// Its state directory.
    pub dir: PathBuf,
}

impl LocalCluster {
    /// How `meshctl local` commands name this cluster: `--name C`, plus `--state-dir D` when it
    /// is not the default one (for hints the operator can paste).
    pub fn flags(&self) -> String {
        if self.dir == crate::cmd::local::state_dir(&self.name, None) {
            format!("--name {}", self.name)
        } else {
            format!("--name {} --state-dir {}", self.name, self.dir.display())
        }
    }
}

impl LocalClusterArgs {
    /// The cluster: `--local`, else `MESHCTL_LOCAL` unless the command line named components
    /// (`addressed`: --admin, --ztunnel, ...), because a flag beats the environment; `None`
    /// means the addresses. `--state-dir` that would be ignored is a usage error.
    pub fn resolve(
        &self,
        addressed: bool,
        env: &dyn Source,
    ) -> Result<Option<LocalCluster>, Error> {
        let from_env = || {
            env.get(crate::config::env::LOCAL)
                .filter(|s| !s.trim().is_empty())
        };
        // clap refuses the pair where it can; global flags (waypoint's) it cannot.
        if self.local.is_some() && addressed {
            return Err(Error::Usage(
                "--local replaces the address flags: give one or the other".into(),
            ));
        }
        let name = self
            .local
            .clone()
            .or_else(|| (!addressed).then(from_env).flatten());
        match name {
            Some(name) => Ok(Some(LocalCluster {
                dir: crate::cmd::local::state_dir(&name, self.state_dir.as_deref()),
                name,
            })),
            None if self.state_dir.is_some() => Err(Error::Usage(format!(
                "--state-dir is the state directory of a local cluster: give --local CLUSTER (or {}) too",
                crate::config::env::LOCAL
            ))),
            None => Ok(None),
        }
    }
}

/// `meshctl local`.
#[derive(Debug, Args)]
pub struct LocalArgs {
    /// Cluster name: network namespaces are named `ambrs-<name>...`.
    #[arg(
        long = "name",
        global = true,
        default_value = "ambient",
        value_name = "CLUSTER"
    )]
    pub cluster: String,
    /// State directory (pids, pods, logs, config YAML) [default: /run/ambient-rs/local/<name>].
    /// Give the same one to every command of this cluster.
    #[arg(long, global = true, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// The operation.
    #[command(subcommand)]
    pub command: LocalCommand,
}

/// `meshctl local` operations.
#[derive(Debug, Subcommand)]
pub enum LocalCommand {
    /// Create the cluster: namespaces, links, istiod-lite and one ztunnel per node.
    Up(LocalUpArgs),
    /// Remove the cluster: stop its processes, CNI DEL every pod, delete its namespaces and
    /// files. Safe to repeat.
    Down,
    /// Add, delete or check pods.
    #[command(subcommand)]
    Pod(PodCommand),
    /// Run a command inside a pod's network namespace, stdio attached; exits with its code.
    Exec(LocalExecArgs),
    /// Create or update a Namespace object (its labels, e.g. istio.io/dataplane-mode=ambient).
    Namespace(LocalNamespaceArgs),
    /// Nodes, pods with their IPs, and whether each process is alive.
    Status(LocalStatusArgs),
    /// Restart a node's ztunnel (graceful, or `--kill` as a crash) and wait until it is ready;
    /// its pods stay captured and are re-adopted.
    RestartZtunnel(RestartZtunnelArgs),
}

/// `meshctl local restart-ztunnel`.
#[derive(Debug, Args)]
pub struct RestartZtunnelArgs {
    /// The node, e.g. node-1.
    #[arg(value_name = "NODE")]
    pub node: String,
    /// SIGKILL instead of SIGTERM (no drain): what a crash looks like.
    #[arg(long)]
    pub kill: bool,
    /// How long the new ztunnel may take to become ready.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub ready_timeout: Duration,
}

/// `meshctl local up`.
#[derive(Debug, Args)]
pub struct LocalUpArgs {
    /// Number of nodes (node-1 ... node-N), each with pod CIDR 10.244.<n>.0/24.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(1..=50))]
    pub nodes: u8,
    /// Directory with istiod-lite, ztunnel and ambient-cni [default: meshctl's own directory].
    #[arg(long, value_name = "DIR")]
    pub bin_dir: Option<PathBuf>,
    /// Directory with the CNI reference plugins (bridge, host-local, loopback) [default:
    /// /usr/lib/cni, else /opt/cni/bin].
    #[arg(long, value_name = "DIR")]
    pub cni_dir: Option<PathBuf>,
    /// Plain CNI networking, for comparison and benchmarks: no ambient-cni in the chain and no
    /// ztunnels (istiod-lite still runs and sees the pods).
    #[arg(long)]
    pub no_mesh: bool,
    /// How long istiod-lite and each ztunnel may take to become ready.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub ready_timeout: Duration,
}

/// `meshctl local pod ...`.
#[derive(Debug, Subcommand)]
pub enum PodCommand {
    /// Create a pod: Pod object, network namespace, CNI ADD, then start CMD inside it. Prints
    /// the pod IP.
    Add(PodAddArgs),
    /// Delete a pod: stop its processes, CNI DEL, remove its namespace and Pod object.
    Delete(PodRefArgs),
    /// Run CNI CHECK for every plugin of the pod's networks.
    Check(PodRefArgs),
}

/// `meshctl local pod add`.
#[derive(Debug, Args)]
pub struct PodAddArgs {
    /// Pod name.
    #[arg(value_name = "NAME")]
    pub pod: String,
    /// Kubernetes namespace.
    #[arg(long, short = 'n', default_value = "default")]
    pub namespace: String,
    /// Node to run on [default: the node with the fewest pods].
    #[arg(long)]
    pub node: Option<String>,
    /// Service account (the pod's identity).
    #[arg(long = "sa", default_value = "default", value_name = "SA")]
    pub service_account: String,
    /// A pod label; repeatable.
    #[arg(long = "label", short = 'l', value_name = "KEY=VALUE", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// How long to wait for the node's ztunnel (socket and readiness).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub ready_timeout: Duration,
    /// Command to run in the pod (output to the pod's app.log), e.g.
    /// `-- python3 examples/apps/server.py --bind 0.0.0.0 --port 8080`.
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// A pod by name.
#[derive(Debug, Args)]
pub struct PodRefArgs {
    /// Pod name.
    #[arg(value_name = "NAME")]
    pub pod: String,
    /// Kubernetes namespace.
    #[arg(long, short = 'n', default_value = "default")]
    pub namespace: String,
}

/// `meshctl local exec`.
#[derive(Debug, Args)]
pub struct LocalExecArgs {
    /// Pod name.
    #[arg(value_name = "NAME")]
    pub pod: String,
    /// Kubernetes namespace.
    #[arg(long, short = 'n', default_value = "default")]
    pub namespace: String,
    /// The command and its arguments.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// `meshctl local namespace`.
#[derive(Debug, Args)]
pub struct LocalNamespaceArgs {
    /// Namespace name.
    #[arg(value_name = "NS")]
    pub namespace: String,
    /// A label (the full set: labels not given are removed); repeatable.
    #[arg(long = "label", short = 'l', value_name = "KEY=VALUE", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
}

/// `meshctl local status`.
#[derive(Debug, Args)]
pub struct LocalStatusArgs {
    /// Output format (json: the state with liveness of every process).
    #[arg(long, short = 'o', value_enum, default_value = "table")]
    pub output: Format,
}

/// Parses a Kubernetes label `key=value` (value may be empty).
pub fn parse_label(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not KEY=VALUE"))?;
    let key_ok = !k.is_empty()
        && k.len() <= 253
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '/'));
    if !key_ok {
        return Err(format!("label key {k:?} is not a Kubernetes label key"));
    }
    let value_ok = v.len() <= 63
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
    if !value_ok {
        return Err(format!(
            "label value {v:?}: at most 63 letters, digits, '.', '-', '_'"
        ));
    }
    Ok((k.to_string(), v.to_string()))
}

/// Parses `250ms`, `5s`, `2m`, `1h`, or plain seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = mesh_config::parse_duration(s)
        .map_err(|e| format!("{s:?} is not a duration (e.g. 500ms, 5s, 1m): {e}"))?;
    if d.is_zero() {
        return Err(format!("{s:?} must be more than zero"));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("5d").is_err());
    }

    #[test]
    fn command_line_shapes() {
        let c = Cli::try_parse_from([
            "meshctl",
            "ztunnel-config",
            "workload",
            "--admin",
            "127.0.0.1:1",
            "-o",
            "json",
        ])
        .unwrap();
        let Command::ZtunnelConfig(z) = c.command else {
            panic!()
        };
        assert_eq!(z.section, Section::Workloads);
        assert_eq!(z.output, Format::Json);
        let c = Cli::try_parse_from(["meshctl", "stat", "ns/w", "--scrape", "a:1,b:2"]).unwrap();
        let Command::Stat(s) = c.command else {
            panic!()
        };
        assert_eq!(s.scrape, vec!["a:1", "b:2"]);
        assert!(Cli::try_parse_from(["meshctl", "check", "--pre", "--post"]).is_err());
        assert!(Cli::try_parse_from(["meshctl", "ztunnel-config", "nope"]).is_err());
    }

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("meshctl").chain(args.iter().copied()))
    }

    #[test]
    fn local_conflicts_with_the_addresses_it_replaces() {
        for refused in [
            &["stat", "--local", "c", "--ztunnel", "127.0.0.1:1"][..],
            &["stat", "--local", "c", "--scrape", "127.0.0.1:1"],
            &["check", "--local", "c", "--istiod", "127.0.0.1:1"],
            &["check", "--local", "c", "--ztunnel", "127.0.0.1:1"],
            &[
                "ztunnel-config",
                "all",
                "--local",
                "c",
                "--admin",
                "127.0.0.1:1",
            ],
            &[
                "describe",
                "pod",
                "p",
                "--local",
                "c",
                "--ztunnel",
                "127.0.0.1:1",
            ],
            &[
                "describe",
                "pod",
                "p",
                "--local",
                "c",
                "--istiod",
                "127.0.0.1:1",
            ],
            &["tap", "--local", "c", "--ztunnel", "127.0.0.1:1"],
            &["tap", "--local", "c", "--waypoint", "127.0.0.1:1"],
        ] {
            let err = parse(refused).expect_err(&refused.join(" "));
            assert_eq!(err.kind(), clap::error::ErrorKind::ArgumentConflict);
        }
        // Prometheus answers the figures; the cluster's ztunnels still fill MESHED.
        let c = parse(&[
            "stat",
            "demo",
            "--local",
            "c",
            "--prometheus",
            "http://p:9090",
        ])
        .unwrap();
        let Command::Stat(s) = c.command else {
            panic!()
        };
        assert_eq!(s.cluster.local.as_deref(), Some("c"));
        let c = parse(&["check", "--pre", "--local", "c", "--state-dir", "/s"]).unwrap();
        let Command::Check(k) = c.command else {
            panic!()
        };
        assert_eq!(
            k.cluster,
            LocalClusterArgs {
                local: Some("c".into()),
                state_dir: Some("/s".into())
            }
        );
    }

    #[test]
    fn every_command_with_local_parses_it_into_the_same_arguments() {
        let want = LocalClusterArgs {
            local: Some("c".into()),
            state_dir: Some("/s".into()),
        };
        let cluster = |args: &[&str]| {
            let c = parse(args).unwrap_or_else(|e| panic!("{}: {e}", args.join(" ")));
            match c.command {
                Command::ZtunnelConfig(a) => a.cluster,
                Command::Check(a) => a.cluster,
                Command::Stat(a) => a.cluster,
                Command::Describe(a) => a.cluster,
                Command::Tap(a) => a.cluster,
                Command::Waypoint(a) => a.cluster,
                Command::Local(_) => panic!("meshctl local names its cluster with --name"),
            }
        };
        for args in [
            &["ztunnel-config", "all", "--local", "c", "--state-dir", "/s"][..],
            &["check", "--local", "c", "--state-dir", "/s"],
            &["stat", "--local", "c", "--state-dir", "/s"],
            &["describe", "pod", "p", "--local", "c", "--state-dir", "/s"],
            &["tap", "--local", "c", "--state-dir", "/s"],
            // waypoint's are global: before or after its subcommand.
            &["waypoint", "--local", "c", "--state-dir", "/s", "list"],
            &[
                "waypoint",
                "-n",
                "demo",
                "status",
                "--local",
                "c",
                "--state-dir",
                "/s",
            ],
            &[
                "waypoint",
                "--local",
                "c",
                "apply",
                "--state-dir",
                "/s",
                "--wait",
            ],
        ] {
            assert_eq!(cluster(args), want, "{}", args.join(" "));
        }
    }

    #[test]
    fn local_cluster_from_flag_else_environment_unless_addressed() {
        let env = |v: &str| -> HashMap<String, String> {
            [("MESHCTL_LOCAL".to_string(), v.to_string())].into()
        };
        let none = HashMap::new();
        let flag = |local: Option<&str>, dir: Option<&str>| LocalClusterArgs {
            local: local.map(String::from),
            state_dir: dir.map(PathBuf::from),
        };
        let cluster = |name: &str, dir: &str| {
            Some(LocalCluster {
                name: name.into(),
                dir: dir.into(),
            })
        };
        // The flag wins over the environment; with addresses too it is a usage error (clap
        // catches most pairs, this catches the global ones).
        assert_eq!(
            flag(Some("a"), None).resolve(false, &env("b")).unwrap(),
            cluster("a", "/run/ambient-rs/local/a")
        );
        let err = flag(Some("a"), None).resolve(true, &env("b")).unwrap_err();
        assert_eq!(err.exit_code(), crate::error::EXIT_USAGE, "{err}");
        // The environment, with --state-dir.
        assert_eq!(
            flag(None, Some("/s")).resolve(false, &env("b")).unwrap(),
            cluster("b", "/s")
        );
        // Addresses on the command line beat MESHCTL_LOCAL; empty means unset.
        assert_eq!(flag(None, None).resolve(true, &env("b")).unwrap(), None);
        assert_eq!(flag(None, None).resolve(false, &env(" ")).unwrap(), None);
        assert_eq!(flag(None, None).resolve(false, &none).unwrap(), None);
        // A state directory that nothing would use is a mistake worth saying.
        for (args, src) in [
            (flag(None, Some("/s")), &none),
            (flag(None, Some("/s")), &env("")),
        ] {
            let err = args.resolve(false, src).unwrap_err();
            assert_eq!(err.exit_code(), crate::error::EXIT_USAGE, "{err}");
            assert!(err.to_string().contains("--local CLUSTER"), "{err}");
        }
        assert!(flag(None, Some("/s")).resolve(true, &env("b")).is_err());
        // Hints name the cluster the way `meshctl local` needs it.
        let c = flag(Some("a"), None)
            .resolve(false, &none)
            .unwrap()
            .unwrap();
        assert_eq!(c.flags(), "--name a");
        let c = flag(Some("a"), Some("/s"))
            .resolve(false, &none)
            .unwrap()
            .unwrap();
        assert_eq!(c.flags(), "--name a --state-dir /s");
    }

    #[test]
    fn local_command_line_shapes() {
        let c = Cli::try_parse_from([
            "meshctl",
            "local",
            "pod",
            "add",
            "web",
            "-n",
            "demo",
            "--node",
            "node-2",
            "--sa",
            "web",
            "--label",
            "app=web",
            "--name",
            "c1",
            "--",
            "python3",
            "-m",
            "http.server",
        ])
        .unwrap();
        let Command::Local(l) = c.command else {
            panic!()
        };
        assert_eq!(l.cluster, "c1");
        let LocalCommand::Pod(PodCommand::Add(a)) = l.command else {
            panic!()
        };
        assert_eq!(a.pod, "web");
        assert_eq!(a.namespace, "demo");
        assert_eq!(a.node.as_deref(), Some("node-2"));
        assert_eq!(a.labels, vec![("app".to_string(), "web".to_string())]);
        assert_eq!(a.command, vec!["python3", "-m", "http.server"]);
        let c =
            Cli::try_parse_from(["meshctl", "local", "up", "--nodes", "3", "--no-mesh"]).unwrap();
        let Command::Local(l) = c.command else {
            panic!()
        };
        assert_eq!(l.cluster, "ambient");
        let LocalCommand::Up(u) = l.command else {
            panic!()
        };
        assert!(u.no_mesh);
        assert_eq!(u.nodes, 3);
        assert!(Cli::try_parse_from(["meshctl", "local", "up", "--nodes", "0"]).is_err());
        assert!(Cli::try_parse_from(["meshctl", "local", "exec", "p"]).is_err());
        assert!(Cli::try_parse_from(["meshctl", "local", "namespace", "a", "-l", "bad"]).is_err());
        assert!(parse_label("istio.io/dataplane-mode=ambient").is_ok());
        assert!(parse_label("k=").is_ok());
        assert!(parse_label("=v").is_err());
        assert!(parse_label("k=a b").is_err());
    }
}

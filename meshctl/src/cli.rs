//! The command line.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::output::Format;

/// Operate an ambient-rs mesh: checks, agent configuration, golden metrics.
///
/// Addresses come from flags, else from MESHCTL_ISTIOD (istiod-lite's monitoring address),
/// MESHCTL_ZTUNNELS (space-separated ADMIN[,READINESS[,STATS]] entries) and MESHCTL_PROMETHEUS,
/// else Istio's default ports on 127.0.0.1 (15014, 15000/15021/15020).
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
    /// Show what a ztunnel knows, from its admin /config_dump (istioctl's columns); with
    /// --local, the ztunnels of a local cluster.
    #[command(name = "ztunnel-config")]
    ZtunnelConfig(ZtunnelConfigArgs),
    /// Pre- and post-install checks, one ✓/‼/✗ line each with a hint; exit 1 on any ✗.
    Check(CheckArgs),
    /// Golden metrics per workload from the ztunnels' metrics (or Prometheus).
    ///
    /// L4 figures come from istio_tcp_*: SUCCESS is the share of connection attempts that
    /// opened, TCP_CONN the connections open now, MTLS the share of connections with
    /// connection_security_policy="mutual_tls". RPS and the LATENCY columns are L7 figures: they
    /// show "-" until a waypoint reports istio_requests_total (add its stats address to
    /// --scrape). Without --prometheus, every stats address is scraped twice, --interval apart.
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
    #[arg(long = "ztunnel", value_name = "ADMIN")]
    pub ztunnels: Vec<String>,
    /// istiod-lite's monitoring address, for routes [env: MESHCTL_ISTIOD].
    #[arg(long, value_name = "ADDR")]
    pub istiod: Option<String>,
    /// A `meshctl local` cluster (its ztunnels and istiod-lite are read inside its namespaces)
    /// [env: MESHCTL_LOCAL].
    #[arg(long, value_name = "CLUSTER")]
    pub local: Option<String>,
    /// State directory of that local cluster.
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
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
    /// A `meshctl local` cluster to manage waypoints in [env: MESHCTL_LOCAL].
    #[arg(long, global = true, value_name = "CLUSTER")]
    pub local: Option<String>,
    /// State directory of that local cluster (as given to `meshctl local`).
    #[arg(long, global = true, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
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
    #[arg(long = "ztunnel", value_name = "ADMIN")]
    pub ztunnels: Vec<String>,
    /// A waypoint's admin address (request events); repeatable.
    #[arg(long = "waypoint", value_name = "ADMIN")]
    pub waypoints: Vec<String>,
    /// A `meshctl local` cluster: tap every node's ztunnel and every waypoint pod in it
    /// [env: MESHCTL_LOCAL].
    #[arg(long, value_name = "CLUSTER")]
    pub local: Option<String>,
    /// State directory of that local cluster.
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
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
    #[arg(long, value_name = "ADDR")]
    pub admin: Option<String>,
    /// A `meshctl local` cluster: read the ztunnel of every node (merged: workloads, services
    /// and policies once, every agent's certificates and connections), or only the node's
    /// with --node [env: MESHCTL_LOCAL].
    #[arg(long, value_name = "CLUSTER", conflicts_with = "admin")]
    pub local: Option<String>,
    /// State directory of that local cluster.
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
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
    #[arg(long, value_name = "ADDR")]
    pub istiod: Option<String>,
    /// A ztunnel to check, ADMIN[,READINESS[,STATS]]; repeatable [env: MESHCTL_ZTUNNELS].
    #[arg(long = "ztunnel", value_name = "ADMIN,READINESS")]
    pub ztunnels: Vec<String>,
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
    #[arg(long, value_name = "ADDR,...", value_delimiter = ',')]
    pub scrape: Vec<String>,
    /// A ztunnel, ADMIN[,READINESS[,STATS]]; repeatable [env: MESHCTL_ZTUNNELS]. Its admin
    /// dump fills MESHED and lists workloads without traffic.
    #[arg(long = "ztunnel", value_name = "ADMIN,READINESS,STATS")]
    pub ztunnels: Vec<String>,
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

//! The command line.

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
    /// Show what a ztunnel knows, from its admin /config_dump (istioctl's columns).
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
    /// All four tables (or the whole dump with -o json|yaml).
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
    /// Only this namespace (workloads, services, policies).
    #[arg(long, short = 'n', value_name = "NAMESPACE")]
    pub namespace: Option<String>,
    /// Only workloads on this node.
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
}

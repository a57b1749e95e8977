//! Command line and environment configuration.
//!
//! Every setting has an Istio-style environment variable and a `--flag`; a flag wins over the
//! environment. Parsing goes through the [`Env`] trait so tests pass a map and never touch the
//! process environment.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

/// Directory of multi-document YAML files (Namespace, Pod, Service, ...), watched for changes.
pub const CONFIG_DIR: &str = "CONFIG_DIR";
/// Where istiod-lite keeps its state: the self-signed CA, the node-token secret, root-cert.pem.
pub const STATE_DIR: &str = "STATE_DIR";
/// Optional plug-in CA in Istio's `cacerts` layout.
pub const CACERTS_DIR: &str = "CACERTS_DIR";
/// SPIFFE trust domain of issued certificates and of pushed workloads.
pub const TRUST_DOMAIN: &str = "TRUST_DOMAIN";
/// Upper bound of a workload certificate's validity (seconds, or "24h", "90m", ...).
pub const MAX_WORKLOAD_CERT_TTL: &str = "MAX_WORKLOAD_CERT_TTL";
/// Plaintext gRPC listener (delta ADS + CA) for local mode.
pub const XDS_PLAINTEXT_ADDR: &str = "XDS_PLAINTEXT_ADDR";
/// TLS gRPC listener (delta ADS + CA).
pub const XDS_TLS_ADDR: &str = "XDS_TLS_ADDR";
/// HTTP listener for /metrics, /ready and /debug/*.
pub const MONITORING_ADDR: &str = "MONITORING_ADDR";
/// Quiet period after a config change before the new model is pushed.
pub const PUSH_DEBOUNCE_MS: &str = "PUSH_DEBOUNCE_MS";
/// Cluster id written into every workload (Istio's CLUSTER_ID).
pub const CLUSTER_ID: &str = "CLUSTER_ID";
/// Namespace whose selector-less AuthorizationPolicies and PeerAuthentications apply mesh-wide
/// (Istio's meshConfig.rootNamespace).
pub const ROOT_NAMESPACE: &str = "ROOT_NAMESPACE";
/// Where the config comes from: `file` (CONFIG_DIR, the default) or `kubernetes` (the API
/// server, in-cluster or KUBECONFIG).
pub const CONFIG_SOURCE: &str = "CONFIG_SOURCE";
/// Namespace istiod-lite runs in (Kubernetes mode: the ztunnel ServiceAccount's and the
/// leader Lease's namespace).
pub const POD_NAMESPACE: &str = "POD_NAMESPACE";
/// This replica's name (leader election identity).
pub const POD_NAME: &str = "POD_NAME";
/// ServiceAccount of ztunnel in POD_NAMESPACE (node authorization).
pub const ZTUNNEL_SERVICE_ACCOUNT: &str = "ZTUNNEL_SERVICE_ACCOUNT";
/// Image of the waypoint Deployments the controller creates; unset disables the controller.
pub const WAYPOINT_IMAGE: &str = "WAYPOINT_IMAGE";
/// XDS_ADDRESS given to waypoints; default https://istiod.<POD_NAMESPACE>.svc:15012.
pub const WAYPOINT_XDS_ADDRESS: &str = "WAYPOINT_XDS_ADDRESS";

const DEFAULT_STATE_DIR: &str = "./.state/istiod";
const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";
const DEFAULT_CLUSTER_ID: &str = "Kubernetes";
const DEFAULT_ROOT_NAMESPACE: &str = "istio-system";
const DEFAULT_MAX_WORKLOAD_CERT_TTL: Duration = Duration::from_secs(24 * 3600);
const DEFAULT_PUSH_DEBOUNCE_MS: u64 = 100;
/// How often CONFIG_DIR is scanned; with the debounce this keeps edit-to-client under 1 s.
const CONFIG_POLL_INTERVAL: Duration = Duration::from_millis(200);

/// Usage text printed by `--help` and on flag errors.
pub const USAGE: &str = "\
usage: istiod-lite [flags]              run the control plane
       istiod-lite node-token --state-dir DIR --node NODE
                                        print the bootstrap token of a node
       istiod-lite waypoint-token --state-dir DIR --namespace NS --gateway NAME
                                        print the bootstrap token of a waypoint

flags (each also read from the environment variable in brackets; a flag wins):
  --config-dir DIR              [CONFIG_DIR] YAML config directory (watched)
  --state-dir DIR               [STATE_DIR] default ./.state/istiod
  --cacerts-dir DIR             [CACERTS_DIR] plug-in CA (ca-cert.pem, ca-key.pem, root-cert.pem, cert-chain.pem)
  --trust-domain TD             [TRUST_DOMAIN] default cluster.local
  --max-workload-cert-ttl D     [MAX_WORKLOAD_CERT_TTL] seconds or 24h/90m/30s; default 24h
  --xds-plaintext-addr ADDR     [XDS_PLAINTEXT_ADDR] default 127.0.0.1:15010
  --xds-tls-addr ADDR           [XDS_TLS_ADDR] default 127.0.0.1:15012
  --monitoring-addr ADDR        [MONITORING_ADDR] default 127.0.0.1:15014
  --push-debounce-ms MS         [PUSH_DEBOUNCE_MS] default 100
  --cluster-id ID               [CLUSTER_ID] default Kubernetes
  --root-namespace NS           [ROOT_NAMESPACE] mesh-wide security policy namespace; default istio-system
  --config-source SRC           [CONFIG_SOURCE] file (default) or kubernetes (in-cluster or KUBECONFIG)
  --pod-namespace NS            [POD_NAMESPACE] Kubernetes mode: istiod-lite's namespace; default istio-system
  --pod-name NAME               [POD_NAME] Kubernetes mode: leader election identity; default $HOSTNAME
  --ztunnel-service-account SA  [ZTUNNEL_SERVICE_ACCOUNT] Kubernetes mode: ztunnel's ServiceAccount; default ztunnel
  --waypoint-image IMAGE        [WAYPOINT_IMAGE] Kubernetes mode: waypoint image; unset disables the waypoint controller
  --waypoint-xds-address URL    [WAYPOINT_XDS_ADDRESS] default https://istiod.<POD_NAMESPACE>.svc:15012
";

/// Errors in flags or environment values.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A flag this program does not know.
    #[error("unknown flag {0} (see --help)")]
    UnknownFlag(String),
    /// A flag given without its value.
    #[error("flag {0} needs a value")]
    MissingValue(String),
    /// A value that does not parse.
    #[error("invalid {name}={value:?}: {reason}")]
    Invalid {
        /// Env or flag name.
        name: String,
        /// The value as given.
        value: String,
        /// Why it was rejected.
        reason: String,
    },
    /// A required setting is absent.
    #[error("{0} is required")]
    Required(&'static str),
    /// `--help` was given.
    #[error("{USAGE}")]
    Help,
}

/// Source of environment variables (tests pass a map); shared with the other binaries.
pub use mesh_config::{ProcessEnv, Source as Env};

/// What the command line asks for.
#[derive(Debug, Clone)]
pub enum Command {
    /// Run the control plane.
    Serve(Box<Config>),
    /// Print the bootstrap token of `node`, creating the secret in `state_dir` if needed.
    NodeToken {
        /// Directory holding node-token.key.
        state_dir: PathBuf,
        /// Node name the token is for.
        node: String,
    },
    /// Print the bootstrap token of the waypoint of Gateway `namespace/gateway`.
    WaypointToken {
        /// Directory holding node-token.key.
        state_dir: PathBuf,
        /// Gateway namespace.
        namespace: String,
        /// Gateway name (the waypoint's service account).
        gateway: String,
    },
}

/// Runtime configuration of the control plane (logged once at start-up).
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    /// YAML config directory; `None` runs with an empty model.
    pub config_dir: Option<PathBuf>,
    /// State directory (CA root, node-token secret, root-cert.pem).
    pub state_dir: PathBuf,
    /// Plug-in CA directory, if any.
    pub cacerts_dir: Option<PathBuf>,
    /// Trust domain of identities we issue and push.
    pub trust_domain: String,
    /// Cluster id written into workloads.
    pub cluster_id: String,
    /// Namespace of mesh-wide AuthorizationPolicies and PeerAuthentications.
    pub root_namespace: String,
    /// Maximum workload certificate validity.
    #[serde(serialize_with = "ser_duration")]
    pub max_workload_cert_ttl: Duration,
    /// Plaintext ADS + CA listener.
    pub xds_plaintext_addr: SocketAddr,
    /// TLS ADS + CA listener.
    pub xds_tls_addr: SocketAddr,
    /// Monitoring HTTP listener.
    pub monitoring_addr: SocketAddr,
    /// Debounce between a config change and the push.
    #[serde(serialize_with = "ser_duration")]
    pub push_debounce: Duration,
    /// Poll interval of the config directory watcher.
    #[serde(serialize_with = "ser_duration")]
    pub config_poll_interval: Duration,
    /// Where the config comes from.
    pub config_source: ConfigSource,
    /// Kubernetes-mode settings.
    pub kube: KubeConfig,
}

/// Where the config comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ConfigSource {
    /// CONFIG_DIR.
    File,
    /// The Kubernetes API server.
    Kubernetes,
}

/// Settings used only with `CONFIG_SOURCE=kubernetes`.
#[derive(Debug, Clone, Serialize)]
pub struct KubeConfig {
    /// istiod-lite's namespace.
    pub namespace: String,
    /// This replica's identity in leader election.
    pub pod_name: String,
    /// ztunnel's ServiceAccount (in `namespace`).
    pub ztunnel_service_account: String,
    /// Waypoint image; `None` disables the waypoint controller.
    pub waypoint_image: Option<String>,
    /// XDS_ADDRESS of waypoints.
    pub waypoint_xds_address: String,
}

fn ser_duration<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{d:?}"))
}

impl Config {
    /// Defaults with everything optional unset (tests start from here).
    pub fn with_defaults() -> Self {
        Config {
            config_dir: None,
            state_dir: PathBuf::from(DEFAULT_STATE_DIR),
            cacerts_dir: None,
            trust_domain: DEFAULT_TRUST_DOMAIN.to_string(),
            cluster_id: DEFAULT_CLUSTER_ID.to_string(),
            root_namespace: DEFAULT_ROOT_NAMESPACE.to_string(),
            max_workload_cert_ttl: DEFAULT_MAX_WORKLOAD_CERT_TTL,
            xds_plaintext_addr: loopback(15010),
            xds_tls_addr: loopback(15012),
            monitoring_addr: loopback(15014),
            push_debounce: Duration::from_millis(DEFAULT_PUSH_DEBOUNCE_MS),
            config_poll_interval: CONFIG_POLL_INTERVAL,
            config_source: ConfigSource::File,
            kube: KubeConfig {
                namespace: "istio-system".into(),
                pod_name: "istiod-lite".into(),
                ztunnel_service_account: "ztunnel".into(),
                waypoint_image: None,
                waypoint_xds_address: "https://istiod.istio-system.svc:15012".into(),
            },
        }
    }
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Parses the command line (without the program name) and the environment.
pub fn parse(args: &[String], env: &dyn Env) -> Result<Command, ConfigError> {
    if args.first().map(String::as_str) == Some("node-token") {
        let flags = parse_flags(&args[1..], &["--state-dir", "--node"])?;
        let state_dir = flags
            .get("--state-dir")
            .cloned()
            .or_else(|| env.get(STATE_DIR))
            .unwrap_or_else(|| DEFAULT_STATE_DIR.to_string());
        let node = flags
            .get("--node")
            .cloned()
            .ok_or(ConfigError::Required("--node"))?;
        if node.is_empty() {
            return Err(ConfigError::Required("--node"));
        }
        if !crate::auth::valid_node_name(&node) {
            return Err(invalid("--node", &node, "a node name has no ':' or '/'"));
        }
        return Ok(Command::NodeToken {
            state_dir: PathBuf::from(state_dir),
            node,
        });
    }

    if args.first().map(String::as_str) == Some("waypoint-token") {
        let flags = parse_flags(&args[1..], &["--state-dir", "--namespace", "--gateway"])?;
        let state_dir = flags
            .get("--state-dir")
            .cloned()
            .or_else(|| env.get(STATE_DIR))
            .unwrap_or_else(|| DEFAULT_STATE_DIR.to_string());
        let required = |flag: &'static str| -> Result<String, ConfigError> {
            let v = flags.get(flag).cloned().unwrap_or_default();
            if v.is_empty() {
                return Err(ConfigError::Required(flag));
            }
            if v.contains(['/', ':']) || v.contains(char::is_whitespace) {
                return Err(invalid(
                    flag,
                    &v,
                    "a Kubernetes name has no '/', ':' or spaces",
                ));
            }
            Ok(v)
        };
        let namespace = required("--namespace")?;
        let gateway = required("--gateway")?;
        return Ok(Command::WaypointToken {
            state_dir: PathBuf::from(state_dir),
            namespace,
            gateway,
        });
    }

    let flags = parse_flags(args, &FLAGS.iter().map(|(f, _)| *f).collect::<Vec<_>>())?;
    // A flag overrides the environment variable of the same setting.
    let get = |env_name: &str| -> Option<String> {
        FLAGS
            .iter()
            .find(|(_, e)| *e == env_name)
            .and_then(|(flag, _)| flags.get(*flag).cloned())
            .or_else(|| env.get(env_name))
    };
    let non_empty = |env_name: &str| get(env_name).filter(|v| !v.is_empty());

    let mut cfg = Config::with_defaults();
    cfg.config_dir = non_empty(CONFIG_DIR).map(PathBuf::from);
    if let Some(v) = non_empty(STATE_DIR) {
        cfg.state_dir = PathBuf::from(v);
    }
    cfg.cacerts_dir = non_empty(CACERTS_DIR).map(PathBuf::from);
    if let Some(v) = non_empty(TRUST_DOMAIN) {
        if v.contains('/') || v.contains(char::is_whitespace) {
            return Err(invalid(
                TRUST_DOMAIN,
                &v,
                "a trust domain is a DNS-like name without '/' or spaces",
            ));
        }
        cfg.trust_domain = v;
    }
    if let Some(v) = non_empty(CLUSTER_ID) {
        cfg.cluster_id = v;
    }
    if let Some(v) = non_empty(ROOT_NAMESPACE) {
        if v.contains('/') || v.contains(char::is_whitespace) {
            return Err(invalid(
                ROOT_NAMESPACE,
                &v,
                "a namespace name has no '/' or spaces",
            ));
        }
        cfg.root_namespace = v;
    }
    if let Some(v) = non_empty(MAX_WORKLOAD_CERT_TTL) {
        cfg.max_workload_cert_ttl =
            parse_duration(&v).map_err(|r| invalid(MAX_WORKLOAD_CERT_TTL, &v, &r))?;
        if cfg.max_workload_cert_ttl.is_zero() {
            return Err(invalid(MAX_WORKLOAD_CERT_TTL, &v, "must be positive"));
        }
    }
    if let Some(v) = non_empty(XDS_PLAINTEXT_ADDR) {
        cfg.xds_plaintext_addr = parse_addr(XDS_PLAINTEXT_ADDR, &v)?;
    }
    if let Some(v) = non_empty(XDS_TLS_ADDR) {
        cfg.xds_tls_addr = parse_addr(XDS_TLS_ADDR, &v)?;
    }
    if let Some(v) = non_empty(MONITORING_ADDR) {
        cfg.monitoring_addr = parse_addr(MONITORING_ADDR, &v)?;
    }
    if let Some(v) = non_empty(PUSH_DEBOUNCE_MS) {
        let ms: u64 = v
            .parse()
            .map_err(|_| invalid(PUSH_DEBOUNCE_MS, &v, "expected milliseconds"))?;
        cfg.push_debounce = Duration::from_millis(ms);
    }
    match non_empty(CONFIG_SOURCE).as_deref() {
        None | Some("file") => {}
        Some("kubernetes") => cfg.config_source = ConfigSource::Kubernetes,
        Some(v) => return Err(invalid(CONFIG_SOURCE, v, "expected file or kubernetes")),
    }
    let k8s_name = |name: &str, v: String| -> Result<String, ConfigError> {
        if v.contains(['/', ':']) || v.contains(char::is_whitespace) {
            return Err(invalid(
                name,
                &v,
                "a Kubernetes name has no '/', ':' or spaces",
            ));
        }
        Ok(v)
    };
    if let Some(v) = non_empty(POD_NAMESPACE) {
        cfg.kube.namespace = k8s_name(POD_NAMESPACE, v)?;
    }
    if let Some(v) = non_empty(POD_NAME).or_else(|| env.get("HOSTNAME").filter(|h| !h.is_empty())) {
        cfg.kube.pod_name = v;
    }
    if let Some(v) = non_empty(ZTUNNEL_SERVICE_ACCOUNT) {
        cfg.kube.ztunnel_service_account = k8s_name(ZTUNNEL_SERVICE_ACCOUNT, v)?;
    }
    cfg.kube.waypoint_image = non_empty(WAYPOINT_IMAGE);
    cfg.kube.waypoint_xds_address = non_empty(WAYPOINT_XDS_ADDRESS)
        .unwrap_or_else(|| format!("https://istiod.{}.svc:15012", cfg.kube.namespace));
    Ok(Command::Serve(Box::new(cfg)))
}

/// (flag, env var) pairs of the serve command.
const FLAGS: &[(&str, &str)] = &[
    ("--config-dir", CONFIG_DIR),
    ("--state-dir", STATE_DIR),
    ("--cacerts-dir", CACERTS_DIR),
    ("--trust-domain", TRUST_DOMAIN),
    ("--cluster-id", CLUSTER_ID),
    ("--root-namespace", ROOT_NAMESPACE),
    ("--config-source", CONFIG_SOURCE),
    ("--pod-namespace", POD_NAMESPACE),
    ("--pod-name", POD_NAME),
    ("--ztunnel-service-account", ZTUNNEL_SERVICE_ACCOUNT),
    ("--waypoint-image", WAYPOINT_IMAGE),
    ("--waypoint-xds-address", WAYPOINT_XDS_ADDRESS),
    ("--max-workload-cert-ttl", MAX_WORKLOAD_CERT_TTL),
    ("--xds-plaintext-addr", XDS_PLAINTEXT_ADDR),
    ("--xds-tls-addr", XDS_TLS_ADDR),
    ("--monitoring-addr", MONITORING_ADDR),
    ("--push-debounce-ms", PUSH_DEBOUNCE_MS),
];

/// Parses `--flag value` and `--flag=value` pairs, accepting only `known` flags.
fn parse_flags(args: &[String], known: &[&str]) -> Result<HashMap<String, String>, ConfigError> {
    let mut out = HashMap::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        if arg == "--help" || arg == "-h" {
            return Err(ConfigError::Help);
        }
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        if !known.contains(&flag.as_str()) {
            return Err(ConfigError::UnknownFlag(arg.clone()));
        }
        let value = match inline {
            Some(v) => v,
            None => it
                .next()
                .cloned()
                .ok_or_else(|| ConfigError::MissingValue(flag.clone()))?,
        };
        out.insert(flag, value);
    }
    Ok(out)
}

fn invalid(name: &str, value: &str, reason: &str) -> ConfigError {
    ConfigError::Invalid {
        name: name.to_string(),
        value: value.to_string(),
        reason: reason.to_string(),
    }
}

fn parse_addr(name: &str, v: &str) -> Result<SocketAddr, ConfigError> {
    v.parse().map_err(|_| {
        invalid(
            name,
            v,
            "expected IP:port, e.g. 127.0.0.1:15010 or [::1]:15010",
        )
    })
}

pub use mesh_config::parse_duration;

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn serve(a: &[&str], e: &[(&str, &str)]) -> Config {
        match parse(&args(a), &env(e)).unwrap() {
            Command::Serve(c) => *c,
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn defaults() {
        let c = serve(&[], &[]);
        assert_eq!(c.trust_domain, "cluster.local");
        assert_eq!(c.state_dir, PathBuf::from("./.state/istiod"));
        assert_eq!(c.xds_plaintext_addr.to_string(), "127.0.0.1:15010");
        assert_eq!(c.xds_tls_addr.to_string(), "127.0.0.1:15012");
        assert_eq!(c.monitoring_addr.to_string(), "127.0.0.1:15014");
        assert_eq!(c.push_debounce, Duration::from_millis(100));
        assert_eq!(c.max_workload_cert_ttl, Duration::from_secs(86400));
        assert!(c.config_dir.is_none());
        assert_eq!(c.root_namespace, "istio-system");
    }

    #[test]
    fn root_namespace_from_env_and_flag() {
        let c = serve(&[], &[("ROOT_NAMESPACE", "mesh-root")]);
        assert_eq!(c.root_namespace, "mesh-root");
        let c = serve(
            &["--root-namespace", "flag-root"],
            &[("ROOT_NAMESPACE", "mesh-root")],
        );
        assert_eq!(c.root_namespace, "flag-root");
        let err = parse(&args(&["--root-namespace=a/b"]), &env(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("ROOT_NAMESPACE"), "{err}");
    }

    #[test]
    fn env_then_flags_override() {
        let e = [
            ("CONFIG_DIR", "/env/cfg"),
            ("TRUST_DOMAIN", "env.td"),
            ("MAX_WORKLOAD_CERT_TTL", "1h30m"),
        ];
        let c = serve(&[], &e);
        assert_eq!(c.config_dir, Some(PathBuf::from("/env/cfg")));
        assert_eq!(c.trust_domain, "env.td");
        assert_eq!(c.max_workload_cert_ttl, Duration::from_secs(5400));
        let c = serve(
            &[
                "--config-dir",
                "/flag/cfg",
                "--trust-domain=flag.td",
                "--push-debounce-ms",
                "5",
            ],
            &e,
        );
        assert_eq!(c.config_dir, Some(PathBuf::from("/flag/cfg")));
        assert_eq!(c.trust_domain, "flag.td");
        assert_eq!(c.push_debounce, Duration::from_millis(5));
    }

    #[test]
    fn bad_values_name_the_setting() {
        let err = parse(&args(&[]), &env(&[("XDS_TLS_ADDR", "nope")]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("XDS_TLS_ADDR") && err.contains("nope"),
            "{err}"
        );
        let err = parse(&args(&["--bogus"]), &env(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("--bogus"), "{err}");
        let err = parse(&args(&["--state-dir"]), &env(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("--state-dir"), "{err}");
    }

    #[test]
    fn node_token_command() {
        match parse(
            &args(&["node-token", "--state-dir", "/s", "--node", "n1"]),
            &env(&[]),
        )
        .unwrap()
        {
            Command::NodeToken { state_dir, node } => {
                assert_eq!(state_dir, PathBuf::from("/s"));
                assert_eq!(node, "n1");
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(parse(&args(&["node-token", "--state-dir", "/s"]), &env(&[])).is_err());
        assert!(parse(&args(&["node-token", "--node", "waypoint:a/b"]), &env(&[])).is_err());
    }

    #[test]
    fn waypoint_token_command() {
        match parse(
            &args(&[
                "waypoint-token",
                "--state-dir",
                "/s",
                "--namespace",
                "app",
                "--gateway",
                "waypoint",
            ]),
            &env(&[]),
        )
        .unwrap()
        {
            Command::WaypointToken {
                state_dir,
                namespace,
                gateway,
            } => {
                assert_eq!(state_dir, PathBuf::from("/s"));
                assert_eq!((namespace.as_str(), gateway.as_str()), ("app", "waypoint"));
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(parse(&args(&["waypoint-token", "--namespace", "app"]), &env(&[])).is_err());
        assert!(parse(
            &args(&["waypoint-token", "--namespace", "a/b", "--gateway", "w"]),
            &env(&[])
        )
        .is_err());
    }

    #[test]
    fn kubernetes_settings() {
        let c = serve(&[], &[]);
        assert_eq!(c.config_source, ConfigSource::File);
        let c = serve(
            &["--config-source", "kubernetes"],
            &[
                ("POD_NAMESPACE", "mesh"),
                ("HOSTNAME", "istiod-lite-abc"),
                ("WAYPOINT_IMAGE", "r/w:1"),
            ],
        );
        assert_eq!(c.config_source, ConfigSource::Kubernetes);
        assert_eq!(c.kube.namespace, "mesh");
        assert_eq!(c.kube.pod_name, "istiod-lite-abc");
        assert_eq!(c.kube.ztunnel_service_account, "ztunnel");
        assert_eq!(c.kube.waypoint_image.as_deref(), Some("r/w:1"));
        assert_eq!(c.kube.waypoint_xds_address, "https://istiod.mesh.svc:15012");
        let err = parse(&args(&[]), &env(&[("CONFIG_SOURCE", "etcd")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("CONFIG_SOURCE"), "{err}");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("86400").unwrap(), Duration::from_secs(86400));
        assert_eq!(parse_duration("24h").unwrap(), Duration::from_secs(86400));
        assert_eq!(parse_duration("10m5s").unwrap(), Duration::from_secs(605));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert!(parse_duration("h").is_err());
        assert!(parse_duration("5d").is_err());
        assert!(parse_duration("").is_err());
    }
}

//! Parsing of what the container runtime hands us: `CNI_*` environment variables and the network
//! configuration JSON on stdin.

use std::collections::HashMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::CniError;

/// `CNI_COMMAND`: ADD, DEL, CHECK or VERSION.
pub const ENV_COMMAND: &str = "CNI_COMMAND";
/// `CNI_CONTAINERID`: the runtime's container id.
pub const ENV_CONTAINERID: &str = "CNI_CONTAINERID";
/// `CNI_NETNS`: path to the pod's network namespace.
pub const ENV_NETNS: &str = "CNI_NETNS";
/// `CNI_IFNAME`: the interface name inside the container.
pub const ENV_IFNAME: &str = "CNI_IFNAME";
/// `CNI_ARGS`: `;`-separated `K=V` pairs.
pub const ENV_ARGS: &str = "CNI_ARGS";

/// Default path of the node agent's enrollment socket.
pub const DEFAULT_AGENT_SOCKET: &str = "/var/run/ambient-rs/cni.sock";

/// CNI spec versions this plugin speaks.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// Source of environment variables (tests pass a map); shared with the other binaries.
pub use mesh_config::{ProcessEnv, Source as Env};

/// The CNI operation requested by the runtime.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Command {
    /// Set up the container's network.
    Add,
    /// Tear it down.
    Del,
    /// Verify it is still as ADD left it.
    Check,
    /// Report supported spec versions.
    Version,
}

impl Command {
    fn parse(s: &str) -> Result<Self, CniError> {
        match s {
            "ADD" => Ok(Self::Add),
            "DEL" => Ok(Self::Del),
            "CHECK" => Ok(Self::Check),
            "VERSION" => Ok(Self::Version),
            other => Err(CniError::InvalidEnv(format!(
                "{ENV_COMMAND}={other:?} is not one of ADD, DEL, CHECK, VERSION"
            ))),
        }
    }
}

/// Kubernetes identity of the pod, from `CNI_ARGS`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PodArgs {
    /// `K8S_POD_NAMESPACE`.
    pub namespace: String,
    /// `K8S_POD_NAME`.
    pub name: String,
    /// `K8S_POD_UID` (may be empty: older runtimes do not pass it).
    pub uid: String,
}

/// Everything the runtime passed through the environment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CniEnv {
    /// `CNI_COMMAND`.
    pub command: Command,
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_NETNS` (may be empty on DEL).
    pub netns: Option<PathBuf>,
    /// `CNI_IFNAME`.
    pub ifname: String,
    /// The pod, when `CNI_ARGS` names one (`None` for non-Kubernetes containers).
    pub pod: Option<PodArgs>,
}

/// Parses `CNI_ARGS` (`K=V;K=V`) into a map. An empty string is no pairs.
pub fn parse_cni_args(s: &str) -> Result<HashMap<String, String>, CniError> {
    let mut out = HashMap::new();
    for pair in s.split(';').filter(|p| !p.is_empty()) {
        let Some((k, v)) = pair.split_once('=') else {
            return Err(CniError::InvalidEnv(format!(
                "{ENV_ARGS} entry {pair:?} is not KEY=VALUE"
            )));
        };
        if k.is_empty() {
            return Err(CniError::InvalidEnv(format!(
                "{ENV_ARGS} entry {pair:?} has an empty key"
            )));
        }
        out.insert(k.to_string(), v.to_string());
    }
    Ok(out)
}

impl CniEnv {
    /// Reads and validates the `CNI_*` variables. VERSION needs only `CNI_COMMAND`; ADD and
    /// CHECK need `CNI_CONTAINERID`, `CNI_NETNS` and `CNI_IFNAME`; DEL tolerates a missing netns.
    pub fn from_env(env: &dyn Env) -> Result<Self, CniError> {
        let command = env
            .get(ENV_COMMAND)
            .ok_or_else(|| CniError::InvalidEnv(format!("{ENV_COMMAND} is not set")))?;
        let command = Command::parse(&command)?;
        let non_empty = |k: &str| env.get(k).filter(|v| !v.is_empty());
        let netns = non_empty(ENV_NETNS).map(PathBuf::from);
        let container_id = non_empty(ENV_CONTAINERID).unwrap_or_default();
        let ifname = non_empty(ENV_IFNAME).unwrap_or_default();
        let args = parse_cni_args(&env.get(ENV_ARGS).unwrap_or_default())?;

        if command != Command::Version {
            if container_id.is_empty() {
                return Err(CniError::InvalidEnv(format!(
                    "{ENV_CONTAINERID} is not set"
                )));
            }
            if ifname.is_empty() {
                return Err(CniError::InvalidEnv(format!("{ENV_IFNAME} is not set")));
            }
            if command != Command::Del && netns.is_none() {
                return Err(CniError::InvalidEnv(format!("{ENV_NETNS} is not set")));
            }
        }

        let arg = |k: &str| args.get(k).cloned().unwrap_or_default();
        let (namespace, name) = (arg("K8S_POD_NAMESPACE"), arg("K8S_POD_NAME"));
        // Like istio-cni: without a namespace and name this is not a Kubernetes pod, and we leave
        // it alone.
        let pod = (!namespace.is_empty() && !name.is_empty()).then(|| PodArgs {
            namespace,
            name,
            uid: arg("K8S_POD_UID"),
        });
        Ok(Self {
            command,
            container_id,
            netns,
            ifname,
            pod,
        })
    }
}

fn default_socket() -> PathBuf {
    PathBuf::from(DEFAULT_AGENT_SOCKET)
}

fn default_log_level() -> String {
    "info".to_string()
}

/// The network configuration on stdin: the spec's keys plus ours.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct NetConf {
    /// Spec version the runtime speaks; our output uses the same.
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    /// Network name.
    #[serde(default)]
    pub name: String,
    /// Plugin type (our binary name).
    #[serde(default, rename = "type")]
    pub plugin_type: String,
    /// The result of the previous plugin in the chain, passed through unchanged.
    #[serde(default, rename = "prevResult")]
    pub prev_result: Option<serde_json::Value>,
    /// Node agent's enrollment socket.
    #[serde(default = "default_socket")]
    pub ztunnel_socket: PathBuf,
    /// Log filter for stderr (tracing `EnvFilter` syntax).
    #[serde(default = "default_log_level")]
    pub log_level: String,
    /// Redirect DNS (UDP/TCP 53) to ztunnel's DNS proxy on 15053.
    #[serde(default)]
    pub dns_capture: bool,
}

impl NetConf {
    /// Parses the stdin bytes. Fails with code 4 on malformed JSON and code 1 on an unsupported
    /// `cniVersion`.
    pub fn parse(bytes: &[u8]) -> Result<Self, CniError> {
        let conf: NetConf = serde_json::from_slice(bytes)
            .map_err(|e| CniError::InvalidConfig(format!("network config on stdin: {e}")))?;
        if !SUPPORTED_VERSIONS.contains(&conf.cni_version.as_str()) {
            return Err(CniError::IncompatibleVersion(conf.cni_version));
        }
        Ok(conf)
    }

    /// Pod IPs (without prefix length) from `prevResult.ips[].address`.
    pub fn pod_ips(&self) -> Vec<String> {
        let Some(ips) = self
            .prev_result
            .as_ref()
            .and_then(|r| r.get("ips"))
            .and_then(|v| v.as_array())
        else {
            return Vec::new();
        };
        ips.iter()
            .filter_map(|ip| ip.get("address")?.as_str())
            .map(|a| a.split('/').next().unwrap_or(a).to_string())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn cni_args_parse() {
        let m = parse_cni_args("IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=a=b;")
            .expect("valid");
        assert_eq!(m["IgnoreUnknown"], "1");
        assert_eq!(m["K8S_POD_NAMESPACE"], "ns");
        assert_eq!(m["K8S_POD_NAME"], "a=b");
        assert!(parse_cni_args("").expect("empty").is_empty());
        assert_eq!(parse_cni_args("novalue").expect_err("must fail").code(), 7);
        assert_eq!(parse_cni_args("=v").expect_err("must fail").code(), 7);
    }

    #[test]
    fn env_add_full() {
        let e = CniEnv::from_env(&env(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_NETNS", "/run/netns/x"),
            ("CNI_IFNAME", "eth0"),
            (
                "CNI_ARGS",
                "K8S_POD_NAMESPACE=ns;K8S_POD_NAME=p;K8S_POD_UID=u-1",
            ),
        ]))
        .expect("valid");
        assert_eq!(e.command, Command::Add);
        assert_eq!(e.netns, Some(PathBuf::from("/run/netns/x")));
        assert_eq!(
            e.pod,
            Some(PodArgs {
                namespace: "ns".into(),
                name: "p".into(),
                uid: "u-1".into()
            })
        );
    }

    #[test]
    fn env_errors() {
        assert_eq!(
            CniEnv::from_env(&env(&[])).expect_err("must fail").code(),
            7
        );
        let bad = CniEnv::from_env(&env(&[("CNI_COMMAND", "GET")])).expect_err("must fail");
        assert_eq!(bad.code(), 7);
        let no_netns = CniEnv::from_env(&env(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_IFNAME", "eth0"),
        ]))
        .expect_err("must fail");
        assert_eq!(no_netns.code(), 7);
        assert!(no_netns.to_string().contains("CNI_NETNS"));
        // DEL without a netns is fine (spec: the netns may already be gone).
        let del = CniEnv::from_env(&env(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_IFNAME", "eth0"),
        ]))
        .expect("DEL without netns");
        assert_eq!(del.netns, None);
        assert_eq!(del.pod, None);
        // VERSION needs nothing else.
        CniEnv::from_env(&env(&[("CNI_COMMAND", "VERSION")])).expect("VERSION");
    }

    #[test]
    fn netconf_parse() {
        let c = NetConf::parse(
            br#"{"cniVersion":"1.0.0","name":"n","type":"ambient-cni",
                "prevResult":{"cniVersion":"1.0.0","ips":[{"address":"10.1.0.5/24"},{"address":"fd00::5/64"}]}}"#,
        )
        .expect("valid");
        assert_eq!(c.ztunnel_socket, PathBuf::from(DEFAULT_AGENT_SOCKET));
        assert_eq!(c.log_level, "info");
        assert!(!c.dns_capture);
        assert_eq!(c.pod_ips(), vec!["10.1.0.5", "fd00::5"]);

        assert_eq!(NetConf::parse(b"{").expect_err("must fail").code(), 4);
        assert_eq!(NetConf::parse(b"{}").expect_err("must fail").code(), 4);
        assert_eq!(
            NetConf::parse(br#"{"cniVersion":"0.2.0"}"#)
                .expect_err("must fail")
                .code(),
            1
        );
        let c = NetConf::parse(
            br#"{"cniVersion":"0.4.0","ztunnel_socket":"/tmp/s","dns_capture":true}"#,
        )
        .expect("valid");
        assert_eq!(c.ztunnel_socket, PathBuf::from("/tmp/s"));
        assert!(c.dns_capture);
        assert!(c.pod_ips().is_empty());
    }
}

//! Runtime configuration, read once at start from the environment.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

pub use mesh_config::{ProcessEnv, Source};

/// Names of the environment variables we read.
pub mod env {
    /// Control plane (delta ADS), `http://` or `https://`.
    pub const XDS_ADDRESS: &str = "XDS_ADDRESS";
    /// CA; defaults to XDS_ADDRESS.
    pub const CA_ADDRESS: &str = "CA_ADDRESS";
    /// Root certificate for an https XDS_ADDRESS.
    pub const XDS_ROOT_CA: &str = "XDS_ROOT_CA";
    /// Root certificate for an https CA_ADDRESS.
    pub const CA_ROOT_CA: &str = "CA_ROOT_CA";
    /// File holding the waypoint token (`istiod-lite waypoint-token`).
    pub const AUTH_TOKEN: &str = "AUTH_TOKEN";
    /// Namespace of the waypoint's Gateway (Istio: POD_NAMESPACE).
    pub const POD_NAMESPACE: &str = "POD_NAMESPACE";
    /// Name of the waypoint's Gateway (Istio: the gateway-name label; here an env var).
    pub const GATEWAY_NAME: &str = "GATEWAY_NAME";
    /// Pod name, for the xDS node id and logs.
    pub const POD_NAME: &str = "POD_NAME";
    /// The waypoint pod's IP: upstream HBONE connections are made from it.
    pub const INSTANCE_IP: &str = "INSTANCE_IP";
    /// Trust domain of the waypoint's identity.
    pub const TRUST_DOMAIN: &str = "TRUST_DOMAIN";
    /// Cluster id (`clusterid` metadata, metrics).
    pub const CLUSTER_ID: &str = "CLUSTER_ID";
    /// Certificate validity requested from the CA.
    pub const SECRET_TTL: &str = "SECRET_TTL";
    /// HBONE listener.
    pub const LISTEN_ADDR: &str = "LISTEN_ADDR";
    /// Prometheus endpoint (`/stats/prometheus`).
    pub const STATS_ADDR: &str = "STATS_ADDR";
    /// Readiness endpoint (`/healthz/ready`).
    pub const READINESS_ADDR: &str = "READINESS_ADDR";
    /// Admin endpoint (`/config_dump`), localhost.
    pub const ADMIN_ADDR: &str = "ADMIN_ADDR";
}

/// Errors in the configuration; each names the variable to fix.
#[derive(thiserror::Error, Debug)]
pub enum ConfigError {
    /// A value that does not parse.
    #[error("{var}={value:?} is not valid: {reason}")]
    Invalid {
        /// Variable.
        var: &'static str,
        /// Value.
        value: String,
        /// Why.
        reason: String,
    },
    /// A required variable is unset.
    #[error("{0} must be set")]
    Missing(&'static str),
}

/// Everything the waypoint needs to know at start.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Config {
    /// XDS_ADDRESS.
    pub xds_address: String,
    /// CA_ADDRESS.
    pub ca_address: String,
    /// XDS_ROOT_CA.
    pub xds_root_ca: Option<PathBuf>,
    /// CA_ROOT_CA.
    pub ca_root_ca: Option<PathBuf>,
    /// AUTH_TOKEN.
    pub auth_token: Option<PathBuf>,
    /// Gateway namespace.
    pub namespace: String,
    /// Gateway name (= service account).
    pub gateway: String,
    /// Pod name.
    pub pod_name: String,
    /// Source IP for upstream connections.
    pub instance_ip: Option<IpAddr>,
    /// Trust domain.
    pub trust_domain: String,
    /// Cluster id.
    pub cluster_id: String,
    /// Requested certificate validity.
    #[serde(serialize_with = "secs")]
    pub secret_ttl: Duration,
    /// HBONE listener (15008).
    pub listen_addr: SocketAddr,
    /// Stats listener (15020).
    pub stats_addr: Option<SocketAddr>,
    /// Readiness listener (15021).
    pub readiness_addr: Option<SocketAddr>,
    /// Admin listener (15000, localhost).
    pub admin_addr: Option<SocketAddr>,
    /// Tracing (traceparent, OTLP export): see [`crate::trace`].
    pub tracing: crate::trace::TraceConfig,
}

fn secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_secs())
}

impl Config {
    /// The SPIFFE identity of this waypoint: `spiffe://<td>/ns/<namespace>/sa/<gateway>`.
    pub fn identity(&self) -> mesh_identity::spiffe::Identity {
        mesh_identity::spiffe::Identity::new(&self.trust_domain, &self.namespace, &self.gateway)
    }

    /// Reads the configuration from `src`.
    pub fn from_source(src: &dyn Source) -> Result<Self, ConfigError> {
        let get = |k: &str| src.get(k).filter(|v| !v.is_empty());
        let required = |k: &'static str| get(k).ok_or(ConfigError::Missing(k));
        let addr =
            |k: &'static str, default: Option<&str>| -> Result<Option<SocketAddr>, ConfigError> {
                match src.get(k) {
                    // Explicitly empty disables an optional listener.
                    Some(v) if v.is_empty() => Ok(None),
                    Some(v) => v.parse().map(Some).map_err(|e| ConfigError::Invalid {
                        var: k,
                        value: v,
                        reason: format!("{e}"),
                    }),
                    None => Ok(default.and_then(|d| d.parse().ok())),
                }
            };
        let xds_address = required(env::XDS_ADDRESS)?;
        let secret_ttl = match get(env::SECRET_TTL) {
            None => Duration::from_secs(24 * 3600),
            Some(v) => mesh_config::parse_duration(&v).map_err(|reason| ConfigError::Invalid {
                var: env::SECRET_TTL,
                value: v,
                reason,
            })?,
        };
        let instance_ip = match get(env::INSTANCE_IP) {
            None => None,
            Some(v) => Some(v.parse().map_err(|_| ConfigError::Invalid {
                var: env::INSTANCE_IP,
                value: v.clone(),
                reason: "not an IP address".into(),
            })?),
        };
        let namespace = required(env::POD_NAMESPACE)?;
        let gateway = required(env::GATEWAY_NAME)?;
        let tracing =
            crate::trace::TraceConfig::from_source(src, &format!("{gateway}.{namespace}"))
                .map_err(|reason| ConfigError::Invalid {
                    var: crate::trace::env::OTLP_ENDPOINT,
                    value: String::new(),
                    reason,
                })?;
        Ok(Config {
            ca_address: get(env::CA_ADDRESS).unwrap_or_else(|| xds_address.clone()),
            xds_address,
            xds_root_ca: get(env::XDS_ROOT_CA).map(PathBuf::from),
            ca_root_ca: get(env::CA_ROOT_CA)
                .or_else(|| get(env::XDS_ROOT_CA))
                .map(PathBuf::from),
            auth_token: get(env::AUTH_TOKEN).map(PathBuf::from),
            pod_name: get(env::POD_NAME).unwrap_or_else(|| format!("{gateway}-0")),
            namespace,
            gateway,
            instance_ip,
            trust_domain: get(env::TRUST_DOMAIN).unwrap_or_else(|| "cluster.local".into()),
            cluster_id: get(env::CLUSTER_ID).unwrap_or_else(|| "Kubernetes".into()),
            secret_ttl,
            listen_addr: addr(env::LISTEN_ADDR, Some("[::]:15008"))?
                .ok_or(ConfigError::Missing(env::LISTEN_ADDR))?,
            stats_addr: addr(env::STATS_ADDR, Some("[::]:15020"))?,
            readiness_addr: addr(env::READINESS_ADDR, Some("[::]:15021"))?,
            admin_addr: addr(env::ADMIN_ADDR, Some("127.0.0.1:15000"))?,
            tracing,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn map(kv: &[(&str, &str)]) -> HashMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_and_identity() {
        let c = Config::from_source(&map(&[
            ("XDS_ADDRESS", "http://127.0.0.1:15010"),
            ("POD_NAMESPACE", "app"),
            ("GATEWAY_NAME", "waypoint"),
        ]))
        .unwrap();
        assert_eq!(c.ca_address, "http://127.0.0.1:15010");
        assert_eq!(c.listen_addr.port(), 15008);
        assert_eq!(c.stats_addr.unwrap().port(), 15020);
        assert_eq!(c.readiness_addr.unwrap().port(), 15021);
        assert_eq!(
            c.identity().to_string(),
            "spiffe://cluster.local/ns/app/sa/waypoint"
        );
    }

    #[test]
    fn errors_name_the_variable() {
        let e = Config::from_source(&map(&[("XDS_ADDRESS", "http://x")])).unwrap_err();
        assert!(e.to_string().contains("POD_NAMESPACE"), "{e}");
        let e = Config::from_source(&map(&[
            ("XDS_ADDRESS", "http://x"),
            ("POD_NAMESPACE", "a"),
            ("GATEWAY_NAME", "w"),
            ("LISTEN_ADDR", "nope"),
        ]))
        .unwrap_err();
        assert!(e.to_string().contains("LISTEN_ADDR"), "{e}");
        let c = Config::from_source(&map(&[
            ("XDS_ADDRESS", "http://x"),
            ("POD_NAMESPACE", "a"),
            ("GATEWAY_NAME", "w"),
            ("STATS_ADDR", ""),
        ]))
        .unwrap();
        assert!(c.stats_addr.is_none());
    }
}

//! Runtime configuration, read once at start from the environment (Istio's variable names where
//! an Istio user would look for them) and passed down.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

/// Names of the environment variables we read.
pub mod env {
    pub const XDS_ADDRESS: &str = "XDS_ADDRESS";
    pub const CA_ADDRESS: &str = "CA_ADDRESS";
    pub const XDS_ROOT_CA: &str = "XDS_ROOT_CA";
    pub const CA_ROOT_CA: &str = "CA_ROOT_CA";
    pub const AUTH_TOKEN: &str = "AUTH_TOKEN";
    pub const NODE_NAME: &str = "NODE_NAME";
    pub const TRUST_DOMAIN: &str = "TRUST_DOMAIN";
    pub const CLUSTER_ID: &str = "CLUSTER_ID";
    pub const SECRET_TTL: &str = "SECRET_TTL";
    pub const ADMIN_ADDR: &str = "ADMIN_ADDR";
    pub const STATS_ADDR: &str = "STATS_ADDR";
    pub const READINESS_ADDR: &str = "READINESS_ADDR";
    pub const SOCKS5_ADDR: &str = "SOCKS5_ADDR";
    pub const OUTBOUND_ADDR: &str = "OUTBOUND_ADDR";
    pub const INBOUND_PLAINTEXT_ADDR: &str = "INBOUND_PLAINTEXT_ADDR";
    pub const DNS_PROXY_ADDR: &str = "DNS_PROXY_ADDR";
    /// Istio's name for [`DNS_PROXY_ADDR`], read when that is unset.
    pub const ISTIO_META_DNS_PROXY_ADDR: &str = "ISTIO_META_DNS_PROXY_ADDR";
    pub const HBONE_PORT: &str = "HBONE_PORT";
    pub const PACKET_MARK: &str = "PACKET_MARK";
    pub const DRAIN_DURATION: &str = "TERMINATION_GRACE_PERIOD_SECONDS";
    pub const POOL_MAX_STREAMS_PER_CONNECTION: &str = "POOL_MAX_STREAMS_PER_CONNECTION";
    pub const POOL_UNUSED_RELEASE_TIMEOUT: &str = "POOL_UNUSED_RELEASE_TIMEOUT";
    pub const HTTP2_STREAM_WINDOW_SIZE: &str = "HTTP2_STREAM_WINDOW_SIZE";
    pub const HTTP2_CONNECTION_WINDOW_SIZE: &str = "HTTP2_CONNECTION_WINDOW_SIZE";
    pub const HTTP2_FRAME_SIZE: &str = "HTTP2_FRAME_SIZE";
    pub const WORKER_THREADS: &str = "ZTUNNEL_WORKER_THREADS";
    /// Unix socket the CNI plugin enrolls pods on; setting it turns on in-pod mode.
    pub const INPOD_UDS: &str = "INPOD_UDS";
}

/// Istio's in-pod packet mark (1337): the in-pod rules let sockets carrying it through.
pub const INPOD_PACKET_MARK: u32 = 0x539;

/// Errors in the configuration; each names the variable to fix.
#[derive(thiserror::Error, Debug)]
pub enum ConfigError {
    #[error("{var}={value:?} is not valid: {reason}")]
    Invalid {
        var: &'static str,
        value: String,
        reason: String,
    },
    #[error("{0} must be set")]
    Missing(&'static str),
}

/// Where configuration values come from (tests pass a map); shared with the other binaries.
pub use mesh_config::{ProcessEnv, Source};

/// Everything ztunnel needs to know at start.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Config {
    pub xds_address: String,
    pub ca_address: String,
    pub xds_root_ca: Option<PathBuf>,
    pub ca_root_ca: Option<PathBuf>,
    pub auth_token: Option<PathBuf>,
    pub node_name: String,
    pub trust_domain: String,
    pub cluster_id: String,
    #[serde(with = "secs")]
    pub secret_ttl: Duration,
    pub admin_addr: Option<SocketAddr>,
    pub stats_addr: Option<SocketAddr>,
    pub readiness_addr: Option<SocketAddr>,
    pub socks5_addr: Option<SocketAddr>,
    pub outbound_addr: Option<SocketAddr>,
    pub inbound_plaintext_addr: Option<SocketAddr>,
    /// DNS proxy (UDP and TCP); off unless set (explicit mode).
    pub dns_proxy_addr: Option<SocketAddr>,
    /// Port of the per-workload HBONE listeners (15008; only tests change it).
    pub hbone_port: u16,
    /// SO_MARK for every socket ztunnel creates towards workloads (needs CAP_NET_ADMIN).
    pub packet_mark: Option<u32>,
    /// In-pod mode: the enrollment socket. Listeners then live inside each enrolled pod's netns
    /// and the shared 15001/15006/15080 listeners are off unless set explicitly.
    pub inpod_uds: Option<PathBuf>,
    #[serde(with = "secs")]
    pub drain_duration: Duration,
    pub worker_threads: usize,
    pub hbone: HboneSettings,
}

/// HTTP/2 and pool knobs (Istio's env names and defaults).
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HboneSettings {
    pub window_size: u32,
    pub connection_window_size: u32,
    pub frame_size: u32,
    pub pool_max_streams_per_conn: u32,
    #[serde(with = "secs")]
    pub pool_unused_release_timeout: Duration,
}

mod secs {
    pub fn serialize<S: serde::Serializer>(
        d: &std::time::Duration,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{}s", d.as_secs_f64()))
    }
}

pub use mesh_config::parse_duration;

fn addr(
    src: &dyn Source,
    var: &'static str,
    default: &str,
) -> Result<Option<SocketAddr>, ConfigError> {
    let v = src.get(var).unwrap_or_else(|| default.to_string());
    if v.is_empty() {
        return Ok(None);
    }
    v.parse()
        .map(Some)
        .map_err(|e: std::net::AddrParseError| ConfigError::Invalid {
            var,
            value: v,
            reason: e.to_string(),
        })
}

fn num<T: std::str::FromStr>(
    src: &dyn Source,
    var: &'static str,
    default: T,
) -> Result<T, ConfigError>
where
    T::Err: std::fmt::Display,
{
    match src.get(var) {
        None => Ok(default),
        Some(v) => v.parse().map_err(|e: T::Err| ConfigError::Invalid {
            var,
            value: v,
            reason: e.to_string(),
        }),
    }
}

fn duration(
    src: &dyn Source,
    var: &'static str,
    default: Duration,
) -> Result<Duration, ConfigError> {
    match src.get(var) {
        None => Ok(default),
        Some(v) => parse_duration(&v).map_err(|reason| ConfigError::Invalid {
            var,
            value: v,
            reason,
        }),
    }
}

impl Config {
    /// Builds the configuration from `src`, applying Istio's defaults.
    pub fn from_source(src: &dyn Source) -> Result<Config, ConfigError> {
        let xds_address = src
            .get(env::XDS_ADDRESS)
            .unwrap_or_else(|| "https://127.0.0.1:15012".into());
        if !(xds_address.is_empty()
            || xds_address.starts_with("http://")
            || xds_address.starts_with("https://"))
        {
            return Err(ConfigError::Invalid {
                var: env::XDS_ADDRESS,
                value: xds_address,
                reason: "expected http://host:port or https://host:port".into(),
            });
        }
        let ca_address = src
            .get(env::CA_ADDRESS)
            .unwrap_or_else(|| xds_address.clone());
        let xds_root_ca = src.get(env::XDS_ROOT_CA).map(PathBuf::from);
        let ca_root_ca = src
            .get(env::CA_ROOT_CA)
            .map(PathBuf::from)
            .or_else(|| xds_root_ca.clone());
        let node_name = src
            .get(env::NODE_NAME)
            .ok_or(ConfigError::Missing(env::NODE_NAME))?;
        let inpod_uds = src
            .get(env::INPOD_UDS)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from);
        // In-pod mode shares its mark with the rules the CNI plugin installs.
        let default_mark = inpod_uds.as_ref().map(|_| INPOD_PACKET_MARK);
        let shared_default = |d: &'static str| if inpod_uds.is_some() { "" } else { d };
        let packet_mark = match src.get(env::PACKET_MARK) {
            None => default_mark,
            Some(v) if v.is_empty() => None,
            Some(v) => {
                Some(
                    v.parse()
                        .map_err(|e: std::num::ParseIntError| ConfigError::Invalid {
                            var: env::PACKET_MARK,
                            value: v,
                            reason: e.to_string(),
                        })?,
                )
            }
        };
        let worker_threads = num(src, env::WORKER_THREADS, 0usize)?;
        let worker_threads = if worker_threads == 0 {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2)
        } else {
            worker_threads
        };
        Ok(Config {
            xds_address,
            ca_address,
            xds_root_ca,
            ca_root_ca,
            auth_token: src
                .get(env::AUTH_TOKEN)
                .filter(|s| !s.is_empty())
                .map(PathBuf::from),
            node_name,
            trust_domain: src
                .get(env::TRUST_DOMAIN)
                .unwrap_or_else(|| "cluster.local".into()),
            cluster_id: src
                .get(env::CLUSTER_ID)
                .unwrap_or_else(|| "Kubernetes".into()),
            secret_ttl: duration(src, env::SECRET_TTL, Duration::from_secs(24 * 3600))?,
            admin_addr: addr(src, env::ADMIN_ADDR, "127.0.0.1:15000")?,
            stats_addr: addr(src, env::STATS_ADDR, "[::]:15020")?,
            readiness_addr: addr(src, env::READINESS_ADDR, "[::]:15021")?,
            socks5_addr: addr(src, env::SOCKS5_ADDR, shared_default("127.0.0.1:15080"))?,
            outbound_addr: addr(src, env::OUTBOUND_ADDR, shared_default("[::]:15001"))?,
            inbound_plaintext_addr: addr(
                src,
                env::INBOUND_PLAINTEXT_ADDR,
                shared_default("[::]:15006"),
            )?,
            dns_proxy_addr: match src.get(env::DNS_PROXY_ADDR) {
                Some(_) => addr(src, env::DNS_PROXY_ADDR, "")?,
                None => addr(src, env::ISTIO_META_DNS_PROXY_ADDR, "")?,
            },
            hbone_port: num(src, env::HBONE_PORT, 15008u16)?,
            inpod_uds,
            packet_mark,
            drain_duration: duration(src, env::DRAIN_DURATION, Duration::from_secs(5))?,
            worker_threads,
            hbone: HboneSettings {
                window_size: num(src, env::HTTP2_STREAM_WINDOW_SIZE, 4 * 1024 * 1024)?,
                connection_window_size: num(
                    src,
                    env::HTTP2_CONNECTION_WINDOW_SIZE,
                    16 * 1024 * 1024,
                )?,
                frame_size: num(src, env::HTTP2_FRAME_SIZE, 1024 * 1024)?,
                pool_max_streams_per_conn: num(src, env::POOL_MAX_STREAMS_PER_CONNECTION, 100)?,
                pool_unused_release_timeout: duration(
                    src,
                    env::POOL_UNUSED_RELEASE_TIMEOUT,
                    Duration::from_secs(300),
                )?,
            },
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
    fn defaults_follow_istio() {
        let c = Config::from_source(&map(&[("NODE_NAME", "n1")])).expect("config");
        assert_eq!(c.xds_address, "https://127.0.0.1:15012");
        assert_eq!(c.ca_address, c.xds_address);
        assert_eq!(
            c.socks5_addr,
            Some("127.0.0.1:15080".parse().expect("addr"))
        );
        assert_eq!(c.hbone_port, 15008);
        assert_eq!(c.secret_ttl, Duration::from_secs(86400));
        assert_eq!(c.hbone.pool_max_streams_per_conn, 100);
        assert_eq!(c.trust_domain, "cluster.local");
    }

    #[test]
    fn empty_address_disables_listener_and_errors_name_the_variable() {
        let c =
            Config::from_source(&map(&[("NODE_NAME", "n1"), ("SOCKS5_ADDR", "")])).expect("config");
        assert_eq!(c.socks5_addr, None);
        let e = Config::from_source(&map(&[("NODE_NAME", "n1"), ("STATS_ADDR", "nope")]))
            .expect_err("invalid");
        assert!(e.to_string().contains("STATS_ADDR"), "{e}");
        let e = Config::from_source(&map(&[])).expect_err("missing node");
        assert!(e.to_string().contains("NODE_NAME"), "{e}");
    }

    #[test]
    fn dns_proxy_is_off_by_default_and_takes_istios_name() {
        let c = Config::from_source(&map(&[("NODE_NAME", "n1")])).expect("config");
        assert_eq!(c.dns_proxy_addr, None);
        let istio = ("ISTIO_META_DNS_PROXY_ADDR", "127.0.0.1:15053");
        let c = Config::from_source(&map(&[("NODE_NAME", "n1"), istio])).expect("config");
        assert_eq!(
            c.dns_proxy_addr,
            Some("127.0.0.1:15053".parse().expect("addr"))
        );
        let c = Config::from_source(&map(&[("NODE_NAME", "n1"), ("DNS_PROXY_ADDR", ""), istio]))
            .expect("config");
        assert_eq!(c.dns_proxy_addr, None, "DNS_PROXY_ADDR wins, empty = off");
    }

    #[test]
    fn inpod_mode_marks_sockets_and_drops_shared_listeners() {
        let c = Config::from_source(&map(&[("NODE_NAME", "n1"), ("INPOD_UDS", "/run/a.sock")]))
            .expect("config");
        assert_eq!(c.inpod_uds, Some(PathBuf::from("/run/a.sock")));
        assert_eq!(c.packet_mark, Some(1337));
        assert_eq!(
            (c.socks5_addr, c.outbound_addr, c.inbound_plaintext_addr),
            (None, None, None)
        );
        let c = Config::from_source(&map(&[
            ("NODE_NAME", "n1"),
            ("INPOD_UDS", "/run/a.sock"),
            ("PACKET_MARK", "7"),
            ("SOCKS5_ADDR", "127.0.0.1:15080"),
        ]))
        .expect("config");
        assert_eq!(c.packet_mark, Some(7));
        assert!(c.socks5_addr.is_some(), "explicit addresses still win");
        let c = Config::from_source(&map(&[("NODE_NAME", "n1")])).expect("config");
        assert_eq!((c.inpod_uds, c.packet_mark), (None, None));
    }

    #[test]
    fn durations_name_the_variable() {
        let c = Config::from_source(&map(&[("NODE_NAME", "n1"), ("SECRET_TTL", "12h")]))
            .expect("config");
        assert_eq!(c.secret_ttl, Duration::from_secs(12 * 3600));
        let e = Config::from_source(&map(&[("NODE_NAME", "n1"), ("SECRET_TTL", "x")]))
            .expect_err("invalid");
        assert!(e.to_string().contains("SECRET_TTL"), "{e}");
    }
}

//! Where the components are: flags first, then environment variables, then Istio's default
//! ports on loopback. The environment is read through [`Source`] so tests pass a map.

use std::str::FromStr;

use serde::Serialize;

use crate::error::Error;

/// Names of the environment variables meshctl reads.
pub mod env {
    /// istiod-lite's monitoring address (its MONITORING_ADDR), `host:port`.
    pub const ISTIOD: &str = "MESHCTL_ISTIOD";
    /// The ztunnels: entries `ADMIN[,READINESS[,STATS]]` separated by spaces or `;`.
    pub const ZTUNNELS: &str = "MESHCTL_ZTUNNELS";
    /// Prometheus base URL for `stat`.
    pub const PROMETHEUS: &str = "MESHCTL_PROMETHEUS";
    /// A `meshctl local` cluster, for the commands that take `--local`.
    pub const LOCAL: &str = "MESHCTL_LOCAL";
    /// istiod-lite's config directory (its CONFIG_DIR), where `waypoint` writes Gateways.
    pub const CONFIG_DIR: &str = "MESHCTL_CONFIG_DIR";
    /// Set (to anything) to turn colour off even on a terminal.
    pub const NO_COLOR: &str = "NO_COLOR";
}

/// istiod-lite's monitoring port (Istio's 15014) on loopback.
pub const DEFAULT_ISTIOD: &str = "127.0.0.1:15014";
/// ztunnel's admin port (Istio's 15000), which only listens on localhost.
pub const DEFAULT_ADMIN: &str = "127.0.0.1:15000";
/// ztunnel's readiness port (Istio's 15021).
pub const DEFAULT_READINESS_PORT: u16 = 15021;
/// ztunnel's metrics port (Istio's 15020).
pub const DEFAULT_STATS_PORT: u16 = 15020;

/// Where configuration values come from (tests pass a map); shared with the other binaries.
pub use mesh_config::{ProcessEnv, Source};

/// Normalises `http://host:port/` or `host:port` to `host:port`; refuses https and bare hosts.
pub fn normalize_addr(raw: &str, what: &str) -> Result<String, Error> {
    let s = raw.trim();
    if s.starts_with("https://") {
        return Err(Error::Usage(format!(
            "{what} {raw:?}: meshctl speaks plain HTTP to the admin and monitoring ports; give host:port"
        )));
    }
    let s = s.strip_prefix("http://").unwrap_or(s).trim_end_matches('/');
    let port_ok = s
        .rsplit_once(':')
        .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
    if !port_ok || s.contains('/') {
        return Err(Error::Usage(format!(
            "{what} {raw:?} is not host:port (e.g. 127.0.0.1:15000)"
        )));
    }
    Ok(s.to_string())
}

/// The host part of `host:port` (brackets kept for IPv6).
fn host_of(addr: &str) -> &str {
    addr.rsplit_once(':').map_or(addr, |(h, _)| h)
}

/// One ztunnel's addresses.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Ztunnel {
    /// Admin (`/config_dump`), ADMIN_ADDR.
    pub admin: String,
    /// Readiness (`/healthz/ready`), READINESS_ADDR.
    pub readiness: String,
    /// Metrics (`/metrics`), STATS_ADDR.
    pub stats: String,
}

impl FromStr for Ztunnel {
    type Err = Error;

    /// `ADMIN[,READINESS[,STATS]]`; missing ports default to Istio's on the admin host.
    fn from_str(s: &str) -> Result<Self, Error> {
        let parts: Vec<&str> = s.split(',').map(str::trim).collect();
        if parts.len() > 3 || parts.iter().any(|p| p.is_empty()) {
            return Err(Error::Usage(format!(
                "ztunnel {s:?}: expected ADMIN[,READINESS[,STATS]], e.g. 127.0.0.1:15000,127.0.0.1:15021"
            )));
        }
        let admin = normalize_addr(parts[0], "ztunnel admin address")?;
        let host = host_of(&admin).to_string();
        let readiness = match parts.get(1) {
            Some(r) => normalize_addr(r, "ztunnel readiness address")?,
            None => format!("{host}:{DEFAULT_READINESS_PORT}"),
        };
        let stats = match parts.get(2) {
            Some(r) => normalize_addr(r, "ztunnel stats address")?,
            None => format!("{host}:{DEFAULT_STATS_PORT}"),
        };
        Ok(Ztunnel {
            admin,
            readiness,
            stats,
        })
    }
}

/// The ztunnels to talk to: `--ztunnel` flags, else `MESHCTL_ZTUNNELS`, else the local default.
pub fn ztunnels(flags: &[String], src: &dyn Source) -> Result<Vec<Ztunnel>, Error> {
    let from_env = src.get(env::ZTUNNELS).unwrap_or_default();
    let entries: Vec<&str> = if flags.is_empty() {
        from_env
            .split(|c: char| c.is_whitespace() || c == ';')
            .filter(|s| !s.is_empty())
            .collect()
    } else {
        flags.iter().map(String::as_str).collect()
    };
    if entries.is_empty() {
        return Ok(vec![DEFAULT_ADMIN.parse()?]);
    }
    entries.into_iter().map(str::parse).collect()
}

/// istiod-lite's monitoring address: `--istiod`, else `MESHCTL_ISTIOD`, else the local default.
pub fn istiod(flag: Option<&str>, src: &dyn Source) -> Result<String, Error> {
    let raw = flag
        .map(str::to_string)
        .or_else(|| src.get(env::ISTIOD).filter(|s| !s.trim().is_empty()))
        .unwrap_or_else(|| DEFAULT_ISTIOD.to_string());
    normalize_addr(&raw, "istiod-lite address")
}

/// A Prometheus server: `host:port` plus an optional path prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrometheusUrl {
    /// `host:port`.
    pub addr: String,
    /// Path prefix without a trailing slash ("" or e.g. "/prometheus").
    pub prefix: String,
}

/// `--prometheus`, else `MESHCTL_PROMETHEUS`; None when neither is set.
pub fn prometheus(flag: Option<&str>, src: &dyn Source) -> Result<Option<PrometheusUrl>, Error> {
    let Some(raw) = flag
        .map(str::to_string)
        .or_else(|| src.get(env::PROMETHEUS).filter(|s| !s.trim().is_empty()))
    else {
        return Ok(None);
    };
    let rest = raw.trim().strip_prefix("http://").ok_or_else(|| {
        Error::Usage(format!(
            "Prometheus URL {raw:?}: expected http://host:port[/prefix]"
        ))
    })?;
    let (hostport, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    let addr = normalize_addr(hostport, "Prometheus address")?;
    let prefix = prefix.trim_end_matches('/');
    Ok(Some(PrometheusUrl {
        addr,
        prefix: if prefix.is_empty() {
            String::new()
        } else {
            format!("/{prefix}")
        },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(kv: &[(&str, &str)]) -> HashMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn ztunnel_entries_fill_istio_ports_on_the_admin_host() {
        let z: Ztunnel = "http://127.0.0.2:15000/".parse().unwrap();
        assert_eq!(z.admin, "127.0.0.2:15000");
        assert_eq!(z.readiness, "127.0.0.2:15021");
        assert_eq!(z.stats, "127.0.0.2:15020");
        let z: Ztunnel = "[::1]:1,[::1]:2,[::1]:3".parse().unwrap();
        assert_eq!(
            (z.readiness.as_str(), z.stats.as_str()),
            ("[::1]:2", "[::1]:3")
        );
        assert!("a,b,c,d".parse::<Ztunnel>().is_err());
        assert!("127.0.0.1".parse::<Ztunnel>().is_err());
        assert!("https://127.0.0.1:1".parse::<Ztunnel>().is_err());
    }

    #[test]
    fn flags_then_env_then_default() {
        let e = env(&[
            (env::ZTUNNELS, "127.0.0.1:1,127.0.0.1:2; 127.0.0.2:1"),
            (env::ISTIOD, "http://10.0.0.1:99"),
        ]);
        let z = ztunnels(&[], &e).unwrap();
        assert_eq!(z.len(), 2);
        assert_eq!(z[0].readiness, "127.0.0.1:2");
        assert_eq!(z[1].admin, "127.0.0.2:1");
        let z = ztunnels(&["127.0.0.9:5".into()], &e).unwrap();
        assert_eq!(z[0].admin, "127.0.0.9:5");
        let z = ztunnels(&[], &env(&[])).unwrap();
        assert_eq!(z[0].admin, DEFAULT_ADMIN);
        assert_eq!(istiod(None, &e).unwrap(), "10.0.0.1:99");
        assert_eq!(istiod(Some("127.0.0.1:7"), &e).unwrap(), "127.0.0.1:7");
        assert_eq!(istiod(None, &env(&[])).unwrap(), DEFAULT_ISTIOD);
    }

    #[test]
    fn prometheus_urls() {
        let p = prometheus(Some("http://127.0.0.1:9090/prom/"), &env(&[]))
            .unwrap()
            .unwrap();
        assert_eq!(p.addr, "127.0.0.1:9090");
        assert_eq!(p.prefix, "/prom");
        assert!(prometheus(None, &env(&[])).unwrap().is_none());
        let e = prometheus(Some("127.0.0.1:9090"), &env(&[])).unwrap_err();
        assert!(e.to_string().contains("http://host:port"), "{e}");
    }
}

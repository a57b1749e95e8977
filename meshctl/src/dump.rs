//! ztunnel's admin `/config_dump`, read leniently: every field defaults, so a dump from an
//! older or newer agent (or Istio's own ztunnel) still renders. The raw JSON is kept for
//! `-o json|yaml`.

use std::collections::BTreeMap;

use base64::Engine;
use serde::Deserialize;
use serde_json::Value;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// A parsed dump plus the raw document.
#[derive(Debug, Clone)]
pub struct ConfigDump {
    /// The document as received.
    pub raw: Value,
    /// Workloads.
    pub workloads: Vec<Workload>,
    /// Services.
    pub services: Vec<Service>,
    /// Authorization policies.
    pub policies: Vec<Policy>,
    /// Per-identity certificates.
    pub certificates: Vec<CertDump>,
    /// Open proxied connections.
    pub connections: Vec<Connection>,
}

/// Why a dump could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    /// Not JSON.
    #[error("invalid JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// JSON, but not an object with the dump's keys.
    #[error("JSON without any of workloads, services, policies, certificates")]
    NotADump,
}

/// Elements of an array (or the values of a map, as some agents key them by name).
fn elements(v: Option<&Value>) -> Vec<Value> {
    match v {
        Some(Value::Array(a)) => a.clone(),
        Some(Value::Object(m)) => m.values().cloned().collect(),
        _ => Vec::new(),
    }
}

fn parse_all<T: for<'de> Deserialize<'de>>(v: Option<&Value>) -> Result<Vec<T>, DumpError> {
    elements(v)
        .into_iter()
        .map(|e| serde_json::from_value(e).map_err(DumpError::Json))
        .collect()
}

impl ConfigDump {
    /// Parses a `/config_dump` body.
    pub fn parse(body: &[u8]) -> Result<ConfigDump, DumpError> {
        let raw: Value = serde_json::from_slice(body)?;
        let keys = ["workloads", "services", "policies", "certificates"];
        if !keys.iter().any(|k| raw.get(k).is_some()) {
            return Err(DumpError::NotADump);
        }
        Ok(ConfigDump {
            workloads: parse_all(raw.get("workloads"))?,
            services: parse_all(raw.get("services"))?,
            policies: parse_all(raw.get("policies"))?,
            certificates: parse_all(raw.get("certificates"))?,
            connections: parse_all(raw.get("connections"))?,
            raw,
        })
    }

    /// The agent's node name (`config.nodeName`), when it says.
    pub fn node_name(&self) -> Option<&str> {
        self.raw
            .pointer("/config/nodeName")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    }
}

/// An open connection through the agent.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Connection {
    /// `inbound` or `outbound`.
    pub direction: String,
    /// Source address.
    pub src: String,
    /// Destination address.
    pub dst: String,
    /// Source SPIFFE id, when known.
    pub src_identity: Option<String>,
    /// Destination SPIFFE id, when known.
    pub dst_identity: Option<String>,
    /// Carried over HBONE mTLS.
    pub mutual_tls: bool,
    /// RFC 3339 start time.
    pub started: String,
}

/// A workload as the agent knows it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Workload {
    /// Unique id (`cluster//Pod/ns/name`).
    pub uid: String,
    /// Pod name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// Owning workload (Deployment, ...) name; the metrics' `*_workload` label.
    pub workload_name: String,
    /// Pod IPs.
    pub workload_ips: Vec<String>,
    /// Network (multi-network meshes).
    pub network: String,
    /// Node name.
    pub node: String,
    /// `HBONE` (meshed) or `TCP`.
    pub protocol: String,
    /// Waypoint (Istio: `{destination: "ns/hostname", ...}`), absent without one.
    pub waypoint: Option<Value>,
    /// `ns/hostname` of each service selecting it.
    pub services: BTreeMap<String, Value>,
    /// ambient-rs: health as a bool.
    pub healthy: Option<bool>,
    /// Istio: `Healthy` / `Unhealthy`.
    pub status: Option<String>,
    /// Trust domain of its identity.
    pub trust_domain: String,
    /// Service account of its identity.
    pub service_account: String,
    /// Names (`ns/name`) of the L4 policies pushed for it.
    pub authorization_policies: Vec<String>,
    /// A waypoint (terminates HBONE itself, never captured).
    pub native_tunnel: bool,
}

impl Workload {
    /// First IP, or "".
    pub fn address(&self) -> &str {
        self.workload_ips.first().map_or("", String::as_str)
    }

    /// Healthy unless the agent says otherwise.
    pub fn is_healthy(&self) -> bool {
        match (&self.healthy, &self.status) {
            (Some(h), _) => *h,
            (None, Some(s)) => s.eq_ignore_ascii_case("healthy"),
            (None, None) => true,
        }
    }

    /// The owning workload's name (falls back to the pod name).
    pub fn workload(&self) -> &str {
        if self.workload_name.is_empty() {
            &self.name
        } else {
            &self.workload_name
        }
    }
}

/// A service as the agent knows it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Service {
    /// Name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// Hostname (`name.ns.svc.cluster.local`).
    pub hostname: String,
    /// ambient-rs: VIPs.
    pub vips: Vec<String>,
    /// Istio: `network/ip` VIPs.
    pub addresses: Vec<String>,
    /// Waypoint, absent without one.
    pub waypoint: Option<Value>,
    /// Istio: endpoints by workload uid.
    pub endpoints: Option<BTreeMap<String, Value>>,
    /// Ports (`servicePort`, `targetPort`, `appProtocol`).
    pub ports: Vec<Value>,
}

impl Service {
    /// `ns/hostname`: the key in `Workload::services`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.hostname)
    }

    /// (service port, target port, protocol) of each port.
    pub fn raw_ports(&self) -> Vec<(u64, u64, String)> {
        self.ports
            .iter()
            .map(|p| {
                let n = |k: &str| p[k].as_u64().unwrap_or_default();
                let proto = p["appProtocol"]
                    .as_str()
                    .filter(|s| !s.is_empty())
                    .unwrap_or("tcp");
                (n("servicePort"), n("targetPort"), proto.to_string())
            })
            .collect()
    }

    /// First VIP, or "".
    pub fn vip(&self) -> String {
        if let Some(v) = self.vips.first() {
            return v.clone();
        }
        self.addresses
            .first()
            .map(|a| {
                a.split_once('/')
                    .map_or(a.as_str(), |(_, ip)| ip)
                    .to_string()
            })
            .unwrap_or_default()
    }

    /// (healthy, total) endpoints among `workloads`.
    pub fn endpoints(&self, workloads: &[Workload]) -> (usize, usize) {
        let key = self.key();
        let members: Vec<&Workload> = match &self.endpoints {
            Some(eps) => eps
                .keys()
                .filter_map(|uid| workloads.iter().find(|w| &w.uid == uid))
                .collect(),
            None => workloads
                .iter()
                .filter(|w| w.services.contains_key(&key))
                .collect(),
        };
        let total = self.endpoints.as_ref().map_or(members.len(), |e| e.len());
        let healthy = members.iter().filter(|w| w.is_healthy()).count();
        (healthy, total)
    }
}

/// Name of the waypoint a `waypoint` value points at: istioctl's rule ("None" without one, the
/// service name when the destination is a known service, else the destination as given).
pub fn waypoint_name(waypoint: Option<&Value>, services: &[Service]) -> String {
    let Some(w) = waypoint.filter(|w| !w.is_null()) else {
        return "None".into();
    };
    // Istio's dump: `destination` or `hostname`; ambient-rs: `target.hostname` / `target.address`.
    let target = w.get("target").unwrap_or(w);
    let dest = w
        .get("destination")
        .and_then(Value::as_str)
        .map(str::to_string)
        .or_else(|| {
            let h = target.get("hostname")?;
            Some(format!(
                "{}/{}",
                h.get("namespace")?.as_str()?,
                h.get("hostname")?.as_str()?
            ))
        })
        .or_else(|| target.get("address")?.as_str().map(str::to_string));
    match dest {
        Some(d) => services
            .iter()
            .find(|s| s.key() == d)
            .map(|s| s.name.clone())
            .unwrap_or(d),
        None => "NA".into(),
    }
}

/// An L4 authorization policy.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Policy {
    /// Name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// ALLOW / DENY (or Istio's Allow / Deny).
    pub action: String,
    /// GLOBAL / NAMESPACE / WORKLOAD_SELECTOR (or Istio's spellings).
    pub scope: String,
}

/// `WORKLOAD_SELECTOR` -> `WorkloadSelector`, `ALLOW` -> `Allow` (istioctl's spelling).
pub fn title_case(s: &str) -> String {
    if s.chars().any(|c| c.is_ascii_lowercase()) {
        return s.to_string();
    }
    s.split('_')
        .filter(|w| !w.is_empty())
        .map(|w| {
            let lower = w.to_ascii_lowercase();
            let mut c = lower.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect()
}

/// One identity's certificates.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct CertDump {
    /// SPIFFE identity.
    pub identity: String,
    /// `Available`, `Initializing` or `Unavailable: <why>`.
    pub state: String,
    /// Leaf first, then intermediates.
    pub cert_chain: Vec<CertEntry>,
    /// Trust roots (ambient-rs: base64 PEM strings; Istio: entries).
    pub root_certs: Vec<RootEntry>,
}

/// A certificate in the dump; times RFC 3339, PEM base64-encoded.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct CertEntry {
    /// Base64 of the PEM text.
    pub pem: String,
    /// Serial number as the agent wrote it.
    pub serial_number: String,
    /// notBefore.
    pub valid_from: String,
    /// notAfter.
    pub expiration_time: String,
}

/// A root certificate: a bare base64 PEM or a full entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum RootEntry {
    /// Base64 of the PEM text.
    Pem(String),
    /// A full entry.
    Entry(CertEntry),
}

impl RootEntry {
    fn entry(&self) -> CertEntry {
        match self {
            RootEntry::Pem(p) => CertEntry {
                pem: p.clone(),
                ..Default::default()
            },
            RootEntry::Entry(e) => e.clone(),
        }
    }
}

/// One certificate, resolved: the agent's fields, completed from the PEM where missing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertRow {
    /// SPIFFE identity it belongs to.
    pub identity: String,
    /// `Leaf`, `Intermediate`, `Root`, or `NA` when there is no certificate.
    pub kind: &'static str,
    /// `Available`, `Initializing` or `Unavailable` (without the reason).
    pub state: String,
    /// The reason after `Unavailable: `, if any.
    pub reason: Option<String>,
    /// Serial number in lower-case hex.
    pub serial: Option<String>,
    /// notBefore.
    pub not_before: Option<OffsetDateTime>,
    /// notAfter.
    pub not_after: Option<OffsetDateTime>,
}

impl CertRow {
    /// istioctl's VALID CERT: `now` within [notBefore, notAfter].
    pub fn valid_at(&self, now: OffsetDateTime) -> bool {
        matches!((self.not_before, self.not_after), (Some(b), Some(a)) if b <= now && now < a)
    }
}

/// Fields parsed from a PEM certificate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PemInfo {
    /// Serial, lower-case hex of the raw bytes.
    pub serial: String,
    /// notBefore.
    pub not_before: Option<OffsetDateTime>,
    /// notAfter.
    pub not_after: Option<OffsetDateTime>,
}

/// Decodes base64 PEM text and reads the first certificate's serial and validity.
pub fn parse_pem_b64(b64: &str) -> Option<PemInfo> {
    let pem_text = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()?;
    let (_, pem) = x509_parser::pem::parse_x509_pem(&pem_text).ok()?;
    let cert = pem.parse_x509().ok()?;
    let serial: String = cert
        .raw_serial()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let v = cert.validity();
    Some(PemInfo {
        serial,
        not_before: Some(v.not_before.to_datetime()),
        not_after: Some(v.not_after.to_datetime()),
    })
}

/// Parses an RFC 3339 time; None for "" or garbage.
pub fn parse_time(s: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(s.trim(), &Rfc3339).ok()
}

/// `2026-01-02T03:04:05Z` (UTC, whole seconds), or `NA`.
pub fn format_time(t: Option<OffsetDateTime>) -> String {
    let Some(t) = t else { return "NA".into() };
    let t = t.to_offset(time::UtcOffset::UTC);
    let f = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
    t.format(&f).unwrap_or_else(|_| "NA".into())
}

fn resolve(identity: &str, kind: &'static str, state: &str, e: &CertEntry) -> CertRow {
    let pem = if e.pem.is_empty() {
        None
    } else {
        parse_pem_b64(&e.pem)
    };
    let (short, reason) = split_state(state);
    let field = |s: &str| (!s.trim().is_empty()).then(|| s.trim().to_ascii_lowercase());
    CertRow {
        identity: identity.to_string(),
        kind,
        state: short,
        reason,
        serial: field(&e.serial_number).or_else(|| pem.as_ref().map(|p| p.serial.clone())),
        not_before: parse_time(&e.valid_from).or(pem.as_ref().and_then(|p| p.not_before)),
        not_after: parse_time(&e.expiration_time).or(pem.as_ref().and_then(|p| p.not_after)),
    }
}

/// `Unavailable: CA refused` -> (`Unavailable`, Some(`CA refused`)).
fn split_state(state: &str) -> (String, Option<String>) {
    match state.split_once(':') {
        Some((s, why)) => (s.trim().to_string(), Some(why.trim().to_string())),
        None if state.is_empty() => ("Unknown".into(), None),
        None => (state.to_string(), None),
    }
}

/// Every certificate of every identity, in dump order: leaf, intermediates, roots; a single
/// `NA` row for an identity without certificates.
pub fn cert_rows(certs: &[CertDump]) -> Vec<CertRow> {
    let mut rows = Vec::new();
    for c in certs {
        if c.cert_chain.is_empty() {
            let (state, reason) = split_state(&c.state);
            rows.push(CertRow {
                identity: c.identity.clone(),
                kind: "NA",
                state,
                reason,
                serial: None,
                not_before: None,
                not_after: None,
            });
            continue;
        }
        for (i, e) in c.cert_chain.iter().enumerate() {
            let kind = if i == 0 { "Leaf" } else { "Intermediate" };
            rows.push(resolve(&c.identity, kind, &c.state, e));
        }
        for r in &c.root_certs {
            rows.push(resolve(&c.identity, "Root", &c.state, &r.entry()));
        }
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn title_case_matches_istioctl() {
        assert_eq!(title_case("WORKLOAD_SELECTOR"), "WorkloadSelector");
        assert_eq!(title_case("ALLOW"), "Allow");
        assert_eq!(title_case("Namespace"), "Namespace");
    }

    #[test]
    fn waypoint_names() {
        let svc = Service {
            name: "wp".into(),
            namespace: "ns".into(),
            hostname: "wp.ns.svc.cluster.local".into(),
            ..Default::default()
        };
        let w = serde_json::json!({"destination": "ns/wp.ns.svc.cluster.local"});
        assert_eq!(waypoint_name(Some(&w), std::slice::from_ref(&svc)), "wp");
        assert_eq!(waypoint_name(None, &[svc]), "None");
        let h = serde_json::json!({"hostname": {"namespace": "x", "hostname": "y"}});
        assert_eq!(waypoint_name(Some(&h), &[]), "x/y");
    }

    #[test]
    fn not_a_dump() {
        assert!(matches!(
            ConfigDump::parse(b"{\"a\": 1}"),
            Err(DumpError::NotADump)
        ));
        assert!(matches!(
            ConfigDump::parse(b"ready"),
            Err(DumpError::Json(_))
        ));
    }

    #[test]
    fn times() {
        let t = parse_time("2026-01-02T03:04:05.123Z");
        assert_eq!(format_time(t), "2026-01-02T03:04:05Z");
        assert_eq!(format_time(None), "NA");
        assert!(parse_time("").is_none());
    }
}

//! Live tap: every connection event (opened, closed, refused) as one JSON line, for
//! `meshctl tap` (the hub, filters and bounded per-reader queues are `mesh-tap`'s).

use std::sync::{Arc, LazyLock};
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::metrics::{ConnectionInfo, Reporter};

pub use mesh_tap::Filter;

static HUB: LazyLock<mesh_tap::Hub> =
    LazyLock::new(|| mesh_tap::Hub::new("ztunnel_tap_dropped_events_total"));

/// One end of a connection, as the tap shows it.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct Peer {
    pub addr: String,
    pub workload: String,
    pub namespace: String,
    pub identity: String,
}

/// One tap line.
#[derive(Clone, Debug, Serialize)]
pub struct Event {
    /// Unix time in milliseconds.
    pub time_ms: u64,
    /// `open`, `close` or `refused`.
    pub event: &'static str,
    /// `outbound` (reported by the source's ztunnel) or `inbound` (by the destination's).
    pub direction: &'static str,
    pub src: Peer,
    pub dst: Peer,
    pub dst_service: String,
    /// `mutual_tls` or `unknown` (plaintext), as `connection_security_policy`.
    pub security: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_sent: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_received: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub response_flags: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub error: String,
}

/// What a finished or refused connection adds to its event.
#[derive(Default)]
pub struct Outcome<'a> {
    pub received: Option<u64>,
    pub sent: Option<u64>,
    pub duration: Option<Duration>,
    pub flags: &'a str,
    pub error: Option<&'a str>,
}

/// Publishes an event built from `info`, if anyone is listening.
pub fn publish(event: &'static str, info: &ConnectionInfo, outcome: Outcome<'_>) {
    HUB.publish(|| serde_json::to_value(build(event, info, outcome)).unwrap_or_default());
}

/// The hub `/debug/tap` readers subscribe to.
pub fn hub() -> &'static mesh_tap::Hub {
    &HUB
}

fn build(event: &'static str, info: &ConnectionInfo, o: Outcome<'_>) -> Event {
    let peer = |addr: Option<std::net::SocketAddr>,
                w: &Option<Arc<crate::state::Workload>>,
                identity: &Option<String>| Peer {
        addr: addr.map(|a| a.to_string()).unwrap_or_default(),
        workload: w.as_ref().map(|w| w.name.clone()).unwrap_or_default(),
        namespace: w.as_ref().map(|w| w.namespace.clone()).unwrap_or_default(),
        identity: identity.clone().unwrap_or_default(),
    };
    Event {
        time_ms: SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or_default(),
        event,
        direction: match info.reporter {
            Some(Reporter::Destination) => "inbound",
            _ => "outbound",
        },
        src: peer(info.src_addr, &info.src_workload, &info.src_identity),
        dst: peer(info.dst_addr, &info.dst_workload, &info.dst_identity),
        dst_service: info
            .dst_service
            .as_ref()
            .map(|s| s.hostname.clone())
            .unwrap_or_default(),
        security: if info.mtls { "mutual_tls" } else { "unknown" },
        bytes_sent: o.sent,
        bytes_received: o.received,
        duration_ms: o.duration.map(|d| d.as_millis() as u64),
        response_flags: o.flags.to_string(),
        error: o.error.unwrap_or_default().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    fn info(ns: &str) -> ConnectionInfo {
        let w = crate::state::convert_workload(mesh_proto::workload::Workload {
            uid: format!("u-{ns}"),
            name: "client".into(),
            namespace: ns.into(),
            ..Default::default()
        })
        .expect("workload");
        ConnectionInfo {
            reporter: Some(Reporter::Source),
            src_workload: Some(Arc::new(w)),
            mtls: true,
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn connection_events_carry_both_sides_and_outcome() {
        // Nobody listens: publishing is a no-op.
        publish("open", &info("tap-a"), Outcome::default());
        let filter = Filter {
            namespace: Some("tap-a".into()),
            limit: Some(2),
            ..Default::default()
        };
        let s = hub().stream(filter);
        futures_util::pin_mut!(s);
        // Subscribed when the stream was made: nothing queued yet.
        assert!(tokio::time::timeout(Duration::from_millis(10), s.next())
            .await
            .is_err());
        publish("open", &info("tap-other"), Outcome::default());
        publish(
            "close",
            &info("tap-a"),
            Outcome {
                sent: Some(5),
                ..Default::default()
            },
        );
        let line = s.next().await.expect("an event");
        let v: serde_json::Value = serde_json::from_slice(&line).expect("json line");
        assert_eq!(v["event"], "close");
        assert_eq!(v["src"]["namespace"], "tap-a");
        assert_eq!(v["bytes_sent"], 5);
        assert_eq!(v["security"], "mutual_tls");
        assert_eq!(v["direction"], "outbound");
    }
}

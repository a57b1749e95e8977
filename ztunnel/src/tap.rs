//! Live tap: every connection event (opened, closed, refused) as one JSON line, for
//! `meshctl tap`. Publishing costs one atomic load while nobody listens; each listener has a
//! bounded queue, and one that falls behind loses events (and is told how many) instead of
//! slowing the data path.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tokio::sync::broadcast;

use crate::metrics::{ConnectionInfo, Reporter};

/// Events buffered per listener before it starts losing them.
pub const QUEUE: usize = 1024;

static HUB: LazyLock<broadcast::Sender<Arc<Event>>> = LazyLock::new(|| broadcast::channel(QUEUE).0);

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

impl Event {
    /// Whether the event involves `namespace` (and `workload`, when given) on either side.
    pub fn matches(&self, namespace: Option<&str>, workload: Option<&str>) -> bool {
        let side = |p: &Peer| {
            namespace.is_none_or(|n| p.namespace == n) && workload.is_none_or(|w| p.workload == w)
        };
        side(&self.src) || side(&self.dst)
    }
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
    if HUB.receiver_count() == 0 {
        return;
    }
    let _ = HUB.send(Arc::new(build(event, info, outcome)));
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

/// A listener's filter and bounds, from the query string.
#[derive(Debug, Default, PartialEq)]
pub struct Filter {
    pub namespace: Option<String>,
    pub workload: Option<String>,
    /// Stop after this many events.
    pub limit: Option<u64>,
    /// Stop after this long.
    pub duration: Option<Duration>,
}

impl Filter {
    /// Parses `namespace=..&workload=..&limit=..&duration=..` (durations as `10s`, `1m`).
    pub fn from_query(q: Option<&str>) -> Result<Filter, String> {
        let mut f = Filter::default();
        let pairs: HashMap<&str, &str> = q
            .unwrap_or_default()
            .split('&')
            .filter(|s| !s.is_empty())
            .map(|kv| kv.split_once('=').unwrap_or((kv, "")))
            .collect();
        for (k, v) in pairs {
            match k {
                "namespace" if !v.is_empty() => f.namespace = Some(v.to_string()),
                "workload" if !v.is_empty() => f.workload = Some(v.to_string()),
                "limit" => {
                    f.limit = Some(
                        v.parse()
                            .map_err(|_| format!("limit={v:?} is not a number"))?,
                    )
                }
                "duration" => {
                    f.duration = Some(
                        mesh_config::parse_duration(v)
                            .map_err(|e| format!("duration={v:?}: {e}"))?,
                    )
                }
                other => {
                    return Err(format!(
                        "unknown parameter {other:?} (namespace, workload, limit, duration)"
                    ))
                }
            }
        }
        Ok(f)
    }
}

/// Lines for one listener until its bounds are reached (or forever): each event as JSON, and a
/// `{"event":"dropped","count":N}` line when it fell behind.
pub fn stream(filter: Filter) -> impl futures_util::Stream<Item = bytes::Bytes> + Send {
    let rx = HUB.subscribe();
    let deadline = filter.duration.map(|d| tokio::time::Instant::now() + d);
    futures_util::stream::unfold(
        (rx, filter, 0u64, deadline),
        |(mut rx, filter, mut seen, deadline)| async move {
            if filter.limit.is_some_and(|l| seen >= l) {
                return None;
            }
            loop {
                let next = match deadline {
                    Some(d) => match tokio::time::timeout_at(d, rx.recv()).await {
                        Ok(r) => r,
                        Err(_) => return None,
                    },
                    None => rx.recv().await,
                };
                let line = match next {
                    Ok(ev)
                        if ev.matches(filter.namespace.as_deref(), filter.workload.as_deref()) =>
                    {
                        seen += 1;
                        serde_json::to_string(&*ev).unwrap_or_default()
                    }
                    Ok(_) => continue,
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        metrics::counter!("ztunnel_tap_dropped_events_total").increment(n);
                        format!("{{\"event\":\"dropped\",\"count\":{n}}}")
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                };
                let mut b = line.into_bytes();
                b.push(b'\n');
                return Some((bytes::Bytes::from(b), (rx, filter, seen, deadline)));
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    #[test]
    fn filter_parsing() {
        assert_eq!(Filter::from_query(None), Ok(Filter::default()));
        let f = Filter::from_query(Some("namespace=a&workload=w&limit=3&duration=2s")).expect("ok");
        assert_eq!(f.namespace.as_deref(), Some("a"));
        assert_eq!(f.limit, Some(3));
        assert_eq!(f.duration, Some(Duration::from_secs(2)));
        assert!(Filter::from_query(Some("limit=x")).is_err());
        assert!(Filter::from_query(Some("bogus=1"))
            .unwrap_err()
            .contains("bogus"));
    }

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
    async fn listeners_get_matching_events_and_lag_is_reported() {
        // Nobody listens: publishing is a no-op.
        publish("open", &info("tap-a"), Outcome::default());
        let filter = Filter {
            namespace: Some("tap-a".into()),
            limit: Some(2),
            ..Default::default()
        };
        let s = stream(filter);
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
        // A reader that falls behind is told how much it lost, and the sender never waits.
        for _ in 0..(QUEUE + 10) {
            publish("open", &info("tap-a"), Outcome::default());
        }
        let line = s.next().await.expect("a line");
        let v: serde_json::Value = serde_json::from_slice(&line).expect("json line");
        assert_eq!(v["event"], "dropped");
        assert!(v["count"].as_u64().expect("count") >= 10);
    }
}

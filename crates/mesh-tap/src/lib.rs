//! Live taps for `meshctl tap`: components publish one JSON event per connection or request to a
//! [`Hub`]; each `/debug/tap` reader gets a bounded queue of them as NDJSON.
//!
//! Publishing costs one atomic load while nobody listens. A reader that falls behind loses
//! events (and gets a `{"event":"dropped","count":N}` line, counted in the hub's metric)
//! instead of slowing the data path.
//!
//! Events are JSON objects with `src` and `dst` objects carrying `namespace` and `workload`;
//! [`Filter`] matches on those.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::broadcast;

/// Events buffered per reader before it starts losing them.
pub const QUEUE: usize = 1024;

/// Where events are published.
pub struct Hub {
    tx: broadcast::Sender<Arc<Value>>,
    dropped_metric: &'static str,
}

impl Hub {
    /// A hub counting lost events in the counter `dropped_metric`.
    pub fn new(dropped_metric: &'static str) -> Hub {
        Hub {
            tx: broadcast::channel(QUEUE).0,
            dropped_metric,
        }
    }

    /// Whether anyone reads: build events only then.
    pub fn is_listened(&self) -> bool {
        self.tx.receiver_count() > 0
    }

    /// Publishes `event` built by `make`, if anyone reads.
    pub fn publish(&self, make: impl FnOnce() -> Value) {
        if self.is_listened() {
            let _ = self.tx.send(Arc::new(make()));
        }
    }

    /// NDJSON lines for one reader, until its bounds are reached (or forever). The reader is
    /// subscribed when this is called.
    pub fn stream(&self, filter: Filter) -> impl futures_util::Stream<Item = bytes::Bytes> + Send {
        let rx = self.tx.subscribe();
        let metric = self.dropped_metric;
        let deadline = filter.duration.map(|d| tokio::time::Instant::now() + d);
        futures_util::stream::unfold(
            (rx, filter, 0u64, deadline),
            move |(mut rx, filter, mut seen, deadline)| async move {
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
                        Ok(ev) if filter.matches(&ev) => {
                            seen += 1;
                            ev.to_string()
                        }
                        Ok(_) => continue,
                        Err(broadcast::error::RecvError::Lagged(n)) => {
                            metrics::counter!(metric).increment(n);
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
}

/// A reader's filter and bounds, from the query string.
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
        for kv in q.unwrap_or_default().split('&').filter(|s| !s.is_empty()) {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
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

    /// Whether the event involves the namespace (and workload, when given) on either side.
    pub fn matches(&self, ev: &Value) -> bool {
        let side = |p: &Value| {
            self.namespace
                .as_deref()
                .is_none_or(|n| p["namespace"] == n)
                && self.workload.as_deref().is_none_or(|w| p["workload"] == w)
        };
        side(&ev["src"]) || side(&ev["dst"])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;
    use serde_json::json;

    #[test]
    fn filter_parsing_and_matching() {
        assert_eq!(Filter::from_query(None), Ok(Filter::default()));
        let f = Filter::from_query(Some("namespace=a&workload=w&limit=3&duration=2s")).expect("ok");
        assert_eq!(
            (f.limit, f.duration),
            (Some(3), Some(Duration::from_secs(2)))
        );
        assert!(Filter::from_query(Some("limit=x")).is_err());
        assert!(Filter::from_query(Some("bogus=1")).is_err());
        assert!(f.matches(
            &json!({"src": {"namespace": "b"}, "dst": {"namespace": "a", "workload": "w"}})
        ));
        assert!(!f.matches(&json!({"src": {"namespace": "a", "workload": "x"}, "dst": {}})));
    }

    #[tokio::test]
    async fn readers_get_matching_events_and_lag_is_reported() {
        let hub = Hub::new("test_tap_dropped_total");
        let mut built = false;
        hub.publish(|| {
            built = true;
            json!({})
        });
        assert!(!built, "nothing is built while nobody listens");
        let s = hub.stream(Filter {
            namespace: Some("a".into()),
            limit: Some(2),
            ..Default::default()
        });
        futures_util::pin_mut!(s);
        hub.publish(|| json!({"event": "open", "src": {"namespace": "other"}, "dst": {}}));
        hub.publish(|| json!({"event": "close", "src": {"namespace": "a"}, "dst": {}}));
        let v: Value = serde_json::from_slice(&s.next().await.expect("line")).expect("json");
        assert_eq!(v["event"], "close");
        for _ in 0..(QUEUE + 10) {
            hub.publish(|| json!({"event": "open", "src": {"namespace": "a"}, "dst": {}}));
        }
        let v: Value = serde_json::from_slice(&s.next().await.expect("line")).expect("json");
        assert_eq!(v["event"], "dropped");
        assert!(v["count"].as_u64().expect("count") >= 10);
    }
}

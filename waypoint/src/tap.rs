//! Live tap: one JSON event per request through the waypoint, for `meshctl tap` (the hub,
//! filters and bounded per-reader queues are `mesh-tap`'s; served at `/debug/tap`).

use std::sync::LazyLock;
use std::time::SystemTime;

use crate::metrics::RequestRecord;

static HUB: LazyLock<mesh_tap::Hub> =
    LazyLock::new(|| mesh_tap::Hub::new("waypoint_tap_dropped_events_total"));

/// The hub `/debug/tap` readers subscribe to.
pub fn hub() -> &'static mesh_tap::Hub {
    &HUB
}

/// Publishes a finished request, if anyone is listening.
pub fn request(r: &RequestRecord) {
    HUB.publish(|| event(r));
}

fn event(r: &RequestRecord) -> serde_json::Value {
    let time_ms = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default();
    serde_json::json!({
        "time_ms": time_ms,
        "event": "request",
        "direction": "waypoint",
        "src": {
            "workload": r.source.workload,
            "namespace": r.source.namespace,
            "identity": r.source.principal,
        },
        "dst": {
            "workload": r.destination_workload,
            "namespace": r.destination_workload_namespace,
            "identity": r.destination_principal,
        },
        "dst_service": r.destination_service,
        "security": "mutual_tls",
        "method": r.method,
        "path": r.path,
        "status": r.response_code,
        "grpc_status": r.grpc_response_status,
        "duration_ms": r.duration.as_millis() as u64,
        "bytes_sent": r.response_bytes,
        "bytes_received": r.request_bytes,
        "response_flags": r.response_flags,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_events_name_both_sides_and_the_outcome() {
        let r = RequestRecord {
            method: "GET".into(),
            path: "/x".into(),
            response_code: 404,
            destination_service: "s.ns.svc.cluster.local".into(),
            destination_workload: "b".into(),
            destination_workload_namespace: "ns".into(),
            source: crate::metrics::Source {
                workload: "a".into(),
                namespace: "ns".into(),
                principal: "spiffe://cluster.local/ns/ns/sa/a".into(),
                ..Default::default()
            },
            ..Default::default()
        };
        let v = event(&r);
        assert_eq!(v["event"], "request");
        assert_eq!(
            (v["method"].as_str(), v["path"].as_str()),
            (Some("GET"), Some("/x"))
        );
        assert_eq!(v["status"], 404);
        assert!(
            mesh_tap::Filter::from_query(Some("namespace=ns&workload=b"))
                .expect("filter")
                .matches(&v)
        );
    }
}

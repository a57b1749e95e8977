//! `/debug/config_dump?proxyID=...`: last sent, ACKed and NACKed responses per type.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use mesh_proto::{ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL};
use serde_json::Value;

use crate::harness::*;

/// GETs the dump until `done` holds for it (the registry is updated by the stream task).
async fn dump_until(h: &Harness, proxy_id: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, body) = h
            .http_get(&format!("/debug/config_dump?proxyID={proxy_id}"))
            .await;
        if status == 200 {
            let v: Value = serde_json::from_str(&body).unwrap();
            if done(&v) {
                return v;
            }
            assert!(Instant::now() < deadline, "condition not met: {v:#}");
        } else {
            assert!(Instant::now() < deadline, "{status}: {body}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn config_dump_shows_sent_acked_and_nacked_per_type() {
    let h = Harness::start().await;
    let mut c = XdsClient::connect(&h, Some(h.token("node1")), "node1", HashMap::new())
        .await
        .unwrap();
    let initial = c.initial().await;

    // After the initial ACKs: the last sent response is the full snapshot, decoded, and ACKed.
    let v = dump_until(&h, "node1", |v| {
        v["types"][ADDRESS_TYPE_URL]["lastAcked"]["nonce"] == initial.nonce.as_str()
            && v["types"][AUTHORIZATION_TYPE_URL]["lastAcked"].is_object()
    })
    .await;
    assert_eq!(v["connection"]["nodeName"], "node1");
    let t = &v["types"][ADDRESS_TYPE_URL];
    assert_eq!(t["subscription"], "*");
    let sent = &t["lastSent"];
    assert_eq!(sent["nonce"], initial.nonce.as_str());
    assert_eq!(sent["version"], initial.system_version_info.as_str());
    assert_eq!(sent["state"], "ACKED");
    let res = sent["resources"].as_array().unwrap();
    let mut got: Vec<&str> = res.iter().map(|r| r["name"].as_str().unwrap()).collect();
    got.sort();
    assert_eq!(got, vec![CLIENT_UID, SERVER_UID, SERVICE_NAME]);
    let client = res.iter().find(|r| r["name"] == CLIENT_UID).unwrap();
    assert_eq!(client["version"], versions(&initial)[CLIENT_UID].as_str());
    let w = &client["resource"]["workload"];
    assert_eq!(w["addresses"][0], "127.0.1.1");
    assert_eq!(w["node"], "node1");
    assert_eq!(w["tunnelProtocol"], "HBONE");
    let svc = res.iter().find(|r| r["name"] == SERVICE_NAME).unwrap();
    assert_eq!(
        svc["resource"]["service"]["addresses"][0]["address"],
        "127.0.2.1"
    );
    assert!(t["lastNack"].is_null());

    // A change the client rejects: last sent = the NACKed response, with its error; the last
    // ACK stays the initial snapshot.
    std::fs::write(
        h.config_file("client.yaml"),
        CLIENT_POD.replace("127.0.1.1", "127.0.1.12"),
    )
    .unwrap();
    let rejected = c.recv().await;
    c.nack(&rejected, "workload has an unsupported field").await;
    // Istio's proxy id form (<pod>.<namespace> from the node id) finds the same client.
    let v = dump_until(&h, "ztunnel-node1.istio-system", |v| {
        v["types"][ADDRESS_TYPE_URL]["lastNack"].is_object()
    })
    .await;
    let t = &v["types"][ADDRESS_TYPE_URL];
    assert_eq!(t["lastSent"]["state"], "NACKED");
    let nack = &t["lastNack"];
    assert_eq!(nack["nonce"], rejected.nonce.as_str());
    assert_eq!(
        nack["error"]["message"],
        "workload has an unsupported field"
    );
    assert_eq!(nack["error"]["code"], 3);
    assert_eq!(nack["resources"][0]["name"], CLIENT_UID);
    assert_eq!(
        nack["resources"][0]["resource"]["workload"]["addresses"][0],
        "127.0.1.12"
    );
    assert_eq!(t["lastAcked"]["nonce"], initial.nonce.as_str());
    assert_eq!(t["nacks"], 1);
}

#[tokio::test]
async fn config_dump_of_unknown_or_missing_proxy_is_an_error_naming_connected_clients() {
    let h = Harness::start().await;
    let mut c = XdsClient::connect(&h, Some(h.token("node1")), "node1", HashMap::new())
        .await
        .unwrap();
    c.initial().await;
    dump_until(&h, "node1", |_| true).await;

    let (status, body) = h.http_get("/debug/config_dump?proxyID=node7").await;
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("\"node7\""), "{body}");
    assert!(body.contains("connected: node1 (ztunnel~"), "{body}");

    let (status, body) = h.http_get("/debug/config_dump").await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("proxyID=<node name or node id>"), "{body}");
}

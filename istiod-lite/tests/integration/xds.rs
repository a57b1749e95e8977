//! Delta ADS behaviour: snapshot, incremental pushes, removals, NACKs, reconnects, auth.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use mesh_proto::workload::{address, TunnelProtocol};
use mesh_proto::ADDRESS_TYPE_URL;
use tonic::Code;

use crate::harness::*;

#[tokio::test]
async fn initial_snapshot_contains_workloads_and_services() {
    let h = Harness::start().await;
    let mut c = XdsClient::connect(&h, Some(h.token("node1")), "node1", HashMap::new())
        .await
        .unwrap();
    let r = c.initial().await;
    assert_eq!(names(&r), vec![CLIENT_UID, SERVER_UID, SERVICE_NAME]);
    assert!(r.removed_resources.is_empty());
    let address::Type::Workload(w) = decode(&r, CLIENT_UID) else {
        panic!("not a workload")
    };
    assert_eq!(w.tunnel_protocol(), TunnelProtocol::Hbone);
    assert_eq!(w.addresses, vec![vec![127, 0, 1, 1]]);
    assert_eq!(
        (w.node.as_str(), w.service_account.as_str()),
        ("node1", "client")
    );
    let address::Type::Workload(s) = decode(&r, SERVER_UID) else {
        panic!("not a workload")
    };
    assert_eq!(s.services[SERVICE_NAME].ports[0].target_port, 8080);
    let address::Type::Service(svc) = decode(&r, SERVICE_NAME) else {
        panic!("not a service")
    };
    assert_eq!(svc.addresses[0].address, vec![127, 0, 2, 1]);

    // The client shows up in the registry and /debug/connections once its ACKs are processed.
    let deadline = Instant::now() + WAIT;
    loop {
        let clients = h.app().clients.list();
        let acked = clients
            .first()
            .and_then(|c| c.types.get(ADDRESS_TYPE_URL))
            .is_some_and(|t| !t.last_acked_nonce.is_empty());
        if acked {
            assert_eq!(clients[0].node_name, "node1");
            break;
        }
        assert!(Instant::now() < deadline, "ACK not recorded: {clients:?}");
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (status, body) = h.http_get("/debug/connections").await;
    assert_eq!(status, 200);
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json[0]["node_name"], "node1");
    assert_eq!(json[0]["types"][ADDRESS_TYPE_URL]["resources"], 3);

    assert_eq!(h.http_get("/ready").await.0, 200);
    assert!(h.metric("pilot_xds{").await.unwrap() >= 1.0);
    assert!(h.metric("pilot_xds_pushes{type=\"wds\"}").await.unwrap() >= 1.0);
    let (_, metrics) = h.http_get("/metrics").await;
    assert!(
        metrics.contains("pilot_xds_push_time_bucket"),
        "histogram buckets exported"
    );
    assert!(metrics.contains("pilot_xds_config_size_bytes_bucket"));
}

#[tokio::test]
async fn file_edit_reaches_client_within_one_second_and_delete_removes() {
    let h = Harness::start().await;
    let mut c = XdsClient::connect(&h, Some(h.token("node1")), "node1", HashMap::new())
        .await
        .unwrap();
    let initial = c.initial().await;

    // Edit on disk: only the changed workload is pushed.
    std::fs::write(
        h.config_file("client.yaml"),
        CLIENT_POD.replace("127.0.1.1", "127.0.1.11"),
    )
    .unwrap();
    let started = Instant::now();
    let r = c.recv_within(Duration::from_secs(1)).await;
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(r.type_url, ADDRESS_TYPE_URL);
    assert_eq!(names(&r), vec![CLIENT_UID]);
    assert!(r.removed_resources.is_empty());
    assert_ne!(r.nonce, initial.nonce, "fresh nonce per response");
    assert_ne!(versions(&r)[CLIENT_UID], versions(&initial)[CLIENT_UID]);
    let address::Type::Workload(w) = decode(&r, CLIENT_UID) else {
        panic!("not a workload")
    };
    assert_eq!(w.addresses, vec![vec![127, 0, 1, 11]]);
    c.ack(&r).await;

    // Deleting the file removes the pod (and the service, which lived in the same file, goes too).
    std::fs::remove_file(h.config_file("server.yaml")).unwrap();
    let r = c.recv_within(Duration::from_secs(1)).await;
    let mut removed = r.removed_resources.clone();
    removed.sort();
    assert_eq!(
        removed,
        vec![SERVER_UID.to_string(), SERVICE_NAME.to_string()]
    );
    assert!(r.resources.is_empty());
}

#[tokio::test]
async fn broken_document_is_skipped_and_the_rest_keeps_working() {
    let h = Harness::start().await;
    let mut c = XdsClient::connect(&h, Some(h.token("node1")), "node1", HashMap::new())
        .await
        .unwrap();
    c.initial().await;
    let before = h
        .metric("istiod_config_errors_total{kind=\"Pod\"}")
        .await
        .unwrap_or(0.0);
    // One bad document (bad podIP) and one good new pod in the same file.
    let text = format!(
        "{CLIENT_POD}---\nkind: Pod\nmetadata: {{name: bad, namespace: demo-a}}\nstatus: {{podIP: not-an-ip}}\n---\n\
         kind: Pod\nmetadata: {{name: extra, namespace: demo-a}}\nstatus: {{podIP: 127.0.1.5}}\n"
    );
    std::fs::write(h.config_file("client.yaml"), text).unwrap();
    let r = c.recv_within(Duration::from_secs(1)).await;
    assert_eq!(names(&r), vec!["Kubernetes//Pod/demo-a/extra"]);
    assert!(
        r.removed_resources.is_empty(),
        "the valid objects of the file are kept"
    );
    assert!(
        h.metric("istiod_config_errors_total{kind=\"Pod\"}")
            .await
            .unwrap()
            >= before + 1.0
    );
}

#[tokio::test]
async fn nack_is_counted_logged_and_resources_resent_later() {
    let h = Harness::start().await;
    let mut c = XdsClient::connect(&h, Some(h.token("node1")), "node1", HashMap::new())
        .await
        .unwrap();
    c.initial().await;

    std::fs::write(
        h.config_file("client.yaml"),
        CLIENT_POD.replace("127.0.1.1", "127.0.1.12"),
    )
    .unwrap();
    let rejected = c.recv().await;
    c.nack(&rejected, "workload has an unsupported field").await;

    // Wait (bounded) until the NACK is recorded.
    let deadline = Instant::now() + WAIT;
    loop {
        let nack = h.app().clients.list().into_iter().find_map(|c| {
            c.types
                .get(ADDRESS_TYPE_URL)
                .and_then(|t| t.last_nack.clone())
        });
        if let Some(n) = nack {
            assert_eq!(n.nonce, rejected.nonce);
            assert_eq!(n.message, "workload has an unsupported field");
            break;
        }
        assert!(Instant::now() < deadline, "NACK not recorded");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        h.metric("pilot_total_xds_rejects{type=\"wds\"}")
            .await
            .unwrap()
            >= 1.0
    );

    // The client's state stayed at what it last accepted: the next change re-sends the rejected
    // workload along with the new one.
    std::fs::write(
        h.config_file("extra.yaml"),
        "kind: Pod\nmetadata: {name: extra, namespace: demo-a}\nstatus: {podIP: 127.0.1.6}\n",
    )
    .unwrap();
    let r = c.recv().await;
    assert_eq!(names(&r), vec![CLIENT_UID, "Kubernetes//Pod/demo-a/extra"]);
}

#[tokio::test]
async fn reconnect_with_initial_versions_gets_only_differences() {
    let h = Harness::start().await;
    let mut first = XdsClient::connect(&h, Some(h.token("node1")), "node1", HashMap::new())
        .await
        .unwrap();
    let have = versions(&first.initial().await);
    drop(first);

    let mut initial = have.clone();
    initial.insert(
        "Kubernetes//Pod/demo-a/gone".into(),
        "00000000000000aa".into(),
    );
    initial.insert(SERVICE_NAME.into(), "0000000000000001".into()); // stale version
    let mut c = XdsClient::connect(&h, Some(h.token("node1")), "node1", initial)
        .await
        .unwrap();
    let r = c.initial().await;
    assert_eq!(names(&r), vec![SERVICE_NAME]);
    assert_eq!(r.removed_resources, vec!["Kubernetes//Pod/demo-a/gone"]);
}

#[tokio::test]
async fn bad_tokens_and_node_mismatch_are_refused() {
    let h = Harness::start().await;
    let err = |r: Result<XdsClient, tonic::Status>| r.err().expect("refused");

    let e = err(XdsClient::connect(&h, None, "node1", HashMap::new()).await);
    assert_eq!(e.code(), Code::Unauthenticated);
    assert!(e.message().contains("authorization"), "{}", e.message());

    let forged = h.token("node1").replace("node1.", "node9.");
    let e = err(XdsClient::connect(&h, Some(forged), "node9", HashMap::new()).await);
    assert_eq!(e.code(), Code::Unauthenticated);

    // A valid token for node2 presented by a client claiming to be node1.
    let mut c = XdsClient::connect(&h, Some(h.token("node2")), "node1", HashMap::new())
        .await
        .unwrap();
    let e = c.try_recv_within(WAIT).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(
        e.message().contains("node1") && e.message().contains("node2"),
        "{}",
        e.message()
    );
    assert!(h.app().clients.is_empty());
}

#[tokio::test]
async fn tls_listener_serves_with_a_cert_from_our_ca() {
    let h = Harness::start().await;
    let root = std::fs::read_to_string(h.state_path("root-cert.pem")).unwrap();
    assert_eq!(root, h.app().roots_pem);
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(&root))
        .domain_name("localhost");
    let channel =
        tonic::transport::Channel::from_shared(format!("https://{}", h.app().xds_tls_addr))
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect()
            .await
            .unwrap();
    let mut client =
        mesh_proto::ca::istio_certificate_service_client::IstioCertificateServiceClient::new(
            channel,
        );
    // Without a token: the TLS handshake and routing work, the CA refuses.
    let e = client
        .create_certificate(mesh_proto::ca::IstioCertificateRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
}

#[tokio::test]
async fn shutdown_ends_streams_and_returns_promptly() {
    let mut h = Harness::start().await;
    let mut c = XdsClient::connect(&h, Some(h.token("node1")), "node1", HashMap::new())
        .await
        .unwrap();
    c.initial().await;
    let app = h.app.take().unwrap();
    let started = Instant::now();
    let shutdown = tokio::spawn(app.shutdown());
    // The stream ends cleanly (OK status), so the client sees the end of the stream.
    let end = c.try_recv_within(WAIT).await.unwrap_err();
    assert_eq!(end.code(), Code::Cancelled, "stream ended: {end:?}");
    tokio::time::timeout(WAIT, shutdown).await.unwrap().unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "shutdown took {:?}",
        started.elapsed()
    );
}

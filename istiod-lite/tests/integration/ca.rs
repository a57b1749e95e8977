//! CreateCertificate: node authorization, CSR validation, impersonation, validity cap.

use std::time::{Duration, SystemTime};

use mesh_identity::cert::WorkloadCert;
use mesh_identity::csr;
use mesh_identity::spiffe::Identity;
use tonic::Code;

use crate::harness::*;

fn request_for(ns: &str, sa: &str) -> (Identity, csr::CertRequest) {
    let id = Identity::new("cluster.local", ns, sa);
    let req = csr::generate(&id).unwrap();
    (id, req)
}

#[tokio::test]
async fn signs_for_a_service_account_of_a_pod_on_the_callers_node() {
    let h = Harness::start_with(|c| c.max_workload_cert_ttl = Duration::from_secs(3600)).await;
    let (id, req) = request_for("demo-a", "client");
    let before = h
        .metric("istiod_certificates_issued_total")
        .await
        .unwrap_or(0.0);
    let resp = h
        .create_certificate(
            Some(&h.token("node1")),
            &req.csr_pem,
            48 * 3600,
            Some(&id.to_string()),
        )
        .await
        .unwrap();
    assert!(resp.cert_chain.len() >= 2);
    assert_eq!(
        resp.cert_chain.last().unwrap(),
        &h.app().roots_pem,
        "chain ends with the root"
    );
    let cert = WorkloadCert::from_pem(&req.key_pem, &resp.cert_chain).unwrap();
    assert_eq!(cert.identity(), &id);
    // Validity is capped by MAX_WORKLOAD_CERT_TTL (1h), not the requested 48h.
    let left = cert.not_after().duration_since(SystemTime::now()).unwrap();
    assert!(
        left <= Duration::from_secs(3600) && left > Duration::from_secs(3500),
        "{left:?}"
    );
    assert!(h.metric("istiod_certificates_issued_total").await.unwrap() >= before + 1.0);
    assert!(
        h.metric("citadel_server_success_cert_issuance_count")
            .await
            .unwrap()
            >= 1.0
    );
}

#[tokio::test]
async fn refuses_a_service_account_of_another_node() {
    let h = Harness::start().await;
    let (_, req) = request_for("demo-b", "server");
    let e = h
        .create_certificate(Some(&h.token("node1")), &req.csr_pem, 0, None)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(
        e.message().contains("node1") && e.message().contains("demo-b/server"),
        "{}",
        e.message()
    );
    assert!(
        h.metric("istiod_certificates_refused_total{reason=\"not_on_node\"}")
            .await
            .unwrap()
            >= 1.0
    );

    // The same request from node2 works.
    h.create_certificate(Some(&h.token("node2")), &req.csr_pem, 0, None)
        .await
        .unwrap();
}

#[tokio::test]
async fn refuses_impersonation_mismatch_and_foreign_trust_domain() {
    let h = Harness::start().await;
    let (_, req) = request_for("demo-a", "client");
    let e = h
        .create_certificate(
            Some(&h.token("node1")),
            &req.csr_pem,
            0,
            Some("spiffe://cluster.local/ns/demo-a/sa/other"),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(
        e.message().contains("ImpersonatedIdentity"),
        "{}",
        e.message()
    );

    let foreign = csr::generate(&Identity::new("evil.example", "demo-a", "client")).unwrap();
    let e = h
        .create_certificate(Some(&h.token("node1")), &foreign.csr_pem, 0, None)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(e.message().contains("trust domain"), "{}", e.message());
}

#[tokio::test]
async fn invalid_csr_and_missing_token() {
    let h = Harness::start().await;
    let e = h
        .create_certificate(
            Some(&h.token("node1")),
            "-----BEGIN CERTIFICATE REQUEST-----\nnope\n-----END CERTIFICATE REQUEST-----\n",
            0,
            None,
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("CSR"), "{}", e.message());

    let (_, req) = request_for("demo-a", "client");
    let e = h
        .create_certificate(None, &req.csr_pem, 0, None)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    let e = h
        .create_certificate(Some("node1.00"), &req.csr_pem, 0, None)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
}

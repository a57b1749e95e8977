//! The CA API as a ztunnel calls it: a node may only get certificates for identities of pods
//! scheduled on it; bad requests get the right gRPC codes.

use mesh_e2e::ca::{create_certificate, request_cert};
use mesh_e2e::{Mesh, MeshOptions, Topology, CLIENT_SPIFFE, SERVER_SPIFFE};
use mesh_identity::cert::{parse_pem_certs, WorkloadCert};
use mesh_identity::spiffe::Identity;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;

/// istiod-lite only; the test plays the ztunnels.
async fn control_plane_only() -> Mesh {
    Mesh::start(
        Topology::demo(),
        MeshOptions {
            nodes: Some(vec![]),
            ..Default::default()
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_may_only_get_identities_of_its_own_pods() {
    let mesh = control_plane_only().await;
    mesh.check(async {
        let ca = mesh.istiod.xds_plaintext;
        let server = Identity::parse(SERVER_SPIFFE)?;
        let client = Identity::parse(CLIENT_SPIFFE)?;
        let node1 = mesh.node_token("node1")?;
        let node2 = mesh.node_token("node2")?;

        // node1 asks for the server's identity; the server pod runs on node2.
        let err = request_cert(ca, Some(&node1), &server)
            .await
            .err()
            .ok_or_else(|| anyhow::anyhow!("node1 got a certificate for {server}"))?;
        anyhow::ensure!(
            err.code() == Code::PermissionDenied,
            "expected PermissionDenied, got {:?}: {}",
            err.code(),
            err.message()
        );
        anyhow::ensure!(
            !err.message().trim().is_empty(),
            "PermissionDenied without a reason"
        );
        println!(
            "node1 asking for {server}: {:?}: {}",
            err.code(),
            err.message()
        );

        // A CSR for one identity with ImpersonatedIdentity naming another is refused too.
        let csr = mesh_identity::csr::generate(&client)?;
        let err = create_certificate(ca, Some(&node1), &csr.csr_pem, Some(SERVER_SPIFFE))
            .await
            .err()
            .ok_or_else(|| anyhow::anyhow!("impersonation mismatch was accepted"))?;
        anyhow::ensure!(
            err.code() == Code::PermissionDenied,
            "impersonation mismatch: expected PermissionDenied, got {:?}: {}",
            err.code(),
            err.message()
        );

        // node2 gets it; the chain ends with istiod's root.
        let issued = request_cert(ca, Some(&node2), &server)
            .await
            .map_err(|s| anyhow::anyhow!("node2 refused: {:?}: {}", s.code(), s.message()))?;
        anyhow::ensure!(
            issued.chain.len() >= 2,
            "chain has {} elements, expected leaf + root",
            issued.chain.len()
        );
        let root_file = std::fs::read_to_string(mesh.state_dir().join("root-cert.pem"))?;
        let last = issued.chain.last().map(String::as_str).unwrap_or_default();
        anyhow::ensure!(
            parse_pem_certs(last)? == parse_pem_certs(&root_file)?,
            "last element of the chain is not istiod's root-cert.pem"
        );
        let server_cert = WorkloadCert::from_pem(&issued.key_pem, &issued.chain)?;
        anyhow::ensure!(
            server_cert.identity() == &server,
            "leaf identity {} != {server}",
            server_cert.identity()
        );

        // And it is usable: an HBONE-style mTLS handshake between node1's client cert and it.
        let client_issued = request_cert(ca, Some(&node1), &client)
            .await
            .map_err(|s| anyhow::anyhow!("node1 refused its own pod: {s}"))?;
        let client_cert = WorkloadCert::from_pem(&client_issued.key_pem, &client_issued.chain)?;
        mtls_handshake(&client_cert, &server_cert).await
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_certificate_requests_get_the_right_codes() {
    let mesh = control_plane_only().await;
    mesh.check(async {
        let ca = mesh.istiod.xds_plaintext;
        let client = Identity::parse(CLIENT_SPIFFE)?;
        let node1 = mesh.node_token("node1")?;

        let err = create_certificate(
            ca,
            Some(&node1),
            "-----BEGIN CERTIFICATE REQUEST-----\nnot base64\n-----END CERTIFICATE REQUEST-----\n",
            Some(CLIENT_SPIFFE),
        )
        .await
        .err()
        .ok_or_else(|| anyhow::anyhow!("an invalid CSR was signed"))?;
        anyhow::ensure!(
            err.code() == Code::InvalidArgument,
            "invalid CSR: expected InvalidArgument, got {:?}: {}",
            err.code(),
            err.message()
        );

        let err = request_cert(ca, None, &client)
            .await
            .err()
            .ok_or_else(|| anyhow::anyhow!("no token, still signed"))?;
        anyhow::ensure!(
            err.code() == Code::Unauthenticated,
            "no token: expected Unauthenticated, got {:?}: {}",
            err.code(),
            err.message()
        );

        let forged = format!("node1.{}", "0".repeat(64));
        let err = request_cert(ca, Some(&forged), &client)
            .await
            .err()
            .ok_or_else(|| anyhow::anyhow!("forged token, still signed"))?;
        anyhow::ensure!(
            err.code() == Code::Unauthenticated,
            "forged token: expected Unauthenticated, got {:?}: {}",
            err.code(),
            err.message()
        );

        // The good request still works after all that.
        request_cert(ca, Some(&node1), &client)
            .await
            .map_err(|s| anyhow::anyhow!("valid request refused: {s}"))?;
        Ok(())
    })
    .await;
}

/// TLS with mesh-identity's HBONE configs over an in-memory pipe, with a byte each way.
async fn mtls_handshake(client: &WorkloadCert, server: &WorkloadCert) -> anyhow::Result<()> {
    let server_cfg = mesh_identity::tls::server_config(server)?;
    let client_cfg =
        mesh_identity::tls::client_config(client, std::slice::from_ref(server.identity()))?;
    let (a, b) = tokio::io::duplex(64 * 1024);
    let srv = tokio::spawn(async move {
        let mut s = tokio_rustls::TlsAcceptor::from(server_cfg)
            .accept(b)
            .await?;
        let mut byte = [0u8; 1];
        s.read_exact(&mut byte).await?;
        s.write_all(&byte).await?;
        s.flush().await?;
        anyhow::Ok(())
    });
    let mut c = tokio_rustls::TlsConnector::from(client_cfg)
        .connect(mesh_identity::tls::server_name(), a)
        .await?;
    c.write_all(b"x").await?;
    c.flush().await?;
    let mut byte = [0u8; 1];
    c.read_exact(&mut byte).await?;
    srv.await??;
    anyhow::ensure!(&byte == b"x", "echo mismatch");
    Ok(())
}

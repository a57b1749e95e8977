//! Real TLS handshakes (tokio-rustls over an in-memory duplex) with our configs.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use common::*;
use mesh_identity::ca::CertificateAuthority;
use mesh_identity::spiffe::Identity;
use mesh_identity::tls::{client_config, server_config, TlsError};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::{DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

#[tokio::test]
async fn mtls_happy_path_extracts_identities_on_both_sides() {
    let ca = CertificateAuthority::self_signed(TD).unwrap();
    let server_id = id("ns-a", "server");
    let client_id = id("ns-b", "client");
    let server_cert = ca.issue(&server_id, DAY).unwrap();
    let client_cert = via_csr(&ca, &client_id, None);

    let out = handshake(
        server_config(&server_cert).unwrap(),
        client_config(&client_cert, std::slice::from_ref(&server_id)).unwrap(),
    )
    .await;
    assert_eq!(out.server, Ok(Some(client_id)));
    assert_eq!(out.client, Ok(Some(server_id)));
    assert_eq!(out.alpn.as_deref(), Some(&b"h2"[..]));
    assert_eq!(out.sni, None, "client must not send SNI");
    assert_eq!(out.version, Some(rustls::ProtocolVersion::TLSv1_3));
    assert!(matches!(
        out.suite,
        Some(
            rustls::CipherSuite::TLS13_AES_256_GCM_SHA384
                | rustls::CipherSuite::TLS13_AES_128_GCM_SHA256
        )
    ));
}

#[tokio::test]
async fn client_accepts_server_matching_any_expected_identity() {
    let ca = CertificateAuthority::self_signed(TD).unwrap();
    let server_id = id("ns-a", "server");
    let server_cert = ca.issue(&server_id, DAY).unwrap();
    let client_cert = ca.issue(&id("ns-b", "client"), DAY).unwrap();
    let expected = [id("ns-a", "waypoint"), server_id.clone()];
    let out = handshake(
        server_config(&server_cert).unwrap(),
        client_config(&client_cert, &expected).unwrap(),
    )
    .await;
    assert_eq!(out.client, Ok(Some(server_id)));
}

#[tokio::test]
async fn mtls_through_plugin_ca_with_intermediate() {
    let dir = TempDir::new("tls-plugin");
    write_plugin_cacerts(dir.path(), TD);
    let ca = CertificateAuthority::load_plugin(dir.path(), TD).unwrap();
    let server_id = id("ns-a", "server");
    let client_id = id("ns-b", "client");
    let server_cert = via_csr(&ca, &server_id, None);
    let client_cert = ca.issue(&client_id, DAY).unwrap();
    assert_eq!(
        server_cert.chain().len(),
        2,
        "leaf + intermediate presented"
    );
    let out = handshake(
        server_config(&server_cert).unwrap(),
        client_config(&client_cert, std::slice::from_ref(&server_id)).unwrap(),
    )
    .await;
    assert_eq!(out.server, Ok(Some(client_id)));
    assert_eq!(out.client, Ok(Some(server_id)));
}

#[tokio::test]
async fn client_refuses_server_with_unexpected_identity() {
    let ca = CertificateAuthority::self_signed(TD).unwrap();
    let server_cert = ca.issue(&id("ns-a", "impostor"), DAY).unwrap();
    let client_cert = ca.issue(&id("ns-b", "client"), DAY).unwrap();
    let out = handshake(
        server_config(&server_cert).unwrap(),
        client_config(&client_cert, &[id("ns-a", "server")]).unwrap(),
    )
    .await;
    let err = out.client.unwrap_err();
    assert!(err.contains("not one of the expected"), "{err}");
    assert!(out.server.is_err());
}

#[tokio::test]
async fn client_refuses_server_from_another_ca() {
    let ca = CertificateAuthority::self_signed(TD).unwrap();
    let rogue = CertificateAuthority::self_signed(TD).unwrap();
    let server_id = id("ns-a", "server");
    let server_cert = via_csr(&rogue, &server_id, Some(ca.roots_pem()));
    let client_cert = ca.issue(&id("ns-b", "client"), DAY).unwrap();
    let out = handshake(
        server_config(&server_cert).unwrap(),
        client_config(&client_cert, &[server_id]).unwrap(),
    )
    .await;
    let err = out.client.unwrap_err();
    // Both roots have the same subject, so webpki finds a candidate issuer but its signature fails.
    assert!(
        err.contains("BadSignature") || err.contains("UnknownIssuer"),
        "{err}"
    );
}

/// A client that trusts any server and presents no certificate.
#[derive(Debug)]
struct TrustAnything;

impl ServerCertVerifier for TrustAnything {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        mesh_identity::tls::provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[tokio::test]
async fn server_refuses_client_without_certificate() {
    let ca = CertificateAuthority::self_signed(TD).unwrap();
    let server_cert = ca.issue(&id("ns-a", "server"), DAY).unwrap();
    let mut client = rustls::ClientConfig::builder_with_provider(mesh_identity::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(TrustAnything))
        .with_no_client_auth();
    client.alpn_protocols = vec![b"h2".to_vec()];
    let out = handshake(server_config(&server_cert).unwrap(), Arc::new(client)).await;
    let err = out.server.unwrap_err();
    assert!(err.contains("certificate"), "{err}");
    assert!(out.client.is_err(), "client must not get a working session");
}

#[tokio::test]
async fn server_refuses_client_cert_from_another_ca() {
    let ca = CertificateAuthority::self_signed(TD).unwrap();
    let rogue = CertificateAuthority::self_signed(TD).unwrap();
    let server_id = id("ns-a", "server");
    let server_cert = ca.issue(&server_id, DAY).unwrap();
    // The client trusts the real root (so it accepts the server) but its own cert is rogue.
    let client_cert = via_csr(&rogue, &id("ns-b", "client"), Some(ca.roots_pem()));
    let out = handshake(
        server_config(&server_cert).unwrap(),
        client_config(&client_cert, &[server_id]).unwrap(),
    )
    .await;
    let err = out.server.unwrap_err();
    assert!(
        err.contains("BadSignature") || err.contains("UnknownIssuer"),
        "{err}"
    );
    assert!(out.client.is_err());
}

#[tokio::test]
async fn server_refuses_client_from_another_trust_domain() {
    // Same root key and certificate, two trust domains: the chain is valid, only the SPIFFE
    // trust domain differs.
    let dir = TempDir::new("tls-td");
    let ca = CertificateAuthority::load_or_create(dir.path(), TD).unwrap();
    let foreign_ca = CertificateAuthority::load_or_create(dir.path(), "evil.example").unwrap();
    assert_eq!(ca.roots_pem(), foreign_ca.roots_pem());
    let server_id = id("ns-a", "server");
    let server_cert = ca.issue(&server_id, DAY).unwrap();
    let client_cert = foreign_ca
        .issue(&Identity::new("evil.example", "ns-b", "client"), DAY)
        .unwrap();
    let out = handshake(
        server_config(&server_cert).unwrap(),
        client_config(&client_cert, &[server_id]).unwrap(),
    )
    .await;
    let err = out.server.unwrap_err();
    assert!(err.contains("trust domain"), "{err}");
    assert!(out.client.is_err());
}

#[tokio::test]
async fn server_refuses_expired_client_cert() {
    let ca = CertificateAuthority::self_signed(TD).unwrap();
    let server_id = id("ns-a", "server");
    let server_cert = ca.issue(&server_id, DAY).unwrap();
    let now = SystemTime::now();
    let hour = Duration::from_secs(3600);
    let client_cert = ca
        .issue_between(&id("ns-b", "client"), now - 2 * hour, now - hour)
        .unwrap();
    let out = handshake(
        server_config(&server_cert).unwrap(),
        client_config(&client_cert, &[server_id]).unwrap(),
    )
    .await;
    let err = out.server.unwrap_err();
    assert!(err.to_lowercase().contains("expired"), "{err}");
    assert!(out.client.is_err());
}

#[tokio::test]
async fn client_refuses_expired_server_cert() {
    let ca = CertificateAuthority::self_signed(TD).unwrap();
    let server_id = id("ns-a", "server");
    let now = SystemTime::now();
    let hour = Duration::from_secs(3600);
    let server_cert = ca
        .issue_between(&server_id, now - 2 * hour, now - hour)
        .unwrap();
    let client_cert = ca.issue(&id("ns-b", "client"), DAY).unwrap();
    let out = handshake(
        server_config(&server_cert).unwrap(),
        client_config(&client_cert, &[server_id]).unwrap(),
    )
    .await;
    let err = out.client.unwrap_err();
    assert!(err.to_lowercase().contains("expired"), "{err}");
}

#[test]
fn client_config_requires_an_expected_identity() {
    let ca = CertificateAuthority::self_signed(TD).unwrap();
    let cert = ca.issue(&id("ns", "sa"), DAY).unwrap();
    assert!(matches!(
        client_config(&cert, &[]),
        Err(TlsError::NoExpectedIdentity)
    ));
}

#[test]
fn server_name_is_unspecified_ip() {
    assert_eq!(
        mesh_identity::tls::server_name(),
        ServerName::IpAddress(std::net::Ipv4Addr::UNSPECIFIED.into())
    );
}

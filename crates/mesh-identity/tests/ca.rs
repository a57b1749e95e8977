//! CA behaviour: CSR validation and signing, persistence, plug-in CA layout.
#![allow(clippy::unwrap_used)]

mod common;

use std::os::unix::fs::PermissionsExt as _;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use common::*;
use mesh_identity::ca::{CaError, CertificateAuthority};
use mesh_identity::cert::{parse_pem_certs, WorkloadCert};
use mesh_identity::csr;
use mesh_identity::spiffe::Identity;
use rcgen::{CertificateParams, DistinguishedName, KeyPair, SanType};
use rustls_pki_types::pem::PemObject as _;
use x509_parser::prelude::*;

fn csr_with_sans(sans: Vec<SanType>) -> String {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = sans;
    params.serialize_request(&key).unwrap().pem().unwrap()
}

fn uri(s: &str) -> SanType {
    SanType::URI(s.to_string().try_into().unwrap())
}

fn pem_to_der(pem: &str) -> Vec<u8> {
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .unwrap()
}

fn der_to_pem(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    format!("-----BEGIN {label}-----\n{b64}\n-----END {label}-----\n")
}

fn leaf_of(chain: &[String]) -> Vec<u8> {
    parse_pem_certs(&chain[0]).unwrap()[0].to_vec()
}

#[test]
fn sign_csr_valid_request_is_signed_with_requested_identity() {
    let ca = CertificateAuthority::self_signed(TD).unwrap();
    let identity = id("default", "bookinfo");
    let req = csr::generate(&identity).unwrap();
    assert_eq!(ca.csr_identity(&req.csr_pem).unwrap(), identity);

    let before = SystemTime::now();
    let signed = ca.sign_csr(&req.csr_pem, DAY, DAY).unwrap();
    assert_eq!(signed.identity, identity);
    assert_eq!(signed.cert_chain.len(), 2, "leaf + root");
    assert_eq!(signed.cert_chain.last().unwrap(), &ca.roots_pem());

    let cert = WorkloadCert::from_pem(&req.key_pem, &signed.cert_chain).unwrap();
    assert_eq!(cert.identity(), &identity);
    assert_eq!(cert.not_after(), signed.not_after);
    assert_eq!(cert.chain().len(), 1);
    assert_eq!(cert.roots().len(), 1);
    assert_eq!(cert.chain_pem(), vec![signed.cert_chain[0].clone()]);
    assert_eq!(cert.roots_pem().concat(), ca.roots_pem());

    // Leaf profile.
    let der = leaf_of(&signed.cert_chain);
    let (_, x) = X509Certificate::from_der(&der).unwrap();
    assert!(!x.is_ca());
    let bc = x
        .basic_constraints()
        .unwrap()
        .expect("basicConstraints present");
    assert!(!bc.value.ca);
    let ku = x.key_usage().unwrap().unwrap().value;
    assert!(ku.digital_signature() && ku.key_encipherment() && !ku.key_cert_sign());
    let eku = x.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && eku.client_auth);
    let san = x.subject_alternative_name().unwrap().unwrap();
    assert_eq!(san.value.general_names.len(), 1);
    assert!(san.critical, "SAN is critical because the subject is empty");
    let nb = SystemTime::from(x.validity().not_before.to_datetime());
    assert!(
        nb <= before - Duration::from_secs(59),
        "not_before back-dated a minute"
    );
    let life = cert.not_after().duration_since(cert.not_before()).unwrap();
    assert!(
        life >= DAY && life <= DAY + Duration::from_secs(62),
        "{life:?}"
    );
    assert_eq!(cert.refresh_at(), cert.not_before() + life / 2);

    // Random serials.
    let again = ca.sign_csr(&req.csr_pem, DAY, DAY).unwrap();
    let cert2 = WorkloadCert::from_pem(&req.key_pem, &again.cert_chain).unwrap();
    assert_ne!(cert.serial_hex(), cert2.serial_hex());
    assert!(cert.serial_hex().len() >= 16);
}

#[test]
fn sign_csr_refuses_tampered_san() {
    let ca = CertificateAuthority::self_signed(TD).unwrap();
    let req = csr::generate(&id("ns1", "sa1")).unwrap();
    let mut der = pem_to_der(&req.csr_pem);
    // Rewrite the requested identity without re-signing: a structurally valid CSR whose
    // signature no longer covers its content.
    let needle = b"/sa/sa1";
    let pos = der.windows(needle.len()).position(|w| w == needle).unwrap();
    der[pos + needle.len() - 1] = b'2';
    let tampered = der_to_pem("CERTIFICATE REQUEST", &der);
    let err = ca.sign_csr(&tampered, DAY, DAY).unwrap_err();
    assert!(matches!(err, CaError::CsrSignature(_)), "{err}");
    assert!(matches!(
        ca.csr_identity(&tampered),
        Err(CaError::CsrSignature(_))
    ));
}

#[test]
fn sign_csr_refuses_tampered_signature() {
    let ca = CertificateAuthority::self_signed(TD).unwrap();
    let req = csr::generate(&id("ns1", "sa1")).unwrap();
    let mut der = pem_to_der(&req.csr_pem);
    let last = der.len() - 1;
    der[last] ^= 0x01;
    let tampered = der_to_pem("CERTIFICATE REQUEST", &der);
    let err = ca.sign_csr(&tampered, DAY, DAY).unwrap_err();
    assert!(matches!(err, CaError::CsrSignature(_)), "{err}");
}

#[test]
fn sign_csr_refuses_two_sans() {
    let ca = CertificateAuthority::self_signed(TD).unwrap();
    let pem = csr_with_sans(vec![
        uri("spiffe://cluster.local/ns/a/sa/b"),
        uri("spiffe://cluster.local/ns/a/sa/c"),
    ]);
    let err = ca.sign_csr(&pem, DAY, DAY).unwrap_err();
    assert!(matches!(err, CaError::CsrSan(_)), "{err}");
    assert!(err.to_string().contains("2 SANs"), "{err}");
}

#[test]
fn sign_csr_refuses_dns_and_ip_sans() {
    let ca = CertificateAuthority::self_signed(TD).unwrap();
    for sans in [
        vec![SanType::DnsName("evil.example.com".try_into().unwrap())],
        vec![SanType::IpAddress("10.0.0.1".parse().unwrap())],
        vec![
            uri("spiffe://cluster.local/ns/a/sa/b"),
            SanType::DnsName("evil.example.com".try_into().unwrap()),
        ],
    ] {
        let err = ca
            .sign_csr(&csr_with_sans(sans.clone()), DAY, DAY)
            .unwrap_err();
        assert!(matches!(err, CaError::CsrSan(_)), "{sans:?}: {err}");
    }
}

#[test]
fn sign_csr_refuses_missing_or_non_spiffe_uri() {
    let ca = CertificateAuthority::self_signed(TD).unwrap();
    let err = ca.sign_csr(&csr_with_sans(vec![]), DAY, DAY).unwrap_err();
    assert!(matches!(err, CaError::CsrSan(_)), "{err}");
    let err = ca
        .sign_csr(&csr_with_sans(vec![uri("https://example.com/x")]), DAY, DAY)
        .unwrap_err();
    assert!(matches!(err, CaError::CsrIdentity(_)), "{err}");
    let err = ca
        .sign_csr(
            &csr_with_sans(vec![uri("spiffe://cluster.local/foo")]),
            DAY,
            DAY,
        )
        .unwrap_err();
    assert!(matches!(err, CaError::CsrIdentity(_)), "{err}");
}

#[test]
fn sign_csr_refuses_other_trust_domain() {
    let ca = CertificateAuthority::self_signed(TD).unwrap();
    let req = csr::generate(&Identity::new("other.domain", "ns", "sa")).unwrap();
    let err = ca.sign_csr(&req.csr_pem, DAY, DAY).unwrap_err();
    assert!(matches!(err, CaError::WrongTrustDomain { .. }), "{err}");
    assert!(err.to_string().contains("cluster.local"), "{err}");
}

#[test]
fn sign_csr_refuses_garbage() {
    let ca = CertificateAuthority::self_signed(TD).unwrap();
    for garbage in [
        "",
        "hello",
        "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
        "-----BEGIN CERTIFICATE REQUEST-----\n!!!!\n-----END CERTIFICATE REQUEST-----\n",
    ] {
        let err = ca.sign_csr(garbage, DAY, DAY).unwrap_err();
        assert!(matches!(err, CaError::CsrParse(_)), "{garbage:?}: {err}");
    }
    // A certificate is not a CSR.
    let err = ca.sign_csr(&ca.roots_pem(), DAY, DAY).unwrap_err();
    assert!(matches!(err, CaError::CsrParse(_)), "{err}");
}

#[test]
fn sign_csr_caps_validity_at_max() {
    let ca = CertificateAuthority::self_signed(TD).unwrap();
    let req = csr::generate(&id("ns", "sa")).unwrap();
    let hour = Duration::from_secs(3600);
    let lifetime = |requested: Duration, max: Duration| {
        let now = SystemTime::now();
        let signed = ca.sign_csr(&req.csr_pem, requested, max).unwrap();
        signed.not_after.duration_since(now).unwrap()
    };
    let close = |got: Duration, want: Duration| got <= want && got + Duration::from_secs(5) >= want;
    let got = lifetime(48 * hour, 24 * hour);
    assert!(close(got, 24 * hour), "capped: {got:?}");
    let got = lifetime(Duration::ZERO, 24 * hour);
    assert!(close(got, 24 * hour), "0 => max: {got:?}");
    let got = lifetime(hour, 24 * hour);
    assert!(close(got, hour), "shorter honoured: {got:?}");
}

#[test]
fn issue_refuses_foreign_trust_domain() {
    let ca = CertificateAuthority::self_signed(TD).unwrap();
    let err = ca
        .issue(&Identity::new("other", "ns", "sa"), DAY)
        .unwrap_err();
    assert!(matches!(err, CaError::WrongTrustDomain { .. }), "{err}");
}

#[test]
fn load_or_create_persists_and_reloads_the_same_root() {
    let dir = TempDir::new("state");
    let state = dir.path().join("istiod");
    let ca = CertificateAuthority::load_or_create(&state, TD).unwrap();
    let key_mode = std::fs::metadata(state.join("root-key.pem"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(key_mode & 0o777, 0o600);
    let on_disk = std::fs::read_to_string(state.join("root-cert.pem")).unwrap();
    assert_eq!(on_disk, ca.roots_pem());

    let reloaded = CertificateAuthority::load_or_create(&state, TD).unwrap();
    assert_eq!(reloaded.roots_pem(), ca.roots_pem());
    assert_eq!(reloaded.trust_domain(), TD);
    // Certificates from the reloaded CA verify against the original root.
    let cert = via_csr(&reloaded, &id("ns", "sa"), Some(ca.roots_pem()));
    assert_eq!(cert.identity(), &id("ns", "sa"));
}

#[test]
fn load_or_create_refuses_half_present_state() {
    let dir = TempDir::new("partial");
    CertificateAuthority::load_or_create(dir.path(), TD).unwrap();
    std::fs::remove_file(dir.path().join("root-key.pem")).unwrap();
    let err = CertificateAuthority::load_or_create(dir.path(), TD).unwrap_err();
    assert!(matches!(err, CaError::PartialState { .. }), "{err}");
    assert!(err.to_string().contains("root-key.pem"), "{err}");
    // The surviving cert was not overwritten.
    assert!(dir.path().join("root-cert.pem").exists());
}

#[test]
fn load_plugin_with_intermediate_chains_to_root() {
    let dir = TempDir::new("plugin");
    let root_pem = write_plugin_cacerts(dir.path(), TD);
    let ca = CertificateAuthority::load_plugin(dir.path(), TD).unwrap();
    assert_eq!(ca.roots_pem(), root_pem);

    let req = csr::generate(&id("ns", "sa")).unwrap();
    let signed = ca.sign_csr(&req.csr_pem, DAY, DAY).unwrap();
    let ca_cert = std::fs::read_to_string(dir.path().join("ca-cert.pem")).unwrap();
    assert_eq!(signed.cert_chain.len(), 3, "leaf, intermediate, root");
    assert_eq!(signed.cert_chain[1], ca_cert);
    assert_eq!(signed.cert_chain[2], root_pem);
    let cert = WorkloadCert::from_pem(&req.key_pem, &signed.cert_chain).unwrap();
    assert_eq!(cert.chain().len(), 2);

    // The leaf is issued by the intermediate.
    let (_, leaf) = X509Certificate::from_der(&cert.chain()[0]).unwrap();
    let (_, int) = X509Certificate::from_der(&cert.chain()[1]).unwrap();
    assert_eq!(leaf.issuer(), int.subject());
}

#[test]
fn load_plugin_reports_missing_and_inconsistent_files() {
    let dir = TempDir::new("plugin-bad");
    write_plugin_cacerts(dir.path(), TD);
    std::fs::remove_file(dir.path().join("cert-chain.pem")).unwrap();
    let err = CertificateAuthority::load_plugin(dir.path(), TD).unwrap_err();
    assert!(matches!(err, CaError::MissingFile(_)), "{err}");
    assert!(err.to_string().contains("cert-chain.pem"), "{err}");

    // Key from another CA.
    let dir = TempDir::new("plugin-key");
    write_plugin_cacerts(dir.path(), TD);
    std::fs::write(
        dir.path().join("ca-key.pem"),
        KeyPair::generate().unwrap().serialize_pem(),
    )
    .unwrap();
    let err = CertificateAuthority::load_plugin(dir.path(), TD).unwrap_err();
    assert!(err.to_string().contains("does not match"), "{err}");

    // Root from another hierarchy.
    let dir = TempDir::new("plugin-root");
    write_plugin_cacerts(dir.path(), TD);
    let other = CertificateAuthority::self_signed(TD).unwrap();
    std::fs::write(dir.path().join("root-cert.pem"), other.roots_pem()).unwrap();
    let err = CertificateAuthority::load_plugin(dir.path(), TD).unwrap_err();
    assert!(matches!(err, CaError::Inconsistent(_)), "{err}");

    // Garbage key.
    let dir = TempDir::new("plugin-garbage");
    write_plugin_cacerts(dir.path(), TD);
    std::fs::write(dir.path().join("ca-key.pem"), "not a key").unwrap();
    let err = CertificateAuthority::load_plugin(dir.path(), TD).unwrap_err();
    assert!(matches!(err, CaError::BadKey { .. }), "{err}");
}

#[tokio::test]
async fn issue_server_cert_is_valid_for_its_dns_and_ip_names() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let ca = CertificateAuthority::self_signed(TD).unwrap();
    let (chain_pem, key_pem) = ca
        .issue_server_cert(
            &[
                "istiod.istio-system.svc".to_string(),
                "localhost".to_string(),
            ],
            &["127.0.0.1".parse().unwrap(), "::1".parse().unwrap()],
            DAY,
        )
        .unwrap();
    assert_eq!(chain_pem.len(), 1, "leaf only for a root CA");
    let chain: Vec<_> = chain_pem
        .iter()
        .flat_map(|p| parse_pem_certs(p).unwrap())
        .collect();
    let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
    let provider = mesh_identity::tls::provider();
    let server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for r in parse_pem_certs(&ca.roots_pem()).unwrap() {
        roots.add(r).unwrap();
    }
    let client = std::sync::Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    );
    let server = std::sync::Arc::new(server);
    for name in [
        "istiod.istio-system.svc",
        "localhost",
        "127.0.0.1",
        "::1",
        "other.svc",
    ] {
        let (a, b) = tokio::io::duplex(64 * 1024);
        let acceptor = tokio_rustls::TlsAcceptor::from(server.clone());
        let connector = tokio_rustls::TlsConnector::from(client.clone());
        let sn = rustls_pki_types::ServerName::try_from(name.to_string()).unwrap();
        let (s, c) = tokio::join!(
            async move {
                let mut s = acceptor.accept(a).await?;
                s.write_all(b"k").await?;
                s.flush().await?;
                Ok::<_, std::io::Error>(s)
            },
            async move {
                let mut c = connector.connect(sn, b).await?;
                let mut buf = [0u8; 1];
                c.read_exact(&mut buf).await?;
                Ok::<_, std::io::Error>(c)
            }
        );
        if name == "other.svc" {
            assert!(c.is_err(), "{name} must not verify");
        } else {
            assert!(
                s.is_ok() && c.is_ok(),
                "{name}: {:?} / {:?}",
                s.err(),
                c.err()
            );
        }
    }
}

#[test]
fn workload_cert_from_pem_validates_input() {
    let ca = CertificateAuthority::self_signed(TD).unwrap();
    let req = csr::generate(&id("ns", "sa")).unwrap();
    let signed = ca.sign_csr(&req.csr_pem, DAY, DAY).unwrap();
    // Leaf only: no roots element.
    assert!(WorkloadCert::from_pem(&req.key_pem, &signed.cert_chain[..1]).is_err());
    // Someone else's key.
    let other = csr::generate(&id("ns", "sa")).unwrap();
    let err = WorkloadCert::from_pem(&other.key_pem, &signed.cert_chain).unwrap_err();
    assert!(err.to_string().contains("does not match"), "{err}");
    // Debug never prints the key.
    let cert = WorkloadCert::from_pem(&req.key_pem, &signed.cert_chain).unwrap();
    let dbg = format!("{cert:?}");
    assert!(dbg.contains("spiffe://cluster.local/ns/ns/sa/sa"), "{dbg}");
    assert!(!dbg.contains("PRIVATE"), "{dbg}");
    let key_b64: String = req
        .key_pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    assert!(!dbg.contains(&key_b64[..20]));
}

#[test]
fn multiple_roots_in_last_element_all_become_anchors() {
    let ca = CertificateAuthority::self_signed(TD).unwrap();
    let old = CertificateAuthority::self_signed(TD).unwrap();
    let req = csr::generate(&id("ns", "sa")).unwrap();
    let mut signed = ca.sign_csr(&req.csr_pem, DAY, DAY).unwrap();
    *signed.cert_chain.last_mut().unwrap() = format!("{}{}", old.roots_pem(), ca.roots_pem());
    let cert = WorkloadCert::from_pem(&req.key_pem, &signed.cert_chain).unwrap();
    assert_eq!(cert.roots().len(), 2);
}

/// Plug-in CA keys are often not PKCS#8: Istio's samples and older `openssl genrsa` write
/// PKCS#1 RSA keys, `openssl ecparam -genkey` writes SEC1.
#[tokio::test]
async fn load_plugin_accepts_pkcs1_rsa_and_sec1_ec_keys() {
    let rsa_pkcs8 = include_str!("fixtures/rsa2048-pkcs8.pem");
    let rsa_pkcs1 = include_str!("fixtures/rsa2048-pkcs1.pem");
    let ec = KeyPair::generate().unwrap();
    let ec_sec1 = pkcs8_ec_to_sec1_pem(&ec.serialize_der());
    assert!(ec_sec1.contains("EC PRIVATE KEY"));
    let cases = [
        (
            "rsa-pkcs1",
            KeyPair::from_pem(rsa_pkcs8).unwrap(),
            rsa_pkcs1.to_string(),
        ),
        ("ec-sec1", ec, ec_sec1),
    ];
    for (name, key, on_disk) in cases {
        let dir = TempDir::new(name);
        write_plugin_cacerts_with_key(dir.path(), TD, key, &on_disk);
        let ca = CertificateAuthority::load_plugin(dir.path(), TD)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        // Issued certs work in a real handshake.
        let server_id = id("ns", "server");
        let server = via_csr(&ca, &server_id, None);
        let client = ca.issue(&id("ns", "client"), DAY).unwrap();
        let out = handshake(
            mesh_identity::tls::server_config(&server).unwrap(),
            mesh_identity::tls::client_config(&client, std::slice::from_ref(&server_id)).unwrap(),
        )
        .await;
        assert_eq!(out.client, Ok(Some(server_id)), "{name}");
        assert_eq!(out.server, Ok(Some(id("ns", "client"))), "{name}");
    }
}

/// CSRs from other tools (here openssl, RSA key): SHA-256 accepted, SHA-1 refused.
#[test]
fn sign_csr_accepts_openssl_rsa_sha256_and_refuses_sha1() {
    let ca = CertificateAuthority::self_signed(TD).unwrap();
    let good = include_str!("fixtures/csr-rsa-sha256.pem");
    let signed = ca.sign_csr(good, DAY, DAY).unwrap();
    assert_eq!(signed.identity, id("ns", "openssl"));
    let cert = WorkloadCert::from_pem(
        include_str!("fixtures/rsa2048-pkcs1.pem"),
        &signed.cert_chain,
    )
    .unwrap();
    assert_eq!(cert.identity(), &id("ns", "openssl"));

    let err = ca
        .sign_csr(include_str!("fixtures/csr-rsa-sha1.pem"), DAY, DAY)
        .unwrap_err();
    assert!(matches!(err, CaError::CsrSignature(_)), "{err}");
    assert!(err.to_string().contains("SHA-1"), "{err}");
}

//! Shared helpers for mesh-identity integration tests.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use mesh_identity::ca::CertificateAuthority;
use mesh_identity::cert::{peer_identity, WorkloadCert};
use mesh_identity::csr;
use mesh_identity::spiffe::Identity;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};

pub const TD: &str = "cluster.local";
pub const DAY: Duration = Duration::from_secs(24 * 3600);

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let dir = std::env::temp_dir().join(format!(
            "mesh-identity-{name}-{}-{nanos}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn id(ns: &str, sa: &str) -> Identity {
    Identity::new(TD, ns, sa)
}

/// Key + cert for `identity` obtained the way ztunnel does it: CSR -> sign_csr -> from_pem.
/// `trust_roots_pem` overrides the roots the resulting bundle trusts.
pub fn via_csr(
    ca: &CertificateAuthority,
    identity: &Identity,
    trust_roots_pem: Option<String>,
) -> WorkloadCert {
    let req = csr::generate(identity).unwrap();
    let mut signed = ca.sign_csr(&req.csr_pem, DAY, DAY).unwrap();
    if let Some(roots) = trust_roots_pem {
        *signed.cert_chain.last_mut().unwrap() = roots;
    }
    WorkloadCert::from_pem(&req.key_pem, &signed.cert_chain).unwrap()
}

/// Writes an Istio cacerts directory: root -> intermediate (signing CA).
/// Returns the root PEM.
pub fn write_plugin_cacerts(dir: &Path, td: &str) -> String {
    let key = KeyPair::generate().unwrap();
    let pem = key.serialize_pem();
    write_plugin_cacerts_with_key(dir, td, key, &pem)
}

/// Like [`write_plugin_cacerts`] with a given intermediate key; `key_pem_on_disk` is what
/// ca-key.pem contains (any PEM encoding of the same key).
pub fn write_plugin_cacerts_with_key(
    dir: &Path,
    td: &str,
    int_key: KeyPair,
    key_pem_on_disk: &str,
) -> String {
    let now = time::OffsetDateTime::now_utc();
    let root_key = KeyPair::generate().unwrap();
    let mut root_params = CertificateParams::default();
    root_params.distinguished_name = rcgen::DistinguishedName::new();
    root_params
        .distinguished_name
        .push(DnType::OrganizationName, td);
    root_params
        .distinguished_name
        .push(DnType::CommonName, "Test Root CA");
    root_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    root_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    root_params.not_before = now - time::Duration::hours(1);
    root_params.not_after = now + time::Duration::days(3650);
    let root = root_params.self_signed(&root_key).unwrap();
    let root_issuer = Issuer::new(root_params, root_key);

    let mut int_params = CertificateParams::default();
    int_params.distinguished_name = rcgen::DistinguishedName::new();
    int_params
        .distinguished_name
        .push(DnType::OrganizationName, td);
    int_params
        .distinguished_name
        .push(DnType::CommonName, "Test Intermediate CA");
    int_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    int_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    int_params.not_before = now - time::Duration::hours(1);
    int_params.not_after = now + time::Duration::days(365);
    int_params.use_authority_key_identifier_extension = true;
    let int = int_params.signed_by(&int_key, &root_issuer).unwrap();

    std::fs::write(dir.join("ca-cert.pem"), int.pem()).unwrap();
    std::fs::write(dir.join("ca-key.pem"), key_pem_on_disk).unwrap();
    std::fs::write(dir.join("root-cert.pem"), root.pem()).unwrap();
    std::fs::write(
        dir.join("cert-chain.pem"),
        format!("{}{}", int.pem(), root.pem()),
    )
    .unwrap();
    root.pem()
}

/// Re-encodes a PKCS#8 EC key (as rcgen/ring produce) as SEC1 `EC PRIVATE KEY` PEM by
/// unwrapping the inner ECPrivateKey (PrivateKeyInfo = SEQ { version, algId, OCTET STRING }).
pub fn pkcs8_ec_to_sec1_pem(pkcs8_der: &[u8]) -> String {
    fn tlv(b: &[u8]) -> (u8, &[u8], &[u8]) {
        let tag = b[0];
        let (len, hdr) = if b[1] < 0x80 {
            (b[1] as usize, 2)
        } else {
            let n = (b[1] & 0x7f) as usize;
            (
                b[2..2 + n]
                    .iter()
                    .fold(0usize, |a, x| (a << 8) | *x as usize),
                2 + n,
            )
        };
        (tag, &b[hdr..hdr + len], &b[hdr + len..])
    }
    let (_, seq, _) = tlv(pkcs8_der);
    let (_, _version, rest) = tlv(seq);
    let (_, _alg, rest) = tlv(rest);
    let (tag, inner, _) = tlv(rest);
    assert_eq!(tag, 0x04);
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(inner);
    format!("-----BEGIN EC PRIVATE KEY-----\n{b64}\n-----END EC PRIVATE KEY-----\n")
}

/// Result of one TLS handshake attempt over an in-memory pipe.
pub struct Outcome {
    /// Peer identity seen by the server, or the server's error.
    pub server: Result<Option<Identity>, String>,
    /// Peer identity seen by the client, or the client's error (including a post-handshake
    /// alert from the server: with TLS 1.3 the client learns of a refused client certificate
    /// only when it next reads).
    pub client: Result<Option<Identity>, String>,
    pub alpn: Option<Vec<u8>>,
    pub sni: Option<String>,
    pub suite: Option<rustls::CipherSuite>,
    pub version: Option<rustls::ProtocolVersion>,
}

pub async fn handshake(
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
) -> Outcome {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (a, b) = tokio::io::duplex(64 * 1024);
    let acceptor = tokio_rustls::TlsAcceptor::from(server);
    let connector = tokio_rustls::TlsConnector::from(client);

    let server_side = async move {
        let mut tls = acceptor.accept(a).await.map_err(|e| e.to_string())?;
        let (_, conn) = tls.get_ref();
        let peer = conn.peer_certificates().and_then(peer_identity);
        let info = (
            conn.alpn_protocol().map(<[u8]>::to_vec),
            conn.server_name().map(str::to_string),
            conn.negotiated_cipher_suite().map(|s| s.suite()),
            conn.protocol_version(),
        );
        // Echo one byte so the client can prove the session works end to end.
        let mut buf = [0u8; 1];
        tls.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
        tls.write_all(&buf).await.map_err(|e| e.to_string())?;
        tls.flush().await.map_err(|e| e.to_string())?;
        Ok::<_, String>((peer, info))
    };
    let client_side = async move {
        let mut tls = connector
            .connect(mesh_identity::tls::server_name(), b)
            .await
            .map_err(|e| e.to_string())?;
        let peer = tls.get_ref().1.peer_certificates().and_then(peer_identity);
        tls.write_all(b"x").await.map_err(|e| e.to_string())?;
        tls.flush().await.map_err(|e| e.to_string())?;
        let mut buf = [0u8; 1];
        tls.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
        Ok::<_, String>(peer)
    };
    let (s, c) = tokio::join!(server_side, client_side);
    let (server, alpn, sni, suite, version) = match s {
        Ok((peer, (alpn, sni, suite, version))) => (Ok(peer), alpn, sni, suite, version),
        Err(e) => (Err(e), None, None, None, None),
    };
    Outcome {
        server,
        client: c,
        alpn,
        sni,
        suite,
        version,
    }
}

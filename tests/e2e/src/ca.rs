//! The CA API (`istio.v1.auth.IstioCertificateService/CreateCertificate`) called the way a
//! ztunnel calls it, and TLS client configs for hand-made HBONE clients.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use mesh_identity::spiffe::Identity;
use mesh_proto::ca::istio_certificate_service_client::IstioCertificateServiceClient;
use mesh_proto::ca::IstioCertificateRequest;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

/// A key and the chain the CA returned (leaf first, roots last).
#[derive(Clone)]
pub struct IssuedCert {
    /// PKCS#8 PEM private key.
    pub key_pem: String,
    /// PEM chain as returned by CreateCertificate.
    pub chain: Vec<String>,
}

impl std::fmt::Debug for IssuedCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedCert")
            .field("chain_len", &self.chain.len())
            .finish_non_exhaustive()
    }
}

impl IssuedCert {
    /// Writes `key.pem`, `chain.pem` (leaf + intermediates) and `root.pem` into `dir`.
    pub fn write_pems(&self, dir: &Path) -> anyhow::Result<()> {
        let (root, chain) = self.chain.split_last().context("empty chain")?;
        std::fs::write(dir.join("key.pem"), &self.key_pem)?;
        std::fs::write(dir.join("chain.pem"), chain.concat())?;
        std::fs::write(dir.join("root.pem"), root)?;
        Ok(())
    }
}

/// Calls CreateCertificate on istiod's plaintext gRPC address with an optional node token, a
/// fresh key + CSR for `identity`, and `ImpersonatedIdentity` metadata as ztunnel sends it.
pub async fn request_cert(
    xds_plaintext: SocketAddr,
    token: Option<&str>,
    identity: &Identity,
) -> Result<IssuedCert, tonic::Status> {
    let req = mesh_identity::csr::generate(identity)
        .map_err(|e| tonic::Status::internal(format!("CSR generation: {e}")))?;
    let chain = create_certificate(
        xds_plaintext,
        token,
        &req.csr_pem,
        Some(&identity.to_string()),
    )
    .await?;
    Ok(IssuedCert {
        key_pem: req.key_pem,
        chain,
    })
}

/// Raw CreateCertificate call (any CSR text, optional token and impersonated identity).
pub async fn create_certificate(
    xds_plaintext: SocketAddr,
    token: Option<&str>,
    csr_pem: &str,
    impersonate: Option<&str>,
) -> Result<Vec<String>, tonic::Status> {
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{xds_plaintext}"))
        .map_err(|e| tonic::Status::internal(e.to_string()))?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(20));
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| tonic::Status::unavailable(format!("connect {xds_plaintext}: {e}")))?;
    let mut client = IstioCertificateServiceClient::new(channel);
    let metadata = impersonate.map(|id| prost_types::Struct {
        fields: [(
            "ImpersonatedIdentity".to_string(),
            prost_types::Value {
                kind: Some(prost_types::value::Kind::StringValue(id.to_string())),
            },
        )]
        .into_iter()
        .collect(),
    });
    let mut req = tonic::Request::new(IstioCertificateRequest {
        csr: csr_pem.to_string(),
        validity_duration: 3600,
        metadata,
    });
    if let Some(t) = token {
        let v = format!("Bearer {t}")
            .parse()
            .map_err(|_| tonic::Status::internal("token is not a header value"))?;
        req.metadata_mut().insert("authorization", v);
    }
    req.metadata_mut().insert(
        "clusterid",
        tonic::metadata::MetadataValue::from_static("Kubernetes"),
    );
    Ok(client
        .create_certificate(req)
        .await?
        .into_inner()
        .cert_chain)
}

/// A TLS 1.3 client config with ALPN h2 that presents `cert` (if any) and accepts any server
/// certificate: for probing how the server treats a client, not for checking the server.
pub fn probing_client_config(
    cert: Option<&IssuedCert>,
) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyServer(provider)));
    let mut cfg = match cert {
        None => builder.with_no_client_auth(),
        Some(c) => {
            let (_, leaf_and_intermediates) = c.chain.split_last().context("empty chain")?;
            let mut chain = Vec::new();
            for pem in leaf_and_intermediates {
                chain.extend(mesh_identity::cert::parse_pem_certs(pem)?);
            }
            let key = PrivateKeyDer::from_pem_slice(c.key_pem.as_bytes()).context("parsing key")?;
            builder.with_client_auth_cert(chain, key)?
        }
    };
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(cfg))
}

/// Signs a fresh CSR for `identity` with `ca` (e.g. a foreign, self-signed CA).
pub fn issue_with(
    ca: &mesh_identity::ca::CertificateAuthority,
    identity: &Identity,
) -> anyhow::Result<IssuedCert> {
    let req = mesh_identity::csr::generate(identity)?;
    let signed = ca.sign_csr(
        &req.csr_pem,
        Duration::from_secs(3600),
        Duration::from_secs(3600),
    )?;
    Ok(IssuedCert {
        key_pem: req.key_pem,
        chain: signed.cert_chain,
    })
}

#[derive(Debug)]
struct AcceptAnyServer(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

//! rustls configurations for HBONE mTLS, with Istio's SPIFFE verification rules.
//!
//! TLS 1.3 only, AES-GCM suites only, ALPN `h2`. The server requires a client certificate that
//! chains to our roots and carries a SPIFFE id in our trust domain; the client verifies the
//! server chain to our roots (no name check: there is no SNI) and requires the server's SPIFFE
//! id to be one of the expected identities.

use std::fmt;
use std::net::Ipv4Addr;
use std::sync::{Arc, OnceLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{verify_server_cert_signed_by_trust_anchor, ResolvesClientCert, Resumption};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ParsedCertificate, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, RootCertStore,
    SignatureScheme,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::cert::{der_spiffe_identities, WorkloadCert};
use crate::spiffe::Identity;

/// ALPN protocol for HBONE.
pub const ALPN_H2: &[u8] = b"h2";

/// Errors building TLS configurations.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// rustls refused the configuration (protocol versions, keys...).
    #[error("building rustls config failed: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client-certificate verifier could not be built (e.g. no usable roots).
    #[error("building client certificate verifier failed: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    /// A root certificate was rejected as a trust anchor.
    #[error("root certificate {index} cannot be used as a trust anchor: {reason}")]
    BadRoot {
        /// Position in the roots list.
        index: usize,
        /// webpki message.
        reason: String,
    },
    /// `client_config` was called with no acceptable server identity.
    #[error("no expected server identity given: every server would be refused")]
    NoExpectedIdentity,
}

/// The ring provider restricted to TLS13_AES_256_GCM_SHA384 and TLS13_AES_128_GCM_SHA256
/// (Istio's list; no ChaCha20). Key exchange groups are ring's defaults.
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| {
            use rustls::crypto::ring::{cipher_suite, default_provider};
            Arc::new(CryptoProvider {
                cipher_suites: vec![
                    cipher_suite::TLS13_AES_256_GCM_SHA384,
                    cipher_suite::TLS13_AES_128_GCM_SHA256,
                ],
                ..default_provider()
            })
        })
        .clone()
}

/// The dummy server name to pass to tokio_rustls connect (`0.0.0.0`; ignored by our verifier,
/// and not sent since SNI is disabled).
pub fn server_name() -> ServerName<'static> {
    ServerName::IpAddress(Ipv4Addr::UNSPECIFIED.into())
}

fn root_store(cert: &WorkloadCert) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    for (index, root) in cert.roots().iter().enumerate() {
        store.add(root.clone()).map_err(|e| TlsError::BadRoot {
            index,
            reason: e.to_string(),
        })?;
    }
    Ok(store)
}

/// Server config for an HBONE listener presenting `cert`.
///
/// TLS 1.3 only, AES-GCM suites only (ring), ALPN "h2"; client cert REQUIRED, verified to
/// `cert.roots()` (webpki) AND its SPIFFE trust domain must equal `cert`'s trust domain.
pub fn server_config(cert: &WorkloadCert) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = provider();
    let roots = Arc::new(root_store(cert)?);
    let webpki = WebPkiClientVerifier::builder_with_provider(roots, provider.clone()).build()?;
    let verifier = TrustDomainVerifier {
        inner: webpki,
        trust_domain: cert.identity().trust_domain.clone(),
    };
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_cert_resolver(Arc::new(FixedCert(cert.certified_key())));
    cfg.alpn_protocols = vec![ALPN_H2.to_vec()];
    // Our clients never resume (Resumption::disabled), so tickets would be wasted work.
    cfg.send_tls13_tickets = 0;
    cfg.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    Ok(Arc::new(cfg))
}

/// Client config presenting `cert` and accepting a server whose leaf SPIFFE URI SANs contain
/// one of `expected`, with a chain valid to `cert.roots()`. No SNI, resumption disabled,
/// ALPN "h2".
pub fn client_config(
    cert: &WorkloadCert,
    expected: &[Identity],
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    if expected.is_empty() {
        return Err(TlsError::NoExpectedIdentity);
    }
    let provider = provider();
    let verifier = IdentityVerifier {
        roots: root_store(cert)?,
        expected: expected.to_vec(),
        algs: provider.signature_verification_algorithms,
    };
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_cert_resolver(Arc::new(FixedCert(cert.certified_key())));
    cfg.alpn_protocols = vec![ALPN_H2.to_vec()];
    cfg.enable_sni = false;
    cfg.resumption = Resumption::disabled();
    Ok(Arc::new(cfg))
}

/// Always presents the same key and chain (one workload per config).
#[derive(Debug)]
struct FixedCert(Arc<CertifiedKey>);

impl ResolvesServerCert for FixedCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

impl ResolvesClientCert for FixedCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Why a peer's identity was refused (surfaced in rustls errors and logs).
#[derive(thiserror::Error)]
enum PeerIdentityError {
    #[error("peer certificate has no SPIFFE id in trust domain {expected:?} (found {found:?})")]
    TrustDomain {
        expected: String,
        found: Vec<String>,
    },
    #[error("server identity {found:?} is not one of the expected {expected:?}")]
    NotExpected {
        expected: Vec<String>,
        found: Vec<String>,
    },
}

// rustls renders `CertificateError::Other` with `{:?}`; make that the readable message.
impl fmt::Debug for PeerIdentityError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

fn identity_failure(e: PeerIdentityError) -> rustls::Error {
    tracing::debug!(error = %e, "peer certificate refused");
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(e))))
}

fn strings(ids: &[Identity]) -> Vec<String> {
    ids.iter().map(ToString::to_string).collect()
}

/// webpki client verification plus "a SPIFFE id in our trust domain".
struct TrustDomainVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    trust_domain: String,
}

impl fmt::Debug for TrustDomainVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrustDomainVerifier")
            .field("trust_domain", &self.trust_domain)
            .finish_non_exhaustive()
    }
}

impl ClientCertVerifier for TrustDomainVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.inner
            .verify_client_cert(end_entity, intermediates, now)?;
        let ids = der_spiffe_identities(end_entity);
        if ids.iter().any(|id| id.trust_domain == self.trust_domain) {
            Ok(ClientCertVerified::assertion())
        } else {
            Err(identity_failure(PeerIdentityError::TrustDomain {
                expected: self.trust_domain.clone(),
                found: strings(&ids),
            }))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// webpki chain validation to our roots (EKU serverAuth, no name check) plus
/// "leaf SPIFFE ids include one of the expected identities".
struct IdentityVerifier {
    roots: RootCertStore,
    expected: Vec<Identity>,
    algs: WebPkiSupportedAlgorithms,
}

impl fmt::Debug for IdentityVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdentityVerifier")
            .field("expected", &strings(&self.expected))
            .finish_non_exhaustive()
    }
}

impl ServerCertVerifier for IdentityVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let parsed = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.roots,
            intermediates,
            now,
            self.algs.all,
        )?;
        let ids = der_spiffe_identities(end_entity);
        if ids.iter().any(|id| self.expected.contains(id)) {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(identity_failure(PeerIdentityError::NotExpected {
                expected: strings(&self.expected),
                found: strings(&ids),
            }))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// Verifies `chain` (leaf first) to `roots` now, as our client verifier does (minus identity).
pub(crate) fn verify_chain(
    chain: &[CertificateDer<'static>],
    roots: &[CertificateDer<'static>],
) -> Result<(), rustls::Error> {
    let mut store = RootCertStore::empty();
    for root in roots {
        store.add(root.clone())?;
    }
    let leaf = chain
        .first()
        .ok_or(rustls::Error::NoCertificatesPresented)?;
    let parsed = ParsedCertificate::try_from(leaf)?;
    verify_server_cert_signed_by_trust_anchor(
        &parsed,
        &store,
        &chain[1..],
        UnixTime::now(),
        provider().signature_verification_algorithms.all,
    )
}

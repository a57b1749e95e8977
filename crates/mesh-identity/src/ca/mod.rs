//! A signing CA: either a self-signed root (created on first start and persisted) or a
//! plug-in CA in Istio's `cacerts` layout.

mod csr_check;
mod files;
mod signer;

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType, SerialNumber, PKCS_ECDSA_P256_SHA256,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, X509Certificate};

use self::signer::CaKey;
use crate::cert::{cert_to_pem, CertError, WorkloadCert};
use crate::spiffe::{Identity, IdentityError};

/// Leaf `notBefore` is back-dated by this much to tolerate clock skew between nodes.
const BACKDATE: Duration = Duration::from_secs(60);
/// Lifetime of a self-signed root (Istio's default is 10 years).
const ROOT_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// Errors loading a CA or signing with it.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// A file could not be read or written.
    #[error("{op} {path}: {source}")]
    Io {
        /// "reading", "writing", ...
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// OS error.
        #[source]
        source: std::io::Error,
    },
    /// Only one of the root certificate / root key exists in the state directory.
    #[error(
        "{present} exists but {missing} does not; restore the missing file, or delete both to \
         create a new root (every certificate issued by the old root will stop being trusted)"
    )]
    PartialState {
        /// The file that exists.
        present: PathBuf,
        /// The file that is missing.
        missing: PathBuf,
    },
    /// A required plug-in CA file is missing.
    #[error("plug-in CA file {0} is missing (expected ca-cert.pem, ca-key.pem, root-cert.pem, cert-chain.pem)")]
    MissingFile(PathBuf),
    /// A certificate file is not valid PEM/X.509.
    #[error("{path}: {reason}")]
    BadCert {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A private key file is unusable.
    #[error("{path}: {reason}")]
    BadKey {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The CA's files are individually valid but do not form a working CA.
    #[error("CA configuration is inconsistent: {0}")]
    Inconsistent(String),
    /// The CSR is not a parseable PEM PKCS#10 request.
    #[error("invalid CSR: {0}")]
    CsrParse(String),
    /// The CSR's self-signature does not verify (not signed by the key it carries, or altered).
    #[error(
        "CSR signature does not verify ({0}); the request was altered or not signed by its own key"
    )]
    CsrSignature(String),
    /// The CSR's public key type/size is not accepted.
    #[error("CSR public key refused: {0}")]
    CsrKey(String),
    /// The CSR's SANs are not exactly one URI SAN.
    #[error("CSR subject alternative names refused: {0}")]
    CsrSan(String),
    /// The CSR's URI SAN is not an Istio SPIFFE id.
    #[error("CSR URI SAN refused: {0}")]
    CsrIdentity(#[from] IdentityError),
    /// The identity belongs to another trust domain.
    #[error("identity {identity} is not in this CA's trust domain {expected:?}")]
    WrongTrustDomain {
        /// The requested identity.
        identity: String,
        /// Our trust domain.
        expected: String,
    },
    /// A requested SAN could not be encoded.
    #[error("invalid SAN {0:?}")]
    BadSan(String),
    /// Certificate generation failed inside rcgen/ring.
    #[error("signing failed: {0}")]
    Sign(#[from] rcgen::Error),
    /// The operating system's random generator failed.
    #[error("random number generator failed")]
    Random,
    /// An issued certificate could not be turned into a workload bundle (internal error).
    #[error("issued certificate is unusable: {0}")]
    Cert(#[from] CertError),
}

/// A certificate signed from a CSR.
#[derive(Clone, Debug)]
pub struct SignedCert {
    /// The identity certified (the CSR's URI SAN).
    pub identity: Identity,
    /// PEM certificates: leaf, intermediates, and last the root(s) (as `CreateCertificate` returns).
    pub cert_chain: Vec<String>,
    /// Leaf `notAfter`.
    pub not_after: SystemTime,
}

/// A signing CA: either a self-signed root (created on first start and persisted) or a
/// plug-in CA in Istio's cacerts layout.
pub struct CertificateAuthority {
    trust_domain: String,
    issuer: Issuer<'static, CaKey>,
    /// Certificates between a leaf and the roots (signing cert first); empty for a root CA.
    intermediates: Vec<CertificateDer<'static>>,
    roots: Vec<CertificateDer<'static>>,
    /// `notAfter` of the signing certificate; no leaf outlives it.
    signer_not_after: SystemTime,
}

impl fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("trust_domain", &self.trust_domain)
            .field("intermediates", &self.intermediates.len())
            .field("roots", &self.roots.len())
            .field("signer_not_after", &self.signer_not_after)
            .finish_non_exhaustive()
    }
}

impl CertificateAuthority {
    /// A new in-memory self-signed root CA (tests).
    pub fn self_signed(trust_domain: &str) -> Result<Self, CaError> {
        let (ca, _key) = Self::generate_root(trust_domain)?;
        Ok(ca)
    }

    /// Loads `root-cert.pem` / `root-key.pem` from `state_dir`, or creates a new self-signed root
    /// there (key file mode 0600) when neither exists.
    pub fn load_or_create(state_dir: &Path, trust_domain: &str) -> Result<Self, CaError> {
        files::load_or_create(state_dir, trust_domain)
    }

    /// Loads a plug-in CA in Istio's cacerts layout: `ca-cert.pem` (signing cert), `ca-key.pem`,
    /// `root-cert.pem` (trust anchors), `cert-chain.pem` (from ca-cert up to the root).
    pub fn load_plugin(cacerts_dir: &Path, trust_domain: &str) -> Result<Self, CaError> {
        files::load_plugin(cacerts_dir, trust_domain)
    }

    /// Our SPIFFE trust domain.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The root certificate(s) as concatenated PEM.
    pub fn roots_pem(&self) -> String {
        self.roots.iter().map(|r| cert_to_pem(r)).collect()
    }

    /// Checks the CSR signature, exactly one URI SAN which is a SPIFFE id in our trust domain;
    /// validity = min(requested, max) (requested 0 => max), and never past the signing cert.
    pub fn sign_csr(
        &self,
        csr_pem: &str,
        requested: Duration,
        max: Duration,
    ) -> Result<SignedCert, CaError> {
        let csr = csr_check::check(csr_pem, &self.trust_domain)?;
        let validity = if requested.is_zero() {
            max
        } else {
            requested.min(max)
        };
        let now = SystemTime::now();
        let (leaf, not_after) =
            self.sign_leaf(&csr.identity, &csr.public_key, now, now + validity)?;
        let mut cert_chain = Vec::with_capacity(self.intermediates.len() + 2);
        cert_chain.push(cert_to_pem(&leaf));
        cert_chain.extend(self.intermediates.iter().map(|c| cert_to_pem(c)));
        cert_chain.push(self.roots_pem());
        tracing::debug!(identity = %csr.identity, ?validity, "signed workload certificate");
        Ok(SignedCert {
            identity: csr.identity,
            cert_chain,
            not_after,
        })
    }

    /// Identity of a CSR without signing (for authorization before signing); same checks as
    /// [`sign_csr`](Self::sign_csr).
    pub fn csr_identity(&self, csr_pem: &str) -> Result<Identity, CaError> {
        Ok(csr_check::check(csr_pem, &self.trust_domain)?.identity)
    }

    /// Issues a fresh key + certificate for `identity` (tests; istiod's own identity).
    pub fn issue(&self, identity: &Identity, validity: Duration) -> Result<WorkloadCert, CaError> {
        let now = SystemTime::now();
        self.issue_between(identity, now, now + validity)
    }

    /// Like [`issue`](Self::issue) with an explicit validity window (`not_before` is still
    /// back-dated by a minute); lets tests create expired or not-yet-valid certificates.
    pub fn issue_between(
        &self,
        identity: &Identity,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<WorkloadCert, CaError> {
        if identity.trust_domain != self.trust_domain {
            return Err(CaError::WrongTrustDomain {
                identity: identity.to_string(),
                expected: self.trust_domain.clone(),
            });
        }
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let (leaf, _) = self.sign_leaf(identity, &key, not_before, not_after)?;
        let mut chain = vec![leaf];
        chain.extend(self.intermediates.iter().cloned());
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        Ok(WorkloadCert::from_der(key_der, chain, self.roots.clone())?)
    }

    /// A TLS server certificate with DNS + IP SANs (istiod's 15012 listener), returned as
    /// (chain_pem = leaf + intermediates, without the roots; PKCS#8 key_pem).
    pub fn issue_server_cert(
        &self,
        dns_names: &[String],
        ips: &[IpAddr],
        validity: Duration,
    ) -> Result<(Vec<String>, String), CaError> {
        let mut sans = Vec::with_capacity(dns_names.len() + ips.len());
        for name in dns_names {
            let dns = name
                .clone()
                .try_into()
                .map_err(|_| CaError::BadSan(name.clone()))?;
            sans.push(SanType::DnsName(dns));
        }
        sans.extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = leaf_params(sans);
        if let Some(first) = dns_names.first() {
            // Some TLS clients still log/inspect the CN; the SANs are what is verified.
            params
                .distinguished_name
                .push(DnType::CommonName, first.as_str());
        }
        let now = SystemTime::now();
        let (leaf, _) = self.sign_with_params(params, &key, now, now + validity)?;
        let mut chain = vec![cert_to_pem(&leaf)];
        chain.extend(self.intermediates.iter().map(|c| cert_to_pem(c)));
        Ok((chain, key.serialize_pem()))
    }

    fn sign_leaf(
        &self,
        identity: &Identity,
        public_key: &impl PublicKeyData,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<(CertificateDer<'static>, SystemTime), CaError> {
        let uri = identity.to_string();
        let san = uri.clone().try_into().map_err(|_| CaError::BadSan(uri))?;
        let params = leaf_params(vec![SanType::URI(san)]);
        self.sign_with_params(params, public_key, not_before, not_after)
    }

    fn sign_with_params(
        &self,
        mut params: CertificateParams,
        public_key: &impl PublicKeyData,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<(CertificateDer<'static>, SystemTime), CaError> {
        // X.509 times have whole-second precision; truncate so the returned not_after is exactly
        // what the certificate says.
        let not_after = whole_seconds(not_after.min(self.signer_not_after));
        params.not_before = OffsetDateTime::from(whole_seconds(not_before - BACKDATE));
        params.not_after = OffsetDateTime::from(not_after);
        params.serial_number = Some(random_serial()?);
        let cert = params.signed_by(public_key, &self.issuer)?;
        Ok((cert.der().clone(), not_after))
    }

    /// Generates a new self-signed root; returns the CA and the key (for persisting).
    fn generate_root(trust_domain: &str) -> Result<(Self, String), CaError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        // Istio's self-signed root uses O=<trust domain>.
        dn.push(DnType::OrganizationName, trust_domain);
        dn.push(DnType::CommonName, "ambient-rs root CA");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = SystemTime::now();
        params.not_before = OffsetDateTime::from(now - BACKDATE);
        params.not_after = OffsetDateTime::from(now + ROOT_VALIDITY);
        params.serial_number = Some(random_serial()?);
        let cert = params.self_signed(&key)?;
        let key_pem = key.serialize_pem();
        let root = cert.der().clone();
        let ca_key = load_key(&key_pem, &root, Path::new("<generated root key>"))?;
        let ca = Self::from_parts(trust_domain, root.clone(), ca_key, Vec::new(), vec![root])?;
        Ok((ca, key_pem))
    }

    /// Assembles a CA and checks it end to end: the signing cert is a CA and a probe leaf
    /// verifies through `intermediates` to `roots` with webpki.
    fn from_parts(
        trust_domain: &str,
        signing_cert: CertificateDer<'static>,
        key: CaKey,
        intermediates: Vec<CertificateDer<'static>>,
        roots: Vec<CertificateDer<'static>>,
    ) -> Result<Self, CaError> {
        let (_, parsed) = X509Certificate::from_der(&signing_cert).map_err(|e| {
            CaError::Inconsistent(format!("signing certificate does not parse: {e}"))
        })?;
        if !parsed.is_ca() {
            return Err(CaError::Inconsistent(
                "the signing certificate is not a CA (basicConstraints CA:TRUE missing)".into(),
            ));
        }
        let signer_not_after = SystemTime::from(parsed.validity().not_after.to_datetime());
        let issuer = Issuer::from_ca_cert_der(&signing_cert, key).map_err(|e| {
            CaError::Inconsistent(format!(
                "cannot use the signing certificate as issuer ({e}); its subject must not use \
                 multi-valued RDNs or unusual string types"
            ))
        })?;
        let ca = CertificateAuthority {
            trust_domain: trust_domain.to_string(),
            issuer,
            intermediates,
            roots,
            signer_not_after,
        };
        ca.self_check()?;
        Ok(ca)
    }

    /// Issues a short-lived probe certificate and verifies it like a peer would, so a broken
    /// chain or an expired CA fails at start-up instead of on every handshake.
    fn self_check(&self) -> Result<(), CaError> {
        let probe = Identity::new(self.trust_domain.clone(), "istio-system", "ca-self-check");
        let now = SystemTime::now();
        let cert = self.issue_between(&probe, now, now + Duration::from_secs(300))?;
        crate::tls::verify_chain(cert.chain(), cert.roots()).map_err(|e| {
            CaError::Inconsistent(format!(
                "a certificate issued by this CA does not verify against the roots: {e}"
            ))
        })
    }
}

/// Loads the PEM private key for `cert`, attributing errors to `path`.
fn load_key(key_pem: &str, cert: &CertificateDer<'_>, path: &Path) -> Result<CaKey, CaError> {
    let (_, parsed) = X509Certificate::from_der(cert)
        .map_err(|e| CaError::Inconsistent(format!("signing certificate does not parse: {e}")))?;
    CaKey::load(key_pem, &parsed).map_err(|reason| CaError::BadKey {
        path: path.to_path_buf(),
        reason,
    })
}

/// Common leaf parameters: empty subject (so the SAN extension is critical, as in Istio),
/// not a CA, key usage digitalSignature + keyEncipherment, EKU serverAuth + clientAuth.
fn leaf_params(sans: Vec<SanType>) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = sans;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    params
}

fn whole_seconds(t: SystemTime) -> SystemTime {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => SystemTime::UNIX_EPOCH + Duration::from_secs(d.as_secs()),
        Err(_) => t,
    }
}

/// 128-bit positive random serial (RFC 5280 allows up to 20 octets).
fn random_serial() -> Result<SerialNumber, CaError> {
    let mut bytes = [0u8; 16];
    crate::tls::provider()
        .secure_random
        .fill(&mut bytes)
        .map_err(|_| CaError::Random)?;
    // Keep the INTEGER positive and minimally encoded: top bit clear, first octet non-zero.
    bytes[0] = (bytes[0] & 0x7f) | 0x01;
    Ok(SerialNumber::from_slice(&bytes))
}

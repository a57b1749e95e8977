//! Workload certificate bundles (key + chain + roots) and certificate helpers.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

use crate::spiffe::Identity;

/// Errors building or parsing workload certificates.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// PEM text could not be decoded.
    #[error("invalid PEM in {what}: {reason}")]
    Pem {
        /// Which input (e.g. "certificate chain", "private key").
        what: &'static str,
        /// Decoder message.
        reason: String,
    },
    /// PEM text contained no item of the expected kind.
    #[error("no {0} found in PEM input (expected a \"BEGIN CERTIFICATE\" / \"BEGIN PRIVATE KEY\" block)")]
    Empty(&'static str),
    /// The chain must have a leaf and a last element holding the root(s).
    #[error("certificate chain has {0} element(s); expected the leaf first and the root(s) last")]
    ChainTooShort(usize),
    /// A certificate is not valid DER X.509.
    #[error("certificate {index} in the chain is not a valid X.509 certificate: {reason}")]
    BadCertificate {
        /// Position in the flattened chain (0 = leaf).
        index: usize,
        /// Parser message.
        reason: String,
    },
    /// The leaf has no URI SAN that parses as an Istio SPIFFE id.
    #[error("leaf certificate has no URI SAN of the form spiffe://<td>/ns/<ns>/sa/<sa>")]
    NoSpiffeIdentity,
    /// The private key could not be loaded or does not match the leaf certificate.
    #[error("private key is unusable: {0}")]
    Key(String),
}

/// A workload's key and certificate chain plus the roots it trusts.
///
/// Cheap to clone (`Arc` inside). `Debug` never prints the private key.
#[derive(Clone)]
pub struct WorkloadCert {
    inner: Arc<Inner>,
}

struct Inner {
    identity: Identity,
    /// Leaf + intermediates.
    chain: Vec<CertificateDer<'static>>,
    roots: Vec<CertificateDer<'static>>,
    not_before: SystemTime,
    not_after: SystemTime,
    serial_hex: String,
    /// Parsed signing key + chain, ready for rustls resolvers.
    certified: Arc<CertifiedKey>,
}

impl fmt::Debug for WorkloadCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkloadCert")
            .field("identity", &self.inner.identity.to_string())
            .field("serial", &self.inner.serial_hex)
            .field("not_before", &self.inner.not_before)
            .field("not_after", &self.inner.not_after)
            .field("chain_len", &self.inner.chain.len())
            .field("roots", &self.inner.roots.len())
            .finish_non_exhaustive()
    }
}

impl WorkloadCert {
    /// Builds a bundle from a PKCS#8 (or SEC1/PKCS#1) PEM key and a chain as returned by
    /// `CreateCertificate`: leaf first, intermediates, and the last element holding the
    /// root(s) (possibly several PEM blocks concatenated).
    pub fn from_pem(key_pem: &str, cert_chain: &[String]) -> Result<Self, CertError> {
        let Some((roots_pem, chain_pems)) = cert_chain.split_last() else {
            return Err(CertError::ChainTooShort(0));
        };
        if chain_pems.is_empty() {
            return Err(CertError::ChainTooShort(cert_chain.len()));
        }
        let mut chain = Vec::new();
        for pem in chain_pems {
            chain.extend(parse_pem_certs(pem)?);
        }
        let roots = parse_pem_certs(roots_pem)?;
        let key =
            PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| CertError::Pem {
                what: "private key",
                reason: e.to_string(),
            })?;
        Self::from_der(key, chain, roots)
    }

    /// Builds a bundle from DER parts: `chain` is leaf + intermediates, `roots` the trust anchors.
    pub fn from_der(
        key: PrivateKeyDer<'static>,
        chain: Vec<CertificateDer<'static>>,
        roots: Vec<CertificateDer<'static>>,
    ) -> Result<Self, CertError> {
        let leaf_der = chain.first().ok_or(CertError::ChainTooShort(0))?;
        if roots.is_empty() {
            return Err(CertError::Empty("root certificate"));
        }
        let leaf = parse_x509(leaf_der, 0)?;
        for (i, c) in chain.iter().chain(roots.iter()).enumerate().skip(1) {
            parse_x509(c, i)?;
        }
        let identity = spiffe_identities(&leaf)
            .into_iter()
            .next()
            .ok_or(CertError::NoSpiffeIdentity)?;
        let validity = leaf.validity();
        let not_before = SystemTime::from(validity.not_before.to_datetime());
        let not_after = SystemTime::from(validity.not_after.to_datetime());
        let serial_hex = hex(leaf.raw_serial());
        drop(leaf);

        let certified = certified_key(chain.clone(), key)?;
        Ok(WorkloadCert {
            inner: Arc::new(Inner {
                identity,
                chain,
                roots,
                not_before,
                not_after,
                serial_hex,
                certified,
            }),
        })
    }

    /// The identity of the leaf (its first SPIFFE URI SAN).
    pub fn identity(&self) -> &Identity {
        &self.inner.identity
    }

    /// Leaf + intermediates, as presented in TLS handshakes.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.inner.chain
    }

    /// Trust anchors for verifying peers.
    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.inner.roots
    }

    /// Leaf `notBefore`.
    pub fn not_before(&self) -> SystemTime {
        self.inner.not_before
    }

    /// Leaf `notAfter`.
    pub fn not_after(&self) -> SystemTime {
        self.inner.not_after
    }

    /// When to renew: half-way through the leaf's validity (Istio's rule).
    pub fn refresh_at(&self) -> SystemTime {
        let life = self
            .inner
            .not_after
            .duration_since(self.inner.not_before)
            .unwrap_or(Duration::ZERO);
        self.inner.not_before + life / 2
    }

    /// Leaf serial number as lowercase hex.
    pub fn serial_hex(&self) -> String {
        self.inner.serial_hex.clone()
    }

    /// Leaf + intermediates as PEM strings (for `/config_dump`).
    pub fn chain_pem(&self) -> Vec<String> {
        self.inner.chain.iter().map(|c| cert_to_pem(c)).collect()
    }

    /// Roots as PEM strings (for `/config_dump`).
    pub fn roots_pem(&self) -> Vec<String> {
        self.inner.roots.iter().map(|c| cert_to_pem(c)).collect()
    }

    /// The parsed key and chain, for rustls certificate resolvers.
    pub(crate) fn certified_key(&self) -> Arc<CertifiedKey> {
        self.inner.certified.clone()
    }
}

/// The ring provider with our restricted suites; also used to load keys.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    crate::tls::provider()
}

fn certified_key(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<CertifiedKey>, CertError> {
    let signing = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| CertError::Key(e.to_string()))?;
    let certified = CertifiedKey::new(chain, signing);
    certified
        .keys_match()
        .map_err(|e| CertError::Key(format!("does not match the leaf certificate ({e})")))?;
    Ok(Arc::new(certified))
}

fn parse_x509<'a>(
    der: &'a CertificateDer<'_>,
    index: usize,
) -> Result<X509Certificate<'a>, CertError> {
    match X509Certificate::from_der(der) {
        Ok(([], cert)) => Ok(cert),
        Ok(_) => Err(CertError::BadCertificate {
            index,
            reason: "trailing data after certificate".into(),
        }),
        Err(e) => Err(CertError::BadCertificate {
            index,
            reason: e.to_string(),
        }),
    }
}

/// All URI SANs of `cert` that parse as Istio SPIFFE ids, in certificate order.
pub(crate) fn spiffe_identities(cert: &X509Certificate<'_>) -> Vec<Identity> {
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::URI(uri) => Identity::parse(uri).ok(),
            _ => None,
        })
        .collect()
}

/// SPIFFE identities of a DER certificate (empty if it does not parse).
pub(crate) fn der_spiffe_identities(der: &[u8]) -> Vec<Identity> {
    match X509Certificate::from_der(der) {
        Ok((_, cert)) => spiffe_identities(&cert),
        Err(_) => Vec::new(),
    }
}

/// First URI SAN of the leaf that parses as a SPIFFE id.
pub fn peer_identity(chain: &[CertificateDer<'_>]) -> Option<Identity> {
    der_spiffe_identities(chain.first()?).into_iter().next()
}

/// Parses every `CERTIFICATE` block of `pem`; errors if there is none or one is malformed.
pub fn parse_pem_certs(pem: &str) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CertError::Pem {
            what: "certificate",
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(CertError::Empty("certificate"));
    }
    Ok(certs)
}

/// PEM-encodes a DER certificate.
pub(crate) fn cert_to_pem(der: &[u8]) -> String {
    to_pem("CERTIFICATE", der)
}

/// PEM-encodes DER bytes with 64-column lines.
pub(crate) fn to_pem(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::with_capacity(b64.len() + b64.len() / 64 + 64);
    out.push_str("-----BEGIN ");
    out.push_str(label);
    out.push_str("-----\n");
    for line in b64.as_bytes().chunks(64) {
        // base64 output is ASCII, so every chunk is valid UTF-8.
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END ");
    out.push_str(label);
    out.push_str("-----\n");
    out
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

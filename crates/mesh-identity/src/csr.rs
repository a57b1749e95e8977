//! Key + certificate signing request generation for a workload identity.

use std::fmt;

use rcgen::{CertificateParams, DistinguishedName, KeyPair, SanType, PKCS_ECDSA_P256_SHA256};

use crate::spiffe::Identity;

/// Errors generating a CSR.
#[derive(Debug, thiserror::Error)]
pub enum CsrError {
    /// The identity cannot be encoded as a URI SAN (non-ASCII characters).
    #[error("identity {identity} cannot be encoded as a URI SAN: {reason}")]
    BadIdentity {
        /// The identity.
        identity: String,
        /// Encoder message.
        reason: String,
    },
    /// Key generation or signing failed (crypto library error).
    #[error("generating key or CSR failed: {0}")]
    Crypto(#[from] rcgen::Error),
}

/// A freshly generated ECDSA P-256 key and the PEM CSR for it.
///
/// `Debug` does not print the key.
#[derive(Clone)]
pub struct CertRequest {
    /// PKCS#8 PEM private key (`BEGIN PRIVATE KEY`).
    pub key_pem: String,
    /// PEM CSR (`BEGIN CERTIFICATE REQUEST`).
    pub csr_pem: String,
}

impl fmt::Debug for CertRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertRequest")
            .field("key_pem", &"<redacted>")
            .field("csr_pem", &self.csr_pem)
            .finish()
    }
}

/// ECDSA P-256 key + CSR whose only SAN is the identity's URI.
///
/// The subject is empty, so the SAN extension is marked critical (RFC 5280 4.2.1.6), as in
/// ztunnel's CSRs.
pub fn generate(identity: &Identity) -> Result<CertRequest, CsrError> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let uri = identity.to_string();
    let san = uri
        .clone()
        .try_into()
        .map_err(|e: rcgen::Error| CsrError::BadIdentity {
            identity: uri.clone(),
            reason: e.to_string(),
        })?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = vec![SanType::URI(san)];
    let csr = params.serialize_request(&key)?;
    Ok(CertRequest {
        key_pem: key.serialize_pem(),
        csr_pem: csr.pem()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::prelude::*;

    #[test]
    fn csr_has_only_the_uri_san() {
        let id = Identity::new("cluster.local", "ns1", "sa1");
        let req = generate(&id).unwrap();
        assert!(req.key_pem.contains("BEGIN PRIVATE KEY"));
        assert!(!format!("{req:?}").contains("PRIVATE KEY"));
        let (_, pem) = x509_parser::pem::parse_x509_pem(req.csr_pem.as_bytes()).unwrap();
        let (_, csr) = X509CertificationRequest::from_der(&pem.contents).unwrap();
        csr.verify_signature().unwrap();
        let mut sans = Vec::new();
        for ext in csr.requested_extensions().unwrap() {
            if let ParsedExtension::SubjectAlternativeName(san) = ext {
                sans.extend(san.general_names.iter().map(|n| format!("{n:?}")));
            }
        }
        assert_eq!(sans, vec![format!("URI({:?})", id.to_string())]);
    }
}

//! Parsing and validating CSRs before signing: signature, key type, exactly one SPIFFE URI SAN.

use rcgen::{PublicKeyData, SignatureAlgorithm};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateSigningRequestDer;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_PKCS1_RSAENCRYPTION,
    OID_PKCS1_SHA1WITHRSA, OID_SHA1_WITH_RSA, OID_SIG_ED25519,
};
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;

use super::CaError;
use crate::spiffe::Identity;

/// Smallest RSA modulus we sign for (NIST / Istio minimum).
const MIN_RSA_BITS: usize = 2048;

/// The subject public key of a verified CSR, in the form rcgen needs to certify it.
#[derive(Debug)]
pub(super) struct CsrPublicKey {
    /// Raw `subjectPublicKey` BIT STRING contents.
    raw: Vec<u8>,
    /// Determines the SPKI algorithm identifier rcgen writes (curve / rsaEncryption / Ed25519).
    alg: &'static SignatureAlgorithm,
}

impl PublicKeyData for CsrPublicKey {
    fn der_bytes(&self) -> &[u8] {
        &self.raw
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        self.alg
    }
}

/// A CSR that passed every check.
#[derive(Debug)]
pub(super) struct CheckedCsr {
    pub identity: Identity,
    pub public_key: CsrPublicKey,
}

/// Parses `csr_pem`, verifies its self-signature, checks the key type and requires exactly one
/// SAN, a URI that is a SPIFFE id in `trust_domain`.
pub(super) fn check(csr_pem: &str, trust_domain: &str) -> Result<CheckedCsr, CaError> {
    let der = CertificateSigningRequestDer::from_pem_slice(csr_pem.as_bytes()).map_err(|e| {
        CaError::CsrParse(format!(
            "no PEM \"CERTIFICATE REQUEST\" block could be decoded ({e})"
        ))
    })?;
    let csr = match X509CertificationRequest::from_der(der.as_ref()) {
        Ok(([], csr)) => csr,
        Ok(_) => return Err(CaError::CsrParse("trailing data after the CSR".into())),
        Err(e) => return Err(CaError::CsrParse(format!("not a PKCS#10 request: {e}"))),
    };
    // x509-parser would verify SHA-1 signatures ("legacy use"); a CA should not accept them.
    let sig_alg = &csr.signature_algorithm.algorithm;
    if *sig_alg == OID_PKCS1_SHA1WITHRSA || *sig_alg == OID_SHA1_WITH_RSA {
        return Err(CaError::CsrSignature(
            "SHA-1 signatures are not accepted; sign the CSR with SHA-256".into(),
        ));
    }
    // Proof of possession: the request must be signed by the key it asks us to certify.
    // (x509-parser's "verify" feature, backed by ring.)
    csr.verify_signature()
        .map_err(|e| CaError::CsrSignature(e.to_string()))?;

    let public_key = public_key(&csr)?;
    let uri = single_uri_san(&csr)?;
    let identity = Identity::parse(&uri)?;
    if identity.trust_domain != trust_domain {
        return Err(CaError::WrongTrustDomain {
            identity: identity.to_string(),
            expected: trust_domain.to_string(),
        });
    }
    Ok(CheckedCsr {
        identity,
        public_key,
    })
}

fn public_key(csr: &X509CertificationRequest<'_>) -> Result<CsrPublicKey, CaError> {
    let spki = &csr.certification_request_info.subject_pki;
    let oid = &spki.algorithm.algorithm;
    let raw = spki.subject_public_key.data.to_vec();
    let alg: &'static SignatureAlgorithm = if *oid == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok());
        match curve {
            Some(c) if c == OID_EC_P256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            Some(c) if c == OID_NIST_EC_P384 => &rcgen::PKCS_ECDSA_P384_SHA384,
            other => {
                return Err(CaError::CsrKey(format!(
                    "unsupported EC curve {}; use P-256 or P-384",
                    other.map_or_else(|| "<missing>".to_string(), |c| c.to_id_string())
                )))
            }
        }
    } else if *oid == OID_PKCS1_RSAENCRYPTION {
        let bits = match spki.parsed() {
            Ok(PublicKey::RSA(rsa)) => {
                let m = rsa.modulus;
                let start = m.iter().position(|b| *b != 0).unwrap_or(m.len());
                (m.len() - start) * 8
            }
            _ => 0,
        };
        if bits < MIN_RSA_BITS {
            return Err(CaError::CsrKey(format!(
                "RSA key of about {bits} bits is too small; at least {MIN_RSA_BITS} required"
            )));
        }
        &rcgen::PKCS_RSA_SHA256
    } else if *oid == OID_SIG_ED25519 {
        &rcgen::PKCS_ED25519
    } else {
        return Err(CaError::CsrKey(format!(
            "unsupported public key algorithm {}; use ECDSA P-256",
            oid.to_id_string()
        )));
    };
    Ok(CsrPublicKey { raw, alg })
}

fn single_uri_san(csr: &X509CertificationRequest<'_>) -> Result<String, CaError> {
    let mut names: Vec<&GeneralName<'_>> = Vec::new();
    if let Some(exts) = csr.requested_extensions() {
        for ext in exts {
            if let ParsedExtension::SubjectAlternativeName(san) = ext {
                names.extend(san.general_names.iter());
            }
        }
    }
    match names.as_slice() {
        [] => Err(CaError::CsrSan(
            "the CSR has no subject alternative name; exactly one URI SAN (the SPIFFE id) is required".into(),
        )),
        [GeneralName::URI(uri)] => Ok((*uri).to_string()),
        [other] => Err(CaError::CsrSan(format!(
            "the only SAN must be a SPIFFE URI, got {}",
            describe(other)
        ))),
        many => Err(CaError::CsrSan(format!(
            "the CSR has {} SANs ({}); exactly one URI SAN (the SPIFFE id) is allowed",
            many.len(),
            many.iter().map(|n| describe(n)).collect::<Vec<_>>().join(", ")
        ))),
    }
}

fn describe(name: &GeneralName<'_>) -> String {
    match name {
        GeneralName::URI(u) => format!("URI {u}"),
        GeneralName::DNSName(d) => format!("DNS {d}"),
        GeneralName::IPAddress(_) => "an IP address".to_string(),
        GeneralName::RFC822Name(e) => format!("email {e}"),
        _ => "an unsupported name type".to_string(),
    }
}

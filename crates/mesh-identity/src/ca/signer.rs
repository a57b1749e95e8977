//! The CA signing key, backed by rustls' ring key loader so that plug-in keys in any common
//! PEM form work: PKCS#8 (`BEGIN PRIVATE KEY`), SEC1 (`BEGIN EC PRIVATE KEY`) and PKCS#1
//! (`BEGIN RSA PRIVATE KEY`, what older `openssl genrsa` and Istio's samples produce).

use std::fmt;
use std::sync::Arc;

use rcgen::{PublicKeyData, SignatureAlgorithm};
use rustls::SignatureScheme;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::PrivateKeyDer;
use x509_parser::certificate::X509Certificate;
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_PKCS1_RSAENCRYPTION,
    OID_SIG_ED25519,
};

/// A private key plus the public half and algorithm of the certificate it belongs to.
pub(super) struct CaKey {
    key: Arc<dyn rustls::sign::SigningKey>,
    scheme: SignatureScheme,
    alg: &'static SignatureAlgorithm,
    /// Raw subjectPublicKey of the signing certificate.
    public_raw: Vec<u8>,
}

impl fmt::Debug for CaKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CaKey")
            .field("scheme", &self.scheme)
            .finish_non_exhaustive()
    }
}

impl CaKey {
    /// Loads `key_pem` and binds it to `cert`, checking that they belong together.
    /// Errors are operator-facing strings (the caller adds the file name).
    pub(super) fn load(key_pem: &str, cert: &X509Certificate<'_>) -> Result<Self, String> {
        let der = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| {
            format!(
                "no unencrypted private key found ({e}); expected a PEM \"PRIVATE KEY\", \
                 \"EC PRIVATE KEY\" or \"RSA PRIVATE KEY\" block"
            )
        })?;
        let key = crate::tls::provider()
            .key_provider
            .load_private_key(der)
            .map_err(|e| {
                format!("unsupported private key ({e}); use ECDSA P-256/P-384, RSA or Ed25519")
            })?;
        let spki = cert.public_key();
        let (scheme, alg) = algorithm_for(spki)?;
        if let Some(key_spki) = key.public_key() {
            if key_spki.as_ref() != spki.raw {
                return Err("the private key does not match the certificate's public key".into());
            }
        }
        if key.choose_scheme(&[scheme]).is_none() {
            return Err(format!(
                "the private key cannot sign with {scheme:?}, the algorithm of the certificate's key"
            ));
        }
        Ok(CaKey {
            key,
            scheme,
            alg,
            public_raw: spki.subject_public_key.data.to_vec(),
        })
    }
}

fn algorithm_for(
    spki: &x509_parser::x509::SubjectPublicKeyInfo<'_>,
) -> Result<(SignatureScheme, &'static SignatureAlgorithm), String> {
    let oid = &spki.algorithm.algorithm;
    if *oid == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok());
        match curve {
            Some(c) if c == OID_EC_P256 => Ok((
                SignatureScheme::ECDSA_NISTP256_SHA256,
                &rcgen::PKCS_ECDSA_P256_SHA256,
            )),
            Some(c) if c == OID_NIST_EC_P384 => Ok((
                SignatureScheme::ECDSA_NISTP384_SHA384,
                &rcgen::PKCS_ECDSA_P384_SHA384,
            )),
            _ => Err("unsupported EC curve for the CA key; use P-256 or P-384".into()),
        }
    } else if *oid == OID_PKCS1_RSAENCRYPTION {
        Ok((SignatureScheme::RSA_PKCS1_SHA256, &rcgen::PKCS_RSA_SHA256))
    } else if *oid == OID_SIG_ED25519 {
        Ok((SignatureScheme::ED25519, &rcgen::PKCS_ED25519))
    } else {
        Err(format!(
            "unsupported CA key algorithm {}",
            oid.to_id_string()
        ))
    }
}

impl PublicKeyData for CaKey {
    fn der_bytes(&self) -> &[u8] {
        &self.public_raw
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        self.alg
    }
}

impl rcgen::SigningKey for CaKey {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        let signer = self
            .key
            .choose_scheme(&[self.scheme])
            .ok_or(rcgen::Error::RemoteKeyError)?;
        signer.sign(msg).map_err(|_| rcgen::Error::RemoteKeyError)
    }
}

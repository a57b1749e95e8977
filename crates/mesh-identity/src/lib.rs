//! SPIFFE identities, workload certificates, CSRs, rustls configs/verifiers and the CA
//! primitives of ambient-rs.
//!
//! - [`spiffe`]: `spiffe://<td>/ns/<ns>/sa/<sa>` identities.
//! - [`cert`]: a workload's key + chain + roots ([`cert::WorkloadCert`]).
//! - [`csr`]: key + CSR generation for an identity.
//! - [`tls`]: HBONE server/client rustls configs with Istio's SPIFFE verification.
//! - [`ca`]: a signing CA (self-signed root persisted on disk, or Istio plug-in `cacerts`).
//! - [`manager`]: the certificate manager of ztunnel and the waypoint (fetch, rotate at half
//!   life, serve TLS configs).

// Tests may unwrap; the workspace lint is for production code.
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod ca;
pub mod cert;
pub mod csr;
pub mod manager;
pub mod spiffe;
pub mod tls;

pub use ca::{CaError, CertificateAuthority, SignedCert};
pub use cert::{CertError, WorkloadCert};
pub use csr::{CertRequest, CsrError};
pub use spiffe::{Identity, IdentityError};
pub use tls::TlsError;

#[cfg(test)]
mod tests {
    fn assert_send_sync<T: Send + Sync + 'static>() {}

    /// The CA and bundles are shared across tasks (istiod's gRPC handlers, ztunnel's proxies).
    #[test]
    fn shared_types_are_send_and_sync() {
        assert_send_sync::<crate::CertificateAuthority>();
        assert_send_sync::<crate::WorkloadCert>();
        assert_send_sync::<crate::SignedCert>();
        assert_send_sync::<crate::CaError>();
        assert_send_sync::<crate::TlsError>();
    }
}

//! Certificate manager: one key, CSR and certificate per local workload identity, fetched from
//! the CA as soon as a workload of that identity is scheduled on this node, rotated at half
//! life, and forgotten when the last such workload goes.
//!
//! The manager is shared with the waypoint (`mesh_identity::manager`, tests there); this module
//! gives it ztunnel's metric names and builds the gRPC CA client from ztunnel's [`Config`].

use std::sync::Arc;
use std::time::Duration;

use mesh_identity::manager::{self, BoxFuture, CertMetrics};
use mesh_identity::spiffe::Identity;

use crate::config::Config;

pub use mesh_identity::manager::{CaClient, CertDump, CertError, CertInfo, Certs};

/// ztunnel's names for the manager's counters (dashboards use them).
pub const METRICS: CertMetrics = CertMetrics {
    issued: "ztunnel_certificates_issued_total",
    errors: "ztunnel_certificate_errors_total",
};

/// Per-identity certificates for the workloads on this node.
pub struct CertManager(manager::CertManager);

impl CertManager {
    /// `ttl` is the validity requested from the CA (`SECRET_TTL`).
    pub fn new(ca: Arc<dyn CaClient>, ttl: Duration) -> Self {
        CertManager(manager::CertManager::new(ca, ttl, METRICS))
    }
}

impl std::ops::Deref for CertManager {
    type Target = manager::CertManager;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

/// `istio.v1.auth.IstioCertificateService` over gRPC, impersonating the workload identity.
pub struct GrpcCaClient(mesh_xds::ca::GrpcCaClient);

impl GrpcCaClient {
    /// A lazily connecting client for `CA_ADDRESS`.
    pub fn new(cfg: &Config) -> Result<Self, crate::auth::ChannelError> {
        mesh_xds::ca::GrpcCaClient::new(
            &cfg.ca_address,
            cfg.ca_root_ca.as_ref(),
            cfg.auth_token.as_ref(),
            &cfg.cluster_id,
        )
        .map(GrpcCaClient)
    }
}

impl CaClient for GrpcCaClient {
    fn sign(
        &self,
        csr_pem: String,
        identity: Identity,
        ttl: Duration,
    ) -> BoxFuture<Result<Vec<String>, CertError>> {
        self.0.sign(csr_pem, identity, ttl)
    }
}

//! `istio.v1.auth.IstioCertificateService/CreateCertificate` with per-node authorization.
//!
//! A caller proves its node with a node token. It may get a certificate only for the service
//! account of a pod scheduled on that node (Istio's NodeAuthorizer rule for ztunnels), and when
//! it names an `ImpersonatedIdentity` that must be the CSR's identity. A waypoint token
//! (`waypoint:<ns>/<gateway>`) authorizes exactly `spiffe://<td>/ns/<ns>/sa/<gateway>`, the
//! identity Istio gives a waypoint (its service account is named after its Gateway).

use std::sync::Arc;
use std::time::Duration;

use mesh_identity::ca::{CaError, CertificateAuthority};
use mesh_identity::spiffe::Identity;
use mesh_proto::ca::istio_certificate_service_server::{
    IstioCertificateService, IstioCertificateServiceServer,
};
use mesh_proto::ca::{IstioCertificateRequest, IstioCertificateResponse};
use tokio::sync::watch;
use tonic::{Code, Request, Response, Status};

use crate::auth::{Authenticator, Principal};
use crate::source::ConfigSnapshot;

/// Metric: CSRs received (Istio's name).
pub const CSR_COUNT: &str = "citadel_server_csr_count";
/// Metric: certificates issued (Istio's name).
pub const SUCCESS_CERT_ISSUANCE_COUNT: &str = "citadel_server_success_cert_issuance_count";
/// Metric: calls without a valid token (Istio's name).
pub const AUTHENTICATION_FAILURE_COUNT: &str = "citadel_server_authentication_failure_count";
/// Metric: CSRs that could not be parsed or checked (Istio's name).
pub const CSR_PARSING_ERR_COUNT: &str = "citadel_server_csr_parsing_err_count";
/// Metric: certificates issued.
pub const CERTIFICATES_ISSUED_TOTAL: &str = "istiod_certificates_issued_total";
/// Metric: requests refused, by reason.
pub const CERTIFICATES_REFUSED_TOTAL: &str = "istiod_certificates_refused_total";

/// Registers this module's metric descriptions.
pub fn describe_metrics() {
    metrics::describe_counter!(CSR_COUNT, "Certificate signing requests received");
    metrics::describe_counter!(SUCCESS_CERT_ISSUANCE_COUNT, "Certificates issued");
    metrics::describe_counter!(
        AUTHENTICATION_FAILURE_COUNT,
        "CA calls without a valid node token"
    );
    metrics::describe_counter!(CSR_PARSING_ERR_COUNT, "CSRs refused as invalid");
    metrics::describe_counter!(CERTIFICATES_ISSUED_TOTAL, "Certificates issued");
    metrics::describe_counter!(
        CERTIFICATES_REFUSED_TOTAL,
        "Certificate requests refused, by reason"
    );
}

/// Metadata key ztunnel sets when requesting a pod's certificate.
pub const IMPERSONATED_IDENTITY: &str = "ImpersonatedIdentity";

/// The certificate service.
#[derive(Clone)]
pub struct CaService {
    ca: Arc<CertificateAuthority>,
    auth: Authenticator,
    config: watch::Receiver<Arc<ConfigSnapshot>>,
    max_ttl: Duration,
}

/// A refusal: gRPC status, metric reason label, and the message returned to the caller.
struct Refusal {
    code: Code,
    reason: &'static str,
    message: String,
}

impl CaService {
    /// Signs with `ca`, authorizes against the pods of `config`, caps validity at `max_ttl`.
    pub fn new(
        ca: Arc<CertificateAuthority>,
        auth: impl Into<Authenticator>,
        config: watch::Receiver<Arc<ConfigSnapshot>>,
        max_ttl: Duration,
    ) -> Self {
        CaService {
            ca,
            auth: auth.into(),
            config,
            max_ttl,
        }
    }

    /// The tonic service.
    pub fn into_service(self) -> IstioCertificateServiceServer<Self> {
        IstioCertificateServiceServer::new(self)
    }

    fn authorize(
        &self,
        principal: &Principal,
        req: &IstioCertificateRequest,
    ) -> Result<Identity, Refusal> {
        let identity = self.ca.csr_identity(&req.csr).map_err(|e| match e {
            CaError::WrongTrustDomain { .. } => Refusal {
                code: Code::PermissionDenied,
                reason: "trust_domain",
                message: format!(
                    "{e}; this CA only issues spiffe://{}/... identities",
                    self.ca.trust_domain()
                ),
            },
            other => {
                metrics::counter!(CSR_PARSING_ERR_COUNT).increment(1);
                Refusal {
                    code: Code::InvalidArgument,
                    reason: "invalid_csr",
                    message: other.to_string(),
                }
            }
        })?;

        if let Some(imp) = impersonated_identity(req) {
            let same = Identity::parse(imp).is_ok_and(|i| i == identity);
            if !same {
                return Err(Refusal {
                    code: Code::PermissionDenied,
                    reason: "impersonation_mismatch",
                    message: format!("metadata {IMPERSONATED_IDENTITY}={imp:?} differs from the CSR identity {identity}"),
                });
            }
        }

        let node = match principal {
            Principal::Node(n) => n.as_str(),
            Principal::Waypoint { namespace, name } => {
                if identity.namespace == *namespace && identity.service_account == *name {
                    return Ok(identity);
                }
                return Err(Refusal {
                    code: Code::PermissionDenied,
                    reason: "not_waypoint_identity",
                    message: format!(
                        "the token of waypoint {namespace}/{name} only authorizes spiffe://{}/ns/{namespace}/sa/{name}, not {identity}",
                        self.ca.trust_domain()
                    ),
                });
            }
        };
        let cfg = self.config.borrow().clone();
        let on_node = cfg.pods_on_node(node).any(|p| {
            p.metadata.ns() == identity.namespace && p.service_account() == identity.service_account
        });
        if !on_node {
            return Err(Refusal {
                code: Code::PermissionDenied,
                reason: "not_on_node",
                message: format!(
                    "node {node:?} runs no pod with service account {}/{}, so it may not get a certificate for {identity}",
                    identity.namespace, identity.service_account
                ),
            });
        }
        Ok(identity)
    }
}

fn impersonated_identity(req: &IstioCertificateRequest) -> Option<&str> {
    match req
        .metadata
        .as_ref()?
        .fields
        .get(IMPERSONATED_IDENTITY)?
        .kind
        .as_ref()?
    {
        prost_types::value::Kind::StringValue(s) => Some(s),
        // Any other type can never equal an identity; report it as such.
        _ => Some("<not a string>"),
    }
}

fn refuse(node: Option<&str>, r: Refusal) -> Status {
    metrics::counter!(CERTIFICATES_REFUSED_TOTAL, "reason" => r.reason).increment(1);
    tracing::warn!(
        node = node.unwrap_or("-"),
        reason = r.reason,
        "certificate refused: {}",
        r.message
    );
    Status::new(r.code, r.message)
}

#[tonic::async_trait]
impl IstioCertificateService for CaService {
    async fn create_certificate(
        &self,
        request: Request<IstioCertificateRequest>,
    ) -> Result<Response<IstioCertificateResponse>, Status> {
        metrics::counter!(CSR_COUNT).increment(1);
        let principal = match self.auth.authenticate_principal(request.metadata()).await {
            Ok(p) => p,
            Err(e) => {
                metrics::counter!(AUTHENTICATION_FAILURE_COUNT).increment(1);
                let code = e.code();
                return Err(refuse(
                    None,
                    Refusal {
                        code,
                        reason: if code == Code::PermissionDenied {
                            "not_authorized"
                        } else {
                            "unauthenticated"
                        },
                        message: e.to_string(),
                    },
                ));
            }
        };
        let req = request.into_inner();
        let node = principal.to_string();
        let identity = self
            .authorize(&principal, &req)
            .map_err(|r| refuse(Some(&node), r))?;

        let requested = Duration::from_secs(u64::try_from(req.validity_duration).unwrap_or(0));
        let signed = self
            .ca
            .sign_csr(&req.csr, requested, self.max_ttl)
            .map_err(|e| {
                refuse(
                    Some(&node),
                    Refusal {
                        code: Code::Internal,
                        reason: "signing_failed",
                        message: e.to_string(),
                    },
                )
            })?;
        metrics::counter!(SUCCESS_CERT_ISSUANCE_COUNT).increment(1);
        metrics::counter!(CERTIFICATES_ISSUED_TOTAL).increment(1);
        let not_after = time::OffsetDateTime::from(signed.not_after)
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        tracing::info!(node = %node, identity = %identity, not_after = %not_after, "certificate issued");
        Ok(Response::new(IstioCertificateResponse {
            cert_chain: signed.cert_chain,
        }))
    }
}

//! `istio.v1.auth.IstioCertificateService/CreateCertificate` over gRPC, as the certificate
//! manager's CA seam.

use std::path::PathBuf;
use std::time::Duration;

use mesh_identity::manager::{BoxFuture, CaClient, CertError};
use mesh_identity::spiffe::Identity;
use mesh_proto::ca::istio_certificate_service_client::IstioCertificateServiceClient;
use mesh_proto::ca::IstioCertificateRequest;

use crate::auth::{CallCredentials, ChannelError};

/// A lazily connecting CA client that names the requested identity in
/// `ImpersonatedIdentity` metadata (Istio's shared-mode ztunnel does; for a waypoint asking for
/// its own identity it is the same value and harmless).
pub struct GrpcCaClient {
    client: IstioCertificateServiceClient<
        tonic::service::interceptor::InterceptedService<tonic::transport::Channel, CallCredentials>,
    >,
}

impl GrpcCaClient {
    /// A client for `address` (`http://` or `https://` verified against `root_ca`), sending the
    /// token read from `auth_token` and `clusterid: cluster_id` on every call.
    pub fn new(
        address: &str,
        root_ca: Option<&PathBuf>,
        auth_token: Option<&PathBuf>,
        cluster_id: &str,
    ) -> Result<Self, ChannelError> {
        let ch = crate::auth::channel(address, root_ca)?;
        let creds = CallCredentials::load(auth_token, cluster_id)?;
        Ok(GrpcCaClient {
            client: IstioCertificateServiceClient::with_interceptor(ch, creds),
        })
    }
}

impl CaClient for GrpcCaClient {
    fn sign(
        &self,
        csr_pem: String,
        identity: Identity,
        ttl: Duration,
    ) -> BoxFuture<Result<Vec<String>, CertError>> {
        let mut client = self.client.clone();
        Box::pin(async move {
            let value = prost_types::Value {
                kind: Some(prost_types::value::Kind::StringValue(identity.to_string())),
            };
            let req = IstioCertificateRequest {
                csr: csr_pem,
                validity_duration: ttl.as_secs() as i64,
                metadata: Some(prost_types::Struct {
                    fields: [("ImpersonatedIdentity".to_string(), value)]
                        .into_iter()
                        .collect(),
                }),
            };
            client
                .create_certificate(req)
                .await
                .map(|r| r.into_inner().cert_chain)
                .map_err(|s| CertError::Ca {
                    identity: identity.to_string(),
                    message: format!("{:?}: {}", s.code(), s.message()),
                })
        })
    }
}

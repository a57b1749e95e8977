//! Serves the ADS and CA gRPC services on one listener.
//!
//! tonic's multi-service router needs its `router` feature (and axum); dispatching two services
//! by path prefix is a few lines, so we do it here.

use std::convert::Infallible;
use std::task::{Context, Poll};

use mesh_proto::ca::istio_certificate_service_server::IstioCertificateServiceServer;
use mesh_proto::xds::aggregated_discovery_service_server::AggregatedDiscoveryServiceServer;
use tonic::body::Body;
use tonic::codegen::{BoxFuture, Service};
use tonic::server::NamedService;
use tonic::Status;

use crate::ca::CaService;
use crate::xds::XdsServer;

type Xds = AggregatedDiscoveryServiceServer<XdsServer>;
type Ca = IstioCertificateServiceServer<CaService>;

/// Routes `/<package.Service>/<Method>` to the ADS or CA service; anything else is UNIMPLEMENTED.
#[derive(Clone)]
pub struct GrpcServices {
    xds: Xds,
    ca: Ca,
}

impl GrpcServices {
    /// Both services.
    pub fn new(xds: Xds, ca: Ca) -> Self {
        GrpcServices { xds, ca }
    }
}

fn is_method_of(path: &str, service: &str) -> bool {
    path.strip_prefix('/')
        .and_then(|p| p.strip_prefix(service))
        .is_some_and(|rest| rest.starts_with('/'))
}

impl Service<http::Request<Body>> for GrpcServices {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Both generated services are always ready.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let path = req.uri().path();
        if is_method_of(path, <Xds as NamedService>::NAME) {
            self.xds.call(req)
        } else if is_method_of(path, <Ca as NamedService>::NAME) {
            self.ca.call(req)
        } else {
            let status = Status::unimplemented(format!("no service for {path}"));
            Box::pin(async move { Ok(status.into_http()) })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::is_method_of;

    #[test]
    fn path_matching() {
        assert!(is_method_of(
            "/istio.v1.auth.IstioCertificateService/CreateCertificate",
            "istio.v1.auth.IstioCertificateService"
        ));
        assert!(!is_method_of(
            "/istio.v1.auth.IstioCertificateServiceX/Create",
            "istio.v1.auth.IstioCertificateService"
        ));
        assert!(!is_method_of(
            "istio.v1.auth.IstioCertificateService/Create",
            "istio.v1.auth.IstioCertificateService"
        ));
    }
}

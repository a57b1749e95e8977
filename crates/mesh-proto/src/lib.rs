//! Protobuf messages and gRPC services that ambient-rs speaks, wire-compatible with Istio:
//! delta ADS ([`xds`]), workload addresses ([`workload`]), L4 authorization ([`security`])
//! the certificate service ([`ca`]) and our own waypoint routing resources ([`route`]).
#![allow(clippy::all)]

// Modules nest as the protobuf packages do, because generated code refers across packages
// with `super::` paths; the short aliases below are what the rest of the workspace uses.
#[allow(missing_docs)]
pub mod istio {
    pub mod workload {
        tonic::include_proto!("istio.workload");
    }
    pub mod security {
        tonic::include_proto!("istio.security");
    }
    pub mod v1 {
        pub mod auth {
            tonic::include_proto!("istio.v1.auth");
        }
    }
}

#[allow(missing_docs)]
pub mod ambient {
    pub mod route {
        pub mod v1 {
            tonic::include_proto!("ambient.route.v1");
        }
    }
}

#[allow(missing_docs)]
pub mod envoy {
    pub mod service {
        pub mod discovery {
            pub mod v3 {
                tonic::include_proto!("envoy.service.discovery.v3");
            }
        }
    }
}

#[allow(missing_docs)]
pub mod google {
    pub mod rpc {
        tonic::include_proto!("google.rpc");
    }
}

/// `ambient.route.v1`: our own waypoint routing resources (not an Istio API).
pub use ambient::route::v1 as route;
/// `envoy.service.discovery.v3`: delta aggregated discovery service.
pub use envoy::service::discovery::v3 as xds;
/// `istio.security`: L4 authorization policies.
pub use istio::security;
/// `istio.v1.auth`: the certificate signing service.
pub use istio::v1::auth as ca;
/// `istio.workload`: Workload and Service resources pushed to ztunnels.
pub use istio::workload;

/// Type URL of `istio.workload.Address` resources.
pub const ADDRESS_TYPE_URL: &str = "type.googleapis.com/istio.workload.Address";
/// Type URL of `istio.security.Authorization` resources.
pub const AUTHORIZATION_TYPE_URL: &str = "type.googleapis.com/istio.security.Authorization";

/// Type URL of `ambient.route.v1.ServiceRoutes` resources (waypoints only).
pub const SERVICE_ROUTES_TYPE_URL: &str = "type.googleapis.com/ambient.route.v1.ServiceRoutes";

/// Wraps a message in a `google.protobuf.Any` with the given type URL.
pub fn to_any<M: prost::Message>(type_url: &str, msg: &M) -> prost_types::Any {
    prost_types::Any {
        type_url: type_url.to_string(),
        value: msg.encode_to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn workload_uid_uses_field_20() {
        let w = workload::Workload {
            uid: "u".into(),
            ..Default::default()
        };
        // field 20, wire type 2 => key varint (20 << 3 | 2) = 162 = 0xa2 0x01
        assert_eq!(w.encode_to_vec(), vec![0xa2, 0x01, 0x01, b'u']);
    }

    #[test]
    fn clause_matches_use_field_2() {
        let c = security::Clause {
            matches: vec![security::Match::default()],
        };
        assert_eq!(c.encode_to_vec(), vec![0x12, 0x00]);
    }
}

//! Start-up tasks that must finish before ztunnel reports ready on `/healthz/ready` (shared with
//! the waypoint: `mesh_xds::Readiness`).

pub use mesh_xds::Readiness;

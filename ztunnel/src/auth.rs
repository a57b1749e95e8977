//! gRPC call credentials and control-plane channels: shared with the waypoint, so they live in
//! `mesh-xds`; re-exported here under their old path.

pub use mesh_xds::auth::{channel, CallCredentials, ChannelError};

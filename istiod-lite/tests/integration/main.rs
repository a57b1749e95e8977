//! In-process tests of istiod-lite over real loopback gRPC connections.
#![allow(clippy::unwrap_used)]

mod ca;
mod debug;
mod harness;
mod policy;
mod xds;

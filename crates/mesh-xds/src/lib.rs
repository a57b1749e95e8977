//! Control-plane clients shared by ztunnel and the waypoint, so both binaries carry one copy:
//!
//! - [`client`]: the delta ADS client (wildcard subscriptions, ACK/NACK, reconnect with
//!   backoff, `initial_resource_versions` on reconnect); what to do with resources is the
//!   caller's [`client::Handler`].
//! - [`ca`]: `istio.v1.auth.IstioCertificateService` over gRPC, as the
//!   [`mesh_identity::manager::CaClient`] of the certificate manager.
//! - [`auth`]: channels to the control plane and the bearer-token call credentials.
//! - [`Readiness`]: start-up tasks that gate `/healthz/ready`.
#![forbid(unsafe_code)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod auth;
pub mod ca;
pub mod client;
mod readiness;

pub use client::{ClientConfig, Handler, XdsClient, XdsError};
pub use readiness::Readiness;

//! ztunnel: the ambient-rs node agent. Gives every workload on its node an mTLS identity and
//! carries its TCP traffic over HBONE tunnels.
//!
//! - [`config`]: settings from the environment (Istio's names)
//! - [`dns`]: DNS proxy (15053): mesh Service names answered with their VIPs, the rest forwarded
//! - [`state`]: workloads, services and policies from xDS, indexed for the data path
//! - [`xds`]: delta ADS client
//! - [`identity`]: per-workload certificates from the CA, rotated at half life
//! - [`proxy`]: outbound (SOCKS5, 15001), inbound HBONE (15008) and plaintext (15006)
//! - [`inpod`]: in-pod mode: pods enrolled by the CNI plugin, listeners inside their netns
//! - [`metrics`]: Istio's `istio_tcp_*` metrics and the access log
//! - [`tap`]: live stream of connection events (`/debug/tap`, `meshctl tap`)
//! - [`admin`]: admin, metrics and readiness endpoints
//! - [`app`]: wiring and graceful drain

pub mod admin;
pub mod app;
pub mod auth;
pub mod config;
pub mod dns;
pub mod identity;
pub mod inpod;
pub mod metrics;
pub mod proxy;
pub mod readiness;
pub mod state;
pub mod tap;
pub mod xds;

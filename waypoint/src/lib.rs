//! waypoint: the ambient-rs L7 proxy, one (or more) per namespace, shared by its workloads.
//!
//! Traffic arrives over HBONE (mTLS HTTP/2 CONNECT, port 15008) with `:authority` = the
//! original service `VIP:port`; the waypoint parses HTTP on it, routes it (Gateway API
//! HTTPRoute/GRPCRoute as pushed by istiod-lite) and sends each request over its own HBONE
//! stream to the chosen backend pod.
//!
//! - [`config`]: settings from the environment (Istio's names where they exist)
//! - [`xds`]: the route table from istiod-lite (`ambient.route.v1.ServiceRoutes`)
//! - [`routes`]: the compiled route table: matching, precedence, filters, weights, retry budget
//! - [`proxy`]: the HBONE listener, the HTTP server per stream, upstream requests, TCP relay
//! - [`metrics`]: Istio's request metrics (reporter `waypoint`) and the JSON access log
//! - [`security`]: the L7 security hook: [`authz`] (AuthorizationPolicy), [`jwt`]
//!   (RequestAuthentication), [`trace`] (traceparent, OTLP spans)
//! - [`tap`]: one event per request for `meshctl tap` (`/debug/tap`)
//! - [`admin`]: stats (15020), readiness (15021) and admin (`/config_dump`, `/debug/tap`) endpoints
//! - [`app`]: wiring and graceful shutdown
#![forbid(unsafe_code)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod admin;
pub mod app;
pub mod authz;
pub mod config;
pub mod jwt;
pub mod metrics;
pub mod proxy;
pub mod routes;
pub mod security;
pub mod tap;
pub mod trace;
pub mod xds;

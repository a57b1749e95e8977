//! istiod-lite: the ambient-rs control plane.
//!
//! Reads Kubernetes-style YAML from a directory ([`source`]), translates it into Istio's
//! `istio.workload` / `istio.security` resources ([`model`]), pushes them to ztunnels over delta
//! ADS ([`xds`]), signs workload certificates for authorized nodes ([`ca`], [`auth`]) and exposes
//! Prometheus metrics and debug endpoints ([`monitoring`]). [`app`] wires it all together.
#![forbid(unsafe_code)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod app;
pub mod auth;
pub mod ca;
pub mod config;
pub mod controller;
pub mod grpc;
pub mod model;
pub mod monitoring;
pub mod source;
pub mod xds;

//! meshctl: the ambient-rs operator CLI.
//!
//! Commands read what the components already expose over plain HTTP on loopback or the pod
//! network: ztunnel's admin `/config_dump` and readiness `/healthz/ready`, the Prometheus
//! `/metrics` of every component (or a Prometheus server), and istiod-lite's monitoring port.
//! [`cli`] parses the command line, [`app`] dispatches to one module per command in [`cmd`],
//! [`output`] renders tables, JSON and YAML.
#![forbid(unsafe_code)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod app;
pub mod cli;
pub mod cmd;
pub mod config;
pub mod dump;
pub mod error;
pub mod http;
pub mod output;
pub mod prom;

#[cfg(test)]
mod golden;

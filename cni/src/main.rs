//! ambient-rs chained CNI plugin. See docs/cni.md.

#![forbid(unsafe_code)]

mod agent;
mod app;
mod config;
mod error;

fn main() {
    std::process::exit(app::main(&config::ProcessEnv));
}

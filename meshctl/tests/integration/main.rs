//! meshctl as a user runs it: the binary against the real istiod-lite and ztunnel (from
//! `target/debug`, or `$MESH_BIN_DIR`), and against crafted answers from a tiny HTTP server.
#![allow(clippy::unwrap_used)]

mod crafted;
mod golden_live;
mod local_mesh;
mod mesh;
mod support;

// The golden-file normaliser shared with the end-to-end tests (one file, compiled into both:
// meshctl cannot depend on the e2e crate).
#[allow(dead_code)]
#[path = "../../../tests/e2e/src/golden.rs"]
mod golden;

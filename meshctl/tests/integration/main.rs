//! meshctl as a user runs it: the binary against the real istiod-lite and ztunnel (from
//! `target/debug`, or `$MESH_BIN_DIR`), and against crafted answers from a tiny HTTP server.
#![allow(clippy::unwrap_used)]

mod crafted;
mod local_mesh;
mod support;

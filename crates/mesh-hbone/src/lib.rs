//! HBONE: HTTP/2 `CONNECT` over mutual TLS, as spoken by Istio ambient (ztunnel, waypoints).
//!
//! One TLS + HTTP/2 connection carries many `CONNECT` streams; each stream is one proxied
//! TCP connection whose bytes travel in DATA frames after a `200` response.
//!
//! * [`client::Pool`] dials and pools HBONE connections (Istio's pooling rules: per-key
//!   connections, at most `pool_max_streams_per_conn` streams each, one dial per key at a time,
//!   idle eviction) and opens `CONNECT` streams on them.
//! * [`server::serve_connection`] drives an accepted, already TLS-terminated connection and
//!   hands every request stream to a handler.
//! * [`H2Stream`] is one stream as an `AsyncRead + AsyncWrite` byte pipe.
//!
//! The crate knows rustls configurations but not SPIFFE: callers pass a ready
//! `rustls::ClientConfig` (which verifies the expected identities) for dialing and terminate
//! TLS themselves on the server side.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::time::Duration;

pub mod client;
mod error;
mod keepalive;
pub mod server;
mod stream;

pub use error::HboneError;
pub use stream::H2Stream;

const MIB: u32 = 1024 * 1024;

/// HTTP/2 and pooling settings. `Default` gives Istio's (ztunnel's) values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// SETTINGS_INITIAL_WINDOW_SIZE we advertise, per stream (Istio: 4 MiB). On the client it
    /// is also the per-stream send buffer, as in ztunnel.
    pub stream_window: u32,
    /// Connection-level receive window, announced with a WINDOW_UPDATE on stream 0 (16 MiB).
    pub connection_window: u32,
    /// SETTINGS_MAX_FRAME_SIZE we advertise (1 MiB).
    pub max_frame_size: u32,
    /// SETTINGS_MAX_CONCURRENT_STREAMS the server advertises (200).
    pub server_max_concurrent_streams: u32,
    /// Client-side cap on concurrent streams per pooled connection (100); the effective cap is
    /// the minimum of this and the peer's SETTINGS_MAX_CONCURRENT_STREAMS.
    pub pool_max_streams_per_conn: u32,
    /// A pooled connection with no streams for this long is dropped from the pool (5 min).
    pub pool_idle_timeout: Duration,
    /// How often a keepalive PING is sent on every connection, client and server (10 s).
    /// Zero disables keepalive.
    pub keepalive_interval: Duration,
    /// A connection whose PING is not acknowledged within this time is closed (20 s).
    pub keepalive_timeout: Duration,
    /// Bound on dialing a new pooled connection: TCP connect + TLS handshake + HTTP/2 preface
    /// (10 s). Not part of the shared contract; added so a black-holed peer cannot hold a key's
    /// dial slot for the OS's TCP timeout.
    pub connect_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            stream_window: 4 * MIB,
            connection_window: 16 * MIB,
            max_frame_size: MIB,
            server_max_concurrent_streams: 200,
            pool_max_streams_per_conn: 100,
            pool_idle_timeout: Duration::from_secs(5 * 60),
            keepalive_interval: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(20),
            connect_timeout: Duration::from_secs(10),
        }
    }
}

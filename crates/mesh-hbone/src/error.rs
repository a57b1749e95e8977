use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

/// Why an HBONE connection or stream failed.
///
/// `Connect` and `Tls` carry an `io::Error` whose message names the peer address
/// (`"10.0.0.7:15008: connection refused"`) and whose kind is the original one; for TLS the
/// original `rustls::Error` is reachable through `io::Error::get_ref()` → `source()`.
#[derive(thiserror::Error, Debug)]
pub enum HboneError {
    /// The TCP connection to the HBONE peer could not be opened.
    #[error("TCP connect failed ({0}); is the peer's HBONE port (15008) reachable?")]
    Connect(io::Error),
    /// The TLS handshake with the HBONE peer failed (certificate not trusted, identity not
    /// among the expected ones, peer closed the connection, ...).
    #[error("TLS handshake failed ({0}); check the peer's certificate, trust domain and expected identity")]
    Tls(io::Error),
    /// TLS succeeded but the peer did not select ALPN `h2`, so it is not an HBONE listener.
    #[error("peer did not negotiate ALPN \"h2\"; the destination port is not an HBONE (HTTP/2 mTLS) listener")]
    Alpn,
    /// HTTP/2 protocol, connection or stream error (including a reset from the peer).
    #[error("HTTP/2 error: {0}")]
    H2(h2::Error),
    /// The peer answered the CONNECT request with a status other than 200.
    #[error("peer rejected CONNECT with HTTP status {0}")]
    Status(http::StatusCode),
    /// Dialing a new connection (TCP + TLS + HTTP/2 preface) took longer than
    /// `Config::connect_timeout`.
    #[error("connecting to {dst} timed out after {timeout:?} (TCP connect or TLS handshake did not complete)")]
    ConnectTimeout {
        /// The address being dialed.
        dst: SocketAddr,
        /// The configured bound.
        timeout: Duration,
    },
    /// The `:authority` of a CONNECT request is not a valid URI authority.
    #[error("invalid CONNECT authority {authority:?}: {reason}")]
    InvalidAuthority {
        /// The rejected value.
        authority: String,
        /// Why it was rejected.
        reason: String,
    },
    /// The peer did not acknowledge a keepalive PING in time; the connection was closed.
    #[error("HTTP/2 keepalive PING not acknowledged within {0:?}; connection closed (peer hung or network black-holed)")]
    KeepaliveTimeout(Duration),
}

impl From<h2::Error> for HboneError {
    fn from(e: h2::Error) -> Self {
        HboneError::H2(e)
    }
}

/// An io error prefixed with the peer address, keeping the original error as `source()`.
#[derive(Debug)]
struct PeerIoError {
    peer: SocketAddr,
    source: io::Error,
}

impl fmt::Display for PeerIoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.peer, self.source)
    }
}

impl std::error::Error for PeerIoError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// Wraps `e` so its message names `peer`, preserving the error kind.
pub(crate) fn with_peer(peer: SocketAddr, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), PeerIoError { peer, source: e })
}

/// Maps an h2 error into an io error for the AsyncRead/AsyncWrite surface.
pub(crate) fn h2_to_io(e: h2::Error) -> io::Error {
    if e.is_io() {
        if let Some(io) = e.into_io() {
            return io;
        }
        return io::Error::other("HTTP/2 connection I/O error");
    }
    let kind = if e.is_reset() || e.is_go_away() {
        io::ErrorKind::ConnectionReset
    } else {
        io::ErrorKind::Other
    };
    io::Error::new(kind, e)
}

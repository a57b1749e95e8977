//! HBONE server side: drive an accepted connection and hand each CONNECT stream to a handler.

use std::fmt;
use std::future::Future;

use bytes::Bytes;
use h2::server::SendResponse;
use h2::RecvStream;
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri};
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::Instrument;

use crate::keepalive::keepalive;
use crate::{Config, H2Stream, HboneError};

/// Largest request header block we accept (Istio's server value).
const SERVER_MAX_HEADER_LIST_SIZE: u32 = 64 * 1024;
/// Per-stream send buffer on the server (Istio's value; bounds memory per inbound stream).
const SERVER_MAX_SEND_BUFFER_SIZE: usize = 400 * 1024;

/// One request received on an HBONE connection, not yet answered.
///
/// Any method is delivered, not only CONNECT: the handler decides what to do (ztunnel answers
/// `400` to anything but CONNECT, via [`InboundRequest::reject`]). Dropping it without
/// answering resets the stream.
pub struct InboundRequest {
    request: Request<RecvStream>,
    respond: SendResponse<Bytes>,
}

impl InboundRequest {
    /// The request method (`CONNECT` for HBONE).
    pub fn method(&self) -> &Method {
        self.request.method()
    }

    /// The `:authority` pseudo-header: the HBONE target, e.g. `10.0.0.7:8080` or `[fd00::7]:80`.
    pub fn authority(&self) -> Option<&str> {
        self.request.uri().authority().map(|a| a.as_str())
    }

    /// The request headers (`baggage`, `forwarded`, `traceparent`, ...).
    pub fn headers(&self) -> &HeaderMap {
        self.request.headers()
    }

    /// The request URI as h2 built it from the pseudo-headers. For a classic CONNECT it has an
    /// authority and neither scheme nor path.
    pub fn uri(&self) -> &Uri {
        self.request.uri()
    }

    /// Answers with `status` and ends the stream (no body).
    pub fn reject(mut self, status: StatusCode) {
        let mut response = Response::new(());
        *response.status_mut() = status;
        if let Err(e) = self.respond.send_response(response, true) {
            // The client already went away; nothing left to tell it.
            tracing::debug!(error = %e, %status, "could not send HBONE rejection");
        }
    }

    /// Answers `200` with `headers` and returns the stream as a byte pipe.
    pub fn accept(mut self, headers: HeaderMap) -> Result<H2Stream, HboneError> {
        let mut response = Response::new(());
        *response.headers_mut() = headers;
        let send = self.respond.send_response(response, false)?;
        Ok(H2Stream::new(send, self.request.into_body(), None))
    }
}

impl fmt::Debug for InboundRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InboundRequest")
            .field("stream_id", &self.respond.stream_id().as_u32())
            .field("method", self.method())
            .field("uri", self.uri())
            .field("headers", self.headers())
            .finish()
    }
}

/// Drives an accepted (already TLS-terminated) connection: HTTP/2 handshake with Istio's server
/// settings (4 MiB stream window, 16 MiB connection window, 1 MiB frames, 200 concurrent
/// streams, 64 KiB header lists, 400 KiB send buffer per stream), keepalive PINGs, then calls
/// `handler` for each request stream in its own task (instrumented with a span carrying the
/// stream id, method and authority).
///
/// Every request is passed to the handler whatever its method; answering non-CONNECT requests
/// (ztunnel: `400`) is the caller's decision.
///
/// Returns `Ok(())` when the peer closes the connection cleanly, an error for a failed
/// handshake (e.g. the peer does not speak HTTP/2), a connection-level protocol or I/O error,
/// or an unanswered keepalive PING. Streams still running when it returns fail with an error.
/// `S` is `tokio_rustls::server::TlsStream<TcpStream>` in production.
pub async fn serve_connection<S, F, Fut>(io: S, cfg: &Config, handler: F) -> Result<(), HboneError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Fn(InboundRequest) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut conn = h2::server::Builder::new()
        .initial_window_size(cfg.stream_window)
        .initial_connection_window_size(cfg.connection_window)
        .max_frame_size(cfg.max_frame_size)
        .max_concurrent_streams(cfg.server_max_concurrent_streams)
        .max_header_list_size(SERVER_MAX_HEADER_LIST_SIZE)
        .max_send_buffer_size(SERVER_MAX_SEND_BUFFER_SIZE)
        .handshake::<S, Bytes>(io)
        .await?;
    tracing::debug!("HBONE server connection established");

    let keepalive = keepalive(
        conn.ping_pong(),
        cfg.keepalive_interval,
        cfg.keepalive_timeout,
    );
    tokio::pin!(keepalive);

    loop {
        tokio::select! {
            next = conn.accept() => match next {
                Some(Ok((request, respond))) => {
                    let span = tracing::debug_span!(
                        "hbone_request",
                        stream = respond.stream_id().as_u32(),
                        method = %request.method(),
                        authority = request.uri().authority().map(|a| a.as_str()).unwrap_or(""),
                    );
                    let handler = handler.clone();
                    tokio::spawn(handler(InboundRequest { request, respond }).instrument(span));
                }
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "HBONE server connection failed");
                    return Err(e.into());
                }
                None => {
                    tracing::debug!("HBONE server connection closed");
                    return Ok(());
                }
            },
            err = &mut keepalive => return Err(err),
        }
    }
}

//! Dialing one HBONE connection (TCP → TLS → HTTP/2), its driver task, and opening a stream.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use rustls_pki_types::ServerName;
use tokio_rustls::TlsConnector;
use tracing::Instrument;

use super::pool::{idle_watch, Checkout, ConnState, PoolInner, PooledConn};
use super::PoolKey;
use crate::error::with_peer;
use crate::keepalive::keepalive;
use crate::{Config, H2Stream, HboneError};

/// Largest response header block we accept (Istio's client value).
const CLIENT_MAX_HEADER_LIST_SIZE: u32 = 16 * 1024;

/// The rustls server name used for every HBONE dial. HBONE sends no SNI and the caller's
/// verifier checks SPIFFE identities, not names, so this is a fixed placeholder (as in ztunnel).
fn server_name() -> ServerName<'static> {
    ServerName::IpAddress(IpAddr::V4(Ipv4Addr::UNSPECIFIED).into())
}

fn client_builder(cfg: &Config) -> h2::client::Builder {
    let mut builder = h2::client::Builder::new();
    builder
        .initial_window_size(cfg.stream_window)
        .initial_connection_window_size(cfg.connection_window)
        .max_frame_size(cfg.max_frame_size)
        // Until the peer's SETTINGS arrive h2 would assume "unlimited"; assume our own cap.
        .initial_max_send_streams(cfg.pool_max_streams_per_conn as usize)
        .max_header_list_size(CLIENT_MAX_HEADER_LIST_SIZE)
        // ztunnel buffers up to a full stream window per stream on the send side.
        .max_send_buffer_size(cfg.stream_window as usize)
        .enable_push(false)
        // As ztunnel: proxied TCP legitimately produces many small DATA frames (interactive
        // traffic, slow readers); h2's small-frame budget would otherwise close the whole
        // multiplexed connection with ENHANCE_YOUR_CALM.
        .data_frame_budget(usize::MAX);
    builder
}

/// Dials a new connection for `key` and spawns its driver task. Bounded by
/// `Config::connect_timeout`.
pub(super) async fn dial(
    pool: &Arc<PoolInner>,
    key: &PoolKey,
    tls: &Arc<rustls::ClientConfig>,
) -> Result<PooledConn, HboneError> {
    let cfg = &pool.cfg;
    let dst = key.dst;
    let handshake = async {
        let tcp = pool
            .dialer
            .dial(key.src_ip, dst)
            .await
            .map_err(|e| HboneError::Connect(with_peer(dst, e)))?;
        let tls_stream = TlsConnector::from(tls.clone())
            .connect(server_name(), tcp)
            .await
            .map_err(|e| HboneError::Tls(with_peer(dst, e)))?;
        let alpn = tls_stream.get_ref().1.alpn_protocol();
        if alpn != Some(b"h2".as_slice()) {
            tracing::warn!(%dst, alpn = ?alpn.map(String::from_utf8_lossy), "HBONE peer did not negotiate ALPN h2");
            return Err(HboneError::Alpn);
        }
        let (send, connection) = client_builder(cfg)
            .handshake::<_, Bytes>(tls_stream)
            .await?;
        Ok((send, connection))
    };
    let (send, mut connection) = tokio::time::timeout(cfg.connect_timeout, handshake)
        .await
        .map_err(|_elapsed| HboneError::ConnectTimeout {
            dst,
            timeout: cfg.connect_timeout,
        })??;

    let state = Arc::new(ConnState::new(pool.next_id()));
    let span = tracing::debug_span!(
        "hbone_conn",
        conn = state.id,
        dst = %dst,
        src_identity = %key.src_identity,
    );
    span.in_scope(|| tracing::debug!("HBONE connection established"));

    let ping_pong = connection.ping_pong();
    let keepalive = keepalive(ping_pong, cfg.keepalive_interval, cfg.keepalive_timeout);
    let idle = idle_watch(
        Arc::downgrade(pool),
        key.clone(),
        state.clone(),
        cfg.pool_idle_timeout,
    );
    let weak_pool = Arc::downgrade(pool);
    let driver_key = key.clone();
    let driver_state = state.clone();
    tokio::spawn(
        async move {
            tokio::pin!(keepalive);
            tokio::pin!(idle);
            let mut idle_done = false;
            let result = loop {
                tokio::select! {
                    r = &mut connection => break r.map_err(HboneError::from),
                    err = &mut keepalive => break Err(err),
                    // After eviction the connection keeps running until its last stream ends
                    // and h2 closes it (no handle left).
                    () = &mut idle, if !idle_done => idle_done = true,
                }
            };
            driver_state
                .broken
                .store(true, std::sync::atomic::Ordering::Release);
            if let Some(pool) = weak_pool.upgrade() {
                pool.remove(&driver_key, driver_state.id);
            }
            match result {
                Ok(()) => tracing::debug!("HBONE connection closed"),
                Err(e) => tracing::debug!(error = %e, "HBONE connection closed with error"),
            }
        }
        .instrument(span),
    );
    Ok(PooledConn { state, send })
}

/// Why opening a stream failed, and whether another connection may be tried.
pub(super) enum OpenError {
    /// The request was not processed by the peer (connection gone, GOAWAY, REFUSED_STREAM).
    Retryable(HboneError),
    Fatal(HboneError),
}

fn classify(e: h2::Error) -> OpenError {
    if e.is_go_away() || e.is_io() || e.reason() == Some(h2::Reason::REFUSED_STREAM) {
        OpenError::Retryable(e.into())
    } else {
        OpenError::Fatal(e.into())
    }
}

/// Sends the CONNECT request on the reserved connection and waits for the response.
pub(super) async fn open_stream(
    checkout: Checkout,
    request: Request<()>,
) -> Result<(H2Stream, HeaderMap), OpenError> {
    let Checkout { send, guard } = checkout;
    let mut send = send.ready().await.map_err(classify)?;
    let (response, send_stream) = send.send_request(request, false).map_err(classify)?;
    let response = response.await.map_err(|e| {
        // Only a refusal / GOAWAY says the peer did not act on the request.
        if e.is_go_away() || e.reason() == Some(h2::Reason::REFUSED_STREAM) {
            OpenError::Retryable(e.into())
        } else {
            OpenError::Fatal(e.into())
        }
    })?;
    let status = response.status();
    if status != StatusCode::OK {
        // Dropping send_stream and the body resets the stream if the peer left it open.
        return Err(OpenError::Fatal(HboneError::Status(status)));
    }
    let (parts, body) = response.into_parts();
    tracing::debug!(
        stream = send_stream.stream_id().as_u32(),
        "HBONE stream established"
    );
    Ok((H2Stream::new(send_stream, body, Some(guard)), parts.headers))
}

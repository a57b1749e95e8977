//! HTTP/2 keepalive PINGs, shared by the client pool and the server.

use std::time::Duration;

use h2::{Ping, PingPong};

use crate::HboneError;

/// Sends a PING every `interval` and resolves with an error as soon as one is not acknowledged
/// within `timeout`. Never resolves otherwise: if the connection is closing (PING cannot be
/// sent), the connection future itself reports that, so this just stays pending.
///
/// It must be polled in the same task (e.g. `select!`) as the connection future, which is
/// what actually writes the PING and reads the ACK.
pub(crate) async fn keepalive(
    ping_pong: Option<PingPong>,
    interval: Duration,
    timeout: Duration,
) -> HboneError {
    let Some(mut ping_pong) = ping_pong else {
        return std::future::pending().await;
    };
    if interval.is_zero() {
        return std::future::pending().await;
    }
    loop {
        tokio::time::sleep(interval).await;
        match tokio::time::timeout(timeout, ping_pong.ping(Ping::opaque())).await {
            Ok(Ok(_pong)) => tracing::trace!("keepalive PING acknowledged"),
            Ok(Err(e)) => {
                tracing::trace!(error = %e, "keepalive PING not sent; connection is closing");
                return std::future::pending().await;
            }
            Err(_elapsed) => {
                tracing::debug!(?timeout, "keepalive PING not acknowledged in time");
                return HboneError::KeepaliveTimeout(timeout);
            }
        }
    }
}

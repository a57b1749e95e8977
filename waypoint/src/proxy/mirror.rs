//! Request mirroring (HTTPRoute RequestMirror, VirtualService mirror/mirrors): a copy of the
//! request goes to another backend, fire and forget. The copy's Host gets `-shadow` appended
//! (as Envoy does, before the port) so the mirror target can tell shadow traffic apart; its
//! answer is read and dropped, and its failures never touch the client's request.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use tracing::{debug, Instrument};

use super::{full, upstream, Proxy};
use crate::routes::{fault, Mirror};

/// A mirrored request gives up after this long, so a stuck mirror target cannot pile up tasks.
const MIRROR_TIMEOUT: Duration = Duration::from_secs(30);

/// `host[:port]` with `-shadow` added to the host.
pub fn shadow_host(host: &str) -> String {
    match host.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() && p.chars().all(|c| c.is_ascii_digit()) => {
            format!("{h}-shadow:{p}")
        }
        _ => format!("{host}-shadow"),
    }
}

/// Sends a copy of the request to each mirror whose percentage is rolled.
pub fn spawn(
    proxy: &Arc<Proxy>,
    mirrors: &[Mirror],
    parts: &http::request::Parts,
    host: &str,
    path_and_query: &str,
    body: &Bytes,
) {
    for m in mirrors {
        if !fault::hits(m.percent, rand::random()) {
            continue;
        }
        let Some(ep) = m.backend.pick() else {
            debug!(mirror = %m.backend.hostname, "mirror backend has no endpoint; not mirrored");
            continue;
        };
        let req = match upstream::build_request(
            parts,
            &shadow_host(host),
            path_and_query,
            full(body.clone()),
        ) {
            Ok(r) => r,
            Err(e) => {
                debug!(error = %e, "mirror request could not be built");
                continue;
            }
        };
        let h2 = parts.version == http::Version::HTTP_2;
        let max_per_conn = m.backend.cluster.policy.pool.max_requests_per_connection;
        let proxy = proxy.clone();
        let span =
            tracing::debug_span!("mirror", backend = %m.backend.hostname, upstream = %ep.addr);
        tokio::spawn(
            async move {
                let sent = tokio::time::timeout(
                    MIRROR_TIMEOUT,
                    upstream::send(&proxy, &ep, h2, max_per_conn, req),
                )
                .await;
                match sent {
                    Ok(Ok(resp)) => {
                        let status = resp.status();
                        let _ = resp.into_body().collect().await;
                        debug!(%status, "mirror answered (discarded)");
                    }
                    Ok(Err(e)) => debug!(error = %e, "mirror request failed"),
                    Err(_) => debug!("mirror request timed out"),
                }
            }
            .instrument(span),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shadow_host_goes_before_the_port() {
        assert_eq!(
            shadow_host("echo.app.svc.cluster.local"),
            "echo.app.svc.cluster.local-shadow"
        );
        assert_eq!(shadow_host("echo:80"), "echo-shadow:80");
        assert_eq!(shadow_host("10.0.0.1:8080"), "10.0.0.1-shadow:8080");
    }
}

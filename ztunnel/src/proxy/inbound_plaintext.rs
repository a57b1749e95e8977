//! Inbound plaintext (15006): TCP to a local workload that did not arrive over HBONE, captured
//! with REDIRECT. The original destination comes from `SO_ORIGINAL_DST`; the app is dialled with
//! the client's source address. (PeerAuthentication STRICT, which refuses this path, is a later
//! issue; until then plaintext is accepted as PERMISSIVE does.)

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpStream;
use tracing::{warn, Instrument};

use super::connections::ConnectionDump;
use super::{Proxy, ILLEGAL_PORTS};
use crate::metrics::{ConnectionGuard, ConnectionInfo, Reporter};

/// Serves one captured plaintext connection.
pub async fn serve(proxy: Arc<Proxy>, mut stream: TcpStream, peer: SocketAddr) {
    let span = tracing::info_span!("inbound_plaintext", src = %peer, dst = tracing::field::Empty);
    async move {
        let dst = match super::original_dst(&stream) {
            Ok(d) => d,
            Err(e) => {
                warn!(error = %e, "no original destination; was this connection redirected?");
                return;
            }
        };
        tracing::Span::current().record("dst", tracing::field::display(dst));
        let local = stream
            .local_addr()
            .ok()
            .map(|a| SocketAddr::new(a.ip().to_canonical(), a.port()));
        let mut info = ConnectionInfo {
            reporter: Some(Reporter::Destination),
            src_addr: Some(peer),
            dst_addr: Some(dst),
            ..Default::default()
        };
        info.src_workload = proxy.state.workload_by_ip(peer.ip());
        let dst_wl = proxy
            .state
            .workload_by_ip(dst.ip())
            .filter(|w| w.node == proxy.cfg.node_name);
        info.dst_identity = dst_wl.as_ref().map(|w| w.identity().to_string());
        info.dst_workload = dst_wl.clone();
        if Some(dst) == local || ILLEGAL_PORTS.contains(&dst.port()) || dst_wl.is_none() {
            warn!("refusing plaintext inbound: destination is not a workload on this node");
            crate::metrics::failed(&info, "DENY", "destination is not a local workload");
            return;
        }
        if let Some(w) = &dst_wl {
            let conn = mesh_policy::Connection {
                src_identity: None,
                src_ip: peer.ip(),
                dst_ip: dst.ip(),
                dst_port: dst.port(),
            };
            if let mesh_policy::Decision::Deny(why) = super::authorize(&proxy.state, w, &conn) {
                warn!(reason = %why, "refusing plaintext inbound: not authorized");
                crate::metrics::failed(&info, "DENY", &why);
                return;
            }
        }
        let mut upstream = match proxy.connect_for(dst.ip(), Some(peer.ip()), dst).await {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "connect to app failed");
                crate::metrics::failed(&info, "CONNECT", &e.to_string());
                return;
            }
        };
        let uid = dst_wl.as_ref().map(|w| w.uid.clone()).unwrap_or_default();
        let reg = proxy
            .open
            .inbound(ConnectionDump::of(&info, "inbound"), None, uid);
        let guard = ConnectionGuard::open(info);
        let (received, sent, err) = super::relay(&mut stream, &mut upstream, &reg.cancel).await;
        guard.close(
            received,
            sent,
            err.as_ref().map(|e| e.to_string()).as_deref(),
        );
    }
    .instrument(span)
    .await
}

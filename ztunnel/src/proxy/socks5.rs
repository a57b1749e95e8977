//! SOCKS5 (RFC 1928, CONNECT, no authentication) on 127.0.0.1:15080: explicit outbound for
//! hosts without capture. The source workload is found by the client's source address.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::{warn, Instrument};

use super::outbound::{OutboundError, Target};
use super::Proxy;

/// A malformed or unsupported SOCKS5 request.
#[derive(thiserror::Error, Debug)]
pub enum Socks5Error {
    #[error("not SOCKS5 (version byte {0:#04x})")]
    Version(u8),
    #[error("client offers no acceptable auth method (we accept only 'no authentication')")]
    NoAcceptableAuth,
    #[error("unsupported command {0:#04x} (only CONNECT)")]
    Command(u8),
    #[error("unsupported address type {0:#04x}")]
    AddressType(u8),
    #[error("domain name is not valid UTF-8")]
    BadDomain,
    #[error("client too slow to send its request")]
    Timeout,
    #[error("reading request: {0}")]
    Io(#[from] std::io::Error),
}

// Reply codes (RFC 1928 section 6).
const GENERAL_FAILURE: u8 = 0x01;
const NOT_ALLOWED: u8 = 0x02;
const HOST_UNREACHABLE: u8 = 0x04;
const REFUSED: u8 = 0x05;
const COMMAND_NOT_SUPPORTED: u8 = 0x07;
const ADDRESS_NOT_SUPPORTED: u8 = 0x08;

/// Reads the greeting and request; answers the greeting.
pub async fn handshake(s: &mut TcpStream) -> Result<Target, Socks5Error> {
    let mut head = [0u8; 2];
    s.read_exact(&mut head).await?;
    if head[0] != 5 {
        return Err(Socks5Error::Version(head[0]));
    }
    let mut methods = vec![0u8; head[1] as usize];
    s.read_exact(&mut methods).await?;
    if !methods.contains(&0) {
        s.write_all(&[5, 0xff]).await?;
        return Err(Socks5Error::NoAcceptableAuth);
    }
    s.write_all(&[5, 0]).await?;
    let mut req = [0u8; 4];
    s.read_exact(&mut req).await?;
    if req[0] != 5 {
        return Err(Socks5Error::Version(req[0]));
    }
    if req[1] != 1 {
        reply(s, COMMAND_NOT_SUPPORTED).await;
        return Err(Socks5Error::Command(req[1]));
    }
    let target = match req[3] {
        1 => {
            let mut b = [0u8; 6];
            s.read_exact(&mut b).await?;
            let ip = Ipv4Addr::new(b[0], b[1], b[2], b[3]);
            Target::Addr(SocketAddr::new(ip.into(), u16::from_be_bytes([b[4], b[5]])))
        }
        4 => {
            let mut b = [0u8; 18];
            s.read_exact(&mut b).await?;
            let mut ip = [0u8; 16];
            ip.copy_from_slice(&b[..16]);
            Target::Addr(SocketAddr::new(
                Ipv6Addr::from(ip).into(),
                u16::from_be_bytes([b[16], b[17]]),
            ))
        }
        3 => {
            let len = s.read_u8().await? as usize;
            let mut name = vec![0u8; len + 2];
            s.read_exact(&mut name).await?;
            let port = u16::from_be_bytes([name[len], name[len + 1]]);
            name.truncate(len);
            let host = String::from_utf8(name).map_err(|_| Socks5Error::BadDomain)?;
            match host.parse::<std::net::IpAddr>() {
                Ok(ip) => Target::Addr(SocketAddr::new(ip, port)),
                Err(_) => Target::Host(host, port),
            }
        }
        other => {
            reply(s, ADDRESS_NOT_SUPPORTED).await;
            return Err(Socks5Error::AddressType(other));
        }
    };
    Ok(target)
}

async fn reply(s: &mut TcpStream, code: u8) {
    // Bound address is not meaningful for a tunnel; report 0.0.0.0:0 as most proxies do.
    let _ = s.write_all(&[5, code, 0, 1, 0, 0, 0, 0, 0, 0]).await;
}

fn reply_code(e: &OutboundError) -> u8 {
    match e {
        OutboundError::UnknownSource(_) | OutboundError::SelfCall(_) => NOT_ALLOWED,
        OutboundError::Unresolvable(_) | OutboundError::NoHealthyUpstream { .. } => {
            HOST_UNREACHABLE
        }
        OutboundError::Connect { .. } => REFUSED,
        _ => GENERAL_FAILURE,
    }
}

/// Serves one SOCKS5 client.
pub async fn serve(proxy: Arc<Proxy>, mut stream: TcpStream, peer: SocketAddr) {
    let span = tracing::info_span!("socks5", src = %peer, dst = tracing::field::Empty);
    async move {
        let target =
            match tokio::time::timeout(Duration::from_secs(10), handshake(&mut stream)).await {
                Ok(Ok(t)) => t,
                Ok(Err(e)) => {
                    warn!(error = %e, "malformed SOCKS5 request");
                    metrics::counter!("ztunnel_socks5_errors_total", "reason" => "malformed")
                        .increment(1);
                    return;
                }
                Err(_) => {
                    warn!(error = %Socks5Error::Timeout, "malformed SOCKS5 request");
                    metrics::counter!("ztunnel_socks5_errors_total", "reason" => "timeout")
                        .increment(1);
                    return;
                }
            };
        tracing::Span::current().record("dst", tracing::field::display(&target));
        // Boxed: the set-up future (TLS, pool) is large and would otherwise live as long as the
        // connection inside the task.
        match Box::pin(proxy.connect_outbound(peer, target)).await {
            Ok(est) => {
                reply(&mut stream, 0).await;
                proxy.relay_outbound(stream, est).await;
            }
            Err(e) => {
                warn!(error = %e, "outbound connection failed");
                reply(&mut stream, reply_code(&e)).await;
            }
        }
    }
    .instrument(span)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    async fn run(bytes: Vec<u8>) -> (Result<Target, Socks5Error>, Vec<u8>) {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let client = tokio::spawn(async move {
            let mut c = TcpStream::connect(addr).await.expect("connect");
            c.write_all(&bytes).await.expect("write");
            c.shutdown().await.expect("shutdown");
            let mut out = Vec::new();
            let _ = c.read_to_end(&mut out).await;
            out
        });
        let (mut s, _) = l.accept().await.expect("accept");
        let r = handshake(&mut s).await;
        drop(s);
        (r, client.await.expect("join"))
    }

    #[tokio::test]
    async fn parses_ipv4_ipv6_and_domain() {
        let (t, out) = run(vec![5, 1, 0, 5, 1, 0, 1, 127, 0, 1, 2, 0, 80]).await;
        assert!(matches!(t, Ok(Target::Addr(a)) if a == "127.0.1.2:80".parse().expect("addr")));
        assert_eq!(out, vec![5, 0]);
        let mut v6 = vec![5, 1, 0, 5, 1, 0, 4];
        v6.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
        v6.extend_from_slice(&[0x1f, 0x90]);
        assert!(
            matches!(run(v6).await.0, Ok(Target::Addr(a)) if a == "[::1]:8080".parse().expect("addr"))
        );
        let mut d = vec![5, 1, 0, 5, 1, 0, 3, 8];
        d.extend_from_slice(b"svc.ns.x");
        d.extend_from_slice(&[0, 80]);
        assert!(matches!(run(d).await.0, Ok(Target::Host(h, 80)) if h == "svc.ns.x"));
    }

    #[tokio::test]
    async fn malformed_requests_are_errors() {
        assert!(matches!(
            run(vec![4, 1, 0]).await.0,
            Err(Socks5Error::Version(4))
        ));
        let (r, out) = run(vec![5, 1, 2]).await;
        assert!(matches!(r, Err(Socks5Error::NoAcceptableAuth)));
        assert_eq!(out, vec![5, 0xff]);
        let (r, out) = run(vec![5, 1, 0, 5, 2, 0, 1, 1, 2, 3, 4, 0, 80]).await;
        assert!(matches!(r, Err(Socks5Error::Command(2))));
        assert_eq!(out[2..4], [5, COMMAND_NOT_SUPPORTED]);
        assert!(matches!(
            run(vec![5, 1, 0, 5, 1, 0, 9]).await.0,
            Err(Socks5Error::AddressType(9))
        ));
        assert!(matches!(
            run(vec![5, 1, 0, 5, 1, 0, 1, 1]).await.0,
            Err(Socks5Error::Io(_))
        ));
    }
}

//! SOCKS5 client (RFC 1928, CONNECT, no authentication) that connects *from* a pod IP, so
//! ztunnel can tell which workload is calling.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Where to ask the proxy to connect.
#[derive(Clone, Debug)]
pub enum Dest {
    /// An IPv4/IPv6 address (address types 1 and 4).
    Addr(SocketAddr),
    /// A host name (address type 3), resolved by the proxy.
    Domain(String, u16),
}

impl std::fmt::Display for Dest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Dest::Addr(a) => write!(f, "{a}"),
            Dest::Domain(h, p) => write!(f, "{h}:{p}"),
        }
    }
}

/// A SOCKS5 reply other than success.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    /// RFC 1928 reply code (1 general failure, 2 not allowed, 4 host unreachable, 5 refused, ...).
    pub code: u8,
}

impl std::error::Error for Refused {}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = match self.code {
            1 => "general failure",
            2 => "connection not allowed by ruleset",
            3 => "network unreachable",
            4 => "host unreachable",
            5 => "connection refused",
            6 => "TTL expired",
            7 => "command not supported",
            8 => "address type not supported",
            _ => "unknown reply",
        };
        write!(f, "SOCKS5 reply {:#04x} ({what})", self.code)
    }
}

/// Opens a TCP connection from `src` (port chosen by the kernel) to `to`.
pub async fn connect_from(src: IpAddr, to: SocketAddr) -> anyhow::Result<TcpStream> {
    let socket = if to.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket
        .bind(SocketAddr::new(src, 0))
        .with_context(|| format!("binding source address {src}"))?;
    let s = tokio::time::timeout(Duration::from_secs(10), socket.connect(to))
        .await
        .with_context(|| format!("connect {src} -> {to} timed out"))?
        .with_context(|| format!("connect {src} -> {to}"))?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// Connects to the SOCKS5 proxy at `proxy` from `src` and asks for `dest`. On success the stream
/// is a byte pipe to the destination. A refusal is an error that downcasts to [`Refused`].
pub async fn connect(proxy: SocketAddr, src: IpAddr, dest: &Dest) -> anyhow::Result<TcpStream> {
    let mut s = connect_from(src, proxy).await?;
    tokio::time::timeout(Duration::from_secs(15), handshake(&mut s, dest))
        .await
        .with_context(|| format!("SOCKS5 handshake via {proxy} for {dest} timed out"))??;
    Ok(s)
}

async fn handshake(s: &mut TcpStream, dest: &Dest) -> anyhow::Result<()> {
    s.write_all(&[5, 1, 0]).await?;
    let mut m = [0u8; 2];
    s.read_exact(&mut m)
        .await
        .context("reading method selection")?;
    anyhow::ensure!(m == [5, 0], "proxy chose method {m:?}, expected [5, 0]");
    s.write_all(&request(dest)?).await?;
    let mut head = [0u8; 4];
    s.read_exact(&mut head)
        .await
        .context("reading SOCKS5 reply")?;
    anyhow::ensure!(head[0] == 5, "reply version {}", head[0]);
    let rest = match head[3] {
        1 => 4 + 2,
        4 => 16 + 2,
        3 => s.read_u8().await? as usize + 2,
        t => anyhow::bail!("reply address type {t}"),
    };
    let mut skip = vec![0u8; rest];
    s.read_exact(&mut skip).await?;
    if head[1] != 0 {
        return Err(Refused { code: head[1] }.into());
    }
    Ok(())
}

/// The CONNECT request bytes for `dest`.
pub fn request(dest: &Dest) -> anyhow::Result<Vec<u8>> {
    let mut r = vec![5, 1, 0];
    match dest {
        Dest::Addr(SocketAddr::V4(a)) => {
            r.push(1);
            r.extend_from_slice(&a.ip().octets());
            r.extend_from_slice(&a.port().to_be_bytes());
        }
        Dest::Addr(SocketAddr::V6(a)) => {
            r.push(4);
            r.extend_from_slice(&a.ip().octets());
            r.extend_from_slice(&a.port().to_be_bytes());
        }
        Dest::Domain(h, port) => {
            let len = u8::try_from(h.len()).context("domain longer than 255 bytes")?;
            r.push(3);
            r.push(len);
            r.extend_from_slice(h.as_bytes());
            r.extend_from_slice(&port.to_be_bytes());
        }
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_encoding() {
        let r = request(&Dest::Addr("127.0.1.2:8080".parse().expect("addr"))).expect("req");
        assert_eq!(r, vec![5, 1, 0, 1, 127, 0, 1, 2, 0x1f, 0x90]);
        let r = request(&Dest::Domain("a.b".into(), 80)).expect("req");
        assert_eq!(r, vec![5, 1, 0, 3, 3, b'a', b'.', b'b', 0, 80]);
    }
}

//! Test applications bound to a pod IP: an echo server that records who connected, and a bulk
//! server that reads to EOF and only then answers (for checksums and half-close).

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use rand::{RngCore, SeedableRng};
use ring::digest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// An echo server: every connection's bytes are sent back; on EOF it closes its write side.
/// Remembers the source address of every accepted connection.
pub struct EchoServer {
    /// Listening address.
    pub addr: SocketAddr,
    peers: Arc<Mutex<Vec<SocketAddr>>>,
    task: JoinHandle<()>,
}

impl EchoServer {
    /// Listens on `ip:port`.
    pub async fn start(ip: IpAddr, port: u16) -> anyhow::Result<Self> {
        let addr = SocketAddr::new(ip, port);
        let l = TcpListener::bind(addr)
            .await
            .with_context(|| format!("echo server cannot listen on {addr}"))?;
        let peers = Arc::new(Mutex::new(Vec::new()));
        let p = peers.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut s, peer)) = l.accept().await {
                p.lock().unwrap_or_else(|e| e.into_inner()).push(peer);
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                    let _ = w.shutdown().await;
                });
            }
        });
        Ok(EchoServer { addr, peers, task })
    }

    /// Source addresses of the connections accepted so far.
    pub fn peers(&self) -> Vec<SocketAddr> {
        self.peers.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Number of connections accepted so far.
    pub fn connections(&self) -> usize {
        self.peers.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Sends `msg` on `s`, half-closes, reads until EOF and checks the echo is exactly `msg`.
pub async fn echo_roundtrip(s: &mut TcpStream, msg: &[u8]) -> anyhow::Result<()> {
    s.write_all(msg)
        .await
        .context("writing to the echo server")?;
    s.shutdown().await.context("half-closing")?;
    let mut back = Vec::new();
    tokio::time::timeout(std::time::Duration::from_secs(15), s.read_to_end(&mut back))
        .await
        .context("echo timed out")?
        .context("reading the echo")?;
    anyhow::ensure!(
        back == msg,
        "echo mismatch: sent {} bytes, got {} back",
        msg.len(),
        back.len()
    );
    Ok(())
}

/// What the bulk server saw on one connection.
#[derive(Debug, Clone)]
pub struct BulkReport {
    /// Source address of the connection.
    pub peer: SocketAddr,
    /// Bytes read before EOF.
    pub received: u64,
    /// SHA-256 of those bytes.
    pub received_sha256: Vec<u8>,
    /// Bytes sent after EOF.
    pub sent: u64,
    /// SHA-256 of what it sent.
    pub sent_sha256: Vec<u8>,
}

/// Reads everything to EOF (hashing it), then sends `reply_len` random bytes and closes: the
/// reply only flows after the client's half-close, which is the point.
pub struct BulkServer {
    /// Listening address.
    pub addr: SocketAddr,
    reports: mpsc::UnboundedReceiver<anyhow::Result<BulkReport>>,
    task: JoinHandle<()>,
}

impl BulkServer {
    /// Listens on `ip:port`; every connection gets a `reply_len`-byte reply.
    pub async fn start(ip: IpAddr, port: u16, reply_len: u64) -> anyhow::Result<Self> {
        let addr = SocketAddr::new(ip, port);
        let l = TcpListener::bind(addr)
            .await
            .with_context(|| format!("bulk server cannot listen on {addr}"))?;
        let (tx, reports) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            let mut seed = 1u64;
            while let Ok((s, peer)) = l.accept().await {
                let tx = tx.clone();
                seed += 1;
                tokio::spawn(async move {
                    let _ = tx.send(serve_bulk(s, peer, reply_len, seed).await);
                });
            }
        });
        Ok(BulkServer {
            addr,
            reports,
            task,
        })
    }

    /// The next connection's report (waits up to 2 minutes).
    pub async fn next_report(&mut self) -> anyhow::Result<BulkReport> {
        tokio::time::timeout(std::time::Duration::from_secs(120), self.reports.recv())
            .await
            .context("bulk server saw no connection")?
            .context("bulk server stopped")?
    }
}

impl Drop for BulkServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve_bulk(
    mut s: TcpStream,
    peer: SocketAddr,
    reply_len: u64,
    seed: u64,
) -> anyhow::Result<BulkReport> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut ctx = digest::Context::new(&digest::SHA256);
    let mut received = 0u64;
    loop {
        let n = s.read(&mut buf).await.context("bulk server read")?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
        received += n as u64;
    }
    let received_sha256 = ctx.finish().as_ref().to_vec();
    let (sent, sent_sha256) = write_random(&mut s, reply_len, seed)
        .await
        .context("bulk server reply")?;
    s.shutdown().await.context("bulk server close")?;
    Ok(BulkReport {
        peer,
        received,
        received_sha256,
        sent,
        sent_sha256,
    })
}

/// Writes `len` pseudo-random bytes (seeded) to `w`; returns (bytes, SHA-256).
pub async fn write_random<W: AsyncWriteExt + Unpin>(
    w: &mut W,
    len: u64,
    seed: u64,
) -> anyhow::Result<(u64, Vec<u8>)> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut ctx = digest::Context::new(&digest::SHA256);
    let mut buf = vec![0u8; 64 * 1024];
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        rng.fill_bytes(&mut buf[..n]);
        ctx.update(&buf[..n]);
        w.write_all(&buf[..n]).await?;
        left -= n as u64;
    }
    w.flush().await?;
    Ok((len, ctx.finish().as_ref().to_vec()))
}

/// Reads `r` to EOF; returns (bytes, SHA-256).
pub async fn read_hash<R: AsyncReadExt + Unpin>(r: &mut R) -> anyhow::Result<(u64, Vec<u8>)> {
    let mut ctx = digest::Context::new(&digest::SHA256);
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            return Ok((total, ctx.finish().as_ref().to_vec()));
        }
        ctx.update(&buf[..n]);
        total += n as u64;
    }
}

//! Shared test fixtures: a throwaway CA and mTLS configs, a loopback HBONE test server,
//! handlers and small helpers.
#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use http::HeaderMap;
use mesh_hbone::client::{ConnectRequest, PoolKey};
use mesh_hbone::server::{serve_connection, InboundRequest};
use mesh_hbone::{Config, HboneError};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

/// Upper bound for any single step, so a broken implementation fails instead of hanging.
pub const STEP: Duration = Duration::from_secs(20);

pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// mTLS material signed by a throwaway CA. The server certificate carries IP SAN 0.0.0.0 (the
/// dummy server name HBONE dials with), so the stock webpki verifier accepts it.
pub struct Pki {
    pub server: Arc<ServerConfig>,
    /// Same certificate, but no ALPN: TLS succeeds and `h2` is not negotiated.
    pub server_no_alpn: Arc<ServerConfig>,
    pub client: Arc<ClientConfig>,
}

fn leaf(
    issuer: &Issuer<'_, KeyPair>,
    sans: Vec<String>,
    spiffe: &str,
    eku: ExtendedKeyUsagePurpose,
) -> anyhow::Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(sans)?;
    params
        .subject_alt_names
        .push(SanType::URI(spiffe.try_into()?));
    params.extended_key_usages = vec![eku];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let cert = params.signed_by(&key, issuer)?;
    let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    Ok((vec![cert.der().clone()], key_der))
}

pub fn pki() -> anyhow::Result<Pki> {
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "mesh-hbone test CA");
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, ca_key);

    let mut roots = RootCertStore::empty();
    roots.add(ca_cert.der().clone())?;
    let roots = Arc::new(roots);

    let (server_chain, server_key) = leaf(
        &issuer,
        vec!["0.0.0.0".to_string()],
        "spiffe://cluster.local/ns/default/sa/server",
        ExtendedKeyUsagePurpose::ServerAuth,
    )?;
    let (client_chain, client_key) = leaf(
        &issuer,
        Vec::new(),
        "spiffe://cluster.local/ns/default/sa/client",
        ExtendedKeyUsagePurpose::ClientAuth,
    )?;

    let server_config = |alpn: bool| -> anyhow::Result<Arc<ServerConfig>> {
        let verifier =
            WebPkiClientVerifier::builder_with_provider(roots.clone(), provider()).build()?;
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(server_chain.clone(), server_key.clone_key())?;
        if alpn {
            config.alpn_protocols = vec![b"h2".to_vec()];
        }
        Ok(Arc::new(config))
    };

    let mut client = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots.clone())
        .with_client_auth_cert(client_chain, client_key)?;
    client.alpn_protocols = vec![b"h2".to_vec()];
    client.enable_sni = false;

    Ok(Pki {
        server: server_config(true)?,
        server_no_alpn: server_config(false)?,
        client: Arc::new(client),
    })
}

/// A loopback TLS listener that runs `serve_connection` for every accepted connection.
pub struct TestServer {
    pub addr: SocketAddr,
    accepts: Arc<AtomicUsize>,
    /// One entry per finished `serve_connection`.
    pub finished: mpsc::UnboundedReceiver<Result<(), HboneError>>,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
    task: JoinHandle<()>,
}

impl TestServer {
    /// TCP connections accepted so far.
    pub fn accepts(&self) -> usize {
        self.accepts.load(Ordering::SeqCst)
    }

    /// Abruptly drops every server-side connection (TCP close without GOAWAY).
    pub fn kill_connections(&self) {
        for task in self.conns.lock().expect("conns lock").drain(..) {
            task.abort();
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
        self.kill_connections();
    }
}

pub async fn start_server<F, Fut>(
    tls: Arc<ServerConfig>,
    cfg: Config,
    handler: F,
) -> anyhow::Result<TestServer>
where
    F: Fn(InboundRequest) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let accepts = Arc::new(AtomicUsize::new(0));
    let conns = Arc::new(Mutex::new(Vec::new()));
    let (tx, finished) = mpsc::unbounded_channel();
    let acceptor = TlsAcceptor::from(tls);
    let task = tokio::spawn({
        let accepts = accepts.clone();
        let conns = conns.clone();
        async move {
            while let Ok((tcp, _)) = listener.accept().await {
                accepts.fetch_add(1, Ordering::SeqCst);
                let acceptor = acceptor.clone();
                let handler = handler.clone();
                let cfg = cfg.clone();
                let tx = tx.clone();
                let conn = tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let result = serve_connection(tls, &cfg, handler).await;
                    let _ = tx.send(result);
                });
                conns.lock().expect("conns lock").push(conn);
            }
        }
    });
    Ok(TestServer {
        addr,
        accepts,
        finished,
        conns,
        task,
    })
}

/// FNV-1a 64: a checksum both sides compute independently.
pub fn fnv1a(mut hash: u64, data: &[u8]) -> u64 {
    for b in data {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x100_0000_01b3);
    }
    hash
}
pub const FNV_INIT: u64 = 0xcbf2_9ce4_8422_2325;

/// Deterministic pseudo-random bytes (xorshift64*).
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Accepts with header `x-echo: 1`, echoes everything, and after the client's EOF (half-close)
/// appends the FNV checksum of what it received and ends its side.
pub async fn echo_handler(req: InboundRequest) {
    let mut headers = HeaderMap::new();
    headers.insert("x-echo", http::HeaderValue::from_static("1"));
    let Ok(mut stream) = req.accept(headers) else {
        return;
    };
    let mut buf = vec![0u8; 256 * 1024];
    let mut sum = FNV_INIT;
    loop {
        let n = match stream.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => n,
            Err(_) => return,
        };
        sum = fnv1a(sum, &buf[..n]);
        if stream.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
    if stream.write_all(&sum.to_be_bytes()).await.is_ok() {
        let _ = stream.shutdown().await;
    }
}

pub fn key(dst: SocketAddr) -> PoolKey {
    PoolKey::new(
        "spiffe://cluster.local/ns/default/sa/client",
        None,
        dst,
        vec!["spiffe://cluster.local/ns/default/sa/server".to_string()],
    )
}

pub fn connect_request(authority: &str) -> ConnectRequest {
    ConnectRequest {
        authority: authority.to_string(),
        headers: HeaderMap::new(),
    }
}

/// Writes one byte and reads it back: proves the stream is open end to end.
pub async fn ping_pong_byte<S>(stream: &mut S) -> anyhow::Result<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    stream.write_all(b"x").await?;
    let mut one = [0u8; 1];
    stream
        .read_exact(&mut one)
        .await
        .context("reading echoed byte")?;
    anyhow::ensure!(&one == b"x", "echo mismatch");
    Ok(())
}

/// Polls `cond` every 10 ms until true or `limit` passes (for state with no event to await).
pub async fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cond()
}

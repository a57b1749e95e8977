//! Hostile or broken input is refused without hanging, and the same ztunnel keeps serving
//! normal connections afterwards.
//!
//! Not here: an xDS NACK. istiod-lite validates IPs and ports before pushing, so no YAML edit can
//! make it send a malformed workload; the NACK path (ztunnel rejects a resource, keeps the last
//! good state, reports the error in the next request) is covered by ztunnel's xDS unit tests.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use mesh_e2e::apps::{self, EchoServer};
use mesh_e2e::ca::{issue_with, probing_client_config, request_cert, IssuedCert};
use mesh_e2e::socks5::{self, Dest, Refused};
use mesh_e2e::topology::{APP_PORT, CLIENT_IP, SERVER_IP};
use mesh_e2e::{Mesh, MeshOptions, Topology, CLIENT_SPIFFE};
use mesh_identity::spiffe::Identity;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const HBONE: u16 = 15008;

/// A normal SOCKS5 -> HBONE -> app round trip, and both ztunnels still running.
async fn still_serves(mesh: &Mesh) -> anyhow::Result<()> {
    let mut s = mesh
        .ztunnel("node1")
        .socks(
            CLIENT_IP,
            &Dest::Addr(SocketAddr::new(SERVER_IP.into(), APP_PORT)),
        )
        .await?;
    apps::echo_roundtrip(&mut s, b"still here?")
        .await
        .context("normal connection after bad input")?;
    for z in mesh.ztunnels() {
        z.check_running()?;
    }
    Ok(())
}

/// Reads until EOF or error; fails if the peer neither answers nor closes within 10 s.
async fn read_until_closed(s: &mut (impl AsyncReadExt + Unpin)) -> anyhow::Result<Vec<u8>> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let res = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    anyhow::ensure!(
        res.is_ok(),
        "peer neither answered nor closed within 10 s (a hang)"
    );
    Ok(got)
}

async fn mesh_with_app() -> (Mesh, EchoServer) {
    let mesh = Mesh::start(Topology::demo(), MeshOptions::default()).await;
    let app = EchoServer::start(SERVER_IP.into(), APP_PORT)
        .await
        .expect("app");
    (mesh, app)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_socks5_requests_are_answered_or_closed() {
    let (mesh, _app) = mesh_with_app().await;
    mesh.check(async {
        let proxy = mesh.ztunnel("node1").socks5;
        let from = IpAddr::V4(CLIENT_IP);
        // (what, bytes, acceptable first reply bytes or None for "just closed")
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("SOCKS4 greeting", vec![4, 1, 0, 80, 127, 0, 1, 2, 0]),
            (
                "HTTP instead of SOCKS",
                b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            ),
            ("no acceptable auth method", vec![5, 1, 2]),
            (
                "BIND command",
                vec![5, 1, 0, 5, 2, 0, 1, 127, 0, 1, 2, 0x1f, 0x90],
            ),
            (
                "unknown address type",
                vec![5, 1, 0, 5, 1, 0, 9, 1, 2, 3, 4],
            ),
            ("truncated request", vec![5, 1, 0, 5, 1, 0, 1, 127]),
            ("empty domain", vec![5, 1, 0, 5, 1, 0, 3, 0, 0, 80]),
        ];
        for (what, bytes) in cases {
            let mut s = socks5::connect_from(from, proxy).await?;
            s.write_all(&bytes).await?;
            // Half-close so a server waiting for more bytes sees EOF instead of waiting for its timeout.
            s.shutdown().await?;
            let got = read_until_closed(&mut s)
                .await
                .with_context(|| what.to_string())?;
            // Whatever it answered, it must not be a success reply to a CONNECT.
            let success =
                got.len() >= 4 && got[0] == 5 && got[1] == 0 && got[2] == 5 && got[3] == 0;
            anyhow::ensure!(!success, "{what}: got a success reply {got:?}");
            println!("{what}: reply {got:?} then close");
        }

        // Specific RFC 1928 reply codes where the request is well-formed but unsupported.
        let mut s = socks5::connect_from(from, proxy).await?;
        s.write_all(&[5, 1, 0, 5, 2, 0, 1, 127, 0, 1, 2, 0x1f, 0x90])
            .await?;
        let got = read_until_closed(&mut s).await?;
        anyhow::ensure!(
            got.get(3) == Some(&7),
            "BIND: expected reply 0x07 (command not supported), got {got:?}"
        );

        // A source that is not a pod on this node has no identity to present: refused.
        let err = socks5::connect(
            proxy,
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            &Dest::Addr(SocketAddr::new(SERVER_IP.into(), APP_PORT)),
        )
        .await
        .err()
        .context("a connection from a non-pod address was proxied")?;
        let code = err.downcast_ref::<Refused>().map(|r| r.code);
        anyhow::ensure!(
            code == Some(2),
            "unknown source: expected reply 0x02 (not allowed), got {err:#}"
        );

        // A client that connects and says nothing, next to normal traffic, does not block it.
        let _silent = socks5::connect_from(from, proxy).await?;
        still_serves(&mesh).await
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_the_hbone_port_is_dropped() {
    let (mesh, _app) = mesh_with_app().await;
    mesh.check(async {
        let hbone = SocketAddr::new(SERVER_IP.into(), HBONE);
        let mut s = socks5::connect_from(CLIENT_IP.into(), hbone).await?;
        let garbage: Vec<u8> = (0..4096u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        let _ = s.write_all(&garbage).await;
        let got = read_until_closed(&mut s).await?;
        println!("garbage on {hbone}: {} bytes back, then closed", got.len());
        // A plaintext HTTP/2 preface is not TLS either.
        let mut s = socks5::connect_from(CLIENT_IP.into(), hbone).await?;
        let _ = s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await;
        read_until_closed(&mut s).await?;
        still_serves(&mesh).await
    })
    .await;
}

/// Does a TLS handshake to `dst` presenting `cert` and sends an HTTP/2 preface + SETTINGS.
/// Returns true if the server talked HTTP/2 back (so it accepted us), false if it refused.
async fn accepted_by_hbone(dst: SocketAddr, cert: Option<&IssuedCert>) -> anyhow::Result<bool> {
    let cfg: Arc<rustls::ClientConfig> = probing_client_config(cert)?;
    let tcp = socks5::connect_from(CLIENT_IP.into(), dst).await?;
    let name = rustls::pki_types::ServerName::IpAddress(SERVER_IP.into());
    // With TLS 1.3 the client finishes its handshake before the server has judged its
    // certificate; the refusal arrives as an alert on the first read.
    let mut tls = match tokio_rustls::TlsConnector::from(cfg)
        .connect(name, tcp)
        .await
    {
        Ok(t) => t,
        Err(e) => {
            println!("handshake refused: {e}");
            return Ok(false);
        }
    };
    let mut preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    preface.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]); // empty SETTINGS frame
    if tls.write_all(&preface).await.is_err() || tls.flush().await.is_err() {
        return Ok(false);
    }
    let mut buf = [0u8; 9];
    match tokio::time::timeout(Duration::from_secs(10), tls.read(&mut buf)).await {
        Err(_) => anyhow::bail!("server neither answered nor closed (a hang)"),
        Ok(Ok(n)) if n > 0 => Ok(true),
        Ok(Ok(_)) => Ok(false),
        Ok(Err(e)) => {
            println!("refused after handshake: {e}");
            Ok(false)
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_without_client_certificate_is_refused() {
    let (mesh, _app) = mesh_with_app().await;
    mesh.check(async {
        let hbone = SocketAddr::new(SERVER_IP.into(), HBONE);
        // Positive control: the same probe with a real mesh certificate is accepted.
        let token = mesh.node_token("node1")?;
        let good = request_cert(
            mesh.istiod.xds_plaintext,
            Some(&token),
            &Identity::parse(CLIENT_SPIFFE)?,
        )
        .await
        .map_err(|s| anyhow::anyhow!("CA: {s}"))?;
        anyhow::ensure!(
            accepted_by_hbone(hbone, Some(&good)).await?,
            "probe with a valid mesh certificate was refused"
        );

        anyhow::ensure!(
            !accepted_by_hbone(hbone, None).await?,
            "TLS without a client certificate was accepted"
        );
        still_serves(&mesh).await
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_from_another_ca_is_refused() {
    let (mesh, _app) = mesh_with_app().await;
    mesh.check(async {
        let hbone = SocketAddr::new(SERVER_IP.into(), HBONE);
        // Same trust domain and identity as the real client, different root.
        let foreign = mesh_identity::ca::CertificateAuthority::self_signed("cluster.local")?;
        let forged = issue_with(&foreign, &Identity::parse(CLIENT_SPIFFE)?)?;
        anyhow::ensure!(
            !accepted_by_hbone(hbone, Some(&forged)).await?,
            "a certificate from another CA was accepted"
        );
        still_serves(&mesh).await
    })
    .await;
}

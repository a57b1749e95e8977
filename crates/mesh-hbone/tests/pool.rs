//! Connection pool behaviour over real loopback TCP + mTLS.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use http::HeaderMap;
use mesh_hbone::client::{Pool, TcpDialer};
use mesh_hbone::server::InboundRequest;
use mesh_hbone::{Config, HboneError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, Barrier};
use tokio::task::JoinSet;
use tokio::time::timeout;

/// Opens `n` streams concurrently on one key, proves each works, and holds them all open until
/// every one is established.
async fn open_concurrently(
    pool: &Pool,
    pki: &Pki,
    dst: std::net::SocketAddr,
    n: usize,
) -> anyhow::Result<()> {
    let barrier = Arc::new(Barrier::new(n));
    let mut tasks = JoinSet::new();
    for _ in 0..n {
        let pool = pool.clone();
        let tls = pki.client.clone();
        let barrier = barrier.clone();
        tasks.spawn(async move {
            let (mut stream, _) = pool
                .connect(key(dst), tls, connect_request("127.0.0.1:80"))
                .await?;
            ping_pong_byte(&mut stream).await?;
            // Keep this stream counted until all n are open at the same time.
            barrier.wait().await;
            anyhow::Ok(())
        });
    }
    timeout(STEP, async {
        while let Some(joined) = tasks.join_next().await {
            joined??;
        }
        anyhow::Ok(())
    })
    .await??;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_over_the_per_connection_limit_open_a_second_connection() -> anyhow::Result<()> {
    let pki = pki()?;
    let server = start_server(pki.server.clone(), Config::default(), echo_handler).await?;
    let pool = Pool::new(Config::default(), Arc::new(TcpDialer));

    open_concurrently(&pool, &pki, server.addr, 150).await?;
    assert_eq!(
        server.accepts(),
        2,
        "150 concurrent streams at 100 per connection"
    );
    assert_eq!(pool.connection_count(), 2);

    // All 150 ended; a new stream reuses a pooled connection.
    let (mut stream, _) = timeout(
        STEP,
        pool.connect(
            key(server.addr),
            pki.client.clone(),
            connect_request("127.0.0.1:80"),
        ),
    )
    .await??;
    ping_pong_byte(&mut stream).await?;
    assert_eq!(server.accepts(), 2, "no new dial for a stream that fits");
    assert!(pool.connection_count() <= 2);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_use_dials_once() -> anyhow::Result<()> {
    let pki = pki()?;
    let server = start_server(pki.server.clone(), Config::default(), echo_handler).await?;
    let pool = Pool::new(Config::default(), Arc::new(TcpDialer));

    open_concurrently(&pool, &pki, server.addr, 20).await?;
    assert_eq!(
        server.accepts(),
        1,
        "20 simultaneous first uses of a key share one dial"
    );
    assert_eq!(pool.connection_count(), 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_tls_handshake_does_not_block_other_keys() -> anyhow::Result<()> {
    let pki = pki()?;
    let server = start_server(pki.server.clone(), Config::default(), echo_handler).await?;

    // Accepts TCP, never answers the ClientHello.
    let hung = TcpListener::bind("127.0.0.1:0").await?;
    let hung_addr = hung.local_addr()?;
    let (accepted_tx, accepted_rx) = oneshot::channel();
    let hung_server = tokio::spawn(async move {
        let (socket, _) = hung.accept().await?;
        let _ = accepted_tx.send(());
        std::future::pending::<()>().await;
        drop(socket);
        anyhow::Ok(())
    });

    let cfg = Config {
        connect_timeout: Duration::from_secs(300),
        ..Config::default()
    };
    let pool = Pool::new(cfg, Arc::new(TcpDialer));
    let hung_connect = tokio::spawn({
        let pool = pool.clone();
        let tls = pki.client.clone();
        async move {
            pool.connect(key(hung_addr), tls, connect_request("127.0.0.1:80"))
                .await
        }
    });
    // Same key again: must wait for the in-flight dial, not dial a second time.
    let hung_connect_2 = tokio::spawn({
        let pool = pool.clone();
        let tls = pki.client.clone();
        async move {
            pool.connect(key(hung_addr), tls, connect_request("127.0.0.1:81"))
                .await
        }
    });
    timeout(STEP, accepted_rx).await??;

    // The dial for the hung key is now inside its TLS handshake.
    let (mut stream, _) = timeout(
        Duration::from_secs(10),
        pool.connect(
            key(server.addr),
            pki.client.clone(),
            connect_request("127.0.0.1:80"),
        ),
    )
    .await
    .map_err(|_| {
        anyhow::anyhow!("connect to a healthy key was blocked by a hung handshake on another key")
    })??;
    ping_pong_byte(&mut stream).await?;

    assert!(!hung_connect.is_finished(), "the hung key is still hanging");
    assert!(!hung_connect_2.is_finished());
    assert_eq!(pool.connection_count(), 1);
    hung_connect.abort();
    hung_connect_2.abort();
    hung_server.abort();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_timeout_bounds_a_hung_handshake() -> anyhow::Result<()> {
    let pki = pki()?;
    let hung = TcpListener::bind("127.0.0.1:0").await?;
    let hung_addr = hung.local_addr()?;
    let hung_server = tokio::spawn(async move {
        let (_socket, _) = hung.accept().await?;
        std::future::pending::<()>().await;
        anyhow::Ok(())
    });
    let cfg = Config {
        connect_timeout: Duration::from_millis(300),
        ..Config::default()
    };
    let pool = Pool::new(cfg, Arc::new(TcpDialer));
    let err = timeout(
        STEP,
        pool.connect(
            key(hung_addr),
            pki.client.clone(),
            connect_request("127.0.0.1:80"),
        ),
    )
    .await?
    .expect_err("handshake never completes");
    assert!(
        matches!(err, HboneError::ConnectTimeout { dst, .. } if dst == hung_addr),
        "got {err:?}"
    );
    assert!(err.to_string().contains(&hung_addr.to_string()), "{err}");
    assert_eq!(pool.connection_count(), 0);
    hung_server.abort();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_max_concurrent_streams_is_respected() -> anyhow::Result<()> {
    let pki = pki()?;
    let server_cfg = Config {
        server_max_concurrent_streams: 5,
        ..Config::default()
    };
    let server = start_server(pki.server.clone(), server_cfg, echo_handler).await?;
    let pool = Pool::new(Config::default(), Arc::new(TcpDialer));

    // One complete exchange first, so the server's SETTINGS (sent before any response) are in.
    let (mut first, _) = timeout(
        STEP,
        pool.connect(
            key(server.addr),
            pki.client.clone(),
            connect_request("127.0.0.1:80"),
        ),
    )
    .await??;
    ping_pong_byte(&mut first).await?;
    drop(first);

    open_concurrently(&pool, &pki, server.addr, 10).await?;
    assert_eq!(
        server.accepts(),
        2,
        "peer allows 5 streams per connection: 10 need 2"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connection_is_evicted_and_closed_busy_one_is_kept() -> anyhow::Result<()> {
    let pki = pki()?;
    let mut server = start_server(pki.server.clone(), Config::default(), echo_handler).await?;
    let idle = Duration::from_millis(300);
    let cfg = Config {
        pool_idle_timeout: idle,
        ..Config::default()
    };
    let pool = Pool::new(cfg, Arc::new(TcpDialer));

    let (mut stream, _) = timeout(
        STEP,
        pool.connect(
            key(server.addr),
            pki.client.clone(),
            connect_request("127.0.0.1:80"),
        ),
    )
    .await??;
    ping_pong_byte(&mut stream).await?;
    // An open stream keeps the connection pooled well past the idle timeout.
    tokio::time::sleep(idle * 3).await;
    assert_eq!(
        pool.connection_count(),
        1,
        "a connection with a live stream is not idle"
    );
    ping_pong_byte(&mut stream).await?;

    // End the stream cleanly, then the connection idles out of the pool...
    stream.shutdown().await?;
    let mut rest = Vec::new();
    timeout(STEP, stream.read_to_end(&mut rest)).await??;
    drop(stream);
    assert!(
        eventually(STEP, || pool.connection_count() == 0).await,
        "idle connection evicted"
    );
    // ...and, with no handle left, the HTTP/2 connection closes cleanly on the server too.
    let served = timeout(STEP, server.finished.recv()).await?;
    assert!(
        matches!(served, Some(Ok(()))),
        "server saw a clean close: {served:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_connection_is_dropped_and_replaced() -> anyhow::Result<()> {
    let pki = pki()?;
    let server = start_server(pki.server.clone(), Config::default(), echo_handler).await?;
    let pool = Pool::new(Config::default(), Arc::new(TcpDialer));

    let (mut stream, _) = timeout(
        STEP,
        pool.connect(
            key(server.addr),
            pki.client.clone(),
            connect_request("127.0.0.1:80"),
        ),
    )
    .await??;
    ping_pong_byte(&mut stream).await?;
    server.kill_connections();
    // The in-flight stream fails and the dead connection leaves the pool.
    let mut buf = [0u8; 8];
    let read = timeout(STEP, stream.read(&mut buf)).await?;
    assert!(
        !matches!(read, Ok(n) if n > 0),
        "no data from a dead connection: {read:?}"
    );
    assert!(
        eventually(STEP, || pool.connection_count() == 0).await,
        "broken connection removed"
    );

    let (mut stream, _) = timeout(
        STEP,
        pool.connect(
            key(server.addr),
            pki.client.clone(),
            connect_request("127.0.0.1:80"),
        ),
    )
    .await??;
    ping_pong_byte(&mut stream).await?;
    assert_eq!(server.accepts(), 2, "a fresh connection was dialed");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_keepalive_timeout_drops_unresponsive_connection() -> anyhow::Result<()> {
    let pki = pki()?;
    // Completes TLS (with h2 ALPN), then never reads or writes again.
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let acceptor = tokio_rustls::TlsAcceptor::from(pki.server.clone());
    let silent = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await?;
        let _tls = acceptor.accept(tcp).await?;
        std::future::pending::<()>().await;
        anyhow::Ok(())
    });

    let cfg = Config {
        keepalive_interval: Duration::from_millis(100),
        keepalive_timeout: Duration::from_millis(300),
        ..Config::default()
    };
    let pool = Pool::new(cfg, Arc::new(TcpDialer));
    let err = timeout(
        STEP,
        pool.connect(
            key(addr),
            pki.client.clone(),
            connect_request("127.0.0.1:80"),
        ),
    )
    .await
    .map_err(|_| anyhow::anyhow!("keepalive did not end the connection"))?
    .expect_err("no response ever comes");
    assert!(matches!(err, HboneError::H2(_)), "got {err:?}");
    assert!(
        eventually(STEP, || pool.connection_count() == 0).await,
        "dead connection removed"
    );
    silent.abort();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn different_keys_use_different_connections() -> anyhow::Result<()> {
    let pki = pki()?;
    let server = start_server(
        pki.server.clone(),
        Config::default(),
        |req: InboundRequest| async move {
            if let Ok(mut s) = req.accept(HeaderMap::new()) {
                let mut b = [0u8; 1];
                while matches!(s.read(&mut b).await, Ok(n) if n > 0) {
                    if s.write_all(&b).await.is_err() {
                        return;
                    }
                }
            }
        },
    )
    .await?;
    let pool = Pool::new(Config::default(), Arc::new(TcpDialer));
    let mut other = key(server.addr);
    other.src_identity = "spiffe://cluster.local/ns/other/sa/client".to_string();

    let (mut a, _) = timeout(
        STEP,
        pool.connect(
            key(server.addr),
            pki.client.clone(),
            connect_request("127.0.0.1:80"),
        ),
    )
    .await??;
    let (mut b, _) = timeout(
        STEP,
        pool.connect(other, pki.client.clone(), connect_request("127.0.0.1:80")),
    )
    .await??;
    ping_pong_byte(&mut a).await?;
    ping_pong_byte(&mut b).await?;
    assert_eq!(server.accepts(), 2);
    assert_eq!(pool.connection_count(), 2);
    Ok(())
}

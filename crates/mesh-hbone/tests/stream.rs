//! Data path and server behaviour over real loopback TCP + mTLS.

mod common;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use common::*;
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use mesh_hbone::client::{ConnectRequest, Pool, TcpDialer};
use mesh_hbone::server::{serve_connection, InboundRequest};
use mesh_hbone::{Config, HboneError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::timeout;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_20mb_with_half_close() -> anyhow::Result<()> {
    const LEN: usize = 20 * 1024 * 1024;
    let pki = pki()?;
    let server = start_server(pki.server.clone(), Config::default(), echo_handler).await?;
    let pool = Pool::new(Config::default(), Arc::new(TcpDialer));

    let (stream, headers) = timeout(
        STEP,
        pool.connect(
            key(server.addr),
            pki.client.clone(),
            connect_request("127.0.0.1:8080"),
        ),
    )
    .await??;
    assert_eq!(
        headers.get("x-echo").map(|v| v.as_bytes()),
        Some(b"1".as_slice())
    );

    let data = random_bytes(LEN, 0x5eed);
    let (mut rd, mut wr) = tokio::io::split(stream);
    let writer = async {
        wr.write_all(&data).await?;
        // Half-close: the server only sends its checksum after seeing EOF.
        wr.shutdown().await?;
        anyhow::Ok(())
    };
    let reader = async {
        let mut out = Vec::with_capacity(LEN + 8);
        rd.read_to_end(&mut out).await?;
        anyhow::Ok(out)
    };
    let ((), out) = timeout(Duration::from_secs(120), async {
        tokio::try_join!(writer, reader)
    })
    .await??;

    assert_eq!(out.len(), LEN + 8, "echo plus 8-byte checksum trailer");
    let (echoed, trailer) = out.split_at(LEN);
    assert!(
        echoed == data.as_slice(),
        "echoed bytes differ from sent bytes"
    );
    assert_eq!(
        fnv1a(FNV_INIT, echoed),
        fnv1a(FNV_INIT, &data),
        "client-side checksum of the echo"
    );
    let server_sum = u64::from_be_bytes(trailer.try_into()?);
    assert_eq!(
        server_sum,
        fnv1a(FNV_INIT, &data),
        "server-side checksum of what it received"
    );
    Ok(())
}

struct Seen {
    method: Method,
    authority: Option<String>,
    uri_has_scheme: bool,
    uri_has_path: bool,
    headers: HeaderMap,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authority_and_headers_arrive_and_response_headers_return() -> anyhow::Result<()> {
    let pki = pki()?;
    let (tx, mut rx) = mpsc::unbounded_channel::<Seen>();
    let handler = move |req: InboundRequest| {
        let tx = tx.clone();
        async move {
            let _ = tx.send(Seen {
                method: req.method().clone(),
                authority: req.authority().map(str::to_string),
                uri_has_scheme: req.uri().scheme().is_some(),
                uri_has_path: req.uri().path_and_query().is_some(),
                headers: req.headers().clone(),
            });
            let mut headers = HeaderMap::new();
            headers.insert(
                "baggage",
                HeaderValue::from_static("k8s.namespace.name=server-ns"),
            );
            if let Ok(mut stream) = req.accept(headers) {
                let _ = stream.shutdown().await;
                let mut sink = Vec::new();
                let _ = stream.read_to_end(&mut sink).await;
            }
        }
    };
    let server = start_server(pki.server.clone(), Config::default(), handler).await?;
    let pool = Pool::new(Config::default(), Arc::new(TcpDialer));

    let mut headers = HeaderMap::new();
    headers.insert(
        "baggage",
        HeaderValue::from_static("k8s.namespace.name=client-ns"),
    );
    headers.insert(
        "forwarded",
        HeaderValue::from_static("for=\"127.0.0.1:40000\""),
    );
    headers.insert(
        "traceparent",
        HeaderValue::from_static("00-0123456789abcdef0123456789abcdef-0123456789abcdef-00"),
    );
    headers.insert("x-custom", HeaderValue::from_static("yes"));
    let req = ConnectRequest {
        authority: "[fd00::7]:9080".to_string(),
        headers,
    };
    let (mut stream, resp_headers) = timeout(
        STEP,
        pool.connect(key(server.addr), pki.client.clone(), req),
    )
    .await??;
    assert_eq!(
        resp_headers.get("baggage").map(|v| v.as_bytes()),
        Some(b"k8s.namespace.name=server-ns".as_slice())
    );

    let seen = timeout(STEP, rx.recv())
        .await?
        .context("handler not called")?;
    assert_eq!(seen.method, Method::CONNECT);
    assert_eq!(seen.authority.as_deref(), Some("[fd00::7]:9080"));
    assert!(!seen.uri_has_scheme, "CONNECT must not carry :scheme");
    assert!(!seen.uri_has_path, "CONNECT must not carry :path");
    assert_eq!(
        seen.headers.get("x-custom").map(|v| v.as_bytes()),
        Some(b"yes".as_slice())
    );
    assert_eq!(
        seen.headers.get("baggage").map(|v| v.as_bytes()),
        Some(b"k8s.namespace.name=client-ns".as_slice())
    );
    assert!(seen.headers.contains_key("forwarded"));
    assert!(seen.headers.contains_key("traceparent"));

    // The server ended its side right away: the client reads EOF.
    let mut rest = Vec::new();
    timeout(STEP, stream.read_to_end(&mut rest)).await??;
    assert!(rest.is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_200_is_status_error() -> anyhow::Result<()> {
    let pki = pki()?;
    let server = start_server(
        pki.server.clone(),
        Config::default(),
        |req: InboundRequest| async move {
            req.reject(StatusCode::UNAUTHORIZED);
        },
    )
    .await?;
    let pool = Pool::new(Config::default(), Arc::new(TcpDialer));
    let err = timeout(
        STEP,
        pool.connect(
            key(server.addr),
            pki.client.clone(),
            connect_request("127.0.0.1:80"),
        ),
    )
    .await?
    .expect_err("a 401 must not yield a stream");
    assert!(
        matches!(err, HboneError::Status(StatusCode::UNAUTHORIZED)),
        "got {err:?}"
    );
    assert!(
        err.to_string().contains("401"),
        "message names the status: {err}"
    );
    // The connection itself is fine and stays pooled.
    assert_eq!(pool.connection_count(), 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_reset_surfaces_as_io_error() -> anyhow::Result<()> {
    let pki = pki()?;
    // Accepts, reads one byte, then drops the stream mid-flight (RST_STREAM CANCEL).
    let server = start_server(
        pki.server.clone(),
        Config::default(),
        |req: InboundRequest| async move {
            if let Ok(mut stream) = req.accept(HeaderMap::new()) {
                let mut one = [0u8; 1];
                let _ = stream.read_exact(&mut one).await;
                drop(stream);
            }
        },
    )
    .await?;
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
    stream.write_all(b"x").await?;
    let mut buf = [0u8; 16];
    let err = timeout(STEP, stream.read(&mut buf))
        .await?
        .expect_err("read after a peer reset must fail, not return EOF");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_drop_resets_stream_on_server() -> anyhow::Result<()> {
    let pki = pki()?;
    let (tx, mut rx) = mpsc::unbounded_channel::<std::io::Result<usize>>();
    let handler = move |req: InboundRequest| {
        let tx = tx.clone();
        async move {
            if let Ok(mut stream) = req.accept(HeaderMap::new()) {
                let mut one = [0u8; 1];
                if stream.read_exact(&mut one).await.is_ok() && stream.write_all(&one).await.is_ok()
                {
                    let mut buf = [0u8; 16];
                    let _ = tx.send(stream.read(&mut buf).await);
                }
            }
        }
    };
    let server = start_server(pki.server.clone(), Config::default(), handler).await?;
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
    drop(stream);
    let read = timeout(STEP, rx.recv()).await?.context("handler gone")?;
    let err = read.expect_err("server read after client drop must be an error (reset), not EOF");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_without_h2_alpn_is_rejected() -> anyhow::Result<()> {
    let pki = pki()?;
    let server = start_server(pki.server_no_alpn.clone(), Config::default(), echo_handler).await?;
    let pool = Pool::new(Config::default(), Arc::new(TcpDialer));
    let err = timeout(
        STEP,
        pool.connect(
            key(server.addr),
            pki.client.clone(),
            connect_request("127.0.0.1:80"),
        ),
    )
    .await?
    .expect_err("no ALPN must fail");
    assert!(matches!(err, HboneError::Alpn), "got {err:?}");
    assert_eq!(pool.connection_count(), 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_connect_failure_names_destination() -> anyhow::Result<()> {
    let pki = pki()?;
    // Bind then drop to get a loopback port with nothing listening.
    let addr = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await?
        .local_addr()?;
    let pool = Pool::new(Config::default(), Arc::new(TcpDialer));
    let err = timeout(
        STEP,
        pool.connect(
            key(addr),
            pki.client.clone(),
            connect_request("127.0.0.1:80"),
        ),
    )
    .await?
    .expect_err("nothing listens there");
    assert!(matches!(err, HboneError::Connect(_)), "got {err:?}");
    assert!(
        err.to_string().contains(&addr.to_string()),
        "message names {addr}: {err}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_authority_is_rejected_before_dialing() -> anyhow::Result<()> {
    let pki = pki()?;
    let addr = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await?
        .local_addr()?;
    let pool = Pool::new(Config::default(), Arc::new(TcpDialer));
    let err = pool
        .connect(key(addr), pki.client.clone(), connect_request("no-port"))
        .await
        .expect_err("authority without port");
    assert!(
        matches!(err, HboneError::InvalidAuthority { .. }),
        "got {err:?}"
    );
    Ok(())
}

#[tokio::test]
async fn garbage_input_makes_serve_connection_fail() -> anyhow::Result<()> {
    let (mut client, server) = tokio::io::duplex(64 * 1024);
    let serve = tokio::spawn(async move {
        serve_connection(server, &Config::default(), |_req: InboundRequest| async {}).await
    });
    client
        .write_all(b"GET / HTTP/1.1\r\nHost: example\r\n\r\n\x00\xff\x13garbage garbage garbage")
        .await?;
    let result = timeout(STEP, serve).await??;
    assert!(result.is_err(), "garbage must be an error, got {result:?}");
    Ok(())
}

/// HTTP/2 connection preface plus an empty SETTINGS frame.
const PREFACE_AND_SETTINGS: &[u8] =
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

#[tokio::test]
async fn server_keepalive_closes_unresponsive_connection() -> anyhow::Result<()> {
    let cfg = Config {
        keepalive_interval: Duration::from_millis(100),
        keepalive_timeout: Duration::from_millis(300),
        ..Config::default()
    };
    // A peer that sends a valid preface and then never reads: PINGs go unanswered.
    let (mut client, server) = tokio::io::duplex(1024 * 1024);
    let serve = tokio::spawn(async move {
        serve_connection(server, &cfg, |_req: InboundRequest| async {}).await
    });
    client.write_all(PREFACE_AND_SETTINGS).await?;
    let result = timeout(STEP, serve).await??;
    assert!(
        matches!(result, Err(HboneError::KeepaliveTimeout(_))),
        "got {result:?}"
    );
    drop(client);
    Ok(())
}

#[tokio::test]
async fn non_connect_requests_reach_the_handler() -> anyhow::Result<()> {
    let (client_io, server_io) = tokio::io::duplex(1024 * 1024);
    let (tx, mut rx) = mpsc::unbounded_channel::<Method>();
    let serve = tokio::spawn(async move {
        serve_connection(server_io, &Config::default(), move |req: InboundRequest| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(req.method().clone());
                // ztunnel's answer to anything but CONNECT.
                req.reject(StatusCode::BAD_REQUEST);
            }
        })
        .await
    });
    let (send, connection) = h2::client::handshake(client_io).await?;
    let driver = tokio::spawn(connection);
    let mut send = send.ready().await?;
    let request = http::Request::get("http://example.com/").body(())?;
    let (response, _) = send.send_request(request, true)?;
    let response = timeout(STEP, response).await??;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(rx.recv().await, Some(Method::GET));

    // Closing the client side cleanly ends serve_connection with Ok.
    drop(send);
    drop(response);
    timeout(STEP, driver).await???;
    let result = timeout(STEP, serve).await??;
    assert!(result.is_ok(), "clean close: {result:?}");
    Ok(())
}

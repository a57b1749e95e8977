//! The small HTTP/1.1 endpoints ztunnel and the waypoint serve (admin, Prometheus stats,
//! readiness): one accept/serve loop, response helpers, and the streamed `/debug/tap` answer.
//! Handlers are plain functions from request to response: nothing they do is slow.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Response body: a whole buffer or a stream.
pub type Body = BoxBody<Bytes, Infallible>;

/// A plain-text (or any buffered) response.
pub fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()).boxed());
    *r.status_mut() = status;
    r
}

/// A 200 JSON response.
pub fn json(body: String) -> Response<Body> {
    with_type(text(StatusCode::OK, body), "application/json")
}

/// A 200 Prometheus text-format response.
pub fn prometheus(body: String) -> Response<Body> {
    with_type(text(StatusCode::OK, body), "text/plain; version=0.0.4")
}

fn with_type(mut r: Response<Body>, ct: &'static str) -> Response<Body> {
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(ct),
    );
    r
}

/// `/debug/tap?namespace=&workload=&limit=&duration=`: the hub's events as a streamed NDJSON
/// body (400 naming the bad parameter).
pub fn tap(hub: &mesh_tap::Hub, query: Option<&str>) -> Response<Body> {
    match mesh_tap::Filter::from_query(query) {
        Ok(f) => {
            use futures_util::StreamExt;
            let frames = hub
                .stream(f)
                .map(|b| Ok::<_, Infallible>(hyper::body::Frame::data(b)));
            with_type(
                Response::new(BodyExt::boxed(StreamBody::new(frames))),
                "application/x-ndjson",
            )
        }
        Err(e) => text(StatusCode::BAD_REQUEST, format!("{e}\n")),
    }
}

/// Binds a listener, naming the address in the error.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))
}

/// Serves `handler` on `listener` until `shutdown`.
pub async fn serve<F>(
    listener: TcpListener,
    name: &'static str,
    shutdown: CancellationToken,
    handler: F,
) where
    F: Fn(Request<Incoming>) -> Response<Body> + Clone + Send + Sync + 'static,
{
    info!(server = name, addr = ?listener.local_addr().ok(), "listening");
    loop {
        let (stream, _) = tokio::select! {
            _ = shutdown.cancelled() => return,
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => { warn!(server = name, error = %e, "accept failed"); continue; }
            },
        };
        let handler = handler.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let handler = handler.clone();
                async move { Ok::<_, Infallible>(handler(req)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

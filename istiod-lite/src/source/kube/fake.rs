//! Test-only fake API server: a tower-test mock service behind a real [`kube::Client`], answering
//! with Kubernetes' JSON shapes from a scripted handler, and recording every request.

use std::sync::{Arc, Mutex};

use http_body_util::BodyExt;
use kube::client::Body;
use kube::Client;
use serde_json::{json, Value};

/// One request as the handler sees it.
#[derive(Debug, Clone)]
pub struct Req {
    /// HTTP method.
    pub method: String,
    /// Path without the query.
    pub path: String,
    /// Query string ("" when none).
    pub query: String,
    /// Content-Type header.
    pub content_type: String,
    /// JSON body (Null when none).
    pub body: Value,
}

impl Req {
    /// True for a watch request.
    pub fn is_watch(&self) -> bool {
        self.query.contains("watch=true")
    }
    /// Value of query parameter `k`.
    pub fn param(&self, k: &str) -> Option<String> {
        self.query.split('&').find_map(|kv| {
            let (a, b) = kv.split_once('=')?;
            (a == k).then(|| b.to_string())
        })
    }
}

/// How the fake answers.
pub enum Reply {
    /// A JSON body with this status code.
    Json(u16, Value),
    /// A watch stream: these events, one JSON per line, then the stream ends.
    Events(Vec<Value>),
    /// Never answer (an idle watch).
    Hang,
}

/// A Kubernetes `Status` error body.
pub fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

/// A list response.
pub fn list(kind: &str, api_version: &str, rv: &str, items: Vec<Value>) -> Value {
    json!({"kind": format!("{kind}List"), "apiVersion": api_version,
           "metadata": {"resourceVersion": rv}, "items": items})
}

/// A watch event.
pub fn event(kind: &str, object: Value) -> Value {
    json!({"type": kind, "object": object})
}

/// Recorded requests.
pub type Log = Arc<Mutex<Vec<Req>>>;

/// A client whose requests go to `handler`.
pub fn client(mut handler: impl FnMut(&Req) -> Reply + Send + 'static) -> (Client, Log) {
    let (svc, mut handle) = tower_test::mock::pair::<http::Request<Body>, http::Response<Body>>();
    let log: Log = Arc::default();
    let log2 = log.clone();
    tokio::spawn(async move {
        let mut idle = Vec::new();
        while let Some((req, send)) = handle.next_request().await {
            let (parts, body) = req.into_parts();
            let bytes = body
                .collect()
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            let r = Req {
                method: parts.method.to_string(),
                path: parts.uri.path().to_string(),
                query: parts.uri.query().unwrap_or("").to_string(),
                content_type: parts
                    .headers
                    .get(http::header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string(),
                body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            };
            log2.lock().unwrap().push(r.clone());
            let (code, bytes) = match handler(&r) {
                Reply::Json(code, v) => (code, serde_json::to_vec(&v).unwrap()),
                Reply::Events(evs) => {
                    let mut out = Vec::new();
                    for e in evs {
                        out.extend(serde_json::to_vec(&e).unwrap());
                        out.push(b'\n');
                    }
                    (200, out)
                }
                Reply::Hang => {
                    idle.push(send);
                    continue;
                }
            };
            let resp = http::Response::builder()
                .status(code)
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(Body::from(bytes))
                .unwrap();
            send.send_response(resp);
        }
    });
    (Client::new(svc, "default"), log)
}

/// Requests recorded so far matching `f`.
pub fn count(log: &Log, f: impl Fn(&Req) -> bool) -> usize {
    log.lock().unwrap().iter().filter(|r| f(r)).count()
}

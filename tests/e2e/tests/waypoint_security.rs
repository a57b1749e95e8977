//! L7 security and tracing at the waypoint, end to end: istiod-lite pushes AuthorizationPolicies
//! (targetRefs to the waypoint Gateway and to a Service) and a RequestAuthentication whose JWKS
//! the waypoint fetches from a local server; two clients with different identities from the test
//! CA send requests over HBONE; a local OTLP collector stub records the waypoint's spans.

use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_e2e::topology::Pod;
use mesh_e2e::waypoint::{
    backend, client, send, service_yaml, start_waypoint, Mode, WAYPOINT_GATEWAY_YAML,
};
use mesh_e2e::{eventually, Mesh, MeshOptions, Topology};
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};

const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 7, 20);
const INTRUDER_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 7, 19);
const ECHO_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 7, 21);
const WAYPOINT_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 7, 30);
const STUB_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 7, 40);
const ECHO_VIP: &str = "127.0.8.21:80";
const WAYPOINT_ID: &str = "spiffe://cluster.local/ns/app/sa/waypoint";
const CLIENT_ID: &str = "spiffe://cluster.local/ns/client/sa/client";
const INTRUDER_ID: &str = "spiffe://cluster.local/ns/client/sa/intruder";
const ISSUER: &str = "https://issuer.test";

fn topology() -> Topology {
    let mut echo = Pod::new("app", "echo", "echo", "node1", ECHO_IP, "x");
    echo.labels = [("app".to_string(), "echo".to_string())].into();
    let mut waypoint = Pod::new("app", "waypoint-0", "waypoint", "wpnode", WAYPOINT_IP, "x");
    waypoint.labels = [(
        "gateway.networking.k8s.io/gateway-name".to_string(),
        "waypoint".to_string(),
    )]
    .into();
    Topology {
        ambient_namespaces: vec!["app".into(), "client".into()],
        pods: vec![
            Pod::new("client", "client", "client", "node1", CLIENT_IP, "client"),
            Pod::new(
                "client",
                "intruder",
                "intruder",
                "node1",
                INTRUDER_IP,
                "intruder",
            ),
            echo,
            waypoint,
        ],
        services: vec![],
    }
}

fn config(jwks_uri: &str) -> String {
    let mut y = WAYPOINT_GATEWAY_YAML.to_string();
    y += &service_yaml("echo", ECHO_VIP, "app: echo");
    y += &format!(
        r#"---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: deny-admin, namespace: app}}
spec:
  targetRefs: [{{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}}]
  action: DENY
  rules: [{{to: [{{operation: {{paths: ["/admin*"]}}}}]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: audit, namespace: app}}
spec:
  targetRefs: [{{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}}]
  action: AUDIT
  rules: [{{to: [{{operation: {{paths: ["/public/audited"]}}}}]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: echo, namespace: app}}
spec:
  targetRefs: [{{kind: Service, group: "", name: echo}}]
  action: ALLOW
  rules:
  - from: [{{source: {{principals: ["cluster.local/ns/client/sa/client"]}}}}]
    to: [{{operation: {{methods: [GET], paths: ["/public/*", "/admin*"]}}}}]
  - to: [{{operation: {{paths: ["/hdr"]}}}}]
    when: [{{key: "request.headers[x-token]", values: ["letmein"]}}]
  - from: [{{source: {{requestPrincipals: ["{ISSUER}/*"]}}}}]
    to: [{{operation: {{paths: ["/jwt"]}}}}]
  - to: [{{operation: {{paths: ["/claims"]}}}}]
    when: [{{key: "request.auth.claims[groups]", values: ["admin"]}}]
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: jwt, namespace: app}}
spec:
  targetRefs: [{{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}}]
  jwtRules:
  - issuer: {ISSUER}
    audiences: [api]
    jwksUri: {jwks_uri}
"#
    );
    y
}

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

struct Signer(EcdsaKeyPair);

impl Signer {
    fn new() -> Self {
        let rng = SystemRandom::new();
        let pk8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .expect("generate key");
        Signer(
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pk8.as_ref(), &rng)
                .expect("load key"),
        )
    }

    fn jwks(&self) -> String {
        let p = self.0.public_key().as_ref();
        serde_json::json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": "k1", "alg": "ES256",
            "x": b64(&p[1..33]), "y": b64(&p[33..65])}]})
        .to_string()
    }

    fn token(&self, claims: serde_json::Value) -> String {
        let h = b64(br#"{"alg":"ES256","typ":"JWT","kid":"k1"}"#);
        let msg = format!("{h}.{}", b64(claims.to_string().as_bytes()));
        let sig = self
            .0
            .sign(&SystemRandom::new(), msg.as_bytes())
            .expect("sign");
        format!("{msg}.{}", b64(sig.as_ref()))
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn claims(sub: &str, groups: &[&str]) -> serde_json::Value {
    serde_json::json!({"iss": ISSUER, "sub": sub, "aud": "api", "exp": now() + 600, "groups": groups})
}

/// A tiny HTTP/1.1 server on `STUB_IP`: GET answers `get_body`; POST bodies are recorded.
async fn stub(get_body: String) -> anyhow::Result<(SocketAddr, Arc<Mutex<Vec<Bytes>>>)> {
    let l = tokio::net::TcpListener::bind((STUB_IP, 0)).await?;
    let addr = l.local_addr()?;
    let posts = Arc::new(Mutex::new(Vec::new()));
    let rec = posts.clone();
    let get_body = Bytes::from(get_body);
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let rec = rec.clone();
            let get_body = get_body.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let rec = rec.clone();
                    let get_body = get_body.clone();
                    async move {
                        let body = if req.method() == http::Method::POST {
                            let b = req.into_body().collect().await.map(|c| c.to_bytes());
                            if let (Ok(b), Ok(mut r)) = (b, rec.lock()) {
                                r.push(b);
                            }
                            Bytes::from_static(b"{}")
                        } else {
                            get_body
                        };
                        Ok::<_, Infallible>(Response::new(Full::new(body)))
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    Ok((addr, posts))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waypoint_enforces_authorization_jwt_and_traces() {
    let opts = MeshOptions {
        nodes: Some(vec!["node1".into()]),
        ..Default::default()
    };
    let mesh = Mesh::start(topology(), opts).await;
    mesh.check(async {
        let signer = Signer::new();
        let (jwks_addr, _) = stub(signer.jwks()).await?;
        let (otlp_addr, spans) = stub(String::new()).await?;
        let _echo = backend(ECHO_IP, "echo", Mode::Echo).await?;
        mesh.write_config(
            "waypoint",
            &config(&format!("http://{jwks_addr}/jwks.json")),
        )?;
        let otlp = format!("http://{otlp_addr}");
        let wp = start_waypoint(
            &mesh,
            WAYPOINT_IP,
            "app",
            "waypoint",
            &[("OTEL_EXPORTER_OTLP_ENDPOINT", otlp.as_str())],
        )
        .await?;
        let c = client(
            &mesh,
            "node1",
            CLIENT_ID,
            CLIENT_IP,
            WAYPOINT_ID,
            WAYPOINT_IP,
        )
        .await?;
        let i = client(
            &mesh,
            "node1",
            INTRUDER_ID,
            INTRUDER_IP,
            WAYPOINT_ID,
            WAYPOINT_IP,
        )
        .await?;
        let mut s = eventually(
            "the waypoint enforces the pushed policies",
            Duration::from_secs(20),
            Duration::from_millis(100),
            || async {
                let mut s = c.http1(ECHO_VIP).await?;
                let a = send(&mut s, "GET", "/private", &[]).await?;
                Ok((a.status == 403).then_some(s))
            },
        )
        .await?;
        let mut si = i.http1(ECHO_VIP).await?;

        // Allow/deny by path, method, principal.
        let a = send(&mut s, "GET", "/public/x", &[]).await?;
        anyhow::ensure!(
            a.status == 200 && a.pod() == "echo",
            "client GET /public/x: {}",
            a.status
        );
        anyhow::ensure!(
            send(&mut s, "POST", "/public/x", &[]).await?.status == 403,
            "POST allowed"
        );
        anyhow::ensure!(
            send(&mut si, "GET", "/public/x", &[]).await?.status == 403,
            "intruder allowed"
        );
        // DENY wins over ALLOW; a normalized path cannot sneak past it.
        anyhow::ensure!(
            send(&mut s, "GET", "/admin/x", &[]).await?.status == 403,
            "/admin allowed"
        );
        anyhow::ensure!(
            send(&mut s, "GET", "/public/../admin/x", &[]).await?.status == 403,
            "/public/../admin allowed"
        );
        // 403 body, as Envoy's RBAC filter.
        let mut raw = c.http1(ECHO_VIP).await?;
        raw.ready().await?;
        let resp = raw
            .send_request(
                Request::get("/private")
                    .header("host", "echo.app.svc.cluster.local")
                    .body(Full::new(Bytes::new()))?,
            )
            .await?;
        let body = resp.into_body().collect().await?.to_bytes();
        anyhow::ensure!(
            body.as_ref() == b"RBAC: access denied\n" || body.as_ref() == b"RBAC: access denied",
            "403 body {:?}",
            String::from_utf8_lossy(&body)
        );

        // By header.
        anyhow::ensure!(
            send(&mut si, "GET", "/hdr", &[("x-token", "letmein")])
                .await?
                .status
                == 200,
            "header rule"
        );
        anyhow::ensure!(
            send(&mut si, "GET", "/hdr", &[("x-token", "nope")])
                .await?
                .status
                == 403,
            "bad header allowed"
        );

        // JWT: accepted, requestPrincipals and claims usable in policy, token not forwarded.
        let good = signer.token(claims("alice", &["admin"]));
        let bearer = |t: &str| format!("Bearer {t}");
        let a = send(&mut si, "GET", "/jwt", &[("authorization", &bearer(&good))]).await?;
        anyhow::ensure!(a.status == 200, "valid JWT: {}", a.status);
        anyhow::ensure!(
            a.body["headers"].get("authorization").is_none(),
            "token forwarded: {}",
            a.body
        );
        anyhow::ensure!(
            send(&mut si, "GET", "/jwt", &[]).await?.status == 403,
            "no token allowed on /jwt"
        );
        anyhow::ensure!(
            send(
                &mut si,
                "GET",
                "/claims",
                &[("authorization", &bearer(&good))]
            )
            .await?
            .status
                == 200,
            "claim rule"
        );
        let dev = signer.token(claims("bob", &["dev"]));
        anyhow::ensure!(
            send(
                &mut si,
                "GET",
                "/claims",
                &[("authorization", &bearer(&dev))]
            )
            .await?
            .status
                == 403,
            "dev claim allowed"
        );
        // JWT rejected: bad signature, expired, wrong issuer, wrong audience.
        let other = Signer::new().token(claims("alice", &["admin"]));
        let mut expired = claims("alice", &["admin"]);
        expired["exp"] = serde_json::json!(now() - 3600);
        let mut wrong_iss = claims("alice", &["admin"]);
        wrong_iss["iss"] = serde_json::json!("https://evil.test");
        let mut wrong_aud = claims("alice", &["admin"]);
        wrong_aud["aud"] = serde_json::json!("web");
        for (what, t) in [
            ("bad signature", other),
            ("expired", signer.token(expired)),
            ("wrong issuer", signer.token(wrong_iss)),
            ("wrong audience", signer.token(wrong_aud)),
            ("garbage", "not.a.jwt".to_string()),
        ] {
            let a = send(&mut si, "GET", "/jwt", &[("authorization", &bearer(&t))]).await?;
            anyhow::ensure!(a.status == 401, "{what}: {}", a.status);
        }

        // AUDIT: allowed, marked in the access log.
        anyhow::ensure!(
            send(&mut s, "GET", "/public/audited", &[]).await?.status == 200,
            "audited"
        );

        // Tracing: traceparent continued with a new span, tracestate passed through, span exported.
        let tid = "4bf92f3577b34da6a3ce929d0e0e4736";
        let parent = "00f067aa0ba902b7";
        let a = send(
            &mut s,
            "GET",
            "/public/traced",
            &[
                ("traceparent", &format!("00-{tid}-{parent}-01")),
                ("tracestate", "vendor=abc"),
            ],
        )
        .await?;
        let tp = a.body["headers"]["traceparent"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let parts: Vec<&str> = tp.split('-').collect();
        anyhow::ensure!(
            parts.len() == 4 && parts[1] == tid && parts[2] != parent && parts[3] == "01",
            "backend traceparent {tp:?}"
        );
        anyhow::ensure!(
            a.body["headers"]["tracestate"] == "vendor=abc",
            "tracestate {}",
            a.body
        );
        let our_span = parts[2].to_string();
        eventually(
            "the collector stub received the waypoint's span",
            Duration::from_secs(10),
            Duration::from_millis(50),
            || async {
                let posts = spans.lock().map(|p| p.clone()).unwrap_or_default();
                let found = posts.iter().any(|b| {
                    let v: serde_json::Value = serde_json::from_slice(b).unwrap_or_default();
                    v["resourceSpans"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|rs| {
                            rs["scopeSpans"].as_array().into_iter().flatten().any(|ss| {
                                ss["spans"].as_array().into_iter().flatten().any(|sp| {
                                    sp["traceId"] == tid
                                        && sp["parentSpanId"] == parent
                                        && sp["spanId"] == our_span.as_str()
                                })
                            })
                        })
                });
                Ok(found.then_some(()))
            },
        )
        .await?;

        // Metrics: 403s and 401s counted with Istio's labels.
        let m = wp.metrics().await?;
        let denied = m.sum(
            "istio_requests_total",
            &[
                ("reporter", "waypoint"),
                ("source_principal", INTRUDER_ID),
                ("response_code", "403"),
            ],
        );
        anyhow::ensure!(denied >= 3.0, "403s from the intruder: {denied}");
        let unauth = m.sum("istio_requests_total", &[("response_code", "401")]);
        anyhow::ensure!(unauth >= 5.0, "401s: {unauth}");
        let by_deny = m.sum(
            "waypoint_authz_denied_total",
            &[("policy", "app/deny-admin")],
        );
        anyhow::ensure!(by_deny >= 2.0, "denies by app/deny-admin: {by_deny}");

        // Access log: AUDIT mark and trace id.
        let log = std::fs::read_to_string(mesh.dir.join("logs").join("waypoint-waypoint.log"))?;
        anyhow::ensure!(
            log.lines().any(|l| l.contains("/public/audited")
                && l.contains("\"audit_policies\":[\"app/audit\"]")),
            "no audit mark in the access log"
        );
        anyhow::ensure!(
            log.lines().any(|l| l.contains(tid)),
            "no trace id in the access log"
        );
        anyhow::ensure!(!log.contains(&good), "a token was logged");
        Ok(())
    })
    .await;
}

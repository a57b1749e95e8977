use mesh_identity::ca::CertificateAuthority;
use mesh_identity::csr;
use mesh_identity::spiffe::Identity;
use mesh_proto::ca::istio_certificate_service_server::IstioCertificateService;
use mesh_proto::ca::IstioCertificateRequest;
use serde_json::{json, Value};
use tonic::Code;

use super::*;
use crate::ca::CaService;
use crate::source::kube::fake::{self, status, Reply};
use crate::source::{parse_file, ConfigSnapshot};

const CONFIG: &str = "
kind: Gateway
apiVersion: gateway.networking.k8s.io/v1
metadata: {name: waypoint, namespace: app}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
---
kind: Pod
metadata: {name: a1, namespace: app}
spec: {nodeName: node1, serviceAccountName: client}
status: {podIP: 10.0.0.1}
---
kind: Pod
metadata: {name: b1, namespace: app}
spec: {nodeName: node2, serviceAccountName: server}
status: {podIP: 10.0.0.2}
";

fn snapshot() -> watch::Receiver<Arc<ConfigSnapshot>> {
    let parsed = parse_file(std::path::Path::new("t.yaml"), CONFIG);
    assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
    let (tx, rx) = watch::channel(Arc::new(ConfigSnapshot::from_objects(&parsed.objects)));
    std::mem::forget(tx);
    rx
}

fn reviewed(user: &str, pod: Option<(&str, &str)>, audiences: &[&str]) -> Value {
    let mut extra = json!({});
    if let Some((name, uid)) = pod {
        extra = json!({POD_NAME_CLAIM: [name], POD_UID_CLAIM: [uid]});
    }
    json!({"kind": "TokenReview", "apiVersion": "authentication.k8s.io/v1", "metadata": {},
           "spec": {}, "status": {"authenticated": true, "audiences": audiences,
           "user": {"username": user, "uid": "x", "groups": ["system:serviceaccounts"], "extra": extra}}})
}

fn pod_json(ns: &str, name: &str, uid: &str, sa: &str, node: &str) -> Value {
    json!({"kind": "Pod", "apiVersion": "v1",
           "metadata": {"name": name, "namespace": ns, "uid": uid},
           "spec": {"serviceAccountName": sa, "nodeName": node, "containers": [{"name": "c", "image": "i"}]}})
}

/// A fake API server: TokenReviews answered by token, pods by path.
fn api() -> (Client, fake::Log) {
    fake::client(|r| match (r.method.as_str(), r.path.as_str()) {
        ("POST", "/apis/authentication.k8s.io/v1/tokenreviews") => {
            assert_eq!(r.body["spec"]["audiences"], json!(["istio-ca"]));
            let zt = "system:serviceaccount:istio-system:ztunnel";
            let v = match r.body["spec"]["token"].as_str().unwrap() {
                "zt-node1" => reviewed(zt, Some(("ztunnel-a", "u1")), &["istio-ca"]),
                "zt-gone" => reviewed(zt, Some(("ztunnel-gone", "u2")), &["istio-ca"]),
                "zt-replaced" => reviewed(zt, Some(("ztunnel-a", "old-uid")), &["istio-ca"]),
                "zt-unbound" => reviewed(zt, None, &["istio-ca"]),
                "zt-api-aud" => reviewed(zt, Some(("ztunnel-a", "u1")), &[]),
                "wp" => reviewed(
                    "system:serviceaccount:app:waypoint",
                    Some(("waypoint-x", "w1")),
                    &["istio-ca"],
                ),
                "app" => reviewed(
                    "system:serviceaccount:app:client",
                    Some(("a1", "a1")),
                    &["istio-ca"],
                ),
                "bad" => {
                    json!({"kind": "TokenReview", "apiVersion": "authentication.k8s.io/v1", "metadata": {},
                                "spec": {}, "status": {"authenticated": false, "error": "invalid bearer token"}})
                }
                "err" => return Reply::Json(500, status(500, "InternalError", "etcd down")),
                other => panic!("unexpected token {other}"),
            };
            Reply::Json(201, v)
        }
        ("GET", "/api/v1/namespaces/istio-system/pods/ztunnel-a") => Reply::Json(
            200,
            pod_json("istio-system", "ztunnel-a", "u1", "ztunnel", "node1"),
        ),
        ("GET", "/api/v1/namespaces/app/pods/waypoint-x") => Reply::Json(
            200,
            pod_json("app", "waypoint-x", "w1", "waypoint", "node2"),
        ),
        ("GET", p) if p.contains("/pods/") => {
            Reply::Json(404, status(404, "NotFound", "pods not found"))
        }
        other => panic!("unexpected request {other:?}"),
    })
}

fn authenticator() -> (KubeAuthenticator, fake::Log) {
    let (client, log) = api();
    (
        KubeAuthenticator::new(client, snapshot(), KubeAuthSettings::new("istio-system")),
        log,
    )
}

#[tokio::test]
async fn token_review_and_node_authorization() {
    let (auth, log) = authenticator();
    assert_eq!(
        auth.authenticate("zt-node1").await.unwrap(),
        Principal::Node("node1".into())
    );
    assert_eq!(
        auth.authenticate("wp").await.unwrap(),
        Principal::Waypoint {
            namespace: "app".into(),
            name: "waypoint".into()
        }
    );

    let err = |e: AuthError| (e.code(), e.to_string());
    let (code, msg) = err(auth.authenticate("bad").await.unwrap_err());
    assert_eq!(code, Code::Unauthenticated);
    assert!(msg.contains("invalid bearer token"), "{msg}");
    let (code, msg) = err(auth.authenticate("zt-api-aud").await.unwrap_err());
    assert_eq!(code, Code::Unauthenticated);
    assert!(msg.contains("istio-ca"), "{msg}");

    for (token, want) in [
        ("zt-gone", "does not exist"),
        ("zt-replaced", "was replaced"),
        ("zt-unbound", "not bound to a pod"),
        ("app", "neither the ztunnel service account"),
        ("err", "TokenReview failed"),
    ] {
        let (code, msg) = err(auth.authenticate(token).await.unwrap_err());
        assert_eq!(code, Code::PermissionDenied, "{token}: {msg}");
        assert!(msg.contains(want), "{token}: {msg}");
        assert!(
            !msg.contains(token) || token == "app",
            "no token in messages"
        );
    }

    // Cached: a second call makes no new review; a transient failure is not cached.
    let reviews = || fake::count(&log, |r| r.path.ends_with("/tokenreviews"));
    let before = reviews();
    auth.authenticate("zt-node1").await.unwrap();
    auth.authenticate("bad").await.unwrap_err();
    assert_eq!(reviews(), before);
    auth.authenticate("err").await.unwrap_err();
    assert_eq!(reviews(), before + 1);
}

fn csr_request(ns: &str, sa: &str, token: &str) -> tonic::Request<IstioCertificateRequest> {
    let req = csr::generate(&Identity::new("cluster.local", ns, sa)).unwrap();
    let mut r = tonic::Request::new(IstioCertificateRequest {
        csr: req.csr_pem,
        validity_duration: 3600,
        metadata: None,
    });
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

/// The CA with Kubernetes auth: ztunnels get identities of pods on their node only; a waypoint
/// exactly its own; every refusal is PermissionDenied (or Unauthenticated for a bad token).
#[tokio::test]
async fn ca_issues_per_node_with_service_account_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Arc::new(CertificateAuthority::load_or_create(dir.path(), "cluster.local").unwrap());
    let (auth, _log) = authenticator();
    let svc = CaService::new(
        ca,
        crate::auth::Authenticator::Kube(Arc::new(auth)),
        snapshot(),
        Duration::from_secs(86400),
    );
    let ok = svc
        .create_certificate(csr_request("app", "client", "zt-node1"))
        .await
        .unwrap();
    assert!(!ok.into_inner().cert_chain.is_empty());
    let e = svc
        .create_certificate(csr_request("app", "server", "zt-node1"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("node1"), "{e:?}");
    svc.create_certificate(csr_request("app", "waypoint", "wp"))
        .await
        .unwrap();
    let e = svc
        .create_certificate(csr_request("app", "client", "wp"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    let e = svc
        .create_certificate(csr_request("app", "client", "bad"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    let e = svc
        .create_certificate(csr_request("app", "client", "zt-gone"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(e.message().contains("does not exist"), "{e:?}");
}

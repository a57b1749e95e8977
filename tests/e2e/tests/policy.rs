//! L4 authorization end to end: AuthorizationPolicy YAML dropped into istiod-lite's config
//! directory is translated, pushed to the destination ztunnel and enforced on the HBONE
//! CONNECT (401, so the client's SOCKS5 CONNECT is refused), counted with
//! `response_flags="DENY"`, and lifted again when the file goes away. (Open connections closed
//! by a policy change: `policy_live.rs`.)

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use mesh_e2e::apps::{self, EchoServer};
use mesh_e2e::socks5::{Dest, Refused};
use mesh_e2e::topology::{APP_PORT, CLIENT_IP, SERVER_IP};
use mesh_e2e::{eventually, Mesh, MeshOptions, Topology, CLIENT_SPIFFE, SERVER_SPIFFE};

/// How long a config edit may take to reach the destination ztunnel and apply.
const PROPAGATION: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(100);

fn server_addr() -> Dest {
    Dest::Addr(SocketAddr::new(SERVER_IP.into(), APP_PORT))
}

/// An AuthorizationPolicy on the demo server (`app: server` in demo-b).
fn server_policy(name: &str, action: &str, principal: &str) -> String {
    format!(
        r#"apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: {name}
  namespace: demo-b
spec:
  selector:
    matchLabels:
      app: server
  action: {action}
  rules:
  - from:
    - source:
        principals: ["{principal}"]
"#
    )
}

/// One attempt from the client through node1: `Ok(None)` if the echo round trip worked,
/// `Ok(Some(code))` if ztunnel refused the SOCKS5 CONNECT.
async fn attempt(mesh: &Mesh) -> anyhow::Result<Option<u8>> {
    match mesh.ztunnel("node1").socks(CLIENT_IP, &server_addr()).await {
        Ok(mut s) => {
            apps::echo_roundtrip(&mut s, b"policy check").await?;
            Ok(None)
        }
        Err(e) => match e.downcast_ref::<Refused>() {
            Some(r) => Ok(Some(r.code)),
            None => Err(e),
        },
    }
}

/// Waits until the client is refused; returns the SOCKS5 reply code.
async fn until_refused(mesh: &Mesh, what: &str) -> anyhow::Result<u8> {
    eventually(what, PROPAGATION, POLL, || async { attempt(mesh).await }).await
}

/// Waits until the client gets through again.
async fn until_allowed(mesh: &Mesh, what: &str) -> anyhow::Result<()> {
    eventually(what, PROPAGATION, POLL, || async {
        Ok(attempt(mesh).await?.is_none().then_some(()))
    })
    .await
}

fn remove_config(mesh: &Mesh, name: &str) -> anyhow::Result<()> {
    let path = mesh.config_dir().join(format!("{name}.yaml"));
    std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deny_by_principal_refuses_the_client_until_the_policy_is_removed() {
    let mesh = Mesh::start(Topology::demo(), MeshOptions::default()).await;
    mesh.check(async {
        let _app = EchoServer::start(SERVER_IP.into(), APP_PORT).await?;
        anyhow::ensure!(
            attempt(&mesh).await?.is_none(),
            "the client must get through before any policy exists"
        );

        mesh.write_config(
            "deny-client",
            &server_policy("deny-client", "DENY", "cluster.local/ns/demo-a/sa/client"),
        )?;
        let code = until_refused(&mesh, "the DENY policy to refuse the client").await?;
        anyhow::ensure!(code != 0, "a refusal must carry a non-zero SOCKS5 reply");
        println!("refused with SOCKS5 reply {code:#04x}");

        // The destination ztunnel counted the refusal as a DENY, from the client's identity.
        let node2 = mesh.ztunnel("node2");
        let labels = [
            ("reporter", "destination"),
            ("response_flags", "DENY"),
            ("source_principal", CLIENT_SPIFFE),
            ("destination_principal", SERVER_SPIFFE),
        ];
        node2
            .wait_for_count("istio_tcp_connections_failed_total", &labels, 1.0)
            .await?;
        // And its log names the policy that refused it.
        eventually(
            "node2's log to name the denying policy",
            PROPAGATION,
            POLL,
            || async { Ok(node2.log().contains("demo-b/deny-client").then_some(())) },
        )
        .await?;

        remove_config(&mesh, "deny-client")?;
        until_allowed(&mesh, "access to come back once the policy file is gone").await
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_for_another_principal_denies_the_client() {
    let mesh = Mesh::start(Topology::demo(), MeshOptions::default()).await;
    mesh.check(async {
        let _app = EchoServer::start(SERVER_IP.into(), APP_PORT).await?;
        until_allowed(&mesh, "the client to get through with no policy").await?;

        // Once an ALLOW policy applies, only what it allows gets in.
        mesh.write_config(
            "allow",
            &server_policy("allow-other", "ALLOW", "cluster.local/ns/demo-a/sa/other"),
        )?;
        until_refused(&mesh, "an ALLOW for another principal to refuse the client").await?;
        mesh.ztunnel("node2")
            .wait_for_count(
                "istio_tcp_connections_failed_total",
                &[("reporter", "destination"), ("response_flags", "DENY")],
                1.0,
            )
            .await?;

        // Allowing the client's own principal (a prefix match) lets it in again.
        mesh.write_config(
            "allow",
            &server_policy("allow-other", "ALLOW", "cluster.local/ns/demo-a/*"),
        )?;
        until_allowed(&mesh, "a prefix ALLOW matching the client").await?;

        // A mesh-wide DENY in the root namespace (GLOBAL scope) by source namespace wins over
        // the ALLOW.
        mesh.write_config(
            "mesh-deny",
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: no-demo-a, namespace: istio-system}\nspec:\n  action: DENY\n  rules:\n  - from: [{source: {namespaces: [demo-a]}}]\n",
        )?;
        until_refused(&mesh, "a mesh-wide DENY of namespace demo-a").await?;
        remove_config(&mesh, "mesh-deny")?;
        until_allowed(&mesh, "access after the mesh-wide DENY is removed").await
    })
    .await;
}

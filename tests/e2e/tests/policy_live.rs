//! A policy change applies to connections that are already open (Istio's behaviour): when a new
//! AuthorizationPolicy no longer allows an established tunnel, the destination ztunnel closes it;
//! connections the policy does not cover keep working.

use std::net::SocketAddr;
use std::time::Duration;

use mesh_e2e::apps::EchoServer;
use mesh_e2e::socks5::Dest;
use mesh_e2e::topology::{APP_PORT, CLIENT_IP, SERVER_IP};
use mesh_e2e::{eventually, Mesh, MeshOptions, Topology};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const DENY_CLIENT_ON_PORT: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: deny-client
  namespace: demo-b
spec:
  action: DENY
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/demo-a/sa/client"]
    to:
    - operation:
        ports: ["8080"]
"#;

async fn echo(s: &mut tokio::net::TcpStream, msg: &[u8]) -> anyhow::Result<()> {
    s.write_all(msg).await?;
    let mut buf = vec![0u8; msg.len()];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut buf)).await??;
    anyhow::ensure!(buf == msg, "echo mismatch");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_deny_policy_closes_open_connections_it_covers() {
    let mesh = Mesh::start(Topology::demo(), MeshOptions::default()).await;
    mesh.check(async {
        let _app = EchoServer::start(SERVER_IP.into(), APP_PORT).await?;
        let _other = EchoServer::start(SERVER_IP.into(), APP_PORT + 1).await?;
        let z = mesh.ztunnel("node1");
        let mut covered = z
            .socks(
                CLIENT_IP,
                &Dest::Addr(SocketAddr::new(SERVER_IP.into(), APP_PORT)),
            )
            .await?;
        let mut uncovered = z
            .socks(
                CLIENT_IP,
                &Dest::Addr(SocketAddr::new(SERVER_IP.into(), APP_PORT + 1)),
            )
            .await?;
        echo(&mut covered, b"before").await?;
        echo(&mut uncovered, b"before").await?;

        mesh.write_config("deny-client", DENY_CLIENT_ON_PORT)?;
        // The covered connection is closed by node2's ztunnel once the policy arrives.
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(Duration::from_secs(10), covered.read(&mut buf))
            .await
            .map_err(|_| {
                anyhow::anyhow!(
                    "the denied connection stayed open 10 s after the policy was written"
                )
            })?;
        anyhow::ensure!(
            matches!(n, Ok(0) | Err(_)),
            "expected EOF or reset on the denied connection, got {n:?}"
        );
        // The other port is not covered by the rule: still open and working.
        echo(&mut uncovered, b"after").await?;
        let node2 = mesh.ztunnel("node2");
        eventually(
            "node2 counted the policy close",
            Duration::from_secs(10),
            Duration::from_millis(50),
            || async {
                Ok((node2
                    .metrics()
                    .await?
                    .sum("ztunnel_connections_closed_by_policy_total", &[])
                    >= 1.0)
                    .then_some(()))
            },
        )
        .await?;
        Ok(())
    })
    .await;
}

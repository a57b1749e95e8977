//! Graceful drain: on SIGTERM a ztunnel stops accepting, keeps serving the connections it has,
//! and exits once they are done (before its drain deadline).

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use mesh_e2e::apps::EchoServer;
use mesh_e2e::socks5::Dest;
use mesh_e2e::topology::{APP_PORT, CLIENT_IP, SERVER_IP};
use mesh_e2e::{eventually, Mesh, MeshOptions, Topology, ZtunnelOverrides};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_open_connections_then_exits() {
    // node1's ztunnel is ours (it is meant to exit); the mesh runs istiod-lite and node2.
    let mesh = Mesh::start(
        Topology::demo(),
        MeshOptions {
            nodes: Some(vec!["node2".into()]),
            ..Default::default()
        },
    )
    .await;
    mesh.check(async {
        let _app = EchoServer::start(SERVER_IP.into(), APP_PORT).await?;
        let dest = Dest::Addr(SocketAddr::new(SERVER_IP.into(), APP_PORT));
        mesh.write_token("node1")?;
        let z = mesh.spawn_ztunnel_with(
            "node1",
            Ipv4Addr::new(127, 0, 0, 24),
            &ZtunnelOverrides::default(),
        )?;
        z.wait_ready().await?;
        let mut open = z.socks(CLIENT_IP, &dest).await?;
        open.write_all(b"before").await?;
        let mut buf = [0u8; 6];
        open.read_exact(&mut buf).await?;
        anyhow::ensure!(&buf == b"before", "echo before SIGTERM: {buf:?}");

        let pid = z
            .pid()
            .ok_or_else(|| anyhow::anyhow!("ztunnel has no pid"))?;
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()?;
        anyhow::ensure!(status.success(), "kill -TERM {pid} failed");

        // The SOCKS5 listener closes: new connections are refused...
        eventually(
            "SOCKS5 listener closed after SIGTERM",
            Duration::from_secs(10),
            Duration::from_millis(20),
            || async {
                Ok(tokio::net::TcpStream::connect(z.socks5)
                    .await
                    .is_err()
                    .then_some(()))
            },
        )
        .await?;
        // ...while the open connection keeps working through the tunnel.
        z.check_running()?;
        open.write_all(b"during").await?;
        open.read_exact(&mut buf).await?;
        anyhow::ensure!(&buf == b"during", "echo during drain: {buf:?}");
        z.check_running()?;

        // Once it is closed, the ztunnel has nothing left to drain and exits.
        drop(open);
        eventually(
            "ztunnel exit after its last connection closed",
            Duration::from_secs(4),
            Duration::from_millis(20),
            || async { Ok(z.check_running().is_err().then_some(())) },
        )
        .await?;
        let log = z.log();
        anyhow::ensure!(
            log.contains("draining") && log.contains("ztunnel stopped"),
            "drain not logged:\n{log}"
        );
        Ok(())
    })
    .await;
}

//! Readiness and node authentication at start-up: a ztunnel reports ready (200 "ready") only once
//! it has config and certificates, answers 500 until then (Istio's behaviour), and a ztunnel
//! presenting another node's token gets no config.

use std::net::Ipv4Addr;
use std::time::Duration;

use mesh_e2e::mesh::free_addr;
use mesh_e2e::{eventually, http, Mesh, MeshOptions, Topology, ZtunnelOverrides};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_ready_without_control_plane_or_with_another_nodes_token() {
    // istiod-lite only; this test starts its own ztunnels.
    let mesh = Mesh::start(
        Topology::demo(),
        MeshOptions {
            nodes: Some(vec![]),
            ..Default::default()
        },
    )
    .await;
    mesh.check(async {
        mesh.write_token("node1")?;
        mesh.write_token("node2")?;

        // A control plane nobody answers on.
        let dead = free_addr(Ipv4Addr::LOCALHOST)?;
        let lonely = mesh.spawn_ztunnel_with(
            "node1",
            Ipv4Addr::new(127, 0, 0, 21),
            &ZtunnelOverrides {
                xds_address: Some(format!("http://{dead}")),
                ..Default::default()
            },
        )?;
        // node1's ztunnel presenting node2's token (NODE_NAME != the token's node).
        let impostor = mesh.spawn_ztunnel_with(
            "node1",
            Ipv4Addr::new(127, 0, 0, 22),
            &ZtunnelOverrides {
                token_of: Some("node2".into()),
                ..Default::default()
            },
        )?;
        // The control: same node, its own token.
        let good = mesh.spawn_ztunnel_with(
            "node1",
            Ipv4Addr::new(127, 0, 0, 23),
            &ZtunnelOverrides::default(),
        )?;

        let r = eventually(
            "the good ztunnel ready",
            Duration::from_secs(30),
            Duration::from_millis(25),
            || async {
                good.check_running()?;
                Ok(http::get(good.readiness, "/healthz/ready")
                    .await
                    .ok()
                    .filter(|r| r.status == 200))
            },
        )
        .await?;
        anyhow::ensure!(
            r.body.trim() == "ready",
            "ready body {:?}, expected \"ready\"",
            r.body
        );

        for (what, z) in [
            ("unreachable control plane", &lonely),
            ("another node's token", &impostor),
        ] {
            // Under load a process may not have bound its readiness port yet: wait for an answer.
            let r = eventually(
                &format!("{what}: readiness endpoint answering"),
                Duration::from_secs(30),
                Duration::from_millis(25),
                || async {
                    z.check_running()?;
                    Ok(http::get(z.readiness, "/healthz/ready").await.ok())
                },
            )
            .await?;
            println!("{what}: {} {}", r.status, r.body.trim());
            anyhow::ensure!(
                r.status == 500,
                "{what}: /healthz/ready answered {} {:?}, expected 500 (not ready)",
                r.status,
                r.body.trim()
            );
        }
        eventually(
            "istiod-lite logging why it refused the impostor's xDS stream",
            Duration::from_secs(30),
            Duration::from_millis(25),
            || async { Ok(mesh.istiod_log().contains("NODE_NAME").then_some(())) },
        )
        .await?;
        Ok(())
    })
    .await;
}

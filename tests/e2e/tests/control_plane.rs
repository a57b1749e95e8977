//! The control plane's effect on the data plane: ztunnels keep working on cached state while
//! istiod-lite is down, pick up config after it comes back, and config edits on disk reach the
//! data plane within about a second, with nothing restarted.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::Context;
use mesh_e2e::apps::{self, EchoServer};
use mesh_e2e::socks5::Dest;
use mesh_e2e::topology::{
    pod_yaml, service_yaml, APP_PORT, CLIENT_IP, SERVER_IP, SERVER_VIP, SERVICE_PORT,
};
use mesh_e2e::{eventually, http, Mesh, MeshOptions, Pod, Service, Topology};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Writes `msg` and reads the same number of bytes back, leaving the connection open.
async fn ping(s: &mut TcpStream, msg: &[u8]) -> anyhow::Result<()> {
    s.write_all(msg).await?;
    let mut back = vec![0u8; msg.len()];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut back))
        .await
        .context("echo timed out")??;
    anyhow::ensure!(back == msg, "echo mismatch");
    Ok(())
}

/// A new pod (own service account) on node2 and a service for it.
fn extra(name: &str, ip: Ipv4Addr, vip: Ipv4Addr) -> (Pod, Service, String) {
    let pod = Pod::new("demo-b", name, name, "node2", ip, name);
    let svc = Service::new("demo-b", name, vip, SERVICE_PORT, APP_PORT, name);
    let sa = format!(
        "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: {name}\n  namespace: demo-b\n"
    );
    let yaml = [sa, pod_yaml(&pod), service_yaml(&svc)].join("---\n");
    (pod, svc, yaml)
}

/// Connects through node1 to `dest` until an echo round trip succeeds; returns the time taken.
async fn until_reachable(mesh: &Mesh, dest: &Dest, within: Duration) -> anyhow::Result<Duration> {
    let start = Instant::now();
    eventually(
        &format!("{dest} reachable through the mesh"),
        within,
        Duration::from_millis(20),
        || async {
            let Ok(mut s) = mesh.ztunnel("node1").socks(CLIENT_IP, dest).await else {
                return Ok(None);
            };
            Ok(apps::echo_roundtrip(&mut s, b"are you there?").await.ok())
        },
    )
    .await?;
    Ok(start.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_plane_survives_control_plane_outage_and_resyncs_after_restart() {
    // Over the TLS xDS port, as a real deployment would.
    let mesh = Mesh::start(
        Topology::demo(),
        MeshOptions {
            xds_tls: true,
            ..Default::default()
        },
    )
    .await;
    mesh.check(async {
        let _app = EchoServer::start(SERVER_IP.into(), APP_PORT).await?;
        let vip = Dest::Addr(SocketAddr::new(SERVER_VIP.into(), SERVICE_PORT));
        let node1 = mesh.ztunnel("node1");
        let mut long_lived = node1.socks(CLIENT_IP, &vip).await?;
        ping(&mut long_lived, b"before the outage").await?;
        let pids: Vec<_> = mesh.ztunnels().iter().map(|z| z.pid()).collect();

        mesh.kill_istiod();
        anyhow::ensure!(
            http::get(mesh.istiod.monitoring, "/ready").await.is_err(),
            "istiod-lite still answers after kill"
        );

        // Existing connection keeps flowing; new connections work from cached state and certs.
        ping(&mut long_lived, b"during the outage")
            .await
            .context("existing connection after istiod died")?;
        for i in 0..3 {
            let mut s = node1
                .socks(CLIENT_IP, &vip)
                .await
                .with_context(|| format!("new connection {i} while istiod is down"))?;
            apps::echo_roundtrip(&mut s, b"cached state").await?;
        }

        // Edit the config while istiod is down; restart it on the same state dir and ports.
        let (pod, svc, yaml) = extra(
            "late",
            Ipv4Addr::new(127, 0, 1, 4),
            Ipv4Addr::new(127, 0, 2, 4),
        );
        let _late_app = EchoServer::start(pod.ip.into(), APP_PORT).await?;
        mesh.write_config("late", &yaml)?;
        mesh.start_istiod().await?;
        let took = until_reachable(
            &mesh,
            &Dest::Addr(SocketAddr::new(svc.vip.into(), svc.port)),
            Duration::from_secs(45),
        )
        .await?;
        println!("new pod reachable {took:?} after istiod-lite was ready again");
        // By name too, and the old connection still works.
        until_reachable(
            &mesh,
            &Dest::Domain(svc.hostname(), svc.port),
            Duration::from_secs(5),
        )
        .await?;
        ping(&mut long_lived, b"after the restart")
            .await
            .context("long-lived connection after istiod restart")?;

        let now: Vec<_> = mesh.ztunnels().iter().map(|z| z.pid()).collect();
        anyhow::ensure!(pids == now, "ztunnels were restarted: {pids:?} -> {now:?}");
        for z in mesh.ztunnels() {
            z.check_running()?;
        }
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_edit_reaches_the_data_plane_within_a_second() {
    let mesh = Mesh::start(Topology::demo(), MeshOptions::default()).await;
    mesh.check(async {
        let (pod, svc, yaml) = extra("fresh", Ipv4Addr::new(127, 0, 1, 5), Ipv4Addr::new(127, 0, 2, 5));
        let app = EchoServer::start(pod.ip.into(), APP_PORT).await?;
        let dest = Dest::Addr(SocketAddr::new(svc.vip.into(), svc.port));
        // Before the edit the VIP is unknown: passthrough to an address nobody listens on.
        anyhow::ensure!(mesh.ztunnel("node1").socks(CLIENT_IP, &dest).await.is_err(), "VIP reachable before it was configured");

        let start = Instant::now();
        mesh.write_config("fresh", &yaml)?;
        // When node1 knows the new service (config push), then when traffic flows (which also
        // needs node2 to fetch a certificate for the new identity and open the pod's listener).
        let node1 = mesh.ztunnel("node1");
        let vip = svc.vip.to_string();
        let known = eventually("node1 config_dump lists the new service", Duration::from_secs(10), Duration::from_millis(10), || async {
            Ok(node1.config_dump().await?.to_string().contains(&vip).then(|| start.elapsed()))
        })
        .await?;
        until_reachable(&mesh, &dest, Duration::from_secs(10)).await?;
        let reachable = start.elapsed();
        println!("config edit -> node1 knows the service: {known:?}; -> first successful connection: {reachable:?}");
        anyhow::ensure!(known < Duration::from_millis(1500), "config push took {known:?} (> ~1 s)");
        anyhow::ensure!(reachable < Duration::from_secs(3), "edit -> reachable took {reachable:?} (> 1 s + certificate)");
        anyhow::ensure!(app.connections() >= 1, "new app saw no connection");
        anyhow::ensure!(app.peers().iter().all(|p| p.ip() == CLIENT_IP), "new app saw sources {:?}", app.peers());
        Ok(())
    })
    .await;
}

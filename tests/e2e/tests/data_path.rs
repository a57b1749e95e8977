//! The data path: SOCKS5 -> ztunnel(node1) -> HBONE/mTLS -> ztunnel(node2) -> app, with bulk
//! data, half-close, source address preservation, Istio metrics, the access log, and every way
//! of naming a destination (VIP, pod IP, DNS name, outside the mesh).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context;
use mesh_e2e::apps::{self, BulkServer, EchoServer};
use mesh_e2e::socks5::Dest;
use mesh_e2e::topology::{APP_PORT, CLIENT_IP, SERVER2_IP, SERVER_IP, SERVER_VIP, SERVICE_PORT};
use mesh_e2e::{eventually, Mesh, MeshOptions, Topology, CLIENT_SPIFFE, SERVER_SPIFFE};
use tokio::io::AsyncWriteExt;

const MB: u64 = 1024 * 1024;
const BULK: u64 = 100 * MB;

fn server_addr() -> Dest {
    Dest::Addr(SocketAddr::new(SERVER_IP.into(), APP_PORT))
}

/// The labels that say "client -> server over mTLS" for one reporter.
fn mtls_labels(reporter: &'static str) -> [(&'static str, &'static str); 4] {
    [
        ("reporter", reporter),
        ("source_principal", CLIENT_SPIFFE),
        ("destination_principal", SERVER_SPIFFE),
        ("connection_security_policy", "mutual_tls"),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_100mb_both_ways_with_half_close() {
    let mesh = Mesh::start(Topology::demo(), MeshOptions::default()).await;
    mesh.check(async {
        let mut app = BulkServer::start(SERVER_IP.into(), APP_PORT, BULK).await?;
        let stream = mesh
            .ztunnel("node1")
            .socks(CLIENT_IP, &server_addr())
            .await?;
        let (mut rd, mut wr) = stream.into_split();
        let start = Instant::now();
        // Send everything, then half-close: the app only answers after it has seen EOF, so the
        // reply proves EOF crossed both ztunnels while the other direction stayed open.
        let writer = tokio::spawn(async move {
            let sent = apps::write_random(&mut wr, BULK, 0x5eed).await?;
            wr.shutdown().await.context("client half-close")?;
            anyhow::Ok(sent)
        });
        let (got, got_sha) = apps::read_hash(&mut rd)
            .await
            .context("client reading the reply")?;
        let (sent, sent_sha) = writer.await??;
        let elapsed = start.elapsed();
        let report = app.next_report().await?;
        anyhow::ensure!(
            report.received == sent,
            "app received {} bytes, client sent {sent}",
            report.received
        );
        anyhow::ensure!(
            report.received_sha256 == sent_sha,
            "client -> app data corrupted (SHA-256 differs)"
        );
        anyhow::ensure!(
            got == report.sent,
            "client received {got} bytes, app sent {}",
            report.sent
        );
        anyhow::ensure!(
            got_sha == report.sent_sha256,
            "app -> client data corrupted (SHA-256 differs)"
        );
        println!(
            "200 MB through the tunnel in {elapsed:.2?} ({:.0} MB/s)",
            (2 * BULK) as f64 / MB as f64 / elapsed.as_secs_f64()
        );

        // It really went through the mesh: the destination ztunnel counted it over mTLS.
        let node2 = mesh.ztunnel("node2");
        eventually(
            "destination byte counters",
            Duration::from_secs(10),
            Duration::from_millis(50),
            || async {
                let m = node2.metrics().await?;
                let rx = m.sum(
                    "istio_tcp_received_bytes_total",
                    &mtls_labels("destination"),
                );
                let tx = m.sum("istio_tcp_sent_bytes_total", &mtls_labels("destination"));
                Ok((rx >= BULK as f64 && tx >= BULK as f64).then_some(()))
            },
        )
        .await
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_address_identities_metrics_and_access_log() {
    let mesh = Mesh::start(Topology::demo(), MeshOptions::default()).await;
    mesh.check(async {
        let app = EchoServer::start(SERVER_IP.into(), APP_PORT).await?;
        let msg = vec![0xabu8; 10_000];
        let mut s = mesh
            .ztunnel("node1")
            .socks(CLIENT_IP, &server_addr())
            .await?;
        apps::echo_roundtrip(&mut s, &msg).await?;
        drop(s);

        let peers = app.peers();
        anyhow::ensure!(
            peers.len() == 1,
            "app saw {} connections: {peers:?}",
            peers.len()
        );
        anyhow::ensure!(
            peers[0].ip() == CLIENT_IP,
            "the app saw source {} instead of the client's pod IP {CLIENT_IP}",
            peers[0].ip()
        );

        for (node, reporter) in [("node1", "source"), ("node2", "destination")] {
            let z = mesh.ztunnel(node);
            let labels = mtls_labels(reporter);
            // Byte counters are recorded when the connection closes; wait for that.
            let m = eventually(
                &format!("{node} metrics for the closed connection"),
                Duration::from_secs(10),
                Duration::from_millis(50),
                || async {
                    let m = z.metrics().await?;
                    Ok((m.sum("istio_tcp_connections_closed_total", &labels) >= 1.0).then_some(m))
                },
            )
            .await?;
            let opened = m.sum("istio_tcp_connections_opened_total", &labels);
            anyhow::ensure!(
                opened >= 1.0,
                "{node}: istio_tcp_connections_opened_total{labels:?} = {opened}"
            );
            let rx = m.sum("istio_tcp_received_bytes_total", &labels);
            let tx = m.sum("istio_tcp_sent_bytes_total", &labels);
            anyhow::ensure!(
                rx >= msg.len() as f64 && tx >= msg.len() as f64,
                "{node}: received {rx} / sent {tx} bytes, expected >= {} each",
                msg.len()
            );
            let series = &m.find("istio_tcp_connections_opened_total", &labels)[0];
            for (k, want) in [
                ("source_workload_namespace", "demo-a"),
                ("destination_workload", "server"),
                ("destination_workload_namespace", "demo-b"),
                ("request_protocol", "tcp"),
            ] {
                anyhow::ensure!(
                    series.label(k) == want,
                    "{node}: label {k}={:?}, expected {want:?}",
                    series.label(k)
                );
            }
            println!("{node}: {series:?}");

            let log = eventually(
                &format!("{node} access log line"),
                Duration::from_secs(10),
                Duration::from_millis(50),
                || async {
                    Ok(z.access_log()
                        .into_iter()
                        .find(|l| l.contains(CLIENT_SPIFFE) && l.contains(SERVER_SPIFFE)))
                },
            )
            .await?;
            println!("{node} access log: {log}");
        }
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destinations_by_vip_pod_ip_dns_name_and_outside_the_mesh() {
    let mesh = Mesh::start(Topology::demo_two_servers(), MeshOptions::default()).await;
    mesh.check(async {
        let s1 = EchoServer::start(SERVER_IP.into(), APP_PORT).await?;
        let s2 = EchoServer::start(SERVER2_IP.into(), APP_PORT).await?;
        let node1 = mesh.ztunnel("node1");
        let msg = b"hello through the mesh";

        // VIP: round robin over the two endpoints of server.demo-b.
        let vip = Dest::Addr(SocketAddr::new(SERVER_VIP.into(), SERVICE_PORT));
        for i in 0..6 {
            let mut s = node1.socks(CLIENT_IP, &vip).await.with_context(|| format!("VIP connection {i}"))?;
            apps::echo_roundtrip(&mut s, msg).await?;
        }
        let (c1, c2) = (s1.connections(), s2.connections());
        println!("VIP connections: server={c1} server-2={c2}");
        anyhow::ensure!(c1 + c2 == 6 && c1 > 0 && c2 > 0, "VIP load balancing: server got {c1}, server-2 got {c2}");

        // Pod IP: exactly that pod.
        let mut s = node1.socks(CLIENT_IP, &Dest::Addr(SocketAddr::new(SERVER2_IP.into(), APP_PORT))).await?;
        apps::echo_roundtrip(&mut s, msg).await?;
        anyhow::ensure!(s2.connections() == c2 + 1 && s1.connections() == c1, "pod IP connection went to the wrong pod");

        // DNS name (SOCKS5 address type 3), resolved by ztunnel from the service registry.
        let host = Dest::Domain("server.demo-b.svc.cluster.local".into(), SERVICE_PORT);
        let mut s = node1.socks(CLIENT_IP, &host).await?;
        apps::echo_roundtrip(&mut s, msg).await?;
        anyhow::ensure!(s1.connections() + s2.connections() == c1 + c2 + 2, "DNS-name connection did not reach a server");

        // Outside the mesh: passed through as plain TCP.
        let outside = EchoServer::start([127, 0, 3, 1].into(), 9000).await?;
        let mut s = node1.socks(CLIENT_IP, &Dest::Addr(outside.addr)).await?;
        apps::echo_roundtrip(&mut s, msg).await?;
        anyhow::ensure!(outside.connections() == 1, "outside listener saw {} connections", outside.connections());

        // Every in-mesh connection above was mTLS from the client's identity.
        let labels = [("reporter", "source"), ("source_principal", CLIENT_SPIFFE), ("connection_security_policy", "mutual_tls")];
        let m = eventually("source metrics for 8 mesh connections", Duration::from_secs(10), Duration::from_millis(50), || async {
            let m = node1.metrics().await?;
            Ok((m.sum("istio_tcp_connections_closed_total", &labels) >= 8.0).then_some(m))
        })
        .await?;
        let to_service = m.sum("istio_tcp_connections_opened_total", &[("reporter", "source"), ("destination_service", "server.demo-b.svc.cluster.local")]);
        anyhow::ensure!(to_service >= 7.0, "connections labelled destination_service=server.demo-b...: {to_service}, expected >= 7");
        Ok(())
    })
    .await;
}

//! Transparent outbound capture on 15001 (root only): inside a network namespace this test
//! creates, an iptables REDIRECT sends a plain client's connection to a service VIP into node1's
//! ztunnel, which tunnels it over HBONE to node2's ztunnel and the app. No SOCKS anywhere.
//!
//! A second test does the same for inbound plaintext on 15006: a client outside the mesh reaches
//! the server pod's port, node2's ztunnel takes it from SO_ORIGINAL_DST and dials the app with
//! the client's source address (ztunnel's own sockets carry mark 0x539 and are not redirected).
//!
//! The tests re-execute themselves inside the namespace (`ip netns exec`), so istiod-lite, both
//! ztunnels, the app and the client all live there and the machine's own network is untouched.

use std::net::SocketAddr;
use std::process::Command;

use mesh_e2e::apps::{self, EchoServer};
use mesh_e2e::netns::{self, NetNs};
use mesh_e2e::socks5::connect_from;
use mesh_e2e::topology::{APP_PORT, CLIENT_IP, SERVER_IP, SERVER_VIP, SERVICE_PORT};
use mesh_e2e::{in_ci, skip, Mesh, MeshOptions, Topology, CLIENT_SPIFFE, SERVER_SPIFFE};

const TEST_NAME: &str = "outbound_capture_on_15001_with_iptables_redirect";
const PLAINTEXT_TEST: &str = "inbound_plaintext_capture_on_15006";
const STRICT_TEST: &str = "strict_peer_authentication_refuses_plaintext_on_15006";

#[test]
fn outbound_capture_on_15001_with_iptables_redirect() {
    if netns::inside().is_some() {
        return inside_the_namespace();
    }
    run_in_namespace(TEST_NAME);
}

#[test]
fn inbound_plaintext_capture_on_15006() {
    if netns::inside().is_some() {
        return plaintext_inside_the_namespace();
    }
    run_in_namespace(PLAINTEXT_TEST);
}

#[test]
fn strict_peer_authentication_refuses_plaintext_on_15006() {
    if netns::inside().is_some() {
        return strict_inside_the_namespace();
    }
    run_in_namespace(STRICT_TEST);
}

/// Re-runs `test` inside a fresh network namespace (root), or skips with a reason.
fn run_in_namespace(test: &str) {
    if !netns::is_root() {
        if in_ci() {
            panic!("CI=true but not root: the 15001 capture test needs network namespaces (run CI as root)");
        }
        println!("skipping: needs root (network namespaces)");
        return;
    }
    for prog in ["ip", "iptables"] {
        if !netns::have(prog)
            && skip(&format!(
                "{prog} not found (make test installs iproute2 and iptables)"
            ))
        {
            return;
        }
    }
    let ns = NetNs::create().expect("creating a network namespace");
    let out = ns
        .run_test_inside(test)
        .expect("running the test inside the namespace");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("--- inside {} ---\n{stdout}", ns.name);
    eprintln!("{stderr}");
    assert!(
        out.status.success(),
        "the test failed inside network namespace {} ({})",
        ns.name,
        out.status
    );
    // Make sure the filter matched and the body really ran (libtest prints "1 passed").
    assert!(
        stdout.contains("1 passed"),
        "the inner run did not execute {test}"
    );
}

/// Runs a test body on a fresh two-thread runtime (the inner, in-namespace half of a test).
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(f)
}

fn inside_the_namespace() {
    block_on(async {
        let mut options = MeshOptions {
            lock: false,
            ..Default::default()
        };
        options
            .outbound_addr
            .insert("node1".into(), "0.0.0.0:15001".into());
        let mesh = Mesh::start(Topology::demo(), options).await;
        mesh.check(async {
            netns::run(Command::new("iptables").args([
                "-t",
                "nat",
                "-A",
                "OUTPUT",
                "-p",
                "tcp",
                "-d",
                "127.0.2.0/24",
                "-j",
                "REDIRECT",
                "--to-ports",
                "15001",
            ]))?;
            let app = EchoServer::start(SERVER_IP.into(), APP_PORT).await?;
            // A plain TCP client: bound to its pod IP, connecting to the VIP, no proxy protocol.
            let vip = SocketAddr::new(SERVER_VIP.into(), SERVICE_PORT);
            let mut s = connect_from(CLIENT_IP.into(), vip).await?;
            apps::echo_roundtrip(&mut s, b"captured, not configured").await?;
            drop(s);
            anyhow::ensure!(
                app.connections() == 1,
                "app saw {} connections",
                app.connections()
            );

            // The destination side saw it arrive over mTLS from the client's identity.
            let node2 = mesh.ztunnel("node2");
            let labels = [
                ("reporter", "destination"),
                ("source_principal", CLIENT_SPIFFE),
                ("destination_principal", SERVER_SPIFFE),
                ("connection_security_policy", "mutual_tls"),
            ];
            node2
                .wait_for_count("istio_tcp_connections_opened_total", &labels, 1.0)
                .await?;
            let src = mesh.ztunnel("node1").metrics().await?;
            let n = src.sum(
                "istio_tcp_connections_opened_total",
                &[
                    ("reporter", "source"),
                    ("destination_service", "server.demo-b.svc.cluster.local"),
                ],
            );
            anyhow::ensure!(
                n >= 1.0,
                "node1 did not count the captured connection to the service"
            );
            println!("captured connection tunnelled: app peers {:?}", app.peers());
            Ok(())
        })
        .await;
    });
}

fn plaintext_inside_the_namespace() {
    plaintext_scenario(false)
}

fn strict_inside_the_namespace() {
    plaintext_scenario(true)
}

const STRICT_DEMO_B: &str = r#"
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: strict
  namespace: demo-b
spec:
  mtls:
    mode: STRICT
"#;

/// Plaintext from outside the mesh to the server pod, captured on 15006: accepted (PERMISSIVE,
/// the default) or, with `strict`, refused while mTLS from the client pod still works.
fn plaintext_scenario(strict: bool) {
    block_on(async {
        let mut options = MeshOptions {
            lock: false,
            packet_mark: Some(0x539),
            ..Default::default()
        };
        options
            .inbound_plaintext_addr
            .insert("node2".into(), "0.0.0.0:15006".into());
        let mesh = Mesh::start(Topology::demo(), options).await;
        mesh.check(async {
            // istio-cni's inbound rule, reduced to loopback: TCP to the pod's app port that
            // ztunnel did not send itself goes to 15006.
            netns::run(Command::new("iptables").args([
                "-t",
                "nat",
                "-A",
                "OUTPUT",
                "-p",
                "tcp",
                "-d",
                "127.0.1.2",
                "--dport",
                &APP_PORT.to_string(),
                "-m",
                "mark",
                "!",
                "--mark",
                "0x539/0xfff",
                "-j",
                "REDIRECT",
                "--to-ports",
                "15006",
            ]))?;
            let app = EchoServer::start(SERVER_IP.into(), APP_PORT).await?;
            let outsider: std::net::IpAddr = "127.0.3.5".parse()?;
            if strict {
                return strict_checks(&mesh, &app, outsider).await;
            }
            let mut s = connect_from(outsider, SocketAddr::new(SERVER_IP.into(), APP_PORT)).await?;
            apps::echo_roundtrip(&mut s, b"plaintext from outside the mesh").await?;
            drop(s);
            anyhow::ensure!(
                app.peers().iter().any(|p| p.ip() == outsider),
                "app did not see the client's address: {:?}",
                app.peers()
            );
            let node2 = mesh.ztunnel("node2");
            let labels = [
                ("reporter", "destination"),
                ("destination_principal", SERVER_SPIFFE),
                ("connection_security_policy", "unknown"),
            ];
            node2
                .wait_for_count("istio_tcp_connections_opened_total", &labels, 1.0)
                .await?;
            Ok(())
        })
        .await;
    });
}

async fn strict_checks(
    mesh: &Mesh,
    app: &EchoServer,
    outsider: std::net::IpAddr,
) -> anyhow::Result<()> {
    mesh.write_config("strict", STRICT_DEMO_B)?;
    let node2 = mesh.ztunnel("node2");
    mesh_e2e::eventually(
        "node2 received the STRICT policy",
        std::time::Duration::from_secs(10),
        std::time::Duration::from_millis(25),
        || async {
            let dump = node2.config_dump().await?;
            Ok(dump["policies"]
                .as_array()
                .is_some_and(|p| !p.is_empty())
                .then_some(()))
        },
    )
    .await?;
    // Plaintext is refused: the connection is closed without reaching the app.
    let mut s = connect_from(outsider, SocketAddr::new(SERVER_IP.into(), APP_PORT)).await?;
    let refused = apps::echo_roundtrip(&mut s, b"plaintext under STRICT").await;
    anyhow::ensure!(refused.is_err(), "plaintext was echoed under STRICT");
    anyhow::ensure!(
        !app.peers().iter().any(|p| p.ip() == outsider),
        "the app saw the plaintext client under STRICT: {:?}",
        app.peers()
    );
    node2
        .wait_for_count(
            "istio_tcp_connections_failed_total",
            &[
                ("reporter", "destination"),
                ("response_flags", "DENY"),
                ("connection_security_policy", "unknown"),
            ],
            1.0,
        )
        .await?;
    // mTLS from the client pod over HBONE still works.
    let mut t = mesh
        .ztunnel("node1")
        .socks(
            CLIENT_IP,
            &mesh_e2e::socks5::Dest::Addr(SocketAddr::new(SERVER_IP.into(), APP_PORT)),
        )
        .await?;
    apps::echo_roundtrip(&mut t, b"mTLS under STRICT").await
}

//! HBONE interop with an independent HTTP/2 implementation: Python's `h2` over `ssl`
//! (tests/e2e/python/hbone_client.py) talks to ztunnel's 15008 listener directly.
//! Needs python3 with the `h2` package (`make test` installs it); skips with a reason otherwise,
//! except in CI where a skip would hide a broken setup.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::Context;
use mesh_e2e::apps::EchoServer;
use mesh_e2e::ca::request_cert;
use mesh_e2e::topology::{APP_PORT, CLIENT_IP, SERVER_IP};
use mesh_e2e::{skip, Mesh, MeshOptions, Topology, CLIENT_SPIFFE, SERVER_SPIFFE};
use mesh_identity::spiffe::Identity;

fn python_h2_missing() -> Option<String> {
    match Command::new("python3").args(["-c", "import h2"]).output() {
        Err(e) => Some(format!(
            "python3 not found ({e}); run `make test` or install python3 + h2"
        )),
        Ok(o) if !o.status.success() => Some(
            "python3 has no `h2` package; run `make test` or `python3 -m pip install h2`".into(),
        ),
        Ok(_) => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_h2_client_speaks_hbone_to_ztunnel() {
    if let Some(reason) = python_h2_missing() {
        if skip(&reason) {
            return;
        }
    }
    let mesh = Mesh::start(Topology::demo(), MeshOptions::default()).await;
    mesh.check(async {
        let app = EchoServer::start(SERVER_IP.into(), APP_PORT).await?;
        // The client's identity, issued by istiod-lite's CA to node1 (where the client pod runs).
        let token = mesh.node_token("node1")?;
        let cert = request_cert(
            mesh.istiod.xds_plaintext,
            Some(&token),
            &Identity::parse(CLIENT_SPIFFE)?,
        )
        .await
        .map_err(|s| anyhow::anyhow!("CA refused the client identity: {s}"))?;
        let pems = tempfile::tempdir()?;
        cert.write_pems(pems.path())?;

        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("python")
            .join("hbone_client.py");
        let mut cmd = Command::new("python3");
        cmd.arg(&script)
            .args([
                "--host",
                &SERVER_IP.to_string(),
                "--port",
                "15008",
                "--source",
                &CLIENT_IP.to_string(),
            ])
            .args([
                "--authority",
                &format!("{SERVER_IP}:{APP_PORT}"),
                "--expect-identity",
                SERVER_SPIFFE,
            ])
            .arg("--key")
            .arg(pems.path().join("key.pem"))
            .arg("--chain")
            .arg(pems.path().join("chain.pem"))
            .arg("--root")
            .arg(pems.path().join("root.pem"));
        let out = tokio::time::timeout(
            Duration::from_secs(60),
            tokio::task::spawn_blocking(move || cmd.output()),
        )
        .await
        .context("python client timed out")???;
        let stdout = String::from_utf8_lossy(&out.stdout);
        println!("{stdout}");
        eprintln!("{}", String::from_utf8_lossy(&out.stderr));
        anyhow::ensure!(
            out.status.success(),
            "python HBONE client failed ({}):\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        anyhow::ensure!(
            stdout.contains("ok connect")
                && stdout.contains("ok get")
                && stdout.contains("ok bogus authority"),
            "missing checks in:\n{stdout}"
        );

        // The app saw the Python client's pod IP, and ztunnel attributed it to the client identity.
        anyhow::ensure!(
            app.peers().iter().any(|p| p.ip() == CLIENT_IP),
            "app saw sources {:?}",
            app.peers()
        );
        let node2 = mesh.ztunnel("node2");
        let labels = [
            ("reporter", "destination"),
            ("source_principal", CLIENT_SPIFFE),
            ("connection_security_policy", "mutual_tls"),
        ];
        node2
            .wait_for_count("istio_tcp_connections_closed_total", &labels, 1.0)
            .await
            .map(|_| ())
    })
    .await;
}

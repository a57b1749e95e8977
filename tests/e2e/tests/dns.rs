//! The DNS proxy of a real ztunnel, queried with Debian's `dig`: mesh Service names resolve to
//! their VIPs (the short form relative to the asking pod's namespace), other names are forwarded.

use std::net::Ipv4Addr;
use std::process::Command;

use mesh_e2e::mesh::free_addr;
use mesh_e2e::netns::have;
use mesh_e2e::topology::SERVER_VIP;
use mesh_e2e::{skip, Mesh, MeshOptions, Topology, ZtunnelOverrides};

fn dig(server: std::net::SocketAddr, source: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("dig")
        .arg(format!("@{}", server.ip()))
        .args([
            "-p",
            &server.port().to_string(),
            "-b",
            source,
            "+time=5",
            "+tries=1",
        ])
        .args(args)
        .output()?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_proxy_answers_mesh_names_with_vips() {
    if !have("dig") && skip("dig not found (make test installs dnsutils)") {
        return;
    }
    // node1 is started here with its DNS proxy on; istiod-lite and node2 come from the mesh.
    let mesh = Mesh::start(
        Topology::demo(),
        MeshOptions {
            nodes: Some(vec!["node2".into()]),
            ..Default::default()
        },
    )
    .await;
    mesh.check(async {
        mesh.write_token("node1")?;
        let dns = free_addr(Ipv4Addr::new(127, 0, 0, 26))?;
        let z = mesh.spawn_ztunnel_with(
            "node1",
            Ipv4Addr::new(127, 0, 0, 26),
            &ZtunnelOverrides {
                env: vec![("DNS_PROXY_ADDR".into(), dns.to_string())],
                ..Default::default()
            },
        )?;
        z.wait_ready().await?;
        let vip = SERVER_VIP.to_string();
        // From the client pod (demo-a): the full name, `svc.ns`, and a trailing-dot FQDN.
        for name in [
            "server.demo-b.svc.cluster.local",
            "server.demo-b",
            "server.demo-b.svc.cluster.local.",
        ] {
            let got = dig(dns, "127.0.1.1", &[name, "A", "+short"])?;
            anyhow::ensure!(
                got.trim() == vip,
                "{name}: dig answered {got:?}, expected {vip}"
            );
        }
        // `server` alone means demo-a/server for a demo-a pod: no such service, so not our VIP.
        let short = dig(dns, "127.0.1.1", &["server", "A", "+short"])?;
        anyhow::ensure!(
            short.trim() != vip,
            "short name resolved across namespaces: {short:?}"
        );
        // The full answer is authoritative with Istio's TTL.
        let full = dig(dns, "127.0.1.1", &["server.demo-b.svc.cluster.local", "A"])?;
        anyhow::ensure!(
            full.contains("status: NOERROR") && full.contains(" aa"),
            "unexpected answer:\n{full}"
        );
        let ttl_ok = full.lines().any(|l| {
            let t: Vec<&str> = l.split_whitespace().collect();
            t.len() == 5 && t[1] == "30" && t[2] == "IN" && t[3] == "A" && t[4] == vip
        });
        anyhow::ensure!(ttl_ok, "an A record with TTL 30 expected:\n{full}");
        Ok(())
    })
    .await;
}

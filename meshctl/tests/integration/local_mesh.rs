//! istiod-lite + one ztunnel (node1) with the example config, on loopback ports: single rows
//! asserted one by one (the whole outputs are golden files in `golden_live.rs`).

use std::net::Ipv4Addr;

use crate::mesh::{Mesh, MeshOptions};
use crate::support::*;

/// The example pods' node1 address (examples/local/client.yaml).
const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 1, 1);

fn start_mesh() -> Mesh {
    Mesh::start(MeshOptions {
        nodes: vec!["node1"],
        // The client pod's inbound HBONE listener opens on its IP: keep off the shared 15008.
        hbone_port: Some(free_port(CLIENT_IP)),
        config: Vec::new(),
    })
}

/// The row of `table` whose cells start with `first` (cells separated by spaces).
fn row<'a>(table: &'a str, cells: &[&str]) -> Option<&'a str> {
    table.lines().find(|l| {
        let got: Vec<&str> = l.split_whitespace().collect();
        got.len() >= cells.len() && got[..cells.len()] == *cells
    })
}

#[test]
fn meshctl_against_a_running_mesh_and_with_istiod_down() {
    let mut m = start_mesh();
    let z = m.ztunnel("node1");
    let (admin, readiness, stats) = (z.admin.clone(), z.readiness.clone(), z.stats.clone());

    // ztunnel-config workloads: istioctl's columns, the example pods.
    let r = meshctl(&["ztunnel-config", "workloads", "--admin", &admin], &[]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout
            .starts_with("NAMESPACE POD NAME ADDRESS   NODE  WAYPOINT PROTOCOL\n"),
        "{r:?}"
    );
    assert!(
        row(
            &r.stdout,
            &["demo-a", "client", "127.0.1.1", "node1", "None", "HBONE"]
        )
        .is_some(),
        "{r:?}"
    );
    assert!(
        row(
            &r.stdout,
            &["demo-b", "server", "127.0.1.2", "node2", "None", "HBONE"]
        )
        .is_some(),
        "{r:?}"
    );

    // The same through MESHCTL_ZTUNNELS, as JSON.
    let zt = format!("{},{},{}", admin, readiness, stats);
    let r = meshctl(
        &["ztunnel-config", "all", "-o", "json"],
        &[("MESHCTL_ZTUNNELS", &zt)],
    );
    assert_eq!(r.code, 0, "{r:?}");
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["workloads"].as_array().unwrap().len(), 2, "{r:?}");
    assert_eq!(v["services"][0]["name"], "server");
    assert_eq!(
        v["certificates"][0]["identity"],
        "spiffe://cluster.local/ns/demo-a/sa/client"
    );

    // Services and certificates tables.
    let r = meshctl(&["ztunnel-config", "services", "--admin", &admin], &[]);
    assert!(
        row(&r.stdout, &["demo-b", "server", "127.0.2.1", "None", "1/1"]).is_some(),
        "{r:?}"
    );
    let r = meshctl(&["ztunnel-config", "certificates", "--admin", &admin], &[]);
    let leaf = row(
        &r.stdout,
        &[
            "spiffe://cluster.local/ns/demo-a/sa/client",
            "Leaf",
            "Available",
            "true",
        ],
    );
    assert!(leaf.is_some(), "{r:?}");

    // Everything up: the post-install checks pass.
    let zt_flag = format!("{},{}", admin, readiness);
    let r = meshctl(
        &[
            "check",
            "--post",
            "--istiod",
            &m.monitoring,
            "--ztunnel",
            &zt_flag,
        ],
        &[],
    );
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("✓ istiod-lite is ready"), "{r:?}");
    assert!(r.stdout.contains("✓ clock skew within"), "{r:?}");
    assert!(
        r.stdout
            .contains("✓ connected to istiod-lite as node node1"),
        "{r:?}"
    );
    assert!(r.stdout.contains("✓ agent is ready"), "{r:?}");
    assert!(r.stdout.contains("✓ 2 certificate(s) valid"), "{r:?}");
    assert!(r.stdout.ends_with("Status check results are ✓\n"), "{r:?}");

    // stat: no traffic yet, but the agent's workloads are listed with MESHED.
    let r = meshctl(
        &["stat", "--interval", "100ms"],
        &[("MESHCTL_ZTUNNELS", &zt)],
    );
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.starts_with("NAME "), "{r:?}");
    assert!(
        row(&r.stdout, &["demo-a/client", "1/1", "-"]).is_some(),
        "{r:?}"
    );
    let r = meshctl(
        &["stat", "demo-b/server", "-o", "json", "--interval", "100ms"],
        &[("MESHCTL_ZTUNNELS", &zt)],
    );
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["rows"].as_array().unwrap().len(), 1, "{r:?}");

    // Control plane down: ✗ naming the address, exit 1; the agent itself is still fine.
    m.istiod.kill();
    let r = meshctl(
        &[
            "check",
            "--post",
            "--istiod",
            &m.monitoring,
            "--ztunnel",
            &zt_flag,
        ],
        &[],
    );
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stdout.contains(&format!(
            "✗ cannot reach istiod-lite at {}: connection failed",
            m.monitoring
        )),
        "{r:?}"
    );
    assert!(r.stdout.contains("hint: start istiod-lite"), "{r:?}");
    assert!(r.stdout.contains("✓ agent is ready"), "{r:?}");
    assert!(r.stdout.ends_with("Status check results are ✗\n"), "{r:?}");
    m.ztunnels[0].proc.assert_running();

    // A command whose component is gone exits 3 and says which address failed.
    let r = meshctl(
        &["ztunnel-config", "workloads", "--admin", &m.monitoring],
        &[],
    );
    assert_eq!(r.code, 3, "{r:?}");
    assert!(
        r.stderr
            .contains(&format!("cannot reach ztunnel admin at {}", m.monitoring)),
        "{r:?}"
    );
}

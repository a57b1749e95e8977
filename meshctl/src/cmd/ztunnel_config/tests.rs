//! Golden tables and JSON/YAML shapes from the fixture dump.

use super::*;
use crate::golden::{assert_golden, fixture_now, CONFIG_DUMP};

fn dump() -> ConfigDump {
    ConfigDump::parse(CONFIG_DUMP.as_bytes()).unwrap()
}

fn rendered(section: Section, filter: &Filter, format: Format) -> String {
    let mut out = Vec::new();
    render(&dump(), section, filter, format, fixture_now(), &mut out).unwrap();
    String::from_utf8(out).unwrap()
}

#[test]
fn tables_match_golden() {
    let all = Filter::default();
    for (section, name) in [
        (Section::Workloads, "workloads.txt"),
        (Section::Services, "services.txt"),
        (Section::Policies, "policies.txt"),
        (Section::Certificates, "certificates.txt"),
        (Section::Connections, "connections.txt"),
        (Section::All, "all.txt"),
    ] {
        assert_golden(name, &rendered(section, &all, Format::Table));
    }
}

#[test]
fn filters_by_namespace_and_node() {
    let f = Filter {
        namespace: Some("demo-b".into()),
        node: Some("node1".into()),
    };
    assert_golden(
        "workloads_demo-b_node1.txt",
        &rendered(Section::Workloads, &f, Format::Table),
    );
}

#[test]
fn json_and_yaml_shapes_match_golden() {
    let all = Filter::default();
    assert_golden(
        "workloads.json",
        &rendered(Section::Workloads, &all, Format::Json),
    );
    assert_golden(
        "services.yaml",
        &rendered(Section::Services, &all, Format::Yaml),
    );
    assert_golden(
        "policies.json",
        &rendered(Section::Policies, &all, Format::Json),
    );
    let certs: Value =
        serde_json::from_str(&rendered(Section::Certificates, &all, Format::Json)).unwrap();
    assert_eq!(certs.as_array().unwrap().len(), 3);
    assert_eq!(
        certs[0]["certChain"][0]["serialNumber"],
        "651c920f64d5f430888d870dbda5249d"
    );
    let all_json: Value =
        serde_json::from_str(&rendered(Section::All, &all, Format::Json)).unwrap();
    for key in [
        "workloads",
        "services",
        "policies",
        "certificates",
        "config",
        "version",
    ] {
        assert!(
            all_json.get(key).is_some(),
            "{key} missing from -o json all"
        );
    }
    assert_eq!(all_json["workloads"][0]["name"], "legacy", "table order");
}

#[test]
fn certificate_validity_follows_the_clock() {
    let late = time::macros::datetime!(2026-01-03 00:00:00 UTC);
    let t = certificates(&dump(), late).render();
    let leaf = t.lines().find(|l| l.contains("Leaf")).unwrap();
    assert!(leaf.contains(" false "), "{leaf}");
    let root = t.lines().find(|l| l.contains("Root")).unwrap();
    assert!(root.contains(" true "), "{root}");
}

/// One agent's dump: the fixture's mesh-wide sections, its own node name, certificate and
/// connection.
fn agent(node: &str, identity: &str, src: &str) -> ConfigDump {
    let mut v: Value = serde_json::from_str(CONFIG_DUMP).unwrap();
    v["config"]["nodeName"] = Value::String(node.into());
    v["certificates"] = serde_json::json!([{"identity": identity, "state": "Initializing"}]);
    v["connections"] = serde_json::json!([{"direction": "outbound", "src": src, "dst": "10.0.0.9:80",
        "mutualTls": true, "started": "2026-01-01T00:00:00Z"}]);
    ConfigDump::parse(v.to_string().as_bytes()).unwrap()
}

#[test]
fn local_dumps_merge_mesh_wide_sections_once_and_keep_every_agents_own() {
    let one = dump();
    let merged = local::merge(&[
        (
            "node-1".into(),
            agent("node-1", "spiffe://a", "10.0.1.2:4000"),
        ),
        (
            "node-2".into(),
            agent("node-2", "spiffe://b", "10.0.2.2:4000"),
        ),
    ])
    .unwrap();
    assert_eq!(
        merged.workloads.len(),
        one.workloads.len(),
        "one row per workload uid"
    );
    assert_eq!(merged.services.len(), one.services.len());
    assert_eq!(merged.policies.len(), one.policies.len());
    let ids: Vec<&str> = merged
        .certificates
        .iter()
        .map(|c| c.identity.as_str())
        .collect();
    assert_eq!(
        ids,
        ["spiffe://a", "spiffe://b"],
        "every agent's, in node order"
    );
    let srcs: Vec<&str> = merged.connections.iter().map(|c| c.src.as_str()).collect();
    assert_eq!(srcs, ["10.0.1.2:4000", "10.0.2.2:4000"]);
    // -o json all: the sections at the top, each agent's other keys under agents.<node>.
    let all = data(&merged, Section::All, &Filter::default());
    assert_eq!(all["agents"]["node-2"]["config"]["nodeName"], "node-2");
    assert!(
        all.get("config").is_none(),
        "per-agent keys are not mixed: {all}"
    );
    assert_eq!(all["workloads"][0]["name"], "legacy", "table order");
    // Tables render from the merged view like from one agent's.
    let t = workloads(&merged, &Filter::default()).render();
    assert_eq!(t, workloads(&one, &Filter::default()).render());
}

#[test]
fn local_flag_conflicts_with_admin_and_names_unknown_clusters_and_nodes() {
    use crate::cli::{Cli, Command};
    use clap::Parser;
    let parse = |args: &[&str]| Cli::try_parse_from(args.iter().copied());
    assert!(parse(&[
        "meshctl",
        "ztunnel-config",
        "all",
        "--local",
        "c",
        "--admin",
        "127.0.0.1:1"
    ])
    .is_err());
    let Command::ZtunnelConfig(a) = parse(&[
        "meshctl",
        "ztunnel-config",
        "workloads",
        "--local",
        "c",
        "--state-dir",
        "/x",
        "--node",
        "node-2",
    ])
    .unwrap()
    .command
    else {
        panic!("not ztunnel-config")
    };
    assert_eq!(
        (a.cluster.local.as_deref(), a.node.as_deref()),
        (Some("c"), Some("node-2"))
    );

    let env = Default::default();
    let ctx = crate::cmd::testing::ctx(&env);
    let dir = tempfile::tempdir().unwrap();
    let err = local::dump("c", dir.path(), None, &ctx).unwrap_err();
    assert!(err.to_string().contains("does not exist"), "{err}");
    std::fs::write(
        dir.path().join("state.json"),
        serde_json::json!({
            "name": "c", "dir": dir.path(), "bin_dir": "/b", "cni_dir": "/n", "mesh": true,
            "netns": "ambrs-c", "istiod_ip": "10.243.0.1", "istiod": null,
            "nodes": [{"name": "node-1", "index": 1, "netns": "ambrs-c.node-1",
                       "pod_cidr": "10.244.1.0/24", "node_ip": "10.243.1.2",
                       "cni_socket": "/s", "ztunnel": null}],
            "pods": {}, "namespaces": {}
        })
        .to_string(),
    )
    .unwrap();
    let err = local::dump("c", dir.path(), Some("node-9"), &ctx).unwrap_err();
    assert!(
        err.to_string()
            .contains("node \"node-9\" does not exist in cluster \"c\" (nodes: node-1)"),
        "{err}"
    );
    assert_eq!(err.exit_code(), crate::error::EXIT_USAGE);
}

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

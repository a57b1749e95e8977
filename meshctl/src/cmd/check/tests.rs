use std::collections::{HashMap, HashSet};

use super::host::{self, Host};
use super::*;
use crate::cmd::testing::{self, closed_addr};
use crate::golden::{assert_golden, fixture_now, CONFIG_DUMP, CONFIG_DUMP_EXPIRED};

#[derive(Default)]
struct FakeHost {
    files: HashMap<String, String>,
    exists: HashSet<String>,
    path: String,
}

impl Host for FakeHost {
    fn read(&self, path: &str) -> Option<String> {
        self.files.get(path).cloned()
    }
    fn exists(&self, path: &str) -> bool {
        self.exists.contains(path) || self.files.contains_key(path)
    }
    fn path_var(&self) -> String {
        self.path.clone()
    }
}

fn status(cap_eff: &str, uid: u32) -> String {
    format!("Name:\tmeshctl\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\nCapEff:\t{cap_eff}\n")
}

#[test]
fn prepared_root_host_passes() {
    let mut h = FakeHost {
        path: "/usr/local/bin:/usr/bin".into(),
        ..Default::default()
    };
    h.files
        .insert(host::OSRELEASE.into(), "6.1.0-13-amd64\n".into());
    h.files
        .insert(host::PROC_STATUS.into(), status("000001ffffffffff", 0));
    h.exists.insert(host::IPTABLES_NAMES.into());
    h.exists.insert("/usr/sbin/nft".into());
    for p in host::CNI_PLUGINS {
        h.exists.insert(format!("/usr/lib/cni/{p}"));
    }
    let lines = host::checks(&h);
    assert!(lines.iter().all(|l| l.status == Status::Ok), "{lines:#?}");
    assert_golden("check_host_ok.txt", &render(&lines, Style::default()));
}

#[test]
fn bare_host_fails_netfilter_and_warns_on_caps_and_cni() {
    let mut h = FakeHost::default();
    h.files.insert(host::OSRELEASE.into(), "6.1.0\n".into());
    h.files
        .insert(host::PROC_STATUS.into(), status("0000000000000000", 1000));
    let lines = host::checks(&h);
    let by = |s: Status| lines.iter().filter(|l| l.status == s).count();
    assert_eq!(
        (by(Status::Ok), by(Status::Warn), by(Status::Fail)),
        (1, 2, 1)
    );
    assert_golden("check_host_bare.txt", &render(&lines, Style::default()));

    // Root without the capabilities (an unprivileged container) is a failure, not a warning.
    h.files
        .insert(host::PROC_STATUS.into(), status("00000000a80425fb", 0));
    let caps = host::checks(&h)
        .into_iter()
        .find(|l| l.message.contains("capabilities"))
        .unwrap();
    assert_eq!(caps.status, Status::Fail, "{caps:?}");
    assert!(caps.message.contains("CAP_NET_ADMIN"), "{caps:?}");
}

fn cert_lines(dump: &str, now: OffsetDateTime) -> Vec<Line> {
    certificates(
        "ztunnel 127.0.0.1:15000",
        &ConfigDump::parse(dump.as_bytes()).unwrap(),
        now,
    )
}

#[test]
fn certificates_unavailable_fail_initializing_warn_valid_pass() {
    let lines = cert_lines(CONFIG_DUMP, fixture_now());
    assert_golden("check_certs.txt", &render(&lines, Style::default()));
    let failed: Vec<&Line> = lines.iter().filter(|l| l.status == Status::Fail).collect();
    assert_eq!(failed.len(), 1);
    assert!(failed[0].message.contains("CA refused"), "{lines:#?}");
    assert_eq!(
        lines[0].status,
        Status::Ok,
        "valid certificates are still summarised"
    );
}

#[test]
fn certificate_expiring_within_an_hour_fails() {
    let now = time::macros::datetime!(2026-01-01 23:30:00 UTC);
    let lines = cert_lines(CONFIG_DUMP, now);
    let leaf = lines
        .iter()
        .find(|l| l.message.contains("Leaf"))
        .expect("a line about the leaf");
    assert_eq!(leaf.status, Status::Fail);
    assert!(
        leaf.message
            .contains("expires at 2026-01-02T00:00:00Z (in 30m)"),
        "{leaf:?}"
    );
}

#[test]
fn expired_certificate_and_root_fail_with_hints() {
    let lines = cert_lines(CONFIG_DUMP_EXPIRED, fixture_now());
    assert_golden("check_certs_expired.txt", &render(&lines, Style::default()));
    assert_eq!(lines.len(), 2);
    assert!(lines
        .iter()
        .all(|l| l.status == Status::Fail && l.hint.is_some()));
    assert!(
        lines[0].message.contains("expired at 2020-12-02T00:00:00Z"),
        "{lines:#?}"
    );
    assert!(lines[1].message.contains("Root"), "{lines:#?}");
}

#[test]
fn clock_skew_thresholds() {
    let local = time::macros::datetime!(2026-11-23 20:46:28.7 UTC);
    let cat = "c";
    let ok = clock_skew(cat, Some("Mon, 23 Nov 2026 20:46:29 GMT"), local);
    assert_eq!(ok.status, Status::Ok, "{ok:?}");
    let warn = clock_skew(cat, Some("Mon, 23 Nov 2026 20:46:00 GMT"), local);
    assert_eq!(warn.status, Status::Warn);
    assert!(warn.message.contains("28s behind"), "{warn:?}");
    let fail = clock_skew(cat, Some("Mon, 23 Nov 2026 20:50:28 GMT"), local);
    assert_eq!(fail.status, Status::Fail);
    assert!(fail.message.contains("4m ahead"), "{fail:?}");
    assert_eq!(clock_skew(cat, None, local).status, Status::Warn);
    assert_eq!(
        clock_skew(cat, Some("yesterday"), local).status,
        Status::Warn
    );
}

#[test]
fn report_exit_and_json_shape() {
    let lines = vec![
        Line::new("a", Status::Ok, "fine".into(), None),
        Line::new("a", Status::Warn, "hmm".into(), Some("look")),
        Line::new("b", Status::Fail, "broken".into(), Some("fix it")),
    ];
    let mut out = Vec::new();
    let e = report(&lines, Format::Table, Style { color: true }, &mut out).unwrap_err();
    assert!(matches!(e, Error::CheckFailed(1)));
    let text = String::from_utf8(out).unwrap();
    assert!(text.contains("\x1b[31m✗\x1b[0m broken"), "{text}");
    let mut out = Vec::new();
    let _ = report(&lines, Format::Json, Style::default(), &mut out);
    assert_golden("check.json", &String::from_utf8(out).unwrap());
    let mut out = Vec::new();
    report(&lines[..2], Format::Table, Style::default(), &mut out).unwrap();
    assert!(String::from_utf8(out)
        .unwrap()
        .ends_with("Status check results are ✓\n"));
}

#[test]
fn xds_clients_are_named_by_node_else_by_proxy_id() {
    let c = |v: serde_json::Value| client_name(&v);
    assert_eq!(
        c(serde_json::json!({"node_name": "node-1", "node_id": "ztunnel~x~y~z"})),
        Some("node-1".into())
    );
    assert_eq!(
        c(
            serde_json::json!({"node_name": "", "node_id": "router~10.244.2.3~waypoint.demo~demo.svc.cluster.local"})
        ),
        Some("waypoint.demo".into())
    );
    assert_eq!(c(serde_json::json!({"node_id": "odd"})), Some("odd".into()));
    assert_eq!(c(serde_json::json!({"node_name": ""})), None);
}

fn components(istiod: Endpoint, agent: impl Fn(&str) -> Endpoint) -> local::Components {
    local::Components {
        istiod,
        istiod_log: Some("/s/logs/istiod-lite.log".into()),
        ztunnels: ["node-1", "node-2"]
            .into_iter()
            .map(|node| local::NodeAgent {
                node: node.into(),
                admin: agent(node),
                readiness: agent(node),
                stats: agent(node),
                log: Some(format!("/s/logs/ztunnel-{node}.log").into()),
            })
            .collect(),
        waypoints: Vec::new(),
    }
}

#[test]
fn local_mesh_checks_every_node_with_hints_naming_the_cluster_and_logs() {
    let cluster = LocalCluster {
        name: "c".into(),
        dir: "/s".into(),
    };
    let mesh = Mesh::of_local(
        &cluster,
        &components(Endpoint::in_netns("ambrs-c", "10.243.0.1:15014"), |node| {
            Endpoint::in_netns(&format!("ambrs-c.{node}"), "127.0.0.1:15000")
        }),
    );
    assert_eq!(mesh.istiod.to_string(), "10.243.0.1:15014 in netns ambrs-c");
    assert!(
        mesh.istiod_hint
            .contains("`meshctl local status --name c --state-dir /s`")
            && mesh.istiod_hint.contains("/s/logs/istiod-lite.log"),
        "{}",
        mesh.istiod_hint
    );
    let labels: Vec<&str> = mesh.agents.iter().map(|a| a.label.as_str()).collect();
    assert_eq!(
        labels,
        [
            "ztunnel node-1 (127.0.0.1:15000 in netns ambrs-c.node-1)",
            "ztunnel node-2 (127.0.0.1:15000 in netns ambrs-c.node-2)"
        ]
    );
    assert!(mesh.agents[1].hint.contains("/s/logs/ztunnel-node-2.log"));
    assert!(mesh.agents[1]
        .hint
        .contains("`meshctl local restart-ztunnel node-2 --name c --state-dir /s`"));

    // Nothing answers: every line says where it looked, with the local hints.
    let down = Endpoint::host(closed_addr());
    let mesh = Mesh::of_local(&cluster, &components(down.clone(), |_| down.clone()));
    let env = HashMap::new();
    let lines = mesh_checks(&mesh, &testing::ctx(&env));
    let cp = &lines[0];
    assert_eq!(cp.status, Status::Fail);
    assert!(
        cp.message.starts_with(&format!(
            "cannot reach istiod-lite at {down}: connection failed"
        )),
        "{cp:?}"
    );
    assert_eq!(cp.hint.as_deref(), Some(mesh.istiod_hint.as_str()));
    for (node, agent) in ["node-1", "node-2"].iter().zip(&mesh.agents) {
        let mine: Vec<&Line> = lines.iter().filter(|l| l.category == agent.label).collect();
        assert_eq!(
            mine.len(),
            2,
            "readiness and certificates of {node}: {lines:#?}"
        );
        assert!(mine
            .iter()
            .all(|l| l.status == Status::Fail && l.hint.as_deref() == Some(agent.hint.as_str())));
        assert!(
            mine[0]
                .message
                .starts_with(&format!("cannot reach ztunnel readiness at {down}")),
            "{mine:?}"
        );
    }
}

#[test]
fn the_host_checks_alone_never_look_the_cluster_up() {
    let dir = tempfile::tempdir().unwrap();
    let state_dir = dir.path().to_str().unwrap();
    let r = testing::run(
        &[("MESHCTL_LOCAL", "envc")],
        &["check", "--pre", "--state-dir", state_dir],
    );
    assert!(matches!(r, Ok(_) | Err(Error::CheckFailed(_))), "{r:?}");
}

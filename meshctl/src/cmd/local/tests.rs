//! Unit tests of `meshctl local` that need neither root nor namespaces: the conflist, the
//! runtime's chaining (with fake plugins that record what they were given), the objects'
//! YAML, names. The real plugins and namespaces are exercised by tests/e2e/tests/local_cluster.rs.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use super::cni::{self, NodeNet, Runtime};
use super::objects::{self, PodObject};
use super::*;

fn node_net(sock: Option<&Path>) -> Value {
    cni::conflist(&NodeNet {
        subnet: "10.244.1.0/24",
        gateway: "10.244.1.1",
        ipam_dir: Path::new("/run/ambient-rs/local/x/nodes/node-1/ipam"),
        ztunnel_socket: sock,
    })
}

#[test]
fn conflist_chains_bridge_then_ambient_cni() {
    let list = node_net(Some(Path::new("/s/cni.sock")));
    assert_eq!(list["cniVersion"], "1.0.0");
    let plugins = list["plugins"].as_array().unwrap();
    assert_eq!(plugins.len(), 2);
    assert_eq!(plugins[0]["type"], "bridge");
    assert_eq!(plugins[0]["bridge"], "cni0");
    assert_eq!(plugins[0]["isGateway"], true);
    assert_eq!(plugins[0]["ipMasq"], false);
    assert_eq!(plugins[0]["ipam"]["type"], "host-local");
    assert_eq!(
        plugins[0]["ipam"]["ranges"][0][0]["subnet"],
        "10.244.1.0/24"
    );
    // IPAM state under the tool's state dir, never /var/lib/cni.
    assert_eq!(
        plugins[0]["ipam"]["dataDir"],
        "/run/ambient-rs/local/x/nodes/node-1/ipam"
    );
    assert_eq!(plugins[1]["type"], "ambient-cni");
    assert_eq!(plugins[1]["ztunnel_socket"], "/s/cni.sock");
    let plain = node_net(None);
    assert_eq!(
        plain["plugins"].as_array().unwrap().len(),
        1,
        "--no-mesh leaves ambient-cni out"
    );
}

#[test]
fn plugin_stdin_injects_name_version_and_prev_result() {
    let list = node_net(None);
    let plugin = &list["plugins"][0];
    let first = cni::plugin_stdin(&list, plugin, None);
    assert_eq!(first["name"], cni::NETWORK_NAME);
    assert_eq!(first["cniVersion"], "1.0.0");
    assert!(first.get("prevResult").is_none());
    let prev = json!({"cniVersion": "1.0.0", "ips": [{"address": "10.244.1.2/24"}]});
    let second = cni::plugin_stdin(&list, plugin, Some(&prev));
    assert_eq!(second["prevResult"], prev);
    assert_eq!(second["type"], "bridge");
    // A single conf (loopback) is a list of one with the same keys.
    let lo = cni::loopback_conf();
    let s = cni::plugin_stdin(&lo, &lo, None);
    assert_eq!(s["type"], "loopback");
    assert_eq!(s["name"], "lo");
}

#[test]
fn result_ipv4_skips_loopback() {
    let r = json!({"ips": [{"address": "127.0.0.1/8"}, {"address": "10.244.2.7/24"}]});
    assert_eq!(cni::result_ipv4(&r).as_deref(), Some("10.244.2.7"));
    assert_eq!(cni::result_ipv4(&json!({"ips": []})), None);
    assert_eq!(cni::result_ipv4(&json!({})), None);
}

/// A fake plugin: appends its env and stdin to `<dir>/calls`, then prints `{"cniVersion",
/// "ips": prev.ips + [its own]}` on ADD (so each plugin's input shows the previous output).
fn fake_plugin(dir: &Path, name: &str, ip: &str, fail: bool) {
    let script = format!(
        r#"#!/bin/sh
input=$(cat)
printf '%s %s %s %s %s %s\n' "$CNI_COMMAND" "{name}" "$CNI_IFNAME" "$CNI_CONTAINERID" "$CNI_NETNS" "$CNI_ARGS" >> "{dir}/calls"
printf '%s\n' "$input" >> "{dir}/stdin"
if [ "{fail}" = true ]; then
  echo '{{"cniVersion":"1.0.0","code":7,"msg":"bad env","details":"nope"}}'
  echo "plugin {name} says no" >&2
  exit 1
fi
if [ "$CNI_COMMAND" = ADD ]; then
  echo '{{"cniVersion":"1.0.0","ips":[{{"address":"{ip}"}}]}}'
fi
"#,
        dir = dir.display()
    );
    let p = dir.join(name);
    std::fs::write(&p, script).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn rt<'a>(path: &'a [PathBuf], log: &'a Path) -> Runtime<'a> {
    Runtime {
        cni_path: path,
        host_netns: None,
        container_id: "c1",
        netns: Path::new("/run/netns/p"),
        args: cni::k8s_args("ns", "pod", "uid-1", "c1"),
        pod: "ns/pod",
        log,
    }
}

#[test]
fn chain_passes_results_along_and_deletes_in_reverse() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    fake_plugin(d, "first", "10.0.0.1/24", false);
    fake_plugin(d, "second", "10.0.0.2/24", false);
    let list = json!({"cniVersion": "1.0.0", "name": "net", "plugins": [{"type": "first", "k": 1}, {"type": "second"}]});
    let path = vec![PathBuf::from("/nonexistent"), d.to_path_buf()];
    let log = d.join("cni.log");
    let r = rt(&path, &log);
    let result = r.add(&list, "eth0").unwrap();
    assert_eq!(
        result["ips"][0]["address"], "10.0.0.2/24",
        "ADD returns the last plugin's result"
    );
    let stdins: Vec<Value> = std::fs::read_to_string(d.join("stdin"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(stdins[0]["name"], "net");
    assert_eq!(stdins[0]["k"], 1);
    assert!(stdins[0].get("prevResult").is_none());
    assert_eq!(stdins[1]["prevResult"]["ips"][0]["address"], "10.0.0.1/24");

    r.check(&list, "eth0", &result).unwrap();
    assert!(r.del(&list, "eth0", Some(&result)).is_empty());
    let calls = std::fs::read_to_string(d.join("calls")).unwrap();
    let order: Vec<String> = calls
        .lines()
        .map(|l| l.split(' ').take(2).collect::<Vec<_>>().join(" "))
        .collect();
    assert_eq!(
        order,
        [
            "ADD first",
            "ADD second",
            "CHECK first",
            "CHECK second",
            "DEL second",
            "DEL first"
        ]
    );
    let first = calls.lines().next().unwrap();
    assert!(first.contains(" eth0 c1 /run/netns/p "), "{first}");
    assert!(
        first.contains("IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=pod;"),
        "{first}"
    );
    assert!(first.contains("K8S_POD_UID=uid-1"), "{first}");
    // CHECK and DEL get the cached ADD result as prevResult.
    let stdin_text = std::fs::read_to_string(d.join("stdin")).unwrap();
    let last: Value = serde_json::from_str(stdin_text.lines().last().unwrap()).unwrap();
    assert_eq!(last["prevResult"], result);
}

#[test]
fn plugin_errors_carry_code_message_and_log() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    fake_plugin(d, "bad", "", true);
    let list = json!({"cniVersion": "1.0.0", "name": "net", "plugins": [{"type": "bad"}]});
    let path = vec![d.to_path_buf()];
    let log = d.join("cni.log");
    let e = rt(&path, &log).add(&list, "eth0").unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("plugin bad failed (code 7): bad env: nope"),
        "{msg}"
    );
    assert!(std::fs::read_to_string(&log)
        .unwrap()
        .contains("plugin bad says no"));
    let missing = json!({"cniVersion": "1.0.0", "name": "net", "plugins": [{"type": "nope"}]});
    let e = rt(&path, &log).add(&missing, "eth0").unwrap_err();
    assert!(
        e.to_string().contains("CNI plugin \"nope\" not found"),
        "{e}"
    );
    let evil = json!({"cniVersion": "1.0.0", "name": "net", "plugins": [{"type": "../bin/sh"}]});
    assert!(rt(&path, &log).add(&evil, "eth0").is_err());
}

#[test]
fn pod_yaml_is_pending_without_ip_then_running() {
    let labels: BTreeMap<String, String> = [("app".to_string(), "web".to_string())].into();
    let mut p = PodObject {
        namespace: "demo",
        name: "web",
        uid: "u-1",
        labels: &labels,
        node: "node-1",
        service_account: "web",
        host_ip: "10.243.1.2",
        ip: None,
    };
    let y: Value = serde_yaml_ng::from_str(&objects::pod_yaml(&p)).unwrap();
    assert_eq!(y["kind"], "Pod");
    assert_eq!(y["metadata"]["uid"], "u-1");
    assert_eq!(y["metadata"]["labels"]["app"], "web");
    assert_eq!(y["spec"]["nodeName"], "node-1");
    assert_eq!(y["spec"]["serviceAccountName"], "web");
    assert!(y["status"].get("podIP").is_none());
    assert_eq!(y["status"]["phase"], "Pending");
    p.ip = Some("10.244.1.2");
    let y: Value = serde_yaml_ng::from_str(&objects::pod_yaml(&p)).unwrap();
    assert_eq!(y["status"]["podIP"], "10.244.1.2");
    assert_eq!(y["status"]["phase"], "Running");
    assert_eq!(y["status"]["conditions"][0]["status"], "True");
    let ns: Value = serde_yaml_ng::from_str(&objects::namespace_yaml(
        "demo",
        &[("istio.io/dataplane-mode".to_string(), "ambient".to_string())].into(),
    ))
    .unwrap();
    assert_eq!(ns["kind"], "Namespace");
    assert_eq!(
        ns["metadata"]["labels"]["istio.io/dataplane-mode"],
        "ambient"
    );
}

#[test]
fn node_yaml_is_a_node_whose_labels_the_user_edits() {
    let labels: BTreeMap<String, String> =
        [("kubernetes.io/hostname".to_string(), "node-2".to_string())].into();
    let text = objects::node_yaml("node-2", &labels);
    // The header tells the user how to give the node a locality.
    assert!(text.contains("topology.kubernetes.io/zone"), "{text}");
    let y: Value = serde_yaml_ng::from_str(&text).unwrap();
    assert_eq!(y["kind"], "Node");
    assert_eq!(y["apiVersion"], "v1");
    assert_eq!(y["metadata"]["name"], "node-2");
    assert!(y["metadata"].get("namespace").is_none());
    assert_eq!(y["metadata"]["labels"]["kubernetes.io/hostname"], "node-2");
    assert_eq!(
        objects::node_file(Path::new("/c"), "node-2"),
        Path::new("/c/node.node-2.yaml")
    );
}

#[test]
fn names_are_validated_and_unambiguous() {
    assert!(validate_cluster_name("ambient").is_ok());
    assert!(validate_cluster_name("a.b").is_err());
    assert!(validate_cluster_name("-a").is_err());
    assert!(validate_cluster_name("").is_err());
    assert!(validate_cluster_name("abcdefghijklmnopqrstu").is_err());
    assert!(validate_namespace("demo-a").is_ok());
    assert!(validate_namespace("Demo").is_err());
    assert!(validate_namespace("a.b").is_err());
    assert!(validate_object_name("pod", "web.v1").is_ok());
    assert!(validate_object_name("pod", "web/../x").is_err());
    assert!(validate_object_name("pod", "").is_err());
    assert_eq!(names::cluster("c"), "ambrs-c");
    assert_eq!(names::node("c", "node-1"), "ambrs-c.node-1");
    assert_eq!(names::pod("c", "demo", "web"), "ambrs-c.demo.web");
    assert_eq!(
        state_dir("c", None),
        PathBuf::from("/run/ambient-rs/local/c")
    );
}

#[test]
fn state_round_trips_through_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let st = state::ClusterState {
        name: "c".into(),
        dir: tmp.path().to_path_buf(),
        bin_dir: "/b".into(),
        cni_dir: "/usr/lib/cni".into(),
        mesh: true,
        netns: "ambrs-c".into(),
        istiod_ip: "10.243.0.1".into(),
        istiod: None,
        nodes: vec![],
        pods: BTreeMap::new(),
        namespaces: BTreeMap::new(),
    };
    assert!(state::ClusterState::load(tmp.path()).unwrap().is_none());
    st.save().unwrap();
    assert_eq!(state::ClusterState::load(tmp.path()).unwrap(), Some(st));
    std::fs::write(tmp.path().join(state::STATE_FILE), "{").unwrap();
    assert!(state::ClusterState::load(tmp.path()).is_err());
}

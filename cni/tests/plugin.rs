//! Runs the built plugin exactly as a container runtime does (env + config on stdin) against a
//! fake node agent on a unix socket in a temp dir.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_ambient-cni");

/// A fake node agent: answers every request line with `answer`, records the requests.
struct FakeAgent {
    _dir: tempfile::TempDir,
    socket: PathBuf,
    requests: Arc<Mutex<Vec<Value>>>,
}

impl FakeAgent {
    fn start(answer: Value) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("cni.sock");
        let listener = UnixListener::bind(&socket).expect("bind fake agent");
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = requests.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                let mut line = String::new();
                let mut reader = BufReader::new(&conn);
                if reader.read_line(&mut line).is_err() {
                    continue;
                }
                if let Ok(v) = serde_json::from_str(&line) {
                    seen.lock().expect("lock").push(v);
                }
                let _ = (&conn).write_all(format!("{answer}\n").as_bytes());
            }
        });
        Self {
            _dir: dir,
            socket,
            requests,
        }
    }

    fn requests(&self) -> Vec<Value> {
        self.requests.lock().expect("lock").clone()
    }
}

fn prev_result() -> Value {
    json!({
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "eth0", "mac": "0a:58:0a:01:00:05", "sandbox": "/run/netns/x"}],
        "ips": [{"address": "10.1.0.5/24", "gateway": "10.1.0.1", "interface": 0}],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dns": {}
    })
}

fn net_conf(socket: &Path, prev: Option<Value>) -> Value {
    let mut c = json!({
        "cniVersion": "1.0.0",
        "name": "ambient-test",
        "type": "ambient-cni",
        "ztunnel_socket": socket,
        "log_level": "debug",
    });
    if let Some(p) = prev {
        c["prevResult"] = p;
    }
    c
}

/// Runs the plugin with `CNI_COMMAND=command` and the given extra env and stdin.
fn plugin(command: &str, netns: &str, stdin: &Value) -> Output {
    let mut child = Command::new(BIN)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", "c0ffee")
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", "eth0")
        .env(
            "CNI_ARGS",
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=ns-a;K8S_POD_NAME=pod-a;K8S_POD_UID=uid-a",
        )
        .env("CNI_PATH", "/usr/lib/cni")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn plugin");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.to_string().as_bytes())
        .expect("write stdin");
    child.wait_with_output().expect("wait plugin")
}

fn stdout_json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {:?}; stderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn assert_cni_error(out: &Output, code: u64) -> Value {
    assert_eq!(out.status.code(), Some(1), "exit code");
    let v = stdout_json(out);
    assert_eq!(v["code"], code, "{v}");
    assert_eq!(v["cniVersion"], "1.0.0");
    assert!(v["msg"].as_str().is_some_and(|m| !m.is_empty()));
    assert!(v["details"].as_str().is_some());
    v
}

#[test]
fn version() {
    let out = plugin("VERSION", "", &json!({"cniVersion": "1.0.0"}));
    assert!(out.status.success());
    let v = stdout_json(&out);
    assert_eq!(v["cniVersion"], "1.0.0");
    assert_eq!(
        v["supportedVersions"],
        json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
    );
}

#[test]
fn add_not_enrolled_returns_prev_result_unchanged() {
    let agent = FakeAgent::start(json!({"enrolled": false, "error": ""}));
    let out = plugin(
        "ADD",
        "/run/netns/not-used",
        &net_conf(&agent.socket, Some(prev_result())),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout_json(&out), prev_result());
    let reqs = agent.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0]["op"], "add");
    assert_eq!(
        reqs[0]["pod"],
        json!({"namespace": "ns-a", "name": "pod-a", "uid": "uid-a"})
    );
    assert_eq!(reqs[0]["netns"], "/run/netns/not-used");
    assert_eq!(reqs[0]["ips"], json!(["10.1.0.5"]));
}

#[test]
fn add_with_agent_down_is_a_cni_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = plugin(
        "ADD",
        "/run/netns/not-used",
        &net_conf(&dir.path().join("nobody-listens.sock"), Some(prev_result())),
    );
    let v = assert_cni_error(&out, 999);
    assert!(
        v["details"]
            .as_str()
            .unwrap_or_default()
            .contains("nobody-listens.sock"),
        "{v}"
    );
}

#[test]
fn add_refused_by_agent_is_a_cni_error() {
    let agent = FakeAgent::start(json!({"enrolled": false, "error": "no such workload"}));
    let out = plugin(
        "ADD",
        "/run/netns/not-used",
        &net_conf(&agent.socket, Some(prev_result())),
    );
    let v = assert_cni_error(&out, 1000);
    assert!(v["details"]
        .as_str()
        .unwrap_or_default()
        .contains("no such workload"));
}

#[test]
fn add_enrolled_but_rules_fail_is_a_cni_error() {
    let agent = FakeAgent::start(json!({"enrolled": true, "error": ""}));
    let out = plugin(
        "ADD",
        "/run/netns/ambient-cni-does-not-exist",
        &net_conf(&agent.socket, Some(prev_result())),
    );
    let v = assert_cni_error(&out, 1001);
    assert!(
        v["details"]
            .as_str()
            .unwrap_or_default()
            .contains("ambient-cni-does-not-exist"),
        "{v}"
    );
}

#[test]
fn bad_input_errors() {
    let agent = FakeAgent::start(json!({"enrolled": false, "error": ""}));
    // Malformed config.
    let out = plugin("ADD", "/run/netns/x", &json!("not an object"));
    assert_cni_error(&out, 4);
    // Unknown command.
    let out = plugin("FROB", "/run/netns/x", &net_conf(&agent.socket, None));
    assert_cni_error(&out, 7);
    // ADD without CNI_NETNS.
    let out = plugin("ADD", "", &net_conf(&agent.socket, None));
    assert_cni_error(&out, 7);
    // Unsupported version.
    let mut old = net_conf(&agent.socket, None);
    old["cniVersion"] = json!("0.1.0");
    let out = plugin("ADD", "/run/netns/x", &old);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stdout_json(&out)["code"], 1);
    assert!(agent.requests().is_empty());
}

#[test]
fn del_on_missing_netns_succeeds_and_tells_agent() {
    let agent = FakeAgent::start(json!({"enrolled": false, "error": ""}));
    let out = plugin(
        "DEL",
        "/run/netns/ambient-cni-does-not-exist",
        &net_conf(&agent.socket, None),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout.is_empty());
    let reqs = agent.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0]["op"], "del");
    // Agent down: DEL still succeeds.
    let dir = tempfile::tempdir().expect("tempdir");
    let out = plugin("DEL", "", &net_conf(&dir.path().join("none.sock"), None));
    assert!(out.status.success());
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

/// Deletes the named netns when dropped.
struct NetnsGuard(String);

impl NetnsGuard {
    fn create() -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or_default();
        let name = format!("ambient-cni-test-{}-{nanos:x}", std::process::id());
        run_ok(&["ip", "netns", "add", &name]);
        Self(name)
    }

    fn path(&self) -> String {
        format!("/run/netns/{}", self.0)
    }

    fn exec(&self, cmd: &[&str]) -> String {
        let mut full = vec!["ip", "netns", "exec", &self.0];
        full.extend_from_slice(cmd);
        run_ok(&full)
    }
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn run_ok(cmd: &[&str]) -> String {
    let out = Command::new(cmd[0])
        .args(&cmd[1..])
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn root_add_check_del_in_a_real_netns() {
    if !is_root() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true: this test must run as root"
        );
        eprintln!("SKIPPED root_add_check_del_in_a_real_netns: needs root (ip netns, iptables)");
        return;
    }
    let agent = FakeAgent::start(json!({"enrolled": true, "error": ""}));
    let ns = NetnsGuard::create();
    let conf = net_conf(&agent.socket, Some(prev_result()));

    let out = plugin("ADD", &ns.path(), &conf);
    assert!(
        out.status.success(),
        "ADD failed: {} {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout_json(&out), prev_result());
    let nat = ns.exec(&["iptables-save", "-t", "nat"]);
    assert!(nat.contains("-A PREROUTING -j ISTIO_PRERT"), "{nat}");
    assert!(nat.contains("-A OUTPUT -j ISTIO_OUTPUT"), "{nat}");
    assert!(
        nat.contains("! --mark 0x539/0xfff -j REDIRECT --to-ports 15001"),
        "{nat}"
    );
    assert!(nat.contains("! --dport 15008"), "{nat}");
    assert!(nat.contains("-j REDIRECT --to-ports 15006"), "{nat}");
    assert!(
        !nat.contains("15053"),
        "DNS capture is off by default: {nat}"
    );
    let mangle = ns.exec(&["iptables-save", "-t", "mangle"]);
    assert!(
        mangle.contains("CONNMARK --set-xmark 0x111/0xfff"),
        "{mangle}"
    );
    let rules = ns.exec(&["ip", "rule"]);
    assert!(rules.contains("fwmark 0x111/0xfff lookup 100"), "{rules}");
    let routes = ns.exec(&["ip", "route", "show", "table", "100"]);
    assert!(routes.contains("local default dev lo"), "{routes}");

    // CHECK passes; a second ADD replaces rather than duplicates.
    let out = plugin("CHECK", &ns.path(), &conf);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = plugin("ADD", &ns.path(), &conf);
    assert!(out.status.success());
    let nat = ns.exec(&["iptables-save", "-t", "nat"]);
    assert_eq!(
        nat.matches("-A PREROUTING -j ISTIO_PRERT").count(),
        1,
        "{nat}"
    );
    let rules = ns.exec(&["ip", "rule"]);
    assert_eq!(rules.matches("fwmark 0x111/0xfff").count(), 1, "{rules}");

    // CHECK notices tampering.
    ns.exec(&[
        "iptables",
        "-t",
        "mangle",
        "-D",
        "PREROUTING",
        "-j",
        "ISTIO_PRERT",
    ]);
    let out = plugin("CHECK", &ns.path(), &conf);
    assert_cni_error(&out, 1002);

    // DEL removes everything, and is idempotent.
    for _ in 0..2 {
        let out = plugin("DEL", &ns.path(), &conf);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.stdout.is_empty());
    }
    for table in ["nat", "mangle", "raw"] {
        let t = ns.exec(&["iptables-save", "-t", table]);
        assert!(!t.contains("ISTIO_"), "{table}: {t}");
    }
    let rules = ns.exec(&["ip", "rule"]);
    assert!(!rules.contains("0x111"), "{rules}");
    let ops: Vec<Value> = agent.requests().iter().map(|r| r["op"].clone()).collect();
    assert_eq!(
        ops,
        [json!("add"), json!("add"), json!("del"), json!("del")]
    );
}

#[test]
fn root_dns_capture_installs_dns_rules() {
    if !is_root() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true: this test must run as root"
        );
        eprintln!("SKIPPED root_dns_capture_installs_dns_rules: needs root");
        return;
    }
    let agent = FakeAgent::start(json!({"enrolled": true, "error": ""}));
    let ns = NetnsGuard::create();
    let mut conf = net_conf(&agent.socket, Some(prev_result()));
    conf["dns_capture"] = json!(true);
    let out = plugin("ADD", &ns.path(), &conf);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let nat = ns.exec(&["iptables-save", "-t", "nat"]);
    assert!(nat.contains("--dport 53"), "{nat}");
    assert!(nat.contains("--to-ports 15053"), "{nat}");
    let raw = ns.exec(&["iptables-save", "-t", "raw"]);
    assert!(raw.contains("CT --zone 1"), "{raw}");
    let out = plugin("DEL", &ns.path(), &conf);
    assert!(out.status.success());
    let raw = ns.exec(&["iptables-save", "-t", "raw"]);
    assert!(!raw.contains("ISTIO_"), "{raw}");
}

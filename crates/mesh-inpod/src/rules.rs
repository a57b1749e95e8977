//! In-pod redirection rules, same semantics as istio-cni (istio-wire-facts.md §2.3).
//!
//! The rule text and command lists are pure functions (golden-tested); [`install`], [`remove`]
//! and [`check`] run them inside the pod netns with `nsenter --net=<path>`.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

/// A rule operation failed; the message names the command, the netns and its stderr.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum RulesError {
    /// Installing failed (what was installed has been removed again).
    #[error("{0}")]
    Install(String),
    /// Reading the rules back failed, or they are incomplete.
    #[error("{0}")]
    Check(String),
}

/// Mark ztunnel puts on every socket it opens in a pod netns (1337).
pub const INPOD_MARK: &str = "0x539/0xfff";
/// Connmark/fwmark for replies to ztunnel's original-source connections.
pub const TPROXY_MARK: &str = "0x111/0xfff";
/// Policy routing table for [`TPROXY_MARK`].
pub const ROUTE_TABLE: &str = "100";
/// `ip rule` preference (istio-cni's).
pub const RULE_PREF: &str = "32764";
/// Source of kubelet probes after the host SNATs them.
pub const PROBE_SNAT_IP: &str = "169.254.7.127";
/// ztunnel's outbound capture port.
pub const OUTBOUND_PORT: u16 = 15001;
/// ztunnel's inbound plaintext capture port.
pub const INBOUND_PLAINTEXT_PORT: u16 = 15006;
/// ztunnel's inbound HBONE port (never redirected).
pub const HBONE_PORT: u16 = 15008;
/// ztunnel's DNS proxy port.
pub const DNS_PORT: u16 = 15053;

const PRERT: &str = "ISTIO_PRERT";
const OUTPUT: &str = "ISTIO_OUTPUT";

/// The `iptables-restore --noflush` input that installs the in-pod rules.
pub fn ruleset(dns_capture: bool) -> String {
    let mut s = String::new();
    let mut table = |name: &str, rules: &[String]| {
        s.push_str(&format!("*{name}\n:{PRERT} - [0:0]\n:{OUTPUT} - [0:0]\n"));
        s.push_str(&format!(
            "-A PREROUTING -j {PRERT}\n-A OUTPUT -j {OUTPUT}\n"
        ));
        for r in rules {
            s.push_str(r);
            s.push('\n');
        }
        s.push_str("COMMIT\n");
    };

    table(
        "mangle",
        &[
            // Packets of ztunnel's (marked) connections: remember on the connection, so replies
            // can be routed back to ztunnel's transparent socket.
            format!("-A {PRERT} -m mark --mark {INPOD_MARK} -j CONNMARK --set-xmark {TPROXY_MARK}"),
            format!(
                "-A {OUTPUT} -m connmark --mark {TPROXY_MARK} -j CONNMARK --restore-mark \
                 --nfmask 0xffffffff --ctmask 0xffffffff"
            ),
        ],
    );

    let mut nat = vec![
        format!("-A {PRERT} -s {PROBE_SNAT_IP}/32 -p tcp -m tcp -j ACCEPT"),
        format!(
            "-A {PRERT} ! -d 127.0.0.1/32 -p tcp -m tcp ! --dport {HBONE_PORT} \
             -m mark ! --mark {INPOD_MARK} -j REDIRECT --to-ports {INBOUND_PLAINTEXT_PORT}"
        ),
        format!("-A {OUTPUT} -d {PROBE_SNAT_IP}/32 -p tcp -m tcp -j ACCEPT"),
    ];
    if dns_capture {
        nat.push(format!(
            "-A {OUTPUT} ! -o lo -p udp -m mark ! --mark {INPOD_MARK} -m udp --dport 53 \
             -j REDIRECT --to-ports {DNS_PORT}"
        ));
        nat.push(format!(
            "-A {OUTPUT} ! -d 127.0.0.1/32 -p tcp -m tcp --dport 53 -m mark ! --mark {INPOD_MARK} \
             -j REDIRECT --to-ports {DNS_PORT}"
        ));
    }
    nat.extend([
        format!("-A {OUTPUT} -p tcp -m mark --mark {TPROXY_MARK} -j ACCEPT"),
        format!("-A {OUTPUT} ! -d 127.0.0.1/32 -o lo -j ACCEPT"),
        format!(
            "-A {OUTPUT} ! -d 127.0.0.1/32 -p tcp -m mark ! --mark {INPOD_MARK} \
             -j REDIRECT --to-ports {OUTBOUND_PORT}"
        ),
    ]);
    table("nat", &nat);

    if dns_capture {
        // ztunnel's upstream DNS queries and their replies go to conntrack zone 1, so they do not
        // collide with the app's (redirected) DNS flows.
        table(
            "raw",
            &[
                format!(
                    "-A {PRERT} -p udp -m mark ! --mark {INPOD_MARK} -m udp --sport 53 \
                     -j CT --zone 1"
                ),
                format!("-A {OUTPUT} -p udp -m mark --mark {INPOD_MARK} -m udp --dport 53 -j CT --zone 1"),
            ],
        );
    }
    s
}

fn argv(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|p| p.to_string()).collect()
}

/// `iptables` commands that remove everything [`ruleset`] installs (errors are expected when
/// parts are already gone and are ignored).
pub fn iptables_cleanup() -> Vec<Vec<String>> {
    let mut cmds = Vec::new();
    for table in ["mangle", "nat", "raw"] {
        cmds.push(argv(&[
            "iptables",
            "-w",
            "-t",
            table,
            "-D",
            "PREROUTING",
            "-j",
            PRERT,
        ]));
        cmds.push(argv(&[
            "iptables", "-w", "-t", table, "-D", "OUTPUT", "-j", OUTPUT,
        ]));
        for chain in [PRERT, OUTPUT] {
            cmds.push(argv(&["iptables", "-w", "-t", table, "-F", chain]));
            cmds.push(argv(&["iptables", "-w", "-t", table, "-X", chain]));
        }
    }
    cmds
}

fn rule_args(verb: &str) -> Vec<String> {
    argv(&[
        "ip",
        "rule",
        verb,
        "fwmark",
        TPROXY_MARK,
        "pref",
        RULE_PREF,
        "lookup",
        ROUTE_TABLE,
    ])
}

fn route_args(verb: &str) -> Vec<String> {
    argv(&[
        "ip",
        "route",
        verb,
        "local",
        "0.0.0.0/0",
        "dev",
        "lo",
        "table",
        ROUTE_TABLE,
    ])
}

/// Commands that set up policy routing (run after [`routing_cleanup`]; all must succeed).
pub fn routing_setup() -> Vec<Vec<String>> {
    vec![
        // A local route via lo needs lo up; the loopback plugin normally did this already.
        argv(&["ip", "link", "set", "lo", "up"]),
        rule_args("add"),
        route_args("replace"),
    ]
}

/// Commands that remove the policy routing (errors ignored).
pub fn routing_cleanup() -> Vec<Vec<String>> {
    vec![rule_args("del"), route_args("del")]
}

/// What [`check`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Installed {
    /// Nothing of ours (pod not enrolled).
    None,
    /// Everything ADD installs.
    Complete,
}

/// Inspects `iptables-save` output of the nat and mangle tables and `ip rule` output.
pub fn inspect(nat: &str, mangle: &str, ip_rules: &str) -> Result<Installed, String> {
    let jumps = [
        format!("-A PREROUTING -j {PRERT}"),
        format!("-A OUTPUT -j {OUTPUT}"),
    ];
    let mut present = Vec::new();
    let mut missing = Vec::new();
    let mut note = |what: String, ok: bool| {
        if ok {
            present.push(what)
        } else {
            missing.push(what)
        }
    };
    for (name, text) in [("nat", nat), ("mangle", mangle)] {
        for chain in [PRERT, OUTPUT] {
            note(
                format!("{name} chain {chain}"),
                text.contains(&format!(":{chain} ")),
            );
        }
        for j in &jumps {
            note(
                format!("{name} rule {j:?}"),
                text.lines().any(|l| l.trim() == j),
            );
        }
    }
    for port in [OUTBOUND_PORT, INBOUND_PLAINTEXT_PORT] {
        note(
            format!("nat REDIRECT to {port}"),
            nat.contains(&format!("--to-ports {port}")),
        );
    }
    note(
        format!("ip rule fwmark {TPROXY_MARK} lookup {ROUTE_TABLE}"),
        ip_rules.lines().any(|l| {
            l.contains(&format!("fwmark {TPROXY_MARK}"))
                && l.contains(&format!("lookup {ROUTE_TABLE}"))
        }),
    );
    match (present.is_empty(), missing.is_empty()) {
        (true, _) => Ok(Installed::None),
        (false, true) => Ok(Installed::Complete),
        (false, false) => Err(format!(
            "incomplete in-pod rules, missing: {}",
            missing.join(", ")
        )),
    }
}

/// Runs `cmd` inside the netns at `netns`, feeding `stdin`; returns stdout or a message with
/// stderr.
fn run_in(netns: &Path, cmd: &[String], stdin: Option<&str>) -> Result<String, String> {
    let mut c = Command::new("nsenter");
    c.arg(format!("--net={}", netns.display()))
        .arg("--")
        .args(cmd)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let shown = cmd.join(" ");
    let mut child = c.spawn().map_err(|e| {
        format!("running nsenter {shown}: {e} (are nsenter and iptables installed?)")
    })?;
    // A command that fails at once (e.g. nsenter on a missing netns) closes its stdin before we
    // write: its exit status and stderr below say why, a bare EPIPE would not.
    let write_err = match (stdin, child.stdin.take()) {
        (Some(input), Some(mut pipe)) => pipe.write_all(input.as_bytes()).err(),
        _ => None,
    };
    let out = child
        .wait_with_output()
        .map_err(|e| format!("waiting for {shown}: {e}"))?;
    if let (Some(e), true) = (write_err, out.status.success()) {
        return Err(format!("writing to {shown} in {}: {e}", netns.display()));
    }
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "`{shown}` in {} failed ({}): {}",
            netns.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn run_all_ignoring_errors(netns: &Path, cmds: &[Vec<String>]) {
    for cmd in cmds {
        if let Err(e) = run_in(netns, cmd, None) {
            tracing::trace!(error = %e, "cleanup step skipped");
        }
    }
}

/// Installs the in-pod rules in `netns`, replacing any earlier copy. On failure, what was
/// installed is removed again so the pod is never left half-captured.
pub fn install(netns: &Path, dns_capture: bool) -> Result<(), RulesError> {
    remove(netns);
    let rules = ruleset(dns_capture);
    let res = run_in(
        netns,
        &argv(&["iptables-restore", "-w", "--noflush"]),
        Some(&rules),
    )
    .and_then(|_| {
        routing_setup()
            .iter()
            .try_for_each(|cmd| run_in(netns, cmd, None).map(drop))
    });
    if let Err(e) = res {
        remove(netns);
        return Err(RulesError::Install(e));
    }
    Ok(())
}

/// Removes everything [`install`] puts in `netns`. Idempotent; a missing netns is not an error.
pub fn remove(netns: &Path) {
    if !netns.exists() {
        tracing::debug!(netns = %netns.display(), "netns gone, nothing to remove");
        return;
    }
    run_all_ignoring_errors(netns, &iptables_cleanup());
    run_all_ignoring_errors(netns, &routing_cleanup());
}

/// Verifies the rules in `netns` are either all present or all absent.
pub fn check(netns: &Path) -> Result<Installed, RulesError> {
    let nat =
        run_in(netns, &argv(&["iptables-save", "-t", "nat"]), None).map_err(RulesError::Check)?;
    let mangle = run_in(netns, &argv(&["iptables-save", "-t", "mangle"]), None)
        .map_err(RulesError::Check)?;
    let rules = run_in(netns, &argv(&["ip", "rule", "show"]), None).map_err(RulesError::Check)?;
    inspect(&nat, &mangle, &rules).map_err(RulesError::Check)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Set `UPDATE_GOLDEN=1` to rewrite the golden files after an intended change.
    #[test]
    fn golden_ruleset() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
        for (dns, file) in [(false, "inpod.rules"), (true, "inpod-dns.rules")] {
            let path = dir.join(file);
            if std::env::var_os("UPDATE_GOLDEN").is_some() {
                std::fs::write(&path, ruleset(dns)).expect("write golden");
            }
            let golden = std::fs::read_to_string(&path).expect("read golden");
            assert_eq!(
                ruleset(dns),
                golden,
                "{file} differs (UPDATE_GOLDEN=1 to accept)"
            );
        }
    }

    #[test]
    fn cleanup_covers_every_chain_and_jump() {
        let cmds: Vec<String> = iptables_cleanup().iter().map(|c| c.join(" ")).collect();
        for table in ["mangle", "nat", "raw"] {
            for chain in [PRERT, OUTPUT] {
                assert!(cmds.contains(&format!("iptables -w -t {table} -X {chain}")));
            }
            assert!(cmds.contains(&format!("iptables -w -t {table} -D PREROUTING -j {PRERT}")));
        }
        let routing: Vec<String> = routing_cleanup().iter().map(|c| c.join(" ")).collect();
        assert_eq!(
            routing,
            [
                "ip rule del fwmark 0x111/0xfff pref 32764 lookup 100",
                "ip route del local 0.0.0.0/0 dev lo table 100"
            ]
        );
    }

    #[test]
    fn inspect_states() {
        let rules = ruleset(false);
        let section = |t: &str| {
            rules
                .split("COMMIT\n")
                .find(|s| s.starts_with(&format!("*{t}")))
                .unwrap_or_default()
                .to_string()
        };
        let ip_rule = "0:\tfrom all lookup local\n32764:\tfrom all fwmark 0x111/0xfff lookup 100\n";
        assert_eq!(
            inspect(&section("nat"), &section("mangle"), ip_rule),
            Ok(Installed::Complete)
        );
        assert_eq!(
            inspect(
                "*nat\nCOMMIT\n",
                "*mangle\nCOMMIT\n",
                "0:\tfrom all lookup local\n"
            ),
            Ok(Installed::None)
        );
        let partial =
            inspect(&section("nat"), "*mangle\nCOMMIT\n", ip_rule).expect_err("must fail");
        assert!(partial.contains("mangle chain ISTIO_PRERT"), "{partial}");
    }
}

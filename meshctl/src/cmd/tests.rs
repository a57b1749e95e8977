use super::testing::{self, closed_addr};
use super::*;
use crate::error::{EXIT_UNREACHABLE, EXIT_USAGE};

#[test]
fn a_namespace_that_cannot_be_entered_is_a_failed_connection() {
    let e = Endpoint::in_netns("ambrs-no-such-cluster-here", "127.0.0.1:15000");
    assert_eq!(
        e.to_string(),
        "127.0.0.1:15000 in netns ambrs-no-such-cluster-here"
    );
    let err = e.get("/", Duration::from_secs(1)).unwrap_err();
    assert!(matches!(err, HttpError::Connect(_)), "{err}");
    assert!(
        err.to_string()
            .contains("entering network namespace ambrs-no-such-cluster-here"),
        "{err}"
    );
    // The same failure through fetch_ok: exit 3, naming the place as the operator reads it.
    let err = e
        .fetch_ok(
            "ztunnel admin",
            "hint",
            "/config_dump",
            Duration::from_secs(1),
        )
        .unwrap_err();
    assert_eq!(err.exit_code(), EXIT_UNREACHABLE, "{err}");
    assert!(
        err.to_string().starts_with(
            "cannot reach ztunnel admin at 127.0.0.1:15000 in netns ambrs-no-such-cluster-here"
        ),
        "{err}"
    );
}

#[test]
fn fetch_ok_names_the_component_for_refusals_and_non_2xx_answers() {
    let down = closed_addr();
    let t = |addr| Target {
        what: "istiod-lite",
        addr,
        hint: "pass --istiod",
    };
    let err = fetch_ok(t(&down), "/ready", Duration::from_secs(1)).unwrap_err();
    assert!(
        matches!(&err, Error::Unreachable { what, addr, .. } if what == "istiod-lite" && *addr == down),
        "{err}"
    );
    let busy = testing::answer_once("HTTP/1.1 503 Service Unavailable", "not ready yet");
    let err = fetch_ok(t(&busy), "/ready", Duration::from_secs(1)).unwrap_err();
    assert!(
        matches!(&err, Error::BadResponse { addr, path, why, .. }
            if *addr == busy && path == "/ready" && why == "HTTP 503: not ready yet"),
        "{err}"
    );
}

/// One command that takes `--local`: how it is run, and the flags that name its components
/// instead (each set alone must keep `MESHCTL_LOCAL` out).
struct Case {
    command: Vec<String>,
    addressed: Vec<Vec<String>>,
}

/// Every command with `--local`, aimed (through flags or the environment) at `down`, where
/// nothing listens, or at `dir`, an empty config directory.
fn cases(down: &str, dir: &str) -> Vec<Case> {
    let z = format!("{down},{down},{down}");
    let v = |args: &[&str]| args.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    vec![
        Case {
            command: v(&["ztunnel-config", "workloads"]),
            addressed: vec![v(&["--admin", down])],
        },
        Case {
            command: v(&["check", "--post"]),
            addressed: vec![v(&["--istiod", down]), v(&["--ztunnel", &z])],
        },
        Case {
            command: v(&["stat", "--interval", "10ms"]),
            addressed: vec![v(&["--scrape", down]), v(&["--ztunnel", &z])],
        },
        Case {
            command: v(&["describe", "pod", "client", "-n", "demo"]),
            addressed: vec![v(&["--ztunnel", &z]), v(&["--istiod", down])],
        },
        Case {
            command: v(&["tap", "--limit", "1"]),
            addressed: vec![v(&["--ztunnel", &z]), v(&["--waypoint", down])],
        },
        Case {
            command: v(&["waypoint", "list"]),
            addressed: vec![v(&["--config-dir", dir]), v(&["--istiod", down])],
        },
    ]
}

/// The rule of `LocalClusterArgs::resolve`, as each command applies it: `--local` wins (and
/// is refused together with an address flag); else `MESHCTL_LOCAL` unless a flag named
/// components; an empty `MESHCTL_LOCAL` is unset;
/// `--state-dir` without a cluster is a usage error.
#[test]
fn every_command_takes_local_else_meshctl_local_unless_given_addresses() {
    let down = closed_addr();
    let tmp = tempfile::tempdir().unwrap();
    let state_dir = tmp.path().join("state");
    let state_dir = state_dir.to_str().unwrap();
    let config_dir = tmp.path().to_str().unwrap();
    // What the addresses fall back to, so a run that ignores the cluster reaches nothing.
    let z = format!("{down},{down},{down}");
    let fallback = [
        ("MESHCTL_ZTUNNELS", z.as_str()),
        ("MESHCTL_ISTIOD", down.as_str()),
        ("MESHCTL_CONFIG_DIR", config_dir),
    ];
    let with_local = |local: &'static str| {
        let mut env = vec![("MESHCTL_LOCAL", local)];
        env.extend(fallback);
        env
    };
    let run = |env: &[(&str, &str)], cmd: &[String], extra: &[&str]| {
        let mut argv: Vec<&str> = cmd.iter().map(String::as_str).collect();
        argv.extend(extra);
        (argv.join(" "), testing::run(env, &argv).unwrap_err())
    };
    // Aimed at the addresses: they were tried (nothing answers: exit 3, or ✗ lines and exit 1
    // for check), and the cluster was never looked up.
    let at_addresses = |(line, err): (String, Error)| {
        assert_ne!(err.exit_code(), EXIT_USAGE, "{line}: {err}");
        assert!(!err.to_string().contains("envc"), "{line}: {err}");
    };
    // Aimed at a cluster: looked up in the state directory (there is none: exit 2).
    let at_cluster = |(line, err): (String, Error), name: &str| {
        assert_eq!(err.exit_code(), EXIT_USAGE, "{line}: {err}");
        assert!(
            err.to_string()
                .contains(&format!("cluster \"{name}\" does not exist")),
            "{line}: {err}"
        );
    };
    for case in cases(&down, config_dir) {
        let cmd = &case.command;
        at_cluster(
            run(&with_local("envc"), cmd, &["--state-dir", state_dir]),
            "envc",
        );
        at_cluster(
            run(
                &with_local("envc"),
                cmd,
                &["--local", "flagc", "--state-dir", state_dir],
            ),
            "flagc",
        );
        for flags in &case.addressed {
            let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
            at_addresses(run(&with_local("envc"), cmd, &flags));
            // --local and an address flag together: refused (by clap, or by resolve where clap
            // cannot see the pair), exit 2 either way.
            let mut argv: Vec<&str> = cmd.iter().map(String::as_str).collect();
            argv.extend(["--local", "flagc"]);
            argv.extend(&flags);
            match <crate::cli::Cli as clap::Parser>::try_parse_from(
                std::iter::once("meshctl").chain(argv.iter().copied()),
            ) {
                Err(e) => assert_eq!(
                    e.kind(),
                    clap::error::ErrorKind::ArgumentConflict,
                    "{argv:?}"
                ),
                Ok(_) => {
                    let err = testing::run(&fallback, &argv).unwrap_err();
                    assert_eq!(err.exit_code(), EXIT_USAGE, "{argv:?}: {err}");
                    assert!(
                        err.to_string().contains("one or the other"),
                        "{argv:?}: {err}"
                    );
                }
            }
        }
        at_addresses(run(&with_local(" "), cmd, &[]));
        let (line, err) = run(&fallback, cmd, &["--state-dir", state_dir]);
        assert_eq!(err.exit_code(), EXIT_USAGE, "{line}: {err}");
        assert!(err.to_string().contains("--local CLUSTER"), "{line}: {err}");
    }
}

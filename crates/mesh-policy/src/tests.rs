use super::*;

fn id(ns: &str, sa: &str) -> Identity {
    Identity::new("cluster.local", ns, sa)
}

fn conn<'a>(src: Option<&'a Identity>, port: u16) -> Connection<'a> {
    Connection {
        src_identity: src,
        src_ip: "10.0.0.1".parse().expect("ip"),
        dst_ip: "10.0.0.2".parse().expect("ip"),
        dst_port: port,
    }
}

fn policy(action: pb::Action, scope: pb::Scope, matches: Vec<pb::Match>) -> Policy {
    Policy::from_proto(pb::Authorization {
        name: "p".into(),
        namespace: "ns".into(),
        scope: scope as i32,
        action: action as i32,
        rules: vec![pb::Rule {
            clauses: vec![pb::Clause { matches }],
        }],
        ..Default::default()
    })
    .expect("valid policy")
}

fn exact(s: &str) -> pb::StringMatch {
    pb::StringMatch {
        match_type: Some(pb::string_match::MatchType::Exact(s.into())),
    }
}

#[test]
fn allow_by_principal_denies_everyone_else() {
    let p = policy(
        pb::Action::Allow,
        pb::Scope::Namespace,
        vec![pb::Match {
            principals: vec![exact("cluster.local/ns/a/sa/client")],
            ..Default::default()
        }],
    );
    let client = id("a", "client");
    let other = id("a", "other");
    assert_eq!(
        evaluate([&p], &conn(Some(&client), 80), |_, _| {}),
        Decision::Allow
    );
    assert!(matches!(
        evaluate([&p], &conn(Some(&other), 80), |_, _| {}),
        Decision::Deny(_)
    ));
    assert!(matches!(
        evaluate([&p], &conn(None, 80), |_, _| {}),
        Decision::Deny(_)
    ));
}

#[test]
fn deny_wins_and_is_named() {
    let allow_all = policy(
        pb::Action::Allow,
        pb::Scope::Global,
        vec![pb::Match::default()],
    );
    let deny_port = policy(
        pb::Action::Deny,
        pb::Scope::Global,
        vec![pb::Match {
            destination_ports: vec![9000],
            ..Default::default()
        }],
    );
    let c = id("a", "client");
    assert_eq!(
        evaluate([&allow_all, &deny_port], &conn(Some(&c), 9000), |_, _| {}),
        Decision::Deny("denied by DENY policy ns/p".into())
    );
    assert_eq!(
        evaluate([&allow_all, &deny_port], &conn(Some(&c), 80), |_, _| {}),
        Decision::Allow
    );
}

#[test]
fn strict_mtls_as_not_principals_presence() {
    // Istio's translation of PeerAuthentication STRICT: DENY when no principal is present.
    let presence = pb::StringMatch {
        match_type: Some(pb::string_match::MatchType::Presence(())),
    };
    let p = policy(
        pb::Action::Deny,
        pb::Scope::Global,
        vec![pb::Match {
            not_principals: vec![presence],
            ..Default::default()
        }],
    );
    let c = id("a", "client");
    assert!(matches!(
        evaluate([&p], &conn(None, 80), |_, _| {}),
        Decision::Deny(_)
    ));
    assert_eq!(
        evaluate([&p], &conn(Some(&c), 80), |_, _| {}),
        Decision::Allow
    );
}

#[test]
fn clauses_and_rules_combine_as_istio_does() {
    // One rule, two clauses: namespace a AND port 80.
    let p = Policy::from_proto(pb::Authorization {
        name: "p".into(),
        namespace: "ns".into(),
        rules: vec![pb::Rule {
            clauses: vec![
                pb::Clause {
                    matches: vec![pb::Match {
                        namespaces: vec![exact("a")],
                        ..Default::default()
                    }],
                },
                pb::Clause {
                    matches: vec![pb::Match {
                        destination_ports: vec![80],
                        ..Default::default()
                    }],
                },
            ],
        }],
        ..Default::default()
    })
    .expect("policy");
    assert!(p.matches(&conn(Some(&id("a", "x")), 80)));
    assert!(!p.matches(&conn(Some(&id("a", "x")), 81)));
    assert!(!p.matches(&conn(Some(&id("b", "x")), 80)));
}

#[test]
fn ip_blocks_and_service_accounts() {
    let block = pb::Address {
        address: vec![10, 0, 0, 0],
        length: 24,
    };
    let p = policy(
        pb::Action::Allow,
        pb::Scope::Global,
        vec![pb::Match {
            source_ips: vec![block],
            not_service_accounts: vec![pb::ServiceAccountMatch {
                namespace: "a".into(),
                service_account: "bad".into(),
            }],
            ..Default::default()
        }],
    );
    assert!(p.matches(&conn(Some(&id("a", "good")), 1)));
    assert!(!p.matches(&conn(Some(&id("a", "bad")), 1)));
    let good = id("a", "good");
    let mut far = conn(Some(&good), 1);
    far.src_ip = "10.0.1.1".parse().expect("ip");
    assert!(!p.matches(&far));
}

#[test]
fn allow_policy_without_rules_allows_nothing() {
    let p = Policy::from_proto(pb::Authorization {
        name: "nothing".into(),
        namespace: "ns".into(),
        ..Default::default()
    })
    .expect("policy");
    assert!(matches!(
        evaluate([&p], &conn(Some(&id("a", "x")), 80), |_, _| {}),
        Decision::Deny(_)
    ));
}

#[test]
fn dry_run_is_reported_not_enforced() {
    let mut p = policy(
        pb::Action::Deny,
        pb::Scope::Global,
        vec![pb::Match::default()],
    );
    p.dry_run = true;
    let mut seen = Vec::new();
    assert_eq!(
        evaluate([&p], &conn(None, 80), |p, allowed| seen
            .push((p.key(), allowed))),
        Decision::Allow
    );
    assert_eq!(seen, vec![("ns/p".to_string(), false)]);
}

#[test]
fn scope_selection() {
    let mut p = policy(pb::Action::Allow, pb::Scope::Namespace, vec![]);
    assert!(applies_to(&p, "ns", &[]));
    assert!(!applies_to(&p, "other", &[]));
    p.scope = Scope::WorkloadSelector;
    assert!(!applies_to(&p, "ns", &[]));
    assert!(applies_to(&p, "ns", &["ns/p".to_string()]));
    p.scope = Scope::Global;
    assert!(applies_to(&p, "anything", &[]));
}

#[test]
fn malformed_policies_are_errors() {
    let bad = pb::Authorization {
        name: "bad".into(),
        rules: vec![pb::Rule {
            clauses: vec![pb::Clause {
                matches: vec![pb::Match {
                    source_ips: vec![pb::Address {
                        address: vec![1, 2, 3],
                        length: 8,
                    }],
                    ..Default::default()
                }],
            }],
        }],
        ..Default::default()
    };
    assert!(matches!(
        Policy::from_proto(bad),
        Err(PolicyError::BadAddress { len: 3, .. })
    ));
    let bad = pb::Authorization {
        name: "bad".into(),
        rules: vec![pb::Rule {
            clauses: vec![pb::Clause {
                matches: vec![pb::Match {
                    destination_ports: vec![70000],
                    ..Default::default()
                }],
            }],
        }],
        ..Default::default()
    };
    assert!(matches!(
        Policy::from_proto(bad),
        Err(PolicyError::BadPort { port: 70000, .. })
    ));
}

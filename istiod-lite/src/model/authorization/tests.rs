use std::collections::BTreeMap;
use std::net::IpAddr;

use mesh_identity::spiffe::Identity;
use mesh_proto::security::{string_match::MatchType, Action, Address, Authorization, Match, Scope};

use super::*;
use crate::source::parse_file;

const ROOT: &str = "istio-system";

fn cfg(yaml: &str) -> ConfigSnapshot {
    let parsed = parse_file(std::path::Path::new("policy.yaml"), yaml);
    assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
    ConfigSnapshot::from_objects(&parsed.objects)
}

fn policies(yaml: &str) -> Policies {
    Policies::build(&cfg(yaml), ROOT)
}

fn get<'a>(p: &'a Policies, key: &str) -> &'a Authorization {
    p.resources
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, a)| a)
        .unwrap_or_else(|| panic!("{key} not translated: {:?}", p.resources))
}

/// A policy named `name` in `ns` with the given spec (YAML flow or block, indented by 2).
fn ap(ns: &str, name: &str, spec: &str) -> String {
    format!(
        "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n{spec}\n"
    )
}

fn exact(s: &str) -> StringMatch {
    StringMatch {
        match_type: Some(MatchType::Exact(s.into())),
    }
}

fn warnings_for<'a>(p: &'a Policies, key: &str) -> Vec<&'a PolicyWarning> {
    p.warnings.iter().filter(|w| w.policy == key).collect()
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Decides a connection with the evaluator ztunnel uses, against every policy that applies
/// to a workload in `ns` with `labels`.
fn decide(p: &Policies, ns: &str, l: &[(&str, &str)], conn: &mesh_policy::Connection<'_>) -> bool {
    let selected = p.for_workload(ns, &labels(l));
    let converted: Vec<mesh_policy::Policy> = p
        .resources
        .iter()
        .map(|(_, a)| mesh_policy::Policy::from_proto(a.clone()).unwrap())
        .collect();
    let applying = converted
        .iter()
        .filter(|pol| mesh_policy::applies_to(pol, ns, &selected));
    mesh_policy::evaluate(applying, conn, |_, _| {}) == mesh_policy::Decision::Allow
}

fn conn<'a>(id: Option<&'a Identity>, src: &str, port: u16) -> mesh_policy::Connection<'a> {
    mesh_policy::Connection {
        src_identity: id,
        src_ip: src.parse().unwrap(),
        dst_ip: "10.0.0.2".parse().unwrap(),
        dst_port: port,
    }
}

#[test]
fn scope_from_namespace_and_selector() {
    let p = policies(
        &(ap(ROOT, "mesh", "  action: DENY\n  rules: [{}]")
            + &ap("demo", "ns-wide", "  rules: [{}]")
            + &ap(
                "demo",
                "selected",
                "  selector: {matchLabels: {app: server}}\n  rules: [{}]",
            )
            + &ap(
                "demo",
                "empty-selector",
                "  selector: {matchLabels: {}}\n  rules: [{}]",
            )
            + &ap(
                ROOT,
                "root-selected",
                "  selector: {matchLabels: {app: server}}\n  rules: [{}]",
            )),
    );
    assert_eq!(get(&p, "istio-system/mesh").scope(), Scope::Global);
    assert_eq!(get(&p, "istio-system/mesh").action(), Action::Deny);
    assert_eq!(get(&p, "demo/ns-wide").scope(), Scope::Namespace);
    assert_eq!(get(&p, "demo/ns-wide").action(), Action::Allow);
    assert_eq!(get(&p, "demo/selected").scope(), Scope::WorkloadSelector);
    assert_eq!(
        get(&p, "demo/empty-selector").scope(),
        Scope::Namespace,
        "an empty selector selects the whole namespace"
    );
    let a = get(&p, "demo/selected");
    assert_eq!(
        (a.name.as_str(), a.namespace.as_str()),
        ("selected", "demo")
    );

    // Selector policies are listed by the pods they select: in their own namespace, and in
    // every namespace for the root namespace's.
    let server = labels(&[("app", "server"), ("version", "v1")]);
    assert_eq!(
        p.for_workload("demo", &server),
        vec!["demo/selected", "istio-system/root-selected"]
    );
    assert_eq!(
        p.for_workload("other", &server),
        vec!["istio-system/root-selected"]
    );
    assert!(p
        .for_workload("demo", &labels(&[("app", "client")]))
        .is_empty());
    assert!(p.warnings.is_empty(), "{:?}", p.warnings);
}

#[test]
fn target_refs_are_for_waypoints_only() {
    let p = policies(&(ap(
        "demo",
        "waypoint",
        "  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]\n  rules: [{to: [{operation: {methods: [GET]}}]}]",
    ) + &ap(
        "demo",
        "old-style",
        "  targetRef: {kind: Service, name: server}\n  rules: [{}]",
    )));
    assert!(p.resources.is_empty(), "{:?}", p.resources);
    assert!(
        p.warnings.is_empty(),
        "no HTTP warning for a waypoint policy"
    );
}

#[test]
fn source_fields_map_to_one_clause_with_a_match_per_source() {
    let p = policies(&ap(
        "demo",
        "src",
        r#"  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/a/sa/client", "*", "cluster.local/ns/b/*", "*/sa/admin"]
        notPrincipals: ["cluster.local/ns/a/sa/evil"]
        namespaces: [a]
        notNamespaces: ["kube-*"]
        ipBlocks: ["10.0.0.0/8", "10.1.2.3", "fd00::/64"]
        notIpBlocks: ["10.9.0.0/16"]
    - source:
        serviceAccounts: [client, "other/robot"]
        notServiceAccounts: [evil]"#,
    ));
    let rules = &get(&p, "demo/src").rules;
    assert_eq!(rules.len(), 1);
    assert_eq!(
        rules[0].clauses.len(),
        1,
        "all sources in one (ORed) clause"
    );
    let m = &rules[0].clauses[0].matches;
    assert_eq!(m.len(), 2);
    let presence = StringMatch {
        match_type: Some(MatchType::Presence(())),
    };
    let prefix = StringMatch {
        match_type: Some(MatchType::Prefix("cluster.local/ns/b/".into())),
    };
    let suffix = StringMatch {
        match_type: Some(MatchType::Suffix("/sa/admin".into())),
    };
    assert_eq!(
        m[0].principals,
        vec![
            exact("cluster.local/ns/a/sa/client"),
            presence,
            prefix,
            suffix
        ]
    );
    assert_eq!(
        m[0].not_principals,
        vec![exact("cluster.local/ns/a/sa/evil")]
    );
    assert_eq!(m[0].namespaces, vec![exact("a")]);
    assert_eq!(
        m[0].not_namespaces,
        vec![StringMatch {
            match_type: Some(MatchType::Prefix("kube-".into()))
        }]
    );
    let addr = |s: &str, length: u32| Address {
        address: match s.parse::<IpAddr>().unwrap() {
            IpAddr::V4(a) => a.octets().to_vec(),
            IpAddr::V6(a) => a.octets().to_vec(),
        },
        length,
    };
    assert_eq!(
        m[0].source_ips,
        vec![
            addr("10.0.0.0", 8),
            addr("10.1.2.3", 32),
            addr("fd00::", 64)
        ]
    );
    assert_eq!(m[0].not_source_ips, vec![addr("10.9.0.0", 16)]);
    let sa = |ns: &str, sa: &str| ServiceAccountMatch {
        namespace: ns.into(),
        service_account: sa.into(),
    };
    assert_eq!(
        m[1].service_accounts,
        vec![sa("demo", "client"), sa("other", "robot")],
        "a bare name is in the policy's namespace"
    );
    assert_eq!(m[1].not_service_accounts, vec![sa("demo", "evil")]);
    assert!(m[1].principals.is_empty() && m[1].source_ips.is_empty());
}

#[test]
fn operations_and_conditions_become_their_own_clauses() {
    let p = policies(&ap(
        "demo",
        "ops",
        r#"  action: DENY
  rules:
  - to:
    - operation: {ports: ["8080", "9090"], notPorts: ["9091"]}
    - operation: {ports: ["15000"]}
    when:
    - {key: source.ip, values: ["10.0.0.0/24"], notValues: ["10.0.0.9"]}
    - {key: source.namespace, values: [a], notValues: ["b*"]}
    - {key: source.principal, values: ["cluster.local/ns/a/sa/x"], notValues: ["*"]}
    - {key: destination.ip, values: ["10.0.1.1"], notValues: ["10.0.2.0/24"]}
    - {key: destination.port, values: ["80"], notValues: ["81"]}"#,
    ));
    let c = &get(&p, "demo/ops").rules[0].clauses;
    assert_eq!(c.len(), 6, "to + one clause per condition");
    assert_eq!(c[0].matches.len(), 2, "operations are ORed in one clause");
    assert_eq!(c[0].matches[0].destination_ports, vec![8080, 9090]);
    assert_eq!(c[0].matches[0].not_destination_ports, vec![9091]);
    assert_eq!(c[0].matches[1].destination_ports, vec![15000]);
    let only = |i: usize| -> &Match {
        assert_eq!(c[i].matches.len(), 1);
        &c[i].matches[0]
    };
    assert_eq!(only(1).source_ips[0].length, 24);
    assert_eq!(only(1).not_source_ips[0].address, vec![10, 0, 0, 9]);
    assert_eq!(only(2).namespaces, vec![exact("a")]);
    assert_eq!(only(2).not_namespaces.len(), 1);
    assert_eq!(only(3).principals, vec![exact("cluster.local/ns/a/sa/x")]);
    assert_eq!(only(3).not_principals.len(), 1);
    assert_eq!(only(4).destination_ips[0].address, vec![10, 0, 1, 1]);
    assert_eq!(only(4).not_destination_ips[0].length, 24);
    assert_eq!(only(5).destination_ports, vec![80]);
    assert_eq!(only(5).not_destination_ports, vec![81]);
    assert!(p.warnings.is_empty(), "{:?}", p.warnings);
}

#[test]
fn empty_rules_allow_nothing_and_an_empty_rule_matches_everything() {
    let p = policies(
        &(ap("demo", "allow-nothing", "  action: ALLOW")
            + &ap("demo", "allow-all", "  rules: [{}]")
            + &ap("demo", "deny-all", "  action: DENY\n  rules: [{}]")),
    );
    assert!(get(&p, "demo/allow-nothing").rules.is_empty());
    let all = &get(&p, "demo/allow-all").rules;
    assert_eq!(all.len(), 1);
    assert!(all[0].clauses.is_empty());
    assert_eq!(get(&p, "demo/deny-all").rules.len(), 1);
    assert!(p.warnings.is_empty(), "an explicit `{{}}` is not a warning");
}

#[test]
fn http_fields_in_allow_drop_the_rule_and_warn_per_field() {
    let p = policies(&ap(
        "demo",
        "l7-allow",
        r#"  rules:
  - from: [{source: {principals: ["cluster.local/ns/a/sa/x"], requestPrincipals: ["iss/sub"]}}]
    to: [{operation: {methods: [GET], paths: ["/api/*"], ports: ["80"]}}]
  - from: [{source: {namespaces: [a]}}]
  - when: [{key: "request.headers[x-user]", values: [bob]}]
  - from: [{source: {remoteIpBlocks: ["1.2.3.4"]}}]"#,
    ));
    let a = get(&p, "demo/l7-allow");
    assert_eq!(a.rules.len(), 1, "only the L4-only rule is kept: {a:?}");
    assert_eq!(
        a.rules[0].clauses[0].matches[0].namespaces,
        vec![exact("a")]
    );
    let w = warnings_for(&p, "demo/l7-allow");
    let fields: Vec<&str> = w.iter().map(|w| w.field.as_str()).collect();
    assert_eq!(
        fields,
        vec![
            "spec.rules[0].from[0].source.requestPrincipals",
            "spec.rules[0].to[0].operation.methods",
            "spec.rules[0].to[0].operation.paths",
            "spec.rules[2].when[0]",
            "spec.rules[3].from[0].source.remoteIpBlocks",
        ]
    );
    assert!(w[1].message.contains("`methods`"), "{}", w[1].message);
    assert!(
        w[1].message.contains("ALLOW policy is left out"),
        "{}",
        w[1].message
    );
    assert!(
        w[3].message.contains("request.headers[x-user]"),
        "{}",
        w[3].message
    );

    // Enforced: the namespace rule still allows a, nothing else is allowed (fail closed).
    let a_id = Identity::new("cluster.local", "a", "x");
    let b_id = Identity::new("cluster.local", "b", "x");
    assert!(decide(&p, "demo", &[], &conn(Some(&a_id), "10.0.0.1", 80)));
    assert!(!decide(&p, "demo", &[], &conn(Some(&b_id), "1.2.3.4", 80)));
}

#[test]
fn every_allow_rule_needing_http_leaves_a_policy_that_allows_nothing() {
    let p = policies(&ap(
        "demo",
        "get-only",
        "  selector: {matchLabels: {app: server}}\n  rules: [{to: [{operation: {methods: [GET]}}]}]",
    ));
    let a = get(&p, "demo/get-only");
    assert!(a.rules.is_empty(), "still sent: it denies everything else");
    let id = Identity::new("cluster.local", "a", "x");
    assert!(!decide(
        &p,
        "demo",
        &[("app", "server")],
        &conn(Some(&id), "10.0.0.1", 80)
    ));
    assert!(decide(
        &p,
        "demo",
        &[("app", "other")],
        &conn(Some(&id), "10.0.0.1", 80)
    ));
}

#[test]
fn http_fields_in_deny_are_dropped_so_it_denies_more() {
    let p = policies(&ap(
        "demo",
        "l7-deny",
        r#"  action: DENY
  rules:
  - from: [{source: {namespaces: [a], requestPrincipals: ["iss/sub"]}}]
    to: [{operation: {ports: ["8080"], methods: [POST]}}]
    when: [{key: "request.auth.claims[group]", values: [admin]}]"#,
    ));
    let r = &get(&p, "demo/l7-deny").rules;
    assert_eq!(r.len(), 1);
    assert_eq!(
        r[0].clauses.len(),
        2,
        "the HTTP condition's clause is left out"
    );
    assert_eq!(r[0].clauses[0].matches[0].namespaces, vec![exact("a")]);
    assert_eq!(r[0].clauses[1].matches[0].destination_ports, vec![8080]);
    let w = warnings_for(&p, "demo/l7-deny");
    assert_eq!(w.len(), 3, "{w:?}");
    assert!(
        w[0].message.contains("denies more than written"),
        "{}",
        w[0].message
    );
    assert!(w.iter().all(|w| !w.message.contains("every connection")));

    let a_id = Identity::new("cluster.local", "a", "x");
    let b_id = Identity::new("cluster.local", "b", "x");
    assert!(!decide(
        &p,
        "demo",
        &[],
        &conn(Some(&a_id), "10.0.0.1", 8080)
    ));
    assert!(decide(
        &p,
        "demo",
        &[],
        &conn(Some(&a_id), "10.0.0.1", 9090)
    ));
    assert!(decide(
        &p,
        "demo",
        &[],
        &conn(Some(&b_id), "10.0.0.1", 8080)
    ));
}

#[test]
fn a_deny_rule_with_nothing_l4_left_denies_everything_in_scope() {
    let p = policies(&ap(
        "demo",
        "deny-get",
        "  action: DENY\n  rules:\n  - to: [{operation: {methods: [GET]}}]\n  - when: [{key: connection.sni, values: [x]}]",
    ));
    let r = &get(&p, "demo/deny-get").rules;
    assert_eq!(r.len(), 2);
    assert_eq!(r[0].clauses[0].matches, vec![Match::default()]);
    assert!(r[1].clauses.is_empty());
    let w = warnings_for(&p, "demo/deny-get");
    let everything: Vec<&str> = w
        .iter()
        .filter(|w| w.message.contains("denies every connection"))
        .map(|w| w.field.as_str())
        .collect();
    assert_eq!(everything, vec!["spec.rules[0]", "spec.rules[1]"]);
    let id = Identity::new("cluster.local", "a", "x");
    assert!(!decide(&p, "demo", &[], &conn(Some(&id), "10.0.0.1", 8080)));
    assert!(decide(&p, "other", &[], &conn(Some(&id), "10.0.0.1", 8080)));
}

#[test]
fn audit_and_custom_are_not_sent_and_warn() {
    let p = policies(
        &(ap("demo", "audit", "  action: AUDIT\n  rules: [{}]")
            + &ap(
                "demo",
                "ext",
                "  action: CUSTOM\n  provider: {name: opa}\n  rules: [{}]",
            )),
    );
    assert!(p.resources.is_empty());
    let w: Vec<_> = p
        .warnings
        .iter()
        .map(|w| (w.policy.as_str(), w.field.as_str()))
        .collect();
    assert_eq!(
        w,
        vec![("demo/audit", "spec.action"), ("demo/ext", "spec.action")]
    );
    assert!(p.warnings[0].message.contains("AUDIT"));
    assert!(p.warnings[1].message.contains("CUSTOM"));
}

#[test]
fn dry_run_annotation_and_spiffe_prefix_warning() {
    let p = policies(
        "apiVersion: security.istio.io/v1beta1\nkind: AuthorizationPolicy\nmetadata:\n  name: dry\n  namespace: demo\n  annotations: {istio.io/dry-run: \"true\"}\nspec:\n  action: DENY\n  rules: [{from: [{source: {principals: [\"spiffe://cluster.local/ns/a/sa/x\"]}}]}]\n",
    );
    let a = get(&p, "demo/dry");
    assert!(a.dry_run);
    assert_eq!(p.warnings.len(), 1);
    assert_eq!(
        p.warnings[0].field,
        "spec.rules[0].from[0].source.principals[0]"
    );
    assert!(p.warnings[0].message.contains("spiffe://"));
}

#[test]
fn allow_and_deny_decisions_end_to_end() {
    let p = policies(
        &(ap(
            "demo",
            "allow-a",
            "  selector: {matchLabels: {app: server}}\n  rules:\n  - from: [{source: {principals: [\"cluster.local/ns/a/sa/client\"]}}]\n    to: [{operation: {ports: [\"8080\"]}}]",
        ) + &ap(
            ROOT,
            "deny-blocked",
            "  action: DENY\n  rules: [{from: [{source: {ipBlocks: [\"10.66.0.0/16\"]}}]}]",
        )),
    );
    let client = Identity::new("cluster.local", "a", "client");
    let other = Identity::new("cluster.local", "a", "other");
    let server = [("app", "server")];
    assert!(decide(
        &p,
        "demo",
        &server,
        &conn(Some(&client), "10.0.0.1", 8080)
    ));
    assert!(!decide(
        &p,
        "demo",
        &server,
        &conn(Some(&client), "10.0.0.1", 9090)
    ));
    assert!(!decide(
        &p,
        "demo",
        &server,
        &conn(Some(&other), "10.0.0.1", 8080)
    ));
    assert!(!decide(
        &p,
        "demo",
        &server,
        &conn(Some(&client), "10.66.1.1", 8080)
    ));
    assert!(
        !decide(&p, "x", &[], &conn(Some(&client), "10.66.1.1", 8080)),
        "GLOBAL"
    );
    assert!(decide(&p, "x", &[], &conn(Some(&other), "10.0.0.1", 9090)));
}

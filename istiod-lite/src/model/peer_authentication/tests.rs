use std::collections::BTreeMap;

use mesh_identity::spiffe::Identity;

use super::*;
use crate::model::authorization::Policies;
use crate::source::parse_file;

const ROOT: &str = "istio-system";
const STATIC: &str = "istio-system/istio_converted_static_strict";

fn policies(yaml: &str) -> Policies {
    let parsed = parse_file(std::path::Path::new("pa.yaml"), yaml);
    assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
    Policies::build(&ConfigSnapshot::from_objects(&parsed.objects), ROOT)
}

/// A PeerAuthentication; `selector` is a label value for `app` (or none), `ports` a flow map.
fn pa(ns: &str, name: &str, selector: Option<&str>, mode: &str, ports: Option<&str>) -> String {
    let mut s = format!(
        "---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  mtls: {{mode: {mode}}}\n"
    );
    if let Some(app) = selector {
        s.push_str(&format!("  selector: {{matchLabels: {{app: {app}}}}}\n"));
    }
    if let Some(p) = ports {
        s.push_str(&format!("  portLevelMtls: {p}\n"));
    }
    s
}

fn keys(p: &Policies, ns: &str, app: &str) -> Vec<String> {
    let labels: BTreeMap<String, String> = [("app".to_string(), app.to_string())].into();
    p.for_workload(ns, &labels)
}

/// Whether plaintext (no peer identity) and mTLS reach `port` of a pod, per ztunnel's evaluator.
fn accepts(p: &Policies, ns: &str, app: &str, port: u16) -> (bool, bool) {
    let selected = keys(p, ns, app);
    let pols: Vec<mesh_policy::Policy> = p
        .resources
        .iter()
        .map(|(_, a)| mesh_policy::Policy::from_proto(a.clone()).unwrap())
        .collect();
    let id = Identity::new("cluster.local", "a", "client");
    let mut out = [false; 2];
    for (i, identity) in [None, Some(&id)].into_iter().enumerate() {
        let c = mesh_policy::Connection {
            src_identity: identity,
            src_ip: "10.0.0.1".parse().unwrap(),
            dst_ip: "10.0.0.2".parse().unwrap(),
            dst_port: port,
        };
        let applying = pols
            .iter()
            .filter(|pol| mesh_policy::applies_to(pol, ns, &selected));
        out[i] = mesh_policy::evaluate(applying, &c, |_, _| {}) == mesh_policy::Decision::Allow;
    }
    assert!(out[1], "mTLS is never refused by PeerAuthentication");
    (out[0], out[1])
}

fn plaintext_ok(p: &Policies, ns: &str, app: &str, port: u16) -> bool {
    accepts(p, ns, app, port).0
}

#[test]
fn no_peer_authentication_no_policy() {
    let p = policies("kind: Namespace\nmetadata: {name: demo}\n");
    assert!(p.resources.is_empty());
    assert!(keys(&p, "demo", "server").is_empty());
}

#[test]
fn static_strict_policy_shape() {
    let p = policies(&pa(ROOT, "default", None, "STRICT", None));
    assert_eq!(p.resources.len(), 1);
    let (name, a) = &p.resources[0];
    assert_eq!(name, STATIC);
    assert_eq!(
        (a.name.as_str(), a.namespace.as_str()),
        ("istio_converted_static_strict", ROOT)
    );
    assert_eq!(a.scope(), Scope::WorkloadSelector);
    assert_eq!(a.action(), Action::Deny);
    assert_eq!(a.rules.len(), 1);
    assert_eq!(a.rules[0].clauses.len(), 1);
    assert_eq!(a.rules[0].clauses[0].matches, vec![no_identity()]);
}

#[test]
fn mesh_namespace_workload_inheritance() {
    // mesh STRICT; ns-perm PERMISSIVE; ns-unset UNSET (inherits); ns-strict has a PERMISSIVE
    // workload override; ns-perm has a STRICT workload override.
    let p = policies(
        &(pa(ROOT, "mesh", None, "STRICT", None)
            + &pa("ns-perm", "ns", None, "PERMISSIVE", None)
            + &pa("ns-perm", "locked", Some("locked"), "STRICT", None)
            + &pa("ns-unset", "ns", None, "UNSET", None)
            + &pa("ns-strict", "ns", None, "STRICT", None)
            + &pa("ns-strict", "legacy", Some("legacy"), "PERMISSIVE", None)
            + &pa("ns-strict", "inherit", Some("inherit"), "UNSET", None)
            + &pa("ns-strict", "off", Some("off"), "DISABLE", None)),
    );
    assert_eq!(
        keys(&p, "plain", "x"),
        vec![STATIC],
        "mesh STRICT reaches every namespace"
    );
    assert!(
        keys(&p, "ns-perm", "x").is_empty(),
        "namespace PERMISSIVE overrides the mesh"
    );
    assert_eq!(
        keys(&p, "ns-perm", "locked"),
        vec![STATIC],
        "workload STRICT overrides"
    );
    assert_eq!(keys(&p, "ns-unset", "x"), vec![STATIC], "UNSET inherits");
    assert_eq!(keys(&p, "ns-strict", "x"), vec![STATIC]);
    assert!(
        keys(&p, "ns-strict", "legacy").is_empty(),
        "workload PERMISSIVE overrides"
    );
    assert_eq!(keys(&p, "ns-strict", "inherit"), vec![STATIC]);
    assert!(
        keys(&p, "ns-strict", "off").is_empty(),
        "DISABLE acts as PERMISSIVE"
    );
    assert!(!plaintext_ok(&p, "plain", "x", 80));
    assert!(plaintext_ok(&p, "ns-perm", "x", 80));
    assert!(!plaintext_ok(&p, "ns-perm", "locked", 80));
    assert!(plaintext_ok(&p, "ns-strict", "legacy", 80));
    assert!(
        p.resources.iter().all(|(k, _)| k == STATIC),
        "no port-level policy, nothing converted: {:?}",
        p.resources
    );

    let p = policies(
        &(pa(ROOT, "mesh", None, "PERMISSIVE", None) + &pa("demo", "ns", None, "STRICT", None)),
    );
    assert!(keys(&p, "other", "x").is_empty());
    assert_eq!(
        keys(&p, "demo", "x"),
        vec![STATIC],
        "namespace STRICT under mesh PERMISSIVE"
    );
}

#[test]
fn permissive_port_on_a_strict_workload() {
    let p = policies(&pa(
        "demo",
        "server",
        Some("server"),
        "STRICT",
        Some("{9090: {mode: PERMISSIVE}, 9091: {mode: DISABLE}, 9092: {mode: UNSET}}"),
    ));
    let key = "demo/converted_peer_authentication_server";
    assert_eq!(keys(&p, "demo", "server"), vec![key]);
    let (_, a) = p.resources.iter().find(|(k, _)| k == key).unwrap();
    assert_eq!(
        (a.name.as_str(), a.namespace.as_str()),
        ("converted_peer_authentication_server", "demo")
    );
    assert_eq!(a.scope(), Scope::WorkloadSelector);
    assert_eq!(a.action(), Action::Deny);
    let c = &a.rules[0].clauses;
    assert_eq!(c.len(), 2);
    assert_eq!(c[0].matches, vec![no_identity()]);
    assert_eq!(c[1].matches[0].not_destination_ports, vec![9090, 9091]);
    assert!(!plaintext_ok(&p, "demo", "server", 8080));
    assert!(
        !plaintext_ok(&p, "demo", "server", 9092),
        "UNSET port follows the workload"
    );
    assert!(plaintext_ok(&p, "demo", "server", 9090));
    assert!(plaintext_ok(&p, "demo", "server", 9091));
}

#[test]
fn strict_port_on_a_permissive_workload() {
    let p = policies(&pa(
        "demo",
        "server",
        Some("server"),
        "PERMISSIVE",
        Some("{8080: {mode: STRICT}, \"8443\": {mode: STRICT}}"),
    ));
    let key = "demo/converted_peer_authentication_server";
    assert_eq!(keys(&p, "demo", "server"), vec![key]);
    let (_, a) = p.resources.iter().find(|(k, _)| k == key).unwrap();
    assert_eq!(a.rules.len(), 1);
    assert_eq!(a.rules[0].clauses.len(), 1);
    let m = &a.rules[0].clauses[0].matches[0];
    assert_eq!(m.destination_ports, vec![8080, 8443]);
    assert_eq!(m.not_principals, no_identity().not_principals);
    assert!(!plaintext_ok(&p, "demo", "server", 8080));
    assert!(!plaintext_ok(&p, "demo", "server", 8443));
    assert!(plaintext_ok(&p, "demo", "server", 9090));
    assert!(
        plaintext_ok(&p, "demo", "other", 8080),
        "other pods are not selected"
    );
}

#[test]
fn unset_workload_ports_follow_the_inherited_mode() {
    // Under a STRICT namespace, an UNSET workload with a PERMISSIVE port is STRICT elsewhere.
    let p = policies(
        &(pa("demo", "ns", None, "STRICT", None)
            + &pa(
                "demo",
                "server",
                Some("server"),
                "UNSET",
                Some("{9090: {mode: PERMISSIVE}}"),
            )),
    );
    assert_eq!(
        keys(&p, "demo", "server"),
        vec!["demo/converted_peer_authentication_server"]
    );
    assert!(!plaintext_ok(&p, "demo", "server", 8080));
    assert!(plaintext_ok(&p, "demo", "server", 9090));
    assert_eq!(keys(&p, "demo", "client"), vec![STATIC]);

    // Under a PERMISSIVE mesh, an UNSET workload with a STRICT port is PERMISSIVE elsewhere.
    let p = policies(
        &(pa(ROOT, "mesh", None, "PERMISSIVE", None)
            + &pa(
                "demo",
                "server",
                Some("server"),
                "UNSET",
                Some("{8080: {mode: STRICT}}"),
            )),
    );
    assert!(!plaintext_ok(&p, "demo", "server", 8080));
    assert!(plaintext_ok(&p, "demo", "server", 9090));

    // Port modes equal to the workload's make no exception: the static policy does it all.
    let p = policies(&pa(
        "demo",
        "server",
        Some("server"),
        "STRICT",
        Some("{8080: {mode: STRICT}}"),
    ));
    assert_eq!(keys(&p, "demo", "server"), vec![STATIC]);
    assert_eq!(p.resources.len(), 1);
}

#[test]
fn oldest_wins_and_ignored_policies_warn() {
    let older = "---\nkind: PeerAuthentication\nmetadata: {name: zzz, namespace: demo, creationTimestamp: \"2024-01-01T00:00:00Z\"}\nspec: {mtls: {mode: STRICT}}\n";
    let newer = "---\nkind: PeerAuthentication\nmetadata: {name: aaa, namespace: demo, creationTimestamp: \"2025-01-01T00:00:00Z\"}\nspec: {mtls: {mode: PERMISSIVE}}\n";
    let p = policies(&(older.to_string() + newer + &pa(ROOT, "sel", Some("x"), "STRICT", None)));
    assert_eq!(
        keys(&p, "demo", "x"),
        vec![STATIC],
        "the older STRICT policy wins"
    );
    let w: Vec<(&str, &str)> = p
        .warnings
        .iter()
        .map(|w| (w.policy.as_str(), w.field.as_str()))
        .collect();
    assert_eq!(
        w,
        vec![("istio-system/sel", "spec.selector"), ("demo/aaa", "spec")]
    );
    assert!(
        p.warnings[1].message.contains("demo/zzz is older"),
        "{}",
        p.warnings[1].message
    );
    assert!(
        keys(&p, "other", "x").is_empty(),
        "the root selector policy applies to nothing"
    );
}

#[test]
fn authorization_and_peer_authentication_keys_together() {
    let p = policies(
        &(pa(ROOT, "mesh", None, "STRICT", None)
            + "---\nkind: AuthorizationPolicy\nmetadata: {name: allow, namespace: demo}\nspec:\n  selector: {matchLabels: {app: server}}\n  rules: [{}]\n"),
    );
    assert_eq!(keys(&p, "demo", "server"), vec!["demo/allow", STATIC]);
}

use crate::source::parse::parse_file;
use crate::source::Object;

use super::*;

/// Parses one document; returns the object or (field, message) of its error.
fn one(text: &str) -> Result<Object, (String, String)> {
    let mut p = parse_file(std::path::Path::new("sec.yaml"), text);
    if let Some(e) = p.errors.pop() {
        return Err((e.field, e.message));
    }
    Ok(p.objects.pop().expect("an object"))
}

fn ap(spec: &str) -> String {
    format!("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: p, namespace: demo}}\nspec:\n{spec}\n")
}

fn pa(spec: &str) -> String {
    format!("apiVersion: security.istio.io/v1beta1\nkind: PeerAuthentication\nmetadata: {{name: p, namespace: demo}}\nspec:\n{spec}\n")
}

/// The field an invalid AuthorizationPolicy spec is reported on, with the message.
fn ap_err(spec: &str) -> (String, String) {
    one(&ap(spec)).expect_err("should be invalid")
}

#[test]
fn full_authorization_policy_parses() {
    let text = ap(r#"  selector:
    matchLabels: {app: server}
  action: DENY
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/a/sa/x"]
        notPrincipals: ["*"]
        requestPrincipals: ["iss/sub"]
        notRequestPrincipals: ["iss/bad"]
        namespaces: [a]
        notNamespaces: [b]
        ipBlocks: ["10.0.0.0/8"]
        notIpBlocks: ["10.1.0.0/16"]
        remoteIpBlocks: ["1.2.3.4"]
        notRemoteIpBlocks: ["1.2.3.5"]
    - source:
        serviceAccounts: [client]
        notServiceAccounts: ["other/robot"]
    to:
    - operation:
        ports: ["8080"]
        notPorts: ["9090"]
        hosts: [a.example]
        notHosts: [b.example]
        methods: [GET]
        notMethods: [POST]
        paths: ["/x"]
        notPaths: ["/y"]
    when:
    - key: source.ip
      values: ["10.0.0.1"]
      notValues: ["10.0.0.2"]
    - {key: "request.headers[x-id]", values: [a]}"#);
    let Object::AuthorizationPolicy(p) = one(&text).unwrap() else {
        panic!("not an AuthorizationPolicy")
    };
    assert_eq!(p.spec.action, AuthorizationAction::Deny);
    let rule = &p.spec.rules[0];
    let from = rule.from.as_ref().unwrap();
    assert_eq!(from[0].source.not_remote_ip_blocks, vec!["1.2.3.5"]);
    assert_eq!(from[1].source.service_accounts, vec!["client"]);
    assert_eq!(rule.to.as_ref().unwrap()[0].operation.not_paths, vec!["/y"]);
    assert_eq!(rule.when[1].key, "request.headers[x-id]");
    assert_eq!(
        p.spec.selector.as_ref().unwrap().match_labels["app"],
        "server"
    );
}

#[test]
fn authorization_policy_errors_name_the_field() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "  action: REJECT",
            "spec.action",
            "unknown variant `REJECT`",
        ),
        (
            "  rules: [{from: [{source: {principal: [x]}}]}]",
            "spec.rules[0].from[0].source.principal",
            "unknown field `principal`",
        ),
        (
            "  rules: [{from: [{source: {ipBlocks: [\"10.0.0.300/8\"]}}]}]",
            "spec.rules[0].from[0].source.ipBlocks[0]",
            "not an IP address or CIDR",
        ),
        (
            "  rules: [{from: [{source: {notIpBlocks: [\"10.0.0.0/33\"]}}]}]",
            "spec.rules[0].from[0].source.notIpBlocks[0]",
            "CIDR",
        ),
        (
            "  rules: [{from: [{source: {remoteIpBlocks: [nope]}}]}]",
            "spec.rules[0].from[0].source.remoteIpBlocks[0]",
            "CIDR",
        ),
        (
            "  rules: [{to: [{operation: {ports: [http]}}]}]",
            "spec.rules[0].to[0].operation.ports[0]",
            "port names are not accepted",
        ),
        (
            "  rules: [{to: [{operation: {notPorts: [\"70000\"]}}]}]",
            "spec.rules[0].to[0].operation.notPorts[0]",
            "1-65535",
        ),
        (
            "  rules: [{to: [{operation: {ports: [8080]}}]}]",
            "spec.rules[0].to[0].operation.ports[0]",
            "expected a string",
        ),
        (
            "  rules: [{from: []}]",
            "spec.rules[0].from",
            "must not be empty",
        ),
        (
            "  rules: [{to: []}]",
            "spec.rules[0].to",
            "must not be empty",
        ),
        (
            "  rules: [{from: [{}]}]",
            "spec.rules[0].from[0].source",
            "required field is missing",
        ),
        (
            "  rules: [{from: [{source: {}}]}]",
            "spec.rules[0].from[0].source",
            "must not be empty",
        ),
        (
            "  rules: [{to: [{operation: {}}]}]",
            "spec.rules[0].to[0].operation",
            "must not be empty",
        ),
        (
            "  rules: [{from: [{source: {principals: [\"\"]}}]}]",
            "spec.rules[0].from[0].source.principals[0]",
            "empty value",
        ),
        (
            "  rules: [{from: [{source: {principals: [a], serviceAccounts: [b]}}]}]",
            "spec.rules[0].from[0].source.serviceAccounts",
            "cannot be combined",
        ),
        (
            "  rules: [{from: [{source: {serviceAccounts: [\"a/b/c\"]}}]}]",
            "spec.rules[0].from[0].source.serviceAccounts[0]",
            "not a service account",
        ),
        (
            "  rules: [{when: [{key: source.color, values: [red]}]}]",
            "spec.rules[0].when[0].key",
            "unknown attribute",
        ),
        (
            "  rules: [{when: [{key: source.ip}]}]",
            "spec.rules[0].when[0]",
            "at least one of values or notValues",
        ),
        (
            "  rules: [{when: [{values: [a]}]}]",
            "spec.rules[0].when[0].key",
            "required field is missing",
        ),
        (
            "  rules: [{when: [{key: destination.port, values: [eighty]}]}]",
            "spec.rules[0].when[0].values[0]",
            "not a port",
        ),
        (
            "  rules: [{when: [{key: destination.ip, notValues: [x]}]}]",
            "spec.rules[0].when[0].notValues[0]",
            "CIDR",
        ),
        ("  action: DENY", "spec.rules", "never matches"),
        (
            "  action: CUSTOM\n  rules: [{}]",
            "spec.provider.name",
            "extension provider",
        ),
        (
            "  provider: {name: opa}\n  rules: [{}]",
            "spec.provider",
            "only a CUSTOM policy",
        ),
        (
            "  selector: {matchLabels: {app: a}}\n  targetRefs: [{kind: Gateway, name: w}]",
            "spec.targetRefs",
            "mutually exclusive",
        ),
        (
            "  targetRefs: [{kind: Gateway}]",
            "spec.targetRefs[0].name",
            "required field is missing",
        ),
        (
            "  selector: {app: a}",
            "spec.selector.app",
            "unknown field `app`",
        ),
    ];
    for (spec, field, msg) in cases {
        let (f, m) = ap_err(spec);
        assert_eq!(&f, field, "spec {spec:?}: {m}");
        assert!(
            m.contains(msg),
            "spec {spec:?}: message {m:?} lacks {msg:?}"
        );
    }
}

#[test]
fn error_display_names_file_policy_and_field() {
    let p = parse_file(
        std::path::Path::new("cfg/policy.yaml"),
        &ap("  rules: [{to: [{operation: {ports: [http]}}]}]"),
    );
    let msg = p.errors[0].to_string();
    assert!(
        msg.starts_with("cfg/policy.yaml: AuthorizationPolicy demo/p (document 1, line 1): field spec.rules[0].to[0].operation.ports[0]:"),
        "{msg}"
    );
    assert_eq!(p.errors[0].kind_label(), "AuthorizationPolicy");
}

#[test]
fn api_versions() {
    for v in ["security.istio.io/v1", "security.istio.io/v1beta1"] {
        let text = format!("apiVersion: {v}\nkind: AuthorizationPolicy\nmetadata: {{name: p}}\n");
        assert!(
            matches!(one(&text), Ok(Object::AuthorizationPolicy(_))),
            "{v}"
        );
    }
    let (f, m) = one(
        "apiVersion: security.istio.io/v1alpha1\nkind: PeerAuthentication\nmetadata: {name: p}\n",
    )
    .unwrap_err();
    assert_eq!(f, "apiVersion");
    assert!(m.contains("security.istio.io/v1"), "{m}");
    // Linkerd's AuthorizationPolicy is someone else's kind: ignored like any unknown kind.
    let p = parse_file(
        std::path::Path::new("l.yaml"),
        "apiVersion: policy.linkerd.io/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {name: p}\nspec: {targetRef: {kind: Server, name: s}, requiredAuthenticationRefs: []}\n",
    );
    assert!(
        p.objects.is_empty() && p.errors.is_empty(),
        "{:?}",
        p.errors
    );
    // Without apiVersion (hand-written local config) the kind is ours; namespace defaults.
    let Object::PeerAuthentication(pa) =
        one("kind: PeerAuthentication\nmetadata: {name: p}\n").unwrap()
    else {
        panic!("not a PeerAuthentication")
    };
    assert_eq!(pa.metadata.ns(), "default");
    assert_eq!(pa.spec.mode(), MtlsMode::Unset);
}

#[test]
fn peer_authentication_parses_modes_and_port_keys() {
    let Object::PeerAuthentication(p) = one(&pa(
        "  selector: {matchLabels: {app: server}}\n  mtls: {mode: STRICT}\n  portLevelMtls:\n    9090: {mode: PERMISSIVE}\n    \"9091\": {mode: DISABLE}\n    9092: {}",
    ))
    .unwrap() else {
        panic!("not a PeerAuthentication")
    };
    assert_eq!(p.spec.mode(), MtlsMode::Strict);
    let ports = p.spec.port_level_mtls.as_ref().unwrap();
    let modes: Vec<(u64, MtlsMode)> = ports.iter().map(|(k, v)| (k.0, v.mode)).collect();
    assert_eq!(
        modes,
        vec![
            (9090, MtlsMode::Permissive),
            (9091, MtlsMode::Disable),
            (9092, MtlsMode::Unset)
        ]
    );
}

#[test]
fn peer_authentication_errors_name_the_field() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "  mtls: {mode: ON}",
            "spec.mtls.mode",
            "unknown variant `ON`",
        ),
        (
            "  mtls: {mode: STRICT, extra: 1}",
            "spec.mtls.extra",
            "unknown field `extra`",
        ),
        (
            "  portLevelMtls: {8080: {mode: STRICT}}",
            "spec.portLevelMtls",
            "workload policy",
        ),
        (
            "  selector: {matchLabels: {app: a}}\n  portLevelMtls: {}",
            "spec.portLevelMtls",
            "at least one port",
        ),
        (
            "  selector: {matchLabels: {app: a}}\n  portLevelMtls: {70000: {mode: STRICT}}",
            "spec.portLevelMtls.70000",
            "1-65535",
        ),
        (
            "  selector: {matchLabels: {app: a}}\n  portLevelMtls: {0: {mode: STRICT}}",
            "spec.portLevelMtls.0",
            "1-65535",
        ),
        (
            "  selector: {matchLabels: {app: a}}\n  portLevelMtls: {http: {mode: STRICT}}",
            "spec.portLevelMtls.http",
            "not a number",
        ),
        (
            "  selector: {matchLabels: {\"\": a}}",
            "spec.selector.matchLabels",
            "empty label key",
        ),
    ];
    for (spec, field, msg) in cases {
        let (f, m) = one(&pa(spec)).expect_err("should be invalid");
        assert_eq!(&f, field, "spec {spec:?}: {m}");
        assert!(
            m.contains(msg),
            "spec {spec:?}: message {m:?} lacks {msg:?}"
        );
    }
}

#[test]
fn names_must_be_kubernetes_names() {
    for name in ["istio_converted_static_strict", "Upper", "-x", "x-"] {
        let text = format!("kind: PeerAuthentication\nmetadata: {{name: \"{name}\"}}\n");
        let (f, m) = one(&text).expect_err(name);
        assert_eq!(f, "metadata.name", "{m}");
        let text = format!("kind: AuthorizationPolicy\nmetadata: {{name: \"{name}\"}}\n");
        assert_eq!(one(&text).expect_err(name).0, "metadata.name");
    }
    assert!(one("kind: AuthorizationPolicy\nmetadata: {name: a.b-1}\n").is_ok());
}

#[test]
fn cidr_port_and_service_account_parsing() {
    assert_eq!(
        parse_cidr("10.0.0.0/8"),
        Some(("10.0.0.0".parse().unwrap(), 8))
    );
    assert_eq!(
        parse_cidr(" 10.1.2.3 "),
        Some(("10.1.2.3".parse().unwrap(), 32))
    );
    assert_eq!(parse_cidr("::1"), Some(("::1".parse().unwrap(), 128)));
    assert_eq!(parse_cidr("fd00::/129"), None);
    assert_eq!(parse_cidr("10.0.0.0/x"), None);
    assert_eq!(parse_port("443"), Some(443));
    assert_eq!(parse_port("0"), None);
    assert_eq!(parse_port("-1"), None);
    assert_eq!(parse_service_account("sa", "ns"), Some(("ns", "sa")));
    assert_eq!(
        parse_service_account("other/sa", "ns"),
        Some(("other", "sa"))
    );
    assert_eq!(parse_service_account("/sa", "ns"), None);
    assert_eq!(parse_service_account("", "ns"), None);
}

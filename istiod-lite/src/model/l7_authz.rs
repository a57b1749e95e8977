//! L7 security for waypoints: AuthorizationPolicies with `targetRefs` and RequestAuthentications
//! → `ambient.route.v1.WaypointSecurity`, carried in each Service's `ServiceRoutes.security`.
//!
//! - A policy applies to a Service behind a waypoint when it targets that waypoint Gateway
//!   (`kind: Gateway`, same namespace: every Service of the waypoint), the Service itself
//!   (`kind: Service`, the Service's namespace), or the `istio-waypoint` GatewayClass from the
//!   root namespace (every waypoint).
//! - A RequestAuthentication applies the same way, or through a `selector` matching the
//!   waypoint's pods (Istio's older way of attaching to a waypoint).
//! - Policies with a `selector` (or none) stay ztunnel's ([`super::authorization`]).
//! - CUSTOM (external authorization) is not supported: the policy is sent as a DENY of its
//!   rules (fail closed, as Istio does when the provider is unusable) and reported as a
//!   [`PolicyWarning`]. A dry-run policy (`istio.io/dry-run: "true"`) is sent as AUDIT.
//! - Values are copied as written; the waypoint compiles Istio's match forms. `serviceAccounts`
//!   become principals `*/ns/<ns>/sa/<sa>`.

use std::collections::BTreeMap;

use mesh_proto::route::{
    l7_policy, JwtHeader as PbJwtHeader, JwtRule as PbJwtRule, L7Condition, L7Operation, L7Policy,
    L7Rule, L7Source, WaypointSecurity,
};

use super::authorization::{policy_key, PolicyWarning, DRY_RUN_ANNOTATION};
use crate::source::gateway::{GATEWAY_GROUP, GATEWAY_NAME_LABEL, WAYPOINT_CLASS};
use crate::source::security::{
    parse_port, parse_service_account, AuthorizationAction, AuthorizationPolicy,
    PolicyTargetReference, RequestAuthentication, Rule, WorkloadSelector,
};
use crate::source::{ConfigSnapshot, ObjectKey};

/// What a policy is attached to.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    /// Every Service of waypoint `namespace/name`.
    Gateway(ObjectKey),
    /// Every waypoint (GatewayClass `istio-waypoint` from the root namespace).
    AllWaypoints,
    /// Service `namespace/name` through its waypoint.
    Service(ObjectKey),
    /// Waypoint pods matched by labels in a namespace.
    Selector(String, BTreeMap<String, String>),
}

/// Every waypoint-side policy of the config, translated once per model build.
#[derive(Debug, Default)]
pub struct L7Security {
    policies: Vec<(Vec<Target>, L7Policy)>,
    jwt: Vec<(Vec<Target>, Vec<PbJwtRule>)>,
    /// Problems to report.
    pub warnings: Vec<PolicyWarning>,
}

fn targets(
    refs: impl Iterator<Item = PolicyTargetReference>,
    ns: &str,
    root_namespace: &str,
) -> Vec<Target> {
    refs.filter_map(|t| {
        let tns = t.namespace.clone().unwrap_or_else(|| ns.to_string());
        let group = t.group.as_deref().unwrap_or("");
        match t.kind.as_str() {
            "Gateway" if group == GATEWAY_GROUP || group.is_empty() => {
                Some(Target::Gateway(ObjectKey::new(tns, t.name)))
            }
            "GatewayClass" if t.name == WAYPOINT_CLASS && ns == root_namespace => {
                Some(Target::AllWaypoints)
            }
            "Service" if group.is_empty() || group == "core" => {
                Some(Target::Service(ObjectKey::new(tns, t.name)))
            }
            _ => None,
        }
    })
    .collect()
}

fn selector_target(ns: &str, sel: &Option<WorkloadSelector>) -> Vec<Target> {
    match sel {
        Some(s) if !s.match_labels.is_empty() => {
            vec![Target::Selector(ns.to_string(), s.match_labels.clone())]
        }
        _ => Vec::new(),
    }
}

impl L7Security {
    /// Translates every AuthorizationPolicy with targetRefs and every RequestAuthentication.
    pub fn build(cfg: &ConfigSnapshot, root_namespace: &str) -> Self {
        let mut out = L7Security::default();
        for ap in cfg.authorization_policies.values() {
            let spec = &ap.spec;
            if spec.target_ref.is_none() && spec.target_refs.is_empty() {
                continue;
            }
            let ns = ap.metadata.ns();
            let t = targets(
                spec.target_ref.iter().chain(&spec.target_refs).cloned(),
                ns,
                root_namespace,
            );
            if t.is_empty() {
                out.warnings.push(warning(
                    ap,
                    "spec.targetRefs",
                    "targets no Gateway, Service or the istio-waypoint GatewayClass; not applied",
                ));
                continue;
            }
            let policy = translate_policy(ap, &mut out.warnings);
            out.policies.push((t, policy));
        }
        for ra in cfg.request_authentications.values() {
            let spec = &ra.spec;
            let ns = ra.metadata.ns();
            let mut t = targets(
                spec.target_ref.iter().chain(&spec.target_refs).cloned(),
                ns,
                root_namespace,
            );
            t.extend(selector_target(ns, &spec.selector));
            if t.is_empty() {
                // Namespace-wide RequestAuthentications are for sidecars; waypoints need a target.
                continue;
            }
            out.jwt.push((t, translate_jwt(ra)));
        }
        out
    }

    /// The security of Service `service` (namespace/name) at waypoint `waypoint`; `None` when
    /// nothing applies.
    pub fn for_service(
        &self,
        cfg: &ConfigSnapshot,
        waypoint: &ObjectKey,
        service: &ObjectKey,
    ) -> Option<WaypointSecurity> {
        let applies = |targets: &[Target]| {
            targets.iter().any(|t| match t {
                Target::Gateway(k) => k == waypoint,
                Target::AllWaypoints => true,
                Target::Service(k) => k == service,
                Target::Selector(ns, labels) => {
                    ns == &waypoint.namespace
                        && cfg.pods.values().any(|p| {
                            p.metadata.ns() == waypoint.namespace
                                && p.metadata.labels.get(GATEWAY_NAME_LABEL) == Some(&waypoint.name)
                                && labels
                                    .iter()
                                    .all(|(k, v)| p.metadata.labels.get(k) == Some(v))
                        })
                }
            })
        };
        let policies: Vec<L7Policy> = self
            .policies
            .iter()
            .filter(|(t, _)| applies(t))
            .map(|(_, p)| p.clone())
            .collect();
        let jwt_rules: Vec<PbJwtRule> = self
            .jwt
            .iter()
            .filter(|(t, _)| applies(t))
            .flat_map(|(_, r)| r.iter().cloned())
            .collect();
        if policies.is_empty() && jwt_rules.is_empty() {
            return None;
        }
        Some(WaypointSecurity {
            policies,
            jwt_rules,
        })
    }
}

fn warning(ap: &AuthorizationPolicy, field: &str, message: &str) -> PolicyWarning {
    PolicyWarning {
        kind: "AuthorizationPolicy",
        policy: policy_key(ap.metadata.ns(), &ap.metadata.name),
        field: field.to_string(),
        message: message.to_string(),
    }
}

fn translate_policy(ap: &AuthorizationPolicy, warnings: &mut Vec<PolicyWarning>) -> L7Policy {
    let ns = ap.metadata.ns();
    let spec = &ap.spec;
    let dry_run = ap
        .metadata
        .annotations
        .get(DRY_RUN_ANNOTATION)
        .is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let action = match spec.action {
        _ if dry_run => l7_policy::Action::Audit,
        AuthorizationAction::Allow => l7_policy::Action::Allow,
        AuthorizationAction::Deny => l7_policy::Action::Deny,
        AuthorizationAction::Audit => l7_policy::Action::Audit,
        AuthorizationAction::Custom => {
            warnings.push(warning(
                ap,
                "spec.action",
                "CUSTOM (external authorization) is not supported by ambient-rs's waypoint: \
                 requests matching its rules are denied (fail closed)",
            ));
            l7_policy::Action::Deny
        }
    };
    let mut p = L7Policy {
        name: policy_key(ns, &ap.metadata.name),
        rules: spec.rules.iter().map(|r| translate_rule(r, ns)).collect(),
        ..Default::default()
    };
    p.set_action(action);
    p
}

fn service_account_principals(v: &[String], ns: &str) -> Vec<String> {
    v.iter()
        .filter_map(|s| parse_service_account(s, ns))
        .map(|(n, sa)| format!("*/ns/{n}/sa/{sa}"))
        .collect()
}

fn port_list(v: &[String]) -> Vec<u32> {
    v.iter()
        .filter_map(|p| parse_port(p))
        .map(u32::from)
        .collect()
}

fn translate_rule(r: &Rule, ns: &str) -> L7Rule {
    L7Rule {
        from: r
            .from
            .iter()
            .flatten()
            .map(|f| {
                let s = &f.source;
                let mut principals = s.principals.clone();
                principals.extend(service_account_principals(&s.service_accounts, ns));
                let mut not_principals = s.not_principals.clone();
                not_principals.extend(service_account_principals(&s.not_service_accounts, ns));
                L7Source {
                    principals,
                    not_principals,
                    request_principals: s.request_principals.clone(),
                    not_request_principals: s.not_request_principals.clone(),
                    namespaces: s.namespaces.clone(),
                    not_namespaces: s.not_namespaces.clone(),
                    ip_blocks: s.ip_blocks.clone(),
                    not_ip_blocks: s.not_ip_blocks.clone(),
                    remote_ip_blocks: s.remote_ip_blocks.clone(),
                    not_remote_ip_blocks: s.not_remote_ip_blocks.clone(),
                }
            })
            .collect(),
        to: r
            .to
            .iter()
            .flatten()
            .map(|t| {
                let o = &t.operation;
                L7Operation {
                    hosts: o.hosts.clone(),
                    not_hosts: o.not_hosts.clone(),
                    ports: port_list(&o.ports),
                    not_ports: port_list(&o.not_ports),
                    methods: o.methods.clone(),
                    not_methods: o.not_methods.clone(),
                    paths: o.paths.clone(),
                    not_paths: o.not_paths.clone(),
                }
            })
            .collect(),
        when: r
            .when
            .iter()
            .map(|c| L7Condition {
                key: c.key.trim().to_string(),
                values: c.values.clone(),
                not_values: c.not_values.clone(),
            })
            .collect(),
    }
}

fn translate_jwt(ra: &RequestAuthentication) -> Vec<PbJwtRule> {
    let key = policy_key(ra.metadata.ns(), &ra.metadata.name);
    ra.spec
        .jwt_rules
        .iter()
        .enumerate()
        .map(|(i, r)| PbJwtRule {
            name: format!("{key}[{i}]"),
            issuer: r.issuer.clone(),
            audiences: r.audiences.clone(),
            jwks: r.jwks.clone().unwrap_or_default(),
            jwks_uri: r.jwks_uri.clone().unwrap_or_default(),
            from_headers: r
                .from_headers
                .iter()
                .map(|h| PbJwtHeader {
                    name: h.name.clone(),
                    prefix: h.prefix.clone(),
                })
                .collect(),
            from_params: r.from_params.clone(),
            forward_original_token: r.forward_original_token,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::parse_file;

    fn cfg(yaml: &str) -> ConfigSnapshot {
        let parsed = parse_file(std::path::Path::new("t.yaml"), yaml);
        assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
        ConfigSnapshot::from_objects(&parsed.objects)
    }

    const BASE: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: waypoint-0, namespace: app, labels: {gateway.networking.k8s.io/gateway-name: waypoint}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: gw, namespace: app}
spec:
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]
  action: DENY
  rules: [{to: [{operation: {paths: ["/admin*"], ports: ["80"]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: svc, namespace: app}
spec:
  targetRefs: [{kind: Service, group: "", name: echo}]
  rules:
  - from: [{source: {serviceAccounts: [client]}}, {source: {notNamespaces: [evil]}}]
    when: [{key: "request.headers[x-a]", values: ["b"]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ext, namespace: app}
spec:
  targetRefs: [{kind: Service, name: other}]
  action: CUSTOM
  provider: {name: opa}
  rules: [{}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ztunnel-only, namespace: app}
spec:
  selector: {matchLabels: {app: echo}}
  rules: [{}]
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt, namespace: app}
spec:
  selector: {matchLabels: {gateway.networking.k8s.io/gateway-name: waypoint}}
  jwtRules:
  - issuer: https://issuer.example
    jwksUri: http://127.0.0.1:9/jwks.json
    fromHeaders: [{name: x-jwt, prefix: "Token "}]
    forwardOriginalToken: true
"#;

    #[test]
    fn policies_attach_by_gateway_service_and_selector() {
        let c = cfg(BASE);
        let l7 = L7Security::build(&c, "istio-system");
        let wp = ObjectKey::new("app", "waypoint");
        let echo = l7
            .for_service(&c, &wp, &ObjectKey::new("app", "echo"))
            .unwrap();
        let names: Vec<&str> = echo.policies.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["app/gw", "app/svc"]);
        assert_eq!(echo.policies[0].action(), l7_policy::Action::Deny);
        assert_eq!(echo.policies[0].rules[0].to[0].ports, [80]);
        let src = &echo.policies[1].rules[0].from[0];
        assert_eq!(src.principals, ["*/ns/app/sa/client"]);
        assert_eq!(echo.policies[1].rules[0].from[1].not_namespaces, ["evil"]);
        assert_eq!(
            echo.policies[1].rules[0].when[0].key,
            "request.headers[x-a]"
        );
        assert_eq!(echo.jwt_rules.len(), 1);
        let j = &echo.jwt_rules[0];
        assert_eq!(j.name, "app/jwt[0]");
        assert_eq!(j.from_headers[0].prefix, "Token ");
        assert!(j.forward_original_token);

        // CUSTOM fails closed as a DENY, with a warning.
        let other = l7
            .for_service(&c, &wp, &ObjectKey::new("app", "other"))
            .unwrap();
        let ext = other.policies.iter().find(|p| p.name == "app/ext").unwrap();
        assert_eq!(ext.action(), l7_policy::Action::Deny);
        assert!(l7.warnings.iter().any(|w| w.policy == "app/ext"));
        // Another waypoint gets none of the Gateway-targeted policies nor the selected JWT.
        let none = l7.for_service(
            &c,
            &ObjectKey::new("app", "other-wp"),
            &ObjectKey::new("app", "x"),
        );
        assert!(none.is_none());
    }

    #[test]
    fn request_authentication_validation() {
        let bad = |spec: &str| {
            let y = format!("apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {{name: r, namespace: app}}\nspec: {spec}\n");
            let p = parse_file(std::path::Path::new("t.yaml"), &y);
            p.errors
                .first()
                .map(|e| e.field.clone())
                .unwrap_or_default()
        };
        assert_eq!(bad("{jwtRules: [{issuer: a}]}"), "spec.jwtRules[0].jwksUri");
        assert_eq!(
            bad("{jwtRules: [{issuer: a, jwks: '{\"x\": 1}'}]}"),
            "spec.jwtRules[0].jwks"
        );
        assert_eq!(
            bad("{jwtRules: [{issuer: a, jwksUri: 'ftp://x'}]}"),
            "spec.jwtRules[0].jwksUri"
        );
        assert_eq!(
            bad("{jwtRules: [{issuer: a, jwksUri: 'http://x/j', fromCookies: [c]}]}"),
            "spec.jwtRules[0].fromCookies"
        );
        assert_eq!(bad("{jwtRules: [{issuer: a, jwksUri: 'http://x/j'}]}"), "");
    }
}

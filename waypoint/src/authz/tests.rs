//! Policy matching: Istio's string forms, not* lists, when conditions, evaluation order.

use super::*;
use http::HeaderValue;
use pb::l7_policy::Action;

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

fn policy(name: &str, action: Action, rules: Vec<pb::L7Rule>) -> pb::L7Policy {
    let mut p = pb::L7Policy {
        name: name.into(),
        rules,
        ..Default::default()
    };
    p.set_action(action);
    p
}

fn op(o: pb::L7Operation) -> pb::L7Rule {
    pb::L7Rule {
        to: vec![o],
        ..Default::default()
    }
}

fn from(src: pb::L7Source) -> pb::L7Rule {
    pb::L7Rule {
        from: vec![src],
        ..Default::default()
    }
}

fn when(key: &str, values: &[&str], not_values: &[&str]) -> pb::L7Rule {
    pb::L7Rule {
        when: vec![pb::L7Condition {
            key: key.into(),
            values: s(values),
            not_values: s(not_values),
        }],
        ..Default::default()
    }
}

struct Req {
    principal: &'static str,
    method: &'static str,
    path: &'static str,
    host: &'static str,
    ip: IpAddr,
    headers: HeaderMap,
    auth: Option<Claims>,
}

impl Default for Req {
    fn default() -> Self {
        Req {
            principal: "cluster.local/ns/client/sa/client",
            method: "GET",
            path: "/",
            host: "echo.app.svc.cluster.local",
            ip: "10.0.0.5".parse().unwrap(),
            headers: HeaderMap::new(),
            auth: None,
        }
    }
}

impl Req {
    fn eval(&self, ps: &Policies) -> Decision {
        let ns = self.principal.split('/').nth(2);
        ps.evaluate(&Attributes {
            principal: Some(self.principal),
            namespace: ns,
            service_account: self.principal.split('/').nth(4),
            source_ip: self.ip,
            remote_ip: self.ip,
            port: 80,
            method: self.method,
            path: self.path,
            host: self.host,
            headers: &self.headers,
            auth: self.auth.as_ref(),
        })
    }
    fn allowed(&self, ps: &Policies) -> bool {
        self.eval(ps).allowed
    }
}

fn compile(ps: Vec<pb::L7Policy>) -> Policies {
    Policies::compile(&ps).unwrap()
}

#[test]
fn string_forms() {
    assert!(StrMatch::new("*").matches("x"));
    assert!(!StrMatch::new("*").matches(""));
    assert!(StrMatch::new("/api/*").matches("/api/v1"));
    assert!(!StrMatch::new("/api/*").matches("/apiv1"));
    assert!(StrMatch::new("*.txt").matches("/a/b.txt"));
    assert!(StrMatch::new("/exact").matches("/exact"));
    assert!(!StrMatch::new("/exact").matches("/exact/"));
}

#[test]
fn paths_methods_and_not_forms() {
    let ps = compile(vec![policy(
        "app/allow",
        Action::Allow,
        vec![op(pb::L7Operation {
            paths: s(&["/public/*", "/health", "*.css"]),
            not_paths: s(&["/public/secret*"]),
            methods: s(&["GET", "HEAD"]),
            ..Default::default()
        })],
    )]);
    let r = |method, path| Req {
        method,
        path,
        ..Default::default()
    };
    assert!(r("GET", "/public/a").allowed(&ps));
    assert!(r("GET", "/health").allowed(&ps));
    assert!(r("HEAD", "/x/site.css").allowed(&ps));
    assert!(!r("GET", "/health/x").allowed(&ps));
    assert!(!r("GET", "/public/secret/1").allowed(&ps));
    assert!(!r("POST", "/public/a").allowed(&ps));
    assert!(!r("GET", "/admin").allowed(&ps));
    let d = r("GET", "/admin").eval(&ps);
    assert_eq!(d.policy, None, "no ALLOW matched: no policy named");
}

#[test]
fn evaluation_order_deny_then_allow_audit_marks() {
    let ps = compile(vec![
        policy(
            "app/allow-all-get",
            Action::Allow,
            vec![op(pb::L7Operation {
                methods: s(&["GET"]),
                ..Default::default()
            })],
        ),
        policy(
            "app/deny-admin",
            Action::Deny,
            vec![op(pb::L7Operation {
                paths: s(&["/admin*"]),
                ..Default::default()
            })],
        ),
        policy(
            "app/audit",
            Action::Audit,
            vec![op(pb::L7Operation {
                paths: s(&["/admin*", "/audited"]),
                ..Default::default()
            })],
        ),
    ]);
    let d = Req {
        path: "/admin/x",
        ..Default::default()
    }
    .eval(&ps);
    assert!(!d.allowed);
    assert_eq!(d.policy.as_deref(), Some("app/deny-admin"));
    assert_eq!(d.audit, ["app/audit"]);
    let d = Req {
        path: "/audited",
        ..Default::default()
    }
    .eval(&ps);
    assert!(d.allowed && d.audit == ["app/audit"]);
    // No ALLOW policy at all: allowed; an AUDIT-only set allows everything.
    assert!(Req::default().allowed(&compile(vec![])));
    assert!(Req::default().allowed(&compile(vec![policy(
        "a",
        Action::Audit,
        vec![from(pb::L7Source {
            principals: s(&["nobody"]),
            ..Default::default()
        })]
    )])));
    // An ALLOW policy without rules allows nothing.
    assert!(!Req::default().allowed(&compile(vec![policy("none", Action::Allow, vec![])])));
    // A DENY with an empty rule denies everything.
    assert!(!Req::default().allowed(&compile(vec![policy(
        "d",
        Action::Deny,
        vec![pb::L7Rule::default()]
    )])));
}

#[test]
fn sources_principals_namespaces_ips_and_request_principals() {
    let ps = compile(vec![policy(
        "app/from",
        Action::Allow,
        vec![
            from(pb::L7Source {
                principals: s(&["cluster.local/ns/client/sa/*"]),
                not_principals: s(&["*/sa/blocked"]),
                ..Default::default()
            }),
            from(pb::L7Source {
                namespaces: s(&["ops"]),
                ip_blocks: s(&["10.1.0.0/16"]),
                ..Default::default()
            }),
            from(pb::L7Source {
                request_principals: s(&["https://issuer/*"]),
                not_request_principals: s(&["https://issuer/mallory"]),
                ..Default::default()
            }),
        ],
    )]);
    assert!(Req::default().allowed(&ps));
    let r = |principal, ip: &str| Req {
        principal,
        ip: ip.parse().unwrap(),
        ..Default::default()
    };
    assert!(!r("cluster.local/ns/client/sa/blocked", "10.0.0.5").allowed(&ps));
    assert!(!r("cluster.local/ns/ops/sa/x", "10.0.0.5").allowed(&ps));
    assert!(r("cluster.local/ns/ops/sa/x", "10.1.2.3").allowed(&ps));
    assert!(r("cluster.local/ns/ops/sa/x", "::ffff:10.1.2.3").allowed(&ps));
    let jwt = |sub: &str| Req {
        principal: "cluster.local/ns/other/sa/x",
        auth: Some(Claims {
            principal: format!("https://issuer/{sub}"),
            audiences: vec![],
            presenter: None,
            payload: serde_json::json!({"sub": sub}),
        }),
        ..Default::default()
    };
    assert!(jwt("alice").allowed(&ps));
    assert!(!jwt("mallory").allowed(&ps));
    // Without a token the requestPrincipals source cannot match.
    assert!(!r("cluster.local/ns/other/sa/x", "10.0.0.5").allowed(&ps));
}

#[test]
fn not_request_principals_star_denies_unauthenticated() {
    // Istio's "require JWT" recipe.
    let ps = compile(vec![policy(
        "app/require-jwt",
        Action::Deny,
        vec![from(pb::L7Source {
            not_request_principals: s(&["*"]),
            ..Default::default()
        })],
    )]);
    assert!(!Req::default().allowed(&ps));
    let authed = Req {
        auth: Some(Claims {
            principal: "iss/sub".into(),
            audiences: vec![],
            presenter: None,
            payload: serde_json::json!({}),
        }),
        ..Default::default()
    };
    assert!(authed.allowed(&ps));
}

#[test]
fn when_conditions() {
    let ps = compile(vec![policy(
        "app/when",
        Action::Allow,
        vec![
            when(
                "request.headers[x-user]",
                &["admin", "ops-*"],
                &["ops-intern"],
            ),
            when("request.auth.claims[groups]", &["admin"], &[]),
            when("request.auth.claims[org][team]", &["blue"], &[]),
            when("source.ip", &["192.168.0.0/16"], &[]),
        ],
    )]);
    let hdr = |v: &str| {
        let mut h = HeaderMap::new();
        h.insert("x-user", HeaderValue::from_str(v).unwrap());
        Req {
            headers: h,
            ..Default::default()
        }
    };
    assert!(hdr("admin").allowed(&ps));
    assert!(hdr("ops-bob").allowed(&ps));
    assert!(!hdr("ops-intern").allowed(&ps));
    assert!(!hdr("guest").allowed(&ps));
    assert!(!Req::default().allowed(&ps));
    let claims = |payload: serde_json::Value| Req {
        auth: Some(Claims {
            principal: "i/s".into(),
            audiences: vec![],
            presenter: None,
            payload,
        }),
        ..Default::default()
    };
    assert!(claims(serde_json::json!({"groups": ["dev", "admin"]})).allowed(&ps));
    assert!(!claims(serde_json::json!({"groups": ["dev"]})).allowed(&ps));
    assert!(claims(serde_json::json!({"org": {"team": "blue"}})).allowed(&ps));
    assert!(Req {
        ip: "192.168.3.4".parse().unwrap(),
        ..Default::default()
    }
    .allowed(&ps));
    // Keys the waypoint does not know match no value (fail closed in ALLOW).
    let unknown = compile(vec![policy(
        "x",
        Action::Allow,
        vec![when("connection.sni", &["*"], &[])],
    )]);
    assert!(!Req::default().allowed(&unknown));
}

#[test]
fn hosts_and_ports() {
    let ps = compile(vec![policy(
        "app/hosts",
        Action::Allow,
        vec![op(pb::L7Operation {
            hosts: s(&["echo.app.svc.cluster.local", "*.example.com"]),
            not_ports: vec![8080],
            ..Default::default()
        })],
    )]);
    let h = |host| Req {
        host,
        ..Default::default()
    };
    assert!(h("echo.app.svc.cluster.local").allowed(&ps));
    assert!(h("Echo.App.svc.cluster.local:80").allowed(&ps));
    assert!(h("api.example.com").allowed(&ps));
    assert!(!h("other").allowed(&ps));
    let only_8080 = compile(vec![policy(
        "p",
        Action::Allow,
        vec![op(pb::L7Operation {
            ports: vec![8080],
            ..Default::default()
        })],
    )]);
    assert!(!Req::default().allowed(&only_8080));
    assert!(Policies::compile(&[policy(
        "bad",
        Action::Allow,
        vec![op(pb::L7Operation {
            ports: vec![70000],
            ..Default::default()
        })]
    )])
    .is_err());
}

#[test]
fn path_normalization() {
    assert_eq!(normalize_path("/"), "/");
    assert_eq!(normalize_path("/a/b"), "/a/b");
    assert_eq!(normalize_path("/public/../admin"), "/admin");
    assert_eq!(normalize_path("//admin///x"), "/admin/x");
    assert_eq!(normalize_path("/a/./b/"), "/a/b/");
    assert_eq!(normalize_path("/../../x"), "/x");
    assert_eq!(normalize_path("/a/.."), "/");
    assert_eq!(normalize_path("/a/%2e%2e/b"), "/a/%2e%2e/b");
}

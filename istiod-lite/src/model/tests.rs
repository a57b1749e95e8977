use super::service::app_protocol;
use super::*;
use crate::source::{parse_file, ConfigSnapshot};
use mesh_proto::workload::{
    AppProtocol, Port, Service as XdsService, TunnelProtocol, Workload, WorkloadStatus,
};
use prost::Message;

const CONFIG: &str = r#"
kind: Namespace
metadata: {name: amb, labels: {istio.io/dataplane-mode: ambient}}
---
kind: Namespace
metadata: {name: plain}
---
kind: Pod
metadata:
  name: client
  namespace: amb
  labels: {app: client, version: v2}
spec: {nodeName: node1, serviceAccountName: client}
status: {podIP: 127.0.1.1}
---
kind: Pod
metadata:
  name: opted-out
  namespace: amb
  labels: {istio.io/dataplane-mode: none, app.kubernetes.io/name: kube-name, service.istio.io/canonical-name: canon}
status: {podIP: 127.0.1.3}
---
kind: Pod
metadata:
  name: server
  namespace: plain
  labels: {app: server, istio.io/dataplane-mode: ambient}
spec:
  nodeName: node2
  containers:
  - name: app
    ports: [{name: web, containerPort: 8081}]
status:
  podIP: "fd00::2"
  conditions: [{type: Ready, status: "False"}]
---
kind: Pod
metadata: {name: legacy, namespace: plain, labels: {app: server}}
status: {podIP: 127.0.1.4}
---
kind: Pod
metadata: {name: pending, namespace: amb}
---
kind: Pod
metadata: {name: starting, namespace: amb}
spec: {nodeName: node-1}
---
kind: Service
metadata: {name: server, namespace: plain}
spec:
  selector: {app: server}
  clusterIP: 127.0.2.1
  ports:
  - {name: tcp-main, port: 80, targetPort: 8080}
  - {name: http-web, port: 81, targetPort: web}
  - {name: grpc, port: 82}
  - {port: 83, appProtocol: kubernetes.io/h2c}
---
kind: Service
metadata: {name: headless, namespace: plain}
spec: {clusterIP: None, ports: [{port: 9}]}
"#;

fn cfg() -> ConfigSnapshot {
    let parsed = parse_file(std::path::Path::new("t.yaml"), CONFIG);
    assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
    ConfigSnapshot::from_objects(&parsed.objects)
}

fn params() -> ModelParams {
    ModelParams {
        trust_domain: "example.org".into(),
        cluster_id: "Kubernetes".into(),
        root_namespace: "istio-system".into(),
    }
}

fn snapshot() -> Snapshot {
    build(&cfg(), &params(), None, 1)
}

fn address(s: &Snapshot, name: &str) -> address::Type {
    let r = &s.get(ADDRESS_TYPE_URL).unwrap().resources[name];
    assert_eq!(r.any.type_url, ADDRESS_TYPE_URL);
    Address::decode(r.any.value.as_slice())
        .unwrap()
        .r#type
        .unwrap()
}

fn workload(s: &Snapshot, ns: &str, name: &str) -> Workload {
    match address(s, &format!("Kubernetes//Pod/{ns}/{name}")) {
        address::Type::Workload(w) => w,
        other => panic!("not a workload: {other:?}"),
    }
}

fn service(s: &Snapshot, key: &str) -> XdsService {
    match address(s, key) {
        address::Type::Service(svc) => svc,
        other => panic!("not a service: {other:?}"),
    }
}

fn port(service_port: u32, target_port: u32, proto: AppProtocol) -> Port {
    let mut p = Port {
        service_port,
        target_port,
        ..Default::default()
    };
    p.set_app_protocol(proto);
    p
}

#[test]
fn resource_names() {
    let s = snapshot();
    let names: Vec<_> = s
        .get(ADDRESS_TYPE_URL)
        .unwrap()
        .resources
        .keys()
        .map(|k| k.to_string())
        .collect();
    assert_eq!(
        names,
        vec![
            "Kubernetes//Pod/amb/client",
            "Kubernetes//Pod/amb/opted-out",
            "Kubernetes//Pod/amb/starting",
            "Kubernetes//Pod/plain/legacy",
            "Kubernetes//Pod/plain/server",
            "plain/headless.plain.svc.cluster.local",
            "plain/server.plain.svc.cluster.local",
        ],
        "unscheduled pods are skipped; scheduled ones are pushed before they have an IP"
    );
    assert!(s.get(AUTHORIZATION_TYPE_URL).unwrap().resources.is_empty());
}

#[test]
fn ambient_workload_fields() {
    let w = workload(&snapshot(), "amb", "client");
    assert_eq!(w.uid, "Kubernetes//Pod/amb/client");
    assert_eq!(
        (
            w.name.as_str(),
            w.namespace.as_str(),
            w.workload_name.as_str()
        ),
        ("client", "amb", "client")
    );
    assert_eq!(w.addresses, vec![vec![127, 0, 1, 1]]);
    assert_eq!(
        w.tunnel_protocol(),
        TunnelProtocol::Hbone,
        "namespace label opts in"
    );
    assert_eq!(w.trust_domain, "example.org");
    assert_eq!(w.service_account, "client");
    assert_eq!(w.node, "node1");
    assert_eq!(
        (w.canonical_name.as_str(), w.canonical_revision.as_str()),
        ("client", "v2")
    );
    assert_eq!(w.cluster_id, "Kubernetes");
    assert_eq!(w.status(), WorkloadStatus::Healthy);
    assert!(w.services.is_empty());
}

#[test]
fn scheduled_pod_without_ip_is_pushed_without_addresses() {
    let w = workload(&snapshot(), "amb", "starting");
    assert!(w.addresses.is_empty());
    assert_eq!(w.node, "node-1");
    assert_eq!(w.tunnel_protocol(), TunnelProtocol::Hbone);
    assert_eq!(w.status(), WorkloadStatus::Unhealthy);
}

#[test]
fn opt_out_and_canonical_label_precedence() {
    let w = workload(&snapshot(), "amb", "opted-out");
    assert_eq!(
        w.tunnel_protocol(),
        TunnelProtocol::None,
        "pod label none opts out of an ambient namespace"
    );
    assert_eq!(w.canonical_name, "canon");
    assert_eq!(w.canonical_revision, "latest");
    assert_eq!(w.service_account, "default");
}

#[test]
fn pod_label_opts_in_and_services_map() {
    let s = snapshot();
    let w = workload(&s, "plain", "server");
    assert_eq!(
        w.tunnel_protocol(),
        TunnelProtocol::Hbone,
        "pod label opts in outside an ambient namespace"
    );
    assert_eq!(w.addresses[0].len(), 16, "IPv6 as 16 raw bytes");
    assert_eq!(w.status(), WorkloadStatus::Unhealthy);
    let ports = &w.services["plain/server.plain.svc.cluster.local"].ports;
    assert_eq!(
        ports,
        &vec![
            port(80, 8080, AppProtocol::Tcp),
            port(81, 8081, AppProtocol::Http11),
            port(82, 82, AppProtocol::Grpc),
            port(83, 83, AppProtocol::Http2),
        ]
    );
    assert_eq!(w.services.len(), 1, "headless has no selector");

    // Non-ambient pods are still sent, and a named port they lack is left out.
    let legacy = workload(&s, "plain", "legacy");
    assert_eq!(legacy.tunnel_protocol(), TunnelProtocol::None);
    assert_eq!(legacy.canonical_name, "server");
    let ports = &legacy.services["plain/server.plain.svc.cluster.local"].ports;
    assert_eq!(
        ports.iter().map(|p| p.service_port).collect::<Vec<_>>(),
        vec![80, 82, 83]
    );
}

#[test]
fn service_fields() {
    let s = snapshot();
    let svc = service(&s, "plain/server.plain.svc.cluster.local");
    assert_eq!(
        (svc.name.as_str(), svc.namespace.as_str()),
        ("server", "plain")
    );
    assert_eq!(svc.hostname, "server.plain.svc.cluster.local");
    assert_eq!(svc.addresses.len(), 1);
    assert_eq!(svc.addresses[0].network, "");
    assert_eq!(svc.addresses[0].address, vec![127, 0, 2, 1]);
    assert_eq!(
        svc.ports[1],
        port(81, 0, AppProtocol::Http11),
        "named targetPort is resolved per workload"
    );
    let headless = service(&s, "plain/headless.plain.svc.cluster.local");
    assert!(headless.addresses.is_empty());
    assert_eq!(headless.ports, vec![port(9, 9, AppProtocol::Unknown)]);
}

#[test]
fn app_protocol_sources() {
    use crate::source::kinds::ServicePort;
    let p = |name: Option<&str>, ap: Option<&str>| ServicePort {
        name: name.map(str::to_string),
        port: 1,
        target_port: None,
        app_protocol: ap.map(str::to_string),
    };
    assert_eq!(app_protocol(&p(Some("http"), None)), AppProtocol::Http11);
    assert_eq!(app_protocol(&p(Some("http2-x"), None)), AppProtocol::Http2);
    assert_eq!(app_protocol(&p(Some("tls-x"), None)), AppProtocol::Tls);
    assert_eq!(app_protocol(&p(Some("web"), None)), AppProtocol::Unknown);
    assert_eq!(
        app_protocol(&p(Some("http"), Some("tcp"))),
        AppProtocol::Tcp,
        "appProtocol wins"
    );
    assert_eq!(
        app_protocol(&p(Some("grpc"), Some("custom"))),
        AppProtocol::Grpc,
        "unknown appProtocol falls back"
    );
}

#[test]
fn versions_are_content_hashes_and_deltas_are_precise() {
    let s1 = snapshot();
    let again = build(&cfg(), &params(), Some(&s1), 2);
    let d = again.get(ADDRESS_TYPE_URL).unwrap().delta.as_ref().unwrap();
    assert!(d.is_empty(), "same config, same versions");
    assert!(!again.has_changes());

    let edited = CONFIG.replace("podIP: 127.0.1.1", "podIP: 127.0.1.9").replace(
        "kind: Pod\nmetadata: {name: legacy, namespace: plain, labels: {app: server}}\nstatus: {podIP: 127.0.1.4}\n---\n",
        "",
    );
    let parsed = parse_file(std::path::Path::new("t.yaml"), &edited);
    let s2 = build(
        &ConfigSnapshot::from_objects(&parsed.objects),
        &params(),
        Some(&s1),
        2,
    );
    let d = s2.get(ADDRESS_TYPE_URL).unwrap().delta.as_ref().unwrap();
    assert_eq!(d.prev_generation, 1);
    assert_eq!(
        d.updated.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
        vec!["Kubernetes//Pod/amb/client"]
    );
    assert_eq!(
        d.removed.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
        vec!["Kubernetes//Pod/plain/legacy"]
    );
    let v = &s2.get(ADDRESS_TYPE_URL).unwrap().resources["Kubernetes//Pod/amb/client"];
    assert_eq!(parse_version(&v.version_string()), v.version);
    assert_eq!(parse_version("garbage"), UNKNOWN_VERSION);
}

fn build_from(yaml: &str, prev: Option<&Snapshot>) -> Snapshot {
    let parsed = parse_file(std::path::Path::new("t.yaml"), yaml);
    assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
    let generation = prev.map_or(1, |p| p.generation + 1);
    build(
        &ConfigSnapshot::from_objects(&parsed.objects),
        &params(),
        prev,
        generation,
    )
}

fn names_of(v: &[Arc<str>]) -> Vec<String> {
    v.iter().map(|n| n.to_string()).collect()
}

#[test]
fn policy_changes_push_the_policy_and_the_workloads_that_list_it() {
    let s1 = snapshot();
    let policy = "---\nkind: AuthorizationPolicy\nmetadata: {name: deny-client, namespace: plain}\nspec:\n  selector: {matchLabels: {app: server}}\n  action: DENY\n  rules:\n  - from: [{source: {principals: [example.org/ns/amb/sa/client]}}]\n    to: [{operation: {methods: [GET]}}]\n";
    let s2 = build_from(&format!("{CONFIG}{policy}"), Some(&s1));

    let authz = s2.get(AUTHORIZATION_TYPE_URL).unwrap();
    let d = authz.delta.as_ref().unwrap();
    assert_eq!(names_of(&d.updated), vec!["plain/deny-client"]);
    let a = mesh_proto::security::Authorization::decode(
        authz.resources["plain/deny-client"].any.value.as_slice(),
    )
    .unwrap();
    assert_eq!(a.scope(), mesh_proto::security::Scope::WorkloadSelector);
    // Both pods labelled app=server are re-sent, now listing the policy.
    let d = s2.get(ADDRESS_TYPE_URL).unwrap().delta.as_ref().unwrap();
    assert_eq!(
        names_of(&d.updated),
        vec![
            "Kubernetes//Pod/plain/legacy",
            "Kubernetes//Pod/plain/server"
        ]
    );
    assert_eq!(
        workload(&s2, "plain", "server").authorization_policies,
        vec!["plain/deny-client"]
    );
    assert!(workload(&s2, "amb", "client")
        .authorization_policies
        .is_empty());
    // The HTTP field is reported (once per generation it appears in).
    let w: Vec<_> = s2
        .policy_warnings
        .iter()
        .map(|w| w.field.as_str())
        .collect();
    assert_eq!(w, vec!["spec.rules[0].to[0].operation.methods"]);
    let again = build_from(&format!("{CONFIG}{policy}"), Some(&s2));
    assert!(!again.has_changes());
    assert_eq!(again.policy_warnings, s2.policy_warnings);

    // Deleting the policy removes it and re-sends the workloads without it.
    let s3 = build_from(CONFIG, Some(&s2));
    let d = s3
        .get(AUTHORIZATION_TYPE_URL)
        .unwrap()
        .delta
        .as_ref()
        .unwrap();
    assert_eq!(names_of(&d.removed), vec!["plain/deny-client"]);
    assert!(workload(&s3, "plain", "server")
        .authorization_policies
        .is_empty());
    assert!(s3.policy_warnings.is_empty());
}

#[test]
fn mesh_wide_strict_is_listed_by_every_workload() {
    let pa = "---\nkind: PeerAuthentication\nmetadata: {name: default, namespace: istio-system}\nspec: {mtls: {mode: STRICT}}\n";
    let s = build_from(&format!("{CONFIG}{pa}"), None);
    let names: Vec<_> = s
        .get(AUTHORIZATION_TYPE_URL)
        .unwrap()
        .resources
        .keys()
        .map(|k| k.to_string())
        .collect();
    assert_eq!(names, vec!["istio-system/istio_converted_static_strict"]);
    for (ns, pod) in [("amb", "client"), ("plain", "server"), ("plain", "legacy")] {
        assert_eq!(
            workload(&s, ns, pod).authorization_policies,
            vec!["istio-system/istio_converted_static_strict"],
            "{ns}/{pod}"
        );
    }
}

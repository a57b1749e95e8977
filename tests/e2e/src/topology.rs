//! The cluster a test runs: namespaces, pods and services, written as the Kubernetes YAML that
//! istiod-lite reads from its config directory.

use std::fmt::Write as _;
use std::net::Ipv4Addr;

/// A pod, scheduled on a node, with a pod IP on loopback.
#[derive(Clone, Debug)]
pub struct Pod {
    /// Namespace.
    pub namespace: String,
    /// Pod name.
    pub name: String,
    /// Service account (the SPIFFE identity's `sa`).
    pub service_account: String,
    /// Node (= the ztunnel's NODE_NAME) it runs on.
    pub node: String,
    /// Pod IP (`127.0.1.x`).
    pub ip: Ipv4Addr,
    /// Labels (services select on these).
    pub labels: Vec<(String, String)>,
}

impl Pod {
    /// A pod labelled `app: <app>`.
    pub fn new(namespace: &str, name: &str, sa: &str, node: &str, ip: Ipv4Addr, app: &str) -> Self {
        Pod {
            namespace: namespace.into(),
            name: name.into(),
            service_account: sa.into(),
            node: node.into(),
            ip,
            labels: vec![("app".into(), app.into())],
        }
    }

    /// `spiffe://cluster.local/ns/<ns>/sa/<sa>`.
    pub fn spiffe(&self) -> String {
        format!(
            "spiffe://cluster.local/ns/{}/sa/{}",
            self.namespace, self.service_account
        )
    }
}

/// A ClusterIP service with one TCP port.
#[derive(Clone, Debug)]
pub struct Service {
    /// Namespace.
    pub namespace: String,
    /// Name (hostname `<name>.<ns>.svc.cluster.local`).
    pub name: String,
    /// Cluster IP (`127.0.2.x`).
    pub vip: Ipv4Addr,
    /// Service port.
    pub port: u16,
    /// Target port on the pods.
    pub target_port: u16,
    /// Selects pods with `app: <app>`.
    pub app: String,
}

impl Service {
    /// A service selecting `app: <app>`.
    pub fn new(
        namespace: &str,
        name: &str,
        vip: Ipv4Addr,
        port: u16,
        target_port: u16,
        app: &str,
    ) -> Self {
        Service {
            namespace: namespace.into(),
            name: name.into(),
            vip,
            port,
            target_port,
            app: app.into(),
        }
    }

    /// `<name>.<ns>.svc.cluster.local`.
    pub fn hostname(&self) -> String {
        format!("{}.{}.svc.cluster.local", self.name, self.namespace)
    }
}

/// Everything in the config directory.
#[derive(Clone, Debug, Default)]
pub struct Topology {
    /// Namespaces labelled `istio.io/dataplane-mode: ambient`.
    pub ambient_namespaces: Vec<String>,
    /// Pods.
    pub pods: Vec<Pod>,
    /// Services.
    pub services: Vec<Service>,
}

/// Client pod IP of the demo topology.
pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 1, 1);
/// Server pod IP of the demo topology.
pub const SERVER_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 1, 2);
/// Second server pod (same service) of [`Topology::demo_two_servers`].
pub const SERVER2_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 1, 3);
/// VIP of `server.demo-b`.
pub const SERVER_VIP: Ipv4Addr = Ipv4Addr::new(127, 0, 2, 1);
/// Port the server app listens on.
pub const APP_PORT: u16 = 8080;
/// Service port of `server.demo-b`.
pub const SERVICE_PORT: u16 = 80;

impl Topology {
    /// The demo: `demo-a/client` (sa client) on node1 at 127.0.1.1; `demo-b/server` (sa server)
    /// on node2 at 127.0.1.2:8080; service `server.demo-b` VIP 127.0.2.1:80 -> 8080.
    pub fn demo() -> Self {
        Topology {
            ambient_namespaces: vec!["demo-a".into(), "demo-b".into()],
            pods: vec![
                Pod::new("demo-a", "client", "client", "node1", CLIENT_IP, "client"),
                Pod::new("demo-b", "server", "server", "node2", SERVER_IP, "server"),
            ],
            services: vec![Service::new(
                "demo-b",
                "server",
                SERVER_VIP,
                SERVICE_PORT,
                APP_PORT,
                "server",
            )],
        }
    }

    /// [`Topology::demo`] plus a second endpoint `demo-b/server-2` at 127.0.1.3 on node2.
    pub fn demo_two_servers() -> Self {
        let mut t = Self::demo();
        t.pods.push(Pod::new(
            "demo-b", "server-2", "server", "node2", SERVER2_IP, "server",
        ));
        t
    }

    /// The nodes that have pods, sorted.
    pub fn nodes(&self) -> Vec<String> {
        let mut n: Vec<String> = self.pods.iter().map(|p| p.node.clone()).collect();
        n.sort();
        n.dedup();
        n
    }

    /// The pod named `ns/name`.
    pub fn pod(&self, namespace: &str, name: &str) -> Option<&Pod> {
        self.pods
            .iter()
            .find(|p| p.namespace == namespace && p.name == name)
    }

    /// Multi-document YAML: Namespaces, ServiceAccounts, Pods, Services.
    pub fn to_yaml(&self) -> String {
        let mut docs = Vec::new();
        for ns in &self.ambient_namespaces {
            docs.push(namespace_yaml(ns, true));
        }
        let mut sas: Vec<(&str, &str)> = self
            .pods
            .iter()
            .map(|p| (p.namespace.as_str(), p.service_account.as_str()))
            .collect();
        sas.sort();
        sas.dedup();
        for (ns, sa) in sas {
            docs.push(format!("apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: {sa}\n  namespace: {ns}\n"));
        }
        docs.extend(self.pods.iter().map(pod_yaml));
        docs.extend(self.services.iter().map(service_yaml));
        docs.join("---\n")
    }
}

/// A Namespace, labelled ambient or not.
pub fn namespace_yaml(name: &str, ambient: bool) -> String {
    let mut s = format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n");
    if ambient {
        s.push_str("  labels:\n    istio.io/dataplane-mode: ambient\n");
    }
    s
}

/// A Pod document.
pub fn pod_yaml(p: &Pod) -> String {
    let mut s = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {}\n  namespace: {}\n",
        p.name, p.namespace
    );
    if !p.labels.is_empty() {
        s.push_str("  labels:\n");
        for (k, v) in &p.labels {
            let _ = writeln!(s, "    {k}: {v}");
        }
    }
    let _ = write!(
        s,
        "spec:\n  nodeName: {}\n  serviceAccountName: {}\n  containers:\n  - name: app\nstatus:\n  phase: Running\n  podIP: {}\n",
        p.node, p.service_account, p.ip
    );
    s
}

/// A Service document.
pub fn service_yaml(s: &Service) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {}\n  namespace: {}\nspec:\n  clusterIP: {}\n  selector:\n    app: {}\n  ports:\n  - name: tcp\n    port: {}\n    targetPort: {}\n",
        s.name, s.namespace, s.vip, s.app, s.port, s.target_port
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_yaml_has_every_object() {
        let y = Topology::demo().to_yaml();
        assert_eq!(y.matches("kind: Namespace").count(), 2);
        assert_eq!(y.matches("kind: ServiceAccount").count(), 2);
        assert_eq!(y.matches("kind: Pod").count(), 2);
        assert!(y.contains("podIP: 127.0.1.2"), "{y}");
        assert!(y.contains("clusterIP: 127.0.2.1"), "{y}");
        assert!(y.contains("istio.io/dataplane-mode: ambient"), "{y}");
        assert_eq!(
            Topology::demo().nodes(),
            vec!["node1".to_string(), "node2".to_string()]
        );
    }
}

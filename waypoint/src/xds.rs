//! The waypoint's xDS subscription: `ambient.route.v1.ServiceRoutes` (its own Services'
//! routes, as istiod-lite's per-waypoint view sends them), compiled into a [`Table`] that the
//! data path reads through a `watch` channel. A resource that does not compile is NACKed and
//! the previous version of it kept.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use mesh_proto::route::ServiceRoutes;
use mesh_proto::xds::Node;
use mesh_proto::SERVICE_ROUTES_TYPE_URL;
use mesh_xds::client::metadata_string;
use prost::Message;
use tokio::sync::watch;

use crate::config::Config;
use crate::routes::{compile_for, Service, Table};

/// Applies ServiceRoutes resources and publishes the table after each response.
pub struct RoutesHandler {
    services: HashMap<String, Arc<Service>>,
    tx: watch::Sender<Arc<Table>>,
    /// L7 security per resource: (hostname, compiled), published on `security_tx`.
    security: HashMap<String, (String, Arc<crate::security::ServiceSecurity>)>,
    security_tx: watch::Sender<Arc<crate::security::SecurityTable>>,
    jwks: crate::jwt::JwksRegistry,
    /// This replica's pod name: it finds its own locality in each resource by it.
    pod_name: String,
}

impl RoutesHandler {
    /// A handler publishing on `tx`.
    pub fn new(tx: watch::Sender<Arc<Table>>) -> Self {
        RoutesHandler {
            services: HashMap::new(),
            tx,
            security: HashMap::new(),
            security_tx: watch::channel(Arc::default()).0,
            jwks: Default::default(),
            pod_name: String::new(),
        }
    }

    /// Compiles resources for pod `name` (its locality ranks endpoints; see
    /// [`crate::routes::locality`]).
    pub fn for_pod(mut self, name: &str) -> Self {
        self.pod_name = name.to_string();
        self
    }

    /// The compiled L7 security, updated with every response.
    pub fn security(&self) -> watch::Receiver<Arc<crate::security::SecurityTable>> {
        self.security_tx.subscribe()
    }
}

impl mesh_xds::Handler for RoutesHandler {
    fn upsert(
        &mut self,
        _type_url: &'static str,
        name: &str,
        any: &prost_types::Any,
    ) -> Result<(), String> {
        let r = ServiceRoutes::decode(any.value.as_slice())
            .map_err(|e| format!("{name}: undecodable ServiceRoutes: {e}"))?;
        let svc = compile_for(&r, &self.pod_name).map_err(|e| format!("{name}: {e}"))?;
        let sec = crate::security::compile(&r, &self.jwks).map_err(|e| format!("{name}: {e}"))?;
        match sec {
            Some(s) => self
                .security
                .insert(name.to_string(), (r.hostname.clone(), Arc::new(s))),
            None => self.security.remove(name),
        };
        self.services.insert(name.to_string(), Arc::new(svc));
        Ok(())
    }

    fn remove(&mut self, _type_url: &'static str, name: &str) -> bool {
        self.security.remove(name);
        self.services.remove(name).is_some()
    }

    fn applied(&mut self, _type_url: &'static str) {
        // Rebuilding the indexes per response (not per resource) keeps a big push cheap.
        self.tx
            .send_replace(Arc::new(Table::new(self.services.clone())));
        let by_host = self.security.values().cloned().collect();
        self.security_tx
            .send_replace(Arc::new(crate::security::SecurityTable::new(by_host)));
    }
}

/// The xDS client configuration of a waypoint.
pub fn client_config(cfg: &Config) -> mesh_xds::ClientConfig {
    let mut fields = BTreeMap::new();
    fields.insert("NAMESPACE".to_string(), metadata_string(&cfg.namespace));
    fields.insert("NAME".to_string(), metadata_string(&cfg.pod_name));
    fields.insert("GATEWAY_NAME".to_string(), metadata_string(&cfg.gateway));
    fields.insert("CLUSTER_ID".to_string(), metadata_string(&cfg.cluster_id));
    let ip = cfg
        .instance_ip
        .map(|i| i.to_string())
        .unwrap_or_else(|| "0.0.0.0".into());
    mesh_xds::ClientConfig {
        address: cfg.xds_address.clone(),
        root_ca: cfg.xds_root_ca.clone(),
        auth_token: cfg.auth_token.clone(),
        cluster_id: cfg.cluster_id.clone(),
        node: Node {
            // Istio's waypoint (Envoy) node id shape: router~<ip>~<pod>.<ns>~<ns>.svc.cluster.local
            id: format!(
                "router~{ip}~{}.{}~{}.svc.cluster.local",
                cfg.pod_name, cfg.namespace, cfg.namespace
            ),
            cluster: cfg.cluster_id.clone(),
            metadata: Some(prost_types::Struct { fields }),
            build_version: env!("CARGO_PKG_VERSION").to_string(),
        },
        types: vec![SERVICE_ROUTES_TYPE_URL],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_xds::Handler;

    #[test]
    fn bad_resources_are_refused_and_good_ones_published() {
        let (tx, rx) = watch::channel(Arc::new(Table::default()));
        let mut h = RoutesHandler::new(tx);
        let good = ServiceRoutes {
            name: "s".into(),
            namespace: "n".into(),
            hostname: "s.n.svc.cluster.local".into(),
            addresses: vec![vec![10, 0, 0, 1]],
            ports: vec![mesh_proto::route::ServicePort {
                port: 80,
                ..Default::default()
            }],
            ..Default::default()
        };
        let any = mesh_proto::to_any(SERVICE_ROUTES_TYPE_URL, &good);
        h.upsert(SERVICE_ROUTES_TYPE_URL, "n/s", &any).unwrap();
        let mut bad = good.clone();
        bad.addresses = vec![vec![1, 2, 3]];
        let any = mesh_proto::to_any(SERVICE_ROUTES_TYPE_URL, &bad);
        assert!(h.upsert(SERVICE_ROUTES_TYPE_URL, "n/bad", &any).is_err());
        h.applied(SERVICE_ROUTES_TYPE_URL);
        assert!(rx.borrow().lookup("10.0.0.1:80").is_some());
        assert!(h.remove(SERVICE_ROUTES_TYPE_URL, "n/s"));
        h.applied(SERVICE_ROUTES_TYPE_URL);
        assert!(rx.borrow().lookup("10.0.0.1:80").is_none());
    }
}

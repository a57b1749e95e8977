//! Delta ADS client: subscribes (wildcard) to `istio.workload.Address` and
//! `istio.security.Authorization`, applies pushes to [`State`], ACKs or NACKs each response, and
//! reconnects with backoff. The state is kept while the control plane is away, so the data plane
//! keeps serving from the last good config.
//!
//! The client itself is shared with the waypoint (`mesh_xds::XdsClient`); this module is
//! ztunnel's [`mesh_xds::Handler`] (resources into [`State`]) and its `Node`.

use std::collections::BTreeMap;
use std::sync::Arc;

use mesh_proto::xds::Node;
use mesh_proto::{security, workload, ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL};
use mesh_xds::client::metadata_string;
use prost::Message;

use crate::config::Config;
use crate::readiness::Readiness;
use crate::state::{self, State};

pub use mesh_xds::XdsError;

/// The types we subscribe to, in order.
pub const TYPES: [&str; 2] = [ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL];

/// Applies Address and Authorization resources to the state.
pub struct StateHandler {
    state: Arc<State>,
}

impl mesh_xds::Handler for StateHandler {
    fn upsert(
        &mut self,
        type_url: &'static str,
        name: &str,
        any: &prost_types::Any,
    ) -> Result<(), String> {
        if type_url == ADDRESS_TYPE_URL {
            workload::Address::decode(any.value.as_slice())
                .map_err(|e| format!("{name}: undecodable Address: {e}"))
                .and_then(|a| state::convert_address(name, a).map_err(|e| e.to_string()))
                .map(|a| self.state.upsert(a))
        } else {
            security::Authorization::decode(any.value.as_slice())
                .map_err(|e| format!("{name}: undecodable Authorization: {e}"))
                .and_then(|p| mesh_policy::Policy::from_proto(p).map_err(|e| e.to_string()))
                .map(|p| self.state.upsert_policy(name, p))
        }
    }

    fn remove(&mut self, type_url: &'static str, name: &str) -> bool {
        if type_url == ADDRESS_TYPE_URL {
            self.state.remove_address(name)
        } else {
            self.state.remove_policy(name)
        }
    }
}

/// The xDS client task.
pub struct XdsClient(mesh_xds::XdsClient<StateHandler>);

fn node(cfg: &Config) -> Node {
    let mut fields = BTreeMap::new();
    fields.insert("NODE_NAME".to_string(), metadata_string(&cfg.node_name));
    fields.insert("CLUSTER_ID".to_string(), metadata_string(&cfg.cluster_id));
    Node {
        id: format!(
            "ztunnel~0.0.0.0~ztunnel-{}.istio-system~istio-system.svc.cluster.local",
            cfg.node_name
        ),
        cluster: cfg.cluster_id.clone(),
        metadata: Some(prost_types::Struct { fields }),
        build_version: env!("CARGO_PKG_VERSION").to_string(),
    }
}

impl XdsClient {
    /// Creates the client and registers one readiness task per subscribed type.
    pub fn new(cfg: Arc<Config>, state: Arc<State>, readiness: Readiness) -> Self {
        let client_cfg = mesh_xds::ClientConfig {
            address: cfg.xds_address.clone(),
            root_ca: cfg.xds_root_ca.clone(),
            auth_token: cfg.auth_token.clone(),
            cluster_id: cfg.cluster_id.clone(),
            node: node(&cfg),
            types: TYPES.to_vec(),
        };
        XdsClient(mesh_xds::XdsClient::new(
            client_cfg,
            StateHandler { state },
            readiness,
        ))
    }

    /// Runs forever: connect, stream, reconnect with exponential backoff (100 ms .. 15 s).
    pub async fn run(self) {
        self.0.run().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_proto::xds::{DeltaDiscoveryResponse, Resource};
    use mesh_xds::client::ready_task;
    use std::collections::HashMap;

    impl XdsClient {
        fn handle(
            &mut self,
            resp: DeltaDiscoveryResponse,
        ) -> mesh_proto::xds::DeltaDiscoveryRequest {
            self.0.handle(resp)
        }
        fn state(&self) -> &State {
            &self.0.handler().state
        }
        fn pending(&self) -> Vec<String> {
            self.0.readiness().pending()
        }
        fn versions(&self, t: &str) -> HashMap<String, String> {
            self.0.versions(t).cloned().unwrap_or_default()
        }
    }

    fn client() -> XdsClient {
        let cfg = Config::from_source(&HashMap::from([(
            "NODE_NAME".to_string(),
            "n1".to_string(),
        )]))
        .expect("cfg");
        XdsClient::new(
            Arc::new(cfg),
            Arc::new(State::default()),
            Readiness::default(),
        )
    }

    fn resource(name: &str, w: workload::Workload) -> Resource {
        let a = workload::Address {
            r#type: Some(workload::address::Type::Workload(w)),
        };
        Resource {
            name: name.into(),
            version: "v1".into(),
            resource: Some(mesh_proto::to_any(ADDRESS_TYPE_URL, &a)),
            ..Default::default()
        }
    }

    #[test]
    fn ack_applies_and_marks_ready() {
        let mut c = client();
        let w = workload::Workload {
            uid: "u1".into(),
            name: "p".into(),
            namespace: "ns".into(),
            addresses: vec![vec![10, 0, 0, 1]],
            ..Default::default()
        };
        let resp = DeltaDiscoveryResponse {
            type_url: ADDRESS_TYPE_URL.into(),
            nonce: "n1".into(),
            resources: vec![resource("u1", w)],
            ..Default::default()
        };
        let ack = c.handle(resp);
        assert_eq!(ack.response_nonce, "n1");
        assert!(ack.error_detail.is_none());
        assert!(c
            .state()
            .workload_by_ip("10.0.0.1".parse().expect("ip"))
            .is_some());
        assert_eq!(c.pending(), vec![ready_task(AUTHORIZATION_TYPE_URL)]);
        assert_eq!(c.versions(ADDRESS_TYPE_URL)["u1"], "v1");
    }

    #[test]
    fn bad_resource_is_nacked_and_good_ones_still_apply() {
        let mut c = client();
        let good = workload::Workload {
            uid: "u1".into(),
            addresses: vec![vec![10, 0, 0, 1]],
            ..Default::default()
        };
        let bad = workload::Workload {
            uid: "u2".into(),
            addresses: vec![vec![1, 2, 3]],
            ..Default::default()
        };
        let garbage = Resource {
            name: "g".into(),
            resource: Some(prost_types::Any {
                type_url: ADDRESS_TYPE_URL.into(),
                value: vec![0xff, 0xff, 0xff],
            }),
            ..Default::default()
        };
        let resp = DeltaDiscoveryResponse {
            type_url: ADDRESS_TYPE_URL.into(),
            nonce: "n2".into(),
            resources: vec![resource("u1", good), resource("u2", bad), garbage],
            ..Default::default()
        };
        let nack = c.handle(resp);
        let detail = nack.error_detail.expect("nack");
        assert!(
            detail.message.contains("u2") && detail.message.contains("g:"),
            "{}",
            detail.message
        );
        assert!(c
            .state()
            .workload_by_ip("10.0.0.1".parse().expect("ip"))
            .is_some());
        assert!(c.pending().contains(&ready_task(ADDRESS_TYPE_URL)));
    }

    #[test]
    fn removal_forgets_version() {
        let mut c = client();
        let w = workload::Workload {
            uid: "u1".into(),
            addresses: vec![vec![10, 0, 0, 1]],
            ..Default::default()
        };
        c.handle(DeltaDiscoveryResponse {
            type_url: ADDRESS_TYPE_URL.into(),
            nonce: "a".into(),
            resources: vec![resource("u1", w)],
            ..Default::default()
        });
        c.handle(DeltaDiscoveryResponse {
            type_url: ADDRESS_TYPE_URL.into(),
            nonce: "b".into(),
            removed_resources: vec!["u1".into()],
            ..Default::default()
        });
        assert!(c
            .state()
            .workload_by_ip("10.0.0.1".parse().expect("ip"))
            .is_none());
        assert!(c.versions(ADDRESS_TYPE_URL).is_empty());
    }
}

//! `/debug/config_dump?proxyID=...`: what one connected client was last sent, per type, with the
//! resources decoded to JSON, and what it ACKed and NACKed (istio#42443: "what did istiod send
//! to this ztunnel?").

mod proto_json;

use serde_json::{json, Map, Value};

use super::registry::{Answered, ClientInfo, ClientRegistry, SentResponse, TypeInfo};
use crate::model::Resource;

pub use proto_json::decode_resource;

/// Why a dump could not be produced.
#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    /// No proxyID given.
    #[error("missing proxyID: use /debug/config_dump?proxyID=<node name or node id>{}", connected_list(.0))]
    MissingProxyId(Vec<String>),
    /// No connected client matches.
    #[error("no connected xDS client matches proxyID {id:?}{}", connected_list(.connected))]
    UnknownProxy {
        /// The requested id.
        id: String,
        /// Node names of the connected clients.
        connected: Vec<String>,
    },
}

fn connected_list(names: &[String]) -> String {
    if names.is_empty() {
        "; no client is connected".to_string()
    } else {
        format!("; connected: {}", names.join(", "))
    }
}

/// The dump of the newest connection `proxy_id` names (see [`ClientRegistry::find`]).
pub fn config_dump(registry: &ClientRegistry, proxy_id: Option<&str>) -> Result<Value, DumpError> {
    let names = || {
        let mut v: Vec<String> = registry
            .list()
            .iter()
            .map(|c| format!("{} ({})", c.node_name, c.node_id))
            .collect();
        v.sort();
        v.dedup();
        v
    };
    let Some(id) = proxy_id.filter(|s| !s.is_empty()) else {
        return Err(DumpError::MissingProxyId(names()));
    };
    let found = registry.find(id);
    let Some(client) = found.first() else {
        return Err(DumpError::UnknownProxy {
            id: id.to_string(),
            connected: names(),
        });
    };
    Ok(client_dump(id, client, found.len()))
}

fn client_dump(id: &str, c: &ClientInfo, matching: usize) -> Value {
    let types: Map<String, Value> = c
        .types
        .iter()
        .map(|(url, t)| (url.clone(), type_dump(t)))
        .collect();
    json!({
        "proxyID": id,
        "matchingConnections": matching,
        "connection": {
            "id": c.id,
            "peer": c.peer,
            "nodeId": c.node_id,
            "nodeName": c.node_name,
            "version": c.version,
            "connectedSince": c.connected_since,
        },
        "types": types,
    })
}

fn type_dump(t: &TypeInfo) -> Value {
    let h = &t.history;
    let last_sent = h.last_sent.as_ref().map(|r| {
        let state = if h.is_unanswered(&r.nonce) {
            "PENDING"
        } else if h
            .last_nacked
            .as_ref()
            .is_some_and(|n| n.response.nonce == r.nonce)
        {
            "NACKED"
        } else {
            "ACKED"
        };
        let mut v = response_dump(r, true);
        v["state"] = state.into();
        v
    });
    let last_acked = h.last_acked.as_ref().map(|a| answered_dump(a, false, None));
    let last_nack = h.last_nacked.as_ref().map(|a| {
        let (code, message) = t
            .last_nack
            .as_ref()
            .filter(|n| n.nonce == a.response.nonce)
            .map(|n| (n.code, n.message.clone()))
            .unwrap_or_default();
        answered_dump(a, true, Some((code, message)))
    });
    json!({
        "subscription": t.subscription,
        "resourceCount": t.resources,
        "pushes": t.pushes,
        "nacks": t.nacks,
        "lastSent": last_sent,
        "lastAcked": last_acked,
        "lastNack": last_nack,
    })
}

fn answered_dump(a: &Answered, decode: bool, error: Option<(i32, String)>) -> Value {
    let mut v = response_dump(&a.response, decode);
    v["answeredAt"] = a.at.clone().into();
    if let Some((code, message)) = error {
        v["error"] = json!({ "code": code, "message": message });
    }
    v
}

fn response_dump(r: &SentResponse, decode: bool) -> Value {
    let resources: Vec<Value> = r
        .resources
        .iter()
        .map(|res| resource_dump(res, decode))
        .collect();
    json!({
        "nonce": r.nonce,
        "version": r.version,
        "sentAt": r.sent_at,
        "resources": resources,
        "removedResources": r.removed.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
    })
}

fn resource_dump(r: &Resource, decode: bool) -> Value {
    let mut v = json!({ "name": &*r.name, "version": r.version_string() });
    if decode {
        v["resource"] = decode_resource(&r.any);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xds::registry::{ClientInfo, NackInfo};
    use mesh_proto::workload::{address, Address, Workload};
    use mesh_proto::{to_any, ADDRESS_TYPE_URL};
    use std::collections::BTreeMap;
    use std::sync::Arc;

    fn resource(name: &str, ip: [u8; 4]) -> Arc<Resource> {
        let addr = Address {
            r#type: Some(address::Type::Workload(Workload {
                uid: name.into(),
                name: "p".into(),
                addresses: vec![ip.to_vec()],
                ..Default::default()
            })),
        };
        Arc::new(Resource {
            name: name.into(),
            version: 7,
            any: to_any(ADDRESS_TYPE_URL, &addr),
        })
    }

    fn sent(nonce: &str, r: Vec<Arc<Resource>>) -> Arc<SentResponse> {
        Arc::new(SentResponse {
            nonce: nonce.into(),
            version: "1".into(),
            sent_at: "t".into(),
            resources: r,
            removed: vec!["gone".into()],
        })
    }

    fn registry_with(types: BTreeMap<String, TypeInfo>) -> Arc<ClientRegistry> {
        let reg = Arc::new(ClientRegistry::default());
        let guard = reg.register(ClientInfo {
            id: 1,
            peer: None,
            node_id: "ztunnel~0.0.0.0~ztunnel-node1.istio-system~istio-system.svc.cluster.local"
                .into(),
            node_name: "node1".into(),
            version: "v".into(),
            connected_since: "t".into(),
            types,
        });
        std::mem::forget(guard);
        reg
    }

    #[test]
    fn sent_acked_and_nacked_are_reported() {
        let mut t = TypeInfo::default();
        t.history
            .sent(sent("n1", vec![resource("a", [10, 0, 0, 1])]));
        t.history
            .sent(sent("n2", vec![resource("b", [10, 0, 0, 2])]));
        t.history.answered("n1", true);
        t.history.answered("n2", false);
        t.last_nack = Some(NackInfo {
            nonce: "n2".into(),
            version: "1".into(),
            code: 3,
            message: "bad".into(),
            at: "t".into(),
        });
        t.history.sent(sent("n3", vec![]));
        let reg = registry_with([(ADDRESS_TYPE_URL.to_string(), t)].into());

        for id in ["node1", "ztunnel-node1.istio-system"] {
            let v = config_dump(&reg, Some(id)).unwrap();
            let t = &v["types"][ADDRESS_TYPE_URL];
            assert_eq!(t["lastSent"]["nonce"], "n3");
            assert_eq!(t["lastSent"]["state"], "PENDING");
            assert_eq!(t["lastAcked"]["nonce"], "n1");
            assert_eq!(t["lastAcked"]["resources"][0]["name"], "a");
            assert!(t["lastAcked"]["resources"][0].get("resource").is_none());
            assert_eq!(t["lastNack"]["nonce"], "n2");
            assert_eq!(t["lastNack"]["error"]["message"], "bad");
            let w = &t["lastNack"]["resources"][0]["resource"]["workload"];
            assert_eq!(w["addresses"][0], "10.0.0.2", "{v:#}");
            assert_eq!(t["lastNack"]["removedResources"][0], "gone");
        }
    }

    #[test]
    fn unknown_and_missing_proxy_errors_list_connected_clients() {
        let reg = registry_with(BTreeMap::new());
        let e = config_dump(&reg, Some("node9")).unwrap_err().to_string();
        assert!(
            e.contains("\"node9\"") && e.contains("node1 (ztunnel~"),
            "{e}"
        );
        let e = config_dump(&reg, None).unwrap_err().to_string();
        assert!(e.contains("proxyID=<node name or node id>"), "{e}");
    }
}

//! The enrollment protocol on the node agent's unix stream socket: the plugin writes one JSON
//! request line, the agent answers with one JSON line, then the connection is closed.
//!
//! Request (ADD): `{"op":"add","container_id":..,"netns":..,"ifname":..,
//! "pod":{"namespace":..,"name":..,"uid":..},"ips":[..],"dns_capture":false}`; DEL sends the same
//! with `"op":"del"`. Answer: `{"enrolled":bool,"error":""}` (a non-empty `error` is a refusal).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Where the agent listens unless configured otherwise.
pub const DEFAULT_SOCKET: &str = "/var/run/ambient-rs/cni.sock";
/// Longest request line the agent reads (a sane one is a few hundred bytes).
pub const MAX_LINE: usize = 64 * 1024;

/// Which operation the plugin reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    /// Pod created: enroll it if it belongs in the mesh.
    Add,
    /// Pod deleted: forget it.
    Del,
}

/// The pod in a request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodRef {
    /// Kubernetes namespace.
    pub namespace: String,
    /// Pod name.
    pub name: String,
    /// Pod UID (may be empty).
    #[serde(default)]
    pub uid: String,
}

/// One request line.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Request {
    /// add or del.
    pub op: Op,
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_NETNS` (empty when unknown on DEL).
    #[serde(default)]
    pub netns: PathBuf,
    /// `CNI_IFNAME`.
    #[serde(default)]
    pub ifname: String,
    /// The pod.
    pub pod: PodRef,
    /// Pod IPs from `prevResult` (empty on DEL).
    #[serde(default)]
    pub ips: Vec<String>,
    /// Whether the plugin's rules redirect DNS to 15053 (the agent reinstalls the same rules
    /// when the pod joins the mesh later through a label change).
    #[serde(default)]
    pub dns_capture: bool,
}

/// One answer line.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answer {
    /// The pod is in the mesh and the agent is ready for its traffic: install the rules.
    #[serde(default)]
    pub enrolled: bool,
    /// Non-empty: the agent could not handle the pod.
    #[serde(default)]
    pub error: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_wire_shape() {
        let r: Request = serde_json::from_str(
            r#"{"op":"add","container_id":"c","netns":"/run/netns/a","ifname":"eth0",
                "pod":{"namespace":"ns","name":"p","uid":"u"},"ips":["10.0.0.5"]}"#,
        )
        .expect("parse");
        assert_eq!(r.op, Op::Add);
        assert!(!r.dns_capture, "older plugins omit dns_capture");
        let del: Request = serde_json::from_str(
            r#"{"op":"del","container_id":"c","pod":{"namespace":"ns","name":"p"}}"#,
        )
        .expect("parse del");
        assert_eq!(del.op, Op::Del);
        assert!(del.netns.as_os_str().is_empty());
        assert!(serde_json::from_str::<Request>(r#"{"op":"move"}"#).is_err());
        let a = serde_json::to_string(&Answer {
            enrolled: true,
            error: String::new(),
        })
        .expect("json");
        assert_eq!(a, r#"{"enrolled":true,"error":""}"#);
    }
}

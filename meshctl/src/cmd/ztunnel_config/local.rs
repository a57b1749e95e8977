//! `ztunnel-config --local CLUSTER`: the ztunnels of a `meshctl local` cluster, read inside
//! their node namespaces (the same lookup `describe --local` uses).
//!
//! istioctl reads one ztunnel. A local cluster is small, so by default every node's agent is
//! read and the dumps are merged into one view: workloads, services and policies are
//! mesh-wide (every agent is sent all of them), so each appears once, from the first node that
//! has it; certificates and connections belong to one agent each, so all of them are listed,
//! in node order. `--node N` reads only N's agent and prints its own dump unchanged.

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::{Map, Value};

use super::Ctx;
use crate::cmd::local::waypoint::{self, ADMIN_IN_NETNS};
use crate::dump::{ConfigDump, DumpError};
use crate::error::Error;
use crate::http::Response;

/// The dump's per-section keys; every other top-level key is per agent.
const SECTIONS: [&str; 5] = [
    "workloads",
    "services",
    "policies",
    "certificates",
    "connections",
];

/// The dump to render for `cluster`: node `node`'s own, or every node's merged.
pub fn dump(
    cluster: &str,
    dir: &Path,
    node: Option<&str>,
    ctx: &Ctx<'_>,
) -> Result<ConfigDump, Error> {
    match node {
        Some(node) => {
            let resp = waypoint::ztunnel_dump(cluster, dir, node, ctx.timeout)?;
            parse(node, &resp)
        }
        None => {
            let dumps = waypoint::ztunnel_dumps(cluster, dir, ctx.timeout)?
                .into_iter()
                .map(|(node, resp)| parse(&node, &resp).map(|d| (node, d)))
                .collect::<Result<Vec<_>, _>>()?;
            merge(&dumps).map_err(|e| {
                Error::Usage(format!(
                    "the merged dump of cluster {cluster} does not read back: {e}"
                ))
            })
        }
    }
}

fn parse(node: &str, resp: &Response) -> Result<ConfigDump, Error> {
    let bad = |why: String| Error::BadResponse {
        what: format!("ztunnel of {node}"),
        addr: format!("{ADMIN_IN_NETNS} in its node namespace"),
        path: "/config_dump".into(),
        why,
        hint: "see its log (`meshctl local status` names it); `--node` reads one node's agent only"
            .into(),
    };
    if !(200..300).contains(&resp.status) {
        return Err(bad(resp.summary()));
    }
    ConfigDump::parse(&resp.body).map_err(|e| bad(format!("a body that is not a config dump: {e}")))
}

/// Elements of a section of `raw` (an array, or a map's values).
fn elements(raw: &Value, key: &str) -> Vec<Value> {
    match raw.get(key) {
        Some(Value::Array(a)) => a.clone(),
        Some(Value::Object(m)) => m.values().cloned().collect(),
        _ => Vec::new(),
    }
}

/// What identifies an entry of a mesh-wide section across agents.
fn identity(section: &str, v: &Value) -> String {
    let s = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or_default();
    match section {
        "workloads" if !s("uid").is_empty() => s("uid").to_string(),
        "workloads" => format!("{}/{}/{}", s("namespace"), s("name"), s("node")),
        "services" => format!("{}/{}", s("namespace"), s("hostname")),
        _ => format!("{}/{}", s("namespace"), s("name")),
    }
}

/// Every agent's dump as one: mesh-wide sections de-duplicated (first node wins), per-agent
/// sections concatenated in node order, and each agent's other keys (`config`, `version`,
/// `inpodPods`, ...) under `agents.<node>`.
pub fn merge(dumps: &[(String, ConfigDump)]) -> Result<ConfigDump, DumpError> {
    let mut merged = Map::new();
    for section in ["workloads", "services", "policies"] {
        let mut seen = BTreeSet::new();
        let entries: Vec<Value> = dumps
            .iter()
            .flat_map(|(_, d)| elements(&d.raw, section))
            .filter(|v| seen.insert(identity(section, v)))
            .collect();
        merged.insert(section.into(), Value::Array(entries));
    }
    for section in ["certificates", "connections"] {
        let entries: Vec<Value> = dumps
            .iter()
            .flat_map(|(_, d)| elements(&d.raw, section))
            .collect();
        merged.insert(section.into(), Value::Array(entries));
    }
    let agents: Map<String, Value> = dumps
        .iter()
        .map(|(node, d)| {
            let rest: Map<String, Value> = d
                .raw
                .as_object()
                .into_iter()
                .flatten()
                .filter(|(k, _)| !SECTIONS.contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            (node.clone(), Value::Object(rest))
        })
        .collect();
    merged.insert("agents".into(), Value::Object(agents));
    // Parsed again rather than assembled, so the typed view and `raw` agree entry by entry
    // (`-o json` picks raw entries by the typed view's indices).
    ConfigDump::parse(Value::Object(merged).to_string().as_bytes())
}

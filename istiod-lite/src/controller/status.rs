//! Status of routes and waypoint policies, written by the leader: HTTPRoute and GRPCRoute
//! `status.parents[]` ([`crate::model::gateway_status::route`]) and the `WaypointAccepted`
//! condition of AuthorizationPolicies and RequestAuthentications with `targetRefs`
//! ([`crate::model::gateway_status::policy`]).
//!
//! Works from [`StatusInputs`]: the model's config and, for each such object, its current
//! status, generation and resourceVersion, published together by the Kubernetes source.
//!
//! Writes are JSON merge patches (`application/merge-patch+json`) of the status subresource,
//! conditional on the resourceVersion the status was computed from (a concurrent writer makes
//! it a 409, and the newer object, which the watch delivers, is looked at again). Because a
//! merge patch replaces a list whole, the list written is the current one with only our entries
//! changed: parents of other controllers (another `controllerName`) and conditions of other
//! types stay as they are, in place, as Gateway API requires. Nothing is written when the
//! computed status is already there, and `lastTransitionTime` is kept while a condition's
//! status does not change, so recomputing never produces a write of its own (no loops).
//!
//! Only while this replica leads ([`super::leader`]); a follower computes nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::Client;
use serde_json::{json, Map, Value};
use tokio::sync::watch;

use super::waypoint::FIELD_MANAGER;
use crate::model::gateway_status::policy::{waypoint_accepted, PolicyRefs, WAYPOINT_ACCEPTED};
use crate::model::gateway_status::route::{
    parent_key, parent_statuses, RouteRefs, CONTROLLER_NAME,
};
use crate::model::gateway_status::Condition;
use crate::source::gateway::ObjectRef;
use crate::source::kube::{StatusInputs, StatusObject, WATCHED_KINDS};
use crate::source::{ConfigSnapshot, ObjectKey};

/// Errors of one status write.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// The object's kind is not one istiod-lite watches (a bug, not a cluster problem).
    #[error("no API resource known for kind {0}")]
    UnknownKind(&'static str),
    /// The PATCH failed.
    #[error("writing the status of {kind} {namespace}/{name}: {source} (RBAC: patch on its status subresource?)")]
    Api {
        /// Kind.
        kind: &'static str,
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
        /// The API error.
        source: Box<kube::Error>,
    },
}

impl StatusError {
    /// True for a 409 Conflict: the object changed since its status was computed.
    pub fn is_conflict(&self) -> bool {
        matches!(self, StatusError::Api { source, .. } if matches!(&**source, kube::Error::Api(s) if s.code == 409))
    }
}

/// Tunables of [`StatusWriter`].
#[derive(Debug, Clone)]
pub struct StatusSettings {
    /// Mesh root namespace (policies targeting the GatewayClass must live there).
    pub root_namespace: String,
    /// First retry delay after a failed write; doubles up to [`Self::max_retry`].
    pub retry: Duration,
    /// Longest retry delay.
    pub max_retry: Duration,
}

impl StatusSettings {
    /// Defaults for `root_namespace`.
    pub fn new(root_namespace: &str) -> Self {
        StatusSettings {
            root_namespace: root_namespace.to_string(),
            retry: Duration::from_secs(1),
            max_retry: Duration::from_secs(60),
        }
    }
}

/// One status write.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusPatch {
    /// The object, as the status was computed from it.
    pub object: Arc<StatusObject>,
    /// The merge patch: `metadata.resourceVersion` and the changed `status` list.
    pub body: Value,
}

/// Now, to the second, as Kubernetes writes condition times.
pub fn now_rfc3339() -> String {
    Timestamp::from_second(Timestamp::now().as_second())
        .unwrap_or(Timestamp::UNIX_EPOCH)
        .to_string()
}

/// `lastTransitionTime` of condition `type_` becoming `status`: kept from `existing` while
/// the status is unchanged, else `now`.
pub fn transition_time(existing: &[Value], type_: &str, status: &str, now: &str) -> String {
    existing
        .iter()
        .find(|c| c["type"] == type_ && c["status"] == status)
        .and_then(|c| c["lastTransitionTime"].as_str())
        .unwrap_or(now)
        .to_string()
}

/// A condition as Kubernetes stores it; `generation` is the observedGeneration value (a number
/// for Gateway API, a string for Istio's kinds, as Istio writes its int64 through protobuf JSON).
fn condition_json(c: &Condition, generation: Value, existing: &[Value], now: &str) -> Value {
    json!({
        "type": c.kind,
        "status": c.status,
        "reason": c.reason,
        "message": c.message,
        "observedGeneration": generation,
        "lastTransitionTime": transition_time(existing, c.kind, c.status, now),
    })
}

fn as_list(v: &Value) -> Vec<Value> {
    v.as_array().cloned().unwrap_or_default()
}

/// The new `status.parents` of route `obj` (None when it already shows it).
fn route_parents(cfg: &ConfigSnapshot, obj: &StatusObject, now: &str) -> Option<Vec<Value>> {
    let ns = &obj.key.namespace;
    let refs = RouteRefs::from_spec(ns, &obj.spec, obj.invalid.clone());
    let ours = parent_statuses(cfg, &refs);
    let written_refs = as_list(&obj.spec["parentRefs"]);
    let current = as_list(&obj.status["parents"]);
    let render = |i: usize, existing: Option<&Value>| {
        let ps = &ours[i];
        let old = existing
            .map(|e| as_list(&e["conditions"]))
            .unwrap_or_default();
        json!({
            // Echoed as written (and defaulted by the API server), so clients can match it.
            "parentRef": written_refs.get(ps.index).cloned().unwrap_or_else(|| json!(ps.parent_ref)),
            "controllerName": CONTROLLER_NAME,
            "conditions": ps.conditions.iter()
                .map(|c| condition_json(c, json!(obj.generation), &old, now))
                .collect::<Vec<_>>(),
        })
    };
    let index: BTreeMap<String, usize> = ours
        .iter()
        .enumerate()
        .map(|(i, ps)| (parent_key(&ps.parent_ref, ns), i))
        .collect();
    let mut placed = BTreeSet::new();
    let mut merged = Vec::with_capacity(current.len().max(ours.len()));
    for entry in &current {
        if entry["controllerName"] != CONTROLLER_NAME {
            merged.push(entry.clone());
            continue;
        }
        // Ours: updated in place, or dropped when the parentRef is gone (or repeated).
        let key = serde_json::from_value::<ObjectRef>(entry["parentRef"].clone())
            .ok()
            .map(|r| parent_key(&r, ns));
        if let Some(&i) = key.as_ref().and_then(|k| index.get(k)) {
            if placed.insert(i) {
                merged.push(render(i, Some(entry)));
            }
        }
    }
    for i in 0..ours.len() {
        if !placed.contains(&i) {
            merged.push(render(i, None));
        }
    }
    (merged != current).then_some(merged)
}

/// The new `status.conditions` of policy `obj` (None when it already shows it).
fn policy_conditions(
    cfg: &ConfigSnapshot,
    root_ns: &str,
    obj: &StatusObject,
    now: &str,
) -> Option<Vec<Value>> {
    let refs = PolicyRefs::from_spec(obj.kind, &obj.key.namespace, &obj.spec, obj.invalid.clone());
    let want = waypoint_accepted(cfg, root_ns, &refs);
    let current = as_list(&obj.status["conditions"]);
    let mut merged = Vec::with_capacity(current.len() + 1);
    let mut done = false;
    for c in &current {
        if c["type"] != WAYPOINT_ACCEPTED {
            merged.push(c.clone());
        } else if let (Some(w), false) = (&want, done) {
            merged.push(condition_json(
                w,
                json!(obj.generation.to_string()),
                &current,
                now,
            ));
            done = true;
        }
        // A WaypointAccepted we no longer compute (targetRefs removed) is dropped.
    }
    if let (Some(w), false) = (&want, done) {
        merged.push(condition_json(
            w,
            json!(obj.generation.to_string()),
            &current,
            now,
        ));
    }
    (merged != current).then_some(merged)
}

/// The status writes that make every object of `inputs` show what the config gives it;
/// objects already showing it are left out. `now` stamps conditions whose status changes.
pub fn patches(inputs: &StatusInputs, root_ns: &str, now: &str) -> Vec<StatusPatch> {
    let cfg = &inputs.config;
    inputs
        .objects
        .iter()
        .filter_map(|obj| {
            let status = match obj.kind {
                "HTTPRoute" | "GRPCRoute" => json!({"parents": route_parents(cfg, obj, now)?}),
                "AuthorizationPolicy" | "RequestAuthentication" => {
                    json!({"conditions": policy_conditions(cfg, root_ns, obj, now)?})
                }
                _ => return None,
            };
            let mut meta = Map::new();
            meta.insert(
                "resourceVersion".into(),
                obj.resource_version.clone().into(),
            );
            Some(StatusPatch {
                object: obj.clone(),
                body: json!({"metadata": meta, "status": status}),
            })
        })
        .collect()
}

/// Writes route and policy status while this replica leads.
pub struct StatusWriter {
    client: Client,
    s: StatusSettings,
}

impl StatusWriter {
    /// A writer patching through `client`.
    pub fn new(client: Client, settings: StatusSettings) -> Self {
        StatusWriter {
            client,
            s: settings,
        }
    }

    /// Sends one patch.
    pub async fn write(&self, p: &StatusPatch) -> Result<(), StatusError> {
        let o = &p.object;
        let wk = WATCHED_KINDS
            .iter()
            .find(|k| k.kind == o.kind)
            .ok_or(StatusError::UnknownKind(o.kind))?;
        let api: Api<DynamicObject> =
            Api::namespaced_with(self.client.clone(), &o.key.namespace, &wk.api_resource());
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.to_string()),
            ..Default::default()
        };
        api.patch_status(&o.key.name, &params, &Patch::Merge(&p.body))
            .await
            .map(|_| ())
            .map_err(|source| StatusError::Api {
                kind: o.kind,
                namespace: o.key.namespace.clone(),
                name: o.key.name.clone(),
                source: Box::new(source),
            })
    }

    /// Writes what `inputs` calls for, skipping objects in `pending` (written from that
    /// resourceVersion, the write not seen yet). True when every write succeeded or lost a
    /// conflict (the newer object comes with the next inputs).
    async fn sync(
        &self,
        inputs: &StatusInputs,
        pending: &mut BTreeMap<(&'static str, ObjectKey), String>,
    ) -> bool {
        // Forget writes the watch has caught up with.
        pending.retain(|(kind, key), rv| {
            inputs
                .objects
                .iter()
                .any(|o| o.kind == *kind && o.key == *key && o.resource_version == *rv)
        });
        let mut ok = true;
        for p in patches(inputs, &self.s.root_namespace, &now_rfc3339()) {
            let id = (p.object.kind, p.object.key.clone());
            if pending.get(&id) == Some(&p.object.resource_version) {
                continue;
            }
            match self.write(&p).await {
                Ok(()) => {
                    tracing::info!(kind = p.object.kind, object = %p.object.key, "status written");
                    pending.insert(id, p.object.resource_version.clone());
                }
                Err(e) if e.is_conflict() => {
                    tracing::debug!(kind = p.object.kind, object = %p.object.key, "status write lost a conflict; the newer object decides");
                }
                Err(e) => {
                    tracing::warn!(error = %e, "status write failed; retrying");
                    ok = false;
                }
            }
        }
        ok
    }

    /// Keeps status in sync with `inputs` while `leader` is true, until `shutdown`.
    pub async fn run(
        self,
        mut inputs: watch::Receiver<Arc<StatusInputs>>,
        mut leader: watch::Receiver<bool>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut pending = BTreeMap::new();
        let mut failures: u32 = 0;
        loop {
            let retry = if *leader.borrow_and_update() {
                let current = inputs.borrow_and_update().clone();
                if self.sync(&current, &mut pending).await {
                    failures = 0;
                    None
                } else {
                    failures = failures.saturating_add(1);
                    Some(
                        self.s
                            .retry
                            .saturating_mul(1 << failures.min(16).saturating_sub(1))
                            .min(self.s.max_retry),
                    )
                }
            } else {
                // A new leader starts from what the objects show.
                pending.clear();
                failures = 0;
                None
            };
            let wait_retry = async {
                match retry {
                    Some(d) => tokio::time::sleep(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = shutdown.wait_for(|s| *s) => return,
                r = leader.changed() => if r.is_err() { return },
                r = inputs.changed() => if r.is_err() { return },
                _ = wait_retry => {}
            }
        }
    }
}

#[cfg(test)]
mod tests;

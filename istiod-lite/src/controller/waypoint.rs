//! Waypoint controller: for each Gateway of class `istio-waypoint`, a ServiceAccount, Service
//! and Deployment named after it and owned by it (garbage-collected with it), applied with
//! server-side apply (field manager `istiod-lite`), and the Gateway's `Accepted` and
//! `Programmed` conditions and `status.addresses` written.
//!
//! Reconciles when a waypoint Gateway's generation changes, when this replica becomes the
//! leader, and every [`WaypointSettings::resync`] (repairing drift of the owned objects).

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::StreamExt;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::runtime::watcher;
use kube::Client;
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::source::gateway::{GATEWAY_NAME_LABEL, WAYPOINT_CLASS, WAYPOINT_PORT};
use crate::source::ObjectKey;

/// Field manager of everything this controller writes.
pub const FIELD_MANAGER: &str = "istiod-lite";
/// ConfigMap with the mesh root certificate (Istio's name), mounted into waypoints.
pub const ROOT_CERT_CONFIGMAP: &str = "istio-ca-root-cert";

/// Errors of one reconcile.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    /// The Gateway object lacks a field every API object has.
    #[error("Gateway has no metadata.{0}")]
    MissingMeta(&'static str),
    /// An API call failed.
    #[error("{what} {namespace}/{name}: {source}")]
    Api {
        /// What was being written.
        what: &'static str,
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
        /// The API error.
        source: Box<kube::Error>,
    },
}

/// What waypoint Deployments are made of.
#[derive(Debug, Clone)]
pub struct WaypointSettings {
    /// Waypoint container image.
    pub image: String,
    /// `XDS_ADDRESS` (and `CA_ADDRESS`) of waypoints: istiod-lite's TLS endpoint.
    pub xds_address: String,
    /// Trust domain.
    pub trust_domain: String,
    /// Cluster id.
    pub cluster_id: String,
    /// Audience of the waypoint's projected token.
    pub token_audience: String,
    /// DNS suffix of Services, for `status.addresses`.
    pub cluster_domain: String,
    /// Full reconcile interval.
    pub resync: Duration,
}

fn api_resource(group: &str, version: &str, kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural)
}

fn gateway_resource() -> ApiResource {
    api_resource("gateway.networking.k8s.io", "v1", "Gateway", "gateways")
}

/// True for a Gateway of class `istio-waypoint`.
pub fn is_waypoint(gw: &DynamicObject) -> bool {
    gw.data["spec"]["gatewayClassName"].as_str() == Some(WAYPOINT_CLASS)
}

/// The waypoint controller.
pub struct WaypointController {
    client: Client,
    s: WaypointSettings,
}

impl WaypointController {
    /// A controller writing through `client`.
    pub fn new(client: Client, settings: WaypointSettings) -> Self {
        WaypointController {
            client,
            s: settings,
        }
    }

    /// The ServiceAccount, Service and Deployment of waypoint Gateway `gw`, as apply patches.
    pub fn desired(&self, gw: &DynamicObject) -> Result<[Value; 3], ControllerError> {
        let name = gw
            .metadata
            .name
            .as_deref()
            .ok_or(ControllerError::MissingMeta("name"))?;
        let ns = gw
            .metadata
            .namespace
            .as_deref()
            .ok_or(ControllerError::MissingMeta("namespace"))?;
        let uid = gw
            .metadata
            .uid
            .as_deref()
            .ok_or(ControllerError::MissingMeta("uid"))?;
        let owner = json!([{
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
            "name": name, "uid": uid, "controller": true,
        }]);
        let labels = json!({
            GATEWAY_NAME_LABEL: name,
            "gateway.istio.io/managed": "istio.io-mesh-controller",
            "app.kubernetes.io/managed-by": FIELD_MANAGER,
        });
        let meta =
            json!({"name": name, "namespace": ns, "labels": labels, "ownerReferences": owner});
        let selector = json!({GATEWAY_NAME_LABEL: name});

        let sa = json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta});
        let svc = json!({
            "apiVersion": "v1", "kind": "Service", "metadata": meta,
            "spec": {
                "selector": selector,
                "ports": [
                    {"name": "mesh", "port": WAYPOINT_PORT, "targetPort": WAYPOINT_PORT, "protocol": "TCP", "appProtocol": "all"},
                    {"name": "status-port", "port": 15021, "targetPort": 15021, "protocol": "TCP"},
                    {"name": "http-monitoring", "port": 15020, "targetPort": 15020, "protocol": "TCP"},
                ],
            },
        });
        let field = |path: &str| json!({"valueFrom": {"fieldRef": {"fieldPath": path}}});
        let mut env = vec![
            json!({"name": "XDS_ADDRESS", "value": self.s.xds_address}),
            json!({"name": "CA_ADDRESS", "value": self.s.xds_address}),
            json!({"name": "XDS_ROOT_CA", "value": "/var/run/secrets/istio/root-cert.pem"}),
            json!({"name": "AUTH_TOKEN", "value": "/var/run/secrets/tokens/istio-token"}),
            json!({"name": "GATEWAY_NAME", "value": name}),
            json!({"name": "TRUST_DOMAIN", "value": self.s.trust_domain}),
            json!({"name": "CLUSTER_ID", "value": self.s.cluster_id}),
        ];
        for (var, path) in [
            ("POD_NAMESPACE", "metadata.namespace"),
            ("POD_NAME", "metadata.name"),
            ("INSTANCE_IP", "status.podIP"),
        ] {
            let mut v = field(path);
            v["name"] = var.into();
            env.push(v);
        }
        let deploy = json!({
            "apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta,
            "spec": {
                "selector": {"matchLabels": selector},
                "template": {
                    "metadata": {
                        "labels": {
                            GATEWAY_NAME_LABEL: name,
                            "gateway.istio.io/managed": "istio.io-mesh-controller",
                            // The waypoint terminates HBONE itself: ztunnel must not capture it.
                            "istio.io/dataplane-mode": "none",
                        },
                        "annotations": {
                            "prometheus.io/scrape": "true",
                            "prometheus.io/port": "15020",
                            "prometheus.io/path": "/stats/prometheus",
                        },
                    },
                    "spec": {
                        "serviceAccountName": name,
                        "automountServiceAccountToken": false,
                        "terminationGracePeriodSeconds": 30,
                        "securityContext": {
                            "runAsNonRoot": true, "runAsUser": 1337, "runAsGroup": 1337,
                            "seccompProfile": {"type": "RuntimeDefault"},
                        },
                        "containers": [{
                            "name": "waypoint",
                            "image": self.s.image,
                            "env": env,
                            "ports": [
                                {"name": "mesh", "containerPort": WAYPOINT_PORT, "protocol": "TCP"},
                                {"name": "http-monitoring", "containerPort": 15020, "protocol": "TCP"},
                                {"name": "status-port", "containerPort": 15021, "protocol": "TCP"},
                            ],
                            "readinessProbe": {
                                "httpGet": {"path": "/healthz/ready", "port": 15021},
                                "periodSeconds": 5, "failureThreshold": 4,
                            },
                            "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}},
                            "securityContext": {
                                "allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
                                "capabilities": {"drop": ["ALL"]},
                            },
                            "volumeMounts": [
                                {"name": "istio-token", "mountPath": "/var/run/secrets/tokens", "readOnly": true},
                                {"name": "istiod-ca-cert", "mountPath": "/var/run/secrets/istio", "readOnly": true},
                            ],
                        }],
                        "volumes": [
                            {"name": "istio-token", "projected": {"sources": [{"serviceAccountToken": {
                                "audience": self.s.token_audience, "expirationSeconds": 43200, "path": "istio-token"}}]}},
                            {"name": "istiod-ca-cert", "configMap": {"name": ROOT_CERT_CONFIGMAP}},
                        ],
                    },
                },
            },
        });
        Ok([sa, svc, deploy])
    }

    /// Applies the owned objects of `gw` and writes its status.
    pub async fn reconcile(&self, gw: &DynamicObject) -> Result<(), ControllerError> {
        let name = gw
            .metadata
            .name
            .clone()
            .ok_or(ControllerError::MissingMeta("name"))?;
        let ns = gw
            .metadata
            .namespace
            .clone()
            .ok_or(ControllerError::MissingMeta("namespace"))?;
        let [sa, svc, deploy] = self.desired(gw)?;
        let params = PatchParams::apply(FIELD_MANAGER).force();
        let mut failure = None;
        for (what, ar, obj) in [
            (
                "ServiceAccount",
                api_resource("", "v1", "ServiceAccount", "serviceaccounts"),
                sa,
            ),
            (
                "Service",
                api_resource("", "v1", "Service", "services"),
                svc,
            ),
            (
                "Deployment",
                api_resource("apps", "v1", "Deployment", "deployments"),
                deploy,
            ),
        ] {
            let api: Api<DynamicObject> = Api::namespaced_with(self.client.clone(), &ns, &ar);
            if let Err(source) = api.patch(&name, &params, &Patch::Apply(&obj)).await {
                failure = Some(ControllerError::Api {
                    what,
                    namespace: ns.clone(),
                    name: name.clone(),
                    source: Box::new(source),
                });
                break;
            }
        }
        let programmed = match &failure {
            None => (
                "True",
                "Programmed",
                format!("waypoint Deployment, Service and ServiceAccount {name} are applied"),
            ),
            Some(e) => (
                "False",
                "NoResources",
                format!("applying the waypoint failed: {e}"),
            ),
        };
        let hostname = format!("{name}.{ns}.svc.{}", self.s.cluster_domain);
        let status = desired_status(gw, programmed, &hostname);
        if status_matches(gw, &status) {
            tracing::debug!(gateway = %ObjectKey::new(&ns, &name), "status up to date");
        } else {
            let api: Api<DynamicObject> =
                Api::namespaced_with(self.client.clone(), &ns, &gateway_resource());
            let patch = json!({
                "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
                "metadata": {"name": name, "namespace": ns},
                "status": status,
            });
            api.patch_status(&name, &params, &Patch::Apply(&patch))
                .await
                .map_err(|source| ControllerError::Api {
                    what: "Gateway status",
                    namespace: ns.clone(),
                    name: name.clone(),
                    source: Box::new(source),
                })?;
        }
        match failure {
            Some(e) => Err(e),
            None => {
                tracing::info!(gateway = %ObjectKey::new(&ns, &name), "waypoint reconciled");
                Ok(())
            }
        }
    }

    /// Watches Gateways and reconciles waypoints while `leader` is true, until `shutdown`.
    pub async fn run(self, mut leader: watch::Receiver<bool>, mut shutdown: watch::Receiver<bool>) {
        let api: Api<DynamicObject> = Api::all_with(self.client.clone(), &gateway_resource());
        let mut gateways: BTreeMap<ObjectKey, DynamicObject> = BTreeMap::new();
        let mut pending: BTreeMap<ObjectKey, DynamicObject> = BTreeMap::new();
        // (uid, generation) last reconciled, so status-only updates do not re-apply.
        let mut done: BTreeMap<ObjectKey, (String, i64)> = BTreeMap::new();
        let mut stream = std::pin::pin!(watcher(api, watcher::Config::default()));
        let mut resync = tokio::time::interval(self.s.resync);
        let mut failures: u32 = 0;
        let mut backoff: Option<Duration> = None;
        loop {
            let mut todo: Vec<DynamicObject> = Vec::new();
            tokio::select! {
                _ = shutdown.wait_for(|s| *s) => return,
                r = leader.changed() => {
                    if r.is_err() { return; }
                    let now_leader = *leader.borrow_and_update();
                    if now_leader {
                        done.clear();
                        todo.extend(gateways.values().cloned());
                    }
                }
                _ = resync.tick() => {
                    done.clear();
                    todo.extend(gateways.values().cloned());
                }
                ev = stream.next() => match ev {
                    None => return,
                    Some(Ok(watcher::Event::Init)) => pending.clear(),
                    Some(Ok(watcher::Event::InitApply(gw))) => {
                        if is_waypoint(&gw) { pending.insert(key_of(&gw), gw); }
                    }
                    Some(Ok(watcher::Event::InitDone)) => {
                        gateways = std::mem::take(&mut pending);
                        todo.extend(gateways.values().cloned());
                        failures = 0;
                    }
                    Some(Ok(watcher::Event::Apply(gw))) => {
                        let k = key_of(&gw);
                        if is_waypoint(&gw) {
                            gateways.insert(k, gw.clone());
                            todo.push(gw);
                        } else {
                            gateways.remove(&k);
                        }
                    }
                    Some(Ok(watcher::Event::Delete(gw))) => {
                        // Owned objects are garbage-collected by Kubernetes.
                        let k = key_of(&gw);
                        gateways.remove(&k);
                        done.remove(&k);
                    }
                    Some(Err(e)) => {
                        failures = failures.saturating_add(1);
                        let delay = Duration::from_millis(500)
                            .saturating_mul(1 << failures.min(6))
                            .min(Duration::from_secs(60));
                        tracing::warn!(error = %e, retry_in = ?delay, "watching Gateways failed (Gateway API CRDs installed?)");
                        backoff = Some(delay);
                    }
                }
            }
            if let Some(d) = backoff.take() {
                tokio::time::sleep(d).await;
            }
            let is_leader = *leader.borrow();
            if !is_leader {
                continue;
            }
            for gw in todo {
                let k = key_of(&gw);
                let stamp = (
                    gw.metadata.uid.clone().unwrap_or_default(),
                    gw.metadata.generation.unwrap_or(0),
                );
                if done.get(&k) == Some(&stamp) {
                    continue;
                }
                match self.reconcile(&gw).await {
                    Ok(()) => {
                        done.insert(k, stamp);
                    }
                    Err(e) => {
                        done.remove(&k);
                        tracing::error!(gateway = %k, error = %e, "waypoint reconcile failed; retrying at the next resync");
                    }
                }
            }
        }
    }
}

fn key_of(o: &DynamicObject) -> ObjectKey {
    ObjectKey::new(
        o.metadata.namespace.clone().unwrap_or_default(),
        o.metadata.name.clone().unwrap_or_default(),
    )
}

/// The status we want, keeping `lastTransitionTime` of conditions whose status is unchanged.
fn desired_status(gw: &DynamicObject, programmed: (&str, &str, String), hostname: &str) -> Value {
    let generation = gw.metadata.generation.unwrap_or(0);
    let now = super::status::now_rfc3339();
    let existing = gw.data["status"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let cond = |type_: &str, status: &str, reason: &str, message: String| {
        let since = super::status::transition_time(&existing, type_, status, &now);
        json!({"type": type_, "status": status, "reason": reason, "message": message,
               "observedGeneration": generation, "lastTransitionTime": since})
    };
    let (p_status, p_reason, p_message) = programmed;
    json!({
        "addresses": [{"type": "Hostname", "value": hostname}],
        "conditions": [
            cond("Accepted", "True", "Accepted", "waypoint accepted by istiod-lite".into()),
            cond("Programmed", p_status, p_reason, p_message),
        ],
    })
}

/// True when `gw` already shows `status` (conditions compared on everything they carry).
fn status_matches(gw: &DynamicObject, status: &Value) -> bool {
    let cur = &gw.data["status"];
    if cur["addresses"] != status["addresses"] {
        return false;
    }
    let Some(want) = status["conditions"].as_array() else {
        return false;
    };
    want.iter().all(|w| {
        cur["conditions"].as_array().into_iter().flatten().any(|c| {
            [
                "type",
                "status",
                "reason",
                "message",
                "observedGeneration",
                "lastTransitionTime",
            ]
            .iter()
            .all(|k| c[k] == w[k])
        })
    })
}

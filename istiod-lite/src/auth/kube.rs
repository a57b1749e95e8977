//! Kubernetes mode authentication: bound ServiceAccount tokens checked by TokenReview, and
//! Istio's node authorizer.
//!
//! A caller presents a projected token (audience `istio-ca` by default). The API server reviews
//! it (`authentication.k8s.io/v1` TokenReview); a valid token names a ServiceAccount and, being
//! bound, the pod it was issued for (`authentication.kubernetes.io/pod-name` / `pod-uid`). That
//! pod must still exist with the same uid and service account. Then:
//! * the ztunnel ServiceAccount (default `ztunnel` in istiod's namespace) becomes
//!   [`Principal::Node`] of the pod's node: the CA then issues only identities of pods on that
//!   node (see `ca.rs`), as Istio's NodeAuthorizer does;
//! * the ServiceAccount of a waypoint (named after its `istio-waypoint` Gateway) becomes
//!   [`Principal::Waypoint`]: exactly its own identity and its own routes;
//! * anything else is refused.
//!
//! Every doubt (review error, token not bound to a pod, pod gone or replaced, node mismatch) is
//! a refusal. Results are cached briefly by a SHA-256 of the token; tokens are never logged.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use kube::Client;
use ring::digest;
use tokio::sync::watch;

use super::{AuthError, Principal};
use crate::source::{ConfigSnapshot, ObjectKey};

/// Extra claim of a bound token: the pod it was issued for.
pub const POD_NAME_CLAIM: &str = "authentication.kubernetes.io/pod-name";
/// Extra claim of a bound token: that pod's uid.
pub const POD_UID_CLAIM: &str = "authentication.kubernetes.io/pod-uid";
/// Extra claim of a bound token (Kubernetes 1.30+): the pod's node.
pub const NODE_NAME_CLAIM: &str = "authentication.kubernetes.io/node-name";
const SA_PREFIX: &str = "system:serviceaccount:";
/// Bound on cached results (a cache flush is cheap; an unbounded map is not).
const MAX_CACHE: usize = 10_000;

/// Settings of [`KubeAuthenticator`].
#[derive(Debug, Clone)]
pub struct KubeAuthSettings {
    /// Audience the tokens must carry (`istio-ca`).
    pub audience: String,
    /// Namespace of the ztunnel ServiceAccount.
    pub ztunnel_namespace: String,
    /// Name of the ztunnel ServiceAccount.
    pub ztunnel_service_account: String,
    /// How long an accepted token is trusted without a new review.
    pub cache_ttl: Duration,
    /// How long a refused token stays refused without a new review.
    pub negative_cache_ttl: Duration,
}

impl KubeAuthSettings {
    /// Istio's defaults for a control plane in `namespace`.
    pub fn new(namespace: &str) -> Self {
        KubeAuthSettings {
            audience: "istio-ca".into(),
            ztunnel_namespace: namespace.to_string(),
            ztunnel_service_account: "ztunnel".into(),
            cache_ttl: Duration::from_secs(60),
            negative_cache_ttl: Duration::from_secs(5),
        }
    }
}

/// A cached verdict: the principal, or (unauthenticated?, reason).
type Verdict = Result<Principal, (bool, String)>;

/// Authenticates callers by TokenReview and authorizes them as Istio's node authorizer does.
pub struct KubeAuthenticator {
    client: Client,
    config: watch::Receiver<Arc<ConfigSnapshot>>,
    settings: KubeAuthSettings,
    cache: Mutex<HashMap<[u8; 32], (Instant, Verdict)>>,
}

impl std::fmt::Debug for KubeAuthenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeAuthenticator")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// Why a review did not produce a principal; `cache` is false for transient failures.
struct Denied {
    unauthenticated: bool,
    cache: bool,
    reason: String,
}

fn forbidden(reason: impl Into<String>) -> Denied {
    Denied {
        unauthenticated: false,
        cache: true,
        reason: reason.into(),
    }
}

impl KubeAuthenticator {
    /// Reviews tokens with `client`; waypoints are recognised from the Gateways of `config`.
    pub fn new(
        client: Client,
        config: watch::Receiver<Arc<ConfigSnapshot>>,
        settings: KubeAuthSettings,
    ) -> Self {
        KubeAuthenticator {
            client,
            config,
            settings,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// Who `token` belongs to, or why it is refused.
    pub async fn authenticate(&self, token: &str) -> Result<Principal, AuthError> {
        let key: [u8; 32] = {
            let d = digest::digest(&digest::SHA256, token.as_bytes());
            let mut k = [0u8; 32];
            k.copy_from_slice(d.as_ref());
            k
        };
        let cached = {
            let cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
            cache
                .get(&key)
                .filter(|(until, _)| *until > Instant::now())
                .map(|(_, v)| v.clone())
        };
        let verdict = match cached {
            Some(v) => v,
            None => {
                let result = self.review(token).await;
                let (verdict, ttl) = match result {
                    Ok(p) => {
                        tracing::debug!(principal = %p, "token reviewed");
                        (Ok(p), Some(self.settings.cache_ttl))
                    }
                    Err(d) => {
                        tracing::warn!(reason = %d.reason, "token refused");
                        let ttl = d.cache.then_some(self.settings.negative_cache_ttl);
                        (Err((d.unauthenticated, d.reason)), ttl)
                    }
                };
                if let Some(ttl) = ttl {
                    let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
                    if cache.len() >= MAX_CACHE {
                        let now = Instant::now();
                        cache.retain(|_, (until, _)| *until > now);
                        if cache.len() >= MAX_CACHE {
                            cache.clear();
                        }
                    }
                    cache.insert(key, (Instant::now() + ttl, verdict.clone()));
                }
                verdict
            }
        };
        verdict.map_err(|(unauthenticated, reason)| {
            if unauthenticated {
                AuthError::TokenRejected(reason)
            } else {
                AuthError::Forbidden(reason)
            }
        })
    }

    async fn review(&self, token: &str) -> Result<Principal, Denied> {
        let audience = &self.settings.audience;
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_string()),
                audiences: Some(vec![audience.clone()]),
            },
            ..Default::default()
        };
        let api: Api<TokenReview> = Api::all(self.client.clone());
        let reviewed = api
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| Denied {
                unauthenticated: false,
                cache: false,
                reason: format!(
                    "TokenReview failed (istiod-lite needs RBAC create on tokenreviews): {e}"
                ),
            })?;
        let status = reviewed.status.unwrap_or_default();
        if status.authenticated != Some(true) {
            return Err(Denied {
                unauthenticated: true,
                cache: true,
                reason: status
                    .error
                    .filter(|e| !e.is_empty())
                    .unwrap_or_else(|| "token is not valid".into()),
            });
        }
        // Without audiences in the status the token is valid for the API server only.
        if !status
            .audiences
            .as_deref()
            .unwrap_or_default()
            .iter()
            .any(|a| a == audience)
        {
            return Err(Denied {
                unauthenticated: true,
                cache: true,
                reason: format!(
                    "token is not for audience {audience:?} (project a token with that audience)"
                ),
            });
        }
        let user = status.user.unwrap_or_default();
        let username = user.username.unwrap_or_default();
        let (ns, sa) = username
            .strip_prefix(SA_PREFIX)
            .and_then(|r| r.split_once(':'))
            .filter(|(ns, sa)| !ns.is_empty() && !sa.is_empty())
            .ok_or_else(|| forbidden(format!("{username:?} is not a ServiceAccount")))?;
        let extra = user.extra.unwrap_or_default();
        let claim = |k: &str| -> Option<String> {
            match extra.get(k).map(Vec::as_slice) {
                Some([v]) if !v.is_empty() => Some(v.clone()),
                _ => None,
            }
        };
        let (Some(pod_name), Some(pod_uid)) = (claim(POD_NAME_CLAIM), claim(POD_UID_CLAIM)) else {
            return Err(forbidden(format!(
                "the token of {ns}/{sa} is not bound to a pod (use a projected ServiceAccount token)"
            )));
        };

        let is_ztunnel =
            ns == self.settings.ztunnel_namespace && sa == self.settings.ztunnel_service_account;
        let waypoint = !is_ztunnel && {
            let cfg = self.config.borrow();
            cfg.gateways
                .get(&ObjectKey::new(ns, sa))
                .is_some_and(|g| g.is_waypoint())
        };
        if !is_ztunnel && !waypoint {
            return Err(forbidden(format!(
                "service account {ns}/{sa} is neither the ztunnel service account ({}/{}) nor a waypoint's (no istio-waypoint Gateway {ns}/{sa})",
                self.settings.ztunnel_namespace, self.settings.ztunnel_service_account
            )));
        }

        // The pod the token was issued for must still exist, be the same pod, and run as `sa`.
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        let pod = pods.get_opt(&pod_name).await.map_err(|e| Denied {
            unauthenticated: false,
            cache: false,
            reason: format!("looking up pod {ns}/{pod_name} failed: {e}"),
        })?;
        let pod = pod
            .ok_or_else(|| forbidden(format!("pod {ns}/{pod_name} of the token does not exist")))?;
        if pod.metadata.uid.as_deref() != Some(pod_uid.as_str()) {
            return Err(forbidden(format!(
                "pod {ns}/{pod_name} was replaced (uid differs from the token's)"
            )));
        }
        let spec = pod.spec.unwrap_or_default();
        if spec.service_account_name.as_deref().unwrap_or("default") != sa {
            return Err(forbidden(format!(
                "pod {ns}/{pod_name} does not run as service account {sa}"
            )));
        }
        if !is_ztunnel {
            return Ok(Principal::Waypoint {
                namespace: ns.to_string(),
                name: sa.to_string(),
            });
        }
        let node = spec.node_name.filter(|n| !n.is_empty()).ok_or_else(|| {
            forbidden(format!(
                "ztunnel pod {ns}/{pod_name} is not scheduled on a node"
            ))
        })?;
        if let Some(claimed) = claim(NODE_NAME_CLAIM) {
            if claimed != node {
                return Err(forbidden(format!(
                    "ztunnel pod {ns}/{pod_name} runs on node {node:?} but its token names node {claimed:?}"
                )));
            }
        }
        Ok(Principal::Node(node))
    }
}

#[cfg(test)]
#[path = "kube/tests.rs"]
mod tests;

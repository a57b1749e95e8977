//! AuthorizationPolicy → `istio.security.Authorization`.
//!
//! No policy kinds are read yet, so this produces no resources; the type is still served so
//! ztunnel receives its first Authorization response and becomes ready. Resource names are
//! `<namespace>/<name>`, the same strings workloads will list in `authorization_policies`.

use mesh_proto::security::Authorization;

use crate::source::ConfigSnapshot;

/// `<namespace>/<name>`.
pub fn policy_key(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

/// All authorization policies, keyed by `<namespace>/<name>`.
pub fn translate(_cfg: &ConfigSnapshot) -> Vec<(String, Authorization)> {
    Vec::new()
}

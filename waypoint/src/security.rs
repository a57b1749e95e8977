//! The waypoint's L7 security hook, run on every HTTP request before routing:
//! trace context ([`crate::trace`]), path normalization, RequestAuthentication
//! ([`crate::jwt`]: invalid token → 401) and AuthorizationPolicy ([`crate::authz`]: denied →
//! 403 `RBAC: access denied`).
//!
//! The per-Service security (`ServiceRoutes.security`) is compiled by the xDS handler into a
//! [`SecurityTable`] published on its own `watch` channel, so policy changes apply to requests
//! on existing connections too.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use http::{HeaderValue, Request, Response, StatusCode};
use mesh_identity::spiffe::Identity;
use mesh_proto::route as pb;
use tracing::debug;

use crate::authz::{normalize_path, Attributes, Policies};
use crate::jwt::{JwksRegistry, Provider};
use crate::metrics::RequestRecord;
use crate::proxy::RespBody;
use crate::trace::RequestSpan;

/// JWKS fetches that failed.
pub const JWKS_FETCH_ERRORS: &str = "waypoint_jwks_fetch_errors_total";
/// Requests refused by RequestAuthentication (401), by reason.
pub const JWT_REJECTED: &str = "waypoint_jwt_rejected_total";
/// Requests refused by AuthorizationPolicy (403), by policy (`""`: no ALLOW policy matched).
pub const AUTHZ_DENIED: &str = "waypoint_authz_denied_total";

/// Registers this module's metric descriptions.
pub fn describe_metrics() {
    metrics::describe_counter!(JWKS_FETCH_ERRORS, "JWKS fetches from a jwksUri that failed");
    metrics::describe_counter!(
        JWT_REJECTED,
        "Requests refused with 401 by RequestAuthentication, by reason"
    );
    metrics::describe_counter!(
        AUTHZ_DENIED,
        "Requests refused with 403 by AuthorizationPolicy, by policy"
    );
}

/// Security of one Service.
#[derive(Debug, Default)]
pub struct ServiceSecurity {
    /// Authorization policies.
    pub authz: Policies,
    /// JWT rules.
    pub jwt: Vec<Arc<Provider>>,
}

/// Compiles `ServiceRoutes.security` (None when absent or empty).
pub fn compile(
    r: &pb::ServiceRoutes,
    registry: &JwksRegistry,
) -> Result<Option<ServiceSecurity>, String> {
    let Some(s) = &r.security else {
        return Ok(None);
    };
    if s.policies.is_empty() && s.jwt_rules.is_empty() {
        return Ok(None);
    }
    let authz = Policies::compile(&s.policies).map_err(|e| e.to_string())?;
    let jwt = s
        .jwt_rules
        .iter()
        .map(|j| {
            Provider::compile(j, registry)
                .map(Arc::new)
                .map_err(|e| format!("{}: {e}", j.name))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Some(ServiceSecurity { authz, jwt }))
}

/// Compiled security by Service hostname.
#[derive(Debug, Default)]
pub struct SecurityTable {
    by_host: HashMap<String, Arc<ServiceSecurity>>,
}

impl SecurityTable {
    /// A table of `(hostname, security)`.
    pub fn new(by_host: HashMap<String, Arc<ServiceSecurity>>) -> Self {
        SecurityTable { by_host }
    }

    /// The security of Service `hostname`.
    pub fn get(&self, hostname: &str) -> Option<Arc<ServiceSecurity>> {
        self.by_host.get(hostname).cloned()
    }

    /// Number of Services with security.
    pub fn len(&self) -> usize {
        self.by_host.len()
    }

    /// True when no Service has security.
    pub fn is_empty(&self) -> bool {
        self.by_host.is_empty()
    }
}

/// The caller, as the HBONE connection shows it.
pub struct Peer<'a> {
    /// mTLS identity.
    pub identity: &'a Identity,
    /// Source address of the HBONE connection.
    pub ip: IpAddr,
    /// Service port the request arrived for.
    pub port: u16,
}

/// What the hook decided; applied to the request record once it exists.
pub struct Verdict {
    /// A local answer (401 or 403) instead of routing.
    pub refuse: Option<Response<RespBody>>,
    audit: Vec<String>,
    denied_by: Option<String>,
    request_principal: Option<String>,
    span: RequestSpan,
}

impl Verdict {
    /// Copies the outcome into `rec` (access log, trace); returns the refusal, if any.
    pub fn apply(self, rec: &mut RequestRecord) -> Option<Response<RespBody>> {
        rec.audit = self.audit;
        rec.authz_policy = self.denied_by;
        rec.request_principal = self.request_principal;
        rec.span = Some(self.span);
        self.refuse
    }
}

fn local(status: StatusCode, body: &str) -> Response<RespBody> {
    use http_body_util::{BodyExt, Full};
    let mut r = Response::new(
        Full::new(bytes::Bytes::from(body.to_string()))
            .map_err(|e| match e {})
            .boxed(),
    );
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain"),
    );
    r
}

/// Runs tracing, normalization, authentication and authorization for `req`.
pub async fn on_request<B>(
    sec: Option<Arc<ServiceSecurity>>,
    peer: Peer<'_>,
    req: &mut Request<B>,
) -> Verdict {
    let span = RequestSpan::start(req.headers_mut());
    let mut v = Verdict {
        refuse: None,
        audit: Vec::new(),
        denied_by: None,
        request_principal: None,
        span,
    };
    // Policies and routes see the normalized path, and so does the backend (no
    // `/public/../admin` past a policy on `/admin*`).
    let raw = req.uri().path();
    let norm = normalize_path(raw);
    if norm != raw {
        let pq = match req.uri().query() {
            Some(q) => format!("{norm}?{q}"),
            None => norm.clone(),
        };
        let mut parts = req.uri().clone().into_parts();
        match pq.parse() {
            Ok(p) => {
                parts.path_and_query = Some(p);
                if let Ok(u) = http::Uri::from_parts(parts) {
                    debug!("path normalized");
                    *req.uri_mut() = u;
                }
            }
            Err(_) => {
                v.refuse = Some(local(StatusCode::BAD_REQUEST, "Bad Request"));
                return v;
            }
        }
    }
    let Some(sec) = sec else { return v };
    let query = req.uri().query().map(str::to_string);
    let authn = match crate::jwt::authenticate(&sec.jwt, req.headers_mut(), query.as_deref()).await
    {
        Ok(a) => a,
        Err(e) => {
            debug!(reason = %e, "JWT refused");
            metrics::counter!(JWT_REJECTED, "reason" => e.to_string()).increment(1);
            let mut r = local(StatusCode::UNAUTHORIZED, &e.to_string());
            let realm = format!(
                "Bearer realm=\"http://{}{}\", error=\"invalid_token\"",
                req.uri()
                    .authority()
                    .map(|a| a.to_string())
                    .or_else(|| req
                        .headers()
                        .get(http::header::HOST)
                        .and_then(|h| h.to_str().ok())
                        .map(str::to_string))
                    .unwrap_or_default(),
                req.uri().path()
            );
            if let Ok(h) = HeaderValue::from_str(&realm) {
                r.headers_mut().insert(http::header::WWW_AUTHENTICATE, h);
            }
            v.refuse = Some(r);
            return v;
        }
    };
    v.request_principal = authn.claims.as_ref().map(|c| c.principal.clone());
    if sec.authz.is_empty() {
        return v;
    }
    let principal = peer.identity.to_string();
    let host = req
        .uri()
        .authority()
        .map(|a| a.to_string())
        .or_else(|| {
            req.headers()
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_string)
        })
        .unwrap_or_default();
    let attrs = Attributes {
        principal: Some(principal.strip_prefix("spiffe://").unwrap_or(&principal)),
        namespace: Some(&peer.identity.namespace),
        service_account: Some(&peer.identity.service_account),
        source_ip: peer.ip,
        remote_ip: peer.ip,
        port: peer.port,
        method: req.method().as_str(),
        path: req.uri().path(),
        host: &host,
        headers: req.headers(),
        auth: authn.claims.as_ref(),
    };
    let d = sec.authz.evaluate(&attrs);
    v.audit = d.audit;
    if !d.allowed {
        let policy = d.policy.unwrap_or_default();
        debug!(%policy, "request denied by AuthorizationPolicy");
        metrics::counter!(AUTHZ_DENIED, "policy" => policy.clone()).increment(1);
        v.denied_by = Some(if policy.is_empty() {
            "no ALLOW policy matched".into()
        } else {
            policy
        });
        v.refuse = Some(local(StatusCode::FORBIDDEN, "RBAC: access denied"));
    }
    v
}

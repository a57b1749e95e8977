//! RequestAuthentication at the waypoint: JWT validation (RS256/384/512, ES256/384, with
//! `ring`) against inline or fetched JWKS.
//!
//! Istio's semantics: a request without a token passes unauthenticated (an
//! AuthorizationPolicy on `requestPrincipals` makes a token required); a request with a token
//! that does not validate (signature, expiry, issuer, audience, unknown key) gets 401. The token's
//! `iss` selects the rule. `requestPrincipal` = `<iss>/<sub>`. Tokens and keys are never logged.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use bytes::Bytes;
use http::HeaderMap;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use mesh_proto::route as pb;
use ring::signature::{self, RsaPublicKeyComponents, UnparsedPublicKey};
use serde_json::Value;
use tracing::{debug, warn};

/// Accepted clock skew on `exp` / `nbf` (Envoy's default).
const CLOCK_SKEW_SECS: u64 = 60;
/// Fetched JWKS are refreshed after this (Istio's default refresh interval).
const JWKS_REFRESH: Duration = Duration::from_secs(20 * 60);
/// A token with an unknown `kid` triggers a refetch at most this often.
const JWKS_MIN_REFETCH: Duration = Duration::from_secs(30);
/// Bound on one JWKS fetch.
const JWKS_FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest JWKS document accepted.
const JWKS_MAX_BYTES: usize = 1024 * 1024;

/// Why a token (or a JWKS) was refused. The messages are sent to clients in 401 bodies, so they
/// never include the token.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum JwtError {
    /// Not three base64url parts with JSON header and payload.
    #[error("Jwt is not in the form of Header.Payload.Signature")]
    Malformed,
    /// `alg` is missing or not supported (`none`, HMAC...).
    #[error("Jwt algorithm is not supported")]
    Algorithm,
    /// No rule for the token's `iss`.
    #[error("Jwt issuer is not configured")]
    UnknownIssuer,
    /// `exp` is in the past.
    #[error("Jwt is expired")]
    Expired,
    /// `nbf` is in the future.
    #[error("Jwt not yet valid")]
    NotYetValid,
    /// `aud` matches none of the rule's audiences.
    #[error("Audiences in Jwt are not allowed")]
    Audience,
    /// No key verifies the signature.
    #[error("Jwt verification fails")]
    Signature,
    /// The JWKS could not be fetched or parsed.
    #[error("Jwks remote fetch is failed")]
    JwksUnavailable,
}

/// A JWKS that is not usable.
#[derive(thiserror::Error, Debug)]
pub enum JwksError {
    /// Not JSON with a `keys` array.
    #[error("JWKS is not JSON with a `keys` array: {0}")]
    Format(String),
    /// Not one RSA or EC P-256/P-384 key in it.
    #[error("JWKS has no usable RSA or EC (P-256, P-384) key")]
    NoKeys,
    /// Fetching failed.
    #[error("fetching JWKS from {uri}: {reason}")]
    Fetch {
        /// The jwksUri.
        uri: String,
        /// Why.
        reason: String,
    },
}

#[derive(Debug, Clone)]
enum KeyMaterial {
    Rsa { n: Vec<u8>, e: Vec<u8> },
    Ec { curve: Curve, point: Vec<u8> },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Curve {
    P256,
    P384,
}

/// One public key of a JWKS.
#[derive(Debug, Clone)]
pub struct Jwk {
    kid: Option<String>,
    key: KeyMaterial,
}

fn b64(s: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s.trim_end_matches('='))
        .ok()
}

/// Parses a JWKS document; keys of other types are skipped.
pub fn parse_jwks(text: &str) -> Result<Vec<Jwk>, JwksError> {
    let v: Value = serde_json::from_str(text).map_err(|e| JwksError::Format(e.to_string()))?;
    let keys = v
        .get("keys")
        .and_then(Value::as_array)
        .ok_or_else(|| JwksError::Format("no `keys` array".into()))?;
    let s = |k: &Value, f: &str| k.get(f).and_then(Value::as_str).map(str::to_string);
    let mut out = Vec::new();
    for k in keys {
        if s(k, "use").is_some_and(|u| u != "sig") {
            continue;
        }
        let key = match s(k, "kty").as_deref() {
            Some("RSA") => match (
                s(k, "n").and_then(|n| b64(&n)),
                s(k, "e").and_then(|e| b64(&e)),
            ) {
                (Some(n), Some(e)) if !n.is_empty() && !e.is_empty() => KeyMaterial::Rsa { n, e },
                _ => continue,
            },
            Some("EC") => {
                let (curve, len) = match s(k, "crv").as_deref() {
                    Some("P-256") => (Curve::P256, 32),
                    Some("P-384") => (Curve::P384, 48),
                    _ => continue,
                };
                match (
                    s(k, "x").and_then(|x| b64(&x)),
                    s(k, "y").and_then(|y| b64(&y)),
                ) {
                    (Some(x), Some(y)) if x.len() == len && y.len() == len => {
                        let mut point = Vec::with_capacity(1 + 2 * len);
                        point.push(4);
                        point.extend_from_slice(&x);
                        point.extend_from_slice(&y);
                        KeyMaterial::Ec { curve, point }
                    }
                    _ => continue,
                }
            }
            _ => continue,
        };
        out.push(Jwk {
            kid: s(k, "kid"),
            key,
        });
    }
    if out.is_empty() {
        return Err(JwksError::NoKeys);
    }
    Ok(out)
}

/// Who the token says the caller is.
#[derive(Debug, Clone)]
pub struct Claims {
    /// `<iss>/<sub>`.
    pub principal: String,
    /// `aud` values.
    pub audiences: Vec<String>,
    /// `azp`.
    pub presenter: Option<String>,
    /// The whole payload (for `request.auth.claims[...]`).
    pub payload: Value,
}

impl Claims {
    /// Claim `path` (`["groups"]`, or nested `["a", "b"]`) as strings: a string claim is one
    /// value, a list claim its string elements (Istio also splits a space-separated string).
    pub fn claim(&self, path: &[&str]) -> Vec<String> {
        let mut v = &self.payload;
        for p in path {
            match v.get(*p) {
                Some(x) => v = x,
                None => return Vec::new(),
            }
        }
        match v {
            Value::String(s) => {
                let mut out = vec![s.clone()];
                if s.contains(' ') {
                    out.extend(s.split(' ').filter(|x| !x.is_empty()).map(str::to_string));
                }
                out
            }
            Value::Array(a) => a
                .iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect(),
            Value::Bool(b) => vec![b.to_string()],
            Value::Number(n) => vec![n.to_string()],
            _ => Vec::new(),
        }
    }
}

enum Alg {
    Rsa(&'static signature::RsaParameters),
    Ec(Curve, &'static signature::EcdsaVerificationAlgorithm),
}

fn alg(name: &str) -> Option<Alg> {
    Some(match name {
        "RS256" => Alg::Rsa(&signature::RSA_PKCS1_2048_8192_SHA256),
        "RS384" => Alg::Rsa(&signature::RSA_PKCS1_2048_8192_SHA384),
        "RS512" => Alg::Rsa(&signature::RSA_PKCS1_2048_8192_SHA512),
        "ES256" => Alg::Ec(Curve::P256, &signature::ECDSA_P256_SHA256_FIXED),
        "ES384" => Alg::Ec(Curve::P384, &signature::ECDSA_P384_SHA384_FIXED),
        _ => return None,
    })
}

/// A token split and decoded, not yet verified.
pub struct Parsed {
    header: Value,
    /// Payload.
    pub payload: Value,
    signed: String,
    signature: Vec<u8>,
}

/// Splits and decodes a token (no verification).
pub fn parse(token: &str) -> Result<Parsed, JwtError> {
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Malformed);
    };
    let json = |x: &str| -> Result<Value, JwtError> {
        let bytes = b64(x).ok_or(JwtError::Malformed)?;
        let v: Value = serde_json::from_slice(&bytes).map_err(|_| JwtError::Malformed)?;
        v.is_object().then_some(v).ok_or(JwtError::Malformed)
    };
    Ok(Parsed {
        header: json(h)?,
        payload: json(p)?,
        signed: format!("{h}.{p}"),
        signature: b64(s).ok_or(JwtError::Malformed)?,
    })
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Parsed {
    /// `iss` claim.
    pub fn issuer(&self) -> Option<&str> {
        self.payload.get("iss").and_then(Value::as_str)
    }

    /// Verifies signature, time and audience against `keys` and `audiences` (issuer already
    /// matched by the caller).
    pub fn verify(&self, keys: &[Jwk], audiences: &[String], now: u64) -> Result<Claims, JwtError> {
        let a = self
            .header
            .get("alg")
            .and_then(Value::as_str)
            .and_then(alg)
            .ok_or(JwtError::Algorithm)?;
        let kid = self.header.get("kid").and_then(Value::as_str);
        let msg = self.signed.as_bytes();
        let ok = keys
            .iter()
            .filter(|k| kid.is_none() || k.kid.is_none() || k.kid.as_deref() == kid)
            .any(|k| match (&a, &k.key) {
                (Alg::Rsa(params), KeyMaterial::Rsa { n, e }) => RsaPublicKeyComponents { n, e }
                    .verify(params, msg, &self.signature)
                    .is_ok(),
                (Alg::Ec(c, v), KeyMaterial::Ec { curve, point }) if c == curve => {
                    UnparsedPublicKey::new(*v, point)
                        .verify(msg, &self.signature)
                        .is_ok()
                }
                _ => false,
            });
        if !ok {
            return Err(JwtError::Signature);
        }
        let num = |f: &str| self.payload.get(f).and_then(Value::as_u64);
        if let Some(exp) = num("exp") {
            if now > exp + CLOCK_SKEW_SECS {
                return Err(JwtError::Expired);
            }
        }
        if let Some(nbf) = num("nbf") {
            if nbf > now + CLOCK_SKEW_SECS {
                return Err(JwtError::NotYetValid);
            }
        }
        let token_aud: Vec<String> = match self.payload.get("aud") {
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Array(a)) => a
                .iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect(),
            _ => Vec::new(),
        };
        if !audiences.is_empty() && !token_aud.iter().any(|a| audiences.contains(a)) {
            return Err(JwtError::Audience);
        }
        let iss = self.issuer().unwrap_or_default();
        let sub = self
            .payload
            .get("sub")
            .and_then(Value::as_str)
            .unwrap_or_default();
        Ok(Claims {
            principal: format!("{iss}/{sub}"),
            audiences: token_aud,
            presenter: self
                .payload
                .get("azp")
                .and_then(Value::as_str)
                .map(str::to_string),
            payload: self.payload.clone(),
        })
    }
}

/// A JWKS fetched from a `jwksUri`, cached and refreshed (shared by every rule naming the URI,
/// and kept across pushes).
#[derive(Debug)]
pub struct RemoteJwks {
    uri: String,
    cache: Mutex<Option<(Arc<Vec<Jwk>>, Instant)>>,
    last_attempt: Mutex<Option<Instant>>,
    fetching: tokio::sync::Mutex<()>,
}

impl RemoteJwks {
    fn new(uri: &str) -> Self {
        RemoteJwks {
            uri: uri.to_string(),
            cache: Mutex::new(None),
            last_attempt: Mutex::new(None),
            fetching: tokio::sync::Mutex::new(()),
        }
    }

    fn cached(&self) -> Option<(Arc<Vec<Jwk>>, Instant)> {
        self.cache.lock().ok().and_then(|c| c.clone())
    }

    /// The keys; fetched when missing or older than the refresh interval, or (at most every
    /// 30 s) when `force` (a token named an unknown key). A failed refresh keeps the old keys.
    pub async fn keys(&self, force: bool) -> Option<Arc<Vec<Jwk>>> {
        let fresh = |c: &Option<(Arc<Vec<Jwk>>, Instant)>| {
            c.as_ref()
                .filter(|(_, at)| at.elapsed() < JWKS_REFRESH)
                .map(|(k, _)| k.clone())
        };
        if !force {
            if let Some(k) = fresh(&self.cached()) {
                return Some(k);
            }
        }
        let _g = self.fetching.lock().await;
        // Someone else may have fetched while we waited.
        let cached = self.cached();
        if let Some((k, at)) = &cached {
            let recently = at.elapsed() < JWKS_MIN_REFETCH;
            if (force && recently) || (!force && at.elapsed() < JWKS_REFRESH) {
                return Some(k.clone());
            }
        }
        let throttled = self
            .last_attempt
            .lock()
            .ok()
            .and_then(|l| *l)
            .is_some_and(|t| t.elapsed() < Duration::from_secs(1));
        if throttled {
            return cached.map(|(k, _)| k);
        }
        if let Ok(mut l) = self.last_attempt.lock() {
            *l = Some(Instant::now());
        }
        match fetch(&self.uri).await.and_then(|t| parse_jwks(&t)) {
            Ok(keys) => {
                let keys = Arc::new(keys);
                debug!(uri = %self.uri, keys = keys.len(), "JWKS fetched");
                if let Ok(mut c) = self.cache.lock() {
                    *c = Some((keys.clone(), Instant::now()));
                }
                Some(keys)
            }
            Err(e) => {
                warn!(error = %e, "JWKS fetch failed; keeping the previous keys if any");
                metrics::counter!(crate::security::JWKS_FETCH_ERRORS).increment(1);
                cached.map(|(k, _)| k)
            }
        }
    }
}

async fn fetch(uri: &str) -> Result<String, JwksError> {
    let err = |reason: String| JwksError::Fetch {
        uri: uri.to_string(),
        reason,
    };
    tokio::time::timeout(JWKS_FETCH_TIMEOUT, fetch_inner(uri))
        .await
        .map_err(|_| err(format!("no answer within {JWKS_FETCH_TIMEOUT:?}")))?
        .map_err(err)
}

async fn fetch_inner(uri: &str) -> Result<String, String> {
    let u: http::Uri = uri.parse().map_err(|e| format!("{e}"))?;
    let https = u.scheme_str() == Some("https");
    let host = u.host().ok_or("no host")?.to_string();
    let port = u.port_u16().unwrap_or(if https { 443 } else { 80 });
    let tcp = tokio::net::TcpStream::connect((host.trim_matches(['[', ']']), port))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let req = http::Request::get(u.path_and_query().map_or("/", |p| p.as_str()))
        .header(
            http::header::HOST,
            u.authority().map_or(host.as_str(), |a| a.as_str()),
        )
        .header(http::header::ACCEPT, "application/json")
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let resp = if https {
        let tls = tokio_rustls::TlsConnector::from(https_config()?)
            .connect(
                rustls::pki_types::ServerName::try_from(host.clone()).map_err(|e| e.to_string())?,
                tcp,
            )
            .await
            .map_err(|e| format!("TLS: {e}"))?;
        send(TokioIo::new(tls), req).await?
    } else {
        send(TokioIo::new(tcp), req).await?
    };
    Ok(resp)
}

async fn send<T>(io: T, req: http::Request<Empty<Bytes>>) -> Result<String, String>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut s, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let resp = s.send_request(req).await.map_err(|e| e.to_string())?;
    if resp.status() != http::StatusCode::OK {
        return Err(format!("HTTP {}", resp.status()));
    }
    let body = Limited::new(resp.into_body(), JWKS_MAX_BYTES)
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?
        .to_bytes();
    String::from_utf8(body.to_vec()).map_err(|_| "body is not UTF-8".into())
}

/// Roots for https jwksUri: `SSL_CERT_FILE`, else Debian's bundle.
fn https_config() -> Result<Arc<rustls::ClientConfig>, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let path = std::env::var("SSL_CERT_FILE")
        .unwrap_or_else(|_| "/etc/ssl/certs/ca-certificates.crt".into());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(&path).map_err(|e| format!("{path}: {e}"))? {
        let c = c.map_err(|e| format!("{path}: {e}"))?;
        let _ = roots.add(c);
    }
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Arc::new(cfg))
}

/// Shares [`RemoteJwks`] caches by URI across pushes.
#[derive(Debug, Default)]
pub struct JwksRegistry {
    by_uri: Mutex<HashMap<String, Arc<RemoteJwks>>>,
}

impl JwksRegistry {
    fn get(&self, uri: &str) -> Arc<RemoteJwks> {
        let mut m = match self.by_uri.lock() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        let r = m
            .entry(uri.to_string())
            .or_insert_with(|| Arc::new(RemoteJwks::new(uri)))
            .clone();
        // Prefetch so the first request does not wait for the fetch.
        if r.cached().is_none() {
            if let Ok(h) = tokio::runtime::Handle::try_current() {
                let r2 = r.clone();
                h.spawn(async move {
                    r2.keys(false).await;
                });
            }
        }
        r
    }
}

#[derive(Debug)]
enum Keys {
    Inline(Arc<Vec<Jwk>>),
    Remote(Arc<RemoteJwks>),
}

/// Where a token is read from.
#[derive(Debug, Clone)]
struct Location {
    header: http::HeaderName,
    prefix: String,
}

/// One compiled jwtRules entry.
#[derive(Debug)]
pub struct Provider {
    /// `<ns>/<name>[i]`.
    pub name: String,
    issuer: String,
    audiences: Vec<String>,
    keys: Keys,
    headers: Vec<Location>,
    params: Vec<String>,
    forward: bool,
}

impl Provider {
    /// Compiles a pushed rule.
    pub fn compile(r: &pb::JwtRule, registry: &JwksRegistry) -> Result<Self, JwksError> {
        let keys = if !r.jwks.trim().is_empty() {
            Keys::Inline(Arc::new(parse_jwks(&r.jwks)?))
        } else if !r.jwks_uri.is_empty() {
            Keys::Remote(registry.get(&r.jwks_uri))
        } else {
            return Err(JwksError::Format("neither jwks nor jwksUri".into()));
        };
        let mut headers = Vec::new();
        for h in &r.from_headers {
            let header = h
                .name
                .parse::<http::HeaderName>()
                .map_err(|_| JwksError::Format(format!("bad header name {:?}", h.name)))?;
            headers.push(Location {
                header,
                prefix: h.prefix.clone(),
            });
        }
        let mut params = r.from_params.clone();
        if headers.is_empty() && params.is_empty() {
            headers.push(Location {
                header: http::header::AUTHORIZATION,
                prefix: "Bearer ".into(),
            });
            params.push("access_token".into());
        }
        Ok(Provider {
            name: r.name.clone(),
            issuer: r.issuer.clone(),
            audiences: r.audiences.clone(),
            keys,
            headers,
            params,
            forward: r.forward_original_token,
        })
    }
}

/// The outcome of authentication for one request.
#[derive(Debug, Default)]
pub struct AuthnResult {
    /// Validated claims (None: no token, unauthenticated).
    pub claims: Option<Claims>,
}

/// A token found in the request, and where.
struct Found {
    token: String,
    header: Option<http::HeaderName>,
}

fn find_tokens(
    providers: &[Arc<Provider>],
    headers: &HeaderMap,
    query: Option<&str>,
) -> Vec<Found> {
    let mut out: Vec<Found> = Vec::new();
    for p in providers {
        for loc in &p.headers {
            for v in headers.get_all(&loc.header) {
                let Ok(v) = v.to_str() else { continue };
                let t = if loc.prefix.is_empty() {
                    Some(v.trim())
                } else if v.len() >= loc.prefix.len()
                    && v[..loc.prefix.len()].eq_ignore_ascii_case(&loc.prefix)
                {
                    Some(v[loc.prefix.len()..].trim())
                } else {
                    None
                };
                if let Some(t) = t.filter(|t| !t.is_empty()) {
                    if !out.iter().any(|f| f.token == t) {
                        out.push(Found {
                            token: t.to_string(),
                            header: Some(loc.header.clone()),
                        });
                    }
                }
            }
        }
        for (k, v) in query
            .unwrap_or_default()
            .split('&')
            .filter_map(|kv| kv.split_once('='))
        {
            if p.params.iter().any(|n| n == k) && !v.is_empty() && !out.iter().any(|f| f.token == v)
            {
                out.push(Found {
                    token: v.to_string(),
                    header: None,
                });
            }
        }
    }
    out
}

/// Validates the tokens of a request against `providers`: no token → unauthenticated; every
/// token found must validate (else the error, for a 401). Token headers of providers without
/// `forwardOriginalToken` are removed.
pub async fn authenticate(
    providers: &[Arc<Provider>],
    headers: &mut HeaderMap,
    query: Option<&str>,
) -> Result<AuthnResult, JwtError> {
    if providers.is_empty() {
        return Ok(AuthnResult::default());
    }
    let found = find_tokens(providers, headers, query);
    let mut result = AuthnResult::default();
    for f in &found {
        let parsed = parse(&f.token)?;
        let iss = parsed.issuer().unwrap_or_default();
        let p = providers
            .iter()
            .find(|p| p.issuer == iss)
            .ok_or(JwtError::UnknownIssuer)?;
        let claims = match &p.keys {
            Keys::Inline(k) => parsed.verify(k, &p.audiences, now_secs())?,
            Keys::Remote(r) => {
                let keys = r.keys(false).await.ok_or(JwtError::JwksUnavailable)?;
                match parsed.verify(&keys, &p.audiences, now_secs()) {
                    // The issuer may have rotated its keys: refetch (rate limited) and retry.
                    Err(JwtError::Signature) => {
                        let keys = r.keys(true).await.ok_or(JwtError::JwksUnavailable)?;
                        parsed.verify(&keys, &p.audiences, now_secs())?
                    }
                    other => other?,
                }
            }
        };
        if !p.forward {
            if let Some(h) = &f.header {
                headers.remove(h);
            }
        }
        if result.claims.is_none() {
            result.claims = Some(claims);
        }
    }
    Ok(result)
}

#[cfg(test)]
mod tests;

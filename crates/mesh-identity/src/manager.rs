//! Certificate manager: one key, CSR and certificate per tracked identity, fetched from the CA
//! as soon as the identity is tracked, rotated at half life, and forgotten when untracked.
//! ztunnel tracks the identities of its node's workloads; a waypoint tracks its own.
//!
//! The CA is a seam ([`CaClient`]): production uses the gRPC client of `mesh-xds`, tests sign
//! locally.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tokio::sync::{watch, Semaphore};
use tracing::{info, warn, Instrument};

use crate::cert::WorkloadCert;
use crate::spiffe::Identity;

/// Why a certificate is not available.
#[derive(thiserror::Error, Debug, Clone)]
pub enum CertError {
    /// The CA answered with an error (or could not be reached).
    #[error("CA refused or failed the request for {identity}: {message}")]
    Ca {
        /// Requested identity.
        identity: String,
        /// What the CA said.
        message: String,
    },
    /// The CA's answer cannot be used (bad PEM, key mismatch, another identity).
    #[error("certificate for {identity} is unusable: {message}")]
    Invalid {
        /// Requested identity.
        identity: String,
        /// Why.
        message: String,
    },
    /// Still waiting for the first certificate.
    #[error("no certificate for {0} yet (the CA has not answered)")]
    NotReady(String),
    /// The identity is not tracked.
    #[error("{0} is not an identity of a workload on this node")]
    NotLocal(String),
}

/// A boxed, sendable future (the CA seam's return type).
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// The seam to the CA (tests replace it).
pub trait CaClient: Send + Sync + 'static {
    /// Sends `csr_pem` for `identity`, returns the PEM chain (leaf first, roots last).
    fn sign(
        &self,
        csr_pem: String,
        identity: Identity,
        ttl: Duration,
    ) -> BoxFuture<Result<Vec<String>, CertError>>;
}

/// A certificate and the TLS configurations built from it.
pub struct Certs {
    /// The certificate.
    pub cert: WorkloadCert,
    /// HBONE server config presenting it.
    pub server: Arc<rustls::ServerConfig>,
    clients: Mutex<HashMap<Vec<Identity>, Arc<rustls::ClientConfig>>>,
}

impl Certs {
    fn new(cert: WorkloadCert) -> Result<Self, CertError> {
        let server = crate::tls::server_config(&cert).map_err(|e| CertError::Invalid {
            identity: cert.identity().to_string(),
            message: e.to_string(),
        })?;
        Ok(Certs {
            cert,
            server,
            clients: Mutex::new(HashMap::new()),
        })
    }

    /// A client config presenting this certificate and accepting only `expected` peers (cached).
    pub fn client_config(
        &self,
        expected: &[Identity],
    ) -> Result<Arc<rustls::ClientConfig>, CertError> {
        let mut cache = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = cache.get(expected) {
            return Ok(c.clone());
        }
        let c =
            crate::tls::client_config(&self.cert, expected).map_err(|e| CertError::Invalid {
                identity: self.cert.identity().to_string(),
                message: e.to_string(),
            })?;
        if cache.len() > 1024 {
            cache.clear();
        }
        cache.insert(expected.to_vec(), c.clone());
        Ok(c)
    }
}

type Slot = watch::Receiver<Option<Result<Arc<Certs>, CertError>>>;

struct Entry {
    slot: Slot,
    task: tokio::task::JoinHandle<()>,
}

/// Per-identity certificates.
pub struct CertManager {
    ca: Arc<dyn CaClient>,
    ttl: Duration,
    entries: Mutex<HashMap<Identity, Entry>>,
    limit: Arc<Semaphore>,
    metrics: CertMetrics,
}

/// Names of the counters the manager increments (each binary keeps its own names).
#[derive(Clone, Copy, Debug)]
pub struct CertMetrics {
    /// Certificates obtained (first fetch and each rotation).
    pub issued: &'static str,
    /// Failed requests.
    pub errors: &'static str,
}

/// One row of the certificate dump.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CertDump {
    /// SPIFFE id.
    pub identity: String,
    /// Available, Initializing or Unavailable: <why>.
    pub state: String,
    /// Leaf first.
    pub cert_chain: Vec<CertInfo>,
    /// Trust anchors (PEM, base64).
    pub root_certs: Vec<String>,
}

/// A certificate in the dump (PEM base64-encoded as Istio's dump does).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CertInfo {
    /// PEM, base64-encoded.
    pub pem: String,
    /// Leaf only.
    pub serial_number: String,
    /// Leaf only, RFC 3339.
    pub valid_from: String,
    /// Leaf only, RFC 3339.
    pub expiration_time: String,
}

fn rfc3339(t: SystemTime) -> String {
    time::OffsetDateTime::from(t)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

impl CertManager {
    /// `ttl` is the validity requested from the CA (`SECRET_TTL`); `metrics` names the
    /// counters.
    pub fn new(ca: Arc<dyn CaClient>, ttl: Duration, metrics: CertMetrics) -> Self {
        CertManager {
            ca,
            ttl,
            entries: Mutex::new(HashMap::new()),
            limit: Arc::new(Semaphore::new(8)),
            metrics,
        }
    }

    /// Makes the set of tracked identities equal `wanted`: starts fetching new ones, forgets gone ones.
    pub fn track(&self, wanted: &HashSet<Identity>) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.retain(|id, e| {
            let keep = wanted.contains(id);
            if !keep {
                info!(identity = %id, "forgetting certificate: no local workload uses it any more");
                e.task.abort();
            }
            keep
        });
        for id in wanted {
            if !entries.contains_key(id) {
                let (tx, rx) = watch::channel(None);
                let task = tokio::spawn(
                    refresh_loop(
                        self.ca.clone(),
                        self.limit.clone(),
                        id.clone(),
                        self.ttl,
                        self.metrics,
                        tx,
                    )
                    .instrument(tracing::info_span!("cert", identity = %id)),
                );
                entries.insert(id.clone(), Entry { slot: rx, task });
            }
        }
    }

    /// The current certificate for `id`, waiting for the first one if it is being fetched.
    pub async fn fetch(&self, id: &Identity) -> Result<Arc<Certs>, CertError> {
        let mut slot = {
            let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
            entries
                .get(id)
                .map(|e| e.slot.clone())
                .ok_or_else(|| CertError::NotLocal(id.to_string()))?
        };
        let _ = tokio::time::timeout(Duration::from_secs(10), slot.wait_for(|v| v.is_some())).await;
        let current = slot.borrow().clone();
        match current {
            Some(Ok(c)) => Ok(c),
            Some(Err(e)) => Err(e),
            None => Err(CertError::NotReady(id.to_string())),
        }
    }

    /// True when every tracked identity has a certificate.
    pub fn all_ready(&self) -> bool {
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .all(|e| matches!(&*e.slot.borrow(), Some(Ok(_))))
    }

    /// State of every tracked certificate, for `/config_dump`.
    pub fn dump(&self) -> Vec<CertDump> {
        use base64::Engine;
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<CertDump> = entries
            .iter()
            .map(|(id, e)| match &*e.slot.borrow() {
                Some(Ok(c)) => CertDump {
                    identity: id.to_string(),
                    state: "Available".into(),
                    cert_chain: c
                        .cert
                        .chain_pem()
                        .iter()
                        .enumerate()
                        .map(|(i, pem)| CertInfo {
                            pem: b64(pem),
                            serial_number: if i == 0 {
                                c.cert.serial_hex()
                            } else {
                                String::new()
                            },
                            valid_from: if i == 0 {
                                rfc3339(c.cert.not_before())
                            } else {
                                String::new()
                            },
                            expiration_time: if i == 0 {
                                rfc3339(c.cert.not_after())
                            } else {
                                String::new()
                            },
                        })
                        .collect(),
                    root_certs: c.cert.roots_pem().iter().map(|p| b64(p)).collect(),
                },
                Some(Err(err)) => CertDump {
                    identity: id.to_string(),
                    state: format!("Unavailable: {err}"),
                    cert_chain: vec![],
                    root_certs: vec![],
                },
                None => CertDump {
                    identity: id.to_string(),
                    state: "Initializing".into(),
                    cert_chain: vec![],
                    root_certs: vec![],
                },
            })
            .collect();
        out.sort_by(|a, b| a.identity.cmp(&b.identity));
        out
    }
}

async fn fetch_once(
    ca: &dyn CaClient,
    id: &Identity,
    ttl: Duration,
) -> Result<Arc<Certs>, CertError> {
    let req = crate::csr::generate(id).map_err(|e| CertError::Invalid {
        identity: id.to_string(),
        message: e.to_string(),
    })?;
    let chain = ca.sign(req.csr_pem.clone(), id.clone(), ttl).await?;
    let cert = WorkloadCert::from_pem(&req.key_pem, &chain).map_err(|e| CertError::Invalid {
        identity: id.to_string(),
        message: e.to_string(),
    })?;
    // Never trust the CA to have signed what we asked: the leaf must carry the requested identity.
    if cert.identity() != id {
        return Err(CertError::Invalid {
            identity: id.to_string(),
            message: format!("CA returned a certificate for {}", cert.identity()),
        });
    }
    Ok(Arc::new(Certs::new(cert)?))
}

async fn refresh_loop(
    ca: Arc<dyn CaClient>,
    limit: Arc<Semaphore>,
    id: Identity,
    ttl: Duration,
    names: CertMetrics,
    tx: watch::Sender<Option<Result<Arc<Certs>, CertError>>>,
) {
    let mut backoff = Duration::from_millis(200);
    loop {
        let result = {
            let _permit = limit.acquire().await;
            fetch_once(ca.as_ref(), &id, ttl).await
        };
        match result {
            Ok(c) => {
                let refresh_at = c.cert.refresh_at();
                info!(expires = %rfc3339(c.cert.not_after()), "certificate issued");
                metrics::counter!(names.issued).increment(1);
                tx.send_replace(Some(Ok(c)));
                backoff = Duration::from_millis(200);
                let wait = refresh_at
                    .duration_since(SystemTime::now())
                    .unwrap_or(Duration::ZERO);
                tokio::time::sleep(wait).await;
            }
            Err(e) => {
                warn!(error = %e, retry_in = ?backoff, "certificate request failed");
                metrics::counter!(names.errors).increment(1);
                // Keep serving a still-valid certificate while retrying.
                let still_valid =
                    matches!(&*tx.borrow(), Some(Ok(c)) if c.cert.not_after() > SystemTime::now());
                if !still_valid {
                    tx.send_replace(Some(Err(e)));
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::CertificateAuthority;

    const M: CertMetrics = CertMetrics {
        issued: "test_issued",
        errors: "test_errors",
    };
    use std::sync::atomic::{AtomicUsize, Ordering};

    struct LocalCa {
        ca: CertificateAuthority,
        calls: AtomicUsize,
        lie_as: Option<Identity>,
    }

    impl CaClient for Arc<LocalCa> {
        fn sign(
            &self,
            csr_pem: String,
            identity: Identity,
            ttl: Duration,
        ) -> BoxFuture<Result<Vec<String>, CertError>> {
            let me = self.clone();
            Box::pin(async move {
                me.calls.fetch_add(1, Ordering::SeqCst);
                if let Some(other) = &me.lie_as {
                    let c = me.ca.issue(other, ttl).map_err(|e| CertError::Ca {
                        identity: identity.to_string(),
                        message: e.to_string(),
                    })?;
                    let mut chain = c.chain_pem();
                    chain.extend(c.roots_pem());
                    return Ok(chain);
                }
                me.ca
                    .sign_csr(&csr_pem, ttl, Duration::from_secs(86400))
                    .map(|s| s.cert_chain)
                    .map_err(|e| CertError::Ca {
                        identity: identity.to_string(),
                        message: e.to_string(),
                    })
            })
        }
    }

    fn id(sa: &str) -> Identity {
        Identity::new("cluster.local", "ns", sa)
    }

    #[tokio::test]
    async fn fetches_tracks_and_forgets() {
        let ca = Arc::new(LocalCa {
            ca: CertificateAuthority::self_signed("cluster.local").expect("ca"),
            calls: AtomicUsize::new(0),
            lie_as: None,
        });
        let m = CertManager::new(Arc::new(ca.clone()), Duration::from_secs(3600), M);
        m.track(&[id("a"), id("b")].into_iter().collect());
        let c = m.fetch(&id("a")).await.expect("cert");
        assert_eq!(c.cert.identity(), &id("a"));
        m.fetch(&id("b")).await.expect("cert");
        assert!(m.all_ready());
        assert_eq!(m.dump().len(), 2);
        m.track(&[id("b")].into_iter().collect());
        assert!(matches!(
            m.fetch(&id("a")).await,
            Err(CertError::NotLocal(_))
        ));
        assert_eq!(ca.calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_certificate_for_another_identity_is_refused() {
        let ca = Arc::new(LocalCa {
            ca: CertificateAuthority::self_signed("cluster.local").expect("ca"),
            calls: AtomicUsize::new(0),
            lie_as: Some(id("evil")),
        });
        let m = CertManager::new(Arc::new(ca), Duration::from_secs(3600), M);
        m.track(&[id("a")].into_iter().collect());
        // Either check (key mismatch or identity mismatch) must refuse the certificate.
        let err = m.fetch(&id("a")).await.err().expect("must refuse");
        assert!(matches!(err, CertError::Invalid { .. }), "{err}");
    }

    #[tokio::test]
    async fn rotates_at_half_life() {
        let ca = Arc::new(LocalCa {
            ca: CertificateAuthority::self_signed("cluster.local").expect("ca"),
            calls: AtomicUsize::new(0),
            lie_as: None,
        });
        // The CA back-dates not_before by 60 s, so a 62 s certificate is half-way through its
        // life one second after issue.
        let m = CertManager::new(Arc::new(ca.clone()), Duration::from_secs(62), M);
        m.track(&[id("a")].into_iter().collect());
        let first = m.fetch(&id("a")).await.expect("cert");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let now = m.fetch(&id("a")).await.expect("cert");
            if now.cert.serial_hex() != first.cert.serial_hex() {
                assert!(now.cert.not_after() > first.cert.not_after());
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "certificate was not rotated at half life"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(ca.calls.load(Ordering::SeqCst) >= 2);
    }
}

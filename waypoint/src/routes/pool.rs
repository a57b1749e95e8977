//! Connection pool limits of a backend (DestinationRule `connectionPool`), shared by every
//! rule that sends to it.
//!
//! A "connection" here is a request being sent upstream, from admission until its response
//! body ends (upstream HTTP connections are shared and reused, so counting sockets would not
//! bound the load a backend sees): `tcp.maxConnections` bounds those; requests beyond it wait in
//! a queue of at most `http.http1MaxPendingRequests`; `http.http2MaxRequests` bounds requests
//! in flight (waiting included). A request that finds the queue or the request limit full is
//! answered 503 with flag `UO` at once, as Envoy's circuit breakers do.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::Notify;

/// Limits; 0 = unlimited (Istio's default for every field).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolLimits {
    /// `tcp.maxConnections`.
    pub max_connections: u32,
    /// `http.http1MaxPendingRequests`.
    pub max_pending: u32,
    /// `http.http2MaxRequests`.
    pub max_requests: u32,
    /// `http.maxRequestsPerConnection`: an upstream HTTP connection is retired after this many
    /// requests (enforced by the waypoint's HTTP connection reuse, not by admission).
    pub max_requests_per_connection: u32,
}

impl PoolLimits {
    /// True when nothing is limited (admission is then free).
    pub fn unlimited(&self) -> bool {
        self.max_connections == 0 && self.max_requests == 0
    }
}

/// The pool is full (`UO`).
#[derive(thiserror::Error, Debug, Clone, Copy, PartialEq, Eq)]
#[error("connection pool of the backend overflowed ({0})")]
pub struct Overflow(pub &'static str);

/// Counters of one backend; survives route pushes so limits hold across them.
#[derive(Debug, Default)]
pub struct Pool {
    requests: AtomicU64,
    connections: AtomicU64,
    pending: AtomicU64,
    freed: Notify,
}

/// A request admitted by the pool; releases its slots on drop.
#[derive(Debug)]
pub struct Admitted {
    pool: Option<Arc<Pool>>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        if let Some(p) = self.pool.take() {
            p.requests.fetch_sub(1, Ordering::AcqRel);
            p.connections.fetch_sub(1, Ordering::AcqRel);
            p.freed.notify_one();
        }
    }
}

impl Pool {
    /// Requests in flight (tests, config dump).
    pub fn in_flight(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    fn take_connection(&self, max: u32) -> bool {
        if max == 0 {
            self.connections.fetch_add(1, Ordering::AcqRel);
            return true;
        }
        self.connections
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| {
                (c < u64::from(max)).then_some(c + 1)
            })
            .is_ok()
    }

    /// Admits a request under `limits`: at once when a connection is free, after waiting in the
    /// pending queue when one is not, or `Overflow` when the queue or the request limit is
    /// full. The caller bounds the wait with the request's deadline.
    pub async fn admit(self: &Arc<Self>, limits: PoolLimits) -> Result<Admitted, Overflow> {
        if limits.unlimited() {
            return Ok(Admitted { pool: None });
        }
        let prev = self.requests.fetch_add(1, Ordering::AcqRel);
        if limits.max_requests > 0 && prev >= u64::from(limits.max_requests) {
            self.requests.fetch_sub(1, Ordering::AcqRel);
            return Err(Overflow("http2MaxRequests"));
        }
        // From here the request slot is ours; a guard gives it back if we fail below.
        let mut guard = RequestSlot(Some(self.clone()));
        if self.take_connection(limits.max_connections) {
            guard.0 = None;
            return Ok(Admitted {
                pool: Some(self.clone()),
            });
        }
        let queued = self.pending.fetch_add(1, Ordering::AcqRel);
        let _pending = PendingSlot(self.clone());
        if limits.max_pending > 0 && queued >= u64::from(limits.max_pending) {
            return Err(Overflow("http1MaxPendingRequests"));
        }
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            // Register before checking again so a release in between is not missed.
            freed.as_mut().enable();
            if self.take_connection(limits.max_connections) {
                guard.0 = None;
                return Ok(Admitted {
                    pool: Some(self.clone()),
                });
            }
            freed.await;
        }
    }
}

struct RequestSlot(Option<Arc<Pool>>);
impl Drop for RequestSlot {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            p.requests.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

struct PendingSlot(Arc<Pool>);
impl Drop for PendingSlot {
    fn drop(&mut self) {
        self.0.pending.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn request_limit_overflows_at_once() {
        let p = Arc::new(Pool::default());
        let l = PoolLimits {
            max_requests: 2,
            ..Default::default()
        };
        let a = p.admit(l).await.unwrap();
        let _b = p.admit(l).await.unwrap();
        assert_eq!(p.admit(l).await.unwrap_err(), Overflow("http2MaxRequests"));
        drop(a);
        assert!(p.admit(l).await.is_ok());
    }

    #[tokio::test]
    async fn connections_queue_up_to_the_pending_limit() {
        let p = Arc::new(Pool::default());
        let l = PoolLimits {
            max_connections: 1,
            max_pending: 1,
            ..Default::default()
        };
        let first = p.admit(l).await.unwrap();
        // The second waits in the queue...
        let p2 = p.clone();
        let waiting = tokio::spawn(async move { p2.admit(l).await.map(|_| ()) });
        // ...which is observable as one pending request.
        while p.pending.load(Ordering::Acquire) == 0 {
            tokio::task::yield_now().await;
        }
        // The third finds the queue full.
        assert_eq!(
            p.admit(l).await.unwrap_err(),
            Overflow("http1MaxPendingRequests")
        );
        // Releasing the connection lets the queued one through.
        drop(first);
        waiting.await.unwrap().unwrap();
        assert_eq!(p.in_flight(), 0);
        assert_eq!(p.connections.load(Ordering::Acquire), 0);
        assert_eq!(p.pending.load(Ordering::Acquire), 0);
    }

    #[tokio::test]
    async fn unlimited_admits_everything() {
        let p = Arc::new(Pool::default());
        let held: Vec<_> = futures_like(&p, 100).await;
        assert_eq!(held.len(), 100);
    }

    async fn futures_like(p: &Arc<Pool>, n: usize) -> Vec<Admitted> {
        let mut v = Vec::new();
        for _ in 0..n {
            v.push(p.admit(PoolLimits::default()).await.unwrap());
        }
        v
    }
}

//! Pool bookkeeping: which connections exist per key, their stream counts, dial slots, eviction.
//!
//! Locking: one `std::sync::Mutex` over the key map, held only for short non-async sections
//! (never across `.await`). Dials are serialized per key by an async mutex that lives in the
//! key's entry and is awaited *outside* the map lock, so a handshake in progress for one key
//! cannot block checkouts for other keys (the failure mode of ztunnel#2017).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use h2::client::SendRequest;
use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};

use super::{conn, Dialer, PoolKey};
use crate::{Config, HboneError};

pub(crate) struct PoolInner {
    pub(crate) cfg: Config,
    pub(crate) dialer: Arc<dyn Dialer>,
    keys: Mutex<HashMap<PoolKey, KeyConns>>,
    next_conn_id: AtomicU64,
}

/// Connections of one key plus the slot that serializes dials for it.
#[derive(Default)]
struct KeyConns {
    conns: Vec<PooledConn>,
    dial_lock: Arc<AsyncMutex<()>>,
}

/// The pool's handle on one connection. Dropping the last one (and all streams) lets h2 close
/// the connection gracefully.
pub(crate) struct PooledConn {
    pub(crate) state: Arc<ConnState>,
    pub(crate) send: SendRequest<Bytes>,
}

impl PooledConn {
    /// False once the driver ended or h2 reports a connection error / GOAWAY.
    fn usable(&self) -> bool {
        if self.state.broken.load(Ordering::Acquire) {
            return false;
        }
        // A fresh clone has no pending stream, so poll_ready never parks here: it is Ready(Ok)
        // for a live connection and Ready(Err) after GOAWAY or a connection error.
        let mut send = self.send.clone();
        let mut cx = Context::from_waker(Waker::noop());
        match send.poll_ready(&mut cx) {
            Poll::Ready(Err(e)) => {
                tracing::debug!(conn = self.state.id, error = %e, "pooled connection broken, skipping");
                self.state.broken.store(true, Ordering::Release);
                false
            }
            _ => true,
        }
    }
}

/// Shared between the pool entry, the connection's driver task and its streams' guards. Holds
/// no h2 handle so that it never keeps the connection open by itself.
pub(crate) struct ConnState {
    pub(crate) id: u64,
    active: AtomicUsize,
    last_used: Mutex<Instant>,
    pub(crate) broken: AtomicBool,
}

impl ConnState {
    pub(crate) fn new(id: u64) -> Self {
        ConnState {
            id,
            active: AtomicUsize::new(0),
            last_used: Mutex::new(Instant::now()),
            broken: AtomicBool::new(false),
        }
    }

    fn touch(&self) {
        *self
            .last_used
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Instant::now();
    }

    pub(crate) fn last_used(&self) -> Instant {
        *self
            .last_used
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// Counts one stream against its connection for as long as the stream (or the attempt to open
/// it) lives.
pub(crate) struct StreamGuard {
    conn: Arc<ConnState>,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.conn.touch();
        self.conn.active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A reserved stream slot on a connection.
pub(crate) struct Checkout {
    pub(crate) send: SendRequest<Bytes>,
    pub(crate) guard: StreamGuard,
}

impl Checkout {
    pub(crate) fn conn_id(&self) -> u64 {
        self.guard.conn.id
    }
}

/// Result of an idle check by a connection's driver.
pub(crate) enum IdleCheck {
    /// Removed from the pool (or the pool no longer has it).
    Evicted,
    /// Streams are active; check again later.
    Busy,
    /// Used recently; check again at `last_used + timeout`.
    UsedAt(Instant),
}

/// Holds a key's dial slot; on drop (success, failure or cancellation) releases it and removes
/// the key's entry if it ended up with no connections and no other waiters.
struct DialSlot<'a> {
    guard: Option<OwnedMutexGuard<()>>,
    pool: &'a PoolInner,
    key: &'a PoolKey,
}

impl Drop for DialSlot<'_> {
    fn drop(&mut self) {
        drop(self.guard.take());
        self.pool.forget_key_if_unused(self.key);
    }
}

impl PoolInner {
    pub(crate) fn new(cfg: Config, dialer: Arc<dyn Dialer>) -> Self {
        PoolInner {
            cfg,
            dialer,
            keys: Mutex::new(HashMap::new()),
            next_conn_id: AtomicU64::new(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<PoolKey, KeyConns>> {
        // A panic while holding the lock cannot leave the map logically inconsistent (every
        // section is a single insert/remove/counter update), so keep using it.
        self.keys.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn next_id(&self) -> u64 {
        self.next_conn_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Reserves a stream on an existing connection of `key`, or returns that key's dial slot.
    pub(crate) async fn checkout(
        self: &Arc<Self>,
        key: &PoolKey,
        tls: &Arc<rustls::ClientConfig>,
    ) -> Result<Checkout, HboneError> {
        let dial_lock = match self.try_reserve(key) {
            Ok(checkout) => return Ok(checkout),
            Err(dial_lock) => dial_lock,
        };
        // Only callers for this key wait here; the map lock is not held.
        let slot = DialSlot {
            guard: Some(dial_lock.lock_owned().await),
            pool: self,
            key,
        };
        // Whoever held the slot before us may have dialed a connection with room for us.
        if let Ok(checkout) = self.try_reserve(key) {
            return Ok(checkout);
        }
        tracing::debug!(dst = %key.dst, "no pooled connection with spare streams, dialing");
        let pooled = conn::dial(self, key, tls).await?;
        let checkout = self.insert_and_reserve(key, pooled);
        drop(slot);
        Ok(checkout)
    }

    fn try_reserve(&self, key: &PoolKey) -> Result<Checkout, Arc<AsyncMutex<()>>> {
        let max = self.cfg.pool_max_streams_per_conn as usize;
        let mut keys = self.lock();
        if let Some(entry) = keys.get_mut(key) {
            return Self::reserve_in(entry, max);
        }
        let entry = keys.entry(key.clone()).or_default();
        Self::reserve_in(entry, max)
    }

    fn reserve_in(entry: &mut KeyConns, max: usize) -> Result<Checkout, Arc<AsyncMutex<()>>> {
        entry.conns.retain(PooledConn::usable);
        for pooled in &entry.conns {
            // Read on every checkout (not once at handshake) so the peer's
            // SETTINGS_MAX_CONCURRENT_STREAMS applies as soon as it has arrived.
            let limit = max.min(pooled.send.current_max_send_streams());
            if pooled.state.active.load(Ordering::Acquire) < limit {
                return Ok(Self::reserve(pooled));
            }
        }
        Err(entry.dial_lock.clone())
    }

    /// Must be called with the map lock held (increments race only with guard drops, which
    /// only decrement).
    fn reserve(pooled: &PooledConn) -> Checkout {
        pooled.state.active.fetch_add(1, Ordering::AcqRel);
        pooled.state.touch();
        Checkout {
            send: pooled.send.clone(),
            guard: StreamGuard {
                conn: pooled.state.clone(),
            },
        }
    }

    fn insert_and_reserve(&self, key: &PoolKey, pooled: PooledConn) -> Checkout {
        let mut keys = self.lock();
        let checkout = Self::reserve(&pooled);
        keys.entry(key.clone()).or_default().conns.push(pooled);
        checkout
    }

    /// Drops the pool's handle on connection `id` of `key` (its driver ended, or it failed).
    pub(crate) fn remove(&self, key: &PoolKey, id: u64) {
        let mut keys = self.lock();
        if let Some(entry) = keys.get_mut(key) {
            entry.conns.retain(|c| c.state.id != id);
            if entry.conns.is_empty() && Arc::strong_count(&entry.dial_lock) == 1 {
                keys.remove(key);
            }
        }
    }

    pub(crate) fn mark_broken(&self, key: &PoolKey, id: u64) {
        let keys = self.lock();
        if let Some(pooled) = keys
            .get(key)
            .and_then(|e| e.conns.iter().find(|c| c.state.id == id))
        {
            pooled.state.broken.store(true, Ordering::Release);
        }
        drop(keys);
        self.remove(key, id);
    }

    fn forget_key_if_unused(&self, key: &PoolKey) {
        let mut keys = self.lock();
        if let Some(entry) = keys.get(key) {
            if entry.conns.is_empty() && Arc::strong_count(&entry.dial_lock) == 1 {
                keys.remove(key);
            }
        }
    }

    /// Evicts connection `state` of `key` if it has had no streams for `timeout`. The check and
    /// the removal happen under the map lock, which is also where streams are reserved, so a
    /// connection is never evicted between a checkout and its stream.
    pub(crate) fn evict_if_idle(
        &self,
        key: &PoolKey,
        state: &ConnState,
        timeout: Duration,
    ) -> IdleCheck {
        let mut keys = self.lock();
        let Some(entry) = keys.get_mut(key) else {
            return IdleCheck::Evicted;
        };
        if state.active.load(Ordering::Acquire) > 0 {
            return IdleCheck::Busy;
        }
        let last_used = state.last_used();
        if last_used.elapsed() < timeout {
            return IdleCheck::UsedAt(last_used);
        }
        entry.conns.retain(|c| c.state.id != state.id);
        if entry.conns.is_empty() && Arc::strong_count(&entry.dial_lock) == 1 {
            keys.remove(key);
        }
        IdleCheck::Evicted
    }

    pub(crate) fn connection_count(&self) -> usize {
        self.lock().values().map(|e| e.conns.len()).sum()
    }
}

/// Runs in the connection's driver task: evicts the connection from the pool once idle for
/// `timeout`, then returns. Holds only a weak reference so a dropped pool is not kept alive.
pub(crate) async fn idle_watch(
    pool: Weak<PoolInner>,
    key: PoolKey,
    state: Arc<ConnState>,
    timeout: Duration,
) {
    let mut deadline = state.last_used() + timeout;
    loop {
        tokio::time::sleep_until(deadline.into()).await;
        let Some(pool) = pool.upgrade() else {
            return;
        };
        match pool.evict_if_idle(&key, &state, timeout) {
            IdleCheck::Evicted => {
                tracing::debug!(conn = state.id, "idle connection evicted from the pool");
                return;
            }
            IdleCheck::Busy => deadline = Instant::now() + timeout,
            IdleCheck::UsedAt(at) => deadline = at + timeout,
        }
    }
}

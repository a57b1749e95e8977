//! Per-backend traffic policy and its live state: which endpoint a request goes to (locality
//! level, load balancer, outlier ejections), the connection pool limits, and the outcome
//! bookkeeping.
//!
//! A backend is what Envoy calls a cluster: `hostname|subset|port`. Its live state (requests in
//! flight per endpoint, ejections, pool counters) is shared by every rule that sends to it and
//! must survive route pushes, while the xDS handler recompiles each pushed resource on its
//! own; so states live in a process-wide registry keyed by the cluster name, held weakly so a
//! backend that disappears from the config frees its state.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, Weak};
use std::time::Instant;

use http::HeaderMap;

use super::lb::{self, LbPolicy, Ring};
use super::locality::{self, Locality, LocalityPolicy, Plan};
use super::outlier::{self, Detector, Outcome, OutlierConfig};
use super::pool::{Pool, PoolLimits};
use super::Endpoint;

/// The merged DestinationRule policy of one backend.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    /// Load balancer.
    pub lb: LbPolicy,
    /// Connection pool limits.
    pub pool: PoolLimits,
    /// Outlier detection; `None` = off.
    pub outlier: Option<OutlierConfig>,
    /// Locality load balancing; `None` = off.
    pub locality: Option<LocalityPolicy>,
}

/// Per endpoint: requests in flight and the outlier detector.
#[derive(Debug, Default)]
struct EndpointState {
    active: u64,
    detector: Detector,
}

/// Live state of one cluster.
#[derive(Debug, Default)]
pub struct ClusterState {
    endpoints: Mutex<HashMap<SocketAddr, EndpointState>>,
    rr: AtomicUsize,
    /// Connection pool counters.
    pub pool: Arc<Pool>,
}

impl ClusterState {
    fn lock(&self) -> MutexGuard<'_, HashMap<SocketAddr, EndpointState>> {
        // A panic while holding this lock cannot leave the counters inconsistent enough to
        // matter; keep serving rather than poisoning the data path.
        self.endpoints
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

static REGISTRY: LazyLock<Mutex<HashMap<String, Weak<ClusterState>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// The live state of cluster `name`, shared with every other holder of that name.
pub fn state_for(name: &str) -> Arc<ClusterState> {
    let mut reg = REGISTRY
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(s) = reg.get(name).and_then(Weak::upgrade) {
        return s;
    }
    let s = Arc::new(ClusterState::default());
    reg.insert(name.to_string(), Arc::downgrade(&s));
    if reg.len() > 64 {
        reg.retain(|_, w| w.strong_count() > 0);
    }
    s
}

/// What the request offers for hashing.
#[derive(Debug, Clone, Copy)]
pub struct HashInput<'a> {
    /// Request headers.
    pub headers: &'a HeaderMap,
    /// Raw query string.
    pub query: Option<&'a str>,
    /// HBONE peer address (the source pod).
    pub peer: IpAddr,
}

/// Endpoints of one backend with its policy and live state.
#[derive(Debug)]
pub struct Cluster {
    /// `hostname|subset|port`.
    pub name: String,
    /// Policy.
    pub policy: Policy,
    /// Endpoints.
    pub endpoints: Vec<Arc<Endpoint>>,
    ring: Option<Ring>,
    /// The endpoints arranged by locality for this waypoint; `None` = no locality preference.
    pub plan: Option<Plan>,
    /// Live state.
    pub state: Arc<ClusterState>,
}

/// An endpoint chosen for one attempt: counts as in flight (least request) until dropped, so a
/// caller keeps it for as long as the response body flows; report the outcome with
/// [`Picked::record`] (or [`Picked::finish`], which also lets it go).
#[derive(Debug)]
pub struct Picked {
    /// The endpoint.
    pub endpoint: Arc<Endpoint>,
    state: Arc<ClusterState>,
    outlier: Option<OutlierConfig>,
    total: usize,
}

impl Picked {
    /// Records how the attempt ended (outlier detection); the endpoint stays in flight.
    pub fn record(&mut self, outcome: Outcome) {
        let Some(cfg) = &self.outlier else {
            return;
        };
        let mut eps = self.state.lock();
        let now = Instant::now();
        let ejected = eps
            .values_mut()
            .map(|e| e.detector.is_ejected(now))
            .filter(|ejected| *ejected)
            .count();
        if let Some(e) = eps.get_mut(&self.endpoint.addr) {
            if e.detector.record(cfg, outcome)
                && outlier::may_eject(ejected, self.total, cfg.max_ejection_percent)
            {
                tracing::info!(endpoint = %self.endpoint.addr, workload = %self.endpoint.workload, "outlier detection: endpoint ejected");
                e.detector.eject(cfg, now);
            }
        }
    }

    /// Records the outcome and releases the in-flight count.
    pub fn finish(mut self, outcome: Outcome) {
        self.record(outcome);
    }
}

impl Drop for Picked {
    fn drop(&mut self) {
        if let Some(e) = self.state.lock().get_mut(&self.endpoint.addr) {
            e.active = e.active.saturating_sub(1);
        }
    }
}

impl Cluster {
    /// A cluster named `name` over `endpoints` with `policy`, for a waypoint at `own`.
    pub fn new(
        name: String,
        policy: Policy,
        endpoints: Vec<Arc<Endpoint>>,
        own: &Locality,
    ) -> Self {
        let ring = match &policy.lb {
            LbPolicy::RingHash { ring_size, .. } => {
                let ids: Vec<String> = endpoints.iter().map(|e| e.addr.to_string()).collect();
                Some(Ring::new(&ids, *ring_size))
            }
            _ => None,
        };
        let plan = policy.locality.as_ref().and_then(|p| {
            let ls: Vec<&Locality> = endpoints.iter().map(|e| &e.locality).collect();
            locality::plan(p, own, &ls)
        });
        if let Some(plan) = &plan {
            tracing::debug!(cluster = %name, waypoint_locality = %own, ?plan, "locality load balancing");
        }
        let state = state_for(&name);
        Cluster {
            name,
            policy,
            endpoints,
            ring,
            plan,
            state,
        }
    }

    /// Chooses an endpoint that is not ejected; `None` when there is none (`UH`).
    pub fn pick(&self, input: Option<HashInput<'_>>) -> Option<Picked> {
        let roll = || rand::random::<u64>() as usize;
        self.pick_with(input, roll)
    }

    /// As [`Cluster::pick`] with a source of random numbers (tests).
    pub fn pick_with(
        &self,
        input: Option<HashInput<'_>>,
        mut roll: impl FnMut() -> usize,
    ) -> Option<Picked> {
        if self.endpoints.is_empty() {
            return None;
        }
        let now = Instant::now();
        let mut eps = self.state.lock();
        let usable: Vec<bool> = self
            .endpoints
            .iter()
            .map(|e| !eps.entry(e.addr).or_default().detector.is_ejected(now))
            .collect();
        let hash = match &self.policy.lb {
            LbPolicy::RingHash { key, .. } => {
                input.and_then(|i| lb::request_hash(key, i.headers, i.query, i.peer))
            }
            _ => None,
        };
        let candidates: Vec<usize> = match &self.plan {
            // The level (or locality) first, then the algorithm within it; a hashed request
            // picks its level by its hash so it stays put while health does not change.
            Some(plan) => locality::choose(plan, &usable, hash.unwrap_or_else(|| roll() as u64))?,
            None => (0..self.endpoints.len()).filter(|i| usable[*i]).collect(),
        };
        if candidates.is_empty() {
            return None;
        }
        let chosen = match &self.policy.lb {
            LbPolicy::RingHash { .. } => match (hash, &self.ring) {
                (Some(h), Some(ring)) if self.plan.is_none() => ring.lookup(h, |i| usable[i])?,
                (Some(h), Some(ring)) => {
                    let mut allowed = vec![false; self.endpoints.len()];
                    for i in &candidates {
                        allowed[*i] = true;
                    }
                    ring.lookup(h, |i| allowed[i])?
                }
                _ => candidates[roll() % candidates.len()],
            },
            LbPolicy::RoundRobin => {
                candidates[self.state.rr.fetch_add(1, Ordering::Relaxed) % candidates.len()]
            }
            LbPolicy::Random => candidates[roll() % candidates.len()],
            LbPolicy::LeastRequest => {
                let active: Vec<u64> = candidates
                    .iter()
                    .map(|i| eps.get(&self.endpoints[*i].addr).map_or(0, |e| e.active))
                    .collect();
                candidates[lb::p2c(&active, roll(), roll())?]
            }
        };
        let ep = self.endpoints[chosen].clone();
        eps.entry(ep.addr).or_default().active += 1;
        Some(Picked {
            endpoint: ep,
            state: self.state.clone(),
            outlier: self.policy.outlier.clone(),
            total: self.endpoints.len(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routes::lb::HashKey;
    use std::time::Duration;

    fn ep(i: u8) -> Arc<Endpoint> {
        Arc::new(Endpoint {
            addr: SocketAddr::from(([10, 9, 0, i], 8080)),
            identity: String::new(),
            hbone: true,
            workload: format!("w{i}"),
            namespace: "n".into(),
            canonical_name: String::new(),
            canonical_revision: String::new(),
            cluster: String::new(),
            locality: Locality::default(),
        })
    }

    fn cluster(name: &str, lb: LbPolicy, n: u8) -> Cluster {
        Cluster::new(
            name.into(),
            Policy {
                lb,
                ..Default::default()
            },
            (1..=n).map(ep).collect(),
            &Locality::default(),
        )
    }

    fn counts(c: &Cluster, n: usize) -> HashMap<SocketAddr, u32> {
        let mut m = HashMap::new();
        for _ in 0..n {
            let p = c.pick(None).unwrap();
            *m.entry(p.endpoint.addr).or_default() += 1;
            p.finish(Outcome::Status(200));
        }
        m
    }

    #[test]
    fn round_robin_is_even_and_random_is_roughly_even() {
        let rr = counts(&cluster("t-rr|", LbPolicy::RoundRobin, 3), 300);
        assert!(rr.values().all(|c| *c == 100), "{rr:?}");
        let rnd = counts(&cluster("t-rnd|", LbPolicy::Random, 3), 6000);
        // 2,000 each ± 4.5 σ (σ ≈ 36.5).
        assert!(rnd.values().all(|c| (1835..=2165).contains(c)), "{rnd:?}");
    }

    #[test]
    fn least_request_avoids_the_busy_endpoint() {
        let c = cluster("t-lr|", LbPolicy::LeastRequest, 2);
        // One request held on whichever endpoint it landed on: that endpoint is busy.
        let held = c.pick(None).unwrap();
        let busy = held.endpoint.addr;
        // Every new request goes to the idle one while the busy one holds its request.
        for _ in 0..100 {
            let p = c.pick(None).unwrap();
            assert_ne!(p.endpoint.addr, busy);
            p.finish(Outcome::Status(200));
        }
        drop(held);
    }

    #[test]
    fn a_recorded_attempt_stays_in_flight_until_dropped() {
        let c = cluster("t-lr-held|", LbPolicy::LeastRequest, 2);
        // The response head came back (outcome recorded) but its body is still flowing.
        let mut held = c.pick(None).unwrap();
        held.record(Outcome::Status(200));
        let busy = held.endpoint.addr;
        for _ in 0..50 {
            let p = c.pick(None).unwrap();
            assert_ne!(p.endpoint.addr, busy, "a streaming response still counts");
            p.finish(Outcome::Status(200));
        }
        drop(held);
        let seen: std::collections::HashSet<_> = (0..50)
            .map(|_| c.pick(None).unwrap().endpoint.addr)
            .collect();
        assert!(seen.contains(&busy), "released once dropped: {seen:?}");
    }

    #[test]
    fn ring_hash_is_sticky_per_header_value() {
        let c = cluster(
            "t-ring|",
            LbPolicy::RingHash {
                key: HashKey::Header("x-user".parse().unwrap()),
                ring_size: 1024,
            },
            4,
        );
        let peer: IpAddr = "10.0.0.1".parse().unwrap();
        let mut seen = std::collections::HashSet::new();
        for u in 0..40 {
            let mut h = HeaderMap::new();
            h.insert("x-user", format!("user{u}").parse().unwrap());
            let input = HashInput {
                headers: &h,
                query: None,
                peer,
            };
            let first = c.pick(Some(input)).unwrap().endpoint.addr;
            for _ in 0..10 {
                assert_eq!(c.pick(Some(input)).unwrap().endpoint.addr, first);
            }
            seen.insert(first);
        }
        assert!(seen.len() >= 3, "40 users all on {seen:?}");
    }

    #[test]
    fn outlier_ejects_then_readmits_and_uh_when_none_left() {
        let mut c = cluster("t-out|", LbPolicy::RoundRobin, 2);
        c.policy.outlier = Some(OutlierConfig {
            consecutive_5xx: 2,
            consecutive_gateway: 0,
            interval: Duration::from_millis(10),
            base_ejection: Duration::from_millis(80),
            max_ejection_percent: 100,
        });
        let bad = ep(1).addr;
        // Endpoint 1 fails, 2 succeeds.
        for _ in 0..4 {
            let p = c.pick(None).unwrap();
            let o = if p.endpoint.addr == bad {
                Outcome::Status(500)
            } else {
                Outcome::Status(200)
            };
            p.finish(o);
        }
        // Ejected: all traffic on endpoint 2.
        for _ in 0..20 {
            let p = c.pick(None).unwrap();
            assert_ne!(p.endpoint.addr, bad);
            p.finish(Outcome::Status(200));
        }
        // Endpoint 2 fails too: none left.
        for _ in 0..2 {
            c.pick(None).unwrap().finish(Outcome::LocalFailure);
        }
        assert!(c.pick(None).is_none(), "every endpoint ejected: UH");
        // Time passes (a readiness signal is not available for a pure timer): readmitted.
        std::thread::sleep(Duration::from_millis(100));
        let picked: std::collections::HashSet<_> = (0..4)
            .map(|_| {
                let p = c.pick(None).unwrap();
                let a = p.endpoint.addr;
                p.finish(Outcome::Status(200));
                a
            })
            .collect();
        assert!(picked.contains(&bad), "endpoint 1 readmitted");
    }

    #[test]
    fn max_ejection_percent_keeps_endpoints() {
        let mut c = cluster("t-maxej|", LbPolicy::RoundRobin, 2);
        c.policy.outlier = Some(OutlierConfig {
            consecutive_5xx: 1,
            consecutive_gateway: 0,
            interval: Duration::from_secs(10),
            base_ejection: Duration::from_secs(30),
            max_ejection_percent: 10,
        });
        for _ in 0..10 {
            if let Some(p) = c.pick(None) {
                p.finish(Outcome::Status(500));
            }
        }
        // 10 % of 2 rounds down to 0, but one ejection is always allowed: one stays.
        assert!(c.pick(None).is_some());
    }

    #[test]
    fn state_survives_recompilation() {
        let a = cluster("t-shared|", LbPolicy::LeastRequest, 2);
        let held = a.pick(None).unwrap();
        let b = cluster("t-shared|", LbPolicy::LeastRequest, 2);
        // The new compilation sees the request in flight and picks the other endpoint.
        let p = b.pick(None).unwrap();
        assert_ne!(p.endpoint.addr, held.endpoint.addr);
    }
}

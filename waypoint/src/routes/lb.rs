//! Load-balancing algorithms of a DestinationRule `loadBalancer`: round robin, random,
//! least request (power of two choices) and ring hash (consistent hash on a header, cookie,
//! source IP or query parameter).
//!
//! The functions here are pure: they choose an index among candidates; the caller
//! ([`super::cluster`]) owns the counters and knows which endpoints are ejected.

use std::net::IpAddr;

use http::HeaderMap;

/// What the ring hash is computed from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    /// `httpHeaderName`.
    Header(http::header::HeaderName),
    /// `httpCookie.name`.
    Cookie(String),
    /// `useSourceIp`: the HBONE peer's address (the source pod in ambient).
    SourceIp,
    /// `httpQueryParameterName`.
    QueryParam(String),
}

/// The algorithm of one backend.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum LbPolicy {
    /// ROUND_ROBIN (Istio's default).
    #[default]
    RoundRobin,
    /// LEAST_REQUEST: of two random endpoints, the one with fewer requests in flight.
    LeastRequest,
    /// RANDOM.
    Random,
    /// consistentHash: a ring of `ring_size` virtual nodes.
    RingHash {
        /// Where the key comes from.
        key: HashKey,
        /// Virtual nodes (minimumRingSize).
        ring_size: usize,
    },
}

/// 64-bit FNV-1a, finished with splitmix64 so nearby inputs spread over the ring. Stable across
/// processes and versions (unlike `DefaultHasher`), so every waypoint replica maps a key to
/// the same endpoint.
pub fn hash64(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix(h)
}

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The request's hash for `key`; `None` when the request lacks it (then the endpoint is
/// chosen at random, as Envoy does).
pub fn request_hash(
    key: &HashKey,
    headers: &HeaderMap,
    query: Option<&str>,
    peer: IpAddr,
) -> Option<u64> {
    match key {
        HashKey::Header(name) => headers.get(name).map(|v| hash64(v.as_bytes())),
        HashKey::Cookie(name) => headers
            .get_all(http::header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|kv| kv.trim().split_once('='))
            .find(|(k, _)| k == name)
            .map(|(_, v)| hash64(v.as_bytes())),
        HashKey::SourceIp => Some(hash64(peer.to_string().as_bytes())),
        HashKey::QueryParam(name) => query?
            .split('&')
            .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
            .find(|(k, _)| k == name)
            .map(|(_, v)| hash64(v.as_bytes())),
    }
}

/// A hash ring: `ring_size` points spread over the endpoints, each endpoint's points derived
/// from its address so that removing one endpoint only moves the keys that were on it.
#[derive(Debug, Clone, Default)]
pub struct Ring {
    /// (point, endpoint index), sorted by point.
    points: Vec<(u64, usize)>,
}

impl Ring {
    /// Builds the ring for endpoints identified by `ids` (their addresses).
    pub fn new(ids: &[String], ring_size: usize) -> Self {
        if ids.is_empty() {
            return Ring::default();
        }
        let per = ring_size.div_ceil(ids.len()).max(1);
        let mut points = Vec::with_capacity(per * ids.len());
        for (i, id) in ids.iter().enumerate() {
            for v in 0..per {
                points.push((hash64(format!("{id}_{v}").as_bytes()), i));
            }
        }
        points.sort_unstable();
        Ring { points }
    }

    /// The first endpoint clockwise from `hash` for which `usable` holds (ejected endpoints
    /// are skipped, so their keys move to the next endpoint and come back on readmission).
    pub fn lookup(&self, hash: u64, usable: impl Fn(usize) -> bool) -> Option<usize> {
        if self.points.is_empty() {
            return None;
        }
        let start = self.points.partition_point(|(p, _)| *p < hash);
        let n = self.points.len();
        (0..n)
            .map(|i| self.points[(start + i) % n].1)
            .find(|i| usable(*i))
    }
}

/// Power of two choices: two distinct candidates from `rolls`, the one with fewer requests in
/// flight (the first on a tie). `active[i]` is candidate `i`'s count.
pub fn p2c(active: &[u64], roll_a: usize, roll_b: usize) -> Option<usize> {
    let n = active.len();
    match n {
        0 => None,
        1 => Some(0),
        _ => {
            let a = roll_a % n;
            // A second draw among the other n-1 keeps the two distinct.
            let b = (a + 1 + roll_b % (n - 1)) % n;
            Some(if active[b] < active[a] { b } else { a })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn ids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("10.0.0.{i}:8080")).collect()
    }

    #[test]
    fn ring_spreads_keys_and_is_sticky() {
        let ring = Ring::new(&ids(4), 1024);
        let mut counts = [0u32; 4];
        for k in 0..8000 {
            let h = hash64(format!("user-{k}").as_bytes());
            let i = ring.lookup(h, |_| true).unwrap();
            counts[i] += 1;
            // The same key always lands on the same endpoint.
            assert_eq!(ring.lookup(h, |_| true), Some(i));
        }
        for c in counts {
            // 2,000 expected each; 1,024 virtual nodes keep the spread within ±30 %.
            assert!((1400..=2600).contains(&c), "{counts:?}");
        }
    }

    #[test]
    fn removing_an_endpoint_moves_only_its_keys() {
        let all = ids(5);
        let before = Ring::new(&all, 1024);
        // Endpoint 2 leaves: rebuild the ring without it.
        let rest: Vec<String> = all
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != 2)
            .map(|(_, s)| s.clone())
            .collect();
        let after = Ring::new(&rest, 1024);
        let mut moved = 0;
        let mut on_removed = 0;
        for k in 0..5000 {
            let h = hash64(format!("k{k}").as_bytes());
            let b = &all[before.lookup(h, |_| true).unwrap()];
            let a = &rest[after.lookup(h, |_| true).unwrap()];
            if b == &all[2] {
                on_removed += 1;
            } else if a != b {
                moved += 1;
            }
        }
        // Keys of the remaining endpoints stay put, up to the few whose points shifted
        // because each endpoint gets more virtual nodes on the smaller ring.
        assert!(on_removed > 600, "{on_removed}");
        assert!(
            moved < 5000 / 10,
            "{moved} keys of surviving endpoints moved"
        );
    }

    #[test]
    fn skipping_an_ejected_endpoint_only_moves_its_keys() {
        let ring = Ring::new(&ids(3), 1024);
        for k in 0..2000 {
            let h = hash64(format!("k{k}").as_bytes());
            let first = ring.lookup(h, |_| true).unwrap();
            let skipping = ring.lookup(h, |i| i != 1).unwrap();
            if first != 1 {
                assert_eq!(first, skipping);
            } else {
                assert_ne!(skipping, 1);
            }
        }
    }

    #[test]
    fn p2c_prefers_the_idle_endpoint() {
        // With two endpoints both are always drawn: the idle one always wins.
        for r in 0..50 {
            assert_eq!(p2c(&[5, 0], r, r * 7), Some(1));
        }
        // With many, a busy endpoint is chosen only when both draws are busy.
        let active = [9, 0, 0, 0];
        let mut busy = 0;
        let mut hits: HashMap<usize, u32> = HashMap::new();
        for r in 0..4000usize {
            let i = p2c(&active, rand_like(r), rand_like(r + 99991)).unwrap();
            *hits.entry(i).or_default() += 1;
            if i == 0 {
                busy += 1;
            }
        }
        assert_eq!(busy, 0, "{hits:?}");
        assert_eq!(p2c(&[], 0, 0), None);
        assert_eq!(p2c(&[3], 5, 9), Some(0));
    }

    fn rand_like(x: usize) -> usize {
        usize::try_from(mix(x as u64) % 1_000_003).unwrap()
    }

    #[test]
    fn request_hash_sources() {
        let mut h = HeaderMap::new();
        h.insert("x-user", "alice".parse().unwrap());
        h.insert("cookie", "a=1; session=xyz".parse().unwrap());
        let peer: IpAddr = "10.0.0.7".parse().unwrap();
        let header = HashKey::Header("x-user".parse().unwrap());
        assert_eq!(
            request_hash(&header, &h, None, peer),
            Some(hash64(b"alice"))
        );
        assert_eq!(
            request_hash(&HashKey::Cookie("session".into()), &h, None, peer),
            Some(hash64(b"xyz"))
        );
        assert_eq!(
            request_hash(
                &HashKey::QueryParam("u".into()),
                &h,
                Some("a=2&u=bob"),
                peer
            ),
            Some(hash64(b"bob"))
        );
        assert_eq!(
            request_hash(&HashKey::QueryParam("u".into()), &h, Some("a=2"), peer),
            None
        );
        assert!(request_hash(&HashKey::SourceIp, &h, None, peer).is_some());
        assert_eq!(
            request_hash(&HashKey::Header("x-none".parse().unwrap()), &h, None, peer),
            None
        );
    }
}

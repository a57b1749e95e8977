//! Locality-aware load balancing (DestinationRule `loadBalancer.localityLbSetting`), the way
//! Istio programs Envoy, evaluated by each waypoint replica against its own locality.
//!
//! * Failover (the default when the backend has outlier detection): endpoints are ranked in
//!   priority levels: same region, zone and subzone (0); same region and zone (1); same region
//!   (2); other regions (3). With a `failover {from, to}` entry for the waypoint's region,
//!   regions other than `to` drop to a last level (4). Traffic is split between levels by
//!   Envoy's priority load: a level takes min(100 %, 1.4 × its healthy share); what it cannot
//!   take spills to the next. So a fully healthy local level takes everything, and a level
//!   whose endpoints are all ejected takes nothing.
//! * Distribute: the first entry whose `from` matches the waypoint's locality gives each
//!   endpoint locality a weight (a `to` pattern's weight shared by the localities it claims,
//!   in proportion to their endpoints; the most specific pattern claims first). Localities no
//!   pattern claims get no traffic. A locality's weight shrinks with its health (Envoy's
//!   locality-weighted balancing: weight × min(1, 1.4 × healthy share)).
//!
//! The load-balancing algorithm of the backend then chooses among the chosen level's (or
//! locality's) endpoints that are not ejected.

use std::collections::BTreeMap;

use mesh_proto::route as pb;

/// Envoy's overprovisioning factor, in percent.
const OVERPROVISIONING: u64 = 140;

/// Where the waypoint or an endpoint runs; empty strings are unknown (and equal to each
/// other, as in Istio's comparison).
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Locality {
    /// Region.
    pub region: String,
    /// Zone.
    pub zone: String,
    /// Subzone.
    pub subzone: String,
}

impl Locality {
    /// From the pushed message (absent = unknown).
    pub fn from_pb(l: Option<&pb::Locality>) -> Self {
        l.map(|l| Locality {
            region: l.region.clone(),
            zone: l.zone.clone(),
            subzone: l.subzone.clone(),
        })
        .unwrap_or_default()
    }

    /// True when `pattern` (`region[/zone[/subzone]]`, `*` for any value, missing segments
    /// match anything) names this locality: Istio's `LocalityMatch`.
    pub fn matches(&self, pattern: &str) -> bool {
        let mut parts = pattern.splitn(3, '/');
        let (r, z, s) = (parts.next(), parts.next(), parts.next());
        let seg = |p: Option<&str>, v: &str, required: bool| match p {
            Some("*") => true,
            None | Some("") => !required,
            Some(p) => p == v,
        };
        seg(r, &self.region, true) && seg(z, &self.zone, false) && seg(s, &self.subzone, false)
    }
}

impl std::fmt::Display for Locality {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}/{}", self.region, self.zone, self.subzone)
    }
}

/// The locality policy of a backend, as pushed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LocalityPolicy {
    /// Priority levels; `(from, to)` region failover overrides.
    Failover(Vec<(String, String)>),
    /// Weighted localities: `(from, [(to pattern, weight)])`, first matching `from` wins.
    Distribute(Vec<(String, Vec<(String, u32)>)>),
}

impl LocalityPolicy {
    /// From the pushed message.
    pub fn from_pb(l: &pb::LocalityLb) -> Self {
        if l.distribute.is_empty() {
            LocalityPolicy::Failover(
                l.failover
                    .iter()
                    .map(|f| (f.from.clone(), f.to.clone()))
                    .collect(),
            )
        } else {
            LocalityPolicy::Distribute(
                l.distribute
                    .iter()
                    .map(|d| {
                        (
                            d.from.clone(),
                            d.to.iter()
                                .map(|w| (w.locality.clone(), w.weight))
                                .collect(),
                        )
                    })
                    .collect(),
            )
        }
    }
}

/// A backend's endpoints arranged for one waypoint locality (indices into its endpoints).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Priority levels, best first; empty levels are left out.
    Levels(Vec<Vec<usize>>),
    /// Localities with their weights; endpoints in none get no traffic.
    Weighted(Vec<(u32, Vec<usize>)>),
}

/// Istio's priority of an endpoint for a waypoint at `own` (`LbPriority`, then the failover
/// override for the waypoint's region).
pub fn priority(own: &Locality, ep: &Locality, failover: &[(String, String)]) -> u32 {
    if own.region != ep.region {
        // Only the first entry for the waypoint's region counts.
        return match failover.iter().find(|(from, _)| *from == own.region) {
            Some((_, to)) if *to != ep.region => 4,
            _ => 3,
        };
    }
    if own.zone != ep.zone {
        2
    } else if own.subzone != ep.subzone {
        1
    } else {
        0
    }
}

/// How `policy` arranges `endpoints` (their localities) for a waypoint at `own`; `None` when it
/// changes nothing (one level, or no `distribute` entry for the waypoint's locality).
pub fn plan(policy: &LocalityPolicy, own: &Locality, endpoints: &[&Locality]) -> Option<Plan> {
    match policy {
        LocalityPolicy::Failover(failover) => {
            let mut levels: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
            for (i, l) in endpoints.iter().enumerate() {
                levels
                    .entry(priority(own, l, failover))
                    .or_default()
                    .push(i);
            }
            (levels.len() > 1).then(|| Plan::Levels(levels.into_values().collect()))
        }
        LocalityPolicy::Distribute(rules) => {
            let (_, to) = rules.iter().find(|(from, _)| own.matches(from))?;
            let mut groups: BTreeMap<&Locality, Vec<usize>> = BTreeMap::new();
            for (i, l) in endpoints.iter().enumerate() {
                groups.entry(*l).or_default().push(i);
            }
            // Most specific pattern first (Istio iterates a map here, in no fixed order).
            let mut patterns: Vec<&(String, u32)> = to.iter().collect();
            patterns.sort_by_key(|(p, _)| {
                std::cmp::Reverse(p.split('/').filter(|s| *s != "*").count())
            });
            let mut claimed: Vec<(u32, Vec<usize>)> = Vec::new();
            for (pattern, weight) in patterns {
                let mut mine: Vec<Vec<usize>> = Vec::new();
                groups.retain(|l, members| {
                    if l.matches(pattern) {
                        mine.push(std::mem::take(members));
                        false
                    } else {
                        true
                    }
                });
                let total: u64 = mine.iter().map(|m| m.len() as u64).sum();
                for members in mine {
                    // Istio: the pattern's weight shared in proportion to endpoint counts,
                    // rounded up.
                    let w = (members.len() as u64 * u64::from(*weight)).div_ceil(total.max(1));
                    if w > 0 {
                        claimed.push((u32::try_from(w).unwrap_or(u32::MAX), members));
                    }
                }
            }
            Some(Plan::Weighted(claimed))
        }
    }
}

/// Envoy's load per priority level (percent, summing to 100) from `(healthy, total)` per
/// level; all zero when nothing is healthy.
pub fn priority_loads(health: &[(usize, usize)]) -> Vec<u64> {
    let per: Vec<u64> = health
        .iter()
        .map(|(healthy, total)| {
            if *total == 0 {
                0
            } else {
                (OVERPROVISIONING * *healthy as u64 / *total as u64).min(100)
            }
        })
        .collect();
    // Availability above 100 % is capped: the best levels take it all.
    let normalized = per.iter().sum::<u64>().min(100);
    let mut loads = vec![0; per.len()];
    if normalized == 0 {
        return loads;
    }
    let mut left = 100u64;
    let mut first = None;
    for (i, h) in per.iter().enumerate() {
        loads[i] = (h * 100 / normalized).min(left);
        left -= loads[i];
        if loads[i] > 0 && first.is_none() {
            first = Some(i);
        }
    }
    // Rounding leftovers go to the first level with load, as in Envoy.
    if let Some(f) = first {
        loads[f] += left;
    }
    loads
}

/// The endpoints (not ejected: `usable[i]`) a request may go to under `plan`, chosen with
/// `roll` (random, or the request's hash so a hashed request sticks); `None` when none is
/// usable.
pub fn choose(plan: &Plan, usable: &[bool], roll: u64) -> Option<Vec<usize>> {
    let ok = |members: &[usize]| -> Vec<usize> {
        members
            .iter()
            .copied()
            .filter(|i| usable.get(*i).copied().unwrap_or(false))
            .collect()
    };
    match plan {
        Plan::Levels(levels) => {
            let usable_levels: Vec<Vec<usize>> = levels.iter().map(|l| ok(l)).collect();
            let health: Vec<(usize, usize)> = levels
                .iter()
                .zip(&usable_levels)
                .map(|(all, u)| (u.len(), all.len()))
                .collect();
            let loads = priority_loads(&health);
            let mut r = roll % 100;
            for (i, load) in loads.iter().enumerate() {
                if r < *load {
                    return Some(usable_levels[i].clone()).filter(|v| !v.is_empty());
                }
                r -= load;
            }
            None
        }
        Plan::Weighted(groups) => {
            let usable_groups: Vec<Vec<usize>> = groups.iter().map(|(_, m)| ok(m)).collect();
            let weights: Vec<f64> = groups
                .iter()
                .zip(&usable_groups)
                .map(|((w, all), u)| {
                    let health = (OVERPROVISIONING as f64 / 100.0 * u.len() as f64
                        / all.len().max(1) as f64)
                        .min(1.0);
                    f64::from(*w) * health
                })
                .collect();
            let total: f64 = weights.iter().sum();
            if total <= 0.0 {
                return None;
            }
            let mut r = (roll % 1_000_000) as f64 / 1_000_000.0 * total;
            for (i, w) in weights.iter().enumerate() {
                if *w > 0.0 && r < *w {
                    return Some(usable_groups[i].clone());
                }
                r -= w;
            }
            // Floating-point leftovers: the last locality with weight.
            weights
                .iter()
                .rposition(|w| *w > 0.0)
                .map(|i| usable_groups[i].clone())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(s: &str) -> Locality {
        let mut p = s.split('/');
        Locality {
            region: p.next().unwrap_or_default().into(),
            zone: p.next().unwrap_or_default().into(),
            subzone: p.next().unwrap_or_default().into(),
        }
    }

    #[test]
    fn priorities_by_region_zone_subzone() {
        let own = l("us-east/a/r1");
        assert_eq!(priority(&own, &l("us-east/a/r1"), &[]), 0);
        assert_eq!(priority(&own, &l("us-east/a/r2"), &[]), 1);
        assert_eq!(priority(&own, &l("us-east/b/r1"), &[]), 2);
        assert_eq!(priority(&own, &l("eu-west/a/r1"), &[]), 3);
        // Unknown compares equal to unknown (Istio): an unplaced waypoint prefers unplaced
        // endpoints.
        assert_eq!(priority(&Locality::default(), &Locality::default(), &[]), 0);
        assert_eq!(priority(&Locality::default(), &own, &[]), 3);
    }

    #[test]
    fn failover_mapping_ranks_the_target_region_before_the_others() {
        let own = l("us-east/a");
        let fo = vec![
            ("eu-west".to_string(), "us-east".to_string()),
            ("us-east".to_string(), "eu-west".to_string()),
        ];
        assert_eq!(priority(&own, &l("eu-west/x"), &fo), 3);
        assert_eq!(priority(&own, &l("ap-south/x"), &fo), 4);
        // Inside the region the mapping changes nothing.
        assert_eq!(priority(&own, &l("us-east/b"), &fo), 2);
        // A mapping for another region does not apply.
        let other = l("ap-south/z");
        assert_eq!(priority(&other, &l("eu-west/x"), &fo), 3);
        let eps = [
            l("ap-south/x"),
            l("eu-west/x"),
            l("us-east/b"),
            l("us-east/a"),
        ];
        let refs: Vec<&Locality> = eps.iter().collect();
        assert_eq!(
            plan(&LocalityPolicy::Failover(fo), &own, &refs),
            Some(Plan::Levels(vec![vec![3], vec![2], vec![1], vec![0]]))
        );
    }

    #[test]
    fn one_level_needs_no_plan() {
        let eps = [l("us/a"), l("us/a")];
        let refs: Vec<&Locality> = eps.iter().collect();
        assert_eq!(
            plan(&LocalityPolicy::Failover(vec![]), &l("us/a"), &refs),
            None
        );
    }

    #[test]
    fn priority_load_spills_by_health_with_overprovisioning() {
        // Healthy local level: everything.
        assert_eq!(priority_loads(&[(2, 2), (1, 1)]), vec![100, 0]);
        // 3 of 4 healthy: 1.4 × 75 % ≥ 100 %: still everything.
        assert_eq!(priority_loads(&[(3, 4), (1, 1)]), vec![100, 0]);
        // 1 of 2 healthy: 70 % stays, 30 % spills.
        assert_eq!(priority_loads(&[(1, 2), (2, 2)]), vec![70, 30]);
        // All ejected locally: the next level takes it all.
        assert_eq!(priority_loads(&[(0, 2), (2, 2)]), vec![0, 100]);
        // Everything degraded: loads scaled up to 100 (Envoy normalises).
        assert_eq!(priority_loads(&[(1, 4), (1, 4)]), vec![50, 50]);
        assert_eq!(priority_loads(&[(0, 1), (0, 1)]), vec![0, 0]);
    }

    #[test]
    fn choose_takes_the_best_healthy_level() {
        let p = Plan::Levels(vec![vec![0], vec![1, 2], vec![3]]);
        for r in 0..100 {
            assert_eq!(choose(&p, &[true; 4], r), Some(vec![0]));
        }
        // Level 0 ejected: level 1 (both endpoints).
        let usable = [false, true, true, true];
        for r in 0..100 {
            assert_eq!(choose(&p, &usable, r), Some(vec![1, 2]));
        }
        // Half of level 1 ejected as well: 70 % to it, 30 % spill to level 2.
        let usable = [false, true, false, true];
        let to_last = (0..100)
            .filter(|r| choose(&p, &usable, *r) == Some(vec![3]))
            .count();
        assert_eq!(to_last, 30);
        assert_eq!(choose(&p, &[false; 4], 7), None);
    }

    #[test]
    fn distribute_weights_localities_and_drops_the_unnamed() {
        let policy = LocalityPolicy::Distribute(vec![
            ("eu/*".into(), vec![("eu/*".into(), 100)]),
            (
                "us/a".into(),
                vec![("us/a".into(), 80), ("us/*".into(), 20)],
            ),
        ]);
        // us/a has 2 endpoints, us/b and us/c one each, eu one.
        let eps = [l("us/a"), l("us/a"), l("us/b"), l("us/c"), l("eu/x")];
        let refs: Vec<&Locality> = eps.iter().collect();
        let p = plan(&policy, &l("us/a/r9"), &refs).unwrap();
        // us/a claimed by the specific pattern; us/* shares 20 between us/b and us/c; eu
        // matches nothing: no traffic.
        assert_eq!(
            p,
            Plan::Weighted(vec![(80, vec![0, 1]), (10, vec![2]), (10, vec![3])])
        );
        let mut counts = [0u32; 5];
        for r in 0..10_000u64 {
            let chosen = choose(&p, &[true; 5], r * 100 + 37).unwrap();
            counts[chosen[0]] += 1;
        }
        assert_eq!(counts[4], 0, "{counts:?}");
        assert!((7900..=8100).contains(&counts[0]), "{counts:?}");
        assert!((900..=1100).contains(&counts[2]), "{counts:?}");
        // No entry for the waypoint's locality: no locality behaviour at all.
        assert_eq!(plan(&policy, &l("ap/z"), &refs), None);
        // A locality with every endpoint ejected gets nothing; the others share its weight.
        let usable = [false, false, true, true, true];
        for r in 0..1000u64 {
            let chosen = choose(&p, &usable, r * 997).unwrap();
            assert!(chosen == vec![2] || chosen == vec![3], "{chosen:?}");
        }
    }

    #[test]
    fn patterns_match_like_istio() {
        let x = l("us-west/zone1/rack2");
        for yes in [
            "*",
            "us-west",
            "us-west/*",
            "us-west/zone1",
            "us-west/zone1/*",
            "us-west/zone1/rack2",
        ] {
            assert!(x.matches(yes), "{yes}");
        }
        for no in [
            "eu",
            "us-west/zone2",
            "us-west/zone1/rack1",
            "us-west/*/rack1",
        ] {
            assert!(!x.matches(no), "{no}");
        }
    }
}

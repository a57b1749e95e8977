//! VirtualService fault injection: delay a share of requests, abort a share with a status.
//! A delayed request is flagged `DI`, an aborted one `FI` (Envoy's response flags); both can
//! apply to one request (the delay first).

use std::time::Duration;

/// `fault` of a rule.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Fault {
    /// `delay`: how long, and the share of requests (0-100).
    pub delay: Option<(Duration, f64)>,
    /// `abort`: status, and the share of requests (0-100).
    pub abort: Option<(u16, f64)>,
}

/// True for a share `percent` (0-100) of rolls uniformly drawn from `[0, 1)`.
pub fn hits(percent: f64, roll: f64) -> bool {
    roll * 100.0 < percent
}

impl Fault {
    /// The delay to apply, given a roll in `[0, 1)`.
    pub fn delay_with(&self, roll: f64) -> Option<Duration> {
        self.delay.and_then(|(d, p)| hits(p, roll).then_some(d))
    }

    /// The status to abort with, given a roll in `[0, 1)`.
    pub fn abort_with(&self, roll: f64) -> Option<u16> {
        self.abort.and_then(|(s, p)| hits(p, roll).then_some(s))
    }
}

/// `flags` with `DI` added (the set of flags the waypoint produces is small and static).
pub fn with_delay_flag(flags: &'static str) -> &'static str {
    match flags {
        "-" => "DI",
        "FI" => "DI,FI",
        "UO" => "DI,UO",
        "UH" => "DI,UH",
        "UF" => "DI,UF",
        "UC" => "DI,UC",
        "UT" => "DI,UT",
        "URX" => "DI,URX",
        "DC" => "DC,DI",
        "NR" => "DI,NR",
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn percentages_hold_statistically() {
        let f = Fault {
            delay: Some((Duration::from_millis(5), 10.0)),
            abort: Some((503, 50.0)),
        };
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let (mut delayed, mut aborted) = (0, 0);
        let n = 20_000;
        for _ in 0..n {
            if f.delay_with(rng.random()).is_some() {
                delayed += 1;
            }
            if f.abort_with(rng.random()) == Some(503) {
                aborted += 1;
            }
        }
        // Binomial: 10 % ± 4.5 σ (σ ≈ 42) and 50 % ± 4.5 σ (σ ≈ 71).
        assert!((1810..=2190).contains(&delayed), "{delayed}");
        assert!((9680..=10320).contains(&aborted), "{aborted}");
    }

    #[test]
    fn edges() {
        let f = Fault {
            delay: None,
            abort: Some((418, 100.0)),
        };
        assert_eq!(f.abort_with(0.999_999), Some(418));
        assert_eq!(f.delay_with(0.0), None);
        let never = Fault {
            abort: Some((500, 0.0)),
            ..Default::default()
        };
        assert_eq!(never.abort_with(0.0), None);
        assert_eq!(with_delay_flag("FI"), "DI,FI");
        assert_eq!(with_delay_flag("-"), "DI");
    }
}

//! Configuration plumbing every ambient-rs binary needs: [`Source`], the seam through which
//! configuration reads the environment (tests pass a map instead of touching the process), and
//! [`parse_duration`], the one duration syntax all our flags and variables accept.

use std::collections::HashMap;
use std::time::Duration;

/// Where configuration values come from.
pub trait Source {
    /// The value of `key`, if set.
    fn get(&self, key: &str) -> Option<String>;
}

/// The process environment.
pub struct ProcessEnv;

impl Source for ProcessEnv {
    fn get(&self, key: &str) -> Option<String> {
        std::env::var(key).ok()
    }
}

impl Source for HashMap<String, String> {
    fn get(&self, key: &str) -> Option<String> {
        HashMap::get(self, key).cloned()
    }
}

/// Parses "86400", "86400s", "24h", "1h30m", "500ms" (a bare number is seconds).
pub fn parse_duration(v: &str) -> Result<Duration, String> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    if v.is_empty() {
        return Err("empty duration".into());
    }
    let mut total = Duration::ZERO;
    let mut rest = v;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err("expected a number before each unit, e.g. 24h or 90m".into());
        }
        let n: u64 = rest[..digits]
            .parse()
            .map_err(|_| "number too large".to_string())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        total += match unit {
            "h" => Duration::from_secs(n * 3600),
            "m" => Duration::from_secs(n * 60),
            "s" => Duration::from_secs(n),
            "ms" => Duration::from_millis(n),
            "" => return Err("missing unit (h, m, s or ms)".into()),
            other => return Err(format!("unknown unit {other:?} (use h, m, s or ms)")),
        };
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("86400"), Ok(Duration::from_secs(86400)));
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86400)));
        assert_eq!(parse_duration("10m5s"), Ok(Duration::from_secs(605)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("h").is_err());
        assert!(parse_duration("5d").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn map_source() {
        let m: HashMap<String, String> = [("A".to_string(), "1".to_string())].into();
        assert_eq!(Source::get(&m, "A").as_deref(), Some("1"));
        assert_eq!(Source::get(&m, "B"), None);
    }
}

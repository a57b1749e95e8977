//! One module per command, plus what they share: the run context, where a component answers
//! ([`Endpoint`]: on this host or inside a local cluster's namespace) and HTTP fetches that turn
//! failures into errors naming the component, the address and what to check.

pub mod check;
pub mod describe;
pub mod local;
pub mod stat;
pub mod tap;
#[cfg(test)]
pub(crate) mod testing;
#[cfg(test)]
mod tests;
pub mod waypoint;
pub mod ztunnel_config;

use std::fmt;
use std::time::Duration;

use time::OffsetDateTime;

use crate::config::Source;
use crate::error::Error;
use crate::http::{self, HttpError, Response};
use crate::output::Style;

/// What every command gets besides its arguments.
pub struct Ctx<'a> {
    /// Environment (MESHCTL_* fallbacks).
    pub env: &'a dyn Source,
    /// Per-operation network timeout.
    pub timeout: Duration,
    /// Colour or not.
    pub style: Style,
    /// "Now", fixed for the whole run (tests pass their own).
    pub now: OffsetDateTime,
    /// Show progress on stderr while waiting (stderr is a terminal).
    pub progress: bool,
}

/// A component to fetch from, for error messages.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    /// "ztunnel admin", "istiod-lite", ...
    pub what: &'a str,
    /// `host:port`.
    pub addr: &'a str,
    /// How to point meshctl elsewhere.
    pub hint: &'a str,
}

/// Where a component answers HTTP: an address on this host's network, or one inside a
/// network namespace of a local cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `host:port`.
    pub addr: String,
    /// The namespace the address is reached from; `None`: this host's own network.
    pub netns: Option<String>,
}

impl Endpoint {
    /// `addr` on this host's network.
    pub fn host(addr: impl Into<String>) -> Endpoint {
        Endpoint {
            addr: addr.into(),
            netns: None,
        }
    }

    /// `addr` inside namespace `netns`.
    pub fn in_netns(netns: &str, addr: &str) -> Endpoint {
        Endpoint {
            addr: addr.to_string(),
            netns: Some(netns.to_string()),
        }
    }

    /// GETs `path`. Not entering the namespace is a failed connection (see
    /// [`local::netns::http_get_in`]), so callers report both places alike.
    pub fn get(&self, path: &str, timeout: Duration) -> Result<Response, HttpError> {
        match &self.netns {
            None => http::get(&self.addr, path, timeout),
            Some(ns) => local::netns::http_get_in(ns, &self.addr, path, timeout),
        }
    }

    /// GETs `path` and requires a 2xx answer: [`Error::Unreachable`] or [`Error::BadResponse`]
    /// otherwise, naming `what` and this endpoint, with `hint`.
    pub fn fetch_ok(
        &self,
        what: &str,
        hint: &str,
        path: &str,
        timeout: Duration,
    ) -> Result<Response, Error> {
        let addr = self.to_string();
        let r = self
            .get(path, timeout)
            .map_err(|source| Error::Unreachable {
                what: what.to_string(),
                addr: addr.clone(),
                source,
                hint: hint.to_string(),
            })?;
        if !(200..300).contains(&r.status) {
            let t = Target {
                what,
                addr: &addr,
                hint,
            };
            return Err(bad_response(t, path, r.summary()));
        }
        Ok(r)
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.netns {
            None => f.write_str(&self.addr),
            Some(ns) => write!(f, "{} in netns {ns}", self.addr),
        }
    }
}

/// GETs `path` from `t` on this host and requires a 2xx answer ([`Endpoint::fetch_ok`]).
pub fn fetch_ok(t: Target<'_>, path: &str, timeout: Duration) -> Result<Response, Error> {
    Endpoint::host(t.addr).fetch_ok(t.what, t.hint, path, timeout)
}

/// A [`Error::BadResponse`] for `t`.
pub fn bad_response(t: Target<'_>, path: &str, why: String) -> Error {
    Error::BadResponse {
        what: t.what.to_string(),
        addr: t.addr.to_string(),
        path: path.to_string(),
        why,
        hint: t.hint.to_string(),
    }
}

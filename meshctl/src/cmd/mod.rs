//! One module per command, plus what they share: the run context and HTTP fetches that turn
//! failures into errors naming the component, the address and what to check.

pub mod check;
pub mod describe;
pub mod local;
pub mod stat;
pub mod tap;
pub mod waypoint;
pub mod ztunnel_config;

use std::time::Duration;

use time::OffsetDateTime;

use crate::config::Source;
use crate::error::Error;
use crate::http::{self, Response};
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

/// GETs `path`; any transport failure is [`Error::Unreachable`].
pub fn fetch(t: Target<'_>, path: &str, timeout: Duration) -> Result<Response, Error> {
    http::get(t.addr, path, timeout).map_err(|source| Error::Unreachable {
        what: t.what.to_string(),
        addr: t.addr.to_string(),
        source,
        hint: t.hint.to_string(),
    })
}

/// GETs `path` and requires a 2xx answer (else [`Error::BadResponse`]).
pub fn fetch_ok(t: Target<'_>, path: &str, timeout: Duration) -> Result<Response, Error> {
    let r = fetch(t, path, timeout)?;
    if !(200..300).contains(&r.status) {
        return Err(bad_response(t, path, r.summary()));
    }
    Ok(r)
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

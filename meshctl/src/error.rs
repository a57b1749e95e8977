//! meshctl's errors and the exit code of each.

use crate::http::HttpError;

/// Exit code: everything worked and every check passed.
pub const EXIT_OK: i32 = 0;
/// Exit code: `check` found at least one ✗ (or a command failed in a way not listed below).
pub const EXIT_FAILED: i32 = 1;
/// Exit code: bad command line or configuration.
pub const EXIT_USAGE: i32 = 2;
/// Exit code: a component could not be reached, or answered something meshctl cannot use.
pub const EXIT_UNREACHABLE: i32 = 3;

/// Why a command did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad flags, arguments or environment.
    #[error("{0}")]
    Usage(String),
    /// A component did not answer.
    #[error("cannot reach {what} at {addr}: {source}\n  hint: {hint}")]
    Unreachable {
        /// What we were talking to ("ztunnel admin", "istiod-lite", ...).
        what: String,
        /// The address used.
        addr: String,
        /// What went wrong.
        source: HttpError,
        /// Which flag or variable sets the address.
        hint: String,
    },
    /// A component answered, but not with what we need.
    #[error("{what} at {addr} answered {path} with {why}\n  hint: {hint}")]
    BadResponse {
        /// What we were talking to.
        what: String,
        /// The address used.
        addr: String,
        /// The path requested.
        path: String,
        /// What was wrong with the answer.
        why: String,
        /// What to check.
        hint: String,
    },
    /// `check` reported failures (already printed).
    #[error("{0} check(s) failed")]
    CheckFailed(usize),
    /// Writing the output failed.
    #[error("writing output: {0}")]
    Output(#[from] std::io::Error),
    /// `meshctl local` failed.
    #[error(transparent)]
    Local(#[from] crate::cmd::local::LocalError),
}

impl Error {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Usage(_) => EXIT_USAGE,
            Error::Unreachable { .. } | Error::BadResponse { .. } => EXIT_UNREACHABLE,
            Error::CheckFailed(_) | Error::Output(_) => EXIT_FAILED,
            Error::Local(e) => e.exit_code(),
        }
    }

    /// True when the error was already reported on stdout (check results).
    pub fn is_silent(&self) -> bool {
        match self {
            Error::CheckFailed(_) => true,
            Error::Local(e) => e.is_silent(),
            _ => false,
        }
    }
}

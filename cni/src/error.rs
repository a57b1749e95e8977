//! Plugin errors and their CNI error-object form.

use serde::Serialize;

/// Everything that makes the plugin fail. Each maps to a CNI error code: the spec's well-known
/// codes where one fits, 999 and up for ours.
#[derive(Debug, thiserror::Error)]
pub enum CniError {
    /// Spec code 1.
    #[error("incompatible CNI version {0:?}: supported are 0.3.0, 0.3.1, 0.4.0, 1.0.0, 1.1.0")]
    IncompatibleVersion(String),
    /// Spec code 4.
    #[error("invalid network configuration: {0}")]
    InvalidConfig(String),
    /// Spec code 7.
    #[error("invalid environment variables: {0}")]
    InvalidEnv(String),
    /// Spec code 5: stdin could not be read.
    #[error("reading network configuration from stdin: {0}")]
    Io(#[source] std::io::Error),
    /// 999: the node agent's socket could not be reached or did not answer in time.
    #[error("node agent unreachable at {socket}: {reason}; is ztunnel running on this node?")]
    AgentUnreachable {
        /// The socket path from `ztunnel_socket`.
        socket: String,
        /// What went wrong.
        reason: String,
    },
    /// 1000: the node agent answered with an error.
    #[error("node agent refused the pod: {0}")]
    AgentRefused(String),
    /// 1001: installing or removing in-pod rules failed.
    #[error("in-pod redirection rules: {0}")]
    Rules(String),
    /// 1002: CHECK found the in-pod rules missing or incomplete.
    #[error("CHECK failed: {0}")]
    CheckFailed(String),
}

impl CniError {
    /// The CNI error code.
    pub fn code(&self) -> u32 {
        match self {
            Self::IncompatibleVersion(_) => 1,
            Self::InvalidConfig(_) => 4,
            Self::Io(_) => 5,
            Self::InvalidEnv(_) => 7,
            Self::AgentUnreachable { .. } => 999,
            Self::AgentRefused(_) => 1000,
            Self::Rules(_) => 1001,
            Self::CheckFailed(_) => 1002,
        }
    }

    /// A short, fixed message; details carry the specifics.
    fn msg(&self) -> &'static str {
        match self {
            Self::IncompatibleVersion(_) => "incompatible CNI version",
            Self::InvalidConfig(_) => "invalid network configuration",
            Self::Io(_) => "I/O failure",
            Self::InvalidEnv(_) => "invalid environment variables",
            Self::AgentUnreachable { .. } => "node agent unreachable",
            Self::AgentRefused(_) => "node agent refused the pod",
            Self::Rules(_) => "failed to set up in-pod redirection",
            Self::CheckFailed(_) => "in-pod redirection check failed",
        }
    }

    /// The spec's error object, printed on stdout.
    pub fn to_object(&self, cni_version: &str) -> ErrorObject {
        ErrorObject {
            cni_version: cni_version.to_string(),
            code: self.code(),
            msg: self.msg().to_string(),
            details: self.to_string(),
        }
    }
}

/// The CNI error result (`{cniVersion, code, msg, details}`).
#[derive(Debug, Serialize)]
pub struct ErrorObject {
    /// Same version as the request (or 1.0.0 if it could not be read).
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    /// Error code.
    pub code: u32,
    /// Short message.
    pub msg: String,
    /// Longer description.
    pub details: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_object_shape() {
        let e = CniError::AgentUnreachable {
            socket: "/s".into(),
            reason: "connection refused".into(),
        };
        let v = serde_json::to_value(e.to_object("0.4.0")).expect("serialize");
        let obj = v.as_object().expect("object");
        let mut keys: Vec<_> = obj.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(keys, ["cniVersion", "code", "details", "msg"]);
        assert_eq!(v["cniVersion"], "0.4.0");
        assert_eq!(v["code"], 999);
        assert_eq!(v["msg"], "node agent unreachable");
        assert!(v["details"]
            .as_str()
            .expect("str")
            .contains("/s: connection refused"));
    }

    #[test]
    fn codes() {
        assert_eq!(CniError::InvalidConfig(String::new()).code(), 4);
        assert_eq!(CniError::InvalidEnv(String::new()).code(), 7);
        assert_eq!(CniError::IncompatibleVersion(String::new()).code(), 1);
        assert!(CniError::AgentRefused(String::new()).code() >= 999);
        assert!(CniError::Rules(String::new()).code() >= 999);
        assert!(CniError::CheckFailed(String::new()).code() >= 999);
    }
}

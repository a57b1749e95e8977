//! SPIFFE identities in Istio's format: `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

const SCHEME: &str = "spiffe://";

/// Errors parsing a SPIFFE identity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// The string does not start with `spiffe://`.
    #[error("identity {0:?} is not a SPIFFE URI: it must start with \"spiffe://\"")]
    NotSpiffe(String),
    /// The path does not have Istio's `/ns/<ns>/sa/<sa>` shape.
    #[error(
        "identity {0:?} is not an Istio SPIFFE id: expected spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>"
    )]
    WrongShape(String),
    /// One of trust domain, namespace or service account is empty.
    #[error("identity {uri:?} has an empty {part}")]
    EmptyPart {
        /// The offending URI.
        uri: String,
        /// Which part is empty.
        part: &'static str,
    },
}

/// An Istio workload identity: `spiffe://<td>/ns/<ns>/sa/<sa>`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Identity {
    /// SPIFFE trust domain, e.g. `cluster.local`.
    pub trust_domain: String,
    /// Kubernetes namespace.
    pub namespace: String,
    /// Kubernetes service account.
    pub service_account: String,
}

impl Identity {
    /// Builds an identity from its parts (not validated; use [`Identity::parse`] for untrusted input).
    pub fn new(td: impl Into<String>, ns: impl Into<String>, sa: impl Into<String>) -> Self {
        Identity {
            trust_domain: td.into(),
            namespace: ns.into(),
            service_account: sa.into(),
        }
    }

    /// Parses `spiffe://<td>/ns/<ns>/sa/<sa>`; exactly these five path parts, literal `ns` and
    /// `sa`, none empty (the same rule as Istio's ztunnel).
    pub fn parse(uri: &str) -> Result<Self, IdentityError> {
        let rest = uri
            .strip_prefix(SCHEME)
            .ok_or_else(|| IdentityError::NotSpiffe(uri.to_string()))?;
        let parts: Vec<&str> = rest.split('/').collect();
        let [td, ns_lit, ns, sa_lit, sa] = parts.as_slice() else {
            return Err(IdentityError::WrongShape(uri.to_string()));
        };
        if *ns_lit != "ns" || *sa_lit != "sa" {
            return Err(IdentityError::WrongShape(uri.to_string()));
        }
        for (value, part) in [
            (td, "trust domain"),
            (ns, "namespace"),
            (sa, "service account"),
        ] {
            if value.is_empty() {
                return Err(IdentityError::EmptyPart {
                    uri: uri.to_string(),
                    part,
                });
            }
        }
        Ok(Identity::new(*td, *ns, *sa))
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{SCHEME}{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

impl FromStr for Identity {
    type Err = IdentityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Identity::parse(s)
    }
}

impl Serialize for Identity {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Identity {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Identity::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_roundtrip() {
        let id = Identity::parse("spiffe://cluster.local/ns/default/sa/bookinfo").unwrap();
        assert_eq!(id, Identity::new("cluster.local", "default", "bookinfo"));
        assert_eq!(
            id.to_string(),
            "spiffe://cluster.local/ns/default/sa/bookinfo"
        );
        assert_eq!(id, id.to_string().parse().unwrap());
    }

    #[test]
    fn parse_rejects_bad_shapes() {
        for bad in [
            "",
            "cluster.local/ns/a/sa/b",
            "https://cluster.local/ns/a/sa/b",
            "spiffe://cluster.local/ns/a/sa",
            "spiffe://cluster.local/ns/a/sa/b/c",
            "spiffe://cluster.local/ns/a/sa/b/",
            "spiffe://cluster.local/namespace/a/sa/b",
            "spiffe://cluster.local/ns/a/serviceaccount/b",
            "spiffe:///ns/a/sa/b",
            "spiffe://td/ns//sa/b",
            "spiffe://td/ns/a/sa/",
        ] {
            assert!(Identity::parse(bad).is_err(), "{bad:?} should not parse");
        }
        assert!(matches!(
            Identity::parse("spiffe://td/ns//sa/b"),
            Err(IdentityError::EmptyPart {
                part: "namespace",
                ..
            })
        ));
    }

    #[test]
    fn serde_as_string() {
        let id = Identity::new("td", "ns1", "sa1");
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, "\"spiffe://td/ns/ns1/sa/sa1\"");
        let back: Identity = serde_json::from_str(&json).unwrap();
        assert_eq!(back, id);
        assert!(serde_json::from_str::<Identity>("\"spiffe://td/x\"").is_err());
    }
}

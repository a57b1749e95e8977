//! Bootstrap tokens: `<subject>.<hex HMAC-SHA256(secret, subject)>`.
//!
//! Stands in for Kubernetes ServiceAccount tokens in local mode. Two kinds of subject:
//! * a node name: a ztunnel proves which node it runs on, and the CA and xDS server authorize
//!   by that node;
//! * `waypoint:<namespace>/<gateway>`: a waypoint proves which Gateway it runs for; it may get
//!   exactly the certificate `spiffe://<td>/ns/<namespace>/sa/<gateway>` and that waypoint's
//!   routes. Node names cannot contain `:` or `/` (Kubernetes names are DNS subdomains), so the
//!   two kinds can never be confused.
//!
//! The secret is 32 random bytes kept (hex encoded) in `STATE_DIR/node-token.key`, created on
//! first use with mode 0600.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

pub mod kube;

/// File name of the HMAC secret inside the state directory.
pub const SECRET_FILE: &str = "node-token.key";
const SECRET_LEN: usize = 32;

/// Why a token or the secret was rejected.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No `authorization` metadata on the call.
    #[error("missing \"authorization: Bearer <node token>\" metadata (print a token with `istiod-lite node-token --node NODE`)")]
    MissingToken,
    /// The header is not `Bearer <token>` or the token is not `<node>.<hex>`.
    #[error("malformed node token: {0}")]
    Malformed(&'static str),
    /// The HMAC does not match: the token was made with another secret (another STATE_DIR?) or edited.
    #[error("node token signature does not verify for node {node:?} (token from another istiod state dir?)")]
    BadSignature {
        /// Node named by the token.
        node: String,
    },
    /// Reading or writing the secret failed.
    #[error("node token secret {path}: {source}")]
    Io {
        /// Secret file.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The secret file exists but is not 64 hex characters.
    #[error("node token secret {path} is corrupt: expected {SECRET_LEN} bytes as hex; delete it to create a new one (old tokens stop working)")]
    BadSecret {
        /// Secret file.
        path: PathBuf,
    },
    /// The system random generator failed.
    #[error("system random generator failed")]
    Random,
    /// Kubernetes mode: TokenReview says the token is not valid (for our audience).
    #[error("ServiceAccount token rejected by TokenReview: {0}")]
    TokenRejected(String),
    /// Kubernetes mode: the token is valid but its holder may not call us (node authorizer).
    #[error("not authorized: {0}")]
    Forbidden(String),
}

impl AuthError {
    /// The gRPC status code to answer with: PermissionDenied for an authenticated caller that
    /// is not authorized, Unauthenticated otherwise.
    pub fn code(&self) -> tonic::Code {
        match self {
            AuthError::Forbidden(_) => tonic::Code::PermissionDenied,
            _ => tonic::Code::Unauthenticated,
        }
    }
}

/// How callers are authenticated: node tokens (local mode) or, in Kubernetes mode,
/// ServiceAccount tokens reviewed by the API server ([`kube::KubeAuthenticator`]).
#[derive(Clone, Debug)]
pub enum Authenticator {
    /// HMAC node and waypoint tokens.
    Tokens(NodeTokens),
    /// TokenReview + node authorization.
    Kube(std::sync::Arc<kube::KubeAuthenticator>),
}

impl From<NodeTokens> for Authenticator {
    fn from(t: NodeTokens) -> Self {
        Authenticator::Tokens(t)
    }
}

impl Authenticator {
    /// Extracts the bearer token of a gRPC call and returns who it names.
    pub async fn authenticate_principal(
        &self,
        metadata: &tonic::metadata::MetadataMap,
    ) -> Result<Principal, AuthError> {
        match self {
            Authenticator::Tokens(t) => t.authenticate_principal(metadata),
            Authenticator::Kube(k) => {
                let token = bearer_token(metadata)?.to_string();
                k.authenticate(&token).await
            }
        }
    }
}

/// The `Bearer` token of a gRPC call's `authorization` metadata.
pub fn bearer_token(metadata: &tonic::metadata::MetadataMap) -> Result<&str, AuthError> {
    let value = metadata
        .get("authorization")
        .ok_or(AuthError::MissingToken)?;
    let value = value
        .to_str()
        .map_err(|_| AuthError::Malformed("authorization metadata is not ASCII"))?;
    let token = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .ok_or(AuthError::Malformed(
            "authorization metadata must be \"Bearer <token>\"",
        ))?;
    Ok(token.trim())
}

/// Prefix of a waypoint token's subject.
pub const WAYPOINT_SUBJECT_PREFIX: &str = "waypoint:";

/// Who a valid token names.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Principal {
    /// A ztunnel on this node.
    Node(String),
    /// The waypoint of Gateway `namespace/name`.
    Waypoint {
        /// Gateway namespace.
        namespace: String,
        /// Gateway name (= the waypoint's service account).
        name: String,
    },
}

impl Principal {
    /// The token subject naming this principal.
    pub fn subject(&self) -> String {
        match self {
            Principal::Node(n) => n.clone(),
            Principal::Waypoint { namespace, name } => {
                format!("{WAYPOINT_SUBJECT_PREFIX}{namespace}/{name}")
            }
        }
    }

    fn from_subject(subject: &str) -> Result<Self, AuthError> {
        match subject.strip_prefix(WAYPOINT_SUBJECT_PREFIX) {
            None => Ok(Principal::Node(subject.to_string())),
            Some(rest) => match rest.split_once('/') {
                Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
                    Ok(Principal::Waypoint {
                        namespace: ns.to_string(),
                        name: name.to_string(),
                    })
                }
                _ => Err(AuthError::Malformed(
                    "waypoint token subject must be waypoint:<namespace>/<gateway>",
                )),
            },
        }
    }
}

impl std::fmt::Display for Principal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.subject())
    }
}

/// True when `node` can be a node token's subject (no `:` or `/`, which waypoint subjects use).
pub fn valid_node_name(node: &str) -> bool {
    !node.is_empty() && !node.contains([':', '/'])
}

/// Issues and verifies node tokens.
#[derive(Clone)]
pub struct NodeTokens {
    key: hmac::Key,
}

impl std::fmt::Debug for NodeTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NodeTokens { .. }")
    }
}

impl NodeTokens {
    /// Uses `secret` directly (tests).
    pub fn from_secret(secret: &[u8]) -> Self {
        NodeTokens {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
        }
    }

    /// Loads `state_dir/node-token.key`, creating the directory and a fresh secret if absent.
    pub fn load_or_create(state_dir: &Path) -> Result<Self, AuthError> {
        let path = state_dir.join(SECRET_FILE);
        match fs::read_to_string(&path) {
            Ok(text) => return Self::parse_secret(&path, &text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(AuthError::Io { path, source }),
        }
        let io = |source| AuthError::Io {
            path: state_dir.to_path_buf(),
            source,
        };
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(state_dir)
            .map_err(io)?;

        let mut secret = [0u8; SECRET_LEN];
        SystemRandom::new()
            .fill(&mut secret)
            .map_err(|_| AuthError::Random)?;
        // Write a temp file and hard-link it into place: the link fails if another process won
        // the race, and nobody ever reads a half-written secret.
        let tmp = state_dir.join(format!(".{SECRET_FILE}.{}", std::process::id()));
        let write = || -> std::io::Result<()> {
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(to_hex(&secret).as_bytes())?;
            f.write_all(b"\n")?;
            f.sync_all()
        };
        let res = write().and_then(|()| fs::hard_link(&tmp, &path));
        let _ = fs::remove_file(&tmp);
        match res {
            Ok(()) => {
                tracing::info!(path = %path.display(), "created node token secret");
                Ok(Self::from_secret(&secret))
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let text = fs::read_to_string(&path).map_err(|source| AuthError::Io {
                    path: path.clone(),
                    source,
                })?;
                Self::parse_secret(&path, &text)
            }
            Err(source) => Err(AuthError::Io { path, source }),
        }
    }

    fn parse_secret(path: &Path, text: &str) -> Result<Self, AuthError> {
        match from_hex(text.trim()) {
            Some(secret) if secret.len() == SECRET_LEN => Ok(Self::from_secret(&secret)),
            _ => Err(AuthError::BadSecret {
                path: path.to_path_buf(),
            }),
        }
    }

    /// The token for `node`.
    pub fn token_for(&self, node: &str) -> String {
        let tag = hmac::sign(&self.key, node.as_bytes());
        format!("{node}.{}", to_hex(tag.as_ref()))
    }

    /// Verifies `token` (constant-time MAC comparison) and returns the node it names.
    pub fn verify(&self, token: &str) -> Result<String, AuthError> {
        // Node names may contain dots (ip-10-0-0-1.ec2.internal): the MAC follows the last one.
        let (node, mac_hex) = token
            .rsplit_once('.')
            .ok_or(AuthError::Malformed("expected <node>.<hex>"))?;
        if node.is_empty() {
            return Err(AuthError::Malformed("empty node name"));
        }
        let mac = from_hex(mac_hex).ok_or(AuthError::Malformed("signature is not hex"))?;
        hmac::verify(&self.key, node.as_bytes(), &mac).map_err(|_| AuthError::BadSignature {
            node: node.to_string(),
        })?;
        Ok(node.to_string())
    }

    /// The token of `principal`.
    pub fn token_for_principal(&self, principal: &Principal) -> String {
        self.token_for(&principal.subject())
    }

    /// Extracts and verifies the bearer token of a gRPC call; returns who it names.
    pub fn authenticate_principal(
        &self,
        metadata: &tonic::metadata::MetadataMap,
    ) -> Result<Principal, AuthError> {
        Principal::from_subject(&self.authenticate(metadata)?)
    }

    /// Extracts and verifies the bearer token of a gRPC call; returns its subject (a node name,
    /// or `waypoint:<ns>/<name>`).
    pub fn authenticate(
        &self,
        metadata: &tonic::metadata::MetadataMap,
    ) -> Result<String, AuthError> {
        self.verify(bearer_token(metadata)?)
    }
}

fn to_hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

fn from_hex(s: &str) -> Option<Vec<u8>> {
    s.as_bytes()
        .chunks(2)
        .map(|pair| match pair {
            [hi, lo] => Some((hex_digit(*hi)? << 4) | hex_digit(*lo)?),
            _ => None,
        })
        .collect()
}

fn hex_digit(c: u8) -> Option<u8> {
    (c as char).to_digit(16).and_then(|d| u8::try_from(d).ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn token_roundtrip_and_tamper() {
        let t = NodeTokens::from_secret(b"0123456789abcdef0123456789abcdef");
        let tok = t.token_for("node1");
        assert!(tok.starts_with("node1."));
        assert_eq!(t.verify(&tok).unwrap(), "node1");
        // Dotted node names work because the MAC follows the last dot.
        let dotted = t.token_for("ip-10-0-0-1.ec2.internal");
        assert_eq!(t.verify(&dotted).unwrap(), "ip-10-0-0-1.ec2.internal");
        // Renaming the node invalidates the MAC.
        let forged = tok.replacen("node1", "node2", 1);
        assert!(
            matches!(t.verify(&forged), Err(AuthError::BadSignature { node }) if node == "node2")
        );
        assert!(matches!(t.verify("node1"), Err(AuthError::Malformed(_))));
        assert!(matches!(t.verify("node1.zz"), Err(AuthError::Malformed(_))));
        let other = NodeTokens::from_secret(b"another secret");
        assert!(other.verify(&tok).is_err());
    }

    #[test]
    fn secret_is_created_once_with_0600() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let a = NodeTokens::load_or_create(&state).unwrap();
        let path = state.join(SECRET_FILE);
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let b = NodeTokens::load_or_create(&state).unwrap();
        assert_eq!(a.token_for("n"), b.token_for("n"));
        fs::write(&path, "garbage").unwrap();
        assert!(matches!(
            NodeTokens::load_or_create(&state),
            Err(AuthError::BadSecret { .. })
        ));
    }

    #[test]
    fn waypoint_tokens_name_a_gateway() {
        let t = NodeTokens::from_secret(b"k");
        let p = Principal::Waypoint {
            namespace: "app".into(),
            name: "waypoint".into(),
        };
        let tok = t.token_for_principal(&p);
        assert!(tok.starts_with("waypoint:app/waypoint."), "{tok}");
        let mut md = tonic::metadata::MetadataMap::new();
        md.insert("authorization", format!("Bearer {tok}").parse().unwrap());
        assert_eq!(t.authenticate_principal(&md).unwrap(), p);
        md.insert(
            "authorization",
            format!("Bearer {}", t.token_for("n1")).parse().unwrap(),
        );
        assert_eq!(
            t.authenticate_principal(&md).unwrap(),
            Principal::Node("n1".into())
        );
        // A validly signed but malformed waypoint subject is refused.
        md.insert(
            "authorization",
            format!("Bearer {}", t.token_for("waypoint:app"))
                .parse()
                .unwrap(),
        );
        assert!(t.authenticate_principal(&md).is_err());
        assert!(!valid_node_name("waypoint:app/w"));
        assert!(valid_node_name("ip-10-0-0-1.ec2.internal"));
    }

    #[test]
    fn bearer_metadata() {
        let t = NodeTokens::from_secret(b"k");
        let mut md = tonic::metadata::MetadataMap::new();
        assert!(matches!(t.authenticate(&md), Err(AuthError::MissingToken)));
        md.insert(
            "authorization",
            format!("Bearer {}", t.token_for("n1")).parse().unwrap(),
        );
        assert_eq!(t.authenticate(&md).unwrap(), "n1");
        md.insert("authorization", t.token_for("n1").parse().unwrap());
        assert!(matches!(t.authenticate(&md), Err(AuthError::Malformed(_))));
    }
}

//! gRPC call credentials shared by the xDS and CA clients: the bootstrap token as a
//! bearer token and Istio's `clusterid` header.

use std::path::PathBuf;

use tonic::metadata::MetadataValue;
use tonic::service::Interceptor;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

/// Errors building a control-plane channel.
#[derive(thiserror::Error, Debug)]
pub enum ChannelError {
    #[error("invalid control plane address {addr:?}: {source}")]
    Address {
        addr: String,
        source: tonic::transport::Error,
    },
    #[error("reading root certificate {path}: {source}")]
    RootCa {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{addr} uses https but no root certificate is configured (set XDS_ROOT_CA / CA_ROOT_CA)"
    )]
    NoRootCa { addr: String },
    #[error("reading token file {path}: {source}")]
    Token {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("token from {path} is not a valid header value")]
    BadToken { path: PathBuf },
}

/// Adds `authorization` and `clusterid` metadata to every call.
#[derive(Clone)]
pub struct CallCredentials {
    token: Option<MetadataValue<tonic::metadata::Ascii>>,
    cluster: MetadataValue<tonic::metadata::Ascii>,
}

impl CallCredentials {
    /// Reads the token file (if any) once; the value is not logged.
    pub fn load(token_path: Option<&PathBuf>, cluster_id: &str) -> Result<Self, ChannelError> {
        let token = match token_path {
            None => None,
            Some(p) => {
                let t = std::fs::read_to_string(p).map_err(|source| ChannelError::Token {
                    path: p.clone(),
                    source,
                })?;
                Some(
                    format!("Bearer {}", t.trim())
                        .parse()
                        .map_err(|_| ChannelError::BadToken { path: p.clone() })?,
                )
            }
        };
        let cluster = cluster_id
            .parse()
            .unwrap_or_else(|_| MetadataValue::from_static("Kubernetes"));
        Ok(CallCredentials { token, cluster })
    }
}

impl Interceptor for CallCredentials {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(t) = &self.token {
            req.metadata_mut().insert("authorization", t.clone());
        }
        req.metadata_mut().insert("clusterid", self.cluster.clone());
        Ok(req)
    }
}

/// A lazily connecting channel to the control plane (http:// plaintext or https:// verified
/// against `root_ca`).
pub fn channel(addr: &str, root_ca: Option<&PathBuf>) -> Result<Channel, ChannelError> {
    let mut ep = Endpoint::from_shared(addr.to_string())
        .map_err(|source| ChannelError::Address {
            addr: addr.into(),
            source,
        })?
        .connect_timeout(std::time::Duration::from_secs(5))
        .http2_keep_alive_interval(std::time::Duration::from_secs(30))
        .keep_alive_timeout(std::time::Duration::from_secs(10))
        .tcp_nodelay(true);
    if addr.starts_with("https://") {
        let path = root_ca.ok_or_else(|| ChannelError::NoRootCa { addr: addr.into() })?;
        let pem = std::fs::read(path).map_err(|source| ChannelError::RootCa {
            path: path.clone(),
            source,
        })?;
        ep = ep
            .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)))
            .map_err(|source| ChannelError::Address {
                addr: addr.into(),
                source,
            })?;
    }
    Ok(ep.connect_lazy())
}

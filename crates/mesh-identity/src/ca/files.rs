//! Loading and persisting CA material.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use rustls_pki_types::CertificateDer;

use super::{load_key, CaError, CertificateAuthority};
use crate::cert::parse_pem_certs;

const ROOT_CERT: &str = "root-cert.pem";
const ROOT_KEY: &str = "root-key.pem";

const PLUGIN_CA_CERT: &str = "ca-cert.pem";
const PLUGIN_CA_KEY: &str = "ca-key.pem";
const PLUGIN_ROOT_CERT: &str = "root-cert.pem";
const PLUGIN_CERT_CHAIN: &str = "cert-chain.pem";

pub(super) fn load_or_create(
    state_dir: &Path,
    trust_domain: &str,
) -> Result<CertificateAuthority, CaError> {
    let cert_path = state_dir.join(ROOT_CERT);
    let key_path = state_dir.join(ROOT_KEY);
    match (cert_path.exists(), key_path.exists()) {
        (true, true) => {
            warn_if_key_readable(&key_path);
            let root = read_certs(&cert_path)?.swap_remove(0);
            let key = load_key(&read(&key_path)?, &root, &key_path)?;
            let ca = CertificateAuthority::from_parts(
                trust_domain,
                root.clone(),
                key,
                Vec::new(),
                vec![root],
            )?;
            tracing::info!(dir = %state_dir.display(), trust_domain, "loaded self-signed root CA");
            Ok(ca)
        }
        (false, false) => {
            fs::create_dir_all(state_dir).map_err(|source| CaError::Io {
                op: "creating state directory",
                path: state_dir.to_path_buf(),
                source,
            })?;
            let (ca, key_pem) = CertificateAuthority::generate_root(trust_domain)?;
            // Key first: a crash between the two writes leaves a key without a cert, which
            // load_or_create reports instead of silently minting a second root.
            write_atomic(&key_path, key_pem.as_bytes(), 0o600)?;
            write_atomic(&cert_path, ca.roots_pem().as_bytes(), 0o644)?;
            tracing::info!(dir = %state_dir.display(), trust_domain, "created new self-signed root CA");
            Ok(ca)
        }
        (true, false) => Err(CaError::PartialState {
            present: cert_path,
            missing: key_path,
        }),
        (false, true) => Err(CaError::PartialState {
            present: key_path,
            missing: cert_path,
        }),
    }
}

pub(super) fn load_plugin(dir: &Path, trust_domain: &str) -> Result<CertificateAuthority, CaError> {
    let ca_cert_path = required(dir, PLUGIN_CA_CERT)?;
    let ca_key_path = required(dir, PLUGIN_CA_KEY)?;
    let root_path = required(dir, PLUGIN_ROOT_CERT)?;
    let chain_path = required(dir, PLUGIN_CERT_CHAIN)?;

    let ca_cert = read_certs(&ca_cert_path)?.swap_remove(0);
    let key = load_key(&read(&ca_key_path)?, &ca_cert, &ca_key_path)?;
    let roots = read_certs(&root_path)?;
    let chain = read_certs(&chain_path)?;

    // cert-chain.pem runs from ca-cert up to (usually including) the root; the roots travel
    // separately as the last element of every response, so drop them here.
    let intermediates: Vec<CertificateDer<'static>> =
        chain.into_iter().filter(|c| !roots.contains(c)).collect();
    let signer_is_root = roots.contains(&ca_cert);
    if !signer_is_root && intermediates.first() != Some(&ca_cert) {
        return Err(CaError::Inconsistent(format!(
            "{} must start with the certificate in {}",
            chain_path.display(),
            ca_cert_path.display()
        )));
    }
    let ca = CertificateAuthority::from_parts(trust_domain, ca_cert, key, intermediates, roots)?;
    tracing::info!(
        dir = %dir.display(),
        trust_domain,
        intermediates = ca.intermediates.len(),
        roots = ca.roots.len(),
        "loaded plug-in CA"
    );
    Ok(ca)
}

fn required(dir: &Path, name: &str) -> Result<PathBuf, CaError> {
    let path = dir.join(name);
    if path.exists() {
        Ok(path)
    } else {
        Err(CaError::MissingFile(path))
    }
}

fn read(path: &Path) -> Result<String, CaError> {
    fs::read_to_string(path).map_err(|source| CaError::Io {
        op: "reading",
        path: path.to_path_buf(),
        source,
    })
}

/// All certificates in a PEM file (at least one).
fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, CaError> {
    let pem = read(path)?;
    parse_pem_certs(&pem).map_err(|e| CaError::BadCert {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

fn warn_if_key_readable(path: &Path) {
    if let Ok(meta) = fs::metadata(path) {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(path = %path.display(), mode = format!("{mode:o}"), "CA key file is readable by group/others; chmod 600 it");
        }
    }
}

/// Writes via a temporary file + rename so readers never see a half-written file; `mode` is
/// applied at creation so the key is never briefly world-readable.
fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<(), CaError> {
    let tmp = path.with_extension("pem.tmp");
    let io = |op: &'static str, p: &Path| {
        let p = p.to_path_buf();
        move |source| CaError::Io {
            op,
            path: p,
            source,
        }
    };
    let _ = fs::remove_file(&tmp);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io("creating", &tmp))?;
    f.write_all(data).map_err(io("writing", &tmp))?;
    f.sync_all().map_err(io("syncing", &tmp))?;
    // The umask may have cleared bits we asked for; set the exact mode explicitly.
    fs::set_permissions(&tmp, fs::Permissions::from_mode(mode)).map_err(io("chmod", &tmp))?;
    fs::rename(&tmp, path).map_err(io("renaming into place", path))?;
    Ok(())
}

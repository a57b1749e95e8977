//! istiod-lite and one ztunnel per node with the example config (examples/local: client on
//! node1, server on node2 behind 127.0.2.1:80), on loopback ports: explicit mode, no root.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::*;

/// How to start the mesh.
pub struct MeshOptions {
    /// Nodes that run a ztunnel (node1 hosts the client, node2 the server).
    pub nodes: Vec<&'static str>,
    /// ztunnel's HBONE_PORT, the same on every node; None leaves the default 15008, which only
    /// a test holding [`LoopbackLock`] may use.
    pub hbone_port: Option<u16>,
    /// Extra config files (name, YAML) next to the examples.
    pub config: Vec<(&'static str, String)>,
}

/// A running mesh; every process is killed on drop.
pub struct Mesh {
    pub dir: tempfile::TempDir,
    pub istiod: Proc,
    pub ztunnels: Vec<Ztunnel>,
    pub monitoring: String,
}

/// One node's ztunnel and its addresses.
pub struct Ztunnel {
    pub node: &'static str,
    pub proc: Proc,
    pub admin: String,
    pub readiness: String,
    pub stats: String,
    pub socks: String,
}

impl Ztunnel {
    /// `ADMIN,READINESS,STATS`, as `--ztunnel` and MESHCTL_ZTUNNELS take it.
    pub fn entry(&self) -> String {
        format!("{},{},{}", self.admin, self.readiness, self.stats)
    }
}

impl Mesh {
    /// Starts istiod-lite, waits for `/ready`, then the ztunnels, each until `/healthz/ready`.
    pub fn start(o: MeshOptions) -> Mesh {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config");
        std::fs::create_dir(&config).unwrap();
        let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/local");
        for f in std::fs::read_dir(&examples).unwrap() {
            let f = f.unwrap().path();
            if f.extension().is_some_and(|e| e == "yaml") {
                std::fs::copy(&f, config.join(f.file_name().unwrap())).unwrap();
            }
        }
        for (name, yaml) in &o.config {
            std::fs::write(config.join(name), yaml).unwrap();
        }
        let state = dir.path().join("state");
        let (xds, tls, monitoring) = (free_addr(), free_addr(), free_addr());
        let mut cmd = Command::new(bin("istiod-lite"));
        cmd.env("CONFIG_DIR", &config)
            .env("STATE_DIR", &state)
            .env("XDS_PLAINTEXT_ADDR", &xds)
            .env("XDS_TLS_ADDR", &tls)
            .env("MONITORING_ADDR", &monitoring);
        let mut istiod = Proc::spawn("istiod-lite", cmd, dir.path());
        wait_ready(&monitoring, "/ready", &mut istiod);

        let mut ztunnels = Vec::new();
        for node in &o.nodes {
            let token = Command::new(bin("istiod-lite"))
                .args(["node-token", "--state-dir"])
                .arg(&state)
                .args(["--node", node])
                .output()
                .unwrap();
            assert!(token.status.success(), "{token:?}");
            let token_file = dir.path().join(format!("{node}.token"));
            std::fs::write(&token_file, &token.stdout).unwrap();

            let (admin, stats, readiness, socks) =
                (free_addr(), free_addr(), free_addr(), free_addr());
            let mut cmd = Command::new(bin("ztunnel"));
            cmd.env("NODE_NAME", node)
                .env("XDS_ADDRESS", format!("http://{xds}"))
                .env("AUTH_TOKEN", &token_file)
                .env("ADMIN_ADDR", &admin)
                .env("STATS_ADDR", &stats)
                .env("READINESS_ADDR", &readiness)
                .env("SOCKS5_ADDR", &socks)
                .env("OUTBOUND_ADDR", "")
                .env("INBOUND_PLAINTEXT_ADDR", "")
                .env_remove("CA_ADDRESS")
                .env_remove("TRUST_DOMAIN");
            match o.hbone_port {
                Some(p) => cmd.env("HBONE_PORT", p.to_string()),
                None => cmd.env_remove("HBONE_PORT"),
            };
            let proc = Proc::spawn(&format!("ztunnel-{node}"), cmd, dir.path());
            ztunnels.push(Ztunnel {
                node,
                proc,
                admin,
                readiness,
                stats,
                socks,
            });
        }
        for z in &mut ztunnels {
            wait_ready(&z.readiness, "/healthz/ready", &mut z.proc);
        }
        Mesh {
            dir,
            istiod,
            ztunnels,
            monitoring,
        }
    }

    /// The ztunnel of `node`.
    pub fn ztunnel(&self, node: &str) -> &Ztunnel {
        self.ztunnels
            .iter()
            .find(|z| z.node == node)
            .unwrap_or_else(|| panic!("no ztunnel on {node}"))
    }

    /// istiod-lite's config directory.
    pub fn config_dir(&self) -> PathBuf {
        self.dir.path().join("config")
    }

    /// Every process's log, for a failure message.
    pub fn logs(&self) -> String {
        std::iter::once(&self.istiod)
            .chain(self.ztunnels.iter().map(|z| &z.proc))
            .map(|p| {
                format!(
                    "===== {} =====\n{}",
                    p.name,
                    std::fs::read_to_string(&p.log).unwrap_or_default()
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

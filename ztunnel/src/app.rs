//! Wires ztunnel together: state, xDS client, certificate manager, listeners, admin servers,
//! and graceful drain on SIGTERM.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::admin::{self, AdminState};
use crate::config::Config;
use crate::identity::{CertManager, GrpcCaClient};
use crate::proxy::{self, Proxy};
use crate::readiness::Readiness;
use crate::state::State;
use crate::xds::XdsClient;

/// What the admin endpoints and the listeners share.
pub struct Shared {
    pub cfg: Arc<Config>,
    pub state: Arc<State>,
    pub certs: Arc<CertManager>,
    pub readiness: Readiness,
    pub shutdown: CancellationToken,
    /// Open connections (dump).
    pub open: Arc<proxy::connections::Registry>,
    /// State version the inbound listeners were last reconciled to.
    pub listeners_version: Arc<AtomicU64>,
    /// In-pod mode's node agent.
    pub inpod: Option<Arc<crate::inpod::Agent>>,
}

impl Shared {
    /// Start-up tasks still pending, including certificates not yet issued.
    pub fn pending(&self) -> Vec<String> {
        let mut p = self.readiness.pending();
        if p.is_empty() && self.listeners_version.load(Ordering::Acquire) < self.state.version() {
            p.push("inbound listeners".into());
        }
        if !self.certs.all_ready() {
            p.push("workload certificates".into());
        }
        p
    }

    /// `/config_dump` as JSON (Istio's top-level keys).
    pub fn config_dump(&self) -> String {
        let dump = self.state.dump();
        let inpod = match &self.inpod {
            Some(a) => a.dump(),
            None => serde_json::Value::Null,
        };
        let v = serde_json::json!({
            "inpodPods": inpod,
            "workloads": dump.workloads,
            "services": dump.services,
            "policies": dump.policies,
            "certificates": self.certs.dump(),
            "connections": self.open.dump(),
            "config": &*self.cfg,
            "version": env!("CARGO_PKG_VERSION"),
        });
        serde_json::to_string_pretty(&v).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }
}

/// Runs ztunnel until SIGTERM/SIGINT or `/quitquitquit`, then drains.
pub async fn run(cfg: Config) -> anyhow::Result<()> {
    let prom = crate::metrics::install().context("installing the metrics recorder")?;
    let cfg = Arc::new(cfg);
    info!(config = %serde_json::to_string(&*cfg).unwrap_or_default(), "starting ztunnel");
    let state = Arc::new(State::default());
    let readiness = Readiness::default();
    let shutdown = CancellationToken::new();
    let ca = GrpcCaClient::new(&cfg).context("CA client")?;
    let certs = Arc::new(CertManager::new(Arc::new(ca), cfg.secret_ttl));
    let proxy = Proxy::new(cfg.clone(), state.clone(), certs.clone(), shutdown.clone());
    let listeners_version = Arc::new(AtomicU64::new(0));
    let inpod = cfg
        .inpod_uds
        .as_ref()
        .map(|uds| crate::inpod::Agent::new(proxy.clone(), uds));
    let shared = Arc::new(Shared {
        inpod: inpod.clone(),
        cfg: cfg.clone(),
        state: state.clone(),
        certs,
        readiness: readiness.clone(),
        shutdown: shutdown.clone(),
        listeners_version: listeners_version.clone(),
        open: proxy.open.clone(),
    });
    let process = metrics_process::Collector::default();
    process.describe();
    let admin_state = Arc::new(AdminState {
        app: shared.clone(),
        metrics: prom,
        process,
    });

    // Bind every fixed listener first so a port conflict fails start-up, not a later request.
    if let Some(a) = cfg.admin_addr {
        tokio::spawn(admin::serve(
            admin::bind(a).await?,
            "admin",
            shutdown.clone(),
            admin::admin(admin_state.clone()),
        ));
    }
    if let Some(a) = cfg.stats_addr {
        tokio::spawn(admin::serve(
            admin::bind(a).await?,
            "stats",
            shutdown.clone(),
            admin::stats(admin_state.clone()),
        ));
    }
    if let Some(a) = cfg.readiness_addr {
        tokio::spawn(admin::serve(
            admin::bind(a).await?,
            "readiness",
            shutdown.clone(),
            admin::readiness(admin_state.clone()),
        ));
    }
    if let Some(a) = cfg.socks5_addr {
        let l = admin::bind(a).await?;
        tokio::spawn(proxy::accept_loop(
            proxy.clone(),
            l,
            "socks5",
            proxy::socks5::serve,
        ));
    }
    if let Some(a) = cfg.outbound_addr {
        let l = admin::bind(a).await?;
        tokio::spawn(proxy::accept_loop(
            proxy.clone(),
            l,
            "outbound",
            proxy::outbound::serve_captured,
        ));
    }
    if let Some(a) = cfg.inbound_plaintext_addr {
        let l = admin::bind(a).await?;
        tokio::spawn(proxy::accept_loop(
            proxy.clone(),
            l,
            "inbound_plaintext",
            proxy::inbound_plaintext::serve,
        ));
    }

    if let Some(addr) = cfg.dns_proxy_addr {
        let resolv_conf = std::path::Path::new(crate::dns::RESOLV_CONF);
        let mut dns_cfg =
            crate::dns::DnsConfig::new(addr, crate::dns::read_resolv_conf(resolv_conf)?);
        dns_cfg.packet_mark = cfg.packet_mark;
        let dns = crate::dns::DnsProxy::bind(state.clone(), dns_cfg).await?;
        tokio::spawn(dns.run(shutdown.clone()));
    }
    let xds = XdsClient::new(cfg.clone(), state.clone(), readiness.clone());
    if cfg.xds_address.is_empty() {
        anyhow::bail!("XDS_ADDRESS is empty: ztunnel has no other source of workloads");
    }
    tokio::spawn(xds.run());
    tokio::spawn(proxy::connections::revalidate_on_change(
        proxy.open.clone(),
        state.clone(),
        shutdown.clone(),
    ));
    match (&inpod, &cfg.inpod_uds) {
        (Some(agent), Some(uds)) => {
            // Bound here so a bad path fails start-up rather than every later pod.
            let l = crate::inpod::bind(uds)
                .with_context(|| format!("binding the in-pod socket {}", uds.display()))?;
            tokio::spawn(agent.clone().run(l, uds.clone(), listeners_version));
        }
        _ => {
            tokio::spawn(proxy::inbound::manage_listeners(
                proxy.clone(),
                listeners_version,
            ));
        }
    }

    tokio::select! {
        _ = shutdown.cancelled() => {},
        r = signal() => { r?; shutdown.cancel(); }
    }
    info!(deadline = ?cfg.drain_duration, open = proxy.connections.len(), "draining");
    proxy.connections.close();
    if tokio::time::timeout(cfg.drain_duration, proxy.connections.wait())
        .await
        .is_err()
    {
        info!(
            open = proxy.connections.len(),
            "drain deadline reached; closing remaining connections"
        );
    }
    info!("ztunnel stopped");
    Ok(())
}

async fn signal() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => info!("SIGTERM received"),
        r = tokio::signal::ctrl_c() => { r?; info!("SIGINT received") },
    }
    Ok(())
}

//! Wires the waypoint together: metrics, certificate, route table from xDS, the HBONE
//! listener and the stats/readiness/admin endpoints; stops on SIGTERM/SIGINT.

use std::sync::Arc;

use anyhow::Context;
use mesh_identity::manager::{CertManager, CertMetrics};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::config::Config;
use crate::proxy::{self, Proxy};
use crate::routes::Table;

/// Names of the certificate counters.
pub const CERT_METRICS: CertMetrics = CertMetrics {
    issued: "waypoint_certificates_issued_total",
    errors: "waypoint_certificate_errors_total",
};

/// What the endpoints read.
pub struct Shared {
    /// Configuration.
    pub cfg: Arc<Config>,
    /// Certificate.
    pub certs: Arc<CertManager>,
    /// Start-up tasks.
    pub readiness: mesh_xds::Readiness,
    /// Route table.
    pub routes: watch::Receiver<Arc<Table>>,
}

impl Shared {
    /// Pending start-up tasks (empty = ready).
    pub fn pending(&self) -> Vec<String> {
        let mut p = self.readiness.pending();
        if !self.certs.all_ready() {
            p.push("waypoint certificate".into());
        }
        p
    }

    /// `/config_dump`: config, certificate and the services and ports routed.
    pub fn config_dump(&self) -> String {
        let table = self.routes.borrow().clone();
        let mut services: Vec<serde_json::Value> = table
            .services()
            .iter()
            .map(|(name, s)| {
                let mut ports: Vec<serde_json::Value> = s
                    .ports
                    .values()
                    .map(|p| {
                        serde_json::json!({
                            "port": p.port,
                            "protocol": format!("{:?}", p.protocol),
                            "routes": p.has_routes,
                        })
                    })
                    .collect();
                ports.sort_by_key(|p| p["port"].as_u64());
                serde_json::json!({
                    "name": name,
                    "hostname": s.hostname,
                    "addresses": s.addresses,
                    "ports": ports,
                    "locality": s.locality.to_string(),
                })
            })
            .collect();
        services.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
        let v = serde_json::json!({
            "config": &*self.cfg,
            "identity": self.cfg.identity().to_string(),
            "certificates": self.certs.dump(),
            "services": services,
            "version": env!("CARGO_PKG_VERSION"),
        });
        serde_json::to_string_pretty(&v).unwrap_or_default()
    }
}

/// Runs the waypoint until SIGTERM or SIGINT.
pub async fn run(cfg: Config) -> anyhow::Result<()> {
    let prom = crate::metrics::install().context("installing the metrics recorder")?;
    let cfg = Arc::new(cfg);
    info!(config = %serde_json::to_string(&*cfg).unwrap_or_default(), identity = %cfg.identity(), "starting waypoint");
    let shutdown = CancellationToken::new();
    let readiness = mesh_xds::Readiness::default();

    let ca = mesh_xds::ca::GrpcCaClient::new(
        &cfg.ca_address,
        cfg.ca_root_ca.as_ref(),
        cfg.auth_token.as_ref(),
        &cfg.cluster_id,
    )
    .context("CA client")?;
    let certs = Arc::new(CertManager::new(Arc::new(ca), cfg.secret_ttl, CERT_METRICS));
    certs.track(&[cfg.identity()].into_iter().collect());

    let (routes_tx, routes_rx) = watch::channel(Arc::new(Table::default()));
    let routes_handler = crate::xds::RoutesHandler::new(routes_tx).for_pod(&cfg.pod_name);
    let security_rx = routes_handler.security();
    crate::trace::init(&cfg.tracing);
    let xds = mesh_xds::XdsClient::new(
        crate::xds::client_config(&cfg),
        routes_handler,
        readiness.clone(),
    );
    let shared = Arc::new(Shared {
        cfg: cfg.clone(),
        certs: certs.clone(),
        readiness,
        routes: routes_rx.clone(),
    });

    // Bind every listener first so a port conflict fails start-up, not a later request.
    let hbone = crate::admin::bind(cfg.listen_addr).await?;
    if let Some(a) = cfg.stats_addr {
        let l = crate::admin::bind(a).await?;
        tokio::spawn(crate::admin::serve(
            l,
            "stats",
            shutdown.clone(),
            crate::admin::stats(prom),
        ));
    }
    if let Some(a) = cfg.readiness_addr {
        let l = crate::admin::bind(a).await?;
        tokio::spawn(crate::admin::serve(
            l,
            "readiness",
            shutdown.clone(),
            crate::admin::readiness(shared.clone()),
        ));
    }
    if let Some(a) = cfg.admin_addr {
        let l = crate::admin::bind(a).await?;
        tokio::spawn(crate::admin::serve(
            l,
            "admin",
            shutdown.clone(),
            crate::admin::admin(shared.clone()),
        ));
    }
    tokio::spawn(xds.run());
    let proxy = Arc::new(Proxy::new(cfg.clone(), certs, routes_rx).with_security(security_rx));
    tokio::spawn(proxy::serve(proxy, hbone, shutdown.clone()));

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => info!("SIGTERM received"),
        r = tokio::signal::ctrl_c() => { r?; info!("SIGINT received") },
    }
    shutdown.cancel();
    crate::metrics::flush_access_log(std::time::Duration::from_secs(1));
    info!("waypoint stopped");
    Ok(())
}

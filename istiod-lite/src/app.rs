//! Builds and wires the components: config source → model publisher → xDS/CA servers on the
//! plaintext and TLS listeners, plus the monitoring listener.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use mesh_identity::ca::CertificateAuthority;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Identity as TlsIdentity, Server, ServerTlsConfig};
use tracing::Instrument;

use crate::auth::{Authenticator, NodeTokens};
use crate::ca::CaService;
use crate::config::{Config, ConfigSource};
use crate::grpc::GrpcServices;
use crate::model::{self, ModelParams};
use crate::monitoring::{self, MonitoringState};
use crate::source::ConfigWatcher;
use crate::xds::registry::ClientRegistry;
use crate::xds::XdsServer;

/// DNS SANs of the 15012 serving certificate (Istio's service name, and localhost).
const SERVING_CERT_DNS: &[&str] = &["istiod.istio-system.svc", "localhost"];
/// The serving certificate is re-issued at every start; a year outlives any process.
const SERVING_CERT_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// How long shutdown waits for listeners to drain before giving up.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// File the CA roots are written to for clients (XDS_ROOT_CA / CA_ROOT_CA).
pub const ROOT_CERT_FILE: &str = "root-cert.pem";

/// A started control plane.
pub struct RunningApp {
    /// Bound plaintext xDS + CA address.
    pub xds_plaintext_addr: SocketAddr,
    /// Bound TLS xDS + CA address.
    pub xds_tls_addr: SocketAddr,
    /// Bound monitoring address.
    pub monitoring_addr: SocketAddr,
    /// Connected xDS clients.
    pub clients: Arc<ClientRegistry>,
    /// Node token issuer/verifier (tests mint tokens with it).
    pub tokens: NodeTokens,
    /// PEM roots clients should trust for 15012 and issued certificates.
    pub roots_pem: String,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    /// Kubernetes mode: keeps the API watchers running.
    _kube: Option<crate::controller::KubeMode>,
}

impl RunningApp {
    /// Stops accepting, closes xDS streams and waits (bounded) for the servers to finish.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let wait = futures_util::future::join_all(self.tasks);
        if tokio::time::timeout(SHUTDOWN_GRACE, wait).await.is_err() {
            tracing::warn!("listeners did not drain within {SHUTDOWN_GRACE:?}; exiting anyway");
        }
        tracing::info!("shut down");
    }
}

/// Runs until SIGTERM or SIGINT.
pub async fn run(cfg: Config) -> anyhow::Result<()> {
    let app = start(cfg).await?;
    wait_for_signal().await?;
    tracing::info!("signal received, shutting down");
    app.shutdown().await;
    Ok(())
}

async fn wait_for_signal() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing SIGTERM handler")?;
    tokio::select! {
        _ = term.recv() => {},
        r = tokio::signal::ctrl_c() => r.context("installing SIGINT handler")?,
    }
    Ok(())
}

/// Starts every component and returns once all listeners are bound and the config is loaded.
pub async fn start(cfg: Config) -> anyhow::Result<RunningApp> {
    tracing::info!(config = %serde_json::to_string(&cfg).unwrap_or_default(), "starting istiod-lite");
    let metrics = monitoring::install_recorder()?;
    // Only the ring provider is compiled in; make it the process default for tonic's TLS.
    let _ = rustls::crypto::ring::default_provider().install_default();

    match &cfg.config_dir {
        _ if cfg.config_source == ConfigSource::Kubernetes => {}
        Some(dir) => anyhow::ensure!(
            dir.is_dir(),
            "CONFIG_DIR {} is not a directory",
            dir.display()
        ),
        None => tracing::warn!(
            "CONFIG_DIR is not set: serving an empty mesh (no workloads, no services)"
        ),
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&cfg.state_dir)
        .with_context(|| format!("creating STATE_DIR {}", cfg.state_dir.display()))?;
    let tokens = NodeTokens::load_or_create(&cfg.state_dir)?;
    let ca = Arc::new(load_ca(&cfg)?);
    let roots_pem = ca.roots_pem();
    write_root_cert(&cfg.state_dir, &roots_pem)?;

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let mut tasks = Vec::new();

    // Config source and model.
    let mut kube_mode = None;
    let (config_rx, auth) = match cfg.config_source {
        ConfigSource::Kubernetes => {
            // The CA's roots are fixed for the life of the process (a new plug-in CA means a
            // restart), so the channel carries one bundle; the publisher follows any later one.
            let (_, roots) = watch::channel(roots_pem.clone());
            let mut k = crate::controller::start(&cfg, roots, shutdown_rx.clone())
                .await
                .context(
                    "connecting to the Kubernetes API (in-cluster ServiceAccount or KUBECONFIG)",
                )?;
            // Shutdown waits for them: the leader gives its Lease up on the way out.
            tasks.append(&mut k.tasks);
            let parts = (k.config.clone(), k.auth.clone());
            kube_mode = Some(k);
            parts
        }
        ConfigSource::File => {
            let dir = cfg.config_dir.clone();
            let (watcher, config_rx) =
                tokio::task::spawn_blocking(move || ConfigWatcher::load(dir)).await?;
            watcher
                .spawn(cfg.config_poll_interval, shutdown_rx.clone())
                .context("starting the config watcher thread")?;
            (config_rx, Authenticator::from(tokens.clone()))
        }
    };
    let params = ModelParams {
        trust_domain: cfg.trust_domain.clone(),
        cluster_id: cfg.cluster_id.clone(),
        root_namespace: cfg.root_namespace.clone(),
    };
    let initial = {
        let (c, p) = (config_rx.borrow().clone(), params.clone());
        tokio::task::spawn_blocking(move || model::build(&c, &p, None, 1)).await?
    };
    let (snap_tx, snap_rx) = watch::channel(Arc::new(initial));
    tasks.push(tokio::spawn(
        model::run_publisher(
            config_rx.clone(),
            snap_tx,
            params,
            cfg.push_debounce,
            shutdown_rx.clone(),
        )
        .instrument(tracing::info_span!("model")),
    ));
    // gRPC services, shared by both listeners.
    let clients = Arc::new(ClientRegistry::default());
    let xds = XdsServer::new(auth.clone(), snap_rx, clients.clone(), shutdown_rx.clone());
    let ca_svc = CaService::new(
        ca.clone(),
        auth,
        config_rx.clone(),
        cfg.max_workload_cert_ttl,
    );

    let plain = bind(cfg.xds_plaintext_addr, "XDS_PLAINTEXT_ADDR").await?;
    let tls = bind(cfg.xds_tls_addr, "XDS_TLS_ADDR").await?;
    let mon = bind(cfg.monitoring_addr, "MONITORING_ADDR").await?;
    let (xds_plaintext_addr, xds_tls_addr, monitoring_addr) =
        (plain.local_addr()?, tls.local_addr()?, mon.local_addr()?);

    let tls_config = serving_tls(&ca, xds_tls_addr.ip())?;
    for (listener, tls_config, name) in [
        (plain, None, "xds-plaintext"),
        (tls, Some(tls_config), "xds-tls"),
    ] {
        let mut builder = Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)));
        if let Some(t) = tls_config {
            builder = builder
                .tls_config(t)
                .context("configuring TLS on XDS_TLS_ADDR")?;
        }
        let services = GrpcServices::new(xds.clone().into_service(), ca_svc.clone().into_service());
        let mut stop = shutdown_rx.clone();
        let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
        tasks.push(tokio::spawn(
            async move {
                let signal = async move {
                    let _ = stop.wait_for(|s| *s).await;
                };
                if let Err(e) = builder
                    .serve_with_incoming_shutdown(services, incoming, signal)
                    .await
                {
                    tracing::error!(error = %e, "gRPC server failed");
                }
            }
            .instrument(tracing::info_span!("grpc", listener = name)),
        ));
    }

    let ready = Arc::new(AtomicBool::new(false));
    let state = MonitoringState {
        metrics,
        ready: ready.clone(),
        clients: clients.clone(),
        config: config_rx,
    };
    tasks.push(tokio::spawn(
        monitoring::serve(mon, state, shutdown_rx).instrument(tracing::info_span!("monitoring")),
    ));

    ready.store(true, Ordering::Release);
    tracing::info!(
        xds_plaintext = %xds_plaintext_addr, xds_tls = %xds_tls_addr, monitoring = %monitoring_addr,
        root_cert = %cfg.state_dir.join(ROOT_CERT_FILE).display(), "ready"
    );
    Ok(RunningApp {
        xds_plaintext_addr,
        xds_tls_addr,
        monitoring_addr,
        clients,
        tokens,
        roots_pem,
        shutdown: shutdown_tx,
        tasks,
        _kube: kube_mode,
    })
}

fn load_ca(cfg: &Config) -> anyhow::Result<CertificateAuthority> {
    match &cfg.cacerts_dir {
        Some(dir) => CertificateAuthority::load_plugin(dir, &cfg.trust_domain)
            .with_context(|| format!("loading the plug-in CA from CACERTS_DIR {}", dir.display())),
        None => CertificateAuthority::load_or_create(&cfg.state_dir, &cfg.trust_domain)
            .with_context(|| {
                format!(
                    "loading or creating the CA root in STATE_DIR {}",
                    cfg.state_dir.display()
                )
            }),
    }
}

/// Writes the roots for clients, atomically, only when they changed.
fn write_root_cert(state_dir: &Path, roots_pem: &str) -> anyhow::Result<()> {
    let path = state_dir.join(ROOT_CERT_FILE);
    if std::fs::read_to_string(&path).is_ok_and(|cur| cur == roots_pem) {
        return Ok(());
    }
    let tmp = state_dir.join(format!(".{ROOT_CERT_FILE}.tmp"));
    std::fs::write(&tmp, roots_pem).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

fn serving_tls(ca: &CertificateAuthority, bound: IpAddr) -> anyhow::Result<ServerTlsConfig> {
    let dns: Vec<String> = SERVING_CERT_DNS.iter().map(|s| s.to_string()).collect();
    let mut ips = vec![
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(Ipv6Addr::LOCALHOST),
    ];
    // Also certify the specific address we listen on, so clients can dial it by IP.
    if !bound.is_unspecified() && !ips.contains(&bound) {
        ips.push(bound);
    }
    let (chain, key) = ca
        .issue_server_cert(&dns, &ips, SERVING_CERT_VALIDITY)
        .context("issuing the XDS_TLS_ADDR serving certificate")?;
    Ok(ServerTlsConfig::new().identity(TlsIdentity::from_pem(chain.concat(), key)))
}

async fn bind(addr: SocketAddr, name: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {name} {addr}"))
}

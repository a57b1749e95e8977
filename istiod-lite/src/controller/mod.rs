//! Kubernetes mode: the API-server config source, ServiceAccount-token authentication, leader
//! election ([`leader`]), the waypoint controller ([`waypoint`]), the route and policy
//! status writer ([`status`]) and the root certificate publisher ([`root_cert`], the
//! `istio-ca-root-cert` ConfigMap in every namespace). Only the leader writes; every replica
//! serves xDS and the CA.

pub mod leader;
pub mod root_cert;
pub mod status;
pub mod waypoint;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::auth::kube::{KubeAuthSettings, KubeAuthenticator};
use crate::auth::Authenticator;
use crate::config::Config;
use crate::source::kube::{KubeSource, KubeSourceOptions};
use crate::source::ConfigSnapshot;

/// The running Kubernetes-mode components.
pub struct KubeMode {
    /// Config snapshots from the API server.
    pub config: watch::Receiver<Arc<ConfigSnapshot>>,
    /// TokenReview authenticator for xDS and the CA.
    pub auth: Authenticator,
    /// Leader election and controller tasks (they end on shutdown).
    pub tasks: Vec<JoinHandle<()>>,
    /// True while this replica leads.
    pub leader: watch::Receiver<bool>,
    _source: KubeSource,
}

/// Connects to the API server (in-cluster config or KUBECONFIG), waits for the initial lists
/// and starts leader election, the status writer, the publisher of `roots` (the CA's PEM
/// bundle) and, with a waypoint image configured, the waypoint controller.
pub async fn start(
    cfg: &Config,
    roots: watch::Receiver<String>,
    shutdown: watch::Receiver<bool>,
) -> Result<KubeMode, kube::Error> {
    let client = kube::Client::try_default().await?;
    tracing::info!(
        namespace = %cfg.kube.namespace,
        "connected to the Kubernetes API; listing config"
    );
    let (source, config) = KubeSource::start(client.clone(), KubeSourceOptions::default()).await;

    let mut settings = KubeAuthSettings::new(&cfg.kube.namespace);
    settings
        .ztunnel_service_account
        .clone_from(&cfg.kube.ztunnel_service_account);
    let auth = Authenticator::Kube(Arc::new(KubeAuthenticator::new(
        client.clone(),
        config.clone(),
        settings,
    )));

    let mut tasks = Vec::new();
    let (leader_tx, leader_rx) = watch::channel(false);
    let status_writer = status::StatusWriter::new(
        client.clone(),
        status::StatusSettings::new(&cfg.root_namespace),
    );
    tasks.push(tokio::spawn(
        status_writer
            .run(source.status_inputs(), leader_rx.clone(), shutdown.clone())
            .instrument(tracing::info_span!("status-writer")),
    ));
    let publisher =
        root_cert::RootCertController::new(client.clone(), root_cert::RootCertSettings::default());
    tasks.push(tokio::spawn(
        publisher
            .run(roots, leader_rx.clone(), shutdown.clone())
            .instrument(tracing::info_span!("root-cert-publisher")),
    ));
    let elector = leader::LeaderElector::new(
        client.clone(),
        leader::LeaseSettings::new(&cfg.kube.namespace, &cfg.kube.pod_name),
    );
    tasks.push(tokio::spawn(
        elector
            .run(leader_tx, shutdown.clone())
            .instrument(tracing::info_span!("leader-election")),
    ));
    match &cfg.kube.waypoint_image {
        Some(image) => {
            let controller = waypoint::WaypointController::new(
                client,
                waypoint::WaypointSettings {
                    image: image.clone(),
                    xds_address: cfg.kube.waypoint_xds_address.clone(),
                    trust_domain: cfg.trust_domain.clone(),
                    cluster_id: cfg.cluster_id.clone(),
                    token_audience: "istio-ca".into(),
                    cluster_domain: "cluster.local".into(),
                    resync: Duration::from_secs(300),
                },
            );
            tasks.push(tokio::spawn(
                controller
                    .run(leader_rx.clone(), shutdown)
                    .instrument(tracing::info_span!("waypoint-controller")),
            ));
        }
        None => tracing::warn!(
            "WAYPOINT_IMAGE is not set: the waypoint controller is off (istio-waypoint Gateways get no Deployment)"
        ),
    }
    Ok(KubeMode {
        config,
        auth,
        tasks,
        leader: leader_rx,
        _source: source,
    })
}

#[cfg(test)]
mod tests;

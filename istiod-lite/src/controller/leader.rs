//! Leader election with a `coordination.k8s.io/v1` Lease, the way client-go's leaderelection
//! does it: the holder renews `spec.renewTime` every [`LeaseSettings::renew_period`]; another
//! replica takes the Lease over once `renewTime + leaseDurationSeconds` has passed. Every write
//! is a compare-and-swap on `resourceVersion` (a 409 Conflict means someone else won).
//!
//! Only the leader runs the controllers (waypoints, status, the root-certificate ConfigMaps)
//! and writes; every replica serves xDS and the CA.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, PostParams};
use kube::Client;
use tokio::sync::watch;

/// Settings of the election.
#[derive(Debug, Clone)]
pub struct LeaseSettings {
    /// Namespace of the Lease (istiod-lite's own).
    pub namespace: String,
    /// Lease name.
    pub name: String,
    /// This replica's identity (its pod name).
    pub identity: String,
    /// How long a Lease stays valid without renewal.
    pub lease_duration: Duration,
    /// How often the leader renews (and followers retry).
    pub renew_period: Duration,
}

impl LeaseSettings {
    /// client-go's defaults: 15 s lease, renewed every 5 s (Istio uses the same order).
    pub fn new(namespace: &str, identity: &str) -> Self {
        LeaseSettings {
            namespace: namespace.to_string(),
            name: "istiod-lite-leader".into(),
            identity: identity.to_string(),
            lease_duration: Duration::from_secs(15),
            renew_period: Duration::from_secs(5),
        }
    }
}

/// One replica's side of the election.
pub struct LeaderElector {
    api: Api<Lease>,
    s: LeaseSettings,
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

impl LeaderElector {
    /// Elects through the Lease `settings.namespace/settings.name`.
    pub fn new(client: Client, settings: LeaseSettings) -> Self {
        LeaderElector {
            api: Api::namespaced(client, &settings.namespace),
            s: settings,
        }
    }

    fn spec(&self, now: Timestamp, acquire: Option<MicroTime>, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.s.identity.clone()),
            lease_duration_seconds: Some(
                i32::try_from(self.s.lease_duration.as_secs()).unwrap_or(i32::MAX),
            ),
            acquire_time: Some(acquire.unwrap_or(MicroTime(now))),
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(transitions),
            ..Default::default()
        }
    }

    /// One round: creates, renews or takes over the Lease. `Ok(true)` when this replica holds
    /// it afterwards.
    pub async fn try_acquire_or_renew(&self) -> Result<bool, kube::Error> {
        let now = Timestamp::now();
        let Some(mut lease) = self.api.get_opt(&self.s.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.s.name.clone()),
                    namespace: Some(self.s.namespace.clone()),
                    ..Default::default()
                },
                spec: Some(self.spec(now, None, 0)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(e) if is_conflict(&e) => Ok(false),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.as_deref().unwrap_or("");
        let transitions = spec.lease_transitions.unwrap_or(0);
        let new_spec = if holder == self.s.identity {
            self.spec(now, spec.acquire_time.clone(), transitions)
        } else {
            let duration = SignedDuration::from_secs(i64::from(
                spec.lease_duration_seconds.unwrap_or(15).max(1),
            ));
            let expired = match &spec.renew_time {
                None => true,
                Some(MicroTime(t)) => t.checked_add(duration).map_or(true, |end| end < now),
            };
            if !holder.is_empty() && !expired {
                return Ok(false);
            }
            tracing::info!(previous = holder, "taking over the expired leader lease");
            self.spec(now, None, transitions.saturating_add(1))
        };
        lease.spec = Some(new_spec);
        // `lease` carries the resourceVersion we read: a concurrent writer makes this a 409.
        match self
            .api
            .replace(&self.s.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if is_conflict(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Gives the Lease up (on shutdown) so another replica need not wait for it to expire.
    pub async fn release(&self) -> Result<(), kube::Error> {
        let Some(mut lease) = self.api.get_opt(&self.s.name).await? else {
            return Ok(());
        };
        let Some(spec) = lease.spec.as_mut() else {
            return Ok(());
        };
        if spec.holder_identity.as_deref() != Some(self.s.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.renew_time = None;
        match self
            .api
            .replace(&self.s.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if is_conflict(&e) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Runs the election until `shutdown`, publishing leadership on `leader`. A leader that
    /// cannot renew for 2/3 of the lease duration steps down before another may take over.
    pub async fn run(self, leader: watch::Sender<bool>, mut shutdown: watch::Receiver<bool>) {
        let renew_deadline = self.s.lease_duration * 2 / 3;
        let mut last_renew: Option<tokio::time::Instant> = None;
        let mut tick = tokio::time::interval(self.s.renew_period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.wait_for(|s| *s) => break,
            }
            let was = *leader.borrow();
            let now_leader = match self.try_acquire_or_renew().await {
                Ok(true) => {
                    last_renew = Some(tokio::time::Instant::now());
                    true
                }
                Ok(false) => false,
                Err(e) => {
                    tracing::warn!(error = %e, lease = %self.s.name, "leader lease update failed");
                    was && last_renew.is_some_and(|t| t.elapsed() < renew_deadline)
                }
            };
            if now_leader != was {
                if now_leader {
                    tracing::info!(identity = %self.s.identity, "became the leader: running the controllers (waypoints, status, root-certificate ConfigMaps)");
                } else {
                    tracing::warn!(identity = %self.s.identity, "lost the leader lease: stopping the controllers");
                }
                leader.send_replace(now_leader);
            }
        }
        if *leader.borrow() {
            leader.send_replace(false);
            if let Err(e) = self.release().await {
                tracing::warn!(error = %e, "releasing the leader lease failed");
            }
        }
    }
}

//! In-pod mode: the node agent side of capture.
//!
//! The CNI plugin (`ambient-cni`) hands every new pod of this node to us over a unix socket
//! ([`server`]). For pods the control plane puts in the mesh (their xDS workload is HBONE and on
//! this node) we open 15001, 15006, 15008 and 15053 *inside the pod's netns* and answer
//! "enrolled", and the plugin installs the redirection rules. Afterwards we follow the workload:
//! a label change that moves a running pod in or out of the mesh enrolls or releases it here,
//! installing or removing the same rules ourselves. The pods we know are written to a file next
//! to the socket, so a restarted ztunnel re-adopts them (their rules stay in their netns).

pub mod netns;
mod server;

pub use server::bind;

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use mesh_inpod::protocol::{Answer, Op, Request};
use mesh_inpod::rules;
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use netns::{Netns, NetnsError, NetnsId};

use crate::proxy::Proxy;
use crate::state::{Protocol, Workload};

/// How long an ADD waits for the pod's workload to reach us from the control plane (the CNI
/// plugin gives up after 10 s).
pub const ADD_WAIT: Duration = Duration::from_secs(5);
/// Ports opened in every enrolled pod.
pub const OUTBOUND_PORT: u16 = 15001;
pub const INBOUND_PLAINTEXT_PORT: u16 = 15006;
pub const DNS_PORT: u16 = 15053;

/// Why a pod could not be enrolled (sent back to the plugin as the answer's `error`).
#[derive(thiserror::Error, Debug)]
pub enum InpodError {
    #[error("request has no {0}")]
    Missing(&'static str),
    #[error("pod IP {0:?} is not an IP address")]
    BadIp(String),
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("netns {path} changed under pod {pod} (recreated?)")]
    NetnsChanged { path: PathBuf, pod: String },
    #[error("cannot listen on {addr} in the pod netns {path}: {source}")]
    Listen {
        addr: SocketAddr,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("installing the in-pod rules: {0}")]
    Rules(#[from] rules::RulesError),
    #[error("DNS proxy: {0}")]
    Dns(#[from] crate::dns::DnsError),
    #[error("internal: {0}")]
    Internal(String),
}

/// Pod IP → the netns ztunnel makes that pod's connections from. Read on every connection, so a
/// plain read lock; written only on enroll/release.
#[derive(Default)]
pub struct NetnsTable(RwLock<HashMap<IpAddr, Arc<Netns>>>);

impl NetnsTable {
    /// The netns of the enrolled pod owning `ip`.
    pub fn get(&self, ip: IpAddr) -> Option<Arc<Netns>> {
        self.0.read().ok()?.get(&ip.to_canonical()).cloned()
    }

    fn set(&self, ips: &[IpAddr], ns: Option<&Arc<Netns>>) {
        if let Ok(mut t) = self.0.write() {
            for ip in ips {
                match ns {
                    Some(ns) => t.insert(*ip, ns.clone()),
                    None => t.remove(ip),
                };
            }
        }
    }
}

/// What we remember about a pod the plugin told us about (persisted).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodRecord {
    pub namespace: String,
    pub name: String,
    #[serde(default)]
    pub uid: String,
    pub container_id: String,
    pub netns: PathBuf,
    pub netns_id: NetnsId,
    pub ips: Vec<IpAddr>,
    #[serde(default)]
    pub dns_capture: bool,
}

impl PodRecord {
    fn key(&self) -> (String, String) {
        (self.namespace.clone(), self.name.clone())
    }
    fn display(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// A pod we hold listeners for.
struct Enrolled {
    netns: Arc<Netns>,
    /// Stops the pod's listeners (open connections finish on their own).
    stop: CancellationToken,
}

struct Pod {
    record: PodRecord,
    enrolled: Option<Enrolled>,
}

/// What the control plane says about a pod.
#[derive(Debug)]
enum Membership {
    /// HBONE workload on this node.
    In(Arc<Workload>),
    /// Known, not captured (`dataplane-mode` absent or `none`).
    Out,
    /// Not (yet) known to us, or scheduled elsewhere.
    Unknown,
}

/// Whether enrolling also installs the rules (label flip, re-adoption) or leaves that to the
/// plugin (ADD, which installs them once we answer).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Rules {
    Plugin,
    Ensure,
}

/// The node agent: pods of this node, their netns and listeners.
pub struct Agent {
    proxy: Arc<Proxy>,
    state_file: PathBuf,
    pods: Mutex<BTreeMap<(String, String), Pod>>,
    /// What `/config_dump` shows, refreshed after every change (the dump must not wait for an
    /// enrollment in progress).
    snapshot: RwLock<serde_json::Value>,
    dns_upstreams: Vec<SocketAddr>,
}

impl Agent {
    /// Loads the pods a previous run knew (those whose netns still exists) from the file next to
    /// `uds`. They are enrolled again once the control plane's state arrives.
    pub fn new(proxy: Arc<Proxy>, uds: &Path) -> Arc<Agent> {
        let state_file = uds.with_file_name("pods.json");
        let dns_upstreams =
            crate::dns::read_resolv_conf(Path::new(crate::dns::RESOLV_CONF)).unwrap_or_default();
        let mut pods = BTreeMap::new();
        for record in load(&state_file) {
            match NetnsId::of(&record.netns) {
                Ok(id) if id == record.netns_id => {
                    info!(pod = %record.display(), netns = %record.netns.display(), "re-adopting pod from the previous run");
                    pods.insert(
                        record.key(),
                        Pod {
                            record,
                            enrolled: None,
                        },
                    );
                }
                _ => {
                    info!(pod = %record.display(), "pod of the previous run is gone; forgetting it")
                }
            }
        }
        let mut agent = Agent {
            proxy,
            state_file,
            snapshot: RwLock::new(serde_json::Value::Array(Vec::new())),
            pods: Mutex::new(BTreeMap::new()),
            dns_upstreams,
        };
        agent.publish(&pods, false);
        agent.pods = Mutex::new(pods);
        Arc::new(agent)
    }

    /// Serves the enrollment socket and follows state changes until shutdown.
    /// `reconciled` gets the state version the pods reflect (readiness waits for it).
    pub async fn run(
        self: Arc<Self>,
        listener: tokio::net::UnixListener,
        uds: PathBuf,
        reconciled: Arc<std::sync::atomic::AtomicU64>,
    ) {
        tokio::spawn(server::serve(self.clone(), listener));
        let mut changes = self.proxy.state.subscribe();
        loop {
            let version = *changes.borrow_and_update();
            crate::proxy::inbound::track_local_certs(&self.proxy);
            self.reconcile().await;
            reconciled.store(version, std::sync::atomic::Ordering::Release);
            tokio::select! {
                _ = self.proxy.shutdown.cancelled() => break,
                r = changes.changed() => if r.is_err() { break },
            }
        }
        let _ = std::fs::remove_file(&uds);
    }

    /// Handles one request from the plugin.
    pub async fn handle(&self, req: Request) -> Answer {
        let op = match req.op {
            Op::Add => "add",
            Op::Del => "del",
        };
        let res = match req.op {
            Op::Add => self.add(req).await,
            Op::Del => self.del(req).await.map(|()| false),
        };
        match res {
            Ok(enrolled) => {
                metrics::counter!("ztunnel_inpod_requests_total", "op" => op, "result" => if enrolled { "enrolled" } else { "ok" }).increment(1);
                Answer {
                    enrolled,
                    error: String::new(),
                }
            }
            Err(e) => {
                metrics::counter!("ztunnel_inpod_requests_total", "op" => op, "result" => "error")
                    .increment(1);
                warn!(error = %e, op, "in-pod request failed");
                Answer {
                    enrolled: false,
                    error: e.to_string(),
                }
            }
        }
    }

    async fn add(&self, req: Request) -> Result<bool, InpodError> {
        if req.pod.namespace.is_empty() || req.pod.name.is_empty() {
            return Err(InpodError::Missing("pod namespace/name"));
        }
        if req.netns.as_os_str().is_empty() {
            return Err(InpodError::Missing("netns"));
        }
        let ips = req
            .ips
            .iter()
            .map(|s| {
                s.parse::<IpAddr>()
                    .map(|ip| ip.to_canonical())
                    .map_err(|_| InpodError::BadIp(s.clone()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let netns_id = NetnsId::of(&req.netns).map_err(|source| NetnsError::Open {
            path: req.netns.clone(),
            source,
        })?;
        let record = PodRecord {
            namespace: req.pod.namespace,
            name: req.pod.name,
            uid: req.pod.uid,
            container_id: req.container_id,
            netns: req.netns,
            netns_id,
            ips,
            dns_capture: req.dns_capture,
        };
        let membership = self.wait_membership(&record, ADD_WAIT).await;
        let mut pods = self.pods.lock().await;
        if let Some(old) = pods.remove(&record.key()) {
            // A retried ADD for the same sandbox keeps its listeners; a new sandbox replaces it.
            if old.record.netns_id == record.netns_id
                && old.enrolled.is_some()
                && matches!(membership, Membership::In(_))
            {
                pods.insert(
                    record.key(),
                    Pod {
                        record,
                        enrolled: old.enrolled,
                    },
                );
                self.publish(&pods, true);
                return Ok(true);
            }
            self.release(old, false).await;
        }
        let mut pod = Pod {
            record,
            enrolled: None,
        };
        let result = match membership {
            Membership::In(w) => match self.enroll(&mut pod, &w, Rules::Plugin).await {
                Ok(()) => Ok(true),
                Err(e) => Err(e),
            },
            Membership::Out => {
                info!(pod = %pod.record.display(), "pod not in the mesh; not capturing");
                Ok(false)
            }
            Membership::Unknown => {
                warn!(pod = %pod.record.display(), wait = ?ADD_WAIT, "pod unknown to the control plane (or scheduled on another node); not capturing it until it is");
                Ok(false)
            }
        };
        if result.is_ok() {
            pods.insert(pod.record.key(), pod);
        }
        self.publish(&pods, true);
        result
    }

    async fn del(&self, req: Request) -> Result<(), InpodError> {
        let key = (req.pod.namespace, req.pod.name);
        let mut pods = self.pods.lock().await;
        let matches = pods.get(&key).is_some_and(|p| {
            req.container_id.is_empty() || p.record.container_id == req.container_id
        });
        if matches {
            if let Some(pod) = pods.remove(&key) {
                info!(pod = %pod.record.display(), "pod deleted; releasing it");
                // The plugin removes the rules itself on DEL (and the netns is going away).
                self.release(pod, false).await;
            }
            self.publish(&pods, true);
        }
        Ok(())
    }

    /// Enrolls or releases every known pod to match the control plane's current view.
    async fn reconcile(&self) {
        let mut pods = self.pods.lock().await;
        let keys: Vec<_> = pods.keys().cloned().collect();
        for key in keys {
            let Some(mut pod) = pods.remove(&key) else {
                continue;
            };
            match (self.membership(&pod.record), pod.enrolled.is_some()) {
                (Membership::In(w), false) => {
                    if let Err(e) = self.enroll(&mut pod, &w, Rules::Ensure).await {
                        warn!(pod = %pod.record.display(), error = %e, "cannot enroll pod that joined the mesh; will retry on the next change");
                    } else {
                        info!(pod = %pod.record.display(), "pod joined the mesh: enrolled and captured");
                    }
                }
                (Membership::Out, true) => {
                    info!(pod = %pod.record.display(), "pod left the mesh: releasing it and removing its rules");
                    if let Some(e) = pod.enrolled.take() {
                        self.release(
                            Pod {
                                record: pod.record.clone(),
                                enrolled: Some(e),
                            },
                            true,
                        )
                        .await;
                    }
                }
                _ => {}
            }
            pods.insert(key, pod);
        }
        self.publish(&pods, false);
    }

    fn membership(&self, r: &PodRecord) -> Membership {
        let node = &self.proxy.cfg.node_name;
        let found = self.proxy.state.workload_by_name(&r.namespace, &r.name);
        match found {
            None => Membership::Unknown,
            Some(w) if !w.node.is_empty() && &w.node != node => Membership::Unknown,
            // A waypoint terminates HBONE itself; capturing it would loop its traffic.
            Some(w) if w.protocol == Protocol::Hbone && !w.native_tunnel => Membership::In(w),
            Some(_) => Membership::Out,
        }
    }

    /// Waits (up to `wait`) until the control plane has told us about the pod.
    async fn wait_membership(&self, r: &PodRecord, wait: Duration) -> Membership {
        let mut changes = self.proxy.state.subscribe();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            changes.borrow_and_update();
            let m = self.membership(r);
            if !matches!(m, Membership::Unknown) {
                return m;
            }
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => {}
                _ => return self.membership(r),
            }
        }
    }

    /// Opens the pod's listeners inside its netns (and, with [`Rules::Ensure`], makes sure its
    /// rules are installed).
    async fn enroll(
        &self,
        pod: &mut Pod,
        w: &Workload,
        rules_mode: Rules,
    ) -> Result<(), InpodError> {
        let r = &pod.record;
        let path = r.netns.clone();
        let mark = self.proxy.cfg.packet_mark;
        let open_path = path.clone();
        let netns = tokio::task::spawn_blocking(move || Netns::open(&open_path, mark))
            .await
            .map_err(|e| InpodError::Internal(e.to_string()))??;
        if netns.id() != r.netns_id {
            return Err(InpodError::NetnsChanged {
                path,
                pod: r.display(),
            });
        }
        let netns = Arc::new(netns);
        let stop = self.proxy.shutdown.child_token();
        let listen = |port: u16, ip: IpAddr| SocketAddr::new(ip, port);
        let any: IpAddr = std::net::Ipv6Addr::UNSPECIFIED.into();
        let bind = |addr: SocketAddr| {
            let netns = netns.clone();
            let path = path.clone();
            async move {
                netns
                    .tcp_listener(addr)
                    .await
                    .and_then(tokio::net::TcpListener::from_std)
                    .map_err(|source| InpodError::Listen { addr, path, source })
            }
        };
        // Bind everything before serving anything, so a failure leaves nothing half-open.
        let outbound = bind(listen(OUTBOUND_PORT, any)).await?;
        let plaintext = bind(listen(INBOUND_PLAINTEXT_PORT, any)).await?;
        let hbone = bind(listen(self.proxy.cfg.hbone_port, any)).await?;
        let dns_addr = listen(DNS_PORT, Ipv4Addr::LOCALHOST.into());
        let dns_udp = netns
            .udp_socket(dns_addr)
            .await
            .map_err(|source| InpodError::Listen {
                addr: dns_addr,
                path: path.clone(),
                source,
            })?;
        let dns_tcp = netns
            .tcp_listener(dns_addr)
            .await
            .map_err(|source| InpodError::Listen {
                addr: dns_addr,
                path: path.clone(),
                source,
            })?;
        let mut dns_cfg = crate::dns::DnsConfig::new(dns_addr, self.dns_upstreams.clone());
        dns_cfg.packet_mark = mark;
        dns_cfg.default_namespace = Some(w.namespace.clone());
        let dns =
            crate::dns::DnsProxy::from_std(self.proxy.state.clone(), dns_cfg, dns_udp, dns_tcp)?;

        if rules_mode == Rules::Ensure {
            let (p, dns_capture) = (path.clone(), r.dns_capture);
            tokio::task::spawn_blocking(move || match rules::check(&p) {
                Ok(rules::Installed::Complete) => Ok(()),
                _ => rules::install(&p, dns_capture),
            })
            .await
            .map_err(|e| InpodError::Internal(e.to_string()))??;
        }

        let p = &self.proxy;
        spawn_until(
            &stop,
            crate::proxy::accept_loop(
                p.clone(),
                outbound,
                "inpod_outbound",
                crate::proxy::outbound::serve_captured,
            ),
        );
        spawn_until(
            &stop,
            crate::proxy::accept_loop(
                p.clone(),
                plaintext,
                "inpod_inbound_plaintext",
                crate::proxy::inbound_plaintext::serve,
            ),
        );
        spawn_until(&stop, crate::proxy::inbound::accept_hbone(p.clone(), hbone));
        tokio::spawn(dns.run(stop.clone()));

        let mut ips = r.ips.clone();
        ips.extend(w.workload_ips.iter().copied());
        ips.sort();
        ips.dedup();
        self.proxy.netns.set(&ips, Some(&netns));
        info!(pod = %r.display(), netns = %path.display(), ips = ?ips, identity = %w.identity(), "pod enrolled: listening on 15001, 15006, 15008, 15053 in its netns");
        pod.enrolled = Some(Enrolled { netns, stop });
        crate::metrics::proxy_started(true);
        Ok(())
    }

    /// Stops the pod's listeners; with `remove_rules`, also takes its rules out.
    async fn release(&self, pod: Pod, remove_rules: bool) {
        let Some(e) = pod.enrolled else {
            return;
        };
        // Rules out first, listeners last: the other order would refuse the pod's traffic in
        // between instead of letting it flow uncaptured.
        if remove_rules {
            let p = e.netns.path().to_path_buf();
            let _ = tokio::task::spawn_blocking(move || rules::remove(&p)).await;
        }
        e.stop.cancel();
        let ips: Vec<IpAddr> = {
            let t = self.proxy.netns.0.read();
            t.map(|t| {
                t.iter()
                    .filter(|(_, ns)| Arc::ptr_eq(ns, &e.netns))
                    .map(|(ip, _)| *ip)
                    .collect()
            })
            .unwrap_or_default()
        };
        self.proxy.netns.set(&ips, None);
        crate::metrics::proxy_started(false);
        info!(pod = %pod.record.display(), "pod released");
    }

    /// Refreshes the dump and the gauges; with `persist`, also writes the pods to the state file.
    fn publish(&self, pods: &BTreeMap<(String, String), Pod>, persist: bool) {
        let enrolled = pods.values().filter(|p| p.enrolled.is_some()).count();
        let pending = pods
            .values()
            .filter(|p| {
                p.enrolled.is_none() && matches!(self.membership(&p.record), Membership::Unknown)
            })
            .count();
        crate::metrics::proxies(enrolled, pending);
        let dump = serde_json::Value::Array(
            pods.values()
                .map(|p| {
                    serde_json::json!({
                        "namespace": p.record.namespace,
                        "name": p.record.name,
                        "uid": p.record.uid,
                        "netns": p.record.netns,
                        "ips": p.record.ips,
                        "enrolled": p.enrolled.is_some(),
                    })
                })
                .collect(),
        );
        if let Ok(mut s) = self.snapshot.write() {
            *s = dump;
        }
        if !persist {
            return;
        }
        let records: Vec<&PodRecord> = pods.values().map(|p| &p.record).collect();
        if let Err(e) = save(&self.state_file, &records) {
            metrics::counter!("ztunnel_inpod_state_write_failures_total").increment(1);
            warn!(file = %self.state_file.display(), error = %e, "cannot persist in-pod state; a restart would not re-adopt pods");
        }
    }

    /// For `/config_dump`: every known pod and whether it is enrolled.
    pub fn dump(&self) -> serde_json::Value {
        self.snapshot
            .read()
            .map(|s| s.clone())
            .unwrap_or(serde_json::Value::Null)
    }
}

fn spawn_until<F>(stop: &CancellationToken, fut: F)
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let stop = stop.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = stop.cancelled() => {},
            _ = fut => {},
        }
    });
}

fn load(path: &Path) -> Vec<PodRecord> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            warn!(file = %path.display(), error = %e, "in-pod state file is unreadable; starting with no pods");
            Vec::new()
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => {
            warn!(file = %path.display(), error = %e, "cannot read in-pod state file");
            Vec::new()
        }
    }
}

fn save(path: &Path, records: &[&PodRecord]) -> std::io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    let bytes = serde_json::to_vec_pretty(records).map_err(std::io::Error::other)?;
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_file_round_trip_and_garbage() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("pods.json");
        let r = PodRecord {
            namespace: "ns".into(),
            name: "p".into(),
            uid: "u".into(),
            container_id: "c".into(),
            netns: "/run/netns/p".into(),
            netns_id: NetnsId { dev: 4, ino: 42 },
            ips: vec!["10.244.1.5".parse().expect("ip")],
            dns_capture: true,
        };
        save(&f, &[&r]).expect("save");
        assert_eq!(load(&f), vec![r]);
        std::fs::write(&f, b"{not json").expect("write");
        assert!(load(&f).is_empty(), "garbage is reported, not fatal");
        assert!(load(&dir.path().join("missing.json")).is_empty());
    }

    #[test]
    fn table_canonicalizes_mapped_addresses() {
        let t = NetnsTable::default();
        let v4: IpAddr = "10.0.0.1".parse().expect("ip");
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().expect("ip");
        assert!(t.get(mapped).is_none());
        let ns = match Netns::open(Path::new("/proc/self/ns/net"), None) {
            Ok(ns) => Arc::new(ns),
            Err(e) => {
                eprintln!("skipping: cannot join a netns here ({e})");
                return;
            }
        };
        t.set(&[v4], Some(&ns));
        assert!(t.get(mapped).is_some());
        t.set(&[v4], None);
        assert!(t.get(v4).is_none());
    }
}

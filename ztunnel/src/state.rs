//! The data plane's view of the mesh: workloads, services and policies pushed over xDS, indexed
//! for the lookups the proxy makes per connection. One writer (the xDS client) converts protobufs
//! outside the lock and applies them under one short write lock; readers take a read lock only
//! for a lookup and clone an `Arc`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use mesh_identity::spiffe::Identity;
use mesh_policy::Policy;
use mesh_proto::workload as pb;
use serde::Serialize;
use tokio::sync::watch;

/// Why a pushed resource could not be applied (it is NACKed with this message).
#[derive(thiserror::Error, Debug)]
pub enum StateError {
    #[error("resource {name}: {reason}")]
    Invalid { name: String, reason: String },
}

/// How traffic to a workload is carried.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Protocol {
    #[serde(rename = "HBONE")]
    Hbone,
    #[serde(rename = "TCP")]
    Tcp,
}

/// A service port and the workload port it maps to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PortMapping {
    pub service_port: u16,
    pub target_port: u16,
    pub app_protocol: String,
}

/// Where a waypoint is (Istio's `GatewayAddress`): a Service hostname, or an address of a
/// waypoint workload or Service VIP.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum WaypointRef {
    Hostname { namespace: String, hostname: String },
    Address(IpAddr),
}

/// A waypoint attached to a service or workload, with its HBONE port.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Waypoint {
    pub target: WaypointRef,
    pub hbone_port: u16,
}

fn convert_waypoint(
    name: &str,
    g: Option<pb::GatewayAddress>,
) -> Result<Option<Waypoint>, StateError> {
    let Some(g) = g else { return Ok(None) };
    let invalid = |reason: String| StateError::Invalid {
        name: name.to_string(),
        reason,
    };
    let target = match g.destination {
        Some(pb::gateway_address::Destination::Hostname(h)) if !h.hostname.is_empty() => {
            WaypointRef::Hostname {
                namespace: h.namespace,
                hostname: h.hostname,
            }
        }
        Some(pb::gateway_address::Destination::Address(a)) => WaypointRef::Address(
            ip_from_bytes(&a.address)
                .ok_or_else(|| invalid(format!("waypoint address of {} bytes", a.address.len())))?,
        ),
        _ => return Err(invalid("waypoint without hostname or address".into())),
    };
    let hbone_port = match g.hbone_mtls_port {
        0 => 15008,
        p => u16::try_from(p).map_err(|_| invalid(format!("waypoint port {p} out of range")))?,
    };
    Ok(Some(Waypoint { target, hbone_port }))
}

/// A pod as ztunnel knows it.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Workload {
    pub uid: String,
    pub name: String,
    pub namespace: String,
    pub workload_ips: Vec<IpAddr>,
    pub protocol: Protocol,
    pub trust_domain: String,
    pub service_account: String,
    pub node: String,
    pub canonical_name: String,
    pub canonical_revision: String,
    pub workload_type: String,
    pub workload_name: String,
    pub cluster_id: String,
    /// Service name (`ns/hostname`) -> port mappings.
    pub services: BTreeMap<String, Vec<PortMapping>>,
    pub authorization_policies: Vec<String>,
    pub healthy: bool,
    /// `istio.io/use-waypoint` on the pod (or its namespace): traffic addressed to the pod
    /// itself goes through it.
    pub waypoint: Option<Waypoint>,
    /// The workload terminates HBONE itself (a waypoint): ztunnel neither listens nor captures
    /// for it, and its own traffic never goes through a waypoint.
    pub native_tunnel: bool,
}

impl Workload {
    /// The SPIFFE identity this workload's certificate carries.
    pub fn identity(&self) -> Identity {
        Identity::new(&self.trust_domain, &self.namespace, &self.service_account)
    }
}

/// A service as ztunnel knows it.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Service {
    pub name: String,
    pub namespace: String,
    pub hostname: String,
    pub vips: Vec<IpAddr>,
    pub ports: Vec<PortMapping>,
    pub subject_alt_names: Vec<String>,
    /// Traffic to the service's VIPs goes through this waypoint.
    pub waypoint: Option<Waypoint>,
}

impl Service {
    /// The resource name (`<namespace>/<hostname>`), also the key in `Workload::services`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.hostname)
    }
}

#[derive(Default)]
struct Inner {
    workloads: HashMap<String, Arc<Workload>>,
    by_ip: HashMap<IpAddr, String>,
    services: HashMap<String, Arc<Service>>,
    by_vip: HashMap<IpAddr, String>,
    by_host: HashMap<String, String>,
    /// Service key -> uids of workloads selected by it.
    endpoints: HashMap<String, BTreeSet<String>>,
    round_robin: HashMap<String, Arc<AtomicUsize>>,
    policies: HashMap<String, Arc<Policy>>,
}

/// Shared, indexed mesh state with a change counter for watchers.
pub struct State {
    inner: RwLock<Inner>,
    changes: watch::Sender<u64>,
}

/// Serializable snapshot for `/config_dump`.
#[derive(Serialize)]
pub struct Dump {
    pub workloads: Vec<Arc<Workload>>,
    pub services: Vec<Arc<Service>>,
    pub policies: Vec<Arc<Policy>>,
}

impl Default for State {
    fn default() -> Self {
        State {
            inner: RwLock::new(Inner::default()),
            changes: watch::channel(0).0,
        }
    }
}

fn ip_from_bytes(b: &[u8]) -> Option<IpAddr> {
    match b.len() {
        4 => Some(IpAddr::from(<[u8; 4]>::try_from(b).ok()?)),
        16 => Some(IpAddr::from(<[u8; 16]>::try_from(b).ok()?)),
        _ => None,
    }
}

fn app_protocol(p: i32) -> String {
    pb::AppProtocol::try_from(p)
        .map(|p| p.as_str_name().to_string())
        .unwrap_or_else(|_| "UNKNOWN".into())
}

fn port(
    name: &str,
    service_port: u32,
    target_port: u32,
    proto: i32,
) -> Result<PortMapping, StateError> {
    let conv = |p: u32| {
        u16::try_from(p).map_err(|_| StateError::Invalid {
            name: name.into(),
            reason: format!("port {p} out of range"),
        })
    };
    Ok(PortMapping {
        service_port: conv(service_port)?,
        target_port: conv(target_port)?,
        app_protocol: app_protocol(proto),
    })
}

/// Converts a pushed Workload, filling Istio's defaults.
pub fn convert_workload(w: pb::Workload) -> Result<Workload, StateError> {
    let name = w.uid.clone();
    if w.uid.is_empty() {
        return Err(StateError::Invalid {
            name: w.name,
            reason: "workload has no uid".into(),
        });
    }
    let workload_ips = w
        .addresses
        .iter()
        .map(|a| {
            ip_from_bytes(a).ok_or_else(|| StateError::Invalid {
                name: name.clone(),
                reason: format!("address of {} bytes", a.len()),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut services = BTreeMap::new();
    for (svc, list) in w.services {
        let ports = list
            .ports
            .iter()
            .map(|p| port(&name, p.service_port, p.target_port, p.app_protocol))
            .collect::<Result<Vec<_>, _>>()?;
        services.insert(svc, ports);
    }
    let waypoint = convert_waypoint(&name, w.waypoint)?;
    let workload_type = pb::WorkloadType::try_from(w.workload_type)
        .map(|t| t.as_str_name().to_lowercase())
        .unwrap_or_else(|_| "pod".into());
    Ok(Workload {
        protocol: if w.tunnel_protocol == pb::TunnelProtocol::Hbone as i32 {
            Protocol::Hbone
        } else {
            Protocol::Tcp
        },
        trust_domain: if w.trust_domain.is_empty() {
            "cluster.local".into()
        } else {
            w.trust_domain
        },
        service_account: if w.service_account.is_empty() {
            "default".into()
        } else {
            w.service_account
        },
        healthy: w.status == pb::WorkloadStatus::Healthy as i32,
        workload_name: if w.workload_name.is_empty() {
            w.name.clone()
        } else {
            w.workload_name
        },
        canonical_name: if w.canonical_name.is_empty() {
            w.name.clone()
        } else {
            w.canonical_name
        },
        canonical_revision: if w.canonical_revision.is_empty() {
            "latest".into()
        } else {
            w.canonical_revision
        },
        uid: w.uid,
        name: w.name,
        namespace: w.namespace,
        workload_ips,
        node: w.node,
        workload_type,
        cluster_id: w.cluster_id,
        services,
        authorization_policies: w.authorization_policies,
        waypoint,
        native_tunnel: w.native_tunnel,
    })
}

/// Converts a pushed Service.
pub fn convert_service(s: pb::Service) -> Result<Service, StateError> {
    let name = format!("{}/{}", s.namespace, s.hostname);
    if s.hostname.is_empty() {
        return Err(StateError::Invalid {
            name,
            reason: "service has no hostname".into(),
        });
    }
    let vips = s
        .addresses
        .iter()
        .map(|a| {
            ip_from_bytes(&a.address).ok_or_else(|| StateError::Invalid {
                name: name.clone(),
                reason: format!("VIP of {} bytes", a.address.len()),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let ports = s
        .ports
        .iter()
        .map(|p| port(&name, p.service_port, p.target_port, p.app_protocol))
        .collect::<Result<Vec<_>, _>>()?;
    let waypoint = convert_waypoint(&name, s.waypoint)?;
    Ok(Service {
        waypoint,
        name: s.name,
        namespace: s.namespace,
        hostname: s.hostname,
        vips,
        ports,
        subject_alt_names: s.subject_alt_names,
    })
}

/// A converted Address resource.
pub enum Address {
    Workload(Workload),
    Service(Service),
}

/// Converts a pushed `istio.workload.Address`.
pub fn convert_address(name: &str, a: pb::Address) -> Result<Address, StateError> {
    match a.r#type {
        Some(pb::address::Type::Workload(w)) => convert_workload(w).map(Address::Workload),
        Some(pb::address::Type::Service(s)) => convert_service(s).map(Address::Service),
        None => Err(StateError::Invalid {
            name: name.into(),
            reason: "Address has neither workload nor service".into(),
        }),
    }
}

impl Inner {
    fn remove_workload(&mut self, uid: &str) -> bool {
        let Some(old) = self.workloads.remove(uid) else {
            return false;
        };
        for ip in &old.workload_ips {
            if self.by_ip.get(ip).map(|u| u == uid).unwrap_or(false) {
                self.by_ip.remove(ip);
            }
        }
        for svc in old.services.keys() {
            if let Some(set) = self.endpoints.get_mut(svc) {
                set.remove(uid);
            }
        }
        true
    }

    fn remove_service(&mut self, key: &str) -> bool {
        let Some(old) = self.services.remove(key) else {
            return false;
        };
        for vip in &old.vips {
            if self.by_vip.get(vip).map(|k| k == key).unwrap_or(false) {
                self.by_vip.remove(vip);
            }
        }
        if self
            .by_host
            .get(&old.hostname)
            .map(|k| k == key)
            .unwrap_or(false)
        {
            self.by_host.remove(&old.hostname);
        }
        true
    }
}

impl State {
    /// Inserts or replaces a workload or service.
    pub fn upsert(&self, addr: Address) {
        {
            let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
            match addr {
                Address::Workload(w) => {
                    inner.remove_workload(&w.uid);
                    for ip in &w.workload_ips {
                        inner.by_ip.insert(*ip, w.uid.clone());
                    }
                    for svc in w.services.keys() {
                        inner
                            .endpoints
                            .entry(svc.clone())
                            .or_default()
                            .insert(w.uid.clone());
                    }
                    inner.workloads.insert(w.uid.clone(), Arc::new(w));
                }
                Address::Service(s) => {
                    let key = s.key();
                    inner.remove_service(&key);
                    for vip in &s.vips {
                        inner.by_vip.insert(*vip, key.clone());
                    }
                    inner.by_host.insert(s.hostname.clone(), key.clone());
                    inner.round_robin.entry(key.clone()).or_default();
                    inner.services.insert(key, Arc::new(s));
                }
            }
        }
        self.changes.send_modify(|v| *v += 1);
    }

    /// Removes an Address resource by name (workload uid or `ns/hostname`).
    pub fn remove_address(&self, name: &str) -> bool {
        let removed = {
            let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
            let removed = inner.remove_workload(name) || inner.remove_service(name);
            if removed && !inner.services.contains_key(name) {
                inner.round_robin.remove(name);
            }
            removed
        };
        if removed {
            self.changes.send_modify(|v| *v += 1);
        }
        removed
    }

    /// Inserts or replaces a policy (converted with [`mesh_policy::Policy::from_proto`]).
    pub fn upsert_policy(&self, name: &str, p: Policy) {
        self.inner
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .policies
            .insert(name.into(), Arc::new(p));
        self.changes.send_modify(|v| *v += 1);
    }

    /// Removes a policy by name.
    pub fn remove_policy(&self, name: &str) -> bool {
        let removed = self
            .inner
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .policies
            .remove(name)
            .is_some();
        if removed {
            self.changes.send_modify(|v| *v += 1);
        }
        removed
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The workload owning `ip`.
    pub fn workload_by_ip(&self, ip: IpAddr) -> Option<Arc<Workload>> {
        let inner = self.read();
        inner
            .by_ip
            .get(&ip)
            .and_then(|uid| inner.workloads.get(uid))
            .cloned()
    }

    /// The workload of pod `name` in `namespace` (in-pod enrollment knows pods by name; a
    /// scan is fine at one lookup per CNI request or state change per node-local pod).
    pub fn workload_by_name(&self, namespace: &str, name: &str) -> Option<Arc<Workload>> {
        self.read()
            .workloads
            .values()
            .find(|w| w.namespace == namespace && w.name == name)
            .cloned()
    }

    /// The service whose VIP is `ip`.
    pub fn service_by_vip(&self, ip: IpAddr) -> Option<Arc<Service>> {
        let inner = self.read();
        inner
            .by_vip
            .get(&ip)
            .and_then(|k| inner.services.get(k))
            .cloned()
    }

    /// A service by DNS name: the full hostname, or `<svc>.<ns>` / `<svc>.<ns>.svc`.
    pub fn service_by_host(&self, host: &str) -> Option<Arc<Service>> {
        let host = host.trim_end_matches('.');
        let inner = self.read();
        let lookup = |h: &str| {
            inner
                .by_host
                .get(h)
                .and_then(|k| inner.services.get(k))
                .cloned()
        };
        lookup(host).or_else(|| {
            let dots = host.matches('.').count();
            match dots {
                1 => lookup(&format!("{host}.svc.cluster.local")),
                2 if host.ends_with(".svc") => lookup(&format!("{host}.cluster.local")),
                _ => None,
            }
        })
    }

    /// Picks a healthy endpoint of `svc` serving `port`, round robin; returns it and its target port.
    pub fn pick_endpoint(&self, svc: &Service, port: u16) -> Option<(Arc<Workload>, u16)> {
        let key = svc.key();
        let inner = self.read();
        let uids = inner.endpoints.get(&key)?;
        let candidates: Vec<(Arc<Workload>, u16)> = uids
            .iter()
            .filter_map(|uid| inner.workloads.get(uid))
            .filter(|w| w.healthy && !w.workload_ips.is_empty())
            .filter_map(|w| {
                let ports = w.services.get(&key)?;
                // A workload may list the port mapping; fall back to the service's own mapping.
                let target = ports
                    .iter()
                    .find(|p| p.service_port == port)
                    .map(|p| p.target_port)
                    .or_else(|| {
                        svc.ports
                            .iter()
                            .find(|p| p.service_port == port)
                            .map(|p| p.target_port)
                    })?;
                Some((w.clone(), if target == 0 { port } else { target }))
            })
            .collect();
        if candidates.is_empty() {
            return None;
        }
        let n = inner
            .round_robin
            .get(&key)
            .map(|c| c.fetch_add(1, Ordering::Relaxed))
            .unwrap_or(0);
        candidates.get(n % candidates.len()).cloned()
    }

    /// The enforced policies that apply to `w` as a destination.
    pub fn policies_for(&self, w: &Workload) -> Vec<Arc<Policy>> {
        let inner = self.read();
        inner
            .policies
            .values()
            .filter(|p| mesh_policy::applies_to(p, &w.namespace, &w.authorization_policies))
            .cloned()
            .collect()
    }

    /// Workloads scheduled on `node`.
    pub fn workloads_on_node(&self, node: &str) -> Vec<Arc<Workload>> {
        let mut v: Vec<_> = self
            .read()
            .workloads
            .values()
            .filter(|w| w.node == node)
            .cloned()
            .collect();
        v.sort_by(|a, b| a.uid.cmp(&b.uid));
        v
    }

    /// The change counter (increases with every applied change).
    pub fn version(&self) -> u64 {
        *self.changes.borrow()
    }

    /// Notifies on every change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Everything, sorted, for `/config_dump`.
    pub fn dump(&self) -> Dump {
        let inner = self.read();
        let mut workloads: Vec<_> = inner.workloads.values().cloned().collect();
        workloads.sort_by(|a, b| a.uid.cmp(&b.uid));
        let mut services: Vec<_> = inner.services.values().cloned().collect();
        services.sort_by_key(|s| s.key());
        let mut policies: Vec<_> = inner.policies.values().cloned().collect();
        policies.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        Dump {
            workloads,
            services,
            policies,
        }
    }
}

#[cfg(test)]
mod tests;

//! `meshctl describe pod|service NAME -n NS`: what the mesh does with one pod or service and
//! why — which node agent captures it, its identity, its waypoint, the policies and routes
//! that apply — from the ztunnels' `/config_dump` and istiod-lite's `/debug/config`.

use std::io::Write;

use serde_json::Value;

use crate::cli::{DescribeArgs, DescribeKind};
use crate::cmd::{fetch_ok, Ctx, Target};
use crate::config;
use crate::dump::{waypoint_name, ConfigDump, Service, Workload};
use crate::error::Error;

const ZTUNNEL_HINT: &str =
    "pass --ztunnel ADMIN (its ADMIN_ADDR) or set MESHCTL_ZTUNNELS, or --local CLUSTER";

/// Every ztunnel's dump (label, dump), and istiod-lite's config snapshot when reachable.
struct View {
    dumps: Vec<(String, ConfigDump)>,
    istiod: Result<Value, String>,
}

impl View {
    fn fetch(a: &DescribeArgs, ctx: &Ctx<'_>) -> Result<View, Error> {
        let addressed = !a.ztunnels.is_empty() || a.istiod.is_some();
        let mut dumps = Vec::new();
        let istiod;
        if let Some(cluster) = a.cluster.resolve(addressed, ctx.env)? {
            let (name, dir) = (&cluster.name, &cluster.dir);
            for (node, resp) in crate::cmd::local::waypoint::ztunnel_dumps(name, dir, ctx.timeout)?
            {
                dumps.push((
                    node,
                    ConfigDump::parse(&resp.body).map_err(|e| Error::Usage(e.to_string()))?,
                ));
            }
            istiod =
                crate::cmd::local::waypoint::istiod_get(name, dir, "/debug/config", ctx.timeout)
                    .map_err(|e| e.to_string())
                    .and_then(|r| serde_json::from_slice(&r.body).map_err(|e| e.to_string()));
        } else {
            for z in config::ztunnels(&a.ztunnels, ctx.env)? {
                let t = Target {
                    what: "ztunnel admin",
                    addr: &z.admin,
                    hint: ZTUNNEL_HINT,
                };
                let resp = fetch_ok(t, "/config_dump", ctx.timeout)?;
                let dump =
                    ConfigDump::parse(&resp.body).map_err(|e| Error::Usage(e.to_string()))?;
                let label = dump
                    .node_name()
                    .map(String::from)
                    .unwrap_or_else(|| z.admin.clone());
                dumps.push((label, dump));
            }
            let addr = config::istiod(a.istiod.as_deref(), ctx.env)?;
            istiod = crate::http::get(&addr, "/debug/config", ctx.timeout)
                .map_err(|e| format!("istiod-lite at {addr}: {e}"))
                .and_then(|r| serde_json::from_slice(&r.body).map_err(|e| e.to_string()));
        }
        if dumps.is_empty() {
            return Err(Error::Usage(format!("no ztunnel to ask: {ZTUNNEL_HINT}")));
        }
        Ok(View { dumps, istiod })
    }

    /// Any dump has the whole mesh's workloads and services; the first one answers those.
    fn mesh(&self) -> &ConfigDump {
        &self.dumps[0].1
    }

    /// The dump of the ztunnel on `node`.
    fn on_node(&self, node: &str) -> Option<&ConfigDump> {
        self.dumps
            .iter()
            .find(|(_, d)| d.node_name() == Some(node))
            .map(|(_, d)| d)
    }

    /// istiod-lite objects of `kind` (a `/debug/config` map such as `http_routes`).
    fn objects(&self, kind: &str) -> Vec<&Value> {
        match &self.istiod {
            Ok(v) => v[kind]
                .as_object()
                .map(|m| m.values().collect())
                .unwrap_or_default(),
            Err(_) => Vec::new(),
        }
    }
}

/// `Name:` and the value in a column; an empty name continues the field above (no colon).
fn field(out: &mut dyn Write, name: &str, value: impl AsRef<str>) -> std::io::Result<()> {
    let label = if name.is_empty() {
        String::new()
    } else {
        format!("{name}:")
    };
    writeln!(out, "{label:<18}{}", value.as_ref())
}

/// Runs `describe`.
pub fn run(a: &DescribeArgs, ctx: &Ctx<'_>, out: &mut dyn Write) -> Result<(), Error> {
    let view = View::fetch(a, ctx)?;
    match a.kind {
        DescribeKind::Pod => pod(&view, &a.namespace, &a.name, out),
        DescribeKind::Service => service(&view, &a.namespace, &a.name, out),
    }
}

fn identity(w: &Workload) -> String {
    let td = if w.trust_domain.is_empty() {
        "cluster.local"
    } else {
        &w.trust_domain
    };
    let sa = if w.service_account.is_empty() {
        "default"
    } else {
        &w.service_account
    };
    format!("spiffe://{td}/ns/{}/sa/{sa}", w.namespace)
}

fn pod(view: &View, ns: &str, name: &str, out: &mut dyn Write) -> Result<(), Error> {
    let mesh = view.mesh();
    let w = mesh
        .workloads
        .iter()
        .find(|w| w.namespace == ns && w.name == name)
        .ok_or_else(|| {
            Error::Usage(format!(
                "pod {ns}/{name} is not known to the mesh (no workload in the ztunnels' state)"
            ))
        })?;
    field(out, "Pod", format!("{ns}/{name}"))?;
    field(out, "Node", if w.node.is_empty() { "-" } else { &w.node })?;
    field(
        out,
        "Addresses",
        if w.workload_ips.is_empty() {
            "- (no IP yet)".into()
        } else {
            w.workload_ips.join(", ")
        },
    )?;
    field(out, "Identity", identity(w))?;
    let captured = if w.native_tunnel {
        "no: a waypoint (terminates HBONE itself)".to_string()
    } else if w.protocol == "HBONE" {
        let enrolled = view.on_node(&w.node).and_then(|d| {
            d.raw["inpodPods"]
                .as_array()?
                .iter()
                .find(|p| p["namespace"] == ns && p["name"] == name)
                .map(|p| p["enrolled"] == true)
        });
        match enrolled {
            Some(true) => format!("yes: in-pod, by the ztunnel of {} (15001/15006/15008/15053 in its netns), mTLS over HBONE", w.node),
            Some(false) => format!("not yet: the ztunnel of {} knows the pod but has not enrolled it", w.node),
            None => format!("yes: HBONE (istio.io/dataplane-mode=ambient), served by the ztunnel of {}", w.node),
        }
    } else {
        "no: not in the mesh (namespace not labelled istio.io/dataplane-mode=ambient, or the pod opted out with none)".to_string()
    };
    field(out, "Captured", captured)?;
    field(out, "Healthy", if w.is_healthy() { "yes" } else { "no" })?;
    let svcs: Vec<&Service> = mesh
        .services
        .iter()
        .filter(|s| w.services.contains_key(&s.key()))
        .collect();
    field(
        out,
        "Services",
        if svcs.is_empty() {
            "-".into()
        } else {
            svcs.iter()
                .map(|s| match s.vip() {
                    vip if vip.is_empty() => s.hostname.clone(),
                    vip => format!("{} ({vip})", s.hostname),
                })
                .collect::<Vec<_>>()
                .join(", ")
        },
    )?;
    let pod_wp = waypoint_name(w.waypoint.as_ref(), &mesh.services);
    field(
        out,
        "Waypoint",
        if pod_wp == "None" {
            "none for traffic addressed to the pod's IP".to_string()
        } else {
            format!("{pod_wp} (traffic to the pod's IP)")
        },
    )?;
    for s in &svcs {
        let wp = waypoint_name(s.waypoint.as_ref(), &mesh.services);
        if wp != "None" {
            field(out, "", format!("{wp} (traffic to {})", s.hostname))?;
        }
    }
    policies(mesh, &w.authorization_policies, out)?;
    Ok(())
}

fn policies(mesh: &ConfigDump, names: &[String], out: &mut dyn Write) -> Result<(), Error> {
    if names.is_empty() {
        field(
            out,
            "Policies (L4)",
            "none: every caller allowed (unless PeerAuthentication STRICT refuses plaintext)",
        )?;
        return Ok(());
    }
    for (i, n) in names.iter().enumerate() {
        let p = mesh
            .policies
            .iter()
            .find(|p| format!("{}/{}", p.namespace, p.name) == *n);
        let what = match p {
            Some(p) => format!("{n} ({}, scope {})", p.action, p.scope),
            None => n.clone(),
        };
        field(out, if i == 0 { "Policies (L4)" } else { "" }, what)?;
    }
    Ok(())
}

fn service(view: &View, ns: &str, name: &str, out: &mut dyn Write) -> Result<(), Error> {
    let mesh = view.mesh();
    let s = mesh
        .services
        .iter()
        .find(|s| s.namespace == ns && s.name == name)
        .ok_or_else(|| Error::Usage(format!("service {ns}/{name} is not known to the mesh")))?;
    field(out, "Service", &s.hostname)?;
    field(
        out,
        "VIPs",
        if s.vips.is_empty() {
            "- (headless or waypoint Service)".into()
        } else {
            s.vips.join(", ")
        },
    )?;
    let ports: Vec<String> = s
        .raw_ports()
        .iter()
        .map(|(p, t, proto)| format!("{p} -> {t} ({proto})"))
        .collect();
    field(
        out,
        "Ports",
        if ports.is_empty() {
            "-".into()
        } else {
            ports.join(", ")
        },
    )?;
    let key = s.key();
    let eps: Vec<&Workload> = mesh
        .workloads
        .iter()
        .filter(|w| w.services.contains_key(&key))
        .collect();
    if eps.is_empty() {
        field(out, "Endpoints", "none")?;
    }
    for (i, w) in eps.iter().enumerate() {
        field(
            out,
            if i == 0 { "Endpoints" } else { "" },
            format!(
                "{} {} on {} ({}, {})",
                w.name,
                w.address(),
                w.node,
                if w.protocol == "HBONE" {
                    "mesh"
                } else {
                    "plaintext"
                },
                if w.is_healthy() {
                    "healthy"
                } else {
                    "unhealthy"
                }
            ),
        )?;
    }
    let wp = waypoint_name(s.waypoint.as_ref(), &mesh.services);
    field(
        out,
        "Waypoint",
        if wp == "None" {
            "none: clients' ztunnels pick an endpoint and tunnel to it directly".into()
        } else {
            format!("{wp}: traffic to the VIP goes through it (HBONE to a waypoint pod, authority = VIP:port)")
        },
    )?;
    // Routes attached to the service (Gateway API parentRefs; VirtualService hosts).
    let mut routes = Vec::new();
    for (kind, label) in [("http_routes", "HTTPRoute"), ("grpc_routes", "GRPCRoute")] {
        for r in view.objects(kind) {
            let attached = r["spec"]["parentRefs"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|p| {
                    p["kind"] == "Service"
                        && p["name"] == name
                        && (p["namespace"].is_null() || p["namespace"] == ns)
                        && r["metadata"]["namespace"].as_str().unwrap_or("default") == ns
                });
            if attached {
                let rules = match r["spec"]["rules"].as_array().map_or(0, Vec::len) {
                    1 => "1 rule".to_string(),
                    n => format!("{n} rules"),
                };
                routes.push(format!(
                    "{label} {}/{} ({rules})",
                    r["metadata"]["namespace"].as_str().unwrap_or("default"),
                    r["metadata"]["name"].as_str().unwrap_or_default()
                ));
            }
        }
    }
    for vs in view.objects("virtual_services") {
        let hosts: Vec<&str> = vs["spec"]["hosts"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        if hosts
            .iter()
            .any(|h| *h == name || *h == s.hostname || *h == format!("{name}.{ns}"))
        {
            routes.push(format!(
                "VirtualService {}/{}",
                vs["metadata"]["namespace"].as_str().unwrap_or("default"),
                vs["metadata"]["name"].as_str().unwrap_or_default()
            ));
        }
    }
    match (&view.istiod, routes.is_empty()) {
        (Err(e), _) => field(out, "Routes", format!("unknown: {e} (pass --istiod ADDR)"))?,
        (Ok(_), true) => field(
            out,
            "Routes",
            "none (requests go to the service's endpoints as they are)",
        )?,
        (Ok(_), false) => {
            for (i, r) in routes.iter().enumerate() {
                field(out, if i == 0 { "Routes" } else { "" }, r)?;
            }
            if wp == "None" {
                field(
                    out,
                    "",
                    "note: routes only apply through a waypoint; this service has none",
                )?;
            }
        }
    }
    Ok(())
}

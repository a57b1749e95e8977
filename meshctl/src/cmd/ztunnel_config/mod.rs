//! `meshctl ztunnel-config workloads|services|policies|certificates|connections|all`:
//! istioctl's tables over a ztunnel's admin `/config_dump`; `-o json|yaml` prints the dump's
//! own entries. With `--local`, the agents of a `meshctl local` cluster ([`local`]).

pub mod local;

use std::io::Write;

use serde_json::Value;
use time::OffsetDateTime;

use super::{Ctx, Endpoint};
use crate::cli::{Section, ZtunnelConfigArgs};
use crate::config;
use crate::dump::{cert_rows, format_time, title_case, waypoint_name, ConfigDump};
use crate::error::Error;
use crate::output::{self, Format, Table};

const HINT: &str = "is ztunnel running? Give its ADMIN_ADDR with --admin or MESHCTL_ZTUNNELS \
                    (the admin port listens on localhost only)";

/// What to leave out.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Only this namespace.
    pub namespace: Option<String>,
    /// Only workloads on this node.
    pub node: Option<String>,
}

impl Filter {
    fn namespace_ok(&self, ns: &str) -> bool {
        self.namespace.as_deref().is_none_or(|n| n == ns)
    }
}

/// Fetches and parses a ztunnel's `/config_dump` (on this host, or inside a local cluster's
/// node namespace).
pub fn fetch_dump(admin: &Endpoint, ctx: &Ctx<'_>) -> Result<ConfigDump, Error> {
    let resp = admin.fetch_ok("ztunnel admin", HINT, "/config_dump", ctx.timeout)?;
    ConfigDump::parse(&resp.body).map_err(|e| Error::BadResponse {
        what: "ztunnel admin".into(),
        addr: admin.to_string(),
        path: "/config_dump".into(),
        why: format!("a body that is not a config dump: {e}"),
        hint: HINT.into(),
    })
}

/// Runs the command: one agent by its admin address, or a local cluster's agents.
pub fn run(args: &ZtunnelConfigArgs, ctx: &Ctx<'_>, out: &mut dyn Write) -> Result<(), Error> {
    // --admin names one agent explicitly, so it wins over MESHCTL_LOCAL (clap refuses it
    // together with --local).
    let dump = match args.cluster.resolve(args.admin.is_some(), ctx.env)? {
        Some(cluster) => local::dump(&cluster.name, &cluster.dir, args.node.as_deref(), ctx)?,
        None => {
            let admin = match &args.admin {
                Some(a) => config::normalize_addr(a, "--admin")?,
                None => config::ztunnels(&[], ctx.env)?
                    .first()
                    .map(|z| z.admin.clone())
                    .unwrap_or_else(|| config::DEFAULT_ADMIN.to_string()),
            };
            fetch_dump(&Endpoint::host(admin), ctx)?
        }
    };
    let filter = Filter {
        namespace: args.namespace.clone(),
        node: args.node.clone(),
    };
    render(&dump, args.section, &filter, args.output, ctx.now, out)
}

/// Writes `section` of `dump` in `format`.
pub fn render(
    dump: &ConfigDump,
    section: Section,
    filter: &Filter,
    format: Format,
    now: OffsetDateTime,
    out: &mut dyn Write,
) -> Result<(), Error> {
    if matches!(format, Format::Json | Format::Yaml) {
        return output::write_data(out, format, &data(dump, section, filter));
    }
    let text = match section {
        Section::Workloads => workloads(dump, filter).render(),
        Section::Services => services(dump, filter).render(),
        Section::Policies => policies(dump, filter).render(),
        Section::Certificates => certificates(dump, now).render(),
        Section::Connections => connections(dump).render(),
        Section::All => [
            workloads(dump, filter),
            services(dump, filter),
            policies(dump, filter),
            certificates(dump, now),
            connections(dump),
        ]
        .iter()
        .map(Table::render)
        .collect::<Vec<_>>()
        .join("\n"),
    };
    out.write_all(text.as_bytes())?;
    Ok(())
}

/// Indices of the workloads shown, in table order (namespace.name, then node).
fn workload_order(dump: &ConfigDump, f: &Filter) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..dump.workloads.len())
        .filter(|&i| {
            let w = &dump.workloads[i];
            f.namespace_ok(&w.namespace) && f.node.as_deref().is_none_or(|n| n == w.node)
        })
        .collect();
    idx.sort_by(|&a, &b| {
        let (a, b) = (&dump.workloads[a], &dump.workloads[b]);
        (&a.namespace, &a.name, &a.node).cmp(&(&b.namespace, &b.name, &b.node))
    });
    idx
}

fn service_order(dump: &ConfigDump, f: &Filter) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..dump.services.len())
        .filter(|&i| f.namespace_ok(&dump.services[i].namespace))
        .collect();
    idx.sort_by(|&a, &b| {
        let (a, b) = (&dump.services[a], &dump.services[b]);
        (&a.namespace, &a.name, &a.hostname).cmp(&(&b.namespace, &b.name, &b.hostname))
    });
    idx
}

fn policy_order(dump: &ConfigDump, f: &Filter) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..dump.policies.len())
        .filter(|&i| f.namespace_ok(&dump.policies[i].namespace))
        .collect();
    idx.sort_by(|&a, &b| {
        let (a, b) = (&dump.policies[a], &dump.policies[b]);
        (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name))
    });
    idx
}

/// NAMESPACE POD NAME ADDRESS NODE WAYPOINT PROTOCOL.
pub fn workloads(dump: &ConfigDump, f: &Filter) -> Table {
    let mut t = Table::new(&[
        "NAMESPACE",
        "POD NAME",
        "ADDRESS",
        "NODE",
        "WAYPOINT",
        "PROTOCOL",
    ]);
    for i in workload_order(dump, f) {
        let w = &dump.workloads[i];
        t.row(vec![
            w.namespace.clone(),
            w.name.clone(),
            w.address().to_string(),
            w.node.clone(),
            waypoint_name(w.waypoint.as_ref(), &dump.services),
            w.protocol.clone(),
        ]);
    }
    t
}

/// NAMESPACE SERVICE NAME SERVICE VIP WAYPOINT ENDPOINTS.
pub fn services(dump: &ConfigDump, f: &Filter) -> Table {
    let mut t = Table::new(&[
        "NAMESPACE",
        "SERVICE NAME",
        "SERVICE VIP",
        "WAYPOINT",
        "ENDPOINTS",
    ]);
    for i in service_order(dump, f) {
        let s = &dump.services[i];
        let (healthy, total) = s.endpoints(&dump.workloads);
        // A Service without a VIP is headless: Kubernetes spells that clusterIP None, and an
        // empty cell would shift the columns for anyone splitting on whitespace.
        let vip = Some(s.vip()).filter(|v| !v.is_empty());
        t.row(vec![
            s.namespace.clone(),
            s.name.clone(),
            vip.unwrap_or_else(|| "None".into()),
            waypoint_name(s.waypoint.as_ref(), &dump.services),
            format!("{healthy}/{total}"),
        ]);
    }
    t
}

/// NAMESPACE POLICY NAME ACTION SCOPE.
pub fn policies(dump: &ConfigDump, f: &Filter) -> Table {
    let mut t = Table::new(&["NAMESPACE", "POLICY NAME", "ACTION", "SCOPE"]);
    for i in policy_order(dump, f) {
        let p = &dump.policies[i];
        t.row(vec![
            p.namespace.clone(),
            p.name.clone(),
            title_case(&p.action),
            title_case(&p.scope),
        ]);
    }
    t
}

/// DIRECTION SOURCE DESTINATION SOURCE IDENTITY DESTINATION IDENTITY PROTOCOL STARTED.
pub fn connections(dump: &ConfigDump) -> Table {
    let mut t = Table::new(&[
        "DIRECTION",
        "SOURCE",
        "DESTINATION",
        "SOURCE IDENTITY",
        "DESTINATION IDENTITY",
        "PROTOCOL",
        "STARTED",
    ]);
    let id = |i: &Option<String>| {
        i.clone()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "-".into())
    };
    for c in &dump.connections {
        t.row(vec![
            c.direction.clone(),
            c.src.clone(),
            c.dst.clone(),
            id(&c.src_identity),
            id(&c.dst_identity),
            if c.mutual_tls { "HBONE" } else { "TCP" }.to_string(),
            c.started.clone(),
        ]);
    }
    t
}

/// CERTIFICATE NAME TYPE STATUS VALID CERT SERIAL NUMBER NOT AFTER NOT BEFORE.
pub fn certificates(dump: &ConfigDump, now: OffsetDateTime) -> Table {
    let mut t = Table::new(&[
        "CERTIFICATE NAME",
        "TYPE",
        "STATUS",
        "VALID CERT",
        "SERIAL NUMBER",
        "NOT AFTER",
        "NOT BEFORE",
    ]);
    for r in cert_rows(&dump.certificates) {
        t.row(vec![
            r.identity.clone(),
            r.kind.to_string(),
            r.state.clone(),
            r.valid_at(now).to_string(),
            r.serial.clone().unwrap_or_else(|| "NA".into()),
            format_time(r.not_after),
            format_time(r.not_before),
        ]);
    }
    t
}

fn raw_elements(raw: &Value, key: &str) -> Vec<Value> {
    match raw.get(key) {
        Some(Value::Array(a)) => a.clone(),
        Some(Value::Object(m)) => m.values().cloned().collect(),
        _ => Vec::new(),
    }
}

fn pick(raw: &[Value], order: &[usize]) -> Value {
    Value::Array(order.iter().filter_map(|&i| raw.get(i).cloned()).collect())
}

/// The dump's own entries of `section`, filtered and in table order.
pub fn data(dump: &ConfigDump, section: Section, f: &Filter) -> Value {
    let workloads = || {
        pick(
            &raw_elements(&dump.raw, "workloads"),
            &workload_order(dump, f),
        )
    };
    let services = || {
        pick(
            &raw_elements(&dump.raw, "services"),
            &service_order(dump, f),
        )
    };
    let policies = || pick(&raw_elements(&dump.raw, "policies"), &policy_order(dump, f));
    let certificates = || Value::Array(raw_elements(&dump.raw, "certificates"));
    let connections = || Value::Array(raw_elements(&dump.raw, "connections"));
    match section {
        Section::Workloads => workloads(),
        Section::Services => services(),
        Section::Policies => policies(),
        Section::Certificates => certificates(),
        Section::Connections => connections(),
        Section::All => {
            let mut all = dump.raw.clone();
            if let Some(o) = all.as_object_mut() {
                o.insert("workloads".into(), workloads());
                o.insert("services".into(), services());
                o.insert("policies".into(), policies());
                o.insert("certificates".into(), certificates());
                o.insert("connections".into(), connections());
            }
            all
        }
    }
}

#[cfg(test)]
mod tests;

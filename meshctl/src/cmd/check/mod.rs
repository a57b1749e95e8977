//! `meshctl check`: `linkerd check`-style lines, ✓ passed, ‼ warning, ✗ failed, each failure or
//! warning with a hint. Exit code 0 only when nothing failed.

pub mod host;

use std::io::Write;

use serde::Serialize;
use serde_json::Value;
use time::OffsetDateTime;

use super::{ztunnel_config::fetch_dump, Ctx, Endpoint};
use crate::cli::{CheckArgs, LocalCluster};
use crate::cmd::local::waypoint as local;
use crate::config::{self, Ztunnel};
use crate::dump::{cert_rows, format_time, ConfigDump};
use crate::error::Error;
use crate::output::{self, Format, Style};

/// A certificate closer than this to expiry fails the check (ztunnel renews at half-life,
/// hours earlier, so this close means renewal is failing).
pub const EXPIRY_MARGIN: time::Duration = time::Duration::hours(1);
/// Clock skew above this is a warning.
pub const SKEW_WARN: time::Duration = time::Duration::seconds(5);
/// Clock skew above this fails: the CA backdates certificates by a minute, so beyond it fresh
/// certificates look not yet valid.
pub const SKEW_FAIL: time::Duration = time::Duration::seconds(60);

/// Outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Status {
    /// Passed (✓).
    #[serde(rename = "ok")]
    Ok,
    /// Worth a look, does not fail the run (‼).
    #[serde(rename = "warning")]
    Warn,
    /// Failed (✗).
    #[serde(rename = "failed")]
    Fail,
}

/// One reported line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Line {
    /// Heading it is printed under.
    pub category: String,
    /// Outcome.
    pub status: Status,
    /// What was found.
    pub message: String,
    /// What to do about it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

impl Line {
    fn new(category: &str, status: Status, message: String, hint: Option<&str>) -> Line {
        Line {
            category: category.to_string(),
            status,
            message,
            hint: hint.map(str::to_string),
        }
    }
}

/// Runs the command.
pub fn run(args: &CheckArgs, ctx: &Ctx<'_>, out: &mut dyn Write) -> Result<(), Error> {
    let addressed = args.istiod.is_some() || !args.ztunnels.is_empty();
    let cluster = args.cluster.resolve(addressed, ctx.env)?;
    // Where the mesh is matters only to the mesh checks (a local cluster needs root to read).
    let mesh = match cluster {
        _ if args.pre => None,
        Some(cluster) => Some(Mesh::local(&cluster)?),
        None => Some(Mesh::addressed(
            &config::istiod(args.istiod.as_deref(), ctx.env)?,
            &config::ztunnels(&args.ztunnels, ctx.env)?,
        )),
    };
    let mut lines = Vec::new();
    if !args.post {
        lines.extend(host::checks(&host::RealHost));
    }
    if let Some(mesh) = &mesh {
        lines.extend(mesh_checks(mesh, ctx));
    }
    report(&lines, args.output, ctx.style, out)
}

/// The mesh to check: where istiod-lite and the agents answer, and what to tell the operator
/// when one does not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mesh {
    /// istiod-lite's monitoring port.
    pub istiod: Endpoint,
    /// Hint when istiod-lite does not answer.
    pub istiod_hint: String,
    /// The agents.
    pub agents: Vec<Agent>,
}

/// One ztunnel to check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Agent {
    /// Heading of its lines.
    pub label: String,
    /// Admin port (`/config_dump`).
    pub admin: Endpoint,
    /// Readiness port (`/healthz/ready`).
    pub readiness: Endpoint,
    /// Hint when it does not answer.
    pub hint: String,
}

impl Mesh {
    /// Components at addresses on this host's network (flags, environment, defaults).
    pub fn addressed(istiod: &str, ztunnels: &[Ztunnel]) -> Mesh {
        Mesh {
            istiod: Endpoint::host(istiod),
            istiod_hint: ISTIOD_HINT.into(),
            agents: ztunnels
                .iter()
                .map(|z| Agent {
                    label: format!("ztunnel {}", z.admin),
                    admin: Endpoint::host(&z.admin),
                    readiness: Endpoint::host(&z.readiness),
                    hint: ZTUNNEL_HINT.into(),
                })
                .collect(),
        }
    }

    /// The istiod-lite and the node agents of a `meshctl local` cluster.
    pub fn local(cluster: &LocalCluster) -> Result<Mesh, Error> {
        Ok(Mesh::of_local(
            cluster,
            &local::components(&cluster.name, &cluster.dir)?,
        ))
    }

    /// [`Mesh::local`] from the cluster's components.
    pub fn of_local(cluster: &LocalCluster, c: &local::Components) -> Mesh {
        let log = |l: &Option<std::path::PathBuf>| {
            l.as_ref()
                .map_or_else(|| "not started yet".into(), |p| p.display().to_string())
        };
        Mesh {
            istiod: c.istiod.clone(),
            istiod_hint: format!(
                "`meshctl local status {}` shows whether istiod-lite runs; its log: {}",
                cluster.flags(),
                log(&c.istiod_log)
            ),
            agents: c
                .ztunnels
                .iter()
                .map(|z| Agent {
                    label: format!("ztunnel {} ({})", z.node, z.admin),
                    admin: z.admin.clone(),
                    readiness: z.readiness.clone(),
                    hint: format!(
                        "see its log: {}; `meshctl local restart-ztunnel {} {}` restarts it",
                        log(&z.log),
                        z.node,
                        cluster.flags()
                    ),
                })
                .collect(),
        }
    }
}

/// Writes the lines (or JSON/YAML) and turns failures into [`Error::CheckFailed`].
pub fn report(
    lines: &[Line],
    format: Format,
    style: Style,
    out: &mut dyn Write,
) -> Result<(), Error> {
    let failed = lines.iter().filter(|l| l.status == Status::Fail).count();
    if matches!(format, Format::Json | Format::Yaml) {
        let warnings = lines.iter().filter(|l| l.status == Status::Warn).count();
        let doc = serde_json::json!({
            "success": failed == 0,
            "summary": {"ok": lines.len() - failed - warnings, "warnings": warnings, "failed": failed},
            "checks": lines,
        });
        output::write_data(out, format, &doc)?;
    } else {
        out.write_all(render(lines, style).as_bytes())?;
    }
    if failed > 0 {
        Err(Error::CheckFailed(failed))
    } else {
        Ok(())
    }
}

/// The check lines, grouped under their categories.
pub fn render(lines: &[Line], style: Style) -> String {
    let mut s = String::new();
    let mut current: Option<&str> = None;
    for l in lines {
        if current != Some(l.category.as_str()) {
            if current.is_some() {
                s.push('\n');
            }
            s.push_str(&style.bold(&l.category));
            s.push('\n');
            s.push_str(&"-".repeat(l.category.chars().count()));
            s.push('\n');
            current = Some(&l.category);
        }
        let mark = match l.status {
            Status::Ok => style.green("✓"),
            Status::Warn => style.yellow("‼"),
            Status::Fail => style.red("✗"),
        };
        s.push_str(&format!("{mark} {}\n", l.message));
        if let Some(h) = &l.hint {
            s.push_str(&format!("    hint: {h}\n"));
        }
    }
    let ok = !lines.iter().any(|l| l.status == Status::Fail);
    let mark = if ok {
        style.green("✓")
    } else {
        style.red("✗")
    };
    s.push_str(&format!("\nStatus check results are {mark}\n"));
    s
}

const ISTIOD_HINT: &str =
    "start istiod-lite, or point --istiod / MESHCTL_ISTIOD at its MONITORING_ADDR";
const ZTUNNEL_HINT: &str = "is ztunnel running? Give ADMIN,READINESS with --ztunnel or \
                            MESHCTL_ZTUNNELS (ADMIN_ADDR and READINESS_ADDR of the agent)";

/// Control plane and agent checks.
pub fn mesh_checks(mesh: &Mesh, ctx: &Ctx<'_>) -> Vec<Line> {
    let (mut lines, clients) = control_plane(&mesh.istiod, &mesh.istiod_hint, ctx);
    for a in &mesh.agents {
        lines.extend(agent(a, &mesh.istiod, clients.as_deref(), ctx));
    }
    lines
}

/// /ready, clock skew and the connected clients; returns the node names connected (None when
/// unknown).
fn control_plane(istiod: &Endpoint, hint: &str, ctx: &Ctx<'_>) -> (Vec<Line>, Option<Vec<String>>) {
    let cat = format!("control plane (istiod-lite at {istiod})");
    let mut lines = Vec::new();
    let ready = match istiod.get("/ready", ctx.timeout) {
        Ok(r) => r,
        Err(e) => {
            let msg = format!("cannot reach istiod-lite at {istiod}: {e}");
            lines.push(Line::new(&cat, Status::Fail, msg, Some(hint)));
            lines.push(Line::new(
                &cat,
                Status::Warn,
                "clock skew not checked: istiod-lite did not answer".into(),
                None,
            ));
            return (lines, None);
        }
    };
    let received = OffsetDateTime::now_utc();
    if ready.status == 200 {
        lines.push(Line::new(
            &cat,
            Status::Ok,
            "istiod-lite is ready".into(),
            None,
        ));
    } else {
        lines.push(Line::new(
            &cat,
            Status::Fail,
            format!("istiod-lite is not ready: {}", ready.summary()),
            Some("it is ready once its config is loaded and its listeners are bound; see its log"),
        ));
    }
    lines.push(clock_skew(&cat, ready.header("date"), received));
    let clients = match istiod
        .fetch_ok("istiod-lite", hint, "/debug/connections", ctx.timeout)
        .map(|r| serde_json::from_slice::<Value>(&r.body))
    {
        Ok(Ok(Value::Array(list))) => {
            let mut names: Vec<String> = list.iter().filter_map(client_name).collect();
            names.sort();
            names.dedup();
            if names.is_empty() {
                lines.push(Line::new(
                    &cat,
                    Status::Warn,
                    "no xDS client is connected".into(),
                    Some("start ztunnel with XDS_ADDRESS pointing at istiod-lite and AUTH_TOKEN from `istiod-lite node-token`"),
                ));
            } else {
                lines.push(Line::new(
                    &cat,
                    Status::Ok,
                    format!(
                        "{} xDS client(s) connected: {}",
                        list.len(),
                        names.join(", ")
                    ),
                    None,
                ));
            }
            Some(names)
        }
        Ok(_) => {
            lines.push(Line::new(
                &cat,
                Status::Warn,
                "cannot list xDS clients: /debug/connections is not a JSON list".into(),
                None,
            ));
            None
        }
        Err(e) => {
            lines.push(Line::new(
                &cat,
                Status::Warn,
                format!("cannot list xDS clients: {}", first_line(&e.to_string())),
                None,
            ));
            None
        }
    };
    (lines, clients)
}

/// What to call a connected xDS client: its node name (a ztunnel's NODE_NAME), else the
/// `<pod>.<namespace>` of its Istio proxy id (`router~<ip>~<pod>.<ns>~<domain>`, a waypoint),
/// else the whole id.
fn client_name(c: &Value) -> Option<String> {
    let field = |k: &str| c.get(k).and_then(Value::as_str).filter(|s| !s.is_empty());
    if let Some(n) = field("node_name") {
        return Some(n.to_string());
    }
    let id = field("node_id")?;
    Some(
        id.split('~')
            .nth(2)
            .filter(|p| !p.is_empty())
            .unwrap_or(id)
            .to_string(),
    )
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s)
}

/// Compares the Date header of istiod-lite's reply with local time at receipt.
pub fn clock_skew(cat: &str, date: Option<&str>, local: OffsetDateTime) -> Line {
    let Some(date) = date else {
        return Line::new(
            cat,
            Status::Warn,
            "clock skew not checked: istiod-lite's reply has no Date header".into(),
            None,
        );
    };
    let Some(remote) = parse_http_date(date) else {
        return Line::new(
            cat,
            Status::Warn,
            format!("clock skew not checked: cannot parse Date {date:?}"),
            None,
        );
    };
    // The header has whole seconds: compare against local time truncated the same way.
    let local = local.replace_nanosecond(0).unwrap_or(local);
    let skew = remote - local;
    let abs = skew.abs();
    let text = if skew.is_negative() {
        format!("istiod-lite's clock is {} behind this host", human(abs))
    } else {
        format!("istiod-lite's clock is {} ahead of this host", human(abs))
    };
    let hint = "sync clocks (chrony, systemd-timesyncd): certificate validity is checked against local time";
    if abs > SKEW_FAIL {
        Line::new(cat, Status::Fail, format!("clock skew: {text}"), Some(hint))
    } else if abs > SKEW_WARN {
        Line::new(cat, Status::Warn, format!("clock skew: {text}"), Some(hint))
    } else {
        Line::new(
            cat,
            Status::Ok,
            format!(
                "clock skew within {}s ({})",
                SKEW_WARN.whole_seconds(),
                human(abs)
            ),
            None,
        )
    }
}

/// Parses an HTTP date (`Mon, 23 Nov 2026 20:46:28 GMT`).
pub fn parse_http_date(s: &str) -> Option<OffsetDateTime> {
    let f = time::macros::format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    time::PrimitiveDateTime::parse(s.trim(), &f)
        .ok()
        .map(|t| t.assume_utc())
}

/// `2d3h`, `5h12m`, `42m`, `17s`.
pub fn human(d: time::Duration) -> String {
    let s = d.whole_seconds().unsigned_abs();
    let (days, hours, mins, secs) = (s / 86400, (s / 3600) % 24, (s / 60) % 60, s % 60);
    if days > 0 {
        format!("{days}d{hours}h")
    } else if hours > 0 {
        format!("{hours}h{mins}m")
    } else if mins > 0 {
        format!("{mins}m")
    } else {
        format!("{secs}s")
    }
}

/// Readiness, control-plane connection and certificates of one agent.
fn agent(a: &Agent, istiod: &Endpoint, clients: Option<&[String]>, ctx: &Ctx<'_>) -> Vec<Line> {
    let cat = a.label.as_str();
    let mut lines = Vec::new();
    let url = format!("{}/healthz/ready", a.readiness.addr);
    match a.readiness.get("/healthz/ready", ctx.timeout) {
        Ok(r) if r.status == 200 => {
            lines.push(Line::new(cat, Status::Ok, format!("agent is ready ({url})"), None))
        }
        Ok(r) => lines.push(Line::new(
            cat,
            Status::Fail,
            format!("agent is not ready ({url}): {}", r.text().trim()),
            Some("readiness waits for xDS config, workload certificates and inbound listeners; the answer names what is pending; see the ztunnel log"),
        )),
        Err(e) => lines.push(Line::new(
            cat,
            Status::Fail,
            format!("cannot reach ztunnel readiness at {}: {e}", a.readiness),
            Some(&a.hint),
        )),
    }
    let dump = match fetch_dump(&a.admin, ctx) {
        Ok(d) => d,
        Err(e) => {
            lines.push(Line::new(
                cat,
                Status::Fail,
                format!("certificates not checked: {}", first_line(&e.to_string())),
                Some(&a.hint),
            ));
            return lines;
        }
    };
    if let (Some(node), Some(clients)) = (dump.node_name(), clients) {
        if clients.iter().any(|c| c == node) {
            lines.push(Line::new(
                cat,
                Status::Ok,
                format!("connected to istiod-lite as node {node}"),
                None,
            ));
        } else {
            lines.push(Line::new(
                cat,
                Status::Fail,
                format!("node {node} is not connected to istiod-lite at {istiod}"),
                Some("check this agent's XDS_ADDRESS and AUTH_TOKEN (a token is per node), and its log"),
            ));
        }
    }
    lines.extend(certificates(cat, &dump, ctx.now));
    lines
}

/// Certificate state, validity and expiry of one agent's dump at `now`.
pub fn certificates(cat: &str, dump: &ConfigDump, now: OffsetDateTime) -> Vec<Line> {
    let rows = cert_rows(&dump.certificates);
    let mut lines = Vec::new();
    let mut valid = 0;
    let mut first_expiry: Option<(OffsetDateTime, String)> = None;
    for r in &rows {
        let what = if r.kind == "NA" {
            r.identity.clone()
        } else {
            let serial = r.serial.as_deref().unwrap_or("?");
            format!("{} {} certificate (serial {serial})", r.identity, r.kind)
        };
        match r.state.as_str() {
            "Available" => {}
            "Initializing" => {
                lines.push(Line::new(
                    cat,
                    Status::Warn,
                    format!("certificate for {} is still being issued", r.identity),
                    Some("normal right after start; if it stays, check the ztunnel log and istiod-lite's CA"),
                ));
                continue;
            }
            other => {
                let why = r
                    .reason
                    .as_deref()
                    .map(|w| format!(": {w}"))
                    .unwrap_or_default();
                lines.push(Line::new(
                    cat,
                    Status::Fail,
                    format!("no certificate for {} ({other}{why})", r.identity),
                    Some("ztunnel retries with backoff; check istiod-lite's CA log and that the pod's node is this agent's NODE_NAME"),
                ));
                continue;
            }
        }
        let renew_hint = if r.kind == "Root" {
            "the mesh's root certificate must be rotated (istiod-lite CACERTS_DIR or STATE_DIR), then the agents restarted"
        } else {
            "ztunnel renews certificates at half their lifetime, so this means renewal keeps failing: check the ztunnel log and istiod-lite's CA"
        };
        let (Some(nb), Some(na)) = (r.not_before, r.not_after) else {
            lines.push(Line::new(
                cat,
                Status::Warn,
                format!(
                    "{what}: validity unknown (no dates in the dump and the PEM does not parse)"
                ),
                None,
            ));
            continue;
        };
        if na <= now {
            lines.push(Line::new(
                cat,
                Status::Fail,
                format!(
                    "{what} expired at {} ({} ago)",
                    format_time(Some(na)),
                    human(now - na)
                ),
                Some(renew_hint),
            ));
        } else if nb > now {
            lines.push(Line::new(
                cat,
                Status::Fail,
                format!(
                    "{what} is not valid before {} (in {})",
                    format_time(Some(nb)),
                    human(nb - now)
                ),
                Some("this host's clock is behind the CA's: sync clocks"),
            ));
        } else if na - now < EXPIRY_MARGIN {
            lines.push(Line::new(
                cat,
                Status::Fail,
                format!(
                    "{what} expires at {} (in {})",
                    format_time(Some(na)),
                    human(na - now)
                ),
                Some(renew_hint),
            ));
        } else {
            valid += 1;
            if first_expiry.as_ref().is_none_or(|(t, _)| na < *t) {
                first_expiry = Some((na, format!("{} {}", r.identity, r.kind)));
            }
        }
    }
    let summary = match &first_expiry {
        _ if rows.is_empty() => {
            Some("no workload certificates (no local workload needs one)".to_string())
        }
        Some((t, which)) => Some(format!(
            "{valid} certificate(s) valid for more than {}h; first to expire: {which} at {} (in {})",
            EXPIRY_MARGIN.whole_hours(),
            format_time(Some(*t)),
            human(*t - now)
        )),
        None => None,
    };
    if let Some(msg) = summary {
        lines.insert(0, Line::new(cat, Status::Ok, msg, None));
    }
    lines
}

#[cfg(test)]
mod tests;

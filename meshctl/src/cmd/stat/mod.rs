//! `meshctl stat [ns[/workload]]`: Linkerd's golden-metrics table from Istio's metric names,
//! by scraping the components twice (rates over the interval) or by asking Prometheus.

pub mod figures;

use std::collections::HashMap;
use std::io::Write;
use std::time::{Duration, Instant};

use serde::Serialize;

use self::figures::{observe, rows, ByReporter, Kind, Row, Selector};
use super::{bad_response, fetch_ok, ztunnel_config::fetch_dump, Ctx, Endpoint, Target};
use crate::cli::{LocalCluster, StatArgs};
use crate::cmd::local::waypoint as local;
use crate::config::{self, PrometheusUrl, Source};
use crate::dump::Workload;
use crate::error::Error;
use crate::http::encode_query;
use crate::output::{self, Format, Table};
use crate::prom::{self, Sample};

const SCRAPE_HINT: &str = "give the components' stats addresses (STATS_ADDR, port 15020) with \
                           --scrape, or the ztunnels with --ztunnel / MESHCTL_ZTUNNELS";
const PROM_HINT: &str = "check --prometheus / MESHCTL_PROMETHEUS (http://host:port)";

/// What `-o json|yaml` prints.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StatReport {
    /// `scrape` or `prometheus`.
    pub source: &'static str,
    /// Length of the window the rates cover.
    pub window_seconds: f64,
    /// One per workload.
    pub rows: Vec<Row>,
}

/// What `stat` reads besides Prometheus: the stats endpoints to scrape, and the agents whose
/// dumps fill MESHED and list workloads without traffic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sources {
    /// `/metrics` endpoints.
    pub scrape: Vec<Endpoint>,
    /// ztunnel admin endpoints (`/config_dump`).
    pub admins: Vec<Endpoint>,
    /// What to check when no stats endpoint answers.
    pub hint: String,
}

impl Sources {
    /// Addresses on this host: `--scrape`, else the ztunnels' stats addresses; the ztunnels'
    /// admin addresses (flags, environment, defaults).
    pub fn addressed(args: &StatArgs, env: &dyn Source) -> Result<Sources, Error> {
        let ztunnels = config::ztunnels(&args.ztunnels, env)?;
        let scrape: Vec<String> = if args.scrape.is_empty() {
            ztunnels.iter().map(|z| z.stats.clone()).collect()
        } else {
            args.scrape
                .iter()
                .map(|a| config::normalize_addr(a, "--scrape address"))
                .collect::<Result<_, _>>()?
        };
        Ok(Sources {
            scrape: scrape.into_iter().map(Endpoint::host).collect(),
            admins: ztunnels.iter().map(|z| Endpoint::host(&z.admin)).collect(),
            hint: SCRAPE_HINT.into(),
        })
    }

    /// Every ztunnel and waypoint of a `meshctl local` cluster, inside their namespaces.
    pub fn local(cluster: &LocalCluster) -> Result<Sources, Error> {
        let c = local::components(&cluster.name, &cluster.dir)?;
        if c.ztunnels.is_empty() {
            return Err(Error::Usage(format!(
                "cluster {} runs without the mesh (`up --no-mesh`): no ztunnel or waypoint reports metrics",
                cluster.name
            )));
        }
        Ok(Sources::of_local(cluster, &c))
    }

    /// [`Sources::local`] from the cluster's components.
    pub fn of_local(cluster: &LocalCluster, c: &local::Components) -> Sources {
        Sources {
            scrape: c
                .ztunnels
                .iter()
                .map(|z| z.stats.clone())
                .chain(c.waypoints.iter().map(|(_, stats)| stats.clone()))
                .collect(),
            admins: c.ztunnels.iter().map(|z| z.admin.clone()).collect(),
            hint: format!(
                "`meshctl local status {}` shows which of its processes run",
                cluster.flags()
            ),
        }
    }
}

/// Runs the command.
pub fn run(args: &StatArgs, ctx: &Ctx<'_>, out: &mut dyn Write) -> Result<(), Error> {
    let sel = Selector::parse(args.target.as_deref()).map_err(Error::Usage)?;
    let addressed = !args.ztunnels.is_empty() || !args.scrape.is_empty();
    let sources = match args.cluster.resolve(addressed, ctx.env)? {
        Some(cluster) => Sources::local(&cluster)?,
        None => Sources::addressed(args, ctx.env)?,
    };
    let prometheus = config::prometheus(args.prometheus.as_deref(), ctx.env)?;
    let (acc, seconds, source) = match &prometheus {
        Some(p) if args.scrape.is_empty() => (
            query_prometheus(p, args.window, ctx)?,
            args.window.as_secs_f64(),
            "prometheus",
        ),
        _ => {
            let (acc, secs) = scrape_twice(&sources, args.interval, ctx)?;
            (acc, secs, "scrape")
        }
    };
    // The agents' dumps fill MESHED and list idle workloads; without them those stay unknown.
    let mut workloads: Vec<Workload> = Vec::new();
    let mut have_dump = false;
    for admin in &sources.admins {
        if let Ok(d) = fetch_dump(admin, ctx) {
            have_dump = true;
            for w in d.workloads {
                if !workloads.iter().any(|x| x.uid == w.uid) {
                    workloads.push(w);
                }
            }
        }
    }
    let rows = rows(
        &acc,
        have_dump.then_some(workloads.as_slice()),
        &sel,
        seconds,
    );
    let report = StatReport {
        source,
        window_seconds: seconds,
        rows,
    };
    render(&report, &sel, args.output, out)
}

/// Writes the table (or JSON/YAML).
pub fn render(
    report: &StatReport,
    sel: &Selector,
    format: Format,
    out: &mut dyn Write,
) -> Result<(), Error> {
    if matches!(format, Format::Json | Format::Yaml) {
        return output::write_data(out, format, report);
    }
    if report.rows.is_empty() {
        let what = match (&sel.namespace, &sel.workload) {
            (Some(n), Some(w)) => format!(" for {n}/{w}"),
            (Some(n), None) => format!(" in namespace {n}"),
            _ => String::new(),
        };
        writeln!(out, "No traffic and no known workloads{what}.")?;
        return Ok(());
    }
    out.write_all(
        table(&report.rows, format == Format::Wide)
            .render()
            .as_bytes(),
    )?;
    Ok(())
}

/// The golden-metrics table.
pub fn table(rows: &[Row], wide: bool) -> Table {
    let mut headers = vec![
        "NAME",
        "MESHED",
        "SUCCESS",
        "RPS",
        "LATENCY_P50",
        "LATENCY_P95",
        "LATENCY_P99",
        "TCP_CONN",
        "MTLS",
    ];
    if wide {
        headers.extend(["CONN/S", "BYTES_IN/S", "BYTES_OUT/S"]);
    }
    let mut t = Table::new(&headers);
    let dash = || "-".to_string();
    let opt = |v: Option<f64>, f: &dyn Fn(f64) -> String| v.map_or_else(dash, f);
    let ms = |v: f64| {
        if v < 10.0 {
            format!("{v:.1}ms")
        } else {
            format!("{v:.0}ms")
        }
    };
    for r in rows {
        let mut cells = vec![
            r.name.clone(),
            match (r.meshed_pods, r.total_pods) {
                (Some(m), Some(t)) => format!("{m}/{t}"),
                _ => dash(),
            },
            opt(r.success, &|v| format!("{:.2}%", v * 100.0)),
            opt(r.rps, &|v| format!("{v:.1}rps")),
            opt(r.latency_p50_ms, &ms),
            opt(r.latency_p95_ms, &ms),
            opt(r.latency_p99_ms, &ms),
            opt(r.tcp_connections, &|v| format!("{v:.0}")),
            opt(r.mtls, &|v| format!("{:.0}%", v * 100.0)),
        ];
        if wide {
            cells.push(opt(r.connections_per_second, &|v| format!("{v:.1}")));
            cells.push(opt(r.bytes_in_per_second, &bytes));
            cells.push(opt(r.bytes_out_per_second, &bytes));
        }
        t.row(cells);
    }
    t
}

fn bytes(v: f64) -> String {
    if v >= 1024.0 * 1024.0 {
        format!("{:.1}MiB", v / (1024.0 * 1024.0))
    } else if v >= 1024.0 {
        format!("{:.1}KiB", v / 1024.0)
    } else {
        format!("{v:.0}B")
    }
}

/// One scrape of every target; targets that fail are reported on stderr and skipped, and
/// if all fail the first failure is the error.
fn scrape_all(sources: &Sources, ctx: &Ctx<'_>) -> Result<Vec<Option<Vec<Sample>>>, Error> {
    let mut first_err = None;
    let mut got = Vec::new();
    for t in &sources.scrape {
        match t.fetch_ok("metrics endpoint", &sources.hint, "/metrics", ctx.timeout) {
            Ok(r) => got.push(Some(prom::parse_text(&r.text()))),
            Err(e) => {
                eprintln!(
                    "meshctl: skipping {t}: {}",
                    e.to_string().lines().next().unwrap_or("")
                );
                first_err.get_or_insert(e);
                got.push(None);
            }
        }
    }
    if got.iter().all(Option::is_none) {
        if let Some(e) = first_err {
            return Err(e);
        }
    }
    Ok(got)
}

fn series_key(s: &Sample) -> (String, Vec<(String, String)>) {
    (
        s.name.clone(),
        s.labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    )
}

/// Folds two scrapes of the same targets into window increases and end values.
pub fn fold_scrapes(before: &[Option<Vec<Sample>>], after: &[Option<Vec<Sample>>]) -> ByReporter {
    let mut acc = ByReporter::new();
    for (b, a) in before.iter().zip(after) {
        let Some(a) = a else { continue };
        let prev: HashMap<_, f64> = b
            .iter()
            .flatten()
            .map(|s| (series_key(s), s.value))
            .collect();
        for s in a {
            // A series new in the window counts from zero; a counter that went down restarted.
            let delta = match prev.get(&series_key(s)) {
                Some(&p) if s.value >= p => s.value - p,
                _ => s.value,
            };
            observe(
                &mut acc,
                &Sample {
                    value: delta,
                    ..s.clone()
                },
                Kind::Delta,
            );
            observe(&mut acc, s, Kind::Instant);
        }
    }
    acc
}

fn scrape_twice(
    sources: &Sources,
    interval: Duration,
    ctx: &Ctx<'_>,
) -> Result<(ByReporter, f64), Error> {
    let before = scrape_all(sources, ctx)?;
    let started = Instant::now();
    if ctx.progress {
        eprint!(
            "sampling {} endpoint(s) for {:.1}s...",
            sources.scrape.len(),
            interval.as_secs_f64()
        );
    }
    // The window itself: the rates are increases over exactly this interval.
    std::thread::sleep(interval);
    let after = scrape_all(sources, ctx)?;
    if ctx.progress {
        eprint!("\r\x1b[K");
    }
    Ok((
        fold_scrapes(&before, &after),
        started.elapsed().as_secs_f64(),
    ))
}

/// The PromQL queries `stat` runs for a window (`1m`, `30s`), with how each answer counts.
pub fn prometheus_queries(window: &str) -> Vec<(String, Kind)> {
    let by = "reporter, destination_workload_namespace, destination_workload, connection_security_policy";
    let inc = |m: &str, extra: &str| format!("sum by ({by}{extra}) (increase({m}[{window}]))");
    vec![
        (inc(figures::TCP_OPENED, ""), Kind::Delta),
        (inc(figures::TCP_FAILED, ""), Kind::Delta),
        (inc(figures::TCP_RECEIVED, ""), Kind::Delta),
        (inc(figures::TCP_SENT, ""), Kind::Delta),
        (
            format!("sum by ({by}) ({})", figures::TCP_OPENED),
            Kind::Instant,
        ),
        (
            format!("sum by ({by}) ({})", figures::TCP_CLOSED),
            Kind::Instant,
        ),
        (inc(figures::REQUESTS, ", response_code"), Kind::Delta),
        (inc(figures::DURATION_BUCKET, ", le"), Kind::Delta),
    ]
}

/// The metric a query is about (answers of `sum by` carry no `__name__`).
fn query_metric(q: &str) -> &'static str {
    figures::METRICS
        .iter()
        .find(|m| q.contains(&format!("({m}[")) || q.ends_with(&format!("({m})")))
        .copied()
        .unwrap_or("")
}

fn query_prometheus(
    p: &PrometheusUrl,
    window: Duration,
    ctx: &Ctx<'_>,
) -> Result<ByReporter, Error> {
    let w = format!("{}s", window.as_secs().max(1));
    let target = Target {
        what: "Prometheus",
        addr: &p.addr,
        hint: PROM_HINT,
    };
    let mut acc = ByReporter::new();
    for (q, kind) in prometheus_queries(&w) {
        let path = format!("{}/api/v1/query?query={}", p.prefix, encode_query(&q));
        let r = fetch_ok(target, &path, ctx.timeout)?;
        let samples = prom::parse_vector(&r.body).map_err(|e| {
            bad_response(
                target,
                &format!("{}/api/v1/query", p.prefix),
                format!("{e} (query: {q})"),
            )
        })?;
        let metric = query_metric(&q);
        for mut s in samples {
            s.name = metric.to_string();
            observe(&mut acc, &s, kind);
        }
    }
    Ok(acc)
}

#[cfg(test)]
mod tests;

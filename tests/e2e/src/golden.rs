//! Golden files for command output from a running mesh: a small, explicit normaliser for what
//! legitimately changes from run to run, and [`check`], which compares (or, with
//! `UPDATE_GOLDEN=1`, rewrites) a golden file and explains a mismatch with a line diff.
//!
//! Std and serde_json only: meshctl's integration tests compile this same file (a `#[path]`
//! module), so both layers of golden tests normalise identically, keep the same set of outputs
//! ([`ztunnel_config_outputs`], [`STAT_OUTPUTS`], [`WAYPOINT_OUTPUTS`]) and take them the same
//! way ([`under_traffic`], [`JsonLines`]).
//!
//! What is replaced, and nothing else:
//! - literals the test registers (a random cluster name, a temp directory, admin addresses);
//! - RFC 3339 timestamps -> `<TIME>`;
//! - the port of `IPv4:port` -> `<PORT>`, unless it is one of [`FIXED_PORTS`] (Istio's ports and
//!   the test apps' 80/8080);
//! - UUIDs (pod uids) -> `<UUID>`;
//! - runs of 16+ lower-case hex digits (certificate serial numbers) -> `<SERIAL>`;
//! - runs of 64+ base64 characters (PEM bodies) -> `<BASE64>`;
//! - human durations (`0s`, `42m`, `23h59m`, `2d3h`) -> `<DURATION>`;
//! - table cells under [`VARYING_COLUMNS`] and JSON or YAML numbers under [`VARYING_KEYS`]
//!   (rates, latencies, byte counts, open connections, times, worker threads) -> `<N>`
//!   (`<TIME>` for `time_ms`);
//! - a heading's underline of dashes -> as long as the normalised heading.
//!
//! Tables (a line of upper-case headers followed by rows) are cut into cells at the columns the
//! header and every row agree on, first checked to be exactly what an aligned renderer prints
//! (cells padded to the widest, one space apart, no trailing spaces), then normalised cell by
//! cell and re-aligned: a value that changes width (a serial number, a rate) cannot move the
//! columns after it, while a renamed, added or moved header still changes the text. JSON is
//! compared as a document: parsed, normalised, printed pretty with sorted keys.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use serde_json::Value;

/// Ports that are the same in every run: Istio's and the test apps'.
pub const FIXED_PORTS: [&str; 12] = [
    "53", "80", "8080", "15000", "15001", "15006", "15008", "15010", "15012", "15014", "15020",
    "15021",
];

/// Table columns whose figures depend on timing (rates, latencies, connections open now).
pub const VARYING_COLUMNS: [&str; 8] = [
    "RPS",
    "LATENCY_P50",
    "LATENCY_P95",
    "LATENCY_P99",
    "TCP_CONN",
    "CONN/S",
    "BYTES_IN/S",
    "BYTES_OUT/S",
];

/// JSON (and YAML) keys whose numbers depend on timing, on bytes that carry ports and dates,
/// or on the machine (ztunnel's worker threads default to its CPU count).
pub const VARYING_KEYS: [&str; 14] = [
    "time_ms",
    "workerThreads",
    "duration_ms",
    "bytes_sent",
    "bytes_received",
    "windowSeconds",
    "rps",
    "latencyP50Ms",
    "latencyP95Ms",
    "latencyP99Ms",
    "tcpConnections",
    "connectionsPerSecond",
    "bytesInPerSecond",
    "bytesOutPerSecond",
];

/// The normaliser: the fixed rules above plus literals registered by the test.
#[derive(Debug, Clone, Default)]
pub struct Normalizer {
    literals: Vec<(String, String)>,
}

impl Normalizer {
    /// Only the fixed rules.
    pub fn new() -> Normalizer {
        Normalizer::default()
    }

    /// Also replaces every occurrence of `from` (applied before the fixed rules, longest
    /// first, so a directory is replaced before the cluster name inside it).
    pub fn literal(mut self, from: impl Into<String>, to: impl Into<String>) -> Normalizer {
        let from = from.into();
        if !from.is_empty() {
            self.literals.push((from, to.into()));
            self.literals.sort_by_key(|l| std::cmp::Reverse(l.0.len()));
        }
        self
    }

    /// Text output (tables and free text). Fails when a table is not aligned.
    pub fn text(&self, s: &str) -> Result<String, String> {
        let lines: Vec<&str> = s.split('\n').collect();
        let mut out: Vec<String> = Vec::new();
        let mut i = 0;
        while i < lines.len() {
            if is_header(lines[i]) {
                let end = (i..lines.len())
                    .find(|&j| lines[j].trim().is_empty())
                    .unwrap_or(lines.len());
                out.extend(self.table(&lines[i..end])?);
                i = end;
            } else if i > 0 && is_underline(lines[i], lines[i - 1]) {
                // A heading's underline follows the heading's normalised length.
                let heading = out.last().map_or(0, |h| h.chars().count());
                out.push("-".repeat(heading));
                i += 1;
            } else {
                out.push(
                    self.yaml_number(lines[i])
                        .unwrap_or_else(|| self.words(lines[i])),
                );
                i += 1;
            }
        }
        Ok(out.join("\n"))
    }

    /// One JSON document, printed pretty with sorted keys.
    pub fn json(&self, s: &str) -> Result<String, String> {
        let v: Value = serde_json::from_str(s).map_err(|e| format!("not JSON: {e}"))?;
        let v = self.value(None, v);
        serde_json::to_string_pretty(&v)
            .map(|t| t + "\n")
            .map_err(|e| e.to_string())
    }

    /// NDJSON (one document per line), each line normalised and compact, the lines sorted:
    /// events merged from several sources arrive in any order.
    pub fn ndjson(&self, s: &str) -> Result<String, String> {
        let mut lines = s
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                let v: Value =
                    serde_json::from_str(l).map_err(|e| format!("not JSON ({e}): {l}"))?;
                Ok(self.value(None, v).to_string())
            })
            .collect::<Result<Vec<String>, String>>()?;
        lines.sort();
        Ok(lines.iter().map(|l| format!("{l}\n")).collect())
    }

    /// `  key: 12` (YAML) with a key of [`VARYING_KEYS`]: the number replaced.
    fn yaml_number(&self, line: &str) -> Option<String> {
        let (key, value) = line.split_once(": ")?;
        let name = key.trim_start().trim_start_matches("- ");
        (VARYING_KEYS.contains(&name) && value.trim().parse::<f64>().is_ok()).then(|| {
            let with = if name == "time_ms" { "<TIME>" } else { "<N>" };
            format!("{key}: {with}")
        })
    }

    fn value(&self, key: Option<&str>, v: Value) -> Value {
        let varying = key.is_some_and(|k| VARYING_KEYS.contains(&k));
        match v {
            Value::Number(_) if varying => Value::String(
                if key == Some("time_ms") {
                    "<TIME>"
                } else {
                    "<N>"
                }
                .into(),
            ),
            Value::String(s) => Value::String(self.words(&s)),
            Value::Array(a) => Value::Array(a.into_iter().map(|e| self.value(None, e)).collect()),
            Value::Object(m) => {
                let sorted: std::collections::BTreeMap<String, Value> = m.into_iter().collect();
                Value::Object(
                    sorted
                        .into_iter()
                        .map(|(k, e)| {
                            let e = self.value(Some(&k), e);
                            (k, e)
                        })
                        .collect(),
                )
            }
            other => other,
        }
    }

    /// A table block: header line and rows.
    fn table(&self, block: &[&str]) -> Result<Vec<String>, String> {
        let rows: Vec<Vec<char>> = block.iter().map(|l| l.chars().collect()).collect();
        let header = &rows[0];
        let mut starts = vec![0];
        for p in 1..header.len() {
            let starts_here = header[p] != ' ' && header[p - 1] == ' ';
            if starts_here && rows.iter().all(|r| r.len() <= p || r[p - 1] == ' ') {
                starts.push(p);
            }
        }
        let cells: Vec<Vec<String>> = rows
            .iter()
            .map(|r| {
                (0..starts.len())
                    .map(|c| {
                        let from = starts[c].min(r.len());
                        let to = starts.get(c + 1).map_or(r.len(), |&e| e.min(r.len()));
                        r[from..to].iter().collect::<String>().trim().to_string()
                    })
                    .collect()
            })
            .collect();
        let original: Vec<String> = block.iter().map(|l| l.to_string()).collect();
        // A cell with a run of spaces inside is two cells whose column starts do not line up.
        let merged = cells.iter().flatten().any(|c| c.contains("  "));
        if merged || align(&cells) != original {
            return Err(format!(
                "table not aligned (cells padded to the widest, one space apart):\n{}",
                original.join("\n")
            ));
        }
        let headers = cells[0].clone();
        let normalised: Vec<Vec<String>> = std::iter::once(headers.clone())
            .chain(cells[1..].iter().map(|row| {
                row.iter()
                    .zip(&headers)
                    .map(|(cell, h)| {
                        let keep = matches!(cell.as_str(), "" | "-" | "NA");
                        if VARYING_COLUMNS.contains(&h.as_str()) && !keep {
                            "<N>".to_string()
                        } else {
                            self.words(cell)
                        }
                    })
                    .collect()
            }))
            .collect();
        Ok(align(&normalised))
    }

    /// The literal and word rules over free text.
    pub fn words(&self, s: &str) -> String {
        let mut s = s.to_string();
        for (from, to) in &self.literals {
            s = s.replace(from, to);
        }
        let chars: Vec<char> = s.chars().collect();
        let mut out = String::with_capacity(s.len());
        let mut i = 0;
        while i < chars.len() {
            let at_boundary = i == 0 || !chars[i - 1].is_ascii_alphanumeric();
            if at_boundary {
                if let Some((len, with)) = rule_at(&chars[i..]) {
                    out.push_str(&with);
                    i += len;
                    continue;
                }
            }
            out.push(chars[i]);
            i += 1;
        }
        out
    }
}

/// A line of dashes exactly as long as the line above it (a heading's underline).
fn is_underline(line: &str, above: &str) -> bool {
    !line.is_empty()
        && line.chars().all(|c| c == '-')
        && line.chars().count() == above.chars().count()
}

/// A line of at least two upper-case headers (`NAMESPACE POD NAME ...`, `CONN/S`).
fn is_header(line: &str) -> bool {
    line.starts_with(|c: char| c.is_ascii_uppercase())
        && line.split_whitespace().count() >= 2
        && line
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || " _/%-".contains(c))
}

/// Cells rendered as meshctl's tables are: padded to the widest cell, one space apart, no
/// trailing spaces.
fn align(cells: &[Vec<String>]) -> Vec<String> {
    let cols = cells.iter().map(Vec::len).max().unwrap_or(0);
    let width = |c: usize| {
        cells
            .iter()
            .map(|r| r.get(c).map_or(0, |s| s.chars().count()))
            .max()
            .unwrap_or(0)
    };
    let widths: Vec<usize> = (0..cols).map(width).collect();
    cells
        .iter()
        .map(|r| {
            let mut l = String::new();
            for (c, cell) in r.iter().enumerate() {
                l.push_str(cell);
                if c + 1 < r.len() {
                    l.push_str(&" ".repeat(widths[c] - cell.chars().count() + 1));
                }
            }
            l.trim_end().to_string()
        })
        .collect()
}

/// The first rule matching at the start of `s`: (characters consumed, replacement).
fn rule_at(s: &[char]) -> Option<(usize, String)> {
    let digits = |from: usize| {
        s[from.min(s.len())..]
            .iter()
            .take_while(|c| c.is_ascii_digit())
            .count()
    };
    let ends_token = |at: usize| s.get(at).is_none_or(|c| !c.is_ascii_alphanumeric());
    // `s` starts with `shape`, in which `any` stands for one character that `fits`.
    let starts_like = |shape: &str, any: char, fits: fn(&char) -> bool| {
        s.len() >= shape.len()
            && shape
                .chars()
                .zip(s)
                .all(|(p, c)| if p == any { fits(c) } else { p == *c })
    };
    // RFC 3339: 2026-01-02T03:04:05[.123][Z|+01:00]
    let shape = "dddd-dd-ddTdd:dd:dd";
    if starts_like(shape, 'd', char::is_ascii_digit) {
        let mut n = shape.len();
        if s.get(n) == Some(&'.') && digits(n + 1) > 0 {
            n += 1 + digits(n + 1);
        }
        if s.get(n) == Some(&'Z') {
            n += 1;
        } else if matches!(s.get(n), Some('+' | '-'))
            && digits(n + 1) == 2
            && s.get(n + 3) == Some(&':')
        {
            n += 6;
        }
        return Some((n, "<TIME>".into()));
    }
    // IPv4:port -> IPv4:<PORT> (fixed ports kept).
    let mut n = 0;
    for octet in 0..4 {
        let d = digits(n);
        if d == 0 || d > 3 {
            n = 0;
            break;
        }
        n += d;
        if octet < 3 {
            if s.get(n) != Some(&'.') {
                n = 0;
                break;
            }
            n += 1;
        }
    }
    if n > 0 {
        let ip: String = s[..n].iter().collect();
        if s.get(n) == Some(&':') && digits(n + 1) > 0 && ends_token(n + 1 + digits(n + 1)) {
            let port: String = s[n + 1..n + 1 + digits(n + 1)].iter().collect();
            let shown = if FIXED_PORTS.contains(&port.as_str()) {
                port
            } else {
                "<PORT>".into()
            };
            return Some((n + 1 + digits(n + 1), format!("{ip}:{shown}")));
        }
        return Some((n, ip));
    }
    // UUIDs (pod uids): 8-4-4-4-12 hex digits.
    let uuid = "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx";
    if starts_like(uuid, 'x', char::is_ascii_hexdigit) && ends_token(uuid.len()) {
        return Some((uuid.len(), "<UUID>".into()));
    }
    // Serial numbers: 16+ lower-case hex digits.
    let hex = s
        .iter()
        .take_while(|c| c.is_ascii_digit() || ('a'..='f').contains(c))
        .count();
    if hex >= 16 && ends_token(hex) {
        return Some((hex, "<SERIAL>".into()));
    }
    // PEM bodies: 64+ base64 characters.
    let b64 = s
        .iter()
        .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '='))
        .count();
    if b64 >= 64 {
        return Some((b64, "<BASE64>".into()));
    }
    // Human durations: 0s, 42m, 23h59m, 2d3h.
    let d = digits(0);
    if d > 0 && matches!(s.get(d), Some('d' | 'h' | 'm' | 's')) {
        let mut n = d + 1;
        let d2 = digits(n);
        if d2 > 0 && matches!(s.get(n + d2), Some('h' | 'm')) {
            n += d2 + 1;
        }
        if ends_token(n) {
            return Some((n, "<DURATION>".into()));
        }
    }
    None
}

/// Output of one command to compare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Tables and text ([`Normalizer::text`]).
    Text,
    /// One JSON document ([`Normalizer::json`]).
    Json,
    /// One JSON document per line ([`Normalizer::ndjson`]).
    Ndjson,
}

/// Compares outputs with the golden files of one directory and collects every mismatch, so one
/// run reports all of them.
#[derive(Debug)]
pub struct Collector {
    dir: std::path::PathBuf,
    norm: Normalizer,
    failures: Vec<String>,
}

impl Collector {
    /// Golden files in `dir`, normalised by `norm`.
    pub fn new(dir: impl Into<std::path::PathBuf>, norm: Normalizer) -> Collector {
        Collector {
            dir: dir.into(),
            norm,
            failures: Vec::new(),
        }
    }

    /// Compares `output` (exit code `code`, which must be `want`) with the golden file `name`.
    pub fn output(&mut self, name: &str, kind: Kind, code: i32, want: i32, output: &str) {
        if code != want {
            self.fail(format!(
                "{name}: exit code {code}, expected {want}; output:\n{output}"
            ));
            return;
        }
        let normalised = match kind {
            Kind::Text => self.norm.text(output),
            Kind::Json => self.norm.json(output),
            Kind::Ndjson => self.norm.ndjson(output),
        };
        if let Err(e) = normalised.and_then(|t| check(&self.dir.join(name), &t)) {
            self.fail(format!("{name}: {e}"));
        }
    }

    /// Records a failure that is not a golden mismatch.
    pub fn fail(&mut self, why: String) {
        self.failures.push(why);
    }

    /// Every failure, or Ok.
    pub fn finish(self) -> Result<(), String> {
        if self.failures.is_empty() {
            return Ok(());
        }
        Err(format!(
            "{} golden mismatch(es):\n\n{}",
            self.failures.len(),
            self.failures.join("\n\n")
        ))
    }
}

/// Every `ztunnel-config` output with a golden file: each section in each format, as (the
/// arguments after `ztunnel-config`, golden file name, kind). YAML is compared as text.
pub fn ztunnel_config_outputs() -> Vec<([&'static str; 3], String, Kind)> {
    let sections = [
        "workloads",
        "services",
        "policies",
        "certificates",
        "connections",
        "all",
    ];
    let formats = [
        ("table", "txt", Kind::Text),
        ("json", "json", Kind::Json),
        ("yaml", "yaml", Kind::Text),
    ];
    sections
        .iter()
        .flat_map(|section| {
            formats.iter().map(move |(format, ext, kind)| {
                (
                    [*section, "-o", *format],
                    format!("ztunnel-config_{section}.{ext}"),
                    *kind,
                )
            })
        })
        .collect()
}

/// Every `stat` output with a golden file: (arguments added to the command, name, kind).
pub const STAT_OUTPUTS: [(&[&str], &str, Kind); 3] = [
    (&[], "stat.txt", Kind::Text),
    (&["-o", "wide"], "stat_wide.txt", Kind::Text),
    (&["-o", "json"], "stat.json", Kind::Json),
];

/// Every `waypoint` output with a golden file: (arguments after `waypoint -n NS`, name, kind).
/// `status` exits 1 while a waypoint is not programmed, in every format.
pub const WAYPOINT_OUTPUTS: [(&[&str], &str, Kind); 5] = [
    (&["list"], "waypoint_list.txt", Kind::Text),
    (&["list", "-A"], "waypoint_list_all.txt", Kind::Text),
    (&["list", "-o", "json"], "waypoint_list.json", Kind::Json),
    (&["status"], "waypoint_status.txt", Kind::Text),
    (
        &["status", "-o", "json"],
        "waypoint_status.json",
        Kind::Json,
    ),
];

/// Runs `f` while a thread repeats `request` (true: it succeeded) in a loop: the traffic rates
/// and success ratios are taken over. An error with the counts unless at least one request ran
/// and none failed (a failure would change the SUCCESS column, not only the rates).
pub fn under_traffic<T>(
    request: impl Fn() -> bool + Send + 'static,
    f: impl FnOnce() -> T,
) -> Result<T, String> {
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let t = {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Acquire) {
                let counter = if request() { &ok } else { &failed };
                counter.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    let out = f();
    stop.store(true, Ordering::Release);
    let _ = t.join();
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    if failed > 0 || ok == 0 {
        return Err(format!(
            "requests during the window: {ok} ok, {failed} failed"
        ));
    }
    Ok(out)
}

/// What a running command prints, one JSON document a line (`meshctl tap -o json`), gathered
/// on a thread as it comes. The command is killed (and reaped) when this is dropped.
pub struct JsonLines {
    child: Child,
    lines: Arc<Mutex<Vec<Result<Value, String>>>>,
}

impl JsonLines {
    /// Spawns `cmd` with its stdout read here.
    pub fn spawn(cmd: &mut Command) -> std::io::Result<JsonLines> {
        let mut child = cmd.stdout(Stdio::piped()).spawn()?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        if let Some(out) = child.stdout.take() {
            let lines = lines.clone();
            std::thread::spawn(move || {
                for l in BufReader::new(out).lines().map_while(Result::ok) {
                    let v = serde_json::from_str::<Value>(&l)
                        .map_err(|e| format!("a line that is not JSON ({e}): {l}"));
                    lines.lock().unwrap_or_else(PoisonError::into_inner).push(v);
                }
            });
        }
        Ok(JsonLines { child, lines })
    }

    /// The documents so far that `keep` accepts, in arrival order; an error if any line was
    /// not JSON.
    pub fn matching(&self, keep: impl Fn(&Value) -> bool) -> Result<Vec<Value>, String> {
        let lines = self.lines.lock().unwrap_or_else(PoisonError::into_inner);
        let mut out = Vec::new();
        for l in lines.iter() {
            match l {
                Ok(v) if keep(v) => out.push(v.clone()),
                Ok(_) => {}
                Err(e) => return Err(e.clone()),
            }
        }
        Ok(out)
    }
}

impl Drop for JsonLines {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Compares `actual` with the golden file at `path`; with `UPDATE_GOLDEN=1` (re)writes it
/// instead. The error names the file, says how to update it and shows a line diff.
pub fn check(path: &Path, actual: &str) -> Result<(), String> {
    if std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| !v.is_empty() && v != "0") {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        return std::fs::write(path, actual).map_err(|e| format!("{}: {e}", path.display()));
    }
    let expected = std::fs::read_to_string(path).map_err(|e| {
        format!(
            "{}: {e}; run with UPDATE_GOLDEN=1 to create it, then review it",
            path.display()
        )
    })?;
    if expected == actual {
        return Ok(());
    }
    Err(format!(
        "output differs from {} (- golden, + now; UPDATE_GOLDEN=1 rewrites it after an intended change):\n{}",
        path.display(),
        diff(&expected, actual)
    ))
}

/// A line diff (longest common subsequence), changed lines with two lines of context.
pub fn diff(a: &str, b: &str) -> String {
    let a: Vec<&str> = a.lines().collect();
    let b: Vec<&str> = b.lines().collect();
    // lcs[i][j]: length of the LCS of a[i..] and b[j..].
    let mut lcs = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let mut ops: Vec<(char, &str)> = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            ops.push((' ', a[i]));
            i += 1;
            j += 1;
        } else if i < a.len() && (j == b.len() || lcs[i + 1][j] >= lcs[i][j + 1]) {
            ops.push(('-', a[i]));
            i += 1;
        } else {
            ops.push(('+', b[j]));
            j += 1;
        }
    }
    let near_change = |k: usize| {
        let lo = k.saturating_sub(2);
        let hi = (k + 2).min(ops.len() - 1);
        (lo..=hi).any(|m| ops[m].0 != ' ')
    };
    let mut out = String::new();
    let mut skipped = false;
    for (k, (op, line)) in ops.iter().enumerate() {
        if near_change(k) {
            if skipped {
                out.push_str("  ...\n");
                skipped = false;
            }
            out.push_str(&format!("{op} {line}\n"));
        } else {
            skipped = true;
        }
    }
    if skipped {
        out.push_str("  ...\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varying_values_become_placeholders() {
        let n = Normalizer::new().literal("e2e-abc123", "<CLUSTER>");
        assert_eq!(
            n.words("ambrs-e2e-abc123.node-1 127.0.0.1:43211 -> 10.96.0.10:80 at 2026-01-02T03:04:05.123Z"),
            "ambrs-<CLUSTER>.node-1 127.0.0.1:<PORT> -> 10.96.0.10:80 at <TIME>"
        );
        assert_eq!(
            n.words("(serial 651c920f64d5f430888d870dbda5249d) in 23h59m, skew (0s) uid 5dfdc2d4-c0b2-4f7c-9441-b754a0fbaed5"),
            "(serial <SERIAL>) in <DURATION>, skew (<DURATION>) uid <UUID>"
        );
        // Deterministic numbers stay: counts, fixed ports, versions.
        assert_eq!(
            n.words("2 certificate(s) 1/1 :15008 0.1.0"),
            "2 certificate(s) 1/1 :15008 0.1.0"
        );
    }

    #[test]
    fn tables_are_realigned_after_normalising_and_must_be_aligned() {
        let n = Normalizer::new();
        let a = "NAME SERIAL NUMBER                    NOT AFTER\nx    0123456789abcdef0123456789abcdef 2026-01-02T03:04:05Z\n";
        let b = "NAME SERIAL NUMBER                  NOT AFTER\nx    0123456789abcdef0123456789abcd 2027-01-02T03:04:05Z\n";
        let want = "NAME SERIAL NUMBER NOT AFTER\nx    <SERIAL>      <TIME>\n";
        assert_eq!(n.text(a).unwrap_or_default(), want);
        assert_eq!(n.text(b).unwrap_or_default(), want);
        let rates = "NAME RPS     MTLS\na/b  12.3rps 100%\n";
        assert_eq!(
            n.text(rates).unwrap_or_default(),
            "NAME RPS MTLS\na/b  <N> 100%\n"
        );
        assert!(n.text("NAME POD\nx  y\n").is_err(), "a row off its columns");
        assert!(
            n.text("NAME RPS    MTLS\na/b  12.3rps 100%\n").is_err(),
            "a header off"
        );
    }

    #[test]
    fn underlines_follow_their_heading_and_yaml_numbers_by_key() {
        let n = Normalizer::new();
        let t = "ztunnel 127.0.0.1:45678\n-----------------------\n  workerThreads: 8\n  hbonePort: 15008\n";
        assert_eq!(
            n.text(t).unwrap_or_default(),
            "ztunnel 127.0.0.1:<PORT>\n------------------------\n  workerThreads: <N>\n  hbonePort: 15008\n"
        );
    }

    #[test]
    fn json_numbers_under_varying_keys() {
        let n = Normalizer::new();
        let got = n
            .ndjson("{\"time_ms\":5,\"event\":\"close\",\"bytes_sent\":10,\"src\":{\"addr\":\"10.0.0.1:40000\"}}\n")
            .unwrap_or_default();
        assert_eq!(
            got,
            "{\"bytes_sent\":\"<N>\",\"event\":\"close\",\"src\":{\"addr\":\"10.0.0.1:<PORT>\"},\"time_ms\":\"<TIME>\"}\n"
        );
    }

    #[test]
    fn every_ztunnel_config_section_in_every_format_once() {
        let outputs = ztunnel_config_outputs();
        assert_eq!(outputs.len(), 18);
        let names: std::collections::BTreeSet<&str> =
            outputs.iter().map(|(_, n, _)| n.as_str()).collect();
        assert_eq!(names.len(), 18);
        assert!(outputs.contains(&(
            ["policies", "-o", "json"],
            "ztunnel-config_policies.json".to_string(),
            Kind::Json
        )));
    }

    #[test]
    fn traffic_must_all_succeed() {
        // `f` returns once a request has run, as a real window outlasts many.
        let window = |succeeds: bool| {
            let (tx, rx) = std::sync::mpsc::channel();
            under_traffic(
                move || {
                    let _ = tx.send(());
                    succeeds
                },
                move || rx.recv().map(|()| 7).unwrap_or_default(),
            )
        };
        assert_eq!(window(true), Ok(7));
        let failing = window(false).expect_err("failed requests");
        assert!(failing.contains("0 ok"), "{failing}");
    }

    #[test]
    fn json_lines_are_gathered_as_printed_and_a_line_that_is_not_json_is_an_error() {
        let wait_for = |lines: &JsonLines, n: usize| {
            let start = std::time::Instant::now();
            while lines.lines.lock().map(|l| l.len()).unwrap_or(0) < n {
                assert!(start.elapsed().as_secs() < 10, "{n} lines never came");
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        };
        // The command keeps running: lines are read as they come, not at its exit.
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo '{\"a\":1}'; echo '{\"a\":2}'; exec sleep 30"]);
        let lines = JsonLines::spawn(&mut cmd).expect("sh");
        wait_for(&lines, 2);
        assert_eq!(
            lines.matching(|v| v["a"] == 2),
            Ok(vec![serde_json::json!({"a": 2})])
        );
        drop(lines);
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo '{}'; echo nope"]);
        let lines = JsonLines::spawn(&mut cmd).expect("sh");
        wait_for(&lines, 2);
        let err = lines.matching(|_| true).expect_err("nope is not JSON");
        assert!(err.contains("nope"), "{err}");
    }

    #[test]
    fn diff_shows_changed_lines_with_context() {
        let d = diff("a\nb\nc\nd\ne\nf\ng\n", "a\nb\nc\nD\ne\nf\ng\n");
        assert_eq!(d, "  ...\n  b\n  c\n- d\n+ D\n  e\n  f\n  ...\n");
    }
}

//! `meshctl tap`: a live stream of connection events from every ztunnel's `/debug/tap`
//! (opened, closed, refused: identities, mTLS or not, bytes, duration, response flags).
//!
//! Each ztunnel is read on its own thread; lines are merged in arrival order. ztunnel keeps a
//! bounded queue per reader and reports what a slow reader lost as a `dropped` event, so a tap
//! can never slow the data path.

use std::io::Write;
use std::sync::mpsc;

use serde_json::Value;

use crate::cli::TapArgs;
use crate::cmd::local::netns;
use crate::cmd::{Ctx, Endpoint};
use crate::config;
use crate::error::Error;
use crate::http;
use crate::output::Format;

const HINT: &str =
    "pass --ztunnel ADMIN (or MESHCTL_ZTUNNELS) and --waypoint ADMIN, or --local CLUSTER";

/// Runs the tap until every ztunnel's stream ends (`--duration`), `--limit` events were shown,
/// or the user interrupts.
pub fn run(a: &TapArgs, ctx: &Ctx<'_>, out: &mut dyn Write) -> Result<(), Error> {
    if !matches!(a.output, Format::Table | Format::Wide | Format::Json) {
        return Err(Error::Usage(
            "tap prints events as they come: -o table or -o json".into(),
        ));
    }
    let query = query(a)?;
    let addressed = !a.ztunnels.is_empty() || !a.waypoints.is_empty();
    // (label, admin endpoint): a local cluster's components listen inside their namespaces.
    let sources: Vec<(String, Endpoint)> = match a.cluster.resolve(addressed, ctx.env)? {
        Some(cluster) => crate::cmd::local::waypoint::tap_sources(&cluster.name, &cluster.dir)?,
        None => {
            let mut v = Vec::new();
            for z in config::ztunnels(&a.ztunnels, ctx.env)? {
                v.push((z.admin.clone(), Endpoint::host(z.admin)));
            }
            for w in &a.waypoints {
                let addr = config::normalize_addr(w, "waypoint admin address")?;
                v.push((addr.clone(), Endpoint::host(addr)));
            }
            v
        }
    };
    let (tx, rx) = mpsc::channel::<Result<(String, Vec<u8>), Error>>();
    for (label, admin) in sources {
        let tx = tx.clone();
        let path = format!("/debug/tap{query}");
        let timeout = ctx.timeout;
        // A thread per source, so it can join its source's namespace for the whole stream.
        std::thread::spawn(move || {
            if let Some(ns) = &admin.netns {
                if let Err(e) = netns::enter(ns) {
                    let _ = tx.send(Err(Error::Usage(format!(
                        "{label}: cannot enter {}: {e}",
                        netns::path(ns).display()
                    ))));
                    return;
                }
            }
            let res = http::stream_lines(&admin.addr, &path, timeout, |line| {
                tx.send(Ok((label.clone(), line.to_vec()))).is_ok()
            });
            if let Err(source) = res {
                let _ = tx.send(Err(Error::Unreachable {
                    what: "tap source".into(),
                    addr: format!("{label} ({})", admin.addr),
                    source,
                    hint: HINT.into(),
                }));
            }
        });
    }
    drop(tx);
    if a.output != Format::Json {
        writeln!(out, "{}", header())?;
        out.flush()?;
    }
    let mut shown = 0u64;
    for msg in rx {
        let (from, line) = msg?;
        let Ok(mut ev) = serde_json::from_slice::<Value>(&line) else {
            eprintln!("meshctl tap: ignoring a line from {from} that is not JSON");
            continue;
        };
        if let Some(o) = ev.as_object_mut() {
            o.insert("ztunnel".into(), Value::String(from));
        }
        match a.output {
            Format::Json => writeln!(out, "{ev}")?,
            _ => writeln!(out, "{}", row(&ev))?,
        }
        out.flush()?;
        if ev["event"] != "dropped" {
            shown += 1;
        }
        if a.limit.is_some_and(|l| shown >= l) {
            break;
        }
    }
    Ok(())
}

/// The query string for `/debug/tap` from the arguments.
fn query(a: &TapArgs) -> Result<String, Error> {
    let mut q = Vec::new();
    if let Some(t) = &a.target {
        let (ns, wl) = match t.split_once('/') {
            Some((ns, wl)) => (ns, Some(wl)),
            None => (t.as_str(), None),
        };
        if ns.is_empty() || wl.is_some_and(str::is_empty) {
            return Err(Error::Usage(format!(
                "{t:?}: expected NAMESPACE or NAMESPACE/WORKLOAD"
            )));
        }
        q.push(format!("namespace={}", http::encode_query(ns)));
        if let Some(w) = wl {
            q.push(format!("workload={}", http::encode_query(w)));
        }
    }
    if let Some(l) = a.limit {
        q.push(format!("limit={l}"));
    }
    if let Some(d) = a.duration {
        q.push(format!("duration={}ms", d.as_millis()));
    }
    Ok(if q.is_empty() {
        String::new()
    } else {
        format!("?{}", q.join("&"))
    })
}

fn header() -> String {
    format!(
        "{:<12} {:<7} {:<8} {:<28} {:<28} {:<10} {:>9} {:>9} {:>7} {}",
        "TIME",
        "EVENT",
        "DIR",
        "SOURCE",
        "DESTINATION",
        "SECURITY",
        "SENT",
        "RECEIVED",
        "MS",
        "FLAGS/ERROR"
    )
}

/// `name.namespace`, else the address.
fn peer(p: &Value) -> String {
    let s = |k: &str| p[k].as_str().unwrap_or_default().to_string();
    match (s("workload"), s("namespace")) {
        (w, ns) if !w.is_empty() => format!("{w}.{ns}"),
        _ => s("addr"),
    }
}

/// One aligned line per event.
fn row(ev: &Value) -> String {
    if ev["event"] == "dropped" {
        return format!(
            "-- {} events dropped by {} (this reader fell behind) --",
            ev["count"],
            ev["ztunnel"].as_str().unwrap_or_default()
        );
    }
    let time = ev["time_ms"]
        .as_i64()
        .and_then(|ms| {
            time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok()
        })
        .map(|t| {
            format!(
                "{:02}:{:02}:{:02}.{:03}",
                t.hour(),
                t.minute(),
                t.second(),
                t.millisecond()
            )
        })
        .unwrap_or_default();
    let num = |k: &str| {
        ev[k]
            .as_u64()
            .map(|n| n.to_string())
            .unwrap_or_else(|| "-".into())
    };
    let security = match ev["security"].as_str() {
        Some("mutual_tls") => "mTLS",
        _ => "plaintext",
    };
    let mut flags = ev["response_flags"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    if flags == "-" {
        flags.clear();
    }
    if let Some(e) = ev["error"].as_str().filter(|e| !e.is_empty()) {
        flags = if flags.is_empty() {
            e.to_string()
        } else {
            format!("{flags} {e}")
        };
    }
    if ev["event"] == "request" {
        let mut what = format!(
            "{} {} {}",
            ev["method"].as_str().unwrap_or_default(),
            ev["path"].as_str().unwrap_or_default(),
            ev["status"]
        );
        if let Some(g) = ev["grpc_status"]
            .as_str()
            .filter(|g| !g.is_empty() && *g != "-")
        {
            what.push_str(&format!(" grpc={g}"));
        }
        if !flags.is_empty() {
            what.push_str(&format!(" {flags}"));
        }
        flags = what;
    }
    let mut dst = peer(&ev["dst"]);
    if let Some(svc) = ev["dst_service"].as_str().filter(|s| !s.is_empty()) {
        dst = format!(
            "{dst} ({})",
            svc.split('.').take(2).collect::<Vec<_>>().join(".")
        );
    }
    format!(
        "{:<12} {:<7} {:<8} {:<28} {:<28} {:<10} {:>9} {:>9} {:>7} {}",
        time,
        ev["event"].as_str().unwrap_or_default(),
        ev["direction"].as_str().unwrap_or_default(),
        peer(&ev["src"]),
        dst,
        security,
        num("bytes_sent"),
        num("bytes_received"),
        num("duration_ms"),
        flags
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::net::TcpListener;
    use std::time::Duration;

    fn args(target: Option<&str>) -> TapArgs {
        TapArgs {
            target: target.map(String::from),
            ztunnels: vec![],
            waypoints: vec![],
            cluster: Default::default(),
            limit: Some(3),
            duration: Some(Duration::from_secs(2)),
            output: Format::Table,
        }
    }

    #[test]
    fn query_from_arguments() {
        assert_eq!(query(&args(None)).expect("q"), "?limit=3&duration=2000ms");
        assert_eq!(
            query(&args(Some("demo/client"))).expect("q"),
            "?namespace=demo&workload=client&limit=3&duration=2000ms"
        );
        assert!(query(&args(Some("/x"))).is_err());
        assert!(query(&args(Some("demo/"))).is_err());
    }

    #[test]
    fn rows_name_both_sides_security_and_outcome() {
        let ev: Value = serde_json::from_str(
            r#"{"time_ms":0,"event":"close","direction":"outbound",
                "src":{"addr":"10.0.0.1:4000","workload":"client","namespace":"demo","identity":"i"},
                "dst":{"addr":"10.96.0.10:80","workload":"server","namespace":"demo","identity":"j"},
                "dst_service":"server.demo.svc.cluster.local","security":"mutual_tls",
                "bytes_sent":10,"bytes_received":20,"duration_ms":3,"response_flags":"-"}"#,
        )
        .expect("json");
        let r = row(&ev);
        for part in [
            "00:00:00.000",
            "close",
            "outbound",
            "client.demo",
            "server.demo (server.demo)",
            "mTLS",
            "10",
            "20",
        ] {
            assert!(r.contains(part), "{part:?} missing in {r:?}");
        }
        let refused: Value = serde_json::from_str(
            r#"{"event":"refused","direction":"inbound","src":{"addr":"10.0.0.9:1"},"dst":{},
                "security":"unknown","response_flags":"DENY","error":"policy x"}"#,
        )
        .expect("json");
        let r = row(&refused);
        assert!(
            r.contains("10.0.0.9:1") && r.contains("plaintext") && r.contains("DENY policy x"),
            "{r}"
        );
        let dropped: Value =
            serde_json::from_str(r#"{"event":"dropped","count":7,"ztunnel":"z"}"#).expect("json");
        assert!(row(&dropped).contains("7 events dropped"));
    }

    /// The streaming reader against a server that sends chunked NDJSON in pieces, split
    /// mid-line and mid-chunk-header, as a real slow stream does.
    #[test]
    fn stream_lines_reassembles_chunked_ndjson() {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr").to_string();
        let server = std::thread::spawn(move || {
            let (mut s, _) = l.accept().expect("accept");
            let mut req = [0u8; 1024];
            let _ = s.read(&mut req).expect("read");
            let body1 = b"{\"a\":1}\n{\"b\"";
            let body2 = b":2}\n";
            let parts: Vec<Vec<u8>> = vec![
                b"HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\ntransfer-encoding: chunked\r\n\r\n".to_vec(),
                format!("{:x}\r\n", body1.len()).into_bytes(),
                body1.to_vec(),
                b"\r\n".to_vec(),
                format!("{:x}", body2.len()).into_bytes(),
                b"\r\n".to_vec(),
                body2.to_vec(),
                b"\r\n0\r\n\r\n".to_vec(),
            ];
            for p in parts {
                s.write_all(&p).expect("write");
                s.flush().expect("flush");
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        let mut lines = Vec::new();
        http::stream_lines(&addr, "/debug/tap", Duration::from_secs(2), |l| {
            lines.push(String::from_utf8_lossy(l).into_owned());
            true
        })
        .expect("stream");
        server.join().expect("server");
        assert_eq!(lines, vec!["{\"a\":1}", "{\"b\":2}"]);
    }
}

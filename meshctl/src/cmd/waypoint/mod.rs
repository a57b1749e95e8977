//! `meshctl waypoint apply|list|status|delete`, as istioctl's: a waypoint is a Gateway of class
//! `istio-waypoint` with an HBONE listener on 15008, labelled `istio.io/waypoint-for`.
//!
//! Where the Gateway goes: with `--local CLUSTER` (or `MESHCTL_LOCAL`), a `meshctl local`
//! cluster — the object is written to its config directory and the waypoint itself runs as a
//! pod of the cluster (what Istio's waypoint controller does with a Deployment); otherwise the
//! config directory istiod-lite watches (`--config-dir` or `MESHCTL_CONFIG_DIR`), and whoever
//! runs the waypoint process starts it. Status (`Accepted`, `Programmed`) comes from
//! istiod-lite's `/debug/gateways`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::cli::{WaypointArgs, WaypointCommand};
use crate::cmd::{fetch_ok, Ctx, Target};
use crate::config::{self, env};
use crate::error::Error;
use crate::output::{write_data, Format, Table};

/// Where the Gateways live.
#[derive(Debug, PartialEq, Eq)]
enum Place {
    Local { cluster: String, dir: PathBuf },
    Files { config_dir: PathBuf, istiod: String },
}

impl Place {
    /// `--config-dir` and `--istiod` name the files' place, so either keeps `MESHCTL_LOCAL` out.
    fn resolve(a: &WaypointArgs, ctx: &Ctx<'_>) -> Result<Place, Error> {
        let addressed = a.config_dir.is_some() || a.istiod.is_some();
        if let Some(c) = a.cluster.resolve(addressed, ctx.env)? {
            return Ok(Place::Local {
                cluster: c.name,
                dir: c.dir,
            });
        }
        let config_dir = a
            .config_dir
            .clone()
            .or_else(|| ctx.env.get(env::CONFIG_DIR).filter(|s| !s.is_empty()).map(PathBuf::from))
            .ok_or_else(|| {
                Error::Usage(format!(
                    "where do waypoints go? give --local CLUSTER (a `meshctl local` cluster, or {}) or --config-dir DIR (istiod-lite's CONFIG_DIR, or {})",
                    env::LOCAL, env::CONFIG_DIR
                ))
            })?;
        Ok(Place::Files {
            config_dir,
            istiod: config::istiod(a.istiod.as_deref(), ctx.env)?,
        })
    }

    fn config_dir(&self) -> Result<PathBuf, Error> {
        match self {
            Place::Local { cluster, dir } => {
                Ok(crate::cmd::local::waypoint::config_dir(cluster, dir)?)
            }
            Place::Files { config_dir, .. } => Ok(config_dir.clone()),
        }
    }

    /// istiod-lite's view of every waypoint Gateway.
    fn statuses(&self, timeout: Duration) -> Result<Vec<Value>, Error> {
        let resp = match self {
            Place::Local { cluster, dir } => {
                crate::cmd::local::waypoint::istiod_get(cluster, dir, "/debug/gateways", timeout)?
            }
            Place::Files { istiod, .. } => fetch_ok(
                Target {
                    what: "istiod-lite",
                    addr: istiod,
                    hint: "pass --istiod ADDR (its MONITORING_ADDR) or set MESHCTL_ISTIOD",
                },
                "/debug/gateways",
                timeout,
            )?,
        };
        let v: Value = serde_json::from_slice(&resp.body)
            .map_err(|e| Error::Usage(format!("istiod-lite /debug/gateways is not JSON: {e}")))?;
        Ok(v.as_array().cloned().unwrap_or_default())
    }
}

fn gateway_file(dir: &Path, ns: &str, name: &str) -> PathBuf {
    dir.join(format!("gateway.{ns}.{name}.yaml"))
}

/// The Gateway object `waypoint apply` writes (the same shape istioctl generates).
pub fn gateway_yaml(ns: &str, name: &str, waypoint_for: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata:\n  name: {name}\n  namespace: {ns}\n  labels:\n    istio.io/waypoint-for: {waypoint_for}\nspec:\n  gatewayClassName: istio-waypoint\n  listeners:\n  - name: mesh\n    port: 15008\n    protocol: HBONE\n"
    )
}

fn condition<'a>(s: &'a Value, kind: &str) -> Option<&'a Value> {
    s["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind)
}

fn programmed(s: &Value) -> bool {
    condition(s, "Programmed").is_some_and(|c| c["status"] == "True")
}

/// Runs a `meshctl waypoint` command.
pub fn run(a: &WaypointArgs, ctx: &Ctx<'_>, out: &mut dyn Write) -> Result<(), Error> {
    let place = Place::resolve(a, ctx)?;
    let ns = a.namespace.clone();
    match &a.command {
        WaypointCommand::Apply(ap) => {
            let dir = place.config_dir()?;
            let file = gateway_file(&dir, &ns, &ap.name);
            let yaml = gateway_yaml(&ns, &ap.name, &ap.waypoint_for);
            let tmp = dir.join(format!(".{}.tmp", ap.name));
            std::fs::write(&tmp, &yaml).and_then(|()| std::fs::rename(&tmp, &file))?;
            writeln!(out, "waypoint {ns}/{} applied", ap.name)?;
            if let Place::Local { cluster, dir } = &place {
                crate::cmd::local::waypoint::start(
                    cluster,
                    dir,
                    &ns,
                    &ap.name,
                    &mut std::io::sink(),
                )?;
                if ap.enroll_namespace {
                    crate::cmd::local::waypoint::label_namespace(
                        cluster,
                        dir,
                        &ns,
                        Some(&ap.name),
                        &mut std::io::sink(),
                    )?;
                    writeln!(out, "namespace {ns} labelled with the waypoint {}", ap.name)?;
                }
            } else if ap.enroll_namespace {
                return Err(Error::Usage(format!(
                    "--enroll-namespace needs --local: with a config directory, add the label istio.io/use-waypoint: {} to the Namespace object {ns} yourself",
                    ap.name
                )));
            }
            if ap.wait {
                let start = Instant::now();
                loop {
                    let st = place.statuses(ctx.timeout)?;
                    let mine = st
                        .iter()
                        .find(|s| s["namespace"] == ns.as_str() && s["name"] == ap.name.as_str());
                    if mine.is_some_and(programmed) {
                        writeln!(out, "waypoint {ns}/{} is ready", ap.name)?;
                        break;
                    }
                    if start.elapsed() > ap.timeout {
                        let why = mine
                            .and_then(|s| condition(s, "Programmed"))
                            .map(|c| c["message"].as_str().unwrap_or_default().to_string())
                            .unwrap_or_else(|| "istiod-lite does not know the Gateway yet".into());
                        return Err(Error::Usage(format!(
                            "waypoint {ns}/{} not programmed within {:?}: {why}",
                            ap.name, ap.timeout
                        )));
                    }
                    if ctx.progress {
                        eprint!(".");
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
            Ok(())
        }
        WaypointCommand::Delete(d) => {
            if d.names.is_empty() && !d.all {
                return Err(Error::Usage(
                    "name the waypoints to delete, or --all".into(),
                ));
            }
            let dir = place.config_dir()?;
            let names: Vec<String> = if d.all {
                place
                    .statuses(ctx.timeout)?
                    .iter()
                    .filter(|s| s["namespace"] == ns.as_str())
                    .filter_map(|s| s["name"].as_str().map(String::from))
                    .collect()
            } else {
                d.names.clone()
            };
            for name in names {
                let file = gateway_file(&dir, &ns, &name);
                match std::fs::remove_file(&file) {
                    Ok(()) => writeln!(out, "waypoint {ns}/{name} deleted")?,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        return Err(Error::Usage(format!(
                            "waypoint {ns}/{name} not found ({} does not exist)",
                            file.display()
                        )))
                    }
                    Err(e) => return Err(e.into()),
                }
                if let Place::Local { cluster, dir } = &place {
                    crate::cmd::local::waypoint::stop(
                        cluster,
                        dir,
                        &ns,
                        &name,
                        &mut std::io::sink(),
                    )?;
                }
            }
            Ok(())
        }
        WaypointCommand::List(l) => {
            let all = place.statuses(ctx.timeout)?;
            let shown: Vec<&Value> = all
                .iter()
                .filter(|s| l.all_namespaces || s["namespace"] == ns.as_str())
                .collect();
            if !matches!(l.output, Format::Table | Format::Wide) {
                return write_data(out, l.output, &shown);
            }
            if shown.is_empty() {
                writeln!(out, "No waypoints found.")?;
                return Ok(());
            }
            let mut t = if l.all_namespaces {
                Table::new(&["NAMESPACE", "NAME", "FOR", "PROGRAMMED"])
            } else {
                Table::new(&["NAME", "FOR", "PROGRAMMED"])
            };
            for s in shown {
                let mut row = Vec::new();
                if l.all_namespaces {
                    row.push(s["namespace"].as_str().unwrap_or_default().to_string());
                }
                row.push(s["name"].as_str().unwrap_or_default().to_string());
                row.push(s["waypointFor"].as_str().unwrap_or_default().to_string());
                row.push(if programmed(s) { "True" } else { "False" }.to_string());
                t.row(row);
            }
            write!(out, "{}", t.render())?;
            Ok(())
        }
        WaypointCommand::Status(st) => {
            let all = place.statuses(ctx.timeout)?;
            let shown: Vec<&Value> = all
                .iter()
                .filter(|s| {
                    s["namespace"] == ns.as_str()
                        && st.name.as_ref().is_none_or(|n| s["name"] == n.as_str())
                })
                .collect();
            // The exit code says whether every waypoint is programmed, whatever the format.
            let pending = shown.iter().filter(|s| !programmed(s)).count();
            if !matches!(st.output, Format::Table | Format::Wide) {
                write_data(out, st.output, &shown)?;
                return if pending == 0 {
                    Ok(())
                } else {
                    Err(Error::CheckFailed(pending))
                };
            }
            if shown.is_empty() {
                return Err(Error::Usage(format!("no waypoint in namespace {ns}")));
            }
            let mut t = Table::new(&["NAMESPACE", "NAME", "STATUS", "TYPE", "REASON", "MESSAGE"]);
            for s in &shown {
                for c in s["conditions"].as_array().into_iter().flatten() {
                    let f = |k: &str| c[k].as_str().unwrap_or_default().to_string();
                    t.row(vec![
                        s["namespace"].as_str().unwrap_or_default().to_string(),
                        s["name"].as_str().unwrap_or_default().to_string(),
                        f("status"),
                        f("type"),
                        f("reason"),
                        f("message"),
                    ]);
                }
            }
            write!(out, "{}", t.render())?;
            if pending == 0 {
                Ok(())
            } else {
                Err(Error::CheckFailed(pending))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_object_is_an_istio_waypoint() {
        let y = gateway_yaml("app", "waypoint", "service");
        let v: serde_yaml_ng::Value = serde_yaml_ng::from_str(&y).expect("yaml");
        assert_eq!(v["kind"].as_str(), Some("Gateway"));
        assert_eq!(
            v["spec"]["gatewayClassName"].as_str(),
            Some("istio-waypoint")
        );
        assert_eq!(v["spec"]["listeners"][0]["port"].as_u64(), Some(15008));
        assert_eq!(
            v["spec"]["listeners"][0]["protocol"].as_str(),
            Some("HBONE")
        );
        assert_eq!(
            v["metadata"]["labels"]["istio.io/waypoint-for"].as_str(),
            Some("service")
        );
    }

    #[test]
    fn programmed_reads_the_condition() {
        let s: Value = serde_json::json!({"conditions": [
            {"type": "Accepted", "status": "True"},
            {"type": "Programmed", "status": "False"}]});
        assert!(!programmed(&s));
        let s: Value =
            serde_json::json!({"conditions": [{"type": "Programmed", "status": "True"}]});
        assert!(programmed(&s));
    }
}

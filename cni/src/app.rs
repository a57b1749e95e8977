//! Command dispatch: reads env and stdin, runs ADD/DEL/CHECK/VERSION, prints the result or the
//! CNI error object, returns the exit code.

use std::io::{Read, Write};

use serde_json::{json, Value};

use crate::agent::{self, Op, PodRef, Request};
use crate::config::{CniEnv, Command, Env, NetConf, SUPPORTED_VERSIONS};
use crate::error::CniError;
use mesh_inpod::rules;

/// Version used in output when the request's own cannot be read.
const FALLBACK_VERSION: &str = "1.0.0";

/// Runs the plugin against `env` and the process's stdin/stdout; returns the exit code.
pub fn main(env: &dyn Env) -> i32 {
    let mut input = Vec::new();
    let read = std::io::stdin()
        .read_to_end(&mut input)
        .map_err(CniError::Io);
    let (code, out) = match read {
        Ok(_) => run(env, &input),
        Err(e) => (1, Some(error_json(&e, FALLBACK_VERSION))),
    };
    if let Some(out) = out {
        let mut stdout = std::io::stdout().lock();
        // Nothing sensible is left to do if stdout is gone.
        let _ = writeln!(stdout, "{out}").and_then(|()| stdout.flush());
    }
    code
}

fn error_json(e: &CniError, version: &str) -> String {
    serde_json::to_string(&e.to_object(version)).unwrap_or_else(|_| {
        format!(
            "{{\"cniVersion\":\"{version}\",\"code\":{},\"msg\":\"error\"}}",
            e.code()
        )
    })
}

/// The request's `cniVersion` if it is one we speak, for error and VERSION output.
fn request_version(input: &[u8]) -> String {
    serde_json::from_slice::<Value>(input)
        .ok()
        .and_then(|v| v.get("cniVersion")?.as_str().map(str::to_string))
        .filter(|v| SUPPORTED_VERSIONS.contains(&v.as_str()))
        .unwrap_or_else(|| FALLBACK_VERSION.to_string())
}

/// Runs one invocation; returns the exit code and what to print on stdout.
pub fn run(env: &dyn Env, input: &[u8]) -> (i32, Option<String>) {
    let version = request_version(input);
    match dispatch(env, input, &version) {
        Ok(out) => (0, out),
        Err(e) => {
            tracing::error!(code = e.code(), error = %e, "CNI request failed");
            (1, Some(error_json(&e, &version)))
        }
    }
}

fn dispatch(env: &dyn Env, input: &[u8], version: &str) -> Result<Option<String>, CniError> {
    let cni_env = CniEnv::from_env(env)?;
    if cni_env.command == Command::Version {
        return Ok(Some(
            json!({"cniVersion": version, "supportedVersions": SUPPORTED_VERSIONS}).to_string(),
        ));
    }
    let conf = NetConf::parse(input)?;
    init_logging(&conf.log_level);
    tracing::debug!(env = ?cni_env, network = %conf.name, "CNI request");
    match cni_env.command {
        Command::Add => add(&cni_env, &conf).map(Some),
        Command::Del => del(&cni_env, &conf).map(|()| None),
        Command::Check => check(&cni_env).map(|()| None),
        Command::Version => unreachable!("handled above"),
    }
}

fn init_logging(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Stdout carries the CNI result; logs go to stderr, which runtimes capture.
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_env_filter(filter)
        .try_init();
}

/// The ADD output: `prevResult` unchanged, or an empty result of the request's version.
fn pass_through(conf: &NetConf) -> String {
    match &conf.prev_result {
        Some(prev) => prev.to_string(),
        None => json!({"cniVersion": conf.cni_version}).to_string(),
    }
}

fn add(env: &CniEnv, conf: &NetConf) -> Result<String, CniError> {
    let Some(pod) = &env.pod else {
        tracing::info!(container = %env.container_id, "no K8S_POD_NAMESPACE/K8S_POD_NAME, not a pod: skipping");
        return Ok(pass_through(conf));
    };
    let netns = env.netns.clone().unwrap_or_default();
    let req = Request {
        op: Op::Add,
        container_id: env.container_id.clone(),
        netns: netns.clone(),
        ifname: env.ifname.clone(),
        pod: PodRef::from(pod),
        ips: conf.pod_ips(),
        dns_capture: conf.dns_capture,
    };
    let answer = agent::call(&conf.ztunnel_socket, &req, agent::AGENT_TIMEOUT)?;
    if answer.enrolled {
        rules::install(&netns, conf.dns_capture).map_err(|e| CniError::Rules(e.to_string()))?;
        tracing::info!(pod.namespace = %pod.namespace, pod.name = %pod.name, netns = %netns.display(), "pod enrolled, in-pod redirection installed");
    } else {
        tracing::info!(pod.namespace = %pod.namespace, pod.name = %pod.name, "pod not in the mesh");
    }
    Ok(pass_through(conf))
}

fn del(env: &CniEnv, conf: &NetConf) -> Result<(), CniError> {
    if let Some(netns) = &env.netns {
        rules::remove(netns);
    }
    if let Some(pod) = &env.pod {
        let req = Request {
            op: Op::Del,
            container_id: env.container_id.clone(),
            netns: env.netns.clone().unwrap_or_default(),
            ifname: env.ifname.clone(),
            pod: PodRef::from(pod),
            ips: Vec::new(),
            dns_capture: conf.dns_capture,
        };
        // DEL must succeed as far as possible: the rules are gone with the pod, and a restarted
        // agent reconciles against the pods that still exist.
        if let Err(e) = agent::call(&conf.ztunnel_socket, &req, agent::AGENT_TIMEOUT) {
            tracing::warn!(error = %e, pod.namespace = %pod.namespace, pod.name = %pod.name, "could not tell the node agent about DEL");
        }
    }
    Ok(())
}

fn check(env: &CniEnv) -> Result<(), CniError> {
    let netns = env.netns.clone().unwrap_or_default();
    if !netns.exists() {
        return Err(CniError::CheckFailed(format!(
            "netns {} does not exist",
            netns.display()
        )));
    }
    // Pods outside the mesh have none of our rules; enrolled pods must have all of them.
    let state = rules::check(&netns).map_err(|e| CniError::CheckFailed(e.to_string()))?;
    tracing::debug!(?state, netns = %netns.display(), "CHECK");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn version() {
        let (code, out) = run(
            &env(&[("CNI_COMMAND", "VERSION")]),
            br#"{"cniVersion":"0.4.0"}"#,
        );
        assert_eq!(code, 0);
        let v: Value = serde_json::from_str(&out.expect("output")).expect("json");
        assert_eq!(v["cniVersion"], "0.4.0");
        assert_eq!(
            v["supportedVersions"],
            json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
        );
    }

    #[test]
    fn bad_config_is_code_4() {
        let e = env(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "c"),
            ("CNI_NETNS", "/run/netns/x"),
            ("CNI_IFNAME", "eth0"),
        ]);
        let (code, out) = run(&e, b"not json");
        assert_eq!(code, 1);
        let v: Value = serde_json::from_str(&out.expect("output")).expect("json");
        assert_eq!(v["code"], 4);
        assert_eq!(v["cniVersion"], FALLBACK_VERSION);
    }

    #[test]
    fn add_without_pod_passes_through() {
        let e = env(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "c"),
            ("CNI_NETNS", "/run/netns/x"),
            ("CNI_IFNAME", "eth0"),
        ]);
        let prev = json!({"cniVersion":"1.0.0","ips":[{"address":"10.0.0.2/24"}]});
        let input = json!({"cniVersion":"1.0.0","name":"n","type":"ambient-cni",
            "ztunnel_socket":"/nonexistent/sock","prevResult":prev});
        let (code, out) = run(&e, input.to_string().as_bytes());
        assert_eq!(code, 0);
        let v: Value = serde_json::from_str(&out.expect("output")).expect("json");
        assert_eq!(v, prev);
    }
}

//! Processes the local cluster runs: started inside a network namespace with
//! `nsenter --net=/run/netns/<ns> -- <program>` (nsenter execs the program, so the pid we see is
//! the program's), detached into their own process group so they outlive `meshctl local up`,
//! output appended to a log file. They are identified by pid *and* start time, so a recycled pid
//! is never signalled.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use super::error::LocalError;
use super::netns;

/// How long a process gets to exit after SIGTERM before SIGKILL.
pub const TERM_GRACE: Duration = Duration::from_secs(5);
const POLL: Duration = Duration::from_millis(20);

/// A process we started.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Proc {
    /// Process id.
    pub pid: u32,
    /// Start time in clock ticks since boot (`/proc/<pid>/stat` field 22).
    pub start_time: u64,
    /// Where its stdout and stderr go.
    pub log: PathBuf,
    /// The command line (for status and troubleshooting).
    pub command: Vec<String>,
}

impl Proc {
    /// True while this very process (same pid and start time) runs; zombies count as gone.
    pub fn alive(&self) -> bool {
        matches!(stat(self.pid), Some((state, start)) if state != 'Z' && state != 'X' && start == self.start_time)
    }

    /// SIGTERM, then SIGKILL after [`TERM_GRACE`]; returns once it is gone. A process that is
    /// already gone is fine.
    pub fn stop(&self) -> Result<(), LocalError> {
        terminate(self.pid, || self.alive())
    }

    /// SIGKILL (a crash, no drain); returns once it is gone.
    pub fn kill(&self) -> Result<(), LocalError> {
        if !self.alive() {
            return Ok(());
        }
        if let Ok(raw) = i32::try_from(self.pid) {
            let _ = kill(Pid::from_raw(raw), Signal::SIGKILL);
        }
        if wait_gone(&|| self.alive(), Duration::from_secs(5)) {
            Ok(())
        } else {
            Err(LocalError::Invalid(format!(
                "process {} survived SIGKILL",
                self.pid
            )))
        }
    }
}

/// State letter and start time of `pid`, from `/proc/<pid>/stat`.
fn stat(pid: u32) -> Option<(char, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses: parse after the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); field 22 (starttime) is index 19.
    let state = fields.first()?.chars().next()?;
    let start = fields.get(19)?.parse().ok()?;
    Some((state, start))
}

fn terminate(pid: u32, alive: impl Fn() -> bool) -> Result<(), LocalError> {
    if !alive() {
        return Ok(());
    }
    let Ok(raw) = i32::try_from(pid) else {
        return Ok(());
    };
    let pid_t = Pid::from_raw(raw);
    tracing::debug!(pid, "SIGTERM");
    let _ = kill(pid_t, Signal::SIGTERM);
    if wait_gone(&alive, TERM_GRACE) {
        return Ok(());
    }
    tracing::warn!(pid, "did not exit after SIGTERM; SIGKILL");
    let _ = kill(pid_t, Signal::SIGKILL);
    if wait_gone(&alive, Duration::from_secs(5)) {
        return Ok(());
    }
    Err(LocalError::Invalid(format!(
        "process {pid} survived SIGKILL"
    )))
}

fn wait_gone(alive: &impl Fn() -> bool, timeout: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if !alive() {
            return true;
        }
        std::thread::sleep(POLL);
    }
    !alive()
}

/// What to start.
pub struct Spec<'a> {
    /// Network namespace to run in.
    pub netns: &'a str,
    /// Program and arguments.
    pub argv: &'a [String],
    /// Environment: `None` inherits meshctl's; `Some` is the complete environment.
    pub env: Option<Vec<(String, String)>>,
    /// Log file (appended).
    pub log: &'a Path,
}

/// Starts `spec` inside its namespace. Returns the child (to notice an early exit while this
/// invocation waits for it) and its [`Proc`] record.
pub fn spawn(spec: &Spec<'_>) -> Result<(Child, Proc), LocalError> {
    let Some((program, args)) = spec.argv.split_first() else {
        return Err(LocalError::Invalid("empty command".into()));
    };
    let file = File::options()
        .create(true)
        .append(true)
        .open(spec.log)
        .map_err(LocalError::io(spec.log))?;
    let err = file.try_clone().map_err(LocalError::io(spec.log))?;
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net={}", netns::path(spec.netns).display()))
        .arg("--")
        .arg(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::from(file))
        .stderr(Stdio::from(err))
        // Own process group: a Ctrl-C in the terminal that ran `meshctl local up` must not
        // take the cluster down with it.
        .process_group(0);
    if let Some(env) = &spec.env {
        cmd.env_clear().envs(env.iter().map(|(k, v)| (k, v)));
    }
    let child = cmd.spawn().map_err(|e| LocalError::Invalid(format!(
        "cannot start {program:?} in network namespace {}: {e} (is nsenter installed? it is in util-linux)",
        spec.netns
    )))?;
    let pid = child.id();
    // The start time is readable as soon as the process exists (fork happened in spawn).
    let start_time = stat(pid).map(|(_, s)| s).unwrap_or(0);
    let proc = Proc {
        pid,
        start_time,
        log: spec.log.to_path_buf(),
        command: spec.argv.to_vec(),
    };
    tracing::info!(pid, netns = spec.netns, command = ?spec.argv, log = %spec.log.display(), "started");
    Ok((child, proc))
}

/// Pids of every process whose network namespace is `/run/netns/<name>` (what
/// `ip netns pids` prints). Used by cleanup to stop anything still inside a namespace we are
/// about to delete (e.g. a background job left by `exec`).
pub fn pids_in_netns(name: &str) -> Vec<u32> {
    let Ok(target) = std::fs::metadata(netns::path(name)) else {
        return Vec::new();
    };
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let me = std::process::id();
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me)
        .filter(|pid| {
            std::fs::metadata(format!("/proc/{pid}/ns/net"))
                .is_ok_and(|m| m.ino() == target.ino() && m.dev() == target.dev())
        })
        .collect()
}

/// Stops every process left inside namespace `name` (SIGTERM, then SIGKILL).
pub fn stop_all_in_netns(name: &str) -> Vec<String> {
    let mut problems = Vec::new();
    for pid in pids_in_netns(name) {
        let start = stat(pid).map(|(_, s)| s);
        let same = move || matches!(stat(pid), Some((st, s)) if st != 'Z' && Some(s) == start);
        tracing::info!(
            pid,
            netns = name,
            "stopping a process left in the namespace"
        );
        if let Err(e) = terminate(pid, same) {
            problems.push(format!("namespace {name}: {e}"));
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_is_alive_and_identified_by_start_time() {
        let me = std::process::id();
        let (state, start) = stat(me).unwrap();
        assert_ne!(state, 'Z');
        let p = Proc {
            pid: me,
            start_time: start,
            log: PathBuf::new(),
            command: vec![],
        };
        assert!(p.alive());
        let other = Proc {
            start_time: start + 1,
            ..p
        };
        assert!(!other.alive(), "a recycled pid must not count as ours");
    }
}

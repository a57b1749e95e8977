//! Isolation helpers: a machine-wide lock for the fixed loopback pod addresses, and network
//! namespaces (root only) for the capture test, which runs a whole mesh inside one.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr as UnixAddr, UnixListener};
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use anyhow::Context;

/// Env var set for a test process re-executed inside a network namespace (value: its name).
pub const IN_NETNS: &str = "MESH_E2E_IN_NETNS";

/// Held while a mesh uses the shared loopback addresses (pod IPs `127.0.1.x:15008`, apps).
/// An abstract unix socket: the kernel releases it when the process dies, however it dies, and
/// it is per network namespace, so meshes inside their own namespace never wait on it.
pub struct LoopbackLock {
    _listener: UnixListener,
}

impl LoopbackLock {
    /// Waits (up to 30 minutes) until no other mesh test on this machine holds the lock.
    pub async fn acquire() -> anyhow::Result<Self> {
        let addr = UnixAddr::from_abstract_name(b"ambient-rs/mesh-e2e/loopback")?;
        let start = Instant::now();
        let mut told = false;
        loop {
            match UnixListener::bind_addr(&addr) {
                Ok(l) => {
                    if told {
                        eprintln!("got the mesh-e2e lock after {:?}", start.elapsed());
                    }
                    return Ok(LoopbackLock { _listener: l });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                    if !told {
                        eprintln!("another mesh-e2e test holds the loopback addresses; waiting");
                        told = true;
                    }
                    anyhow::ensure!(
                        start.elapsed() < Duration::from_secs(1800),
                        "waited 30 minutes for the mesh-e2e lock"
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(e).context("binding the mesh-e2e lock socket"),
            }
        }
    }
}

/// True when the effective user is root (from /proc, no libc needed).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

/// True when `prog` is on PATH (or in /sbin, /usr/sbin, which PATH may lack for non-root).
pub fn have(prog: &str) -> bool {
    let path = std::env::var("PATH").unwrap_or_default();
    let mut dirs: Vec<&str> = path.split(':').collect();
    dirs.extend(["/usr/sbin", "/sbin"]);
    dirs.iter().any(|d| Path::new(d).join(prog).is_file())
}

/// A network namespace created with `ip netns add`, with `lo` up; deleted on drop.
pub struct NetNs {
    /// Its name (`mesh-e2e-<random>`).
    pub name: String,
}

impl NetNs {
    /// Creates `mesh-e2e-<random>` and brings its loopback up.
    pub fn create() -> anyhow::Result<Self> {
        let name = format!("mesh-e2e-{:08x}", rand::random::<u32>());
        run(Command::new("ip").args(["netns", "add", &name]))?;
        let ns = NetNs { name };
        run(Command::new("ip").args(["-n", &ns.name, "link", "set", "lo", "up"]))?;
        Ok(ns)
    }

    /// `ip netns exec <name> <program>`.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// Re-runs the current test executable's test `test_name` inside this namespace (with
    /// [`IN_NETNS`] set) and returns its output.
    pub fn run_test_inside(&self, test_name: &str) -> anyhow::Result<Output> {
        let exe = std::env::current_exe()?;
        let mut c = self.command(exe);
        c.args(["--exact", test_name, "--nocapture", "--test-threads", "1"])
            .env(IN_NETNS, &self.name);
        c.output()
            .context("running the test inside the network namespace")
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .status();
    }
}

/// Name of the namespace this process was re-executed in, if any.
pub fn inside() -> Option<String> {
    std::env::var(IN_NETNS).ok().filter(|v| !v.is_empty())
}

/// Runs `cmd`, failing with its stderr.
pub fn run(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    anyhow::ensure!(
        out.status.success(),
        "{cmd:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

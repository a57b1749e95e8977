//! Host (pre-install) checks: kernel, netfilter, capabilities, CNI plugins. The filesystem is
//! read through [`Host`] so tests describe a machine instead of depending on this one.

use std::path::Path;

use super::{Line, Status};

/// What the host checks read.
pub trait Host {
    /// A file's contents.
    fn read(&self, path: &str) -> Option<String>;
    /// True if `path` exists.
    fn exists(&self, path: &str) -> bool;
    /// `PATH`.
    fn path_var(&self) -> String;
}

/// This machine.
pub struct RealHost;

impl Host for RealHost {
    fn read(&self, path: &str) -> Option<String> {
        std::fs::read_to_string(path).ok()
    }
    fn exists(&self, path: &str) -> bool {
        Path::new(path).exists()
    }
    fn path_var(&self) -> String {
        std::env::var("PATH").unwrap_or_default()
    }
}

const CATEGORY: &str = "host";
/// iptables' table list; present once the ip_tables module is loaded.
pub const IPTABLES_NAMES: &str = "/proc/net/ip_tables_names";
/// Kernel release.
pub const OSRELEASE: &str = "/proc/sys/kernel/osrelease";
/// This process's status (capabilities, uid).
pub const PROC_STATUS: &str = "/proc/self/status";
/// Where CNI plugins live (the standard directory, then Debian's).
pub const CNI_DIRS: [&str; 2] = ["/opt/cni/bin", "/usr/lib/cni"];
/// The reference plugins local mode wires pods with.
pub const CNI_PLUGINS: [&str; 3] = ["bridge", "host-local", "loopback"];
/// Capabilities ztunnel needs for in-pod capture: (bit, name).
pub const CAPS: [(u32, &str); 3] = [
    (12, "CAP_NET_ADMIN"),
    (13, "CAP_NET_RAW"),
    (21, "CAP_SYS_ADMIN"),
];

fn line(status: Status, message: String, hint: Option<&str>) -> Line {
    Line {
        category: CATEGORY.to_string(),
        status,
        message,
        hint: hint.map(str::to_string),
    }
}

/// Every host check, in order.
pub fn checks(host: &dyn Host) -> Vec<Line> {
    vec![
        kernel(host),
        netfilter(host),
        capabilities(host),
        cni_plugins(host),
    ]
}

fn kernel(host: &dyn Host) -> Line {
    match host.read(OSRELEASE) {
        Some(r) => line(Status::Ok, format!("Linux kernel {}", r.trim()), None),
        None => line(
            Status::Fail,
            format!("cannot read {OSRELEASE}: not a Linux host?"),
            Some("ztunnel's capture and network namespaces need Linux"),
        ),
    }
}

fn find_binary(host: &dyn Host, name: &str) -> Option<String> {
    let path = host.path_var();
    let found = path
        .split(':')
        .filter(|d| !d.is_empty())
        .chain(["/usr/sbin", "/sbin"])
        .map(|d| format!("{}/{name}", d.trim_end_matches('/')))
        .find(|p| host.exists(p));
    found
}

fn netfilter(host: &dyn Host) -> Line {
    let mut found = Vec::new();
    if host.exists(IPTABLES_NAMES) {
        found.push(format!("iptables ({IPTABLES_NAMES})"));
    }
    if let Some(nft) = find_binary(host, "nft") {
        found.push(format!("nftables ({nft})"));
    }
    if found.is_empty() {
        line(
            Status::Fail,
            format!("no netfilter support: {IPTABLES_NAMES} is absent and no nft binary is on PATH"),
            Some("install nftables (apt-get install nftables) or load ip_tables (modprobe ip_tables): in-pod capture rules need one of them"),
        )
    } else {
        line(
            Status::Ok,
            format!("netfilter available: {}", found.join(", ")),
            None,
        )
    }
}

fn status_field<'a>(status: &'a str, key: &str) -> Option<&'a str> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .map(str::trim)
}

fn capabilities(host: &dyn Host) -> Line {
    let Some(status) = host.read(PROC_STATUS) else {
        return line(
            Status::Warn,
            format!("cannot read {PROC_STATUS}: capabilities unknown"),
            None,
        );
    };
    let eff = status_field(&status, "CapEff").and_then(|v| u64::from_str_radix(v, 16).ok());
    let euid = status_field(&status, "Uid")
        .and_then(|v| v.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u32>().ok());
    let Some(eff) = eff else {
        return line(
            Status::Warn,
            format!("no CapEff in {PROC_STATUS}: capabilities unknown"),
            None,
        );
    };
    let missing: Vec<&str> = CAPS
        .iter()
        .filter(|(bit, _)| eff & (1u64 << bit) == 0)
        .map(|(_, n)| *n)
        .collect();
    if missing.is_empty() {
        let names: Vec<&str> = CAPS.iter().map(|(_, n)| *n).collect();
        return line(
            Status::Ok,
            format!("capabilities for traffic capture: {}", names.join(", ")),
            None,
        );
    }
    let msg = format!("missing capabilities: {}", missing.join(", "));
    if euid == Some(0) {
        line(
            Status::Fail,
            format!("{msg} although running as root"),
            Some("a root without these capabilities (e.g. an unprivileged container) cannot set up in-pod capture; grant them or run ztunnel privileged"),
        )
    } else {
        line(
            Status::Warn,
            format!("{msg} (not root)"),
            Some("transparent capture needs root (or these capabilities); without them local mode falls back to explicit mode: apps use ztunnel's SOCKS5 port"),
        )
    }
}

fn cni_plugins(host: &dyn Host) -> Line {
    let mut found_in = Vec::new();
    let mut missing = Vec::new();
    for p in CNI_PLUGINS {
        match CNI_DIRS.iter().find(|d| host.exists(&format!("{d}/{p}"))) {
            Some(d) => {
                if !found_in.contains(d) {
                    found_in.push(*d);
                }
            }
            None => missing.push(p),
        }
    }
    if missing.is_empty() {
        line(
            Status::Ok,
            format!(
                "CNI plugins {} found in {}",
                CNI_PLUGINS.join(", "),
                found_in.join(", ")
            ),
            None,
        )
    } else {
        line(
            Status::Warn,
            format!(
                "CNI plugins missing: {} (looked in {})",
                missing.join(", "),
                CNI_DIRS.join(", ")
            ),
            Some("apt-get install containernetworking-plugins: local mode wires simulated pods with them (explicit SOCKS5 mode does not need them)"),
        )
    }
}

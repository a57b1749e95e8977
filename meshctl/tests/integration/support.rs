//! Helpers for meshctl's integration tests: the real istiod-lite and ztunnel binaries on
//! loopback ports, a tiny HTTP server for crafted answers, and running `meshctl` itself.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long anything is allowed to take to become ready.
pub const READY_WITHIN: Duration = Duration::from_secs(30);

/// Directory of `istiod-lite` and `ztunnel`: `$MESH_BIN_DIR`, else next to this test binary
/// (`target/debug/deps/..` -> `target/debug`).
pub fn bin(name: &str) -> PathBuf {
    let dir = match std::env::var_os("MESH_BIN_DIR").filter(|d| !d.is_empty()) {
        Some(d) => PathBuf::from(d),
        None => {
            let exe = std::env::current_exe().expect("test executable path");
            let mut d = exe.parent().expect("parent").to_path_buf();
            if d.file_name().is_some_and(|n| n == "deps") {
                d.pop();
            }
            d
        }
    };
    let p = dir.join(name);
    assert!(
        p.is_file(),
        "{} not found: build the binaries first (`cargo build --bins` or `make test`), or set MESH_BIN_DIR",
        p.display()
    );
    p
}

/// A port free on `ip` right now (bound and released; good enough on loopback).
pub fn free_port(ip: Ipv4Addr) -> u16 {
    TcpListener::bind((ip, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// `127.0.0.1:<free port>`.
pub fn free_addr() -> String {
    format!("127.0.0.1:{}", free_port(Ipv4Addr::LOCALHOST))
}

/// A child process with output in a log file; killed on drop.
pub struct Proc {
    pub name: String,
    child: Option<Child>,
    pub log: PathBuf,
}

impl Proc {
    pub fn spawn(name: &str, mut cmd: Command, log_dir: &Path) -> Proc {
        let log = log_dir.join(format!("{name}.log"));
        let f = std::fs::File::create(&log).expect("log file");
        cmd.stdin(Stdio::null())
            .stdout(f.try_clone().expect("dup"))
            .stderr(f);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        Proc {
            name: name.into(),
            child: Some(child),
            log,
        }
    }

    /// Panics (with the log) if the process has exited.
    pub fn assert_running(&mut self) {
        if let Some(c) = self.child.as_mut() {
            if let Ok(Some(status)) = c.try_wait() {
                panic!(
                    "{} exited with {status}:\n{}",
                    self.name,
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
        }
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Status of one GET, or None when nothing answers.
pub fn get_status(addr: &str, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect_timeout(&addr.parse().ok()?, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    buf.split(' ').nth(1)?.parse().ok()
}

/// Polls `addr` `path` until it answers 200 (the component's own readiness signal).
pub fn wait_ready(addr: &str, path: &str, proc: &mut Proc) {
    let deadline = Instant::now() + READY_WITHIN;
    let mut pause = Duration::from_millis(10);
    loop {
        if get_status(addr, path) == Some(200) {
            return;
        }
        proc.assert_running();
        assert!(
            Instant::now() < deadline,
            "{} not ready at http://{addr}{path} within {READY_WITHIN:?}:\n{}",
            proc.name,
            std::fs::read_to_string(&proc.log).unwrap_or_default()
        );
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}

/// Result of one meshctl run.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Runs the meshctl under test with `args` and extra environment (MESHCTL_* of the caller
/// are removed so a developer's shell does not leak in).
pub fn meshctl(args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_meshctl"));
    cmd.args(args)
        .env_remove("MESHCTL_ISTIOD")
        .env_remove("MESHCTL_ZTUNNELS")
        .env_remove("MESHCTL_PROMETHEUS")
        .env_remove("MESHCTL_LOCAL")
        .envs(env.iter().copied())
        .stdin(Stdio::null());
    let Output {
        status,
        stdout,
        stderr,
    } = cmd.output().expect("running meshctl");
    Run {
        code: status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    }
}

/// An HTTP date for "now" (what a real server puts in Date).
pub fn http_date_now() -> String {
    let f = time::macros::format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    time::OffsetDateTime::now_utc().format(&f).expect("date")
}

/// Reads a request's head up to its blank line, byte by byte (nothing of a body is consumed);
/// None when the connection ends or times out first.
fn read_head(s: &mut TcpStream) -> Option<String> {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut b) {
            Ok(1) => head.push(b[0]),
            _ => return None,
        }
    }
    Some(String::from_utf8_lossy(&head).into_owned())
}

type Handler = dyn Fn(&str) -> (u16, String) + Send + Sync;

/// A one-thread HTTP/1.1 server on 127.0.0.1 answering each GET with `handler(path)`.
pub struct FakeServer {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FakeServer {
    pub fn start(handler: impl Fn(&str) -> (u16, String) + Send + Sync + 'static) -> FakeServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let stop = Arc::new(AtomicBool::new(false));
        let handler: Arc<Handler> = Arc::new(handler);
        let stop2 = stop.clone();
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::Acquire) {
                    return;
                }
                let Ok(mut s) = conn else { continue };
                let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                let Some(head) = read_head(&mut s) else {
                    continue;
                };
                let path = head.split(' ').nth(1).unwrap_or("/").to_string();
                let (status, body) = handler(&path);
                let _ = write!(
                    s,
                    "HTTP/1.1 {status} X\r\ncontent-length: {}\r\ndate: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len(),
                    http_date_now()
                );
            }
        });
        FakeServer {
            addr,
            stop,
            thread: Some(thread),
        }
    }

    pub fn addr(&self) -> String {
        self.addr.to_string()
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The machine-wide lock the end-to-end tests (tests/e2e) hold while they use the fixed pod
/// addresses 127.0.1.x with Istio's ports: the same abstract unix socket, so a test here that
/// binds 127.0.1.x:15008 or :8080 never runs at the same time as one of them.
pub struct LoopbackLock {
    _listener: std::os::unix::net::UnixListener,
}

impl LoopbackLock {
    /// Waits (polling: a bind is the only way to ask) until nobody else holds it.
    pub fn acquire() -> LoopbackLock {
        use std::os::linux::net::SocketAddrExt;
        let addr =
            std::os::unix::net::SocketAddr::from_abstract_name(b"ambient-rs/mesh-e2e/loopback")
                .expect("abstract socket name");
        let start = Instant::now();
        loop {
            match std::os::unix::net::UnixListener::bind_addr(&addr) {
                Ok(l) => return LoopbackLock { _listener: l },
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                    assert!(
                        start.elapsed() < Duration::from_secs(1800),
                        "waited 30 minutes for the mesh-e2e loopback lock"
                    );
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => panic!("binding the mesh-e2e lock socket: {e}"),
            }
        }
    }
}

/// A TCP connection from `from` (a pod IP: explicit mode tells callers apart by it) to
/// `dest` through the SOCKS5 proxy at `proxy` (RFC 1928 CONNECT, no authentication).
pub fn socks_connect(
    proxy: &str,
    from: Ipv4Addr,
    dest: std::net::SocketAddrV4,
) -> std::io::Result<TcpStream> {
    use nix::sys::socket::{bind, connect, socket, AddressFamily, SockFlag, SockType, SockaddrIn};
    use std::os::fd::AsRawFd;
    let proxy: std::net::SocketAddrV4 = proxy
        .parse()
        .map_err(|e| std::io::Error::other(format!("{proxy}: {e}")))?;
    let fd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    bind(
        fd.as_raw_fd(),
        &SockaddrIn::from(std::net::SocketAddrV4::new(from, 0)),
    )?;
    connect(fd.as_raw_fd(), &SockaddrIn::from(proxy))?;
    let mut s = TcpStream::from(fd);
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(&[5, 1, 0])?;
    let mut reply = [0u8; 2];
    s.read_exact(&mut reply)?;
    if reply != [5, 0] {
        return Err(std::io::Error::other(format!(
            "SOCKS5 greeting answered {reply:?}"
        )));
    }
    let mut req = vec![5, 1, 0, 1];
    req.extend(dest.ip().octets());
    req.extend(dest.port().to_be_bytes());
    s.write_all(&req)?;
    let mut head = [0u8; 10];
    s.read_exact(&mut head)?;
    if head[1] != 0 {
        return Err(std::io::Error::other(format!(
            "SOCKS5 CONNECT {dest} answered {:#04x}",
            head[1]
        )));
    }
    Ok(s)
}

/// One short HTTP/1.0 exchange through the mesh: the whole answer.
pub fn http_get_via(
    proxy: &str,
    from: Ipv4Addr,
    dest: std::net::SocketAddrV4,
) -> std::io::Result<String> {
    let mut s = socks_connect(proxy, from, dest)?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: server\r\n\r\n")?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    Ok(body)
}

/// The server pod's app: answers every request on each of its ports with a fixed HTTP/1.0
/// reply, then closes. Stops on drop.
pub struct App {
    addrs: Vec<SocketAddr>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

/// The app's reply (fixed, so byte counts depend only on the request).
pub const APP_REPLY: &str = "HTTP/1.0 200 OK\r\ncontent-length: 6\r\n\r\nhello\n";

impl App {
    pub fn start(ip: Ipv4Addr, ports: &[u16]) -> App {
        let stop = Arc::new(AtomicBool::new(false));
        let mut addrs = Vec::new();
        let mut threads = Vec::new();
        for &port in ports {
            let l = TcpListener::bind((ip, port))
                .unwrap_or_else(|e| panic!("app cannot listen on {ip}:{port}: {e}"));
            addrs.push(l.local_addr().expect("addr"));
            let stop = stop.clone();
            threads.push(std::thread::spawn(move || {
                for conn in l.incoming() {
                    if stop.load(Ordering::Acquire) {
                        return;
                    }
                    let Ok(mut s) = conn else { continue };
                    std::thread::spawn(move || {
                        let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
                        if read_head(&mut s).is_some() {
                            let _ = s.write_all(APP_REPLY.as_bytes());
                        }
                    });
                }
            }));
        }
        App {
            addrs,
            stop,
            threads,
        }
    }
}

impl Drop for App {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        for a in &self.addrs {
            let _ = TcpStream::connect(a);
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

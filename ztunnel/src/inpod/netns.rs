//! A pod's network namespace, and the sockets ztunnel creates in it.
//!
//! A socket belongs to the netns of the thread that created it, for its whole life. So each
//! enrolled pod gets one dedicated OS thread that joined the pod's netns (`setns`) once and then
//! only creates sockets on request; everything else (binding, connecting, I/O) happens on the
//! tokio runtime as usual. Every socket made here carries ztunnel's packet mark, so the in-pod
//! rules let ztunnel's own traffic through instead of redirecting it back.

use std::fs::File;
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::sync::oneshot;

type Job = Box<dyn FnOnce() + Send>;

/// Why a netns could not be used.
#[derive(thiserror::Error, Debug)]
pub enum NetnsError {
    #[error("cannot open netns {path}: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error("{path} is not a network namespace (setns failed: {source})")]
    NotNetns { path: PathBuf, source: nix::Error },
    #[error("cannot start the thread for netns {path}: {source}")]
    Thread { path: PathBuf, source: io::Error },
}

/// Identity of a netns (device and inode of its nsfs file): the same path may later name a
/// different namespace (a pod recreated under the same name).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NetnsId {
    pub dev: u64,
    pub ino: u64,
}

impl NetnsId {
    /// The id of the netns at `path` now.
    pub fn of(path: &Path) -> io::Result<NetnsId> {
        let m = std::fs::metadata(path)?;
        Ok(NetnsId {
            dev: m.dev(),
            ino: m.ino(),
        })
    }
}

/// A handle on one pod netns with its socket-making thread; dropping it ends the thread.
pub struct Netns {
    path: PathBuf,
    id: NetnsId,
    mark: Option<u32>,
    jobs: std::sync::Mutex<mpsc::Sender<Job>>,
}

impl std::fmt::Debug for Netns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Netns")
            .field("path", &self.path)
            .field("id", &self.id)
            .finish()
    }
}

impl Netns {
    /// Opens the netns at `path` and starts its thread; fails if `path` is not a netns.
    pub fn open(path: &Path, mark: Option<u32>) -> Result<Netns, NetnsError> {
        let file = File::open(path).map_err(|source| NetnsError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        let m = file.metadata().map_err(|source| NetnsError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        let id = NetnsId {
            dev: m.dev(),
            ino: m.ino(),
        };
        let (tx, rx) = mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = mpsc::sync_channel::<nix::Result<()>>(1);
        let name = format!("netns-{}", id.ino);
        std::thread::Builder::new()
            .name(name)
            .stack_size(64 * 1024)
            .spawn(move || {
                // The only thing this thread ever does in its netns is create sockets.
                let joined = nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET);
                let ok = joined.is_ok();
                let _ = ready_tx.send(joined);
                if !ok {
                    return;
                }
                drop(file);
                while let Ok(job) = rx.recv() {
                    job();
                }
            })
            .map_err(|source| NetnsError::Thread {
                path: path.to_path_buf(),
                source,
            })?;
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(source)) => {
                return Err(NetnsError::NotNetns {
                    path: path.to_path_buf(),
                    source,
                })
            }
            Err(_) => {
                return Err(NetnsError::Thread {
                    path: path.to_path_buf(),
                    source: io::Error::other("netns thread ended before joining"),
                })
            }
        }
        Ok(Netns {
            path: path.to_path_buf(),
            id,
            mark,
            jobs: std::sync::Mutex::new(tx),
        })
    }

    /// Where the netns was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The namespace's identity.
    pub fn id(&self) -> NetnsId {
        self.id
    }

    /// Runs `f` on the netns thread and returns its result.
    async fn run<T, F>(&self, f: F) -> io::Result<T>
    where
        T: Send + 'static,
        F: FnOnce() -> io::Result<T> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = tx.send(f());
        });
        self.jobs
            .lock()
            .map_err(|_| io::Error::other("netns thread lock poisoned"))?
            .send(job)
            .map_err(|_| io::Error::other("netns thread is gone"))?;
        rx.await
            .map_err(|_| io::Error::other("netns thread dropped the request"))?
    }

    /// A marked, non-blocking, unconnected TCP socket in this netns, ready for `connect`.
    pub async fn tcp_socket(&self, ipv4: bool) -> io::Result<tokio::net::TcpSocket> {
        let mark = self.mark;
        let s = self
            .run(move || {
                let domain = if ipv4 { Domain::IPV4 } else { Domain::IPV6 };
                let s = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
                prepare(&s, mark)?;
                Ok(s)
            })
            .await?;
        Ok(tokio::net::TcpSocket::from_std_stream(s.into()))
    }

    /// A marked TCP listener on `addr` in this netns (`SO_REUSEPORT`, so a restarted ztunnel can
    /// bind while the old one still holds the port). A `[::]` address also accepts IPv4, and
    /// falls back to `0.0.0.0` where the pod has IPv6 disabled.
    pub async fn tcp_listener(&self, addr: SocketAddr) -> io::Result<std::net::TcpListener> {
        let mark = self.mark;
        let l = self
            .run(move || {
                let listen = |addr: SocketAddr| -> io::Result<Socket> {
                    let s =
                        Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
                    prepare(&s, mark)?;
                    s.set_reuse_address(true)?;
                    s.set_reuse_port(true)?;
                    if addr.is_ipv6() {
                        s.set_only_v6(false)?;
                    }
                    s.bind(&addr.into())?;
                    s.listen(1024)?;
                    Ok(s)
                };
                match listen(addr) {
                    Err(e) if addr.ip().is_unspecified() && addr.is_ipv6() => {
                        tracing::debug!(error = %e, "no IPv6 in the pod; listening on IPv4 only");
                        listen(SocketAddr::new(
                            std::net::Ipv4Addr::UNSPECIFIED.into(),
                            addr.port(),
                        ))
                    }
                    r => r,
                }
            })
            .await?;
        Ok(l.into())
    }

    /// A marked UDP socket bound to `addr` in this netns.
    pub async fn udp_socket(&self, addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
        let mark = self.mark;
        let s = self
            .run(move || {
                let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
                prepare(&s, mark)?;
                s.set_reuse_address(true)?;
                s.set_reuse_port(true)?;
                s.bind(&addr.into())?;
                Ok(s)
            })
            .await?;
        Ok(s.into())
    }
}

fn prepare(s: &Socket, mark: Option<u32>) -> io::Result<()> {
    s.set_nonblocking(true)?;
    s.set_cloexec(true)?;
    if let Some(m) = mark {
        s.set_mark(m)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_file_is_not_a_netns() {
        let f = tempfile::NamedTempFile::new().expect("tempfile");
        match Netns::open(f.path(), None) {
            Err(NetnsError::NotNetns { .. }) => {}
            other => panic!("expected NotNetns, got {other:?}"),
        }
        match Netns::open(Path::new("/nonexistent/netns"), None) {
            Err(NetnsError::Open { .. }) => {}
            other => panic!("expected Open error, got {other:?}"),
        }
    }

    /// Our own netns is a netns: sockets made "in" it work like ordinary ones.
    #[tokio::test]
    async fn sockets_in_own_netns() {
        let ns = match Netns::open(Path::new("/proc/self/ns/net"), None) {
            Ok(ns) => ns,
            Err(e) => {
                // setns needs CAP_SYS_ADMIN even for one's own netns.
                eprintln!("skipping: cannot join a netns here ({e})");
                return;
            }
        };
        let l = ns
            .tcp_listener("127.0.0.1:0".parse().expect("addr"))
            .await
            .expect("listener");
        let l = tokio::net::TcpListener::from_std(l).expect("tokio listener");
        let addr = l.local_addr().expect("addr");
        let s = ns.tcp_socket(true).await.expect("socket");
        let (c, a) = tokio::join!(s.connect(addr), l.accept());
        c.expect("connect");
        a.expect("accept");
    }
}

//! Client side of the enrollment socket (protocol in [`mesh_inpod::protocol`]).

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::config::PodArgs;
use crate::error::CniError;

/// How long we wait for the agent's answer (connect + write + read).
pub const AGENT_TIMEOUT: Duration = Duration::from_secs(10);
/// Answers longer than this are rejected (a sane answer is a few dozen bytes).
const MAX_ANSWER: usize = mesh_inpod::protocol::MAX_LINE;

pub use mesh_inpod::protocol::{Answer, Op, PodRef, Request};

impl From<&PodArgs> for PodRef {
    fn from(p: &PodArgs) -> Self {
        Self {
            namespace: p.namespace.clone(),
            name: p.name.clone(),
            uid: p.uid.clone(),
        }
    }
}

/// Sends `req` to the agent at `socket` and returns its answer, within `timeout` overall.
pub fn call(socket: &Path, req: &Request, timeout: Duration) -> Result<Answer, CniError> {
    let unreachable = |reason: String| CniError::AgentUnreachable {
        socket: socket.display().to_string(),
        reason,
    };
    let deadline = Instant::now() + timeout;
    let mut stream = UnixStream::connect(socket).map_err(|e| unreachable(e.to_string()))?;
    let mut line = serde_json::to_vec(req).map_err(|e| unreachable(e.to_string()))?;
    line.push(b'\n');
    stream
        .set_write_timeout(Some(timeout))
        .and_then(|()| stream.write_all(&line))
        .map_err(|e| unreachable(format!("sending request: {e}")))?;

    let mut buf = Vec::with_capacity(128);
    let mut chunk = [0u8; 512];
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(unreachable(format!("no answer within {timeout:?}")));
        }
        stream
            .set_read_timeout(Some(remaining))
            .map_err(|e| unreachable(e.to_string()))?;
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                if buf.contains(&b'\n') {
                    break;
                }
                if buf.len() > MAX_ANSWER {
                    return Err(unreachable(format!(
                        "answer longer than {MAX_ANSWER} bytes"
                    )));
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Err(unreachable(format!("no answer within {timeout:?}")));
            }
            Err(e) => return Err(unreachable(format!("reading answer: {e}"))),
        }
    }
    let first = buf.split(|b| *b == b'\n').next().unwrap_or_default();
    if first.iter().all(u8::is_ascii_whitespace) {
        return Err(unreachable("connection closed without an answer".into()));
    }
    let answer: Answer =
        serde_json::from_slice(first).map_err(|e| unreachable(format!("malformed answer: {e}")))?;
    if !answer.error.is_empty() {
        return Err(CniError::AgentRefused(answer.error));
    }
    Ok(answer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader};
    use std::os::unix::net::UnixListener;
    use std::path::PathBuf;

    fn req() -> Request {
        Request {
            op: Op::Add,
            container_id: "c".into(),
            netns: "/run/netns/x".into(),
            ifname: "eth0".into(),
            pod: PodRef {
                namespace: "ns".into(),
                name: "p".into(),
                uid: "u".into(),
            },
            ips: vec!["10.0.0.1".into()],
            dns_capture: false,
        }
    }

    fn serve_once(
        answer: &'static str,
    ) -> (tempfile::TempDir, PathBuf, std::thread::JoinHandle<String>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("a.sock");
        let l = UnixListener::bind(&path).expect("bind");
        let h = std::thread::spawn(move || {
            let (s, _) = l.accept().expect("accept");
            let mut r = BufReader::new(s.try_clone().expect("clone"));
            let mut line = String::new();
            r.read_line(&mut line).expect("read");
            (&s).write_all(answer.as_bytes()).expect("write");
            line
        });
        (dir, path, h)
    }

    #[test]
    fn enrolled_answer() {
        let (_d, path, h) = serve_once("{\"enrolled\":true,\"error\":\"\"}\n");
        let a = call(&path, &req(), AGENT_TIMEOUT).expect("answer");
        assert!(a.enrolled);
        let sent: serde_json::Value =
            serde_json::from_str(&h.join().expect("join")).expect("json line");
        assert_eq!(sent["op"], "add");
        assert_eq!(sent["pod"]["uid"], "u");
        assert_eq!(sent["ips"][0], "10.0.0.1");
    }

    #[test]
    fn refused_and_unreachable() {
        let (_d, path, _h) = serve_once("{\"enrolled\":false,\"error\":\"no workload\"}\n");
        assert_eq!(
            call(&path, &req(), AGENT_TIMEOUT)
                .expect_err("must fail")
                .code(),
            1000
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let e = call(&dir.path().join("none"), &req(), AGENT_TIMEOUT).expect_err("must fail");
        assert_eq!(e.code(), 999);
    }

    #[test]
    fn timeout() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("slow.sock");
        let l = UnixListener::bind(&path).expect("bind");
        let h = std::thread::spawn(move || {
            let (s, _) = l.accept().expect("accept");
            std::thread::sleep(Duration::from_millis(500));
            drop(s);
        });
        let e = call(&path, &req(), Duration::from_millis(100)).expect_err("must fail");
        assert_eq!(e.code(), 999);
        assert!(e.to_string().contains("no answer"), "{e}");
        h.join().expect("join");
    }
}

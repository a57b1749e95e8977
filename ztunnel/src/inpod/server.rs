//! The enrollment socket: one JSON request line in, one JSON answer line out, per connection
//! (protocol in [`mesh_inpod::protocol`]).

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use mesh_inpod::protocol::{Answer, Request, MAX_LINE};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tracing::{debug, info, warn, Instrument};

use super::Agent;

/// How long a plugin may take to send its request.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Binds `path` (replacing a stale socket of an earlier run), readable by root only: whoever can
/// write to it decides which pods get captured.
pub fn bind(path: &Path) -> io::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => debug!(socket = %path.display(), "removed stale enrollment socket"),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let l = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    info!(socket = %path.display(), "in-pod enrollment socket listening");
    Ok(l)
}

/// Accepts plugin connections until shutdown.
pub async fn serve(agent: Arc<Agent>, listener: UnixListener) {
    loop {
        let accepted = tokio::select! {
            _ = agent.proxy.shutdown.cancelled() => break,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, _)) => {
                let agent = agent.clone();
                tokio::spawn(async move {
                    if let Err(e) = serve_one(&agent, stream).await {
                        debug!(error = %e, "enrollment connection ended early");
                    }
                });
            }
            Err(e) => {
                warn!(error = %e, "accept on the enrollment socket failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn serve_one(agent: &Agent, stream: UnixStream) -> io::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut line = Vec::new();
    let mut reader = BufReader::new(r).take(MAX_LINE as u64 + 1);
    let read = tokio::time::timeout(READ_TIMEOUT, reader.read_until(b'\n', &mut line)).await;
    let answer = match read {
        Err(_) => malformed("no request line within 5 s"),
        Ok(Err(e)) => return Err(e),
        Ok(Ok(_)) if line.len() > MAX_LINE => malformed("request line too long"),
        Ok(Ok(_)) => match serde_json::from_slice::<Request>(&line) {
            Ok(req) => {
                let span = tracing::info_span!("inpod", op = ?req.op, pod.namespace = %req.pod.namespace, pod.name = %req.pod.name, netns = %req.netns.display());
                agent.handle(req).instrument(span).await
            }
            Err(e) => malformed(&format!("malformed request: {e}")),
        },
    };
    let mut out = serde_json::to_vec(&answer).map_err(io::Error::other)?;
    out.push(b'\n');
    w.write_all(&out).await?;
    w.shutdown().await
}

fn malformed(why: &str) -> Answer {
    warn!(error = why, "bad request on the enrollment socket");
    metrics::counter!("ztunnel_inpod_requests_total", "op" => "unknown", "result" => "malformed")
        .increment(1);
    Answer {
        enrolled: false,
        error: why.to_string(),
    }
}

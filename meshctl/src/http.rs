//! A small blocking HTTP/1.1 GET client: every endpoint meshctl reads is plain HTTP on a
//! known address, so a socket with timeouts is all it takes (no async runtime in a CLI).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

/// Largest response accepted (a config dump of a very large mesh is tens of MiB).
const MAX_RESPONSE: u64 = 512 << 20;

/// Why a GET failed.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The name did not resolve.
    #[error("cannot resolve the address: {0}")]
    Resolve(std::io::Error),
    /// Nothing accepted the connection.
    #[error("connection failed: {0}")]
    Connect(std::io::Error),
    /// Connected, but no (complete) answer in time.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// Reading or writing failed mid-way.
    #[error("connection error: {0}")]
    Io(std::io::Error),
    /// The bytes were not an HTTP/1.x response.
    #[error("not an HTTP response: {0}")]
    Malformed(String),
}

/// A complete response.
#[derive(Debug, Clone)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Headers in order (names as received).
    pub headers: Vec<(String, String)>,
    /// The body, de-chunked.
    pub body: Vec<u8>,
}

impl Response {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The first line of the body, trimmed and shortened, for error messages.
    pub fn summary(&self) -> String {
        let text = self.text();
        let line = text.lines().next().unwrap_or("").trim();
        let short: String = line.chars().take(200).collect();
        if short.is_empty() {
            format!("HTTP {}", self.status)
        } else {
            format!("HTTP {}: {short}", self.status)
        }
    }
}

fn io_err(e: std::io::Error, timeout: Duration) -> HttpError {
    match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
            HttpError::Timeout(timeout)
        }
        _ => HttpError::Io(e),
    }
}

/// GETs `path` (with query) from `addr` (`host:port`); each connect, read and write has
/// `timeout`.
pub fn get(addr: &str, path: &str, timeout: Duration) -> Result<Response, HttpError> {
    let mut stream = connect(addr, timeout)?;
    let to = |e| io_err(e, timeout);
    stream.set_read_timeout(Some(timeout)).map_err(to)?;
    stream.set_write_timeout(Some(timeout)).map_err(to)?;
    let _ = stream.set_nodelay(true);
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: meshctl/{}\r\nAccept: */*\r\nConnection: close\r\n\r\n",
        env!("CARGO_PKG_VERSION")
    );
    stream.write_all(req.as_bytes()).map_err(to)?;
    let mut raw = Vec::new();
    stream
        .take(MAX_RESPONSE)
        .read_to_end(&mut raw)
        .map_err(to)?;
    parse_response(&raw)
}

fn connect(addr: &str, timeout: Duration) -> Result<TcpStream, HttpError> {
    let addrs: Vec<SocketAddr> = addr
        .to_socket_addrs()
        .map_err(HttpError::Resolve)?
        .collect();
    let mut last = None;
    for a in &addrs {
        match TcpStream::connect_timeout(a, timeout) {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(e),
        }
    }
    let e = last.unwrap_or_else(|| std::io::Error::other("no address"));
    Err(match e.kind() {
        std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => {
            HttpError::Timeout(timeout)
        }
        _ => HttpError::Connect(e),
    })
}

/// GETs a streamed response (`application/x-ndjson`, chunked or not) and calls `on_line` with
/// each body line as it arrives, until the server ends the body or `on_line` returns false.
/// `timeout` bounds the connect and the response head; the body may take as long as it likes.
pub fn stream_lines(
    addr: &str,
    path: &str,
    timeout: Duration,
    mut on_line: impl FnMut(&[u8]) -> bool,
) -> Result<(), HttpError> {
    let mut stream = connect(addr, timeout)?;
    let to = |e| io_err(e, timeout);
    stream.set_read_timeout(Some(timeout)).map_err(to)?;
    stream.set_write_timeout(Some(timeout)).map_err(to)?;
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: meshctl/{}\r\nAccept: application/x-ndjson\r\nConnection: close\r\n\r\n",
        env!("CARGO_PKG_VERSION")
    );
    stream.write_all(req.as_bytes()).map_err(to)?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let head_end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p;
        }
        if buf.len() > 64 * 1024 {
            return Err(HttpError::Malformed("response head over 64 KiB".into()));
        }
        let n = stream.read(&mut chunk).map_err(to)?;
        if n == 0 {
            return Err(HttpError::Malformed(
                "the connection closed without an answer".into(),
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let (head, _) = parse_head(&buf)?;
    if head.status != 200 {
        // The rest of an error answer is short: read it for the message.
        let _ = stream.read_to_end(&mut buf);
        let full = parse_response(&buf)?;
        return Err(HttpError::Malformed(full.summary()));
    }
    let chunked = head
        .header("transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    // Events may be minutes apart: no read timeout on the body.
    stream.set_read_timeout(None).map_err(to)?;
    let mut raw: Vec<u8> = buf[head_end + 4..].to_vec();
    let mut body: Vec<u8> = Vec::new();
    let mut done = false;
    loop {
        if chunked {
            // Move every complete chunk from `raw` to `body`.
            while let Some(eol) = raw.windows(2).position(|w| w == b"\r\n") {
                let size_text = String::from_utf8_lossy(&raw[..eol]).into_owned();
                let size_text = size_text.split(';').next().unwrap_or("").trim().to_string();
                let size = usize::from_str_radix(&size_text, 16)
                    .map_err(|_| HttpError::Malformed(format!("chunk size {size_text:?}")))?;
                if size == 0 {
                    done = true;
                    break;
                }
                if raw.len() < eol + 2 + size + 2 {
                    break;
                }
                body.extend_from_slice(&raw[eol + 2..eol + 2 + size]);
                raw.drain(..eol + 2 + size + 2);
            }
        } else {
            body.append(&mut raw);
        }
        while let Some(nl) = body.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = body.drain(..=nl).collect();
            if !on_line(&line[..line.len() - 1]) {
                return Ok(());
            }
        }
        if done {
            return Ok(());
        }
        let n = stream.read(&mut chunk).map_err(|e| io_err(e, timeout))?;
        if n == 0 {
            return Ok(());
        }
        raw.extend_from_slice(&chunk[..n]);
    }
}

/// Parses a complete HTTP/1.x response (what the server sent before closing).
pub fn parse_response(raw: &[u8]) -> Result<Response, HttpError> {
    let (mut resp, end) = parse_head(raw)?;
    let body = &raw[end + 4..];
    resp.body = if resp
        .header("transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
    {
        dechunk(body)?
    } else if let Some(len) = resp
        .header("content-length")
        .and_then(|v| v.parse::<usize>().ok())
    {
        if body.len() < len {
            return Err(HttpError::Malformed(format!(
                "body cut short: {} of {len} bytes",
                body.len()
            )));
        }
        body[..len].to_vec()
    } else {
        body.to_vec()
    };
    Ok(resp)
}

/// Status line and headers (empty body), and where the head ends (the `\r\n\r\n`).
fn parse_head(raw: &[u8]) -> Result<(Response, usize), HttpError> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| {
            HttpError::Malformed(if raw.is_empty() {
                "the connection closed without an answer".into()
            } else {
                "no end of headers".into()
            })
        })?;
    let head = String::from_utf8_lossy(&raw[..end]);
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(HttpError::Malformed(format!(
            "status line {:?}",
            status_line.chars().take(80).collect::<String>()
        )));
    }
    let status = parts
        .next()
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| HttpError::Malformed(format!("status line {status_line:?}")))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    Ok((
        Response {
            status,
            headers,
            body: Vec::new(),
        },
        end,
    ))
}

fn dechunk(mut b: &[u8]) -> Result<Vec<u8>, HttpError> {
    let mut out = Vec::new();
    loop {
        let eol = b
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or_else(|| HttpError::Malformed("chunked body cut short".into()))?;
        let size_text = String::from_utf8_lossy(&b[..eol]);
        let size_text = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| HttpError::Malformed(format!("chunk size {size_text:?}")))?;
        b = &b[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        if b.len() < size + 2 {
            return Err(HttpError::Malformed("chunked body cut short".into()));
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}

/// Percent-encodes a query value (RFC 3986 unreserved characters stay as they are).
pub fn encode_query(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_length_and_chunked_bodies() {
        let r = parse_response(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ndate: Mon, 23 Nov 2026 20:46:28 GMT\r\n\r\nhello").unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), "hello");
        assert_eq!(r.header("Date"), Some("Mon, 23 Nov 2026 20:46:28 GMT"));
        let r = parse_response(
            b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nnot \r\n5;x=y\r\nready\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!((r.status, r.text().as_str()), (503, "not ready"));
        assert_eq!(r.summary(), "HTTP 503: not ready");
        assert!(parse_response(b"").is_err());
        assert!(parse_response(b"SSH-2.0-OpenSSH\r\n\r\n").is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\nshort").is_err());
    }

    #[test]
    fn refused_connection_is_a_connect_error() {
        // Bind then drop to get a port nothing listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let e = get(&format!("127.0.0.1:{port}"), "/", Duration::from_secs(2)).unwrap_err();
        assert!(matches!(e, HttpError::Connect(_)), "{e:?}");
    }

    #[test]
    fn query_encoding() {
        assert_eq!(
            encode_query("sum(x{a=\"b\"})"),
            "sum%28x%7Ba%3D%22b%22%7D%29"
        );
        assert_eq!(encode_query("a-b_c.d~e"), "a-b_c.d~e");
    }
}

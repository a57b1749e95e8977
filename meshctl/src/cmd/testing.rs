//! What the commands' unit tests share: an environment map, a run context, an address nothing
//! listens on, a one-request HTTP server, and a whole command line run as `main` runs it.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::time::Duration;

use clap::Parser;

use crate::cli::Cli;
use crate::cmd::Ctx;
use crate::error::Error;

/// An environment of `pairs` (tests never read the process's own).
pub fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The context of a test run: `env`, 1 s network timeouts, no colour, the fixtures' "now".
pub fn ctx(env: &HashMap<String, String>) -> Ctx<'_> {
    Ctx {
        env,
        timeout: Duration::from_secs(1),
        style: Default::default(),
        now: crate::golden::fixture_now(),
        progress: false,
    }
}

/// A local address nothing listens on (bound, then released).
pub fn closed_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

/// `127.0.0.1:<port>` answering one request with `status_line` (`HTTP/1.1 503 ...`) and `body`.
pub fn answer_once(status_line: &str, body: &str) -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let answer = format!(
        "{status_line}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") && s.read(&mut b).unwrap_or(0) == 1 {
            head.push(b[0]);
        }
        let _ = s.write_all(answer.as_bytes());
    });
    addr
}

/// Parses `meshctl <argv>` (panicking on a usage error clap refuses) and runs the command with
/// `env` as `main` does: its stdout, or its error.
pub fn run(env_pairs: &[(&str, &str)], argv: &[&str]) -> Result<String, Error> {
    let cli = Cli::try_parse_from(std::iter::once("meshctl").chain(argv.iter().copied()))
        .unwrap_or_else(|e| panic!("meshctl {}: {e}", argv.join(" ")));
    let env = env(env_pairs);
    let mut out = Vec::new();
    crate::app::dispatch(&cli.command, &ctx(&env), &mut out)
        .map(|()| String::from_utf8_lossy(&out).into_owned())
}

//! `meshbench`: the load generator behind `make bench`. Every mode binds a source address (the
//! client pod's IP) so the mesh knows who is calling, and prints one line of figures.
//!
//! ```text
//! meshbench echo    --listen IP:PORT                      echo server (any size)
//! meshbench latency --to IP:PORT --from IP [--rate 1000] [--secs 10] [--size 1024]
//! meshbench connect --to IP:PORT --from IP [--secs 5] [--concurrency 8]
//! meshbench hold    --to IP:PORT --from IP --count 1000   open N echo connections, hold until stdin closes
//! ```

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

struct Args(HashMap<String, String>);

impl Args {
    fn parse(v: &[String]) -> Result<Self> {
        let mut m = HashMap::new();
        let mut it = v.iter();
        while let Some(k) = it.next() {
            let k = k
                .strip_prefix("--")
                .with_context(|| format!("unexpected argument {k}"))?;
            let val = it.next().with_context(|| format!("--{k} needs a value"))?;
            m.insert(k.to_string(), val.clone());
        }
        Ok(Args(m))
    }
    fn get<T: std::str::FromStr>(&self, k: &str, default: Option<T>) -> Result<T>
    where
        T::Err: std::fmt::Display,
    {
        match self.0.get(k) {
            Some(v) => v.parse().map_err(|e| anyhow::anyhow!("--{k} {v}: {e}")),
            None => default.with_context(|| format!("--{k} is required")),
        }
    }
}

async fn connect(from: IpAddr, to: SocketAddr) -> Result<TcpStream> {
    let s = if to.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    // As ztunnel does: choose the source port at connect() time (IP_BIND_ADDRESS_NO_PORT).
    let _ = nix::sys::socket::setsockopt(&s, nix::sys::socket::sockopt::IpBindAddressNoPort, &true);
    s.bind(SocketAddr::new(from, 0))?;
    let c = s
        .connect(to)
        .await
        .with_context(|| format!("connect {to}"))?;
    c.set_nodelay(true)?;
    Ok(c)
}

async fn echo(listen: SocketAddr) -> Result<()> {
    let l = TcpListener::bind(listen)
        .await
        .with_context(|| format!("bind {listen}"))?;
    println!("echo listening on {listen}");
    loop {
        let (mut s, _) = l.accept().await?;
        let _ = s.set_nodelay(true);
        tokio::spawn(async move {
            let (mut r, mut w) = s.split();
            let _ = tokio::io::copy(&mut r, &mut w).await;
        });
    }
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e3
}

/// Fixed-rate 1 KB request/response on one connection. Latency is measured from the moment the
/// request is written (the runtime's timer has 1 ms granularity, so measuring from the scheduled
/// time would mostly measure the timer); a request that falls behind schedule is sent at once.
async fn latency(a: &Args) -> Result<()> {
    let to: SocketAddr = a.get("to", None)?;
    let from: IpAddr = a.get("from", None)?;
    let rate: u64 = a.get("rate", Some(1000))?;
    let secs: u64 = a.get("secs", Some(10))?;
    let size: usize = a.get("size", Some(1024))?;
    let mut c = connect(from, to).await?;
    let req = vec![b'x'; size];
    let mut resp = vec![0u8; size];
    // Warm up the path (handshakes, pools) before measuring.
    for _ in 0..100 {
        c.write_all(&req).await?;
        c.read_exact(&mut resp).await?;
    }
    let interval = Duration::from_nanos(1_000_000_000 / rate.max(1));
    let n = rate * secs;
    let start = Instant::now();
    let mut lat = Vec::with_capacity(n as usize);
    for i in 0..n {
        let due = start + interval * i as u32;
        tokio::time::sleep_until(due.into()).await;
        let sent = Instant::now();
        c.write_all(&req).await?;
        c.read_exact(&mut resp).await?;
        lat.push(sent.elapsed());
    }
    lat.sort();
    println!(
        "latency to={to} rate={rate}/s size={size}B n={n} p50_ms={:.3} p90_ms={:.3} p99_ms={:.3} max_ms={:.3}",
        pct(&lat, 0.5),
        pct(&lat, 0.9),
        pct(&lat, 0.99),
        pct(&lat, 1.0)
    );
    Ok(())
}

/// New connections per second: connect, 1-byte round trip, close; `concurrency` loops.
async fn connect_rate(a: &Args) -> Result<()> {
    let to: SocketAddr = a.get("to", None)?;
    let from: IpAddr = a.get("from", None)?;
    let secs: u64 = a.get("secs", Some(5))?;
    let conc: usize = a.get("concurrency", Some(8))?;
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for _ in 0..conc {
        let (done, errors) = (done.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                let r: Result<()> = async {
                    let mut c = connect(from, to).await?;
                    c.write_all(b"x").await?;
                    let mut b = [0u8; 1];
                    c.read_exact(&mut b).await?;
                    Ok(())
                }
                .await;
                match r {
                    Ok(()) => done.fetch_add(1, Ordering::Relaxed),
                    Err(_) => errors.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    let n = done.load(Ordering::Relaxed);
    println!(
        "connect to={to} concurrency={conc} secs={secs} conns={n} conns_per_s={:.0} errors={}",
        n as f64 / secs as f64,
        errors.load(Ordering::Relaxed)
    );
    Ok(())
}

/// Opens `count` connections (each proven with a round trip) and holds them until stdin closes.
async fn hold(a: &Args) -> Result<()> {
    let to: SocketAddr = a.get("to", None)?;
    let from: IpAddr = a.get("from", None)?;
    let count: usize = a.get("count", Some(1000))?;
    let mut conns = Vec::with_capacity(count);
    for _ in 0..count {
        let mut c = connect(from, to).await?;
        c.write_all(b"x").await?;
        let mut b = [0u8; 1];
        c.read_exact(&mut b).await?;
        conns.push(c);
    }
    println!("holding {count} connections");
    let _ = tokio::task::spawn_blocking(|| std::io::stdin().read_line(&mut String::new())).await;
    drop(conns);
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let Some((mode, rest)) = argv.split_first() else {
        bail!("usage: meshbench echo|latency|connect|hold --to IP:PORT --from IP ...")
    };
    let a = Args::parse(rest)?;
    match mode.as_str() {
        "echo" => echo(a.get("listen", None)?).await,
        "latency" => latency(&a).await,
        "connect" => connect_rate(&a).await,
        "hold" => hold(&a).await,
        m => bail!("unknown mode {m}"),
    }
}

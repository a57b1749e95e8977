//! In-process tests on loopback: the proxy on 127.0.0.1, "pods" on 127.0.1.x source addresses,
//! fake upstream resolvers on 127.0.0.x.

use std::collections::BTreeMap;
use std::sync::{Mutex as StdMutex, OnceLock};

use hickory_proto::op::Query;
use hickory_proto::rr::Name;

use super::*;
use crate::state::{Address, Protocol, Workload};

const POD_A: Ipv4Addr = Ipv4Addr::new(127, 0, 1, 1);
const POD_B: Ipv4Addr = Ipv4Addr::new(127, 0, 1, 2);
const STRANGER: Ipv4Addr = Ipv4Addr::new(127, 0, 1, 99);
const B_A_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const B_B_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 20);
const C_VIP4: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 30);
const C_VIP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x30);
/// What the fake upstream answers for every name.
const UPSTREAM_ANSWER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 7);
const UPSTREAM_TTL: u32 = 77;

fn service(name: &str, ns: &str, vips: Vec<IpAddr>) -> Address {
    Address::Service(Service {
        name: name.into(),
        namespace: ns.into(),
        hostname: format!("{name}.{ns}.svc.cluster.local"),
        vips,
        ports: vec![],
        subject_alt_names: vec![],
        waypoint: None,
    })
}

fn workload(name: &str, ns: &str, ip: Ipv4Addr) -> Address {
    Address::Workload(Workload {
        uid: format!("Kubernetes//Pod/{ns}/{name}"),
        name: name.into(),
        namespace: ns.into(),
        workload_ips: vec![ip.into()],
        protocol: Protocol::Hbone,
        trust_domain: "cluster.local".into(),
        service_account: "default".into(),
        node: "n1".into(),
        canonical_name: name.into(),
        canonical_revision: "latest".into(),
        workload_type: "pod".into(),
        workload_name: name.into(),
        cluster_id: "Kubernetes".into(),
        services: BTreeMap::new(),
        authorization_policies: vec![],
        healthy: true,
        waypoint: None,
        native_tunnel: false,
    })
}

/// `b` exists in ns-a and ns-b (different VIPs); `c.ns-c` is dual-stack.
fn mesh() -> Arc<State> {
    let state = Arc::new(State::default());
    state.upsert(service("b", "ns-a", vec![B_A_VIP.into()]));
    state.upsert(service("b", "ns-b", vec![B_B_VIP.into()]));
    state.upsert(service("c", "ns-c", vec![C_VIP4.into(), C_VIP6.into()]));
    state.upsert(workload("pod-a", "ns-a", POD_A));
    state.upsert(workload("pod-b", "ns-b", POD_B));
    state
}

/// The metrics recorder for this test binary (one global recorder per process).
fn prometheus() -> Option<&'static metrics_exporter_prometheus::PrometheusHandle> {
    static HANDLE: OnceLock<Option<metrics_exporter_prometheus::PrometheusHandle>> =
        OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = metrics_exporter_prometheus::PrometheusBuilder::new()
                .set_buckets_for_metric(
                    metrics_exporter_prometheus::Matcher::Full(UPSTREAM_DURATION.into()),
                    &UPSTREAM_DURATION_BUCKETS,
                )
                .ok()?
                .build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).ok()?;
            Some(handle)
        })
        .as_ref()
}

/// A running proxy; stops when dropped.
struct Running {
    addr: SocketAddr,
    shutdown: CancellationToken,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn start(upstreams: Vec<SocketAddr>, timeout: Duration) -> Running {
    prometheus();
    let mut cfg = DnsConfig::new("127.0.0.1:0".parse().expect("addr"), upstreams);
    cfg.upstream_timeout = timeout;
    let proxy = DnsProxy::bind(mesh(), cfg).await.expect("bind");
    let addr = proxy.udp_addr().expect("udp addr");
    assert_eq!(
        proxy.tcp_addr().expect("tcp addr"),
        addr,
        "UDP and TCP share the port"
    );
    let shutdown = CancellationToken::new();
    tokio::spawn(proxy.run(shutdown.clone()));
    Running { addr, shutdown }
}

fn query(name: &str, rtype: RecordType) -> Message {
    let mut m = Message::query();
    m.add_query(Query::query(Name::from_ascii(name).expect("name"), rtype));
    m.metadata.recursion_desired = true;
    m
}

async fn udp_exchange(server: SocketAddr, from: Ipv4Addr, packet: &[u8]) -> Option<Vec<u8>> {
    let sock = UdpSocket::bind((from, 0)).await.expect("bind client");
    sock.send_to(packet, server).await.expect("send");
    let mut buf = vec![0u8; 65535];
    match tokio::time::timeout(Duration::from_secs(2), sock.recv_from(&mut buf)).await {
        Ok(Ok((n, _))) => Some(buf[..n].to_vec()),
        Ok(Err(e)) => panic!("recv: {e}"),
        Err(_) => None,
    }
}

async fn udp(server: SocketAddr, from: Ipv4Addr, name: &str, rtype: RecordType) -> Message {
    let q = query(name, rtype);
    let resp = udp_exchange(server, from, &q.to_vec().expect("encode"))
        .await
        .expect("an answer over UDP");
    let resp = Message::from_vec(&resp).expect("decode");
    assert_eq!(resp.id, q.id);
    resp
}

async fn tcp_connect(server: SocketAddr, from: Ipv4Addr) -> TcpStream {
    let sock = TcpSocket::new_v4().expect("socket");
    sock.bind((from, 0).into()).expect("bind client");
    sock.connect(server).await.expect("connect")
}

async fn tcp(server: SocketAddr, from: Ipv4Addr, name: &str, rtype: RecordType) -> Message {
    let q = query(name, rtype);
    let mut s = tcp_connect(server, from).await;
    write_framed(&mut s, &q.to_vec().expect("encode"))
        .await
        .expect("write");
    let resp = tokio::time::timeout(Duration::from_secs(10), read_framed(&mut s))
        .await
        .expect("an answer over TCP in time")
        .expect("read");
    let resp = Message::from_vec(&resp).expect("decode");
    assert_eq!(resp.id, q.id);
    resp
}

fn addrs(m: &Message) -> Vec<IpAddr> {
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(a) => Some(IpAddr::V6(a.0)),
            _ => None,
        })
        .collect()
}

fn assert_mesh_answer(m: &Message, want: &[IpAddr]) {
    assert_eq!(m.response_code, ResponseCode::NoError, "{m}");
    assert!(m.authoritative && m.recursion_available && m.recursion_desired);
    assert_eq!(addrs(m), want, "{m}");
    assert!(m.answers.iter().all(|r| r.ttl == TTL));
    // The answer is for the name exactly as asked.
    assert!(m.answers.iter().all(|r| r.name == *m.queries[0].name()));
}

#[tokio::test]
async fn answers_mesh_names_over_udp_and_tcp() {
    let p = start(vec![], UPSTREAM_TIMEOUT).await;
    let b_b = [IpAddr::from(B_B_VIP)];
    for name in [
        "b.ns-b.svc.cluster.local.",
        "B.NS-B.SVC.cluster.local.",
        "b.ns-b.svc.",
        "b.ns-b.",
    ] {
        assert_mesh_answer(&udp(p.addr, STRANGER, name, RecordType::A).await, &b_b);
        assert_mesh_answer(&tcp(p.addr, STRANGER, name, RecordType::A).await, &b_b);
    }
    // `b.ns-b` works from any namespace, including one that has its own `b`.
    assert_mesh_answer(&udp(p.addr, POD_A, "b.ns-b.", RecordType::A).await, &b_b);
}

#[tokio::test]
async fn short_names_follow_the_source_pods_namespace() {
    let p = start(vec![], UPSTREAM_TIMEOUT).await;
    let (b_a, b_b) = ([IpAddr::from(B_A_VIP)], [IpAddr::from(B_B_VIP)]);
    assert_mesh_answer(&udp(p.addr, POD_A, "b.", RecordType::A).await, &b_a);
    assert_mesh_answer(&tcp(p.addr, POD_A, "b.", RecordType::A).await, &b_a);
    assert_mesh_answer(&udp(p.addr, POD_B, "b.", RecordType::A).await, &b_b);
    assert_mesh_answer(&tcp(p.addr, POD_B, "b.", RecordType::A).await, &b_b);
    // Search-list expansion of `b.ns-b` by a pod in ns-a.
    let m = udp(
        p.addr,
        POD_A,
        "b.ns-b.ns-a.svc.cluster.local.",
        RecordType::A,
    )
    .await;
    assert_mesh_answer(&m, &b_b);
    // A source that is no workload has no namespace: `b` is not a mesh name for it (and with
    // no upstreams configured that means SERVFAIL).
    let m = udp(p.addr, STRANGER, "b.", RecordType::A).await;
    assert_eq!(m.response_code, ResponseCode::ServFail);
}

#[tokio::test]
async fn aaaa_answers_v6_vips_and_nodata_without_them() {
    let p = start(vec![], UPSTREAM_TIMEOUT).await;
    let m = udp(p.addr, STRANGER, "c.ns-c.", RecordType::AAAA).await;
    assert_mesh_answer(&m, &[C_VIP6.into()]);
    let m = tcp(p.addr, STRANGER, "c.ns-c.", RecordType::A).await;
    assert_mesh_answer(&m, &[C_VIP4.into()]);
    for m in [
        udp(
            p.addr,
            STRANGER,
            "b.ns-b.svc.cluster.local.",
            RecordType::AAAA,
        )
        .await,
        tcp(
            p.addr,
            STRANGER,
            "b.ns-b.svc.cluster.local.",
            RecordType::AAAA,
        )
        .await,
        // Another type for a mesh name: it exists, it has no such record.
        udp(
            p.addr,
            STRANGER,
            "b.ns-b.svc.cluster.local.",
            RecordType::TXT,
        )
        .await,
    ] {
        assert_mesh_answer(&m, &[]);
    }
}

#[tokio::test]
async fn edns_queries_get_an_opt_record() {
    let p = start(vec![], UPSTREAM_TIMEOUT).await;
    let mut q = query("b.ns-b.", RecordType::A);
    q.set_edns(Edns::new());
    let resp = udp_exchange(p.addr, STRANGER, &q.to_vec().expect("encode"))
        .await
        .expect("answer");
    let m = Message::from_vec(&resp).expect("decode");
    assert_eq!(m.edns.as_ref().map(Edns::max_payload), Some(EDNS_PAYLOAD));
    assert_mesh_answer(&m, &[B_B_VIP.into()]);
}

/// What a fake upstream saw: (transport, query name, raw response it sent).
type Seen = Vec<(Transport, String, Vec<u8>)>;

/// A fake resolver on loopback: answers every query with [`UPSTREAM_ANSWER`] and records what
/// it saw.
struct FakeUpstream {
    addr: SocketAddr,
    seen: Arc<StdMutex<Seen>>,
}

fn upstream_answer(packet: &[u8]) -> (String, Vec<u8>) {
    let q = Message::from_vec(packet).expect("upstream got a valid query");
    let mut r = Message::response(q.id, q.op_code);
    r.metadata.recursion_desired = q.recursion_desired;
    r.metadata.recursion_available = true;
    r.add_queries(q.queries.iter().cloned());
    let name = q.queries[0].name().clone();
    r.add_answer(Record::from_rdata(
        name.clone(),
        UPSTREAM_TTL,
        RData::A(A(UPSTREAM_ANSWER)),
    ));
    (name.to_ascii(), r.to_vec().expect("encode"))
}

impl FakeUpstream {
    async fn start(ip: Ipv4Addr) -> FakeUpstream {
        let (udp, tcp) = loop {
            let udp = UdpSocket::bind((ip, 0)).await.expect("bind fake udp");
            let port = udp.local_addr().expect("addr").port();
            if let Ok(tcp) = TcpListener::bind((ip, port)).await {
                break (udp, tcp);
            }
        };
        let addr = udp.local_addr().expect("addr");
        let seen = Arc::new(StdMutex::new(Vec::new()));
        let s = seen.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65535];
            while let Ok((n, from)) = udp.recv_from(&mut buf).await {
                let (name, resp) = upstream_answer(&buf[..n]);
                s.lock()
                    .expect("lock")
                    .push((Transport::Udp, name, resp.clone()));
                let _ = udp.send_to(&resp, from).await;
            }
        });
        let s = seen.clone();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = tcp.accept().await {
                let s = s.clone();
                tokio::spawn(async move {
                    while let Ok(q) = read_framed(&mut conn).await {
                        let (name, resp) = upstream_answer(&q);
                        s.lock()
                            .expect("lock")
                            .push((Transport::Tcp, name, resp.clone()));
                        let _ = write_framed(&mut conn, &resp).await;
                    }
                });
            }
        });
        FakeUpstream { addr, seen }
    }

    fn seen(&self) -> Seen {
        self.seen.lock().expect("lock").clone()
    }
}

/// A loopback address and port where nothing listens (UDP and TCP).
async fn dead_upstream(ip: Ipv4Addr) -> SocketAddr {
    let udp = UdpSocket::bind((ip, 0)).await.expect("bind");
    udp.local_addr().expect("addr")
}

#[tokio::test]
async fn other_names_are_forwarded_unchanged_over_the_same_transport() {
    let up = FakeUpstream::start(Ipv4Addr::new(127, 0, 0, 53)).await;
    let p = start(vec![up.addr], UPSTREAM_TIMEOUT).await;

    let q = query("www.example.test.", RecordType::A);
    let raw = udp_exchange(p.addr, POD_A, &q.to_vec().expect("encode"))
        .await
        .expect("answer");
    let seen = up.seen();
    assert_eq!(seen.len(), 1, "upstream saw the query once");
    assert_eq!(
        (seen[0].0, seen[0].1.as_str()),
        (Transport::Udp, "www.example.test.")
    );
    assert_eq!(
        raw, seen[0].2,
        "the upstream's answer is relayed byte for byte"
    );
    let m = Message::from_vec(&raw).expect("decode");
    assert_eq!(m.id, q.id);
    assert_eq!(addrs(&m), [IpAddr::from(UPSTREAM_ANSWER)]);
    assert_eq!(m.answers[0].ttl, UPSTREAM_TTL);

    let m = tcp(p.addr, POD_A, "other.example.test.", RecordType::A).await;
    assert_eq!(addrs(&m), [IpAddr::from(UPSTREAM_ANSWER)]);
    let seen = up.seen();
    assert_eq!(
        (seen[1].0, seen[1].1.as_str()),
        (Transport::Tcp, "other.example.test.")
    );

    // A short name that is no service in the pod's namespace goes upstream too.
    let m = udp(p.addr, POD_A, "nosuch.", RecordType::A).await;
    assert_eq!(addrs(&m), [IpAddr::from(UPSTREAM_ANSWER)]);
    assert_eq!(up.seen().len(), 3);

    if let Some(h) = prometheus() {
        let text = h.render();
        for needle in [
            "istio_dns_requests_total{request_query_type=\"A\",request_protocol=\"udp\"",
            "istio_dns_upstream_requests_total{request_query_type=\"A\",request_protocol=\"tcp\"",
            concat!(
                "istio_dns_upstream_request_duration_seconds_bucket{request_query_type=\"A\",",
                "request_protocol=\"udp\",source_canonical_service=\"pod-a\",",
                "source_canonical_revision=\"latest\",le=\"0.0005\"}"
            ),
        ] {
            assert!(text.contains(needle), "{needle} missing from:\n{text}");
        }
    } else {
        println!("metrics not checked: another global recorder is installed");
    }
}

#[tokio::test]
async fn upstream_failures_are_servfail() {
    // Nothing listening: refused at once (ICMP port unreachable / RST), on both transports;
    // the second upstream is tried after the first fails.
    let dead = dead_upstream(Ipv4Addr::new(127, 0, 0, 54)).await;
    let p = start(vec![dead, dead], UPSTREAM_TIMEOUT).await;
    let started = Instant::now();
    for m in [
        udp(p.addr, POD_B, "down.example.test.", RecordType::A).await,
        tcp(p.addr, POD_B, "down.example.test.", RecordType::AAAA).await,
    ] {
        assert_eq!(m.response_code, ResponseCode::ServFail, "{m}");
        assert!(m.answers.is_empty());
        assert_eq!(m.queries[0].name().to_ascii(), "down.example.test.");
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "refusal is not a timeout"
    );

    // A black hole: bound but never answers; the timeout turns it into SERVFAIL.
    let hole = UdpSocket::bind((Ipv4Addr::new(127, 0, 0, 55), 0))
        .await
        .expect("bind");
    let p = start(
        vec![hole.local_addr().expect("addr")],
        Duration::from_millis(300),
    )
    .await;
    let started = Instant::now();
    let m = udp(p.addr, POD_B, "slow.example.test.", RecordType::A).await;
    assert_eq!(m.response_code, ResponseCode::ServFail);
    assert!(started.elapsed() >= Duration::from_millis(300));

    if let Some(h) = prometheus() {
        let text = h.render();
        let needle = concat!(
            "istio_dns_upstream_failures_total{request_query_type=\"AAAA\",",
            "request_protocol=\"tcp\",source_canonical_service=\"pod-b\""
        );
        assert!(text.contains(needle), "{needle} missing from:\n{text}");
    }
}

#[tokio::test]
async fn malformed_queries_get_formerr_or_are_dropped_and_serving_goes_on() {
    let p = start(vec![], UPSTREAM_TIMEOUT).await;
    // Shorter than a header: dropped.
    assert_eq!(udp_exchange(p.addr, POD_A, b"\x01\x02\x03").await, None);
    // A header claiming one question, followed by garbage: FORMERR with the same id.
    let garbage = b"\xbe\xef\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\xff\xff\xff";
    let resp = udp_exchange(p.addr, POD_A, garbage).await.expect("FORMERR");
    let m = Message::from_vec(&resp).expect("decode");
    assert_eq!((m.id, m.response_code), (0xbeef, ResponseCode::FormErr));
    // Absurd counts are refused before parsing.
    let mut huge = garbage.to_vec();
    huge[4..6].copy_from_slice(&u16::MAX.to_be_bytes());
    let m = Message::from_vec(&udp_exchange(p.addr, POD_A, &huge).await.expect("FORMERR"))
        .expect("decode");
    assert_eq!(m.response_code, ResponseCode::FormErr);
    // Not a query: NOTIMP.
    let mut notify = query("b.ns-b.", RecordType::SOA);
    notify.metadata.op_code = OpCode::Notify;
    let resp = udp_exchange(p.addr, POD_A, &notify.to_vec().expect("encode"))
        .await
        .expect("NOTIMP");
    let m = Message::from_vec(&resp).expect("decode");
    assert_eq!(m.response_code, ResponseCode::NotImp);
    // A response sent to us is ignored.
    let stray = query("b.ns-b.", RecordType::A).into_response();
    assert_eq!(
        udp_exchange(p.addr, POD_A, &stray.to_vec().expect("encode")).await,
        None
    );
    // The next query is answered.
    assert_mesh_answer(
        &udp(p.addr, POD_A, "b.", RecordType::A).await,
        &[B_A_VIP.into()],
    );

    // Over TCP: garbage is FORMERR and the same connection goes on serving.
    let mut s = tcp_connect(p.addr, POD_A).await;
    write_framed(&mut s, garbage).await.expect("write");
    let m = Message::from_vec(&read_framed(&mut s).await.expect("read")).expect("decode");
    assert_eq!(m.response_code, ResponseCode::FormErr);
    let q = query("b.", RecordType::A);
    write_framed(&mut s, &q.to_vec().expect("encode"))
        .await
        .expect("write");
    let m = Message::from_vec(&read_framed(&mut s).await.expect("read")).expect("decode");
    assert_mesh_answer(&m, &[B_A_VIP.into()]);

    if let Some(h) = prometheus() {
        let text = h.render();
        assert!(text.contains("request_query_type=\"malformed\",request_protocol=\"udp\""));
        assert!(text.contains("request_query_type=\"malformed\",request_protocol=\"tcp\""));
    }
}

#[tokio::test]
async fn pipelined_tcp_queries_are_all_answered() {
    let up = FakeUpstream::start(Ipv4Addr::new(127, 0, 0, 56)).await;
    let p = start(vec![up.addr], UPSTREAM_TIMEOUT).await;
    let mut s = tcp_connect(p.addr, POD_B).await;
    let queries = [
        query("b.", RecordType::A),
        query("x.example.test.", RecordType::A),
        query("c.ns-c.", RecordType::AAAA),
    ];
    for q in &queries {
        write_framed(&mut s, &q.to_vec().expect("encode"))
            .await
            .expect("write");
    }
    let mut ids = Vec::new();
    for _ in &queries {
        let m = Message::from_vec(&read_framed(&mut s).await.expect("read")).expect("decode");
        assert_eq!(m.response_code, ResponseCode::NoError);
        ids.push(m.id);
    }
    ids.sort_unstable();
    let mut want: Vec<u16> = queries.iter().map(|q| q.id).collect();
    want.sort_unstable();
    assert_eq!(ids, want);
}

#[tokio::test]
async fn shutdown_stops_serving() {
    let p = start(vec![], UPSTREAM_TIMEOUT).await;
    let addr = p.addr;
    drop(p);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let q = query("b.ns-b.", RecordType::A);
    assert_eq!(
        udp_exchange(addr, POD_A, &q.to_vec().expect("encode")).await,
        None
    );
}

#[test]
fn resolv_conf_nameservers() {
    let text = "\
# generated
search ns-a.svc.cluster.local svc.cluster.local cluster.local
nameserver 10.96.0.10
  nameserver   1.1.1.1   # trailing comment
;nameserver 9.9.9.9
nameserver fe80::1%2
nameserver not-an-ip
nameserver 8.8.8.8
options ndots:5
";
    let got = parse_resolv_conf(text);
    let want: Vec<SocketAddr> = vec![
        "10.96.0.10:53".parse().expect("addr"),
        "1.1.1.1:53".parse().expect("addr"),
        SocketAddr::V6(SocketAddrV6::new("fe80::1".parse().expect("ip"), 53, 0, 2)),
    ];
    assert_eq!(got, want, "first three valid nameservers, like glibc");
    assert_eq!(
        parse_resolv_conf("nameserver ::1\n"),
        vec!["[::1]:53".parse::<SocketAddr>().expect("addr")]
    );
    assert!(parse_resolv_conf("nameserver 10.0.0.1%eth0\nnameservers 1.2.3.4\n").is_empty());
    assert!(parse_resolv_conf("").is_empty());
}

#[test]
fn read_resolv_conf_names_the_file() {
    let dir = std::env::temp_dir().join(format!("ztunnel-dns-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("mkdir");
    let path = dir.join("resolv.conf");
    std::fs::write(&path, "nameserver 127.0.0.53\n").expect("write");
    let got = read_resolv_conf(&path);
    let missing = read_resolv_conf(&dir.join("missing"));
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(
        got.expect("read"),
        vec!["127.0.0.53:53".parse::<SocketAddr>().expect("addr")]
    );
    let e = missing.expect_err("missing");
    assert!(e.to_string().contains("missing"), "{e}");
}

/// Runs Debian's `dig` against the proxy.
async fn dig(args: Vec<String>) -> String {
    let a = args.clone();
    let out =
        tokio::task::spawn_blocking(move || std::process::Command::new("dig").args(&a).output())
            .await
            .expect("join")
            .expect("run dig");
    assert!(out.status.success(), "dig {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn dig_resolves_through_the_proxy() {
    if std::process::Command::new("dig")
        .arg("-v")
        .output()
        .is_err()
    {
        println!("skipping: `dig` is not installed (apt-get install dnsutils)");
        return;
    }
    let up = FakeUpstream::start(Ipv4Addr::new(127, 0, 0, 57)).await;
    let p = start(vec![up.addr], UPSTREAM_TIMEOUT).await;
    let base = |extra: &[&str]| {
        let mut v = vec![
            "@127.0.0.1".to_string(),
            "-p".into(),
            p.addr.port().to_string(),
            "+time=2".into(),
            "+tries=1".into(),
        ];
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    for transport in ["+notcp", "+tcp"] {
        let out = dig(base(&[
            transport,
            "+short",
            "b.ns-b.svc.cluster.local",
            "A",
        ]))
        .await;
        assert_eq!(out.trim(), B_B_VIP.to_string(), "{transport}");
        let out = dig(base(&[transport, "+short", "-b", "127.0.1.1", "b", "A"])).await;
        assert_eq!(
            out.trim(),
            B_A_VIP.to_string(),
            "{transport} short name from ns-a"
        );
        let out = dig(base(&[transport, "+short", "c.ns-c", "AAAA"])).await;
        assert_eq!(out.trim(), C_VIP6.to_string(), "{transport}");
        let out = dig(base(&[transport, "+short", "www.example.test", "A"])).await;
        assert_eq!(
            out.trim(),
            UPSTREAM_ANSWER.to_string(),
            "{transport} forwarded"
        );
    }
    // Full output: status, flags and TTL as dig shows them.
    let out = dig(base(&[
        "+noall",
        "+comments",
        "+answer",
        "b.ns-b.svc.cluster.local.",
        "A",
    ]))
    .await;
    assert!(out.contains("status: NOERROR"), "{out}");
    assert!(out.contains("flags: qr aa rd ra"), "{out}");
    assert!(
        out.contains(&format!("b.ns-b.svc.cluster.local. 30\tIN\tA\t{B_B_VIP}")),
        "{out}"
    );
    let out = dig(base(&["+noall", "+comments", "b.ns-b", "AAAA"])).await;
    assert!(
        out.contains("status: NOERROR") && out.contains("ANSWER: 0"),
        "{out}"
    );
    let seen = up.seen();
    assert!(seen
        .iter()
        .any(|(t, n, _)| *t == Transport::Tcp && n == "www.example.test."));
    assert!(seen
        .iter()
        .any(|(t, n, _)| *t == Transport::Udp && n == "www.example.test."));
}

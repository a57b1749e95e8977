//! Waypoint resilience and Istio routing end to end: istiod-lite translates networking.istio.io
//! VirtualServices and DestinationRules into the waypoint's routes; a test client speaks HBONE
//! to a real waypoint process, which sends to small hyper backends through node1's ztunnel.
//!
//! Covered: canary by DestinationRule subsets with VirtualService weights 90/10, fault abort
//! and delay, mirroring, outlier detection (ejection and readmission), connection pool
//! overflow (503 `UO`), consistent hash on a header, LEAST_REQUEST under a slow endpoint, and
//! the retry budget against a backend failing every request.

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use mesh_e2e::topology::Pod;
use mesh_e2e::waypoint::{self as wp, send, Mode};
use mesh_e2e::{eventually, Mesh, MeshOptions, Topology};

const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 1, 20);
const V1_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 1, 21);
const V2_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 1, 22);
const FAILING_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 1, 23);
const O1_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 1, 24);
const O2_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 1, 25);
const POOL_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 1, 26);
const SHADOW_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 1, 27);
const H1_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 1, 28);
const H2_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 1, 29);
const H3_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 1, 31);
const SLOW_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 1, 32);
const FAST_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 1, 33);
const WAYPOINT_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 1, 30);

const ECHO_VIP: &str = "127.0.2.21:80";
const FAILING_VIP: &str = "127.0.2.22:80";
const OUTLIER_VIP: &str = "127.0.2.23:80";
const POOL_VIP: &str = "127.0.2.24:80";
const SHADOW_VIP: &str = "127.0.2.25:80";
const STICKY_VIP: &str = "127.0.2.26:80";
const LR_VIP: &str = "127.0.2.27:80";
const MIRRORED_VIP: &str = "127.0.2.28:80";

const WAYPOINT_ID: &str = "spiffe://cluster.local/ns/app/sa/waypoint";
const CLIENT_ID: &str = "spiffe://cluster.local/ns/client/sa/client";

fn topology() -> Topology {
    let pod = |name: &str, ip, labels: &[(&str, &str)]| {
        let mut p = Pod::new("app", name, "echo", "node1", ip, "x");
        p.labels = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        p
    };
    let mut waypoint = Pod::new("app", "waypoint-0", "waypoint", "wpnode", WAYPOINT_IP, "x");
    waypoint.labels = [(
        "gateway.networking.k8s.io/gateway-name".to_string(),
        "waypoint".to_string(),
    )]
    .into();
    Topology {
        ambient_namespaces: vec!["app".into(), "client".into()],
        pods: vec![
            Pod::new("client", "client", "client", "node1", CLIENT_IP, "client"),
            pod("echo-v1", V1_IP, &[("app", "echo"), ("version", "v1")]),
            pod("echo-v2", V2_IP, &[("app", "echo"), ("version", "v2")]),
            pod("failing", FAILING_IP, &[("app", "failing")]),
            pod("o1", O1_IP, &[("app", "outlier")]),
            pod("o2", O2_IP, &[("app", "outlier")]),
            pod("pool", POOL_IP, &[("app", "pool")]),
            pod("shadow", SHADOW_IP, &[("app", "shadow")]),
            pod("h1", H1_IP, &[("app", "sticky")]),
            pod("h2", H2_IP, &[("app", "sticky")]),
            pod("h3", H3_IP, &[("app", "sticky")]),
            pod("lr-slow", SLOW_IP, &[("app", "lr")]),
            pod("lr-fast", FAST_IP, &[("app", "lr")]),
            waypoint,
        ],
        services: vec![],
    }
}

fn config() -> String {
    let mut y = String::from(wp::WAYPOINT_GATEWAY_YAML);
    y += &wp::service_yaml("echo", ECHO_VIP, "app: echo");
    y += &wp::service_yaml("failing", FAILING_VIP, "app: failing");
    y += &wp::service_yaml("outlier", OUTLIER_VIP, "app: outlier");
    y += &wp::service_yaml("pool", POOL_VIP, "app: pool");
    y += &wp::service_yaml("shadow", SHADOW_VIP, "app: shadow");
    y += &wp::service_yaml("sticky", STICKY_VIP, "app: sticky");
    y += &wp::service_yaml("lr", LR_VIP, "app: lr");
    y += &wp::service_yaml("mirrored", MIRRORED_VIP, "app: echo, version: v1");
    y += r#"---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: echo, namespace: app}
spec:
  host: echo
  subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: echo, namespace: app}
spec:
  hosts: [echo]
  http:
  - match: [{uri: {prefix: /abort}}]
    fault: {abort: {httpStatus: 418, percentage: {value: 50}}}
    route: [{destination: {host: echo, subset: v1}}]
  - match: [{uri: {prefix: /delay}}]
    fault: {delay: {fixedDelay: 300ms, percentage: {value: 100}}}
    route: [{destination: {host: echo, subset: v1}}]
  - match: [{uri: {prefix: /mirror}}]
    route: [{destination: {host: echo, subset: v1}}]
    mirror: {host: shadow}
  - route:
    - {destination: {host: echo, subset: v1}, weight: 90}
    - {destination: {host: echo, subset: v2}, weight: 10}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: failing, namespace: app}
spec:
  hosts: [failing.app.svc.cluster.local]
  http:
  - route: [{destination: {host: failing}}]
    retries: {attempts: 5, retryOn: 5xx}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: outlier, namespace: app}
spec:
  host: outlier
  trafficPolicy:
    outlierDetection: {consecutive5xxErrors: 3, interval: 1s, baseEjectionTime: 5s, maxEjectionPercent: 50}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: pool, namespace: app}
spec:
  host: pool
  trafficPolicy:
    connectionPool: {tcp: {maxConnections: 1}, http: {http1MaxPendingRequests: 1}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: sticky, namespace: app}
spec:
  host: sticky
  trafficPolicy: {loadBalancer: {consistentHash: {httpHeaderName: x-user}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: lr, namespace: app}
spec:
  host: lr
  trafficPolicy: {loadBalancer: {simple: LEAST_REQUEST}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: mirrored, namespace: app}
spec:
  parentRefs: [{group: "", kind: Service, name: mirrored, port: 80}]
  rules:
  - backendRefs: [{name: mirrored, port: 80}]
    filters: [{type: RequestMirror, requestMirror: {backendRef: {name: shadow, port: 80}}}]
"#;
    y
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waypoint_istio_routing_and_resilience() {
    let opts = MeshOptions {
        nodes: Some(vec!["node1".into()]),
        ..Default::default()
    };
    let mesh = Mesh::start(topology(), opts).await;
    mesh.check(async {
        let v1 = wp::backend(V1_IP, "v1", Mode::Echo).await?;
        let _v2 = wp::backend(V2_IP, "v2", Mode::Echo).await?;
        let failing = wp::backend(FAILING_IP, "failing", Mode::StatusAfter(503, 200)).await?;
        let o1 = wp::backend(O1_IP, "o1", Mode::Echo).await?;
        let _o2 = wp::backend(O2_IP, "o2", Mode::Echo).await?;
        let _pool = wp::backend(POOL_IP, "pool", Mode::Delay(600)).await?;
        let shadow = wp::backend(SHADOW_IP, "shadow", Mode::Echo).await?;
        let _h = [
            wp::backend(H1_IP, "h1", Mode::Echo).await?,
            wp::backend(H2_IP, "h2", Mode::Echo).await?,
            wp::backend(H3_IP, "h3", Mode::Echo).await?,
        ];
        let _slow = wp::backend(SLOW_IP, "lr-slow", Mode::Delay(300)).await?;
        let _fast = wp::backend(FAST_IP, "lr-fast", Mode::Echo).await?;
        mesh.write_config("resilience", &config())?;
        let waypoint = wp::start_waypoint(&mesh, WAYPOINT_IP, "app", "waypoint", &[]).await?;
        let c = wp::client(
            &mesh,
            "node1",
            CLIENT_ID,
            CLIENT_IP,
            WAYPOINT_ID,
            WAYPOINT_IP,
        )
        .await?;

        // The VirtualService is live once /abort can answer with its fault status.
        let mut s = eventually(
            "the VirtualService fault on /abort",
            Duration::from_secs(20),
            Duration::from_millis(50),
            || async {
                let mut s = c.http1(ECHO_VIP).await?;
                let a = send(&mut s, "GET", "/abort", &[]).await?;
                Ok((a.status == 418).then_some(s))
            },
        )
        .await?;

        // Canary: subsets v1/v2 weighted 90/10 over 2,000 requests (10 % ± 4.5 σ).
        let mut to_v2 = 0;
        for _ in 0..2000 {
            let a = send(&mut s, "GET", "/", &[]).await?;
            anyhow::ensure!(a.status == 200, "canary answered {}", a.status);
            match a.pod() {
                "v2" => to_v2 += 1,
                "v1" => {}
                other => anyhow::bail!("canary reached {other}"),
            }
        }
        println!("canary: {to_v2}/2000 to v2");
        anyhow::ensure!(
            (140..=260).contains(&to_v2),
            "{to_v2} of 2000 went to subset v2; expected about 200"
        );

        // Fault abort at 50 %: 400 requests, 200 ± 4.5 σ (σ = 10) answered 418.
        let mut aborted = 0;
        for _ in 0..400 {
            let a = send(&mut s, "GET", "/abort", &[]).await?;
            match a.status.as_u16() {
                418 => aborted += 1,
                200 => {}
                other => anyhow::bail!("/abort answered {other}"),
            }
        }
        println!("fault abort: {aborted}/400");
        anyhow::ensure!((155..=245).contains(&aborted), "{aborted}/400 aborted");

        // Fault delay on every request: the answer comes no sooner than the delay.
        let started = Instant::now();
        let a = send(&mut s, "GET", "/delay", &[]).await?;
        anyhow::ensure!(a.status == 200 && a.pod() == "v1", "/delay: {}", a.status);
        anyhow::ensure!(
            started.elapsed() >= Duration::from_millis(300),
            "delayed request took {:?}",
            started.elapsed()
        );

        // Mirror: every /mirror request is copied to the shadow Service too.
        let before = (v1.hits(), shadow.hits());
        for _ in 0..5 {
            let a = send(&mut s, "GET", "/mirror", &[]).await?;
            anyhow::ensure!(a.status == 200 && a.pod() == "v1", "/mirror: {}", a.status);
        }
        eventually(
            "5 mirrored requests at the shadow backend",
            Duration::from_secs(10),
            Duration::from_millis(50),
            || async { Ok((shadow.hits() >= before.1 + 5).then_some(())) },
        )
        .await?;
        anyhow::ensure!(v1.hits() >= before.0 + 5, "primary missed requests");
        // The same machinery behind HTTPRoute's RequestMirror filter.
        let before = shadow.hits();
        let mut hr = c.http1(MIRRORED_VIP).await?;
        for _ in 0..3 {
            let a = send(&mut hr, "GET", "/", &[]).await?;
            anyhow::ensure!(a.status == 200 && a.pod() == "v1", "mirrored: {}", a.status);
        }
        eventually(
            "3 RequestMirror copies at the shadow backend",
            Duration::from_secs(10),
            Duration::from_millis(50),
            || async { Ok((shadow.hits() >= before + 3).then_some(())) },
        )
        .await?;

        // Outlier detection: o1 fails; after 3 consecutive 5xx it gets no traffic; once it is
        // healthy again it is readmitted after the ejection time.
        o1.set_failing(true);
        let mut o = c.http1(OUTLIER_VIP).await?;
        let mut failures = 0;
        for _ in 0..20 {
            if send(&mut o, "GET", "/", &[]).await?.status != 200 {
                failures += 1;
            }
        }
        anyhow::ensure!(failures <= 4, "{failures} failures before ejection");
        let ejected_at = o1.hits();
        for _ in 0..10 {
            let a = send(&mut o, "GET", "/", &[]).await?;
            anyhow::ensure!(a.status == 200 && a.pod() == "o2", "ejected o1 answered");
        }
        anyhow::ensure!(o1.hits() == ejected_at, "an ejected endpoint got traffic");
        o1.set_failing(false);
        eventually(
            "o1 readmitted after baseEjectionTime",
            Duration::from_secs(15),
            Duration::from_millis(100),
            || async {
                let mut o = c.http1(OUTLIER_VIP).await?;
                let a = send(&mut o, "GET", "/", &[]).await?;
                Ok((a.pod() == "o1").then_some(()))
            },
        )
        .await?;

        // Connection pool: 1 connection, 1 pending; 6 concurrent requests to a backend taking
        // 600 ms overflow with 503 UO.
        let mut tasks = Vec::new();
        for _ in 0..6 {
            let mut p = c.http1(POOL_VIP).await?;
            tasks.push(tokio::spawn(async move {
                send(&mut p, "GET", "/", &[])
                    .await
                    .map(|a| a.status.as_u16())
            }));
        }
        let mut codes = Vec::new();
        for t in tasks {
            codes.push(t.await??);
        }
        let overflowed = codes.iter().filter(|c| **c == 503).count();
        let ok = codes.iter().filter(|c| **c == 200).count();
        println!("pool: {codes:?}");
        anyhow::ensure!(
            overflowed >= 3 && ok >= 1,
            "pool overflow: statuses {codes:?}"
        );
        let m = waypoint.metrics().await?;
        let uo = m.sum(
            "istio_requests_total",
            &[
                ("reporter", "waypoint"),
                ("destination_service", "pool.app.svc.cluster.local"),
                ("response_code", "503"),
                ("response_flags", "UO"),
            ],
        );
        anyhow::ensure!(uo >= overflowed as f64, "istio_requests_total UO = {uo}");
        let fi = m.sum(
            "istio_requests_total",
            &[("response_code", "418"), ("response_flags", "FI")],
        );
        anyhow::ensure!(fi >= aborted as f64, "istio_requests_total FI = {fi}");
        let di = m.sum("istio_requests_total", &[("response_flags", "DI")]);
        anyhow::ensure!(di >= 1.0, "istio_requests_total DI = {di}");

        // Consistent hash on x-user: a user always lands on one endpoint; users spread.
        let mut h = c.http1(STICKY_VIP).await?;
        let mut seen: HashMap<String, HashSet<String>> = HashMap::new();
        for round in 0..10 {
            for u in 0..12 {
                let user = format!("user-{u}");
                let a = send(&mut h, "GET", &format!("/r{round}"), &[("x-user", &user)]).await?;
                anyhow::ensure!(a.status == 200, "sticky answered {}", a.status);
                seen.entry(user).or_default().insert(a.pod().to_string());
            }
        }
        anyhow::ensure!(
            seen.values().all(|pods| pods.len() == 1),
            "a user moved between endpoints: {seen:?}"
        );
        let used: HashSet<&String> = seen.values().flatten().collect();
        anyhow::ensure!(used.len() >= 2, "12 users all on {used:?}");

        // LEAST_REQUEST: 8 concurrent clients; the slow endpoint (300 ms) holds requests, so
        // the idle fast one gets most of the traffic (round robin would split 50/50).
        let mut workers = Vec::new();
        for _ in 0..8 {
            let mut w = c.http1(LR_VIP).await?;
            workers.push(tokio::spawn(async move {
                let mut slow = 0u32;
                for _ in 0..25 {
                    let a = send(&mut w, "GET", "/", &[]).await?;
                    anyhow::ensure!(a.status == 200, "lr answered {}", a.status);
                    if a.pod() == "lr-slow" {
                        slow += 1;
                    }
                }
                Ok(slow)
            }));
        }
        let mut slow = 0;
        for w in workers {
            slow += w.await??;
        }
        println!("least request: {slow}/200 to the slow endpoint");
        anyhow::ensure!(slow <= 50, "{slow}/200 requests went to the slow endpoint");

        // Retry budget: 40 concurrent requests to a backend failing every request (after
        // 200 ms) with 5 retries each. Unbounded that is 240 backend hits; the budget allows
        // retries for at most 20 % of the requests in flight (at least 3).
        let before = failing.hits();
        let mut tasks = Vec::new();
        for _ in 0..40 {
            let mut f = c.http1(FAILING_VIP).await?;
            tasks.push(tokio::spawn(async move {
                send(&mut f, "GET", "/", &[])
                    .await
                    .map(|a| a.status.as_u16())
            }));
        }
        for t in tasks {
            let status = t.await??;
            anyhow::ensure!(status == 503, "failing backend answered {status}");
        }
        let hits = failing.hits() - before;
        println!("retry budget: {hits} backend hits for 40 requests");
        anyhow::ensure!(hits >= 40, "only {hits} hits");
        anyhow::ensure!(
            hits <= 80,
            "{hits} backend hits: the retry budget did not hold"
        );
        let m = waypoint.metrics().await?;
        let exhausted = m.sum("waypoint_retries_total", &[("outcome", "budget_exhausted")]);
        anyhow::ensure!(exhausted >= 1.0, "no budget_exhausted retries counted");
        Ok(())
    })
    .await;
}

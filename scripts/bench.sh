#!/usr/bin/env bash
# make bench: performance of the ztunnel pair against raw loopback TCP, measured in the same run
# on the same machine, everything inside a network namespace this script creates (root only).
#
#   raw:     client 127.0.1.1 -> server pod 127.0.1.2 directly (loopback TCP)
#   tunnel:  client 127.0.1.1 -> service VIP 127.0.2.2, REDIRECTed by iptables to node1's
#            ztunnel (15001) -> HBONE mTLS -> node2's ztunnel (127.0.1.2:15008) -> server pod
#
# Figures: iperf3 throughput (1 and 8 streams), p50/p90/p99 latency of 1 KiB request/response at
# 1000 rps for 10 s, new connections per second (connect + 1-byte round trip, 5 s), ztunnel RSS
# idle and with 1000 open tunnelled connections. Prints a table and writes docs/performance.md.
#
# Env: BENCH_SECS (iperf3 seconds, default 10), BENCH_PROFILE (release|debug, default release).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
SECS=${BENCH_SECS:-10}
PROFILE=${BENCH_PROFILE:-release}

die() { echo "bench: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "needs root (it creates a network namespace and an iptables rule); run: sudo make bench"
for t in ip iptables iperf3 python3 curl; do
    command -v "$t" >/dev/null 2>&1 || die "$t not found (make prereqs installs it as root)"
done

# Only what the bench runs, so a crate elsewhere in the workspace that is mid-change cannot stop it.
PKGS=(-p istiod-lite -p ztunnel -p mesh-bench -p meshctl -p ambient-cni -p waypoint)
echo "==> cargo build --$PROFILE ${PKGS[*]}"
if [ "$PROFILE" = release ]; then cargo build --release "${PKGS[@]}"; else cargo build "${PKGS[@]}"; fi
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/$PROFILE
for b in istiod-lite ztunnel meshbench meshctl ambient-cni waypoint; do [ -x "$BIN/$b" ] || die "$BIN/$b missing"; done

NS=mesh-bench-$$
WORK=$(mktemp -d "${TMPDIR:-/tmp}/ambient-rs-bench.XXXXXX")
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    ip netns delete "$NS" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
# nsenter execs in place; `ip netns exec` forks and waits, so its $! would not be the child.
X() { nsenter --net="/run/netns/$NS" "$@"; }
# Background processes call nsenter directly, not through X: `X cmd &` runs X in a forked
# subshell, so $! would be that bash, not the process (wrong RSS, and kill would orphan it).

ip netns add "$NS"
ip -n "$NS" link set lo up
# Room for 5 s of connection churn and 1000 held connections.
X sysctl -qw net.ipv4.ip_local_port_range="1024 65000" net.ipv4.tcp_tw_reuse=1
# 1000 held connections need ~2000 descriptors per ztunnel; raise the soft limit as far as allowed.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
[ "$(ulimit -n)" = unlimited ] || [ "$(ulimit -n)" -ge 4096 ] || die "open-file limit $(ulimit -n) is too low for 1000 held connections"

mkdir -p "$WORK/config"
cp "$ROOT"/examples/local/namespaces.yaml "$ROOT"/examples/local/client.yaml "$WORK/config/"
cat >"$WORK/config/bench.yaml" <<'EOF'
apiVersion: v1
kind: ServiceAccount
metadata: {name: server, namespace: demo-b}
---
apiVersion: v1
kind: Pod
metadata:
  name: server
  namespace: demo-b
  labels: {app: server}
spec:
  nodeName: node2
  serviceAccountName: server
status:
  podIP: 127.0.1.2
---
apiVersion: v1
kind: Service
metadata: {name: bench, namespace: demo-b}
spec:
  selector: {app: server}
  clusterIP: 127.0.2.2
  ports:
  - {name: tcp-iperf, port: 5201, targetPort: 5201}
  - {name: tcp-echo, port: 7000, targetPort: 7000}
EOF

wait_200() {
    local url=$1 i
    for i in $(seq 1 300); do
        X curl -fsS -o /dev/null --max-time 1 "$url" 2>/dev/null && return 0
        sleep 0.1
    done
    die "$url never answered 200 (logs in $WORK)"
}

echo "==> starting istiod-lite and two ztunnels in network namespace $NS"
CONFIG_DIR=$WORK/config STATE_DIR=$WORK/state nsenter --net="/run/netns/$NS" "$BIN/istiod-lite" >"$WORK/istiod.log" 2>&1 &
PIDS+=($!)
wait_200 http://127.0.0.1:15014/ready
declare -A ZPID
for node in node1 node2; do
    "$BIN/istiod-lite" node-token --state-dir "$WORK/state" --node $node >"$WORK/$node.token"
    ip=127.0.0.1 out=0.0.0.0:15001
    [ $node = node2 ] && ip=127.0.0.2 out=
    NODE_NAME=$node XDS_ADDRESS=http://127.0.0.1:15010 AUTH_TOKEN=$WORK/$node.token \
    ADMIN_ADDR=$ip:15000 STATS_ADDR=$ip:15020 READINESS_ADDR=$ip:15021 SOCKS5_ADDR=$ip:15080 \
    OUTBOUND_ADDR=$out INBOUND_PLAINTEXT_ADDR= RUST_LOG=warn \
        nsenter --net="/run/netns/$NS" "$BIN/ztunnel" >"$WORK/ztunnel-$node.log" 2>&1 &
    PIDS+=($!)
    ZPID[$node]=$!   # X uses nsenter, which execs: this is ztunnel's own pid
done
wait_200 http://127.0.0.1:15021/healthz/ready
wait_200 http://127.0.0.2:15021/healthz/ready

rss_kb() { awk '/^VmRSS/{print $2}' "/proc/$1/status"; }
for node in node1 node2; do
    grep -q ztunnel "/proc/${ZPID[$node]}/comm" || die "pid ${ZPID[$node]} is not $node's ztunnel"
done
IDLE1=$(rss_kb "${ZPID[node1]}") IDLE2=$(rss_kb "${ZPID[node2]}")

nsenter --net="/run/netns/$NS" iperf3 -s -B 127.0.1.2 -p 5201 >"$WORK/iperf3-server.log" 2>&1 &
PIDS+=($!)
nsenter --net="/run/netns/$NS" "$BIN/meshbench" echo --listen 127.0.1.2:7000 >"$WORK/echo.log" 2>&1 &
PIDS+=($!)
X iptables -t nat -A OUTPUT -p tcp -d 127.0.2.0/24 -j REDIRECT --to-ports 15001
for i in $(seq 1 100); do X bash -c 'exec 3<>/dev/tcp/127.0.1.2/5201 && exec 3<>/dev/tcp/127.0.1.2/7000' 2>/dev/null && break; sleep 0.05; done

declare -A R
iperf() { # target streams -> Gbit/s
    X iperf3 -c "$1" -p 5201 -B 127.0.1.1 -t "$SECS" -P "$2" -J >"$WORK/iperf.json" ||
        die "iperf3 to $1 failed: $(tail -n 5 "$WORK/iperf.json")"
    python3 -c 'import json,sys; print("%.2f" % (json.load(open(sys.argv[1]))["end"]["sum_received"]["bits_per_second"]/1e9))' "$WORK/iperf.json"
}
kv() { grep -o "$1=[^ ]*" | head -n 1 | cut -d= -f2; }
ms_to_us() { python3 -c "import sys; print(round(float(sys.argv[1]) * 1000))" "$1"; }

for mode in raw tunnel; do
    dst=127.0.1.2; [ $mode = tunnel ] && dst=127.0.2.2
    echo "==> $mode: iperf3 1 stream, 8 streams ($SECS s each)"
    R[$mode.tp1]=$(iperf $dst 1)
    R[$mode.tp8]=$(iperf $dst 8)
    echo "==> $mode: latency, 1 KiB request/response at 1000 rps for 10 s"
    out=$(X "$BIN/meshbench" latency --to $dst:7000 --from 127.0.1.1 --rate 1000 --secs 10 --size 1024)
    for k in p50 p90 p99 max; do R[$mode.${k}_us]=$(ms_to_us "$(echo "$out" | kv ${k}_ms)"); done
    echo "==> $mode: new connections per second (5 s, 8 concurrent loops)"
    out=$(X "$BIN/meshbench" connect --to $dst:7000 --from 127.0.1.1 --secs 5 --concurrency 8)
    R[$mode.cps]=$(echo "$out" | kv conns_per_s)
    R[$mode.cps_err]=$(echo "$out" | kv errors)
done

# The tunnel figures must really be tunnelled: node2 saw mTLS connections from the client.
MTLS=$(X curl -fsS http://127.0.0.2:15020/metrics | grep '^istio_tcp_connections_opened_total' |
    grep 'reporter="destination"' | grep 'connection_security_policy="mutual_tls"' |
    awk '{s+=$NF} END {print s+0}')
[ "${MTLS%.*}" -gt 1000 ] || die "node2 counted only $MTLS mTLS connections: traffic was not tunnelled"

echo "==> holding 1000 tunnelled connections"
mkfifo "$WORK/hold.in"
nsenter --net="/run/netns/$NS" "$BIN/meshbench" hold --to 127.0.2.2:7000 --from 127.0.1.1 --count 1000 <"$WORK/hold.in" >"$WORK/hold.out" 2>&1 &
HOLD=$!
exec 7>"$WORK/hold.in"
for i in $(seq 1 600); do grep -q '^holding' "$WORK/hold.out" && break; kill -0 $HOLD 2>/dev/null || break; sleep 0.1; done
grep -q '^holding 1000 ' "$WORK/hold.out" || die "could not hold 1000 connections: $(cat "$WORK/hold.out")"
HELD1=$(rss_kb "${ZPID[node1]}") HELD2=$(rss_kb "${ZPID[node2]}")
exec 7>&-
wait $HOLD || true

# The same figures pod -> pod through in-pod capture, next to raw pod -> pod on the same bridge.
"$ROOT/scripts/bench-captured.sh" "$BIN" "$WORK/captured.md" "$SECS"
# The waypoint against direct and against nginx as a reverse proxy, HTTP/1.1 and HTTP/2.
"$ROOT/scripts/bench-waypoint.sh" "$BIN" "$WORK/waypoint.md" "$SECS"

CPU=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
NPROC=$(nproc)
KERNEL=$(uname -r)
COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
DATE=$(date -u +%Y-%m-%d)

python3 - "$WORK/table.md" <<EOF
import sys
R = {$(for k in "${!R[@]}"; do printf '"%s": "%s", ' "$k" "${R[$k]}"; done)}
f = lambda k: float(R[k] or 0)
def ratio(a, b): return f"{f(b)/f(a):.2f}x" if f(a) else "n/a"
rows = [
 ("iperf3, 1 stream (Gbit/s)", R["raw.tp1"], R["tunnel.tp1"], ratio("raw.tp1", "tunnel.tp1"), ">= 0.25x"),
 ("iperf3, 8 streams -P 8 (Gbit/s)", R["raw.tp8"], R["tunnel.tp8"], ratio("raw.tp8", "tunnel.tp8"), "scale with cores"),
 ("latency p50, 1 KiB req/resp @1000 rps (us)", R["raw.p50_us"], R["tunnel.p50_us"], f"+{f('tunnel.p50_us')-f('raw.p50_us'):.0f} us", ""),
 ("latency p90 (us)", R["raw.p90_us"], R["tunnel.p90_us"], f"+{f('tunnel.p90_us')-f('raw.p90_us'):.0f} us", ""),
 ("latency p99 (us)", R["raw.p99_us"], R["tunnel.p99_us"], f"+{f('tunnel.p99_us')-f('raw.p99_us'):.0f} us", "added << 200 us"),
 ("new connections/s (connect + 1 B round trip)", R["raw.cps"], R["tunnel.cps"], ratio("raw.cps", "tunnel.cps"), ">= 0.2x"),
]
out = ["| figure | raw loopback | through the ztunnel pair | tunnel vs raw | target |", "|---|---|---|---|---|"]
out += [f"| {a} | {b} | {c} | {d} | {e} |" for (a, b, c, d, e) in rows]
idle1, idle2, held1, held2 = $IDLE1, $IDLE2, $HELD1, $HELD2
out += ["", "| ztunnel memory (VmRSS) | node1 (source side) | node2 (destination side) | target |", "|---|---|---|---|",
 f"| idle, ready, no traffic | {idle1/1024:.1f} MB | {idle2/1024:.1f} MB | <= 15 MB |",
 f"| 1,000 open tunnelled connections | {held1/1024:.1f} MB | {held2/1024:.1f} MB | |",
 f"| per connection ((held - idle) / 1000) | {(held1-idle1)/1000:.1f} KB | {(held2-idle2)/1000:.1f} KB | <= 4 KB |"]
open(sys.argv[1], "w").write("\n".join(out) + "\n")
EOF

echo
cat "$WORK/table.md"
echo "(connection errors during the cps runs: raw ${R[raw.cps_err]}, tunnel ${R[tunnel.cps_err]})"

cat >"$ROOT/docs/performance.md" <<EOF
# Performance

Measured by \`make bench\` (\`scripts/bench.sh\`) on $DATE, commit \`$COMMIT\`, $PROFILE build.
Machine: $NPROC CPUs ($CPU), Linux $KERNEL. The machine is shared with other work, so treat
single figures as indicative; the ratios are what matters (both paths measured in the same run).

$(cat "$WORK/table.md")

## Pod to pod through in-pod capture

\`scripts/bench-captured.sh\` (part of \`make bench\`, same run): a one-node \`meshctl local\`
cluster (Debian's bridge + host-local + loopback plugins chained with ambient-cni, one in-pod
ztunnel). **raw**: client pod → server pod in a namespace outside the mesh, plain TCP across
the node's bridge. **captured**: the same pair in an ambient namespace: the client's
\`connect()\` is REDIRECTed inside its netns to ztunnel's 15001, tunnelled (HBONE, mTLS) to the
15008 ztunnel opened in the server pod's netns, and delivered from the client's IP. Same
commands as above (\`iperf3 -c <server pod IP>\`, \`meshbench latency|connect --to <server pod
IP>:7000 --from <client pod IP>\`), run in the client pod with \`meshctl local exec\`; the script
checks ztunnel counted the captured connections as \`mutual_tls\`.

$(cat "$WORK/captured.md")

## Waypoint (L7) against nginx as a reverse proxy

\`scripts/bench-waypoint.sh\` (part of \`make bench\`, same run): a one-node \`meshctl local\`
cluster. A backend pod runs nginx serving a 1 KiB body (\`/1k\`) on 8080 (HTTP/1.1) and 8081
(h2c). **direct**: client pod → backend pod. **nginx**: client pod → Debian's nginx as a plain
reverse proxy (upstream keep-alive) → backend. **nginx mTLS chain**: the waypoint's topology
built from nginx, for a like-for-like comparison: an nginx in the client pod (plain in, mTLS
out) → an nginx reverse-proxy pod (mTLS in and out) → an nginx in the backend pod (mTLS in,
plain to the backend on 127.0.0.1); TLS 1.3, ECDSA P-256 certificates from one CA, verified in
both directions, upstream keep-alive and session reuse. **waypoint**: client pod in an ambient
namespace → captured by ztunnel → HBONE mTLS → the namespace's waypoint pod → HBONE mTLS →
backend (the script checks the waypoint counted the requests). Load from the client pod:
\`wrk -t 2 -c 32 -d $SECS s --latency <url>\` and \`h2load -c 32 -m 8 -t 2 -D $SECS --log-file\`
(percentiles from the per-request log). On 2 cores, load generator, proxies and backend share
the CPUs.

$(cat "$WORK/waypoint.md")

Where the waypoint's HTTP/1.1 time goes (\`perf record --call-graph dwarf\` on the waypoint during
the wrk run): about 40 % in system calls (the TLS reads and writes on its two HBONE connections;
every request crosses ztunnel → waypoint → ztunnel, so three proxies and four TLS legs, where the
nginx reverse proxy is one plain hop), the HTTP/1.1 codec over HTTP/2 streams most of the rest.
Recording metrics and the access log were a third of it before they were made cheap (handles
cached per label set, access-log lines written in batches by a writer thread). Read the two
nginx columns differently: the reverse proxy is one plain hop (architecture.md's target is the
waypoint at or above its HTTP/1.1 rate), the mTLS chain does the same three-hop mTLS work as
the mesh path. nginx speaks HTTP/1.1 to its upstreams, which is why it falls behind over HTTP/2.

Memory after the benchmarks: the "held" figures include allocator caches left by the runs
before them, so "per connection" is an upper bound.

## Setup

Everything runs inside a network namespace created for the run (\`ip netns add\`, \`lo\` up):
istiod-lite with a config of two pods (\`demo-a/client\` 127.0.1.1 on node1, \`demo-b/server\`
127.0.1.2 on node2) and a service \`demo-b/bench\` (VIP 127.0.2.2, ports 5201 and 7000); two
ztunnels (node1 with \`OUTBOUND_ADDR=0.0.0.0:15001\`); one iptables rule
\`iptables -t nat -A OUTPUT -p tcp -d 127.0.2.0/24 -j REDIRECT --to-ports 15001\`.
Servers: \`iperf3 -s -B 127.0.1.2 -p 5201\`, \`meshbench echo --listen 127.0.1.2:7000\`.

- **raw**: the client bound to 127.0.1.1 connects to the pod IP 127.0.1.2 (not captured).
- **tunnel**: the same client connects to the VIP 127.0.2.2: REDIRECT → node1's ztunnel → HBONE
  (TLS 1.3 + HTTP/2 CONNECT, pooled) → node2's ztunnel on 127.0.1.2:15008 → the server, from the
  client's IP. The script checks node2 counted the connections as \`mutual_tls\`.

## Commands

| figure | command (inside the namespace) |
|---|---|
| throughput | \`iperf3 -c <dst> -p 5201 -B 127.0.1.1 -t $SECS -P 1\` and \`-P 8\`; \`end.sum_received.bits_per_second\` |
| latency | \`meshbench latency --to <dst>:7000 --from 127.0.1.1 --rate 1000 --secs 10 --size 1024\` (one connection, a request every 1 ms, latency from write to full response; 100 warm-up requests) |
| connection rate | \`meshbench connect --to <dst>:7000 --from 127.0.1.1 --secs 5 --concurrency 8\` (connect, 1-byte round trip, close) |
| memory | \`VmRSS\` from \`/proc/<ztunnel pid>/status\`: after readiness before any traffic, and while \`meshbench hold --count 1000\` keeps 1,000 tunnelled connections open |

\`meshbench\` is the \`bench/\` crate. Reproduce with \`sudo make bench\`
(\`BENCH_SECS\` changes the iperf3 duration).
EOF
echo
echo "wrote docs/performance.md"

#!/usr/bin/env bash
# Part of `make bench` (called by scripts/bench.sh): pod -> pod through in-pod capture next to
# raw pod -> pod TCP over the same bridge, in the same run, on a one-node `meshctl local`
# cluster (Debian's CNI plugins + ambient-cni, one in-pod ztunnel).
#
#   raw:      namespace bench-raw (not in the mesh): client pod -> server pod, plain TCP on cni0
#   captured: namespace bench-mesh (ambient): client pod's connect() REDIRECTed in its netns to
#             ztunnel's 15001 -> HBONE mTLS -> server pod's 15008 (opened by ztunnel in the
#             server's netns) -> server, from the client's IP
#
# Usage: bench-captured.sh BIN_DIR OUT.md SECS   (root; writes a markdown table to OUT.md)
set -euo pipefail
BIN=$1 OUT=$2 SECS=$3
die() { echo "bench-captured: $*" >&2; exit 1; }
NAME=bench$$
STATE=$(mktemp -d /tmp/ambrs-bench.XXXXXX)
M() { "$BIN/meshctl" local --name "$NAME" --state-dir "$STATE/s" "$@"; }
cleanup() { M down >/dev/null 2>&1 || true; rm -rf "$STATE"; }
trap cleanup EXIT

echo "==> captured: meshctl local up (1 node, release binaries from $BIN)"
M up --nodes 1 --bin-dir "$BIN" >/dev/null
M namespace bench-mesh --label istio.io/dataplane-mode=ambient >/dev/null
M namespace bench-raw >/dev/null
SERVE="iperf3 -s -p 5201 & exec $BIN/meshbench echo --listen 0.0.0.0:7000"
declare -A IP
for ns in bench-raw bench-mesh; do
    IP[$ns.server]=$(M pod add server -n $ns --sa server --node node-1 -- bash -c "$SERVE" 2>/dev/null)
    IP[$ns.client]=$(M pod add client -n $ns --sa client --node node-1 2>/dev/null)
done
E() { local ns=$1; shift; M exec client -n "$ns" -- "$@"; }
for ns in bench-raw bench-mesh; do
    for i in $(seq 1 200); do
        E $ns bash -c "exec 3<>/dev/tcp/${IP[$ns.server]}/5201 && exec 3<>/dev/tcp/${IP[$ns.server]}/7000" 2>/dev/null && break
        sleep 0.05
    done
done

declare -A R
kv() { grep -o "$1=[^ ]*" | head -n 1 | cut -d= -f2; }
ms_to_us() { python3 -c "import sys; print(round(float(sys.argv[1]) * 1000))" "$1"; }
for ns in bench-raw bench-mesh; do
    mode=raw; [ $ns = bench-mesh ] && mode=captured
    dst=${IP[$ns.server]} src=${IP[$ns.client]}
    echo "==> $mode pod -> pod: iperf3 1 and 8 streams, latency, connection rate"
    for p in 1 8; do
        E $ns iperf3 -c "$dst" -p 5201 -t "$SECS" -P $p -J >"$STATE/iperf.json" || die "iperf3 ($mode) failed"
        R[$mode.tp$p]=$(python3 -c 'import json,sys; print("%.2f" % (json.load(open(sys.argv[1]))["end"]["sum_received"]["bits_per_second"]/1e9))' "$STATE/iperf.json")
    done
    out=$(E $ns "$BIN/meshbench" latency --to "$dst:7000" --from "$src" --rate 1000 --secs 10 --size 1024)
    for k in p50 p99; do R[$mode.${k}_us]=$(ms_to_us "$(echo "$out" | kv ${k}_ms)"); done
    out=$(E $ns "$BIN/meshbench" connect --to "$dst:7000" --from "$src" --secs 5 --concurrency 8)
    R[$mode.cps]=$(echo "$out" | kv conns_per_s)
done

# The captured figures must really be captured: ztunnel counted mTLS connections into the
# mesh server pod.
MTLS=$(nsenter --net="/run/netns/ambrs-$NAME.node-1" curl -fsS http://127.0.0.1:15020/metrics |
    grep '^istio_tcp_connections_opened_total' | grep 'reporter="destination"' |
    grep 'destination_workload_namespace="bench-mesh"' | grep 'connection_security_policy="mutual_tls"' |
    awk '{s+=$NF} END {print s+0}')
[ "${MTLS%.*}" -gt 1000 ] || die "only $MTLS mTLS connections counted: the captured path was not tunnelled"

python3 - "$OUT" <<PY
import sys
R = {$(for k in "${!R[@]}"; do printf '"%s": "%s", ' "$k" "${R[$k]}"; done)}
f = lambda k: float(R[k] or 0)
def ratio(a, b): return f"{f(b)/f(a):.2f}x" if f(a) else "n/a"
rows = [
 ("iperf3, 1 stream (Gbit/s)", "tp1", "ratio"),
 ("iperf3, 8 streams (Gbit/s)", "tp8", "ratio"),
 ("latency p50, 1 KiB req/resp @1000 rps (us)", "p50_us", "diff"),
 ("latency p99 (us)", "p99_us", "diff"),
 ("new connections/s", "cps", "ratio"),
]
out = ["| figure | raw pod -> pod (bridge) | captured pod -> pod (in-pod ztunnel, mTLS) | captured vs raw |", "|---|---|---|---|"]
for name, k, how in rows:
    cmp = ratio(f"raw.{k}", f"captured.{k}") if how == "ratio" else f"+{f('captured.'+k)-f('raw.'+k):.0f} us"
    out.append(f"| {name} | {R['raw.'+k]} | {R['captured.'+k]} | {cmp} |")
open(sys.argv[1], "w").write("\n".join(out) + "\n")
PY
cat "$OUT"

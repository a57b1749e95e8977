#!/usr/bin/env bash
# make demo: the whole mesh on one machine, no root, no Kubernetes.
#
#   istiod-lite  reads examples/local/*.yaml (namespaces demo-a/demo-b in ambient mode, pod
#                demo-a/client on node1 at 127.0.1.1, pod demo-b/server on node2 at 127.0.1.2,
#                service server.demo-b 127.0.2.1:80 -> 8080), runs the CA and pushes xDS
#   ztunnel x2   node1 and node2, each with its own admin/metrics/readiness/SOCKS5 addresses
#   server app   examples/apps/server.py on 127.0.1.2:8080
#   client       curl from 127.0.1.1 through node1's SOCKS5 port, by service name
#
# Traffic: curl -> SOCKS5 (node1) -> HBONE mTLS to 127.0.1.2:15008 (node2) -> app.
# Everything stays on loopback and everything started here is stopped on exit.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD

# As root the demo runs with transparent capture on a local cluster of network namespaces
# (scripts/demo-captured.sh); DEMO_MODE=explicit forces this loopback/SOCKS5 version.
if [ "$(id -u)" = 0 ] && [ "${DEMO_MODE:-}" != explicit ]; then
    if [ -x /usr/lib/cni/bridge ] || [ -x /opt/cni/bin/bridge ]; then
        exec "$ROOT/scripts/demo-captured.sh"
    fi
    echo "note: containernetworking-plugins is not installed (make prereqs installs it); running the explicit-mode demo" >&2
else
    echo "note: not root: explicit mode (apps reach the mesh through ztunnel's SOCKS5 port); run as root for transparent capture" >&2
fi

if [ -t 1 ]; then B=$'\033[1m'; G=$'\033[32m'; R=$'\033[31m'; N=$'\033[0m'; else B=; G=; R=; N=; fi
step() { printf '\n%s==> %s%s\n' "$B" "$*" "$N"; }

WORK=$(mktemp -d "${TMPDIR:-/tmp}/ambient-rs-demo.XXXXXX")
PIDS=()
OK=0
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    if [ "$OK" = 1 ]; then rm -rf "$WORK"; else echo "logs kept in $WORK" >&2; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

fail() {
    printf '\n%sdemo FAILED: %s%s\n' "$R" "$*" "$N" >&2
    for f in "$WORK"/*.log; do
        [ -f "$f" ] || continue
        echo "----- last lines of $f -----" >&2
        tail -n 20 "$f" >&2
    done
    exit 1
}

for tool in curl python3 cargo; do
    command -v "$tool" >/dev/null 2>&1 || fail "$tool is required (make test installs curl and python3 when run as root)"
done

# Addresses (node2 uses 127.0.0.2 so both ztunnels keep Istio's port numbers).
ISTIOD_XDS=127.0.0.1:15010 ISTIOD_TLS=127.0.0.1:15012 ISTIOD_MON=127.0.0.1:15014
N1=127.0.0.1 N2=127.0.0.2
CLIENT_IP=127.0.1.1 SERVER_IP=127.0.1.2
for addr in $ISTIOD_XDS $ISTIOD_TLS $ISTIOD_MON $N1:15000 $N1:15020 $N1:15021 $N1:15080 \
            $N2:15000 $N2:15020 $N2:15021 $N2:15080 $CLIENT_IP:15008 $SERVER_IP:15008 $SERVER_IP:8080; do
    if (exec 3<>"/dev/tcp/${addr%:*}/${addr#*:}") 2>/dev/null; then
        fail "$addr is already in use: is another demo or mesh running? Stop it first."
    fi
done

step "Building ztunnel and istiod-lite (debug: fastest from a cold start)"
cargo build -p ztunnel -p istiod-lite
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/debug
[ -x "$BIN/istiod-lite" ] && [ -x "$BIN/ztunnel" ] || fail "binaries not found in $BIN"

# Polls an HTTP endpoint until it answers 200 (readiness signal, not a fixed sleep).
wait_200() {
    local url=$1 what=$2 pid=$3 i
    for i in $(seq 1 300); do
        if curl -fsS -o /dev/null --max-time 1 "$url" 2>/dev/null; then return 0; fi
        kill -0 "$pid" 2>/dev/null || fail "$what exited while starting"
        sleep 0.1
    done
    fail "$what did not become ready ($url)"
}

step "Starting istiod-lite (config: examples/local, state: $WORK/state)"
CONFIG_DIR=$ROOT/examples/local STATE_DIR=$WORK/state \
XDS_PLAINTEXT_ADDR=$ISTIOD_XDS XDS_TLS_ADDR=$ISTIOD_TLS MONITORING_ADDR=$ISTIOD_MON \
    "$BIN/istiod-lite" >"$WORK/istiod-lite.log" 2>&1 &
PIDS+=($!)
wait_200 "http://$ISTIOD_MON/ready" istiod-lite "${PIDS[-1]}"
echo "istiod-lite ready: xDS+CA on $ISTIOD_XDS (plaintext) and $ISTIOD_TLS (TLS), metrics on $ISTIOD_MON"

step "Starting two ztunnels (each authenticates with its node token)"
for node in node1 node2; do
    "$BIN/istiod-lite" node-token --state-dir "$WORK/state" --node "$node" >"$WORK/$node.token"
    ip=$N1; [ "$node" = node2 ] && ip=$N2
    # TLS to istiod's 15012, trusting the root istiod-lite wrote into its state dir.
    NODE_NAME=$node XDS_ADDRESS=https://$ISTIOD_TLS XDS_ROOT_CA=$WORK/state/root-cert.pem AUTH_TOKEN=$WORK/$node.token \
    ADMIN_ADDR=$ip:15000 STATS_ADDR=$ip:15020 READINESS_ADDR=$ip:15021 SOCKS5_ADDR=$ip:15080 \
    OUTBOUND_ADDR= INBOUND_PLAINTEXT_ADDR= \
        "$BIN/ztunnel" >"$WORK/ztunnel-$node.log" 2>&1 &
    PIDS+=($!)
done
wait_200 "http://$N1:15021/healthz/ready" "ztunnel node1" "${PIDS[1]}"
wait_200 "http://$N2:15021/healthz/ready" "ztunnel node2" "${PIDS[2]}"
echo "node1: SOCKS5 $N1:15080, metrics http://$N1:15020/metrics, admin http://$N1:15000/config_dump"
echo "node2: SOCKS5 $N2:15080, metrics http://$N2:15020/metrics, admin http://$N2:15000/config_dump"

step "Starting the server app (pod demo-b/server) on $SERVER_IP:8080"
python3 "$ROOT/examples/apps/server.py" --pod server --bind $SERVER_IP --port 8080 >"$WORK/app-server.log" 2>&1 &
PIDS+=($!)
for i in $(seq 1 100); do
    (exec 3<>"/dev/tcp/$SERVER_IP/8080") 2>/dev/null && break
    kill -0 "${PIDS[-1]}" 2>/dev/null || fail "server app exited"
    sleep 0.05
done

step "Client pod demo-a/client ($CLIENT_IP) -> http://server.demo-b.svc.cluster.local/ through the mesh"
CMD="curl -sS --max-time 10 --socks5-hostname $N1:15080 --interface $CLIENT_IP http://server.demo-b.svc.cluster.local/"
echo "\$ $CMD"
BODY=$($CMD) || fail "curl through the mesh failed"
echo "$BODY"
echo "$BODY" | grep -q "hello from pod server" || fail "unexpected answer from the server"
echo "$BODY" | grep -q "from $CLIENT_IP:" ||
    fail "the app did not see the client's pod IP $CLIENT_IP as the source address"

CMD2="curl -sS --max-time 10 --socks5 $N1:15080 --interface $CLIENT_IP http://127.0.2.1/json"
echo "\$ $CMD2"
BODY2=$($CMD2) || fail "curl to the service VIP failed"
echo "$BODY2"

# Byte counters and access-log lines are written when a connection closes: wait for both.
access() { grep -h "connection complete" "$WORK/ztunnel-$1.log" 2>/dev/null || true; }
for i in $(seq 1 100); do
    [ "$(access node1 | wc -l)" -ge 2 ] && [ "$(access node2 | wc -l)" -ge 2 ] && break
    sleep 0.05
done

step "Who talked to whom (access logs: source and destination identities)"
field() { sed -n "s/.* $1=\"\\{0,1\\}\\([^\" ]*\\).*/\\1/p"; }
for node in node1 node2; do
    line=$(access $node | head -n 1)
    [ -n "$line" ] || fail "no access-log line on $node"
    printf '%s %-9s src=%s (%s)\n' "$node" "$(echo "$line" | field direction)" \
        "$(echo "$line" | field src.addr)" "$(echo "$line" | field src.identity)"
    printf '%s %-9s dst=%s (%s) via %s, %s bytes sent, %s bytes received, %s\n' "$node" "" \
        "$(echo "$line" | field dst.addr)" "$(echo "$line" | field dst.identity)" \
        "$(echo "$line" | field dst.hbone_addr)" "$(echo "$line" | field bytes_sent)" \
        "$(echo "$line" | field bytes_recv)" "$(echo "$line" | field connection_security_policy)"
done
for node in node1 node2; do
    access $node | grep -q "spiffe://cluster.local/ns/demo-a/sa/client" || fail "$node's access log lacks the client identity"
    access $node | grep -q "spiffe://cluster.local/ns/demo-b/sa/server" || fail "$node's access log lacks the server identity"
done

step "Istio TCP metrics (istio_tcp_*, a few labels shown)"
for node in node1 node2; do
    ip=$N1; [ "$node" = node2 ] && ip=$N2
    METRICS=$(curl -fsS "http://$ip:15020/metrics") || fail "cannot scrape $node"
    lines=$(echo "$METRICS" | grep '^istio_tcp_' || true)
    [ -n "$lines" ] || fail "$node exports no istio_tcp_* series"
    echo "$lines" | grep -q 'connection_security_policy="mutual_tls"' || fail "$node: no mutual_tls series"
    echo "$node:"
    echo "$lines" | sed -E 's/^([a-z_]+)\{.*reporter="([a-z]+)".*source_principal="([^"]*)".*destination_principal="([^"]*)".*connection_security_policy="([^"]*)".*\} (.*)$/  \1{reporter="\2",source_principal="\3",destination_principal="\4",connection_security_policy="\5"} \6/'
done
echo
echo "(full series: curl http://$N1:15020/metrics | grep ^istio_tcp_)"

OK=1
printf '\n%sdemo OK%s: client (spiffe://cluster.local/ns/demo-a/sa/client) reached server (spiffe://cluster.local/ns/demo-b/sa/server) over HBONE mTLS; stopping everything.\n' "$G" "$N"

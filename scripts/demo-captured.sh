#!/usr/bin/env bash
# make demo, as root: the mesh with transparent capture, on a local cluster of network
# namespaces (meshctl local, see docs/local-cluster.md).
#
#   meshctl local up   2 nodes; pods wired by Debian's CNI plugins (bridge, host-local,
#                      loopback) chained with ambient-cni; istiod-lite; one ztunnel per node in
#                      in-pod mode
#   demo-b/server      on node-2, examples/apps/server.py on :8080; Service server.demo-b
#                      10.96.0.10:80 -> 8080
#   demo-a/client      on node-1; plain curl, no proxy settings: its connect() is redirected
#                      inside its own netns to ztunnel, which tunnels it (HBONE, mTLS) to node-2
#
# Nothing is added to the machine's own network namespace; everything is removed on exit.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD

if [ -t 1 ]; then B=$'\033[1m'; G=$'\033[32m'; R=$'\033[31m'; N=$'\033[0m'; else B=; G=; R=; N=; fi
step() { printf '\n%s==> %s%s\n' "$B" "$*" "$N"; }

WORK=$(mktemp -d /tmp/ambrs-demo.XXXXXX)
NAME=demo$$
OK=0
M() { "$BIN/meshctl" local --name "$NAME" --state-dir "$WORK/state" "$@"; }
cleanup() {
    [ -n "${BIN:-}" ] && M down >/dev/null 2>&1 || true
    if [ "$OK" = 1 ]; then rm -rf "$WORK"; else echo "logs kept in $WORK" >&2; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
fail() {
    printf '\n%sdemo FAILED: %s%s\n' "$R" "$*" "$N" >&2
    for f in "$WORK"/state/logs/*.log; do
        [ -f "$f" ] || continue
        echo "----- last lines of $f -----" >&2
        tail -n 20 "$f" >&2
        cp "$f" "$WORK/" 2>/dev/null || true
    done
    exit 1
}

step "Building meshctl, ztunnel, istiod-lite and ambient-cni"
cargo build -p meshctl -p ztunnel -p istiod-lite -p ambient-cni
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/debug

step "meshctl local up: 2 nodes, istiod-lite, one in-pod ztunnel per node"
M up --nodes 2 || fail "meshctl local up failed"

step "Namespaces demo-a and demo-b in ambient mode; pods; Service server.demo-b"
M namespace demo-a --label istio.io/dataplane-mode=ambient
M namespace demo-b --label istio.io/dataplane-mode=ambient
SERVER_IP=$(M pod add server -n demo-b --sa server --node node-2 --label app=server -- \
    python3 "$ROOT/examples/apps/server.py" --pod server --bind 0.0.0.0 --port 8080) || fail "pod add server"
CLIENT_IP=$(M pod add client -n demo-a --sa client --node node-1) || fail "pod add client"
cat >"$WORK/state/config/service.demo-b.server.yaml" <<YAML
apiVersion: v1
kind: Service
metadata: {name: server, namespace: demo-b}
spec:
  selector: {app: server}
  clusterIP: 10.96.0.10
  ports: [{name: http, port: 80, targetPort: 8080}]
YAML
echo "pod demo-b/server $SERVER_IP on node-2, pod demo-a/client $CLIENT_IP on node-1, service server.demo-b 10.96.0.10:80"

step "Client pod -> http://server.demo-b/ and the VIP, with no proxy settings"
body=""
for i in $(seq 1 100); do  # until the Service has reached node-1's ztunnel (readiness by polling)
    body=$(M exec client -n demo-a -- curl -sS --max-time 3 http://server.demo-b/ 2>/dev/null) && break
    sleep 0.1
done
echo "\$ meshctl local exec client -n demo-a -- curl -sS http://server.demo-b/"
echo "$body"
echo "$body" | grep -q "hello from pod server" || fail "the client did not reach the server by name"
echo "$body" | grep -q "from $CLIENT_IP:" || fail "the server did not see the client pod's IP $CLIENT_IP"
echo "\$ meshctl local exec client -n demo-a -- curl -sS http://10.96.0.10/json"
M exec client -n demo-a -- curl -sS --max-time 3 http://10.96.0.10/json || fail "curl to the VIP failed"

access() { grep -h "connection complete" "$WORK/state/logs/ztunnel-$1.log" 2>/dev/null || true; }
for i in $(seq 1 100); do
    [ "$(access node-1 | wc -l)" -ge 2 ] && [ "$(access node-2 | wc -l)" -ge 2 ] && break
    sleep 0.05
done
step "It was tunnelled: the ztunnels' access logs (identities, security policy)"
field() { sed -n "s/.* $1=\"\\{0,1\\}\\([^\" ]*\\).*/\\1/p"; }
for node in node-1 node-2; do
    line=$(access $node | head -n 1)
    [ -n "$line" ] || fail "no access-log line on $node"
    printf '%s %-9s src=%s (%s)\n' "$node" "$(echo "$line" | field direction)" \
        "$(echo "$line" | field src.addr)" "$(echo "$line" | field src.identity)"
    printf '%s %-9s dst=%s (%s) via %s, %s\n' "$node" "" \
        "$(echo "$line" | field dst.addr)" "$(echo "$line" | field dst.identity)" \
        "$(echo "$line" | field dst.hbone_addr)" "$(echo "$line" | field connection_security_policy)"
    echo "$line" | grep -q 'connection_security_policy="mutual_tls"' || fail "$node: not mutual TLS"
done

step "Capture in the client pod (iptables in its own netns, installed by ambient-cni)"
M exec client -n demo-a -- iptables -t nat -S ISTIO_OUTPUT | grep REDIRECT

OK=1
printf '\n%sdemo OK%s: demo-a/client (spiffe://cluster.local/ns/demo-a/sa/client) reached demo-b/server (spiffe://cluster.local/ns/demo-b/sa/server) transparently over HBONE mTLS; tearing the cluster down.\n' "$G" "$N"

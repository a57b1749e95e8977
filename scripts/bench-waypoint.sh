#!/usr/bin/env bash
# Part of `make bench` (called by scripts/bench.sh): the waypoint against a direct connection and
# against Debian's nginx as a plain reverse proxy, HTTP/1.1 (wrk) and HTTP/2 (h2load), 1 KiB
# response bodies, same run, on a one-node `meshctl local` cluster.
#
#   direct:   client pod -> backend pod (nginx serving /1k), plain, namespace bench-plain
#   nginx:    client pod -> nginx reverse-proxy pod -> backend pod, plain, namespace bench-plain
#   waypoint: client pod (ambient namespace bench-mesh) -> captured by ztunnel -> HBONE mTLS ->
#             waypoint pod (HTTPRoute-free default route) -> HBONE mTLS -> backend pod
#   nginx-mtls: the same topology built from nginx, so the comparison is like for like: in the
#             client pod an nginx on 127.0.0.1 (plain in, mTLS out) -> an nginx reverse-proxy
#             pod (mTLS in, mTLS out) -> in the backend pod an nginx (mTLS in, plain out to
#             127.0.0.1) -> the backend; ECDSA P-256 certificates from one CA, verified both ways
#
# Usage: bench-waypoint.sh BIN_DIR OUT.md SECS   (root; writes a markdown table to OUT.md)
set -euo pipefail
BIN=$1 OUT=$2 SECS=$3
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
die() { echo "bench-waypoint: $*" >&2; exit 1; }
for t in wrk h2load nginx; do command -v $t >/dev/null 2>&1 || die "$t not found (make prereqs installs wrk, nghttp2-client, nginx-light)"; done
NAME=wpb$$
STATE=$(mktemp -d /tmp/ambrs-wpbench.XXXXXX)
M() { "$BIN/meshctl" local --name "$NAME" --state-dir "$STATE/s" "$@"; }
cleanup() { M down >/dev/null 2>&1 || true; rm -rf "$STATE"; }
trap cleanup EXIT

# nginx configs: a backend serving a 1 KiB body on 8080 (HTTP/1.1) and 8081 (h2c), and a plain
# reverse proxy in front of it (keep-alive to the upstream, as a tuned nginx would be set up).
mkdir -p "$STATE/www" "$STATE/backend.tmp" "$STATE/proxy.tmp"
head -c 1024 /dev/zero | tr '\0' 'x' >"$STATE/www/1k"
# nginx's workers drop root (to nobody): they must be able to read the page.
chmod 755 "$STATE" "$STATE/www" && chmod 644 "$STATE/www/1k"
nginx_conf() { # name body -> path
    cat >"$STATE/$1.conf" <<NGX
worker_processes 1;
pid $STATE/$1.pid;
error_log $STATE/$1.error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $STATE/$1.tmp; proxy_temp_path $STATE/$1.tmp;
    fastcgi_temp_path $STATE/$1.tmp; uwsgi_temp_path $STATE/$1.tmp; scgi_temp_path $STATE/$1.tmp;
    keepalive_requests 1000000;
    $2
}
NGX
    echo "$STATE/$1.conf"
}
BACKEND=$(nginx_conf backend "server { listen 8080; listen 8081 http2; root $STATE/www; }")

echo "==> waypoint bench: meshctl local up (1 node, release binaries)"
M up --nodes 1 --bin-dir "$BIN" >/dev/null
M namespace bench-plain >/dev/null
M namespace bench-mesh --label istio.io/dataplane-mode=ambient >/dev/null
NGINX=(nginx -e stderr -g "daemon off;" -c)
P_BACKEND=$(M pod add backend -n bench-plain --sa backend --label app=backend -- "${NGINX[@]}" "$BACKEND" 2>/dev/null)
PROXY=$(nginx_conf proxy "upstream b { server $P_BACKEND:8080; keepalive 64; }
    server { listen 8080; listen 8081 http2;
             location / { proxy_pass http://b; proxy_http_version 1.1; proxy_set_header Connection \"\"; } }")
P_PROXY=$(M pod add proxy -n bench-plain --sa proxy -- "${NGINX[@]}" "$PROXY" 2>/dev/null)
M pod add client -n bench-plain --sa client >/dev/null 2>&1

# nginx-mtls: one CA, a certificate per hop (SAN mesh.local), mTLS verified in both directions.
PKI=$STATE/pki; mkdir -p "$PKI"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=bench-ca \
    -keyout "$PKI/ca.key" -out "$PKI/ca.crt" 2>/dev/null
for h in out mid in; do
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$h" \
        -keyout "$PKI/$h.key" -out "$PKI/$h.csr" 2>/dev/null
    openssl x509 -req -in "$PKI/$h.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -days 2 \
        -extfile <(printf 'subjectAltName=DNS:mesh.local\nextendedKeyUsage=serverAuth,clientAuth\n') \
        -out "$PKI/$h.crt" 2>/dev/null
done
chmod 755 "$PKI" && chmod 644 "$PKI"/*
tls_in() { # hop: mTLS server directives
    echo "listen 8443 ssl; ssl_certificate $PKI/$1.crt; ssl_certificate_key $PKI/$1.key;
          ssl_client_certificate $PKI/ca.crt; ssl_verify_client on; ssl_protocols TLSv1.3;"
}
tls_out() { # hop: mTLS client directives
    echo "proxy_ssl_certificate $PKI/$1.crt; proxy_ssl_certificate_key $PKI/$1.key;
          proxy_ssl_trusted_certificate $PKI/ca.crt; proxy_ssl_verify on; proxy_ssl_name mesh.local;
          proxy_ssl_protocols TLSv1.3; proxy_ssl_session_reuse on;
          proxy_http_version 1.1; proxy_set_header Connection \"\";"
}
CHAIN_IN=$(nginx_conf chain-in "upstream app { server 127.0.0.1:8080; keepalive 64; }
    server { listen 8080; listen 8081 http2; root $STATE/www; }
    server { $(tls_in in) location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection \"\"; } }")
mkdir -p "$STATE/chain-in.tmp" "$STATE/chain-mid.tmp" "$STATE/chain-out.tmp"
P_CIN=$(M pod add chain-backend -n bench-plain --sa backend -- "${NGINX[@]}" "$CHAIN_IN" 2>/dev/null)
CHAIN_MID=$(nginx_conf chain-mid "upstream next { server $P_CIN:8443; keepalive 64; }
    server { $(tls_in mid) location / { proxy_pass https://next; $(tls_out mid) } }")
P_CMID=$(M pod add chain-proxy -n bench-plain --sa proxy -- "${NGINX[@]}" "$CHAIN_MID" 2>/dev/null)
CHAIN_OUT=$(nginx_conf chain-out "upstream next { server $P_CMID:8443; keepalive 64; }
    server { listen 127.0.0.1:8080; listen 127.0.0.1:8081 http2;
             location / { proxy_pass https://next; $(tls_out out) } }")
M pod add chain-client -n bench-plain --sa client -- "${NGINX[@]}" "$CHAIN_OUT" >/dev/null 2>&1
M_BACKEND=$(M pod add backend -n bench-mesh --sa backend --label app=backend -- "${NGINX[@]}" "$BACKEND" 2>/dev/null)
M pod add client -n bench-mesh --sa client >/dev/null 2>&1
cat >"$STATE/s/config/service.bench-mesh.backend.yaml" <<YAML
apiVersion: v1
kind: Service
metadata: {name: backend, namespace: bench-mesh}
spec:
  selector: {app: backend}
  clusterIP: 10.96.0.30
  ports:
  - {name: http, port: 8080, targetPort: 8080}
  - {name: http2, port: 8081, targetPort: 8081, appProtocol: http2}
YAML
"$BIN/meshctl" waypoint --local "$NAME" --state-dir "$STATE/s" -n bench-mesh apply --enroll-namespace --wait >/dev/null
# E NS POD CMD...: run CMD in a client pod.
E() { local ns=$1 pod=$2; shift 2; M exec "$pod" -n "$ns" -- "$@"; }

declare -A URL1 URL2 NS POD
MODES="direct nginx nginx-mtls waypoint"
URL1[direct]=http://$P_BACKEND:8080/1k URL2[direct]=http://$P_BACKEND:8081/1k NS[direct]=bench-plain
URL1[nginx]=http://$P_PROXY:8080/1k URL2[nginx]=http://$P_PROXY:8081/1k NS[nginx]=bench-plain
URL1[nginx-mtls]=http://127.0.0.1:8080/1k URL2[nginx-mtls]=http://127.0.0.1:8081/1k NS[nginx-mtls]=bench-plain
URL1[waypoint]=http://10.96.0.30:8080/1k URL2[waypoint]=http://10.96.0.30:8081/1k NS[waypoint]=bench-mesh
POD[direct]=client POD[nginx]=client POD[nginx-mtls]=chain-client POD[waypoint]=client
for mode in $MODES; do  # ready: one good request each (readiness, not a sleep)
    for i in $(seq 1 200); do
        E ${NS[$mode]} ${POD[$mode]} curl -fsS -o /dev/null --max-time 2 "${URL1[$mode]}" 2>/dev/null && break
        sleep 0.05
    done
    E ${NS[$mode]} ${POD[$mode]} curl -fsS -o /dev/null --max-time 2 "${URL1[$mode]}" || die "$mode path not serving ${URL1[$mode]}"
    E ${NS[$mode]} ${POD[$mode]} curl -fsS -o /dev/null --max-time 2 --http2-prior-knowledge "${URL2[$mode]}" || die "$mode path not serving h2c ${URL2[$mode]}"
done

declare -A R
for mode in $MODES; do
    echo "==> $mode: wrk (HTTP/1.1) and h2load (HTTP/2), $SECS s each, 32 connections"
    out=$(E ${NS[$mode]} ${POD[$mode]} wrk -t 2 -c 32 -d "${SECS}s" --latency "${URL1[$mode]}")
    R[$mode.h1_rps]=$(echo "$out" | awk '/^Requests\/sec/ {printf "%.0f", $2}')
    R[$mode.h1_p50]=$(echo "$out" | awk '$1=="50%" {print $2}')
    R[$mode.h1_p99]=$(echo "$out" | awk '$1=="99%" {print $2}')
    echo "$out" | grep -q "Non-2xx" && die "$mode: wrk saw non-2xx answers: $out"
    log=$STATE/h2-$mode.log
    out=$(E ${NS[$mode]} ${POD[$mode]} h2load -c 32 -m 8 -t 2 -D "$SECS" --log-file="$log" "${URL2[$mode]}")
    R[$mode.h2_rps]=$(echo "$out" | awk '/^finished in/ {gsub(",","",$4); printf "%.0f", $4}')
    echo "$out" | grep -q "0 failed" || die "$mode: h2load saw failures: $out"
    read -r p50 p99 < <(python3 - "$log" <<'PY'
import sys
# h2load log: start time, status, duration (microseconds), tab-separated.
d = sorted(int(l.split("\t")[2]) for l in open(sys.argv[1]) if l.count("\t") >= 2)
pick = lambda q: d[min(len(d) - 1, int(q * len(d)))] / 1000 if d else 0
print(f"{pick(0.5):.2f}ms {pick(0.99):.2f}ms")
PY
)
    R[$mode.h2_p50]=$p50 R[$mode.h2_p99]=$p99
done

# The waypoint figures must have gone through the waypoint, over mTLS.
WP=$(nsenter --net="/run/netns/ambrs-$NAME.bench-mesh.waypoint" curl -fsS http://127.0.0.1:15020/stats/prometheus |
    grep '^istio_requests_total' | grep 'reporter="waypoint"' | grep 'response_code="200"' | awk '{s+=$NF} END {print s+0}')
[ "${WP%.*}" -gt 1000 ] || die "the waypoint counted only $WP requests: traffic did not go through it"

python3 - "$OUT" <<PY
import sys
R = {$(for k in "${!R[@]}"; do printf '"%s": "%s", ' "$k" "${R[$k]}"; done)}
f = lambda k: float(R[k] or 0)
out = ["| figure | direct | nginx reverse proxy | nginx mTLS chain (same topology) | waypoint (mTLS both sides) | waypoint vs nginx | waypoint vs nginx mTLS chain |", "|---|---|---|---|---|---|---|"]
for proto, name in (("h1", "HTTP/1.1 (wrk -t2 -c32)"), ("h2", "HTTP/2 h2c (h2load -c32 -m8)")):
    cells = lambda k: " | ".join(R[m + "." + proto + "_" + k] for m in ("direct", "nginx", "nginx-mtls", "waypoint"))
    ratio = lambda m: f"{f('waypoint.'+proto+'_rps')/max(f(m+'.'+proto+'_rps'),1):.2f}x"
    out.append(f"| {name} requests/s | {cells('rps')} | {ratio('nginx')} | {ratio('nginx-mtls')} |")
    out.append(f"| {name} latency p50 | {cells('p50')} | | |")
    out.append(f"| {name} latency p99 | {cells('p99')} | | |")
open(sys.argv[1], "w").write("\n".join(out) + "\n")
PY
cat "$OUT"

#!/usr/bin/env bash
# Installs what the tests, the demo and the benchmarks need beyond the Rust toolchain:
#   curl      the demo's client
#   python3   + the h2 package: an independent HTTP/2 implementation for the HBONE interop test
#   iptables  the 15001 capture test (root, inside a network namespace)
#   iperf3    make bench
#   helm test (tests/helm/run.py): jq (install-cni.sh); Debian's golang-go + the sprig, sigs.k8s.io/yaml,
#             gojsonschema and toml Go library packages (deploy/helm/render, a faithful `helm
#             template` built offline: no helm package exists in Debian); PyPI kubernetes-validate,
#             jsonschema and pyyaml
#   containernetworking-plugins  bridge, host-local, loopback for `meshctl local` (root) and its test
# As root, missing pieces are installed (apt-get, pip); otherwise this says what is missing and
# the tests that need it skip with a printed reason (they fail instead when CI=true).
set -euo pipefail

missing_apt=()
command -v curl >/dev/null 2>&1 || missing_apt+=(curl)
command -v iptables >/dev/null 2>&1 || missing_apt+=(iptables)
command -v iperf3 >/dev/null 2>&1 || missing_apt+=(iperf3)
# make bench's waypoint comparison: load generators and nginx as the reverse proxy to beat.
command -v wrk >/dev/null 2>&1 || missing_apt+=(wrk)
command -v h2load >/dev/null 2>&1 || missing_apt+=(nghttp2-client)
command -v nginx >/dev/null 2>&1 || missing_apt+=(nginx-light)
[ -x /usr/bin/prometheus ] || missing_apt+=(prometheus)  # the dashboard test scrapes the mesh with it
command -v dig >/dev/null 2>&1 || missing_apt+=(dnsutils)  # the DNS proxy test checks answers with dig
command -v ip >/dev/null 2>&1 || missing_apt+=(iproute2)
command -v nsenter >/dev/null 2>&1 || missing_apt+=(util-linux)
# meshctl local wires pods with the CNI reference plugins (Debian installs them in /usr/lib/cni).
[ -x /usr/lib/cni/bridge ] || [ -x /opt/cni/bin/bridge ] || missing_apt+=(containernetworking-plugins)
command -v jq >/dev/null 2>&1 || missing_apt+=(jq)
# deploy/helm/render builds from these in GOPATH mode (GOPROXY=off): see deploy/helm/render/build.sh.
command -v go >/dev/null 2>&1 || missing_apt+=(golang-go)
for gopkg in github.com/Masterminds/sprig:golang-github-masterminds-sprig-dev \
             sigs.k8s.io/yaml:golang-k8s-sigs-yaml-dev \
             github.com/xeipuuv/gojsonschema:golang-github-xeipuuv-gojsonschema-dev \
             github.com/BurntSushi/toml:golang-github-burntsushi-toml-dev; do
    [ -d "/usr/share/gocode/src/${gopkg%%:*}" ] || missing_apt+=("${gopkg#*:}")
done
if ! command -v python3 >/dev/null 2>&1; then
    missing_apt+=(python3 python3-pip)
fi

have_h2() { python3 -c 'import h2' >/dev/null 2>&1; }
# The helm test: Kubernetes schemas (pinned: the test names the Kubernetes versions it checks) and
# JSON Schema for values.schema.json.
HELM_PIP=(kubernetes-validate==1.37.0 jsonschema pyyaml)
have_helm_py() { python3 -c 'import kubernetes_validate, jsonschema, yaml' >/dev/null 2>&1; }
# The GRPCRoute test: real gRPC clients and servers (Python grpcio) through a waypoint.
have_grpcio() { python3 -c 'import grpc' >/dev/null 2>&1; }
pip_install() {
    python3 -m pip install --quiet --root-user-action=ignore "$@" 2>/dev/null ||
        python3 -m pip install --quiet --root-user-action=ignore --break-system-packages "$@"
}

if [ "$(id -u)" = 0 ]; then
    if [ ${#missing_apt[@]} -gt 0 ]; then
        echo "prereqs: installing ${missing_apt[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${missing_apt[@]}" >/dev/null
    fi
    if ! have_h2; then
        echo "prereqs: installing the python h2 package"
        if ! python3 -m pip --version >/dev/null 2>&1; then
            apt-get update -qq && apt-get install -y -qq --no-install-recommends python3-pip >/dev/null
        fi
        python3 -m pip install --quiet --root-user-action=ignore h2 || python3 -m pip install --quiet --root-user-action=ignore --break-system-packages h2
    fi
    if ! have_helm_py; then
        echo "prereqs: installing ${HELM_PIP[*]} (PyPI) for the helm test"
        if ! python3 -m pip --version >/dev/null 2>&1; then
            apt-get update -qq && apt-get install -y -qq --no-install-recommends python3-pip >/dev/null
        fi
        pip_install "${HELM_PIP[@]}"
    fi
    have_helm_py || { echo "prereqs: python packages ${HELM_PIP[*]} still missing" >&2; exit 1; }
    if ! have_grpcio; then
        echo "prereqs: installing grpcio (PyPI) for the GRPCRoute test"
        pip_install grpcio
    fi
    have_grpcio || { echo "prereqs: python grpcio still missing" >&2; exit 1; }
    # iptables on Debian defaults to the nft backend; make sure the nat table is usable.
    command -v iptables >/dev/null 2>&1 || { echo "prereqs: iptables still missing" >&2; exit 1; }
    echo "prereqs: ok (curl, python3 + h2 + grpcio, iptables, iperf3, CNI plugins, jq, go + sprig, kubernetes-validate)"
else
    msgs=()
    [ ${#missing_apt[@]} -gt 0 ] && msgs+=("packages: ${missing_apt[*]} (apt-get install -y ${missing_apt[*]})")
    have_h2 || msgs+=("python h2 (python3 -m pip install --user h2)")
    have_helm_py || msgs+=("python ${HELM_PIP[*]} (python3 -m pip install --user ${HELM_PIP[*]})")
    have_grpcio || msgs+=("python grpcio (python3 -m pip install --user grpcio)")
    if [ ${#msgs[@]} -gt 0 ]; then
        echo "prereqs: not root, so not installing; missing:"
        for m in "${msgs[@]}"; do echo "  - $m"; done
        echo "  tests that need them will skip with a reason (and fail when CI=true);"
        echo "  the network-namespace tests and make bench also need root."
    else
        echo "prereqs: ok (not root: the network-namespace tests will skip)"
    fi
fi

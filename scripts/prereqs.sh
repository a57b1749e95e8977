#!/usr/bin/env bash
# Installs what the tests, the demo and the benchmarks need beyond the Rust toolchain:
#   curl      the demo's client
#   python3   + the h2 package: an independent HTTP/2 implementation for the HBONE interop test
#   iptables  the 15001 capture test (root, inside a network namespace)
#   iperf3    make bench
# As root, missing pieces are installed (apt-get, pip); otherwise this says what is missing and
# the tests that need it skip with a printed reason (they fail instead when CI=true).
set -euo pipefail

missing_apt=()
command -v curl >/dev/null 2>&1 || missing_apt+=(curl)
command -v iptables >/dev/null 2>&1 || missing_apt+=(iptables)
command -v iperf3 >/dev/null 2>&1 || missing_apt+=(iperf3)
[ -x /usr/bin/prometheus ] || missing_apt+=(prometheus)  # the dashboard test scrapes the mesh with it
command -v dig >/dev/null 2>&1 || missing_apt+=(dnsutils)  # the DNS proxy test checks answers with dig
command -v ip >/dev/null 2>&1 || missing_apt+=(iproute2)
if ! command -v python3 >/dev/null 2>&1; then
    missing_apt+=(python3 python3-pip)
fi

have_h2() { python3 -c 'import h2' >/dev/null 2>&1; }

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
    # iptables on Debian defaults to the nft backend; make sure the nat table is usable.
    command -v iptables >/dev/null 2>&1 || { echo "prereqs: iptables still missing" >&2; exit 1; }
    echo "prereqs: ok (curl, python3 + h2, iptables, iperf3)"
else
    msgs=()
    [ ${#missing_apt[@]} -gt 0 ] && msgs+=("packages: ${missing_apt[*]} (apt-get install -y ${missing_apt[*]})")
    have_h2 || msgs+=("python h2 (python3 -m pip install --user h2)")
    if [ ${#msgs[@]} -gt 0 ]; then
        echo "prereqs: not root, so not installing; missing:"
        for m in "${msgs[@]}"; do echo "  - $m"; done
        echo "  tests that need them will skip with a reason (and fail when CI=true);"
        echo "  the network-namespace tests and make bench also need root."
    else
        echo "prereqs: ok (not root: the network-namespace tests will skip)"
    fi
fi

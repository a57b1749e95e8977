#!/usr/bin/env bash
# Builds deploy/helm/render (a faithful `helm template`) offline from Debian's Go packages:
#   golang-go, golang-github-masterminds-sprig-dev (+ its dependencies), golang-k8s-sigs-yaml-dev,
#   golang-github-xeipuuv-gojsonschema-dev, golang-github-burntsushi-toml-dev
# (scripts/prereqs.sh installs them). GOPATH mode, no module proxy, no network: Debian puts the
# library sources under /usr/share/gocode/src; the two "/v3" import paths Go modules would resolve
# (sprig/v3, semver/v3) are symlinked into a private GOPATH overlay.
#   deploy/helm/render/build.sh [OUT]      (default OUT: target/helm-render/render)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../../.." && pwd)"
out="${1:-$root/target/helm-render/render}"
gocode=/usr/share/gocode/src

command -v go >/dev/null 2>&1 || { echo "render/build.sh: go not found (apt-get install golang-go)" >&2; exit 2; }
for p in github.com/Masterminds/sprig github.com/Masterminds/semver sigs.k8s.io/yaml \
         github.com/xeipuuv/gojsonschema github.com/BurntSushi/toml; do
    [ -d "$gocode/$p" ] || { echo "render/build.sh: $gocode/$p missing (run scripts/prereqs.sh as root)" >&2; exit 2; }
done

work="$(dirname "$out")/gopath"
rm -rf "$work/src"
mkdir -p "$work/src/github.com/Masterminds/sprig" "$work/src/github.com/Masterminds/semver" \
         "$work/src/ambient-rs/render"
ln -s "$gocode/github.com/Masterminds/sprig" "$work/src/github.com/Masterminds/sprig/v3"
ln -s "$gocode/github.com/Masterminds/semver" "$work/src/github.com/Masterminds/semver/v3"
cp "$here/main.go" "$work/src/ambient-rs/render/main.go"
cd "$work/src/ambient-rs/render"
GO111MODULE=off GOPROXY=off GOFLAGS= GOPATH="$work:/usr/share/gocode" GOCACHE="$(dirname "$out")/gocache" \
    go build -o "$out" .
echo "built $out"

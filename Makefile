# ambient-rs developer entry points.
#   make test   prerequisites (when root), build the binaries, run every test (unit + end-to-end)
#   make demo   two ztunnels + istiod-lite on loopback, traffic A -> B through the mesh
#   make bench  performance figures (root: network namespace + iptables), writes docs/performance.md
#   make lint   rustfmt check + clippy with warnings denied
#   make test-helm  the Helm chart rendered, validated against the Kubernetes schemas, its CRDs and CNI installer
SHELL := /usr/bin/env bash
CARGO ?= cargo

.PHONY: all test test-dashboards test-helm prereqs build demo bench lint fmt

all: build

prereqs:
	@scripts/prereqs.sh

build:
	$(CARGO) build --bins

test: prereqs build
	@if $(CARGO) nextest --version >/dev/null 2>&1; then \
		echo "+ $(CARGO) nextest run --workspace --no-fail-fast"; \
		$(CARGO) nextest run --workspace --no-fail-fast; \
	else \
		echo "cargo-nextest not found; falling back to cargo test"; \
		echo "+ $(CARGO) test --workspace --no-fail-fast"; \
		$(CARGO) test --workspace --no-fail-fast; \
	fi
	python3 tests/dashboards/run.py
	python3 tests/helm/run.py

demo:
	@scripts/demo.sh

bench: prereqs
	@scripts/bench.sh

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

# The Grafana dashboards against a real Prometheus scraping a local mesh (part of `make test`).
test-dashboards: prereqs build
	python3 tests/dashboards/run.py

# The Helm chart (deploy/helm/ambient-rs) rendered with a Helm-faithful renderer and validated
# (part of `make test`); needs no cargo build.
test-helm: prereqs
	python3 tests/helm/run.py

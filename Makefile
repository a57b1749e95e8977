# ambient-rs developer entry points.
#   make test   prerequisites (when root), build the binaries, run every test (unit + end-to-end)
#   make demo   two ztunnels + istiod-lite on loopback, traffic A -> B through the mesh
#   make bench  performance figures (root: network namespace + iptables), writes docs/performance.md
#   make lint   rustfmt check + clippy with warnings denied
SHELL := /usr/bin/env bash
CARGO ?= cargo

.PHONY: all test prereqs build demo bench lint fmt

all: build

prereqs:
	@scripts/prereqs.sh

build:
	$(CARGO) build --bins

test: prereqs build
	@if $(CARGO) nextest --version >/dev/null 2>&1; then \
		echo "+ $(CARGO) nextest run --workspace"; \
		$(CARGO) nextest run --workspace; \
	else \
		echo "cargo-nextest not found; falling back to cargo test"; \
		echo "+ $(CARGO) test --workspace"; \
		$(CARGO) test --workspace; \
	fi

demo:
	@scripts/demo.sh

bench: prereqs
	@scripts/bench.sh

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

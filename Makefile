# Ferrite: the two commands for a fresh machine are `make demo` and `make test` (see README.md).
SHELL := /bin/bash
export CARGO_TARGET_DIR ?= $(HOME)/.cache/ferrite/target
CARGO ?= cargo

.PHONY: demo test deps lint unit generate check-generated box-test help

help:
	@echo "make demo   - bring up the box (local control plane) and run the Ferrite controllers against it"
	@echo "make test   - install what the tests need, then fmt, clippy, generated-files check, unit and box tests"
	@echo "make generate - regenerate crds/ (and manifests/) after changing API types or the chart"

## The main job: the box + the controllers, with something to try.
demo: deps
	$(CARGO) build --workspace --bins
	$(CARGO) run -q -p ferrite-e2e --bin ferrite-demo

## All the tests, on a fresh machine too.
test: deps lint check-generated
	$(CARGO) test --workspace --no-fail-fast

deps:
	e2e/scripts/install-deps.sh

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

generate:
	$(CARGO) run -q -p ferrite-api --bin crdgen

check-generated:
	$(CARGO) run -q -p ferrite-api --bin crdgen -- --check

# pifleet: `make demo` shows the project working, `make test` proves it.
SHELL := /bin/bash
VENV ?= .venv
BIN := $(VENV)/bin
export VENV

.PHONY: demo test lint typecheck unit system testbed bench soak deps clean deb

deps:
	@dev/bootstrap.sh

demo: deps
	@dev/demo.sh

test: deps lint typecheck unit system

lint: deps
	$(BIN)/ruff check .

typecheck: deps
	$(BIN)/mypy

unit: deps
	$(BIN)/pytest -q --ignore=tests/system

# The package installed, upgraded, purged and booted in Debian 12 containers (amd64 under
# systemd-nspawn; arm64 and armhf under qemu-user-static). A separate stage: it needs root.
system: deps testbed
	$(BIN)/pytest -q tests/system

# The cached Debian 12 trees tests/system uses (PIFLEET_TESTBED_CACHE, /var/cache/pifleet-testbed).
# bullseye (python3 3.9): the tree the package must refuse to install on.
testbed: deps
	$(BIN)/python -m tests.support.testbed build amd64 arm64 armhf
	$(BIN)/python -m tests.support.testbed build --release bullseye amd64

# The pifleet-agent .deb in dist/ (Architecture: all: one .deb for amd64, arm64 and armhf).
ARCH ?= amd64
deb: deps
	packaging/build-deb.sh dist $(ARCH)

# Every bench/bench_*.py; writes BENCHMARKS.md and bench/results.json (BENCH_ARGS=--quick: fast).
bench: deps
	$(BIN)/python -m bench $(BENCH_ARGS)

# Deploys in a loop through a real agent on the sandbox, recording its RSS (SOAK_ARGS=--record).
HOURS ?= 1
soak: deps
	$(BIN)/python -m bench.soak --hours $(HOURS) $(SOAK_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis dist build *.egg-info

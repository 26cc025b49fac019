# pifleet: `make demo` shows the project working, `make test` proves it.
SHELL := /bin/bash
VENV ?= .venv
BIN := $(VENV)/bin
export VENV

.PHONY: demo test lint typecheck unit bench deps clean deb

deps:
	@dev/bootstrap.sh

demo: deps
	@dev/demo.sh

test: deps lint typecheck unit

lint: deps
	$(BIN)/ruff check .

typecheck: deps
	$(BIN)/mypy

unit: deps
	$(BIN)/pytest -q

# The pifleet-agent .deb in dist/ (Architecture: all: one .deb for amd64, arm64 and armhf).
ARCH ?= amd64
deb: deps
	packaging/build-deb.sh dist $(ARCH)

bench: deps
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis dist build *.egg-info

# Two entry points (README quick start): `make run` and `make test`. Everything installs from uv.lock.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= python3
UV_VERSION := 0.13.9
UV := .tools/bin/uv
VENV := .venv
HOST ?= 127.0.0.1
PORT ?= 3000
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: run setup data train serve test check system-deps ui leaderboard bench

run: setup data train serve  ## install, pull the data, train (dvc repro), serve on http://$(HOST):$(PORT)

$(UV):
	$(PYTHON) -m venv .tools
	.tools/bin/pip install --quiet --disable-pip-version-check "uv==$(UV_VERSION)"

# Quiet unless something goes wrong; bytecode compiled once here, so every later command (and `bbt ui`'s
# MLflow server) starts in seconds, not tens of seconds.
setup: $(UV)  ## the project's environment, exactly as locked
	@echo "installing the locked environment into $(VENV) (quiet; the first time takes a few minutes)"
	$(UV) sync --frozen --quiet --compile-bytecode --python $(PYTHON)

data: setup  ## materialise data/ from the DVC remote (bbt pull says so in one line when the remote is missing)
	bbt pull

# dvc repro registers again when mlruns/ was wiped (register's output mlruns/registered.json goes with it); a store
# elsewhere (MLFLOW_TRACKING_URI) is out of DVC's sight, so `bbt register` (a no-op when it holds the model) checks it.
train: setup  ## the whole pipeline (a no-op when nothing changed), registry included: it follows dvc.lock
	dvc repro
	@if [ -n "$${MLFLOW_TRACKING_URI:-}" ]; then echo "bbt register  # MLFLOW_TRACKING_URI is set"; bbt register; fi

serve: setup  ## the champion over HTTP with the web page
	bbt serve --host $(HOST) --port $(PORT)

DEBIAN_PACKAGES := nginx chromium cloud-init systemd openssl
system-deps:  ## Debian packages the tests drive for real: nginx, headless Chromium, cloud-init's schema check, openssl
	@if ! dpkg -s $(DEBIAN_PACKAGES) >/dev/null 2>&1; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(DEBIAN_PACKAGES) >/dev/null; \
	fi

test: setup system-deps  ## the whole test suite (unit, data, integration) on 2 workers, grouped as tests/conftest.py says
	pytest -n 2 --dist loadgroup

check: setup system-deps  ## the fast path (under a minute): ruff over the project, then the unit tier on 2 workers
	ruff check bbt flows tests benchmarks
	pytest -n 2 tests/unit

ui: setup  ## the MLflow UI over mlruns/ on http://127.0.0.1:5000
	bbt ui

leaderboard: setup
	bbt leaderboard

# Deployment (docs/deployment.md): the staging copy of production on this machine.
STAGING_PORT ?= 8080
.PHONY: staging
staging: setup system-deps  ## production's setup on loopback: exported bento behind nginx on http://127.0.0.1:$(STAGING_PORT)
	bbt import-champion
	bbt deploy staging --port $(STAGING_PORT)

.PHONY: prefect
prefect: setup  ## Prefect server + UI on http://127.0.0.1:4200 (SQLite), serving the weekly retrain deployment
	bbt prefect serve

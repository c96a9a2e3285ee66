# `make demo` and `make test` are the whole set-up on a fresh clone: each creates .venv when it
# is missing and installs the project into it first.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
IDC_SAMPLE := ../shared/data/idc_sample
SYNTHETIC_IDC := results/synthetic_idc

.PHONY: demo readme test test-cluster lint browser postgresql slurm screenshots clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "installing histo-harness and its dependencies into $(VENV) (first time: a few minutes)"
	@# This machine's pip index lists local folders that do not exist for every package; drop that noise.
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]' 2>&1 | { grep -v "^WARNING: Location 'file://" || true; }
	@touch $@

demo: $(STAMP)
	@if [ -d $(IDC_SAMPLE) ]; then root=$(IDC_SAMPLE); else \
		root=$(SYNTHETIC_IDC); echo "$(IDC_SAMPLE) is absent: the demo uses a synthetic IDC tree in $$root"; \
		$(BIN)/harness data synth $$root; fi; \
	$(BIN)/harness sweep experiments/demo.yaml --root $$root
	$(BIN)/harness leaderboard experiments/demo.yaml

# The README's demo block: make demo's two commands run in a scratch folder on the IDC sample, and
# what they printed, with the machine and wall times, written between the README's markers
# (tests/test_demo.py checks the committed block against a fresh run).
readme: $(STAMP)
	$(BIN)/python tools/readme_demo.py --root $(IDC_SAMPLE)

# The README's pictures: the MLflow UI, optuna-dashboard and the leaderboard page over the demo's
# store (made first when results/ has none), in headless Chromium; both servers listen on 127.0.0.1.
# RESULTS=DIR pictures another demo's store: `python tools/readme_demo.py --keep DIR` leaves one, so
# the README's block and its pictures come from the same sweep.
RESULTS ?= results
screenshots: $(STAMP) browser
	@test -f $(RESULTS)/mlflow.db || $(MAKE) demo
	$(BIN)/python tools/screenshots.py --results $(RESULTS) --experiment demo --out docs/screenshots

# The unit tests and one shared end-to-end sweep. The cluster tests (two-node Ray, hosts in network
# namespaces, MLflow server processes, a killed and resumed driver, a single-node SLURM) and the
# end-to-end runs (every shipped experiment, a wheel install, drivers signalled or killed) have their
# own target, which CI runs too (.ci/run).
test: lint browser
	$(BIN)/python -m pytest -m "not cluster and not e2e" -n auto --dist loadfile --durations=20

# ruff (pyflakes, pycodestyle, import order, bugbear; line length 120) and its formatter, and mypy
# over harness/ and baselines/ at the strictness pyproject.toml states: the tree must stay clean.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# The leaderboard test renders its HTML page in Debian's headless Chromium: installed here when
# missing and apt-get can (as root); otherwise that one test skips and says why.
browser:
	@command -v chromium >/dev/null || { \
		echo "installing Debian's chromium for the leaderboard's HTML test"; \
		{ [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		  { apt-get install -y -q --no-install-recommends chromium >/dev/null 2>&1 || \
		    { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q --no-install-recommends chromium >/dev/null 2>&1; }; }; } || \
		echo "chromium could not be installed: the HTML rendering test will skip"; }

# Two test files at a time, not one per core: each runs whole sweeps (a Ray cluster or an MLflow
# server of its own), so more would trade the time saved for memory.
test-cluster: $(STAMP) browser postgresql slurm
	$(BIN)/python -m pytest -m "cluster or e2e" -n 2 --dist loadfile --durations=20

# The tracking-load bench's PostgreSQL backend: Debian's server binaries, installed here when
# missing and apt-get can (as root); otherwise that test skips and says why.
postgresql:
	@ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || { \
		echo "installing Debian's postgresql for the tracking-load bench"; \
		{ [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		  { apt-get install -y -q --no-install-recommends postgresql >/dev/null 2>&1 || \
		    { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q --no-install-recommends postgresql >/dev/null 2>&1; }; }; } || \
		echo "postgresql could not be installed: the tracking-load test's PostgreSQL case will skip"; }

# The SLURM test (tests/sweep/test_slurm.py) starts its own one-node SLURM from Debian's slurmctld,
# slurmd and munge, installed here when missing and apt-get can (as root); otherwise it skips.
slurm:
	@command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null || { \
		echo "installing Debian's slurmctld, slurmd and munge for the SLURM test"; \
		pkgs="slurmctld slurmd slurm-client munge"; \
		{ [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		  { apt-get install -y -q --no-install-recommends $$pkgs >/dev/null 2>&1 || \
		    { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q --no-install-recommends $$pkgs >/dev/null 2>&1; }; }; } || \
		echo "SLURM could not be installed: the SLURM test will skip"; }

clean:
	rm -rf results/mlflow.db results/mlartifacts results/_data results/demo results/synthetic_idc results/bench

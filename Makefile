# edgeloop: `make nightly` sets up and runs one night; `make test` sets up and runs the tests.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.edgeloop-installed
export EDGELOOP_HOME ?= $(CURDIR)/var

.PHONY: setup nightly bootstrap night test test-fast bench device-check clean help

help:
	@echo "make nightly   set up, bootstrap the teacher if needed, run one night on the bundled data"
	@echo "make test      set up and run the test suite"
	@echo "make bench     run the benchmark suite (benchmarks/README.md)"
	@echo "make device-check  install only edgeloop-edge in a fresh venv, answer one message, print its size"

setup: $(STAMP)

# torch first, from its pinned CPU wheel: any other torch spec pulls a multi-GB CUDA build.
$(STAMP): pyproject.toml requirements/base.txt requirements/train.txt requirements/bnb.txt requirements/dask.txt requirements/test.txt requirements/constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -r requirements/base.txt -c requirements/constraints.txt
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e .
	@touch $@

bootstrap: setup
	$(BIN)/edgeloop bootstrap-teacher --if-missing

night: setup
	$(BIN)/edgeloop night

nightly: bootstrap night

test: setup
	$(BIN)/python -m pytest -q

test-fast: setup
	$(BIN)/python -m pytest -q -m "not e2e"

bench: setup
	$(BIN)/python -m benchmarks.run
	$(BIN)/python -m benchmarks.bench_collab --work $(EDGELOOP_HOME)/bench-collab

# The device-only install (packaging/edgeloop-edge): a fresh venv outside .venv with only the
# edgeloop-edge wheel and requirements/device.txt; fails above 150 MB (DEVICE_MAX_MB).
device-check: setup
	$(BIN)/python packaging/edgeloop-edge/device_check.py --python $(PYTHON)

clean:
	rm -rf var .pytest_cache

# ---- operations (scripts/, docs/operations.md): local Prefect + MLflow servers, worker, deployments,
# and the cloud teacher devices defer to (models/cloud_server.py on collab.cloud_url's port, default 8090)
# `make up DB=postgres`: MLflow on a local PostgreSQL under $EDGELOOP_HOME/postgres (DB=sqlite: back
# to $EDGELOOP_HOME/mlflow.db; no DB: whatever the last `make up` used).
.PHONY: up down status
up: setup
	$(if $(DB),EDGELOOP_DB=$(DB) )scripts/up.sh

down:
	scripts/down.sh

status:
	scripts/status.sh

# Personalization benchmark (benchmarks/README.md): simulated devices, each with its own patch.
.PHONY: bench-personal
bench-personal: setup
	$(BIN)/python -m benchmarks.bench_personal

# Scale benchmark (benchmarks/README.md): one 2,000-row night on lakes of 10k, 100k and 700k messages
# (built once under $EDGELOOP_HOME/bench-scale), relabel 100k rows on threads and on Dask.
.PHONY: bench-scale
bench-scale: setup
	$(BIN)/python -m benchmarks.bench_scale

# Gate benchmark (benchmarks/README.md): real students (another seed, one intent removed, trained longer)
# against a champion, paired on the golden texts; reuses a home with a teacher and a filled lake (read only).
.PHONY: bench-gate
bench-gate: setup
	$(BIN)/python -m benchmarks.bench_gate --dataset bitext
	$(BIN)/python -m benchmarks.bench_gate --dataset clinc150 --epochs 6

# End-cloud benchmark (benchmarks/README.md): device alone, cloud alone and collaborative on Bitext and
# CLINC150 (+ CLINC150's oos lists); teachers and students trained once under $EDGELOOP_HOME/bench-collab.
.PHONY: bench-collab
bench-collab: setup
	$(BIN)/python -m benchmarks.bench_collab --work $(EDGELOOP_HOME)/bench-collab

# Week benchmark (benchmarks/README.md): a fresh home, the cloud teacher in its own process and one device;
# seven days of traffic routed device / cloud / rejected, each followed by a night through the CLI.
.PHONY: bench-week
bench-week: setup
	$(BIN)/python -m benchmarks.simulate_week

# Every target sets itself up: .venv is (re)built when missing or when the build files change.
PY      ?= python3.11
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: demo test lint bench bench-accuracy bench-ceiling bench-throughput bench-training bench-fixed-costs bench-calibration bench-pooling bench-selection bench-report bench-workers audit clean

$(STAMP): setup.py pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip wheel setuptools
	$(BIN)/pip install --quiet -e '.[test]'
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/vigil demo --output ./vigil-demo

# Lint first (pyproject.toml's [tool.ruff]: errors, import order, no bare layer imports).
lint: $(STAMP)
	$(BIN)/ruff check .

test: lint
	$(BIN)/python -m pytest -q tests $(PYTEST_ARGS)

bench: bench-accuracy bench-ceiling bench-throughput bench-training bench-calibration

# The four shared protocols (about 50 minutes); BENCH_ARGS="--protocol sklearn-unsup" runs the
# held-out tables that ship with scikit-learn (about 6 minutes), "--dump DIR" keeps raw scores.
bench-accuracy: $(STAMP)
	$(BIN)/python tests/benchmarks/accuracy.py $(BENCH_ARGS)

# Other rules for pooling the scores, recomputed from what --dump kept (seconds):
# make bench-pooling BENCH_ARGS=DIR
bench-pooling: $(STAMP)
	$(BIN)/python tests/benchmarks/pooling.py $(BENCH_ARGS)

# Whether normal rows and a perturbed copy of them pick the model that ranks real anomalies
# better, the premise of a label-free pooling weight (about 10 minutes).
bench-selection: $(STAMP)
	$(BIN)/python tests/benchmarks/score_selection.py $(BENCH_ARGS)

# What the table protocols allow at all: reference methods on vigil's splits (about a minute;
# BENCH_ARGS=--vigil adds vigil's own calibration study and --calibration-input, about 24 minutes).
bench-ceiling: $(STAMP)
	$(BIN)/python tests/benchmarks/ceiling.py $(BENCH_ARGS)

# Images and tables against the machine: roofline, pipeline / bare, fixed costs, report, RSS
# (one JSON; about 30 minutes).
bench-throughput: $(STAMP)
	$(BIN)/python tests/benchmarks/throughput.py $(BENCH_ARGS)

# vigil's training steps against a plain keras fit of the same networks (about 5 minutes).
bench-training: $(STAMP)
	$(BIN)/python tests/benchmarks/training.py $(BENCH_ARGS)

# The spread of the realised FPR around its target, on synthetic scores (about 20 s).
bench-calibration: $(STAMP)
	$(BIN)/python tests/benchmarks/calibration.py $(BENCH_ARGS)

# Start-up and report costs of a table run, and the table scorer against the fp32 matmul rate
# (about 5 minutes).
bench-fixed-costs: $(STAMP)
	$(BIN)/python tests/benchmarks/fixed_costs.py $(BENCH_ARGS)

bench-report: $(STAMP)
	$(BIN)/python tests/benchmarks/report_memory.py $(BENCH_ARGS)

# Peak RSS per SDK worker process, one model copy per process vs one shared (about 2 minutes).
bench-workers: $(STAMP)
	$(BIN)/python tests/benchmarks/worker_memory.py $(BENCH_ARGS)

# Known advisories in the exact dependency set the project installs (pip-audit runs in a
# venv of its own so that it does not change that set).  Needs PyPI's or OSV's advisory API.
audit: $(STAMP)
	@test -x .venv-audit/bin/pip-audit || ($(PY) -m venv .venv-audit || python3 -m venv .venv-audit) \
		&& .venv-audit/bin/pip install --quiet pip-audit
	$(BIN)/pip freeze --exclude-editable > $(VENV)/frozen-requirements.txt
	.venv-audit/bin/pip-audit --strict --progress-spinner off --no-deps --disable-pip \
		-r $(VENV)/frozen-requirements.txt

clean:
	rm -rf $(VENV) .venv-audit vigil-demo build *.egg-info .pytest_cache

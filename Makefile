# Every target sets itself up: .venv is (re)built when missing or when setup.py changes.
PY      ?= python3.11
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: demo test bench bench-accuracy bench-throughput clean

$(STAMP): setup.py
	@test -x $(BIN)/python || $(PY) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip wheel setuptools
	$(BIN)/pip install --quiet -e '.[test]'
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/vigil demo --output ./vigil-demo

test: $(STAMP)
	$(BIN)/python -m pytest -q tests $(PYTEST_ARGS)

bench: bench-accuracy bench-throughput

bench-accuracy: $(STAMP)
	$(BIN)/python tests/benchmarks/accuracy.py $(BENCH_ARGS)

bench-throughput: $(STAMP)
	$(BIN)/python tests/benchmarks/throughput.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) vigil-demo build *.egg-info .pytest_cache

# Cello: the few verbs a developer (and CI) runs.
#   make demo     set up, then build the demo data from the bundled PBMC dataset
#   make test     set up, then run the test suite
#   make bench    set up, then run the benchmarks (prints ratios, writes benchmarks/results/*.json)
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU wheel of torch must come first: an unpinned torch pulls a multi-GB CUDA build.
TORCH_CPU := torch==2.13.0
EXTRAS := data,train,serve,pipeline,dev
STAMP := $(VENV)/.installed

.PHONY: install demo test test-fast bench lint clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH_CPU)
	$(BIN)/pip install -q -c constraints.txt -e '.[$(EXTRAS)]'
	touch $(STAMP)

# The local chain on the bundled data: DVC data stages, then the non-LLM baseline.
DEMO := runs/demo
demo: install
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro
	$(BIN)/cello baseline fit data/splits/train.parquet -o $(DEMO)/baseline.json
	$(BIN)/cello baseline predict $(DEMO)/baseline.json data/splits/test.parquet \
		-o $(DEMO)/baseline/predictions.jsonl --metrics $(DEMO)/baseline/metrics.json
	@echo; echo "Demo outputs:"; \
	echo "  data (DVC):        data/cells.parquet data/puzzles.parquet data/splits/"; \
	echo "  training records:  data/records/{sft,grpo,eval}/{train,test}.jsonl"; \
	echo "  baseline:          $(DEMO)/baseline.json $(DEMO)/baseline/"

test: install
	$(BIN)/python -m pytest -q

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

bench: install
	$(BIN)/python benchmarks/bench_data.py
	$(BIN)/python benchmarks/bench_scoring.py
	$(BIN)/python benchmarks/bench_train.py
	$(BIN)/python benchmarks/bench_serve.py

lint: install
	$(BIN)/ruff check cello tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info

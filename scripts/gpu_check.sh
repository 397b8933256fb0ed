#!/usr/bin/env bash
# The GPU check: every GPU-marked test that runs without vLLM, and the GPU half of
# benchmarks/bench_train.py (0.5B-shaped model, bf16 SFT tokens/s padded / padding-free / packed),
# in one run of a few minutes on a machine with one CUDA GPU, PyTorch and transformers, and no
# network. What that machine lacks (TRL, datasets, pydantic, ...) travels as wheels in .whl/.
#
#   bash scripts/gpu_check.sh --prepare     # here, with the package index: the wheels -> .whl/ (~5 MB)
#   bash scripts/gpu_check.sh [OUT_DIR]     # there, from the repository root: results -> OUT_DIR
#                                           # (default: $OUT, else gpu-check/): gpu_check.json,
#                                           # pytest.log, bench_train.json, bench_train.log
#
# The wheels are for CPython 3.12 on x86-64 Linux (the GPU image's Python); --python-version
# changes that. Versions come from constraints.txt, so the GPU run tests what CI tests.
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=.whl
# Python packages the GPU image does not carry, that the GPU tests and the benchmark import.
NEEDED=(trl datasets dill multiprocess pydantic pydantic_core annotated-types typing-inspection)

pin() {  # NAME -> NAME==VERSION from constraints.txt
  local line
  line=$(grep -i -E "^${1//[-_]/[-_]}==" constraints.txt) || { echo "constraints.txt pins no $1" >&2; exit 2; }
  echo "$line"
}

if [[ "${1:-}" == "--prepare" ]]; then
  PY=${PYTHON_VERSION:-3.12}
  mkdir -p "$WHEELS"
  specs=()
  for name in "${NEEDED[@]}"; do specs+=("$(pin "$name")"); done
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PY" --implementation cp \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 \
    --platform manylinux_2_34_x86_64 -d "$WHEELS" "${specs[@]}"
  du -sh "$WHEELS"
  echo "carry $WHEELS to the GPU machine and run: bash scripts/gpu_check.sh"
  exit 0
fi

OUT_DIR=${1:-${OUT:-gpu-check}}
mkdir -p "$OUT_DIR"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
python3 -c "
import sys
try:
    import torch
except ImportError:
    sys.exit('python3 has no PyTorch: run this on the GPU machine (its python3 holds PyTorch)')
sys.exit(0 if torch.cuda.is_available() else 'no CUDA device: run this on the GPU machine')"
if compgen -G "$WHEELS/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/cello-site "$WHEELS"/*.whl
  export PYTHONPATH="$PYTHONPATH:/tmp/cello-site"
fi
start=$(date +%s)
set +e
# tests/llm and tests/train hold the GPU-marked tests; the other folders' fixtures need the CPU stack.
python3 -m pytest -q -m gpu -p no:cacheprovider -o addopts="" tests/llm tests/train 2>&1 | tee "$OUT_DIR/pytest.log"
tests_rc=${PIPESTATUS[0]}
python3 benchmarks/bench_train.py --gpu-only --out "$OUT_DIR/bench_train.json" 2>&1 | tee "$OUT_DIR/bench_train.log"
bench_rc=${PIPESTATUS[0]}
set -e
python3 - "$OUT_DIR" "$tests_rc" "$bench_rc" "$start" <<'EOF'
import json, re, sys, time
from pathlib import Path

out, tests_rc, bench_rc, start = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
log = (out / "pytest.log").read_text(errors="replace")
counts = {k: int(v) for v, k in re.findall(r"(\d+) (passed|failed|skipped|error|errors|deselected)", log.splitlines()[-1] if log else "")}
bench = json.loads((out / "bench_train.json").read_text()) if (out / "bench_train.json").is_file() else None
summary = {"tests_exit_code": tests_rc, "tests": counts, "bench_exit_code": bench_rc, "bench": bench,
           "seconds": round(time.time() - start, 1)}
(out / "gpu_check.json").write_text(json.dumps(summary, indent=2) + "\n")
print(json.dumps(summary, indent=2))
sys.exit(1 if tests_rc not in (0, 5) or bench_rc else 0)
EOF

#!/usr/bin/env bash
# The whole Cello recipe on one CPU machine, on the real PBMC data bundled with scanpy.
#   make demo                # (sets up .venv, then runs this script)
#   bash scripts/demo.sh     # with .venv already installed
# 1. DVC builds the versioned CellPuzzles data (top-50 genes, as the paper) into data/.
# 2. The non-LLM baseline is fitted on train and evaluated on test: the floor to beat.
# 3. The local chain (`--profile local`: a tiny offline model, short prompts):
#    data -> tiny model -> SFT (LoRA) -> merge -> GRPO (batch reward) -> eval -> promotion gate.
# Everything lands under runs/demo/; nothing is downloaded.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="$PWD/.venv/bin"
export PATH="$BIN:$PATH"
OUT=runs/demo
mkdir -p "$OUT"
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "1/3 data (dvc repro: cells -> puzzles -> split -> sft/grpo/eval records)"
dvc repro

step "2/3 non-LLM baseline on the paper-format data"
cello baseline fit data/splits/train.parquet -o "$OUT/baseline.json"
cello eval data/records/eval/test.jsonl --baseline "$OUT/baseline.json" -o "$OUT/eval/baseline" --overwrite --no-progress

step "3/3 local chain: tiny model -> SFT -> merge -> GRPO -> eval -> gate (--profile local)"
L=(--profile local)
cello data cells builtin:pbmc68k -o "$OUT/cells.parquet" "${L[@]}"
cello data puzzles "$OUT/cells.parquet" -o "$OUT/puzzles.parquet" "${L[@]}"
cello data split "$OUT/puzzles.parquet" -o "$OUT/splits" "${L[@]}"
for fmt in sft grpo eval; do
  cello data export "$OUT/splits" -o "$OUT/records/$fmt" --format "$fmt" "${L[@]}"
done
cello model tiny -o "$OUT/tiny" --corpus "$OUT/records/sft/train.jsonl"
cello train sft "$OUT/records/sft" -o "$OUT/sft" "${L[@]}"
cello train merge "$OUT/sft" -o "$OUT/sft-merged"
cello train grpo "$OUT/records/grpo" -o "$OUT/grpo" "${L[@]}"
cello baseline fit "$OUT/splits/train.parquet" -o "$OUT/baseline-local.json"
cello eval "$OUT/records/eval/test.jsonl" --baseline "$OUT/baseline-local.json" -o "$OUT/eval/baseline-local" --overwrite --no-progress "${L[@]}"
cello eval "$OUT/records/eval/test.jsonl" --model "$OUT/grpo/model" -o "$OUT/eval/grpo" --overwrite --no-progress \
  --compare "$OUT/eval/baseline-local/metrics.json" "${L[@]}"
cello eval gate --candidate "$OUT/eval/grpo/metrics.json" --baseline "$OUT/eval/baseline-local/metrics.json" \
  --candidate-predictions "$OUT/eval/grpo/predictions.jsonl" -o "$OUT/eval/decision.json" "${L[@]}"

step "outputs"
cat <<EOT
  versioned data (DVC)   data/cells.parquet data/puzzles.parquet data/splits/ data/records/{sft,grpo,eval}/
  baseline               $OUT/baseline.json  $OUT/eval/baseline/{metrics.json,report.md,accuracy_by_n.png}
  local chain            $OUT/tiny/ $OUT/sft/ $OUT/sft-merged/ $OUT/grpo/
  evaluation and gate    $OUT/eval/grpo/{predictions.jsonl,metrics.json,report.md,accuracy_by_n.png}  $OUT/eval/decision.json
  serve the GRPO model   .venv/bin/cello serve --model $OUT/grpo/model --port 8080
EOT

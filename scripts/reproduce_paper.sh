#!/usr/bin/env bash
# Reproduce the Cell-o1 paper's table: import the published CellPuzzles from the Hub, audit its
# split for leakage, evaluate the published model and its base model on the published test split
# (the published prompts verbatim, laid out as the released evaluation: one user turn), and print
# the table beside the paper's figures.
#
#   bash scripts/reproduce_paper.sh [OUT]      # default OUT: runs/paper; the table -> OUT/table.md
#
# Settings (environment):
#   DATA=hf://ncbi/CellPuzzles          the dataset (hf://ORG/NAME[@REVISION], or a local copy in the Hub layout)
#   MODEL=hf://ncbi/Cell-o1             the published model
#   BASE=hf://Qwen/Qwen2.5-7B-Instruct  the base model it was trained from
#   GPU=auto                            auto: evaluate where CUDA is present, else skip with a message;
#                                       0: skip the evaluations; 1: evaluate anyway (small models on CPU)
#   LIMIT=                              the first LIMIT test puzzles only (empty: all 1095)
#   MAX_NEW_TOKENS=                     empty: params.yaml's (3500, the released evaluation's budget)
#   PYTHON=.venv/bin/python             the interpreter with Cello installed
# Where vLLM imports, the models run on its engine (vllm:hf://...), else with transformers.
set -euo pipefail
OUT=${1:-runs/paper}
DATA=${DATA:-hf://ncbi/CellPuzzles}
MODEL=${MODEL:-hf://ncbi/Cell-o1}
BASE=${BASE:-hf://Qwen/Qwen2.5-7B-Instruct}
GPU=${GPU:-auto}
PYTHON=${PYTHON:-.venv/bin/python}
[[ -x "$PYTHON" ]] || PYTHON=python3
cello() { "$PYTHON" -m cello.cli "$@"; }

echo "== 1/4 import $DATA -> $OUT/data"
cello data import "$DATA" -o "$OUT/data"

echo "== 2/4 leakage audit of the published split"
for side in train reasoning; do
  if [[ -f "$OUT/data/splits/$side.parquet" && -f "$OUT/data/splits/test.parquet" ]]; then
    cello data audit "$OUT/data/splits/$side.parquet" "$OUT/data/splits/test.parquet"
  fi
done

notes=()
if [[ "$GPU" == auto ]]; then
  GPU=0
  "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null && GPU=1
fi
if [[ "$GPU" == 1 ]]; then
  prefix=""
  "$PYTHON" -c 'import vllm' 2>/dev/null && prefix="vllm:"
  echo "== 3/4 evaluate $MODEL and $BASE on the published test split (${prefix:-transformers:}engine)"
  for spec in "$MODEL" "$BASE"; do
    name=${spec##*/}; name=${name%%@*}
    cello eval "$OUT/data/records/eval/test.jsonl" --model "$prefix$spec" --name "$name" -o "$OUT/eval/$name" \
      --prompt-layout user-turn \
      ${LIMIT:+--limit "$LIMIT"} ${MAX_NEW_TOKENS:+--max-new-tokens "$MAX_NEW_TOKENS"} --no-progress
  done
else
  msg="$MODEL and $BASE were not evaluated: no CUDA GPU here (7B models); rerun this script where a GPU"
  msg+=" and the Hub are reachable, or GPU=1 to force it"
  echo "== 3/4 skipped: $msg" >&2
  notes+=(--note "$msg")
fi

echo "== 4/4 the table"
shopt -s nullglob
runs=("$OUT"/eval/*/metrics.json)
cello eval table "${runs[@]}" --data "$OUT/data" "${notes[@]}" -o "$OUT/table.md"

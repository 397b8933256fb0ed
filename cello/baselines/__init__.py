"""Non-LLM baselines for CellPuzzles: the floor every LLM checkpoint must beat.

- Chance: a uniformly random valid assignment. Expected cell accuracy 1/N, batch 1/N!.
- Marker genes (`MarkerBaseline`, `cello.baselines.solver`): per-type log-odds of a cell's
  rank-weighted top genes, learned from the train cells by logistic regression
  (`cello.baselines.softmax`); every cell-candidate pair scored with log p(type | cell), the puzzle
  solved by optimal assignment (one candidate per cell, the most probable labelling as a whole).
  Candidate types never seen in training are scored from their names (`cello.baselines.names`):
  related seen types, and the markers the name calls up or down.

    cello baseline fit data/splits/train.parquet -o outputs/baseline.json
    cello baseline predict outputs/baseline.json data/splits/test.parquet -o outputs/baseline/predictions.jsonl
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cello._io import write_json, write_jsonl
from cello.baselines.solver import ChanceBaseline, MarkerBaseline, normalize_type, puzzle_fields
from cello.config import BaselineConfig
from cello.data import schema as S
from cello.data.prompt import PromptTemplate
from cello.errors import InputError
from cello.scoring import ChanceAccuracy, chance_expected_accuracy, chance_set_accuracy

__all__ = [
    "ChanceAccuracy", "chance_expected_accuracy", "chance_set_accuracy", "ChanceBaseline", "MarkerBaseline",
    "normalize_type", "load_puzzles", "fit_baseline", "predict_baseline", "PredictSummary",
]


# ---------------------------------------------------------------- files (the CLI's library calls)
def load_puzzles(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Puzzles from puzzles.parquet (rows) or from records (eval/GRPO or published CellPuzzles: a JSON
    list, JSON lines or Parquet, told apart by content, as `cello.data.records.load_records` reads them)."""
    from cello.data.records import as_chat_record, is_parquet, load_records, parquet_columns

    path = Path(path)
    if not path.is_file():
        msg = f"{path}: no such file; give a puzzles .parquet (from `cello data split`) or eval records."
        raise InputError(msg)
    if is_parquet(path) and S.CELL_GENES in parquet_columns(path):
        import pandas as pd

        df = pd.read_parquet(path)
        missing = [c for c in (S.CANDIDATES, S.ANSWER) if c not in df.columns]
        if missing:
            msg = f"{path}: missing column(s) {missing}; expected a puzzles table from `cello data split`."
            raise InputError(msg)
        return df.to_dict("records")
    template = PromptTemplate()
    return [as_chat_record(rec, index=i, where=f"{path}: record {i + 1}", template=template)
            for i, rec in enumerate(load_records(path))]


def fit_baseline(train: str | os.PathLike, out: str | os.PathLike, *,
                 cfg: BaselineConfig | None = None) -> MarkerBaseline:
    """Fit the marker baseline on a train split and save it to `out` (JSON)."""
    model = MarkerBaseline(cfg).fit(load_puzzles(train))
    model.save(out)
    return model


@dataclass
class PredictSummary:
    """What `predict_baseline` wrote, with its metrics and the chance expectation."""

    out: str
    metrics: dict[str, Any]
    chance_cell: float
    chance_batch: float

    def render(self) -> str:
        o = self.metrics["overall"]
        lines = [
            f"{o['count']} puzzles -> {self.out}",
            f"  marker baseline: cell accuracy {o['cell_accuracy']:.3f} "
            f"[{o['cell_accuracy_ci'][0]:.3f}, {o['cell_accuracy_ci'][1]:.3f}], "
            f"batch accuracy {o['batch_accuracy']:.3f} "
            f"[{o['batch_accuracy_ci'][0]:.3f}, {o['batch_accuracy_ci'][1]:.3f}]",
            f"  chance (expected): cell accuracy {self.chance_cell:.3f}, batch accuracy {self.chance_batch:.4f}",
        ]
        for n, g in self.metrics["by_n"].items():
            lines.append(f"  N={n:>2}: {g['count']:>4} puzzles, cell {g['cell_accuracy']:.3f} "
                         f"(chance {chance_expected_accuracy(int(n)).cell:.3f}), batch {g['batch_accuracy']:.3f}")
        return "\n".join(lines)


def predict_baseline(
    model: str | os.PathLike | MarkerBaseline, puzzles: str | os.PathLike, out: str | os.PathLike, *,
    metrics_out: str | os.PathLike | None = None, template: PromptTemplate | None = None,
    n_boot: int = 1000, seed: int = 0,
) -> PredictSummary:
    """Predict every puzzle, write prediction records (JSONL, the eval format) and
    optionally the metrics (JSON); return the summary with chance for comparison."""
    from cello.scoring import (
        chance_set_accuracy,
        compute_metrics,
    )

    baseline = model if isinstance(model, MarkerBaseline) else MarkerBaseline.load(model)
    records = list(_predict_records(baseline, load_puzzles(puzzles), template=template))
    write_jsonl(records, out)
    metrics = compute_metrics(records, n_boot=n_boot, seed=seed)
    if metrics_out is not None:
        write_json(metrics, metrics_out)
    chance = chance_set_accuracy([int(r["n"]) for r in records] or [1])
    return PredictSummary(str(out), metrics, chance["cell_accuracy"], chance["batch_accuracy"])


def _predict_records(baseline: MarkerBaseline, puzzles: Iterable[Mapping[str, Any]], *,
                     template: PromptTemplate | None) -> Iterable[dict[str, Any]]:
    from cello.scoring import prediction_record

    for pos, puzzle in enumerate(puzzles):
        genes, candidates = puzzle_fields(puzzle, template)
        labels = baseline.assign(genes, candidates)
        answer = [str(a) for a in list(puzzle[S.ANSWER])]
        yield prediction_record(
            MarkerBaseline.completion(labels, template=template), answer,
            id=str(puzzle.get(S.PUZZLE_ID, puzzle.get("id", pos))), dataset=str(puzzle.get(S.DATASET) or ""),
            n=len(answer), candidates=candidates,
        )

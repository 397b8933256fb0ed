"""Non-LLM baselines for CellPuzzles: the floor every LLM checkpoint must beat.

- Chance: a uniformly random valid assignment. Expected cell accuracy 1/N, batch 1/N!.
- Marker genes (`MarkerBaseline`): learns how strongly each gene, by its rank in a cell's
  top-gene list, points to each cell type in the train split, scores every cell-candidate
  pair, and solves the puzzle with the Hungarian algorithm (one candidate per cell).

The association weight of gene g with type t is a smoothed log-lift (pointwise mutual
information) of rank-weighted counts:
    w(t, g) = log[(c_tg + a) / (C_t + a V)] - log[(c_g + a) / (C + a V)]
where c_tg sums the rank weights of g over train cells of type t, C_t = sum_g c_tg, c_g and C
are the same over all types, V is the gene vocabulary and a the smoothing. A cell's score for
t is the rank-weighted sum of w(t, g) over its genes. The background term is the same for
every type, so the Hungarian solution is the maximum-likelihood assignment of a multinomial
naive-Bayes model. Type names are matched after case folding and whitespace collapsing;
a candidate type never seen in training scores 0 for every cell (neutral: adding a constant
to a column does not change which assignment is optimal). Genes never seen score 0.

    cello baseline fit data/splits/train.parquet -o outputs/baseline.json
    cello baseline predict outputs/baseline.json data/splits/test.parquet -o outputs/baseline/predictions.jsonl
"""

from __future__ import annotations

import json
import logging
import os
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cello._io import read_jsonl, write_json, write_jsonl
from cello.config import BaselineConfig
from cello.data import schema as S
from cello.data.prompt import PromptTemplate
from cello.errors import InputError
from cello.scoring import ChanceAccuracy, chance_expected_accuracy, chance_set_accuracy

log = logging.getLogger(__name__)

__all__ = [
    "ChanceAccuracy", "chance_expected_accuracy", "chance_set_accuracy", "ChanceBaseline", "MarkerBaseline",
    "normalize_type", "load_puzzles", "fit_baseline", "predict_baseline", "PredictSummary",
]

FORMAT = "cello-marker-baseline"
VERSION = 1


def normalize_type(name: str) -> str:
    """A cell-type name as compared across datasets: case-folded, whitespace collapsed."""
    return " ".join(str(name).split()).casefold()


def _as_list(value: Any) -> list:
    """A list from a Python list, a numpy array or a pyarrow-backed sequence (Parquet cells)."""
    return [] if value is None else list(value)


def _puzzle_fields(puzzle: Mapping[str, Any], template: PromptTemplate | None = None) -> tuple[list[list[str]], list[str]]:
    """(cell_genes, candidates) from a puzzle row, or from an eval/GRPO record's user message."""
    if S.CELL_GENES in puzzle:
        genes = [[str(g) for g in _as_list(cell)] for cell in _as_list(puzzle[S.CELL_GENES])]
        return genes, [str(c) for c in _as_list(puzzle[S.CANDIDATES])]
    messages = puzzle.get("messages") or puzzle.get("prompt")
    if not messages:
        msg = f"puzzle {puzzle.get('id', puzzle.get(S.PUZZLE_ID, '?'))!r} has neither '{S.CELL_GENES}' nor chat messages; pass puzzles.parquet rows or eval records."
        raise InputError(msg)
    user = next(m["content"] for m in messages if m.get("role") == "user")
    _, genes, candidates = (template or PromptTemplate()).parse_user(user)
    if puzzle.get(S.CANDIDATES) is not None and len(puzzle[S.CANDIDATES]):
        candidates = [str(c) for c in _as_list(puzzle[S.CANDIDATES])]
    return genes, candidates


class ChanceBaseline:
    """A uniformly random valid assignment, reproducible per puzzle id for a given seed."""

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self._rng = np.random.default_rng(seed)

    def predict(self, puzzle: Mapping[str, Any]) -> list[str]:
        pid = puzzle.get(S.PUZZLE_ID, puzzle.get("id"))
        rng = self._rng if pid is None else np.random.default_rng([self.seed, zlib.crc32(str(pid).encode())])
        _, candidates = _puzzle_fields(puzzle)
        return [candidates[i] for i in rng.permutation(len(candidates))]


def _rank_weights(k: int, scheme: str) -> np.ndarray:
    r = np.arange(k, dtype=np.float64)
    if scheme == "log":
        return 1.0 / np.log2(r + 2.0)
    if scheme == "linear":
        return 1.0 - r / max(k, 1)
    return np.ones(k)


class MarkerBaseline:
    """Gene-type association weights from train puzzles + Hungarian assignment (see module doc)."""

    def __init__(self, cfg: BaselineConfig | None = None) -> None:
        self.cfg = cfg or BaselineConfig()
        self.names: dict[str, str] = {}  # normalised type -> name as first seen
        self.cells: dict[str, int] = {}  # normalised type -> train cells
        self.counts: dict[str, dict[str, float]] = {}  # normalised type -> gene -> rank-weighted count
        self._table: tuple[dict[str, int], dict[str, int], np.ndarray] | None = None

    # ---------------------------------------------------------------- fitting
    def _weights(self, k: int) -> np.ndarray:
        top = self.cfg.top_k or k
        return _rank_weights(min(k, top), self.cfg.rank_weighting)

    def fit(self, puzzles: Any) -> MarkerBaseline:
        """Learn from puzzles (a DataFrame of puzzles.parquet rows, or mappings with
        `cell_genes` and `answer`): every cell's ranked genes, labelled with its gold type.
        A cell that appears in several puzzles (same `cell_ids` entry) is counted once."""
        rows = puzzles.to_dict("records") if hasattr(puzzles, "to_dict") else puzzles
        seen, used = 0, set()
        for row in rows:
            genes, _ = _puzzle_fields(row)
            answer = [str(a) for a in _as_list(row[S.ANSWER])]
            ids = [str(c) for c in _as_list(row.get(S.CELL_IDS))] or [None] * len(genes)
            if not len(answer) == len(genes) == len(ids):
                msg = f"puzzle {row.get(S.PUZZLE_ID, '?')!r}: {len(genes)} cells but {len(answer)} answer types; rebuild the puzzles."
                raise InputError(msg)
            for cell, label, cell_id in zip(genes, answer, ids, strict=True):
                if cell_id is not None:  # a cell reused by several puzzles counts once
                    if cell_id in used:
                        continue
                    used.add(cell_id)
                key = normalize_type(label)
                self.names.setdefault(key, label)
                self.cells[key] = self.cells.get(key, 0) + 1
                table = self.counts.setdefault(key, {})
                for gene, w in zip(cell, self._weights(len(cell)), strict=False):
                    table[gene] = table.get(gene, 0.0) + float(w)
            seen += 1
        if not self.counts:
            msg = "MarkerBaseline.fit(): no training cells; pass a non-empty train split."
            raise InputError(msg)
        self._table = None
        log.info("marker baseline: %d puzzles, %d types, %d genes", seen, len(self.counts), len(self._vocab()))
        return self

    def _vocab(self) -> dict[str, int]:
        genes = sorted({g for table in self.counts.values() for g in table})
        return {g: i for i, g in enumerate(genes)}

    def _association(self) -> tuple[dict[str, int], dict[str, int], np.ndarray]:
        """(type index, gene index, weights[type, gene]): the smoothed log-lift, built once."""
        if self._table is None:
            vocab = self._vocab()
            types = {t: i for i, t in enumerate(sorted(self.counts))}
            c = np.zeros((len(types), len(vocab)))
            for t, table in self.counts.items():
                cols = np.fromiter((vocab[g] for g in table), dtype=np.int64, count=len(table))
                c[types[t], cols] = np.fromiter(table.values(), dtype=np.float64, count=len(table))
            a, v = self.cfg.alpha, len(vocab)
            p_type = (c + a) / (c.sum(axis=1, keepdims=True) + a * v)
            p_all = (c.sum(axis=0) + a) / (c.sum() + a * v)
            self._table = (types, vocab, (np.log(p_type) - np.log(p_all)).astype(np.float32))
        return self._table

    # ---------------------------------------------------------------- predicting
    def score_matrix(self, cell_genes: Sequence[Sequence[str]], candidates: Sequence[str]) -> np.ndarray:
        """Scores[cell, candidate]: rank-weighted sum of the cell's genes' association with
        the candidate type; 0 for a type never seen in training."""
        types, vocab, weights = self._association()
        col_type = [types.get(normalize_type(c), -1) for c in candidates]
        known = [j for j, t in enumerate(col_type) if t >= 0]
        rows = weights[[col_type[j] for j in known]] if known else np.zeros((0, weights.shape[1]))
        out = np.zeros((len(cell_genes), len(candidates)))
        for i, cell in enumerate(cell_genes):
            w = self._weights(len(cell))
            pairs = [(vocab[g], wr) for g, wr in zip(cell, w, strict=False) if g in vocab]
            if pairs and known:
                idx, wr = zip(*pairs, strict=True)
                out[i, known] = rows[:, list(idx)] @ np.asarray(wr)
        return out

    def assign(self, cell_genes: Sequence[Sequence[str]], candidates: Sequence[str]) -> list[str]:
        """The candidate for each cell (in cell order), each candidate used exactly once."""
        from scipy.optimize import linear_sum_assignment

        if len(cell_genes) != len(candidates):
            msg = f"{len(cell_genes)} cells but {len(candidates)} candidates: a puzzle has one candidate per cell."
            raise InputError(msg)
        rows, cols = linear_sum_assignment(self.score_matrix(cell_genes, candidates), maximize=True)
        labels = [""] * len(cell_genes)
        for r, c in zip(rows, cols, strict=True):
            labels[r] = candidates[c]
        return labels

    def predict(self, puzzle: Mapping[str, Any], *, template: PromptTemplate | None = None) -> list[str]:
        """`assign` for a puzzle row (cell_genes, candidates) or an eval record (chat messages)."""
        return self.assign(*_puzzle_fields(puzzle, template))

    @staticmethod
    def completion(labels: Sequence[str], *, template: PromptTemplate | None = None) -> str:
        """A completion in the paper's format, so the baseline is scored exactly like an LLM."""
        reasoning = "Marker-gene baseline: gene-type log-lift scores, assigned with the Hungarian algorithm."
        return (template or PromptTemplate()).render_answer(labels, reasoning=reasoning)

    # ---------------------------------------------------------------- persistence
    def save(self, path: str | os.PathLike) -> None:
        """Write the fitted counts as JSON (atomically); weights are rebuilt on load."""
        types = [{"name": self.names[t], "cells": self.cells[t], "genes": self.counts[t]} for t in sorted(self.counts)]
        write_json({"format": FORMAT, "version": VERSION, "config": self.cfg.model_dump(), "types": types}, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> MarkerBaseline:
        try:
            raw = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            msg = f"{path}: cannot read a marker baseline ({exc}); fit one with `cello baseline fit`."
            raise InputError(msg) from exc
        if not isinstance(raw, dict) or raw.get("format") != FORMAT:
            msg = f"{path}: not a marker baseline file (format {FORMAT!r}); fit one with `cello baseline fit`."
            raise InputError(msg)
        model = cls(BaselineConfig.model_validate(raw.get("config", {})))
        for t in raw["types"]:
            key = normalize_type(t["name"])
            model.names[key], model.cells[key] = t["name"], int(t["cells"])
            model.counts[key] = {str(g): float(v) for g, v in t["genes"].items()}
        return model


# ---------------------------------------------------------------- files (the CLI's library calls)
def load_puzzles(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Puzzles from puzzles.parquet (rows) or from eval/GRPO records (.jsonl)."""
    path = Path(path)
    if not path.exists():
        msg = f"{path}: no such file; give a puzzles .parquet (from `cello data split`) or eval records .jsonl."
        raise InputError(msg)
    if path.suffix == ".parquet":
        import pandas as pd

        df = pd.read_parquet(path)
        missing = [c for c in (S.CELL_GENES, S.CANDIDATES, S.ANSWER) if c not in df.columns]
        if missing:
            msg = f"{path}: missing column(s) {missing}; expected a puzzles table from `cello data puzzles`/`split`."
            raise InputError(msg)
        return df.to_dict("records")
    if path.suffix in {".jsonl", ".json"}:
        return read_jsonl(path)
    msg = f"{path}: unknown file type {path.suffix!r}; use .parquet (puzzles) or .jsonl (eval records)."
    raise InputError(msg)


def fit_baseline(train: str | os.PathLike, out: str | os.PathLike, *, cfg: BaselineConfig | None = None) -> MarkerBaseline:
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
            f"batch accuracy {o['batch_accuracy']:.3f} [{o['batch_accuracy_ci'][0]:.3f}, {o['batch_accuracy_ci'][1]:.3f}]",
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
        genes, candidates = _puzzle_fields(puzzle, template)
        labels = baseline.assign(genes, candidates)
        answer = [str(a) for a in _as_list(puzzle[S.ANSWER])]
        yield prediction_record(
            MarkerBaseline.completion(labels, template=template), answer,
            id=str(puzzle.get(S.PUZZLE_ID, puzzle.get("id", pos))), dataset=str(puzzle.get(S.DATASET) or ""),
            n=len(answer), candidates=candidates,
        )

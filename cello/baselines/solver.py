"""The solvers: chance, and the marker baseline (per-type log-odds + optimal assignment).

`MarkerBaseline` learns, from the train cells (each counted once), the log-odds of every cell
type given the cell's rank-weighted top genes (`cello.baselines.softmax`), scores every
cell-candidate pair of a puzzle with log p(type | cell), and picks the assignment with the
highest total (scipy's `linear_sum_assignment`, one candidate per cell): the most probable
labelling of the puzzle as a whole. A candidate never seen in training gets a score from its
name (`cello.baselines.names`): what related seen types say, plus the markers the name calls
up or down. Type names are matched case-folded, whitespace and punctuation aside.
"""

from __future__ import annotations

import json
import logging
import math
import os
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cello._io import write_json
from cello.baselines.names import name_prior, signature
from cello.baselines.softmax import features, fit_softmax, log_posteriors, rank_weights
from cello.config import BaselineConfig
from cello.data import schema as S
from cello.data.prompt import PromptTemplate
from cello.errors import InputError

log = logging.getLogger(__name__)

FORMAT = "cello-marker-baseline"
VERSION = 2


def normalize_type(name: str) -> str:
    """A cell-type name as compared across datasets: case-folded, whitespace collapsed."""
    return " ".join(str(name).split()).casefold()


def _as_list(value: Any) -> list:
    """A list from a Python list, a numpy array or a pyarrow-backed sequence (Parquet cells)."""
    return [] if value is None else list(value)


def puzzle_fields(puzzle: Mapping[str, Any],
                  template: PromptTemplate | None = None) -> tuple[list[list[str]], list[str]]:
    """(cell_genes, candidates) from a puzzle row, or from an eval/GRPO record's user message."""
    if S.CELL_GENES in puzzle:
        genes = [[str(g) for g in _as_list(cell)] for cell in _as_list(puzzle[S.CELL_GENES])]
        return genes, [str(c) for c in _as_list(puzzle[S.CANDIDATES])]
    messages = puzzle.get("messages") or puzzle.get("prompt")
    if not messages:
        pid = puzzle.get("id", puzzle.get(S.PUZZLE_ID, "?"))
        msg = (f"puzzle {pid!r} has neither '{S.CELL_GENES}' nor chat messages; "
               "pass puzzles.parquet rows or eval records.")
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
        _, candidates = puzzle_fields(puzzle)
        return [candidates[i] for i in rng.permutation(len(candidates))]


def _train_cells(rows) -> tuple[list[list[str]], list[str], int]:
    """Every distinct train cell (by `cell_ids`) with its gold type, and the number of puzzles."""
    cells, labels, used, seen = [], [], set(), 0
    for row in rows:
        genes, _ = puzzle_fields(row)
        answer = [str(a) for a in _as_list(row[S.ANSWER])]
        ids = [str(c) for c in _as_list(row.get(S.CELL_IDS))] or [None] * len(genes)
        if not len(answer) == len(genes) == len(ids):
            msg = (f"puzzle {row.get(S.PUZZLE_ID, '?')!r}: {len(genes)} cells but {len(answer)} answer types; "
                   "rebuild the puzzles.")
            raise InputError(msg)
        for cell, label, cell_id in zip(genes, answer, ids, strict=True):
            if cell_id is not None:  # a cell reused by several puzzles counts once
                if cell_id in used:
                    continue
                used.add(cell_id)
            cells.append(cell)
            labels.append(label)
        seen += 1
    return cells, labels, seen


class MarkerBaseline:
    """Per-type log-odds of rank-weighted genes + optimal assignment (see the module doc)."""

    def __init__(self, cfg: BaselineConfig | None = None) -> None:
        self.cfg = cfg or BaselineConfig()
        self.types: list[str] = []  # normalised type names, sorted
        self.names: dict[str, str] = {}  # normalised type -> name as first seen
        self.cells: dict[str, int] = {}  # normalised type -> train cells
        self.vocab: dict[str, int] = {}
        self.weights = np.zeros((0, 0))  # types x genes
        self.bias = np.zeros(0)

    # ---------------------------------------------------------------- fitting
    def fit(self, puzzles: Any) -> MarkerBaseline:
        """Learn from puzzles (a DataFrame of puzzles.parquet rows, or mappings with
        `cell_genes` and `answer`): every cell's ranked genes, labelled with its gold type.
        A cell that appears in several puzzles (same `cell_ids` entry) is counted once."""
        rows = puzzles.to_dict("records") if hasattr(puzzles, "to_dict") else puzzles
        cells, labels, seen = _train_cells(rows)
        if not cells:
            msg = "MarkerBaseline.fit(): no training cells; pass a non-empty train split."
            raise InputError(msg)
        keys = [normalize_type(t) for t in labels]
        for key, label in zip(keys, labels, strict=True):
            self.names.setdefault(key, label)
            self.cells[key] = self.cells.get(key, 0) + 1
        self.types = sorted(self.cells)
        top = self.cfg.top_k
        self.vocab = {g: i for i, g in enumerate(sorted({g for c in cells for g in (c[:top] if top else c)}))}
        x = features(cells, self.vocab, scheme=self.cfg.rank_weighting, top_k=top)
        index = {t: i for i, t in enumerate(self.types)}
        y = np.array([index[k] for k in keys])
        if len(self.types) > 1:
            self.weights, self.bias = fit_softmax(x, y, len(self.types), l2=self.cfg.l2)
        else:  # one type: nothing to tell apart
            self.weights, self.bias = np.zeros((1, len(self.vocab))), np.zeros(1)
        log.info("marker baseline: %d puzzles, %d cells, %d types, %d genes", seen, len(cells), len(self.types),
                 len(self.vocab))
        return self

    # ---------------------------------------------------------------- predicting
    def _lookup(self, candidate: str) -> int:
        """Index of the trained type `candidate` names (case, spacing and punctuation aside), or -1."""
        key = normalize_type(candidate)
        if key in self.cells:
            return self.types.index(key)
        sig = signature(candidate)
        return next((i for i, t in enumerate(self.types) if signature(t) == sig), -1)

    def score_matrix(self, cell_genes: Sequence[Sequence[str]], candidates: Sequence[str]) -> np.ndarray:
        """Scores[cell, candidate] = log p(candidate | cell); for a type never seen in training,
        the prior from its name (`cello.baselines.names`), or log(1/types) when `name_prior` is 0."""
        if not self.types:
            msg = "MarkerBaseline: not fitted; call fit() or load() first."
            raise InputError(msg)
        top = self.cfg.top_k
        x = features(cell_genes, self.vocab, scheme=self.cfg.rank_weighting, top_k=top)
        logp = log_posteriors(x, self.weights, self.bias)
        base = -math.log(len(self.types))
        out = np.full((len(cell_genes), len(candidates)), base)
        cells = [list(c)[:top] if top else list(c) for c in cell_genes]
        for j, cand in enumerate(candidates):
            t = self._lookup(cand)
            if t >= 0:
                out[:, j] = logp[:, t]
            elif self.cfg.name_prior > 0:
                known = {self.names[k]: logp[:, i] for i, k in enumerate(self.types)}
                weights = [rank_weights(len(c), self.cfg.rank_weighting) for c in cells]
                out[:, j] = name_prior(cand, cells, known=known, weights=weights, base=base,
                                       strength=self.cfg.name_prior)
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
        return self.assign(*puzzle_fields(puzzle, template))

    @staticmethod
    def completion(labels: Sequence[str], *, template: PromptTemplate | None = None) -> str:
        """A completion in the paper's format, so the baseline is scored exactly like an LLM."""
        reasoning = "Marker-gene baseline: per-type log-odds of the ranked genes, assigned optimally."
        return (template or PromptTemplate()).render_answer(labels, reasoning=reasoning)

    # ---------------------------------------------------------------- persistence
    def save(self, path: str | os.PathLike) -> None:
        """Write the fitted model as JSON (atomically)."""
        types = [{"name": self.names[t], "cells": self.cells[t]} for t in self.types]
        genes = sorted(self.vocab, key=self.vocab.get)
        write_json({
            "format": FORMAT, "version": VERSION, "config": self.cfg.model_dump(), "types": types, "genes": genes,
            "weights": np.round(self.weights, 6).tolist(), "bias": np.round(self.bias, 6).tolist(),
        }, path)

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
        if raw.get("version") != VERSION:
            msg = (f"{path}: a marker baseline of version {raw.get('version')}, this Cello reads version {VERSION}; "
                   "fit it again with `cello baseline fit`.")
            raise InputError(msg)
        model = cls(BaselineConfig.model_validate(raw.get("config", {})))
        for t in raw["types"]:
            key = normalize_type(t["name"])
            model.names[key], model.cells[key] = t["name"], int(t["cells"])
        model.types = [normalize_type(t["name"]) for t in raw["types"]]
        model.vocab = {g: i for i, g in enumerate(raw["genes"])}
        model.weights = np.asarray(raw["weights"], dtype=np.float64).reshape(len(model.types), len(model.vocab))
        model.bias = np.asarray(raw["bias"], dtype=np.float64)
        return model

"""Scoring of CellPuzzles completions: the paper's definitions, in one place.

GRPO rewards, `cello eval`, the promotion gate and the server all score through this module,
so a number computed anywhere in Cello means the same thing everywhere.

The paper's definitions (Cell-o1, arXiv 2506.02911), kept exact:
- answer: the text inside <answer>...</answer>, split on '|', each label trimmed; labels are
  compared with the gold types case-insensitively, position by position;
- valid format: exactly one <think>...</think> block followed by exactly one
  <answer>...</answer> block, nothing but whitespace outside them, exactly N labels, no empty
  and no repeated label (case-insensitive). Tags are matched exactly (lower case);
- reward: (cell accuracy + batch exact match) / 2 for a valid completion, -1 otherwise;
- cell-level accuracy of a set: the mean over puzzles of the share of correct cells (an
  invalid completion scores 0 and keeps its cells in the denominator); batch-level accuracy:
  the share of puzzles with every cell correct.
A label that is not among the candidates does not make a completion invalid: it is simply
wrong at its position (the gold type is always a candidate). `score(..., candidates=)`
counts such labels as a diagnostic.

Beyond the paper: `repair` turns any completion into a valid assignment by optimal matching,
and `compute_metrics` reports raw and repaired figures side by side with bootstrap 95%
intervals; `paired_bootstrap_diff` compares two models on the same puzzles (the gate).

    from cello.scoring import score, reward, compute_metrics
    score("<think>..</think><answer>B cell | T cell</answer>", ["B cell", "T cell"]).reward  # 1.0
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "FormatCheck", "Score", "Repair", "ScoredSet", "PairedDiff", "REASONS",
    "parse_answer", "check_format", "score", "reward", "format_reward", "completion_text",
    "repair", "prediction_record", "score_records", "compute_metrics", "bootstrap_ci",
    "paired_bootstrap_diff", "align",
]

# Why a completion is invalid (FormatCheck.reason); "ok" when valid.
OK = "ok"
REASONS = {
    OK: "valid",
    "empty": "the completion is empty",
    "missing_think": "no <think>...</think> block",
    "multiple_think": "more than one <think> or </think> tag",
    "missing_answer": "no <answer>...</answer> block",
    "multiple_answer": "more than one <answer> or </answer> tag",
    "layout": "blocks out of order, or text outside the think and answer blocks",
    "wrong_count": "the number of labels differs from the number of cells",
    "empty_label": "a label is empty",
    "duplicate_label": "a label is repeated (case-insensitive)",
}


def _blank(text: str, start: int, end: int) -> bool:
    """True when text[start:end] is empty or whitespace only."""
    return start >= end or text[start:end].isspace()


def _split(inner: str) -> list[str]:
    """Labels of an answer body: split on '|', trimmed; a blank body has no labels."""
    if not inner.strip():
        return []
    return [part.strip() for part in inner.split("|")]


def parse_answer(text: str) -> list[str] | None:
    """Labels inside the last complete <answer>...</answer> block; None when there is none."""
    end = text.rfind("</answer>")
    if end < 0:
        return None
    start = text.rfind("<answer>", 0, end)
    if start < 0:
        return None
    return _split(text[start + len("<answer>"):end])


@dataclass(frozen=True, slots=True)
class FormatCheck:
    """Result of the format rule: `valid`, a `reason` code (see REASONS) and the parsed labels."""

    valid: bool
    reason: str
    labels: list[str] | None

    @property
    def message(self) -> str:
        return REASONS[self.reason]


def check_format(text: str, n: int) -> FormatCheck:
    """Apply the paper's format rule to a completion for a puzzle of `n` cells."""
    if not text or text.isspace():
        return FormatCheck(False, "empty", None)
    t_open, t_close = text.count("<think>"), text.count("</think>")
    a_open, a_close = text.count("<answer>"), text.count("</answer>")
    problem = None
    if t_open > 1 or t_close > 1:
        problem = "multiple_think"
    elif t_open == 0 or t_close == 0:
        problem = "missing_think"
    elif a_open > 1 or a_close > 1:
        problem = "multiple_answer"
    elif a_open == 0 or a_close == 0:
        problem = "missing_answer"
    if problem is not None:
        return FormatCheck(False, problem, parse_answer(text))
    # Each tag occurs once: check their order and that only whitespace lies outside the blocks.
    ts, te = text.find("<think>"), text.find("</think>")
    as_, ae = text.find("<answer>"), text.find("</answer>")
    if not (ts < te < as_ < ae) or not _blank(text, 0, ts) or not _blank(text, te + 8, as_) \
            or not _blank(text, ae + 9, len(text)):
        return FormatCheck(False, "layout", parse_answer(text))
    labels = _split(text[as_ + 8:ae])
    if len(labels) != n:
        return FormatCheck(False, "wrong_count", labels)
    if "" in labels:
        return FormatCheck(False, "empty_label", labels)
    if len({label.casefold() for label in labels}) != n:
        return FormatCheck(False, "duplicate_label", labels)
    return FormatCheck(True, OK, labels)


@dataclass(frozen=True, slots=True)
class Score:
    """One completion scored against its gold answer.

    `correct` has one entry per cell (all False when invalid); `cell_accuracy` is their mean
    (0 when invalid); `exact` is the batch match; `reward` is the GRPO reward.
    `unknown_labels` counts parsed labels outside the candidates (None: no candidates given).
    """

    valid: bool
    reason: str
    labels: list[str] | None
    correct: list[bool]
    cell_accuracy: float
    exact: bool
    reward: float
    unknown_labels: int | None = None


def score(text: str, answer: Sequence[str], *, candidates: Sequence[str] | None = None) -> Score:
    """Score a completion against the gold types (in cell order)."""
    n = len(answer)
    if n == 0:
        msg = "score(): the gold answer is empty; a puzzle has at least one cell."
        raise ValueError(msg)
    check = check_format(text, n)
    unknown = None
    if candidates is not None and check.labels is not None:
        known = {c.strip().casefold() for c in candidates}
        unknown = sum(label.casefold() not in known for label in check.labels)
    if not check.valid:
        return Score(False, check.reason, check.labels, [False] * n, 0.0, False, -1.0, unknown)
    correct = [p.casefold() == g.strip().casefold() for p, g in zip(check.labels, answer, strict=True)]
    hits = sum(correct)
    acc = hits / n
    exact = hits == n
    return Score(True, OK, check.labels, correct, acc, exact, (acc + exact) / 2, unknown)


def completion_text(completion: Any) -> str:
    """The text of a completion as TRL passes it: a string, or a list of chat messages."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, Mapping):
        return str(completion.get("content") or "")
    if isinstance(completion, Sequence) and completion:
        return completion_text(completion[-1])
    return ""


def reward(completions: Sequence[Any], answer: Sequence[Sequence[str]], **_: Any) -> list[float]:
    """GRPO reward per completion: (cell accuracy + batch match) / 2 if valid, else -1.

    The signature is TRL's reward-function protocol: the gold answers arrive as the dataset
    column `answer`; other columns and trainer arguments are accepted and ignored, so
    `GRPOTrainer(reward_funcs=[cello.scoring.reward])` works as is.
    """
    if len(completions) != len(answer):
        msg = f"reward(): {len(completions)} completions but {len(answer)} answers; pass one answer per completion."
        raise ValueError(msg)
    return [score(completion_text(c), a).reward for c, a in zip(completions, answer, strict=True)]


def format_reward(completions: Sequence[Any], answer: Sequence[Sequence[str]], **_: Any) -> list[float]:
    """1.0 for a completion that passes the format rule (N = len(answer)), else 0.0.

    A diagnostic (or auxiliary reward) only: the paper's reward already gives -1 to an
    invalid format. Same calling protocol as `reward`.
    """
    return [float(check_format(completion_text(c), len(a)).valid) for c, a in zip(completions, answer, strict=True)]


# ---------------------------------------------------------------- repair
@dataclass(frozen=True, slots=True)
class Repair:
    """A valid assignment (one candidate per cell, each used once) and whether it differs
    from what the model wrote (`repaired=False`: already a valid permutation of the candidates)."""

    labels: list[str]
    repaired: bool


def _written(text: str) -> list[str]:
    """What the model wrote per position, read leniently (for repair only)."""
    labels = parse_answer(text)
    if labels is not None:
        return labels
    start = text.rfind("<answer>")
    if start >= 0:  # an answer block cut off by the length limit
        return _split(text[start + len("<answer>"):])
    for line in reversed(text.strip().splitlines()):  # no tags at all: a bare 'A | B' line
        if "|" in line:
            return _split(line)
    return []


def repair(text: str, candidates: Sequence[str]) -> Repair:
    """A valid assignment from any completion by optimal matching against the candidates.

    Position i of the written answer is matched to one candidate; the matching maximises
    first the number of exact (case-insensitive, trimmed) matches, then the total fuzzy
    similarity (difflib ratio) of the others. Positions with nothing written (or beyond the
    written labels) receive the leftover candidates; labels beyond N are ignored.
    """
    from scipy.optimize import linear_sum_assignment

    n = len(candidates)
    check = check_format(text, n)
    written = check.labels if check.valid else _written(text)
    cand_key = [c.strip().casefold() for c in candidates]
    index = {k: j for j, k in enumerate(cand_key)}
    keys = [w.casefold() for w in written[:n]] + [""] * max(0, n - len(written))
    exact = [index.get(k, -1) if k else -1 for k in keys]
    if check.valid and -1 not in exact and len(set(exact)) == n:
        return Repair([candidates[j] for j in exact], False)
    # Rows whose exact candidate no other row claims are in every optimal matching: fix them.
    claims: dict[int, int] = {}
    for j in exact:
        if j >= 0:
            claims[j] = claims.get(j, 0) + 1
    out: list[int] = [-1] * n
    for i, j in enumerate(exact):
        if j >= 0 and claims[j] == 1:
            out[i] = j
    rows = [i for i in range(n) if out[i] < 0]
    if rows:
        taken = set(out)
        cols = [j for j in range(n) if j not in taken]
        big = float(n + 1)  # one exact match outweighs any sum of fuzzy ratios (each < 1)
        weight = np.zeros((len(rows), len(cols)))
        for r, i in enumerate(rows):
            if not keys[i]:
                continue
            sm = difflib.SequenceMatcher(None, autojunk=False)
            sm.set_seq2(keys[i])
            for c, j in enumerate(cols):
                if exact[i] == j:
                    weight[r, c] = big
                else:
                    sm.set_seq1(cand_key[j])
                    weight[r, c] = sm.ratio()
        r_idx, c_idx = linear_sum_assignment(weight, maximize=True)
        for r, c in zip(r_idx, c_idx, strict=True):
            out[rows[r]] = cols[c]
    return Repair([candidates[j] for j in out], True)


# ---------------------------------------------------------------- records and metrics
def prediction_record(
    completion: str, answer: Sequence[str], *, id: str, dataset: str = "", n: int | None = None,
    candidates: Sequence[str] | None = None, **extra: Any,
) -> dict[str, Any]:
    """The JSON record every predictor writes (eval, baseline): id, dataset, n, completion,
    parsed labels, gold answer, candidates, then the scoring fields (valid, reason, reward,
    correct, cell_accuracy, exact). `extra` fields (e.g. completion_tokens) are appended."""
    s = score(completion, answer, candidates=candidates)
    rec = {
        "id": id, "dataset": dataset, "n": len(answer) if n is None else int(n),
        "completion": completion, "labels": s.labels, "answer": list(answer),
        "candidates": sorted(answer) if candidates is None else list(candidates),
        "valid": s.valid, "reason": s.reason, "reward": s.reward, "correct": s.correct,
        "cell_accuracy": s.cell_accuracy, "exact": s.exact,
    }
    rec.update(extra)
    return rec


@dataclass(frozen=True)
class ScoredSet:
    """Per-puzzle arrays over a set of predictions (one entry per record, in input order);
    `correct_cells` counts the correct cells of each puzzle (0 when invalid)."""

    ids: np.ndarray
    dataset: np.ndarray
    n: np.ndarray
    valid: np.ndarray
    unique: np.ndarray
    cell_accuracy: np.ndarray
    exact: np.ndarray
    reward: np.ndarray
    length_chars: np.ndarray
    length_tokens: np.ndarray  # NaN where the record has no completion_tokens
    repaired: np.ndarray
    repaired_cell_accuracy: np.ndarray
    repaired_exact: np.ndarray
    correct_cells: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)


def score_records(records: Iterable[Mapping[str, Any]], *, with_repair: bool = True) -> ScoredSet:
    """Score records that hold `completion` and `answer` (gold types in cell order).

    Optional fields: `id` (default: position), `dataset` (""), `candidates` (default: the
    gold types, which are the candidates of a CellPuzzle), `completion_tokens`. Stored scoring
    fields are ignored: everything is recomputed here, so old files follow the current rules.
    """
    cols: dict[str, list] = {k: [] for k in (
        "ids", "dataset", "n", "valid", "unique", "cell_accuracy", "exact", "reward", "correct_cells",
        "length_chars", "length_tokens", "repaired", "repaired_cell_accuracy", "repaired_exact")}
    for pos, rec in enumerate(records):
        text, answer = rec.get("completion") or "", list(rec["answer"])
        cands = rec.get("candidates")
        cands = sorted(answer) if cands is None or len(cands) == 0 else list(cands)
        s = score(text, answer)
        n = len(answer)
        labels = s.labels or []
        cols["ids"].append(str(rec.get("id", pos)))
        cols["dataset"].append(str(rec.get("dataset") or ""))
        cols["n"].append(n)
        cols["valid"].append(s.valid)
        cols["unique"].append(bool(labels) and len({x.casefold() for x in labels}) == len(labels))
        cols["cell_accuracy"].append(s.cell_accuracy)
        cols["correct_cells"].append(sum(s.correct))
        cols["exact"].append(s.exact)
        cols["reward"].append(s.reward)
        cols["length_chars"].append(len(text))
        tok = rec.get("completion_tokens")
        cols["length_tokens"].append(math.nan if tok is None else float(tok))
        if with_repair:
            r = repair(text, cands)
            hits = sum(p.strip().casefold() == g.strip().casefold() for p, g in zip(r.labels, answer, strict=True))
            cols["repaired"].append(r.repaired)
            cols["repaired_cell_accuracy"].append(hits / n)
            cols["repaired_exact"].append(hits == n)
        else:
            cols["repaired"].append(False)
            cols["repaired_cell_accuracy"].append(math.nan)
            cols["repaired_exact"].append(False)
    types = {"ids": object, "dataset": object, "n": np.int64, "valid": bool, "unique": bool,
             "exact": bool, "repaired": bool, "repaired_exact": bool, "correct_cells": np.int64}
    return ScoredSet(**{k: np.asarray(v, dtype=types.get(k, np.float64)) for k, v in cols.items()})


def _resample_means(arrays: Sequence[np.ndarray], *, n_boot: int, seed: int) -> list[np.ndarray]:
    """Bootstrap means of several aligned arrays, resampled with the same puzzle indices."""
    k = len(arrays[0])
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, k, size=(n_boot, k))
    return [np.asarray(a, dtype=np.float64)[idx].mean(axis=1) for a in arrays]


def _interval(means: np.ndarray, ci: float) -> tuple[float, float]:
    lo, hi = np.percentile(means, [50 * (1 - ci), 50 * (1 + ci)])
    return float(lo), float(hi)


def bootstrap_ci(values: Sequence[float] | np.ndarray, *, n_boot: int = 1000, seed: int = 0,
                 ci: float = 0.95) -> tuple[float, float]:
    """Percentile-bootstrap interval of the mean of per-puzzle `values` (NaN, NaN if empty)."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return (math.nan, math.nan)
    return _interval(_resample_means([values], n_boot=n_boot, seed=seed)[0], ci)


@dataclass(frozen=True, slots=True)
class PairedDiff:
    """Mean of per-puzzle differences a - b, with its percentile-bootstrap interval."""

    mean: float
    lo: float
    hi: float
    n: int

    def to_dict(self) -> dict[str, float | int]:
        return {"mean": self.mean, "lo": self.lo, "hi": self.hi, "n": self.n}


def paired_bootstrap_diff(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray, *,
                          n_boot: int = 1000, seed: int = 0, ci: float = 0.95) -> PairedDiff:
    """Paired bootstrap over puzzles of mean(a - b); `a[i]` and `b[i]` are the same puzzle
    scored for two models (use `align` to pair two ScoredSets by id)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        msg = f"paired_bootstrap_diff(): {a.shape[0]} vs {b.shape[0]} values; pair them by puzzle id first (cello.scoring.align)."
        raise ValueError(msg)
    if a.size == 0:
        return PairedDiff(math.nan, math.nan, math.nan, 0)
    diff = a - b
    lo, hi = _interval(_resample_means([diff], n_boot=n_boot, seed=seed)[0], ci)
    return PairedDiff(float(diff.mean()), lo, hi, int(diff.size))


def align(a: ScoredSet, b: ScoredSet) -> tuple[np.ndarray, np.ndarray]:
    """Index arrays (ia, ib) such that a.ids[ia] == b.ids[ib]: the puzzles both sets scored."""
    pos_b = {pid: j for j, pid in enumerate(b.ids)}
    pairs = [(i, pos_b[pid]) for i, pid in enumerate(a.ids) if pid in pos_b]
    if not pairs:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    ia, ib = zip(*pairs, strict=True)
    return np.asarray(ia, dtype=np.int64), np.asarray(ib, dtype=np.int64)


def _group(s: ScoredSet, mask: np.ndarray, *, n_boot: int, seed: int, ci: float) -> dict[str, Any]:
    k = int(mask.sum())
    if k == 0:
        return {"count": 0}
    cell, exact = s.cell_accuracy[mask], s.exact[mask].astype(np.float64)
    rcell, rexact = s.repaired_cell_accuracy[mask], s.repaired_exact[mask].astype(np.float64)
    boot = _resample_means([cell, exact, rcell, rexact], n_boot=n_boot, seed=seed)
    cis = [_interval(m, ci) for m in boot]
    tokens = s.length_tokens[mask]
    return {
        "count": k,
        "cells": int(s.n[mask].sum()),
        "cell_accuracy": float(cell.mean()),
        "cell_accuracy_ci": list(cis[0]),
        "batch_accuracy": float(exact.mean()),
        "batch_accuracy_ci": list(cis[1]),
        "cell_accuracy_micro": float(s.correct_cells[mask].sum() / s.n[mask].sum()),
        "format_rate": float(s.valid[mask].mean()),
        "label_uniqueness": float(s.unique[mask].mean()),
        "mean_reward": float(s.reward[mask].mean()),
        "mean_length_chars": float(s.length_chars[mask].mean()),
        "mean_length_tokens": None if np.isnan(tokens).all() else float(np.nanmean(tokens)),
        "repaired_cell_accuracy": float(rcell.mean()),
        "repaired_cell_accuracy_ci": list(cis[2]),
        "repaired_batch_accuracy": float(rexact.mean()),
        "repaired_batch_accuracy_ci": list(cis[3]),
        "repair_rate": float(s.repaired[mask].mean()),
    }


def compute_metrics(records: Iterable[Mapping[str, Any]] | ScoredSet, *, n_boot: int = 1000,
                    seed: int = 0, ci: float = 0.95) -> dict[str, Any]:
    """Metrics of a prediction set: {"overall": G, "by_n": {"8": G, ...}, "by_dataset": {...},
    "bootstrap": {...}}, where each G holds count, cells, cell_accuracy (paper: mean over
    puzzles), batch_accuracy (each with a `_ci` percentile-bootstrap interval over puzzles),
    cell_accuracy_micro (correct cells / all cells), format_rate, label_uniqueness (share of
    completions with an answer whose labels do not repeat), mean_reward, mean_length_chars,
    mean_length_tokens (None unless records carry completion_tokens), and the repaired
    figures: repaired_cell_accuracy(_ci), repaired_batch_accuracy(_ci), repair_rate.
    """
    s = records if isinstance(records, ScoredSet) else score_records(records)
    kw = {"n_boot": n_boot, "seed": seed, "ci": ci}
    everything = np.ones(len(s), dtype=bool)
    return {
        "overall": _group(s, everything, **kw),
        "by_n": {str(v): _group(s, s.n == v, **kw) for v in sorted(set(s.n.tolist()))},
        "by_dataset": {d: _group(s, s.dataset == d, **kw) for d in sorted(set(s.dataset.tolist()))},
        "bootstrap": {"method": "percentile", "unit": "puzzle", **kw},
    }

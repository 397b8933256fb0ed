"""Metrics of a prediction set, with percentile-bootstrap intervals over puzzles.

`prediction_record` is the JSON record every predictor writes (eval, baselines); `score_records`
rescores records (stored scoring fields are ignored, so old files follow the current rules) into
per-puzzle arrays (`ScoredSet`); `compute_metrics` turns them into the figures of metrics.json.

Over a set, as the paper's eval script: cell_accuracy = all correct cells / all gold cells
(MICRO: puzzles weighted by N, invalid outputs keep their cells in the denominator);
batch_accuracy = mean exact; format_rate = share legitimate; label_uniqueness = mean uniqueness
over ALL completions; by N = the same within each N. Cello adds: valid_rate (share with reward
!= -1), cell_accuracy_macro (mean per-puzzle cell share), mean_reward, lengths (the paper
reports the mean token length of the completion: mean_length_tokens), and the repaired figures.

Every figure has a percentile bootstrap 95% interval over puzzles (ratio of sums for cell
accuracy); `paired_bootstrap_diff` compares two models on the same puzzles (the gate), after
`align` has paired them by id.

    from cello.scoring import compute_metrics
    compute_metrics([{"id": "p1", "completion": "<think>x</think>\\n<answer>A | B</answer>", "answer": ["A", "B"]}],
                    n_boot=100)["overall"]["cell_accuracy"]  # 1.0
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from cello.scoring._repair import repair
from cello.scoring._reward import gold_labels, score

__all__ = [
    "ScoredSet", "PairedDiff", "prediction_record", "score_records", "compute_metrics", "bootstrap_ci",
    "paired_bootstrap_diff", "align",
]


def prediction_record(
    completion: str, answer: Sequence[str], *, id: str, dataset: str = "", n: int | None = None,
    candidates: Sequence[str] | None = None, **extra: Any,
) -> dict[str, Any]:
    """The JSON record every predictor writes (eval, baseline): id, dataset, n, completion,
    parsed labels, gold answer, candidates, then the scoring fields of `score` (valid =
    reward != -1, legitimate = the eval's format check, reason, reward, correct,
    cell_accuracy, exact). `extra` fields (e.g. completion_tokens) are appended."""
    s = score(completion, answer, candidates=candidates)
    rec = {
        "id": id, "dataset": dataset, "n": len(answer) if n is None else int(n),
        "completion": completion, "labels": s.labels, "answer": list(answer),
        "candidates": sorted(answer) if candidates is None else list(candidates),
        "valid": s.valid, "legitimate": s.legitimate, "reason": s.reason, "reward": s.reward,
        "correct": s.correct, "cell_accuracy": s.cell_accuracy, "exact": s.exact,
    }
    rec.update(extra)
    return rec


@dataclass(frozen=True)
class ScoredSet:
    """Per-puzzle arrays over a set of predictions (one entry per record, in input order).

    `n`: gold labels; `correct_cells`: correct ones as the eval counts (0 unless legitimate);
    `cell_accuracy` = correct_cells / n; `exact`, `uniqueness`: the eval's; `legitimate`: the
    eval's format check; `valid`: reward != -1; `reward`: the GRPO reward. The repaired_*
    arrays score the repaired assignment the same way.
    """

    ids: np.ndarray
    dataset: np.ndarray
    n: np.ndarray
    valid: np.ndarray
    legitimate: np.ndarray
    uniqueness: np.ndarray
    cell_accuracy: np.ndarray
    exact: np.ndarray
    reward: np.ndarray
    length_chars: np.ndarray
    length_tokens: np.ndarray  # NaN where the record has no completion_tokens
    repaired: np.ndarray
    repaired_cell_accuracy: np.ndarray
    repaired_exact: np.ndarray
    correct_cells: np.ndarray
    repaired_correct_cells: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)


_TYPES = {"ids": object, "dataset": object, "n": np.int64, "valid": bool, "legitimate": bool, "exact": bool,
          "repaired": bool, "repaired_exact": bool, "correct_cells": np.int64, "repaired_correct_cells": np.int64}


def score_records(records: Iterable[Mapping[str, Any]], *, with_repair: bool = True) -> ScoredSet:
    """Score records that hold `completion` and `answer` (gold types in cell order).

    Optional fields: `id` (default: position), `dataset` (""), `candidates` (default: the
    gold types, which are the candidates of a CellPuzzle), `completion_tokens`. Stored scoring
    fields are ignored: everything is recomputed here, so old files follow the current rules.
    Without repair, the repaired_* arrays hold NaN / 0 / False.
    """
    cols: dict[str, list] = {k: [] for k in ScoredSet.__dataclass_fields__}
    for pos, rec in enumerate(records):
        text, answer = rec.get("completion") or "", [str(a) for a in rec["answer"]]
        s = score(text, answer)
        n = len(s.correct)
        hits = sum(s.correct)
        cols["ids"].append(str(rec.get("id", pos)))
        cols["dataset"].append(str(rec.get("dataset") or ""))
        for key, value in (("n", n), ("valid", s.valid), ("legitimate", s.legitimate), ("uniqueness", s.uniqueness),
                           ("cell_accuracy", s.cell_accuracy), ("correct_cells", hits), ("exact", s.exact),
                           ("reward", s.reward), ("length_chars", len(text))):
            cols[key].append(value)
        tok = rec.get("completion_tokens")
        cols["length_tokens"].append(math.nan if tok is None else float(tok))
        if with_repair:
            cands = rec.get("candidates")
            cands = sorted(answer) if cands is None or len(cands) == 0 else [str(c) for c in cands]
            r = repair(text, cands)
            gold = gold_labels(answer)
            fixed = sum(p.strip().lower() == g.lower() for p, g in zip(r.labels, gold, strict=False))
            cols["repaired"].append(r.repaired)
            cols["repaired_correct_cells"].append(fixed)
            cols["repaired_cell_accuracy"].append(fixed / n if n else 0.0)
            cols["repaired_exact"].append(n > 0 and fixed == n)
        else:
            cols["repaired"].append(False)
            cols["repaired_correct_cells"].append(0)
            cols["repaired_cell_accuracy"].append(math.nan)
            cols["repaired_exact"].append(False)
    return ScoredSet(**{k: np.asarray(v, dtype=_TYPES.get(k, np.float64)) for k, v in cols.items()})


# ---------------------------------------------------------------- bootstrap
Stat = tuple[np.ndarray, np.ndarray | None]  # (per-puzzle numerators, denominators or None for a mean)


def _point(stat: Stat) -> float:
    num, den = stat
    return float(num.sum() / den.sum()) if den is not None else float(num.mean())


def _boot_indices(k: int, n_boot: int, seed: int, *, budget: int = 2_000_000) -> Iterator[np.ndarray]:
    """Resampled puzzle indices, n_boot rows of k, in chunks of about `budget` entries."""
    rng = np.random.default_rng(seed)
    rows = max(1, budget // max(k, 1))
    for start in range(0, n_boot, rows):
        yield rng.integers(0, k, size=(min(rows, n_boot - start), k))


def _resample(stats: Sequence[Stat], *, n_boot: int, seed: int) -> list[np.ndarray]:
    """Bootstrap replicates of several statistics over the same resampled puzzles. A statistic
    is a mean of per-puzzle values, or a ratio of sums (sum num / sum den) when den is given."""
    k = len(stats[0][0])
    out: list[list[np.ndarray]] = [[] for _ in stats]
    with np.errstate(invalid="ignore", divide="ignore"):
        for idx in _boot_indices(k, n_boot, seed):
            for acc, (num, den) in zip(out, stats, strict=True):
                total = num[idx].sum(axis=1)
                acc.append(total / den[idx].sum(axis=1) if den is not None else total / k)
    return [np.concatenate(a) for a in out]


def _interval(replicates: np.ndarray, ci: float) -> tuple[float, float]:
    lo, hi = np.percentile(replicates, [50 * (1 - ci), 50 * (1 + ci)])
    return float(lo), float(hi)


def _stat(values: Any, totals: Any, what: str) -> Stat:
    num = np.asarray(values, dtype=np.float64)
    den = None if totals is None else np.asarray(totals, dtype=np.float64)
    if den is not None and den.shape != num.shape:
        msg = f"{what}: {num.shape[0]} values but {den.shape[0]} totals; pass one total per puzzle."
        raise ValueError(msg)
    return num, den


def bootstrap_ci(values: Sequence[float] | np.ndarray, *, totals: Sequence[float] | np.ndarray | None = None,
                 n_boot: int = 1000, seed: int = 0, ci: float = 0.95) -> tuple[float, float]:
    """Percentile-bootstrap interval over puzzles of the mean of per-puzzle `values`, or, with
    `totals`, of the ratio of sums sum(values) / sum(totals) (cell accuracy: correct cells and
    cells per puzzle). (NaN, NaN) if empty."""
    stat = _stat(values, totals, "bootstrap_ci()")
    if stat[0].size == 0:
        return (math.nan, math.nan)
    return _interval(_resample([stat], n_boot=n_boot, seed=seed)[0], ci)


@dataclass(frozen=True, slots=True)
class PairedDiff:
    """Point estimate of a - b (`mean`: difference of means, or of ratios of sums) with its
    percentile-bootstrap interval over `n` paired puzzles."""

    mean: float
    lo: float
    hi: float
    n: int

    def to_dict(self) -> dict[str, float | int]:
        return {"mean": self.mean, "lo": self.lo, "hi": self.hi, "n": self.n}


def paired_bootstrap_diff(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray, *,
                          totals: Sequence[float] | np.ndarray | None = None,
                          totals_b: Sequence[float] | np.ndarray | None = None,
                          n_boot: int = 1000, seed: int = 0, ci: float = 0.95) -> PairedDiff:
    """Paired bootstrap over puzzles of mean(a) - mean(b); with `totals`, of
    sum(a)/sum(totals) - sum(b)/sum(totals_b) (totals_b defaults to totals: the same puzzles
    have the same cells). `a[i]` and `b[i]` are the same puzzle scored for two models (use
    `align` to pair two ScoredSets by id); each resample draws puzzles, not cells."""
    sa, sb = _stat(a, totals, "paired_bootstrap_diff()"), _stat(b, totals if totals_b is None else totals_b,
                                                                 "paired_bootstrap_diff()")
    if sa[0].shape != sb[0].shape:
        msg = (f"paired_bootstrap_diff(): {sa[0].shape[0]} vs {sb[0].shape[0]} values; "
               "pair them by puzzle id first (cello.scoring.align).")
        raise ValueError(msg)
    k = int(sa[0].size)
    if k == 0:
        return PairedDiff(math.nan, math.nan, math.nan, 0)
    if sa[1] is None:  # a mean: resample the differences
        diff = sa[0] - sb[0]
        lo, hi = _interval(_resample([(diff, None)], n_boot=n_boot, seed=seed)[0], ci)
        return PairedDiff(float(diff.mean()), lo, hi, k)
    ra, rb = _resample([sa, sb], n_boot=n_boot, seed=seed)
    lo, hi = _interval(ra - rb, ci)
    return PairedDiff(_point(sa) - _point(sb), lo, hi, k)


def align(a: ScoredSet, b: ScoredSet) -> tuple[np.ndarray, np.ndarray]:
    """Index arrays (ia, ib) such that a.ids[ia] == b.ids[ib]: the puzzles both sets scored."""
    pos_b = {pid: j for j, pid in enumerate(b.ids)}
    pairs = [(i, pos_b[pid]) for i, pid in enumerate(a.ids) if pid in pos_b]
    if not pairs:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    ia, ib = zip(*pairs, strict=True)
    return np.asarray(ia, dtype=np.int64), np.asarray(ib, dtype=np.int64)


# ---------------------------------------------------------------- metrics
def _group(s: ScoredSet, mask: np.ndarray, *, n_boot: int, seed: int, ci: float) -> dict[str, Any]:
    k = int(mask.sum())
    if k == 0:
        return {"count": 0}
    cells = s.n[mask].astype(np.float64)
    with_ci: dict[str, Stat] = {
        "cell_accuracy": (s.correct_cells[mask].astype(np.float64), cells),
        "batch_accuracy": (s.exact[mask].astype(np.float64), None),
        "repaired_cell_accuracy": (s.repaired_correct_cells[mask].astype(np.float64), cells),
        "repaired_batch_accuracy": (s.repaired_exact[mask].astype(np.float64), None),
    }
    boot = dict(zip(with_ci, _resample(list(with_ci.values()), n_boot=n_boot, seed=seed), strict=True))
    fig = {name: _point(stat) for name, stat in with_ci.items()}
    tokens = s.length_tokens[mask]
    out: dict[str, Any] = {"count": k, "cells": int(cells.sum())}
    for name in ("cell_accuracy", "batch_accuracy"):
        out[name], out[f"{name}_ci"] = fig[name], list(_interval(boot[name], ci))
    out.update({
        "cell_accuracy_macro": float(s.cell_accuracy[mask].mean()),
        "format_rate": float(s.legitimate[mask].mean()),
        "valid_rate": float(s.valid[mask].mean()),
        "label_uniqueness": float(s.uniqueness[mask].mean()),
        "mean_reward": float(s.reward[mask].mean()),
        "mean_length_chars": float(s.length_chars[mask].mean()),
        "mean_length_tokens": None if np.isnan(tokens).all() else float(np.nanmean(tokens)),
    })
    for name in ("repaired_cell_accuracy", "repaired_batch_accuracy"):
        out[name], out[f"{name}_ci"] = fig[name], list(_interval(boot[name], ci))
    out["repaired_cell_accuracy_macro"] = float(s.repaired_cell_accuracy[mask].mean())
    out["repair_rate"] = float(s.repaired[mask].mean())
    return out


def compute_metrics(records: Iterable[Mapping[str, Any]] | ScoredSet, *, n_boot: int = 1000,
                    seed: int = 0, ci: float = 0.95) -> dict[str, Any]:
    """Metrics of a prediction set: {"overall": G, "by_n": {"8": G, ...}, "by_dataset": {...},
    "bootstrap": {...}}, where each G holds (definitions in the module doc):
    count, cells, cell_accuracy (micro: correct cells / cells) and batch_accuracy, each with a
    `_ci` percentile-bootstrap interval over puzzles (cell accuracy: ratio of sums per
    resample), cell_accuracy_macro (mean per-puzzle share), format_rate (legitimate format),
    valid_rate (reward != -1), label_uniqueness, mean_reward, mean_length_chars,
    mean_length_tokens (None unless records carry completion_tokens), and the repaired
    figures: repaired_cell_accuracy(_ci, _macro), repaired_batch_accuracy(_ci), repair_rate.
    """
    s = records if isinstance(records, ScoredSet) else score_records(records)
    kw = {"n_boot": n_boot, "seed": seed, "ci": ci}
    everything = np.ones(len(s), dtype=bool)
    return {
        "overall": _group(s, everything, **kw),
        "by_n": {str(v): _group(s, s.n == v, **kw) for v in sorted(set(s.n.tolist()))},
        "by_dataset": {d: _group(s, s.dataset == d, **kw) for d in sorted(set(s.dataset.tolist()))},
        "bootstrap": {"method": "percentile", "unit": "puzzle", "cell_accuracy": "ratio of sums", **kw},
    }

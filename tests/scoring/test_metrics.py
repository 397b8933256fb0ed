"""cello.scoring's metrics and bootstrap intervals: hand-computed figures on a fixed set.

    .venv/bin/pytest tests/scoring/test_metrics.py -q
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from cello.scoring import (
    ScoredSet,
    align,
    bootstrap_ci,
    compute_metrics,
    paired_bootstrap_diff,
    prediction_record,
    score_records,
)
from tests.scoring.cases import completion

# A small fixed set with hand-computed metrics (N = 2, 2, 3, 3, 4, 4: micro and macro differ).
RECORDS = [
    # valid, all right
    {"id": "p1", "dataset": "d1", "completion": completion(["A", "B"]), "answer": ["A", "B"], "completion_tokens": 10},
    # valid, swapped: 0/2; a valid permutation, so not repaired
    {"id": "p2", "dataset": "d1", "completion": completion(["B", "A"]), "answer": ["A", "B"], "completion_tokens": 20},
    # repeat: reward -1, legitimate, eval 2/3 (A, C), uniqueness 2/3; repair -> A, B (leftover), C: 3/3
    {"id": "p3", "dataset": "d2", "completion": completion(["A", "A", "C"]), "answer": ["A", "B", "C"]},
    # valid, 1/3 right, a label outside the candidates; repair -> A, C, B: 1/3
    {"id": "p4", "dataset": "d2", "completion": completion(["A", "C", "X"]), "answer": ["A", "B", "C"],
     "candidates": ["A", "B", "C"]},
    # no newline between the blocks: not legitimate, 0/4, uniqueness 0; repair -> 4/4
    {"id": "p5", "dataset": "d3", "completion": "<think>x</think><answer>A | B | C | D</answer>",
     "answer": ["A", "B", "C", "D"]},
    # one label missing: reward -1, legitimate, eval 3/4; repair -> A, B, C, D (leftover): 4/4
    {"id": "p6", "dataset": "d3", "completion": completion(["A", "B", "C"]), "answer": ["A", "B", "C", "D"]},
]


def test_metrics_hand_computed():
    m = compute_metrics(RECORDS, n_boot=200)
    o = m["overall"]
    assert o["count"] == 6 and o["cells"] == 18
    assert o["cell_accuracy"] == pytest.approx((2 + 0 + 2 + 1 + 0 + 3) / 18)  # micro: correct cells / cells
    assert o["cell_accuracy_macro"] == pytest.approx((1 + 0 + 2 / 3 + 1 / 3 + 0 + 3 / 4) / 6)
    assert o["batch_accuracy"] == pytest.approx(1 / 6)
    assert o["format_rate"] == pytest.approx(5 / 6)  # all but p5
    assert o["valid_rate"] == pytest.approx(3 / 6)  # p1, p2, p4
    assert o["label_uniqueness"] == pytest.approx((1 + 1 + 2 / 3 + 1 + 0 + 1) / 6)
    assert o["mean_reward"] == pytest.approx((1.0 + 0.0 - 1.0 + 1 / 6 - 1.0 - 1.0) / 6)
    assert o["mean_length_chars"] == pytest.approx(np.mean([len(r["completion"]) for r in RECORDS]))
    assert o["mean_length_tokens"] == pytest.approx(15.0)
    assert o["repaired_cell_accuracy"] == pytest.approx((2 + 0 + 3 + 1 + 4 + 4) / 18)
    assert o["repaired_cell_accuracy_macro"] == pytest.approx((1 + 0 + 1 + 1 / 3 + 1 + 1) / 6)
    assert o["repaired_batch_accuracy"] == pytest.approx(4 / 6)
    assert o["repair_rate"] == pytest.approx(4 / 6)
    by_n = m["by_n"]
    assert set(by_n) == {"2", "3", "4"}
    assert by_n["2"]["cell_accuracy"] == pytest.approx(2 / 4) and by_n["2"]["batch_accuracy"] == pytest.approx(1 / 2)
    assert by_n["3"]["cell_accuracy"] == pytest.approx(3 / 6) and by_n["3"]["valid_rate"] == pytest.approx(1 / 2)
    assert by_n["4"]["cell_accuracy"] == pytest.approx(3 / 8) and by_n["4"]["format_rate"] == pytest.approx(1 / 2)
    assert by_n["4"]["batch_accuracy"] == 0.0 and by_n["4"]["cells"] == 8
    assert m["by_dataset"]["d2"]["repaired_batch_accuracy"] == pytest.approx(0.5)
    assert m["by_dataset"]["d2"]["mean_length_tokens"] is None
    for group in [o, *by_n.values(), *m["by_dataset"].values()]:
        for key in ("cell_accuracy", "batch_accuracy", "repaired_cell_accuracy", "repaired_batch_accuracy"):
            lo, hi = group[f"{key}_ci"]
            assert lo <= group[key] <= hi


def test_scored_set_fields():
    s = score_records(RECORDS)
    assert list(s.n) == [2, 2, 3, 3, 4, 4]
    assert list(s.correct_cells) == [2, 0, 2, 1, 0, 3]
    assert list(s.repaired_correct_cells) == [2, 0, 3, 1, 4, 4]
    assert list(s.valid) == [True, True, False, True, False, False]
    assert list(s.legitimate) == [True, True, True, True, False, True]
    assert s.uniqueness == pytest.approx([1, 1, 2 / 3, 1, 0, 1])
    assert list(s.exact) == [True, False, False, False, False, False]
    bare = score_records(RECORDS, with_repair=False)
    assert np.isnan(bare.repaired_cell_accuracy).all() and not bare.repaired_correct_cells.any()


def test_metrics_are_deterministic_and_accept_scored_sets():
    scored = score_records(RECORDS)
    assert isinstance(scored, ScoredSet) and len(scored) == 6
    assert compute_metrics(scored, n_boot=100) == compute_metrics(RECORDS, n_boot=100)


def test_prediction_record_roundtrip():
    rec = prediction_record(completion(["B", "A"]), ["A", "B"], id="p", dataset="d", candidates=["A", "B"])
    assert rec["labels"] == ["B", "A"] and rec["valid"] and rec["legitimate"] and rec["correct"] == [False, False]
    assert rec["reward"] == 0.0 and rec["n"] == 2
    assert compute_metrics([rec], n_boot=10)["overall"]["cell_accuracy"] == 0.0


def test_bootstrap_contains_estimate_and_shrinks():
    rng = np.random.default_rng(1)
    widths = []
    for k in (20, 200, 2000):
        values = (rng.random(k) < 0.4).astype(float)
        lo, hi = bootstrap_ci(values, n_boot=500, seed=0)
        assert lo <= values.mean() <= hi
        widths.append(hi - lo)
    assert widths[0] > widths[1] > widths[2]
    assert bootstrap_ci([0.5, 0.5]) == (0.5, 0.5)
    assert all(math.isnan(v) for v in bootstrap_ci([]))


def test_bootstrap_of_a_ratio_of_sums():
    # 50 small puzzles all right (2/2) and 50 large ones all wrong (0/14): micro 100/800, macro 0.5
    correct = np.array([2.0] * 50 + [0.0] * 50)
    cells = np.array([2.0] * 50 + [14.0] * 50)
    lo, hi = bootstrap_ci(correct, totals=cells, n_boot=500)
    assert lo <= correct.sum() / cells.sum() <= hi < 0.3  # around 0.125, nowhere near the macro 0.5
    lo_m, hi_m = bootstrap_ci(correct / cells, n_boot=500)
    assert lo_m <= 0.5 <= hi_m and lo_m > hi
    assert bootstrap_ci([1.0, 2.0], totals=[2.0, 4.0]) == (0.5, 0.5)  # every resample: same ratio
    with pytest.raises(ValueError, match="one total per puzzle"):
        bootstrap_ci([1.0], totals=[2.0, 3.0])
    # metrics use the same ratio: hand-checked interval on a fixed set contains the micro figure
    o = compute_metrics(RECORDS, n_boot=300)["overall"]
    s = score_records(RECORDS)
    assert tuple(o["cell_accuracy_ci"]) == bootstrap_ci(s.correct_cells, totals=s.n, n_boot=300)


def test_paired_bootstrap_diff():
    rng = np.random.default_rng(2)
    base = (rng.random(400) < 0.5).astype(float)
    better = np.where(rng.random(400) < 0.3, 1.0, base)  # improves some puzzles, never worse
    d = paired_bootstrap_diff(better, base, n_boot=500)
    assert d.n == 400 and d.mean == pytest.approx((better - base).mean())
    assert 0 < d.lo <= d.mean <= d.hi
    same = paired_bootstrap_diff(base, base)
    assert same.mean == same.lo == same.hi == 0.0
    with pytest.raises(ValueError, match="align"):
        paired_bootstrap_diff([1.0], [1.0, 0.0])
    assert paired_bootstrap_diff([], []).n == 0


def test_paired_bootstrap_diff_of_ratios():
    rng = np.random.default_rng(3)
    cells = rng.integers(3, 16, size=300).astype(float)
    b = rng.binomial(cells.astype(int), 0.5).astype(float)
    a = np.minimum(cells, b + rng.integers(0, 3, size=300))  # a few more right cells, never fewer
    d = paired_bootstrap_diff(a, b, totals=cells, n_boot=500)
    assert d.mean == pytest.approx(a.sum() / cells.sum() - b.sum() / cells.sum())
    assert 0 < d.lo <= d.mean <= d.hi
    assert d.mean != pytest.approx(np.mean(a / cells - b / cells))  # not the mean of per-puzzle shares
    same = paired_bootstrap_diff(b, b, totals=cells)
    assert same.mean == same.lo == same.hi == 0.0
    other = paired_bootstrap_diff(a, b, totals=cells, totals_b=cells * 2)
    assert other.mean == pytest.approx(a.sum() / cells.sum() - b.sum() / (2 * cells.sum()))


def test_align_by_id():
    a = score_records(RECORDS)
    b = score_records(list(reversed(RECORDS[1:])))
    ia, ib = align(a, b)
    assert list(a.ids[ia]) == list(b.ids[ib]) == ["p2", "p3", "p4", "p5", "p6"]

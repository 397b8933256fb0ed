"""cello.scoring: the paper's format rule, reward and metrics, pinned on edge cases.

    .venv/bin/pytest tests/test_scoring.py -q
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cello.scoring import (
    REASONS,
    ScoredSet,
    align,
    bootstrap_ci,
    check_format,
    completion_text,
    compute_metrics,
    format_reward,
    paired_bootstrap_diff,
    parse_answer,
    prediction_record,
    repair,
    reward,
    score,
    score_records,
)

GOLD = ["B cell", "CD4+ T cell", "NK cell"]
GOOD = "<think>CD79A marks B cells.</think>\n<answer>B cell | CD4+ T cell | NK cell</answer>"

# (completion, expected reason, expected reward); gold is GOLD (3 cells).
FORMAT_CASES = [
    # exact answer in the right format
    (GOOD, "ok", 1.0),
    # whitespace around blocks and labels is fine
    ("  \n<think>x</think>\n\n<answer>  B cell|CD4+ T cell |   NK cell \n</answer>\n ", "ok", 1.0),
    # labels compare case-insensitively
    ("<think>x</think><answer>b CELL | cd4+ t cell | nk cell</answer>", "ok", 1.0),
    # an empty think block is still one think block
    ("<think></think><answer>B cell | CD4+ T cell | NK cell</answer>", "ok", 1.0),
    # valid, two cells swapped: 1/3 cells right, no batch match -> (1/3 + 0) / 2
    ("<think>x</think><answer>B cell | NK cell | CD4+ T cell</answer>", "ok", 1 / 6),
    # valid, every cell wrong -> 0, not -1
    ("<think>x</think><answer>NK cell | B cell | CD4+ T cell</answer>", "ok", 0.0),
    # a label outside the candidates is wrong at its position, not invalid
    ("<think>x</think><answer>B cell | CD4+ T cell | Platelet</answer>", "ok", 1 / 3),
    # an internal space difference is a different label (trimmed, not normalised)
    ("<think>x</think><answer>B  cell | CD4+ T cell | NK cell</answer>", "ok", 1 / 3),
    # empty output
    ("", "empty", -1.0),
    ("  \n ", "empty", -1.0),
    # no think block
    ("<answer>B cell | CD4+ T cell | NK cell</answer>", "missing_think", -1.0),
    # think opened but never closed
    ("<think>x <answer>B cell | CD4+ T cell | NK cell</answer>", "missing_think", -1.0),
    # two think blocks
    ("<think>a</think><think>b</think><answer>B cell | CD4+ T cell | NK cell</answer>", "multiple_think", -1.0),
    # no answer block
    ("<think>x</think>B cell | CD4+ T cell | NK cell", "missing_answer", -1.0),
    # answer cut off by the length limit
    ("<think>x</think><answer>B cell | CD4+ T cell", "missing_answer", -1.0),
    # two answer blocks
    ("<think>x</think><answer>B cell</answer><answer>B cell | CD4+ T cell | NK cell</answer>", "multiple_answer", -1.0),
    # answer before think
    ("<answer>B cell | CD4+ T cell | NK cell</answer><think>x</think>", "layout", -1.0),
    # text before, between or after the blocks
    ("Sure! <think>x</think><answer>B cell | CD4+ T cell | NK cell</answer>", "layout", -1.0),
    ("<think>x</think> so: <answer>B cell | CD4+ T cell | NK cell</answer>", "layout", -1.0),
    ("<think>x</think><answer>B cell | CD4+ T cell | NK cell</answer> Done.", "layout", -1.0),
    # upper-case tags are not the paper's tags
    ("<THINK>x</THINK><ANSWER>B cell | CD4+ T cell | NK cell</ANSWER>", "missing_think", -1.0),
    # too few / too many labels
    ("<think>x</think><answer>B cell | CD4+ T cell</answer>", "wrong_count", -1.0),
    ("<think>x</think><answer>B cell | CD4+ T cell | NK cell | Platelet</answer>", "wrong_count", -1.0),
    # a trailing separator makes an extra (empty) label
    ("<think>x</think><answer>B cell | CD4+ T cell | NK cell |</answer>", "wrong_count", -1.0),
    # an empty answer block
    ("<think>x</think><answer> </answer>", "wrong_count", -1.0),
    # an empty label in the middle
    ("<think>x</think><answer>B cell | | NK cell</answer>", "empty_label", -1.0),
    # a repeated label, also when only the case differs
    ("<think>x</think><answer>B cell | B cell | NK cell</answer>", "duplicate_label", -1.0),
    ("<think>x</think><answer>B cell | b Cell | NK cell</answer>", "duplicate_label", -1.0),
]


@pytest.mark.parametrize(("text", "reason", "expected"), FORMAT_CASES)
def test_format_and_reward_cases(text, reason, expected):
    s = score(text, GOLD)
    assert s.reason == reason
    assert s.valid == (reason == "ok")
    assert s.reward == pytest.approx(expected)
    assert check_format(text, len(GOLD)).reason == reason
    assert reason in REASONS
    if not s.valid:  # an invalid completion scores 0 for every cell
        assert s.correct == [False] * 3 and s.cell_accuracy == 0.0 and not s.exact


def test_unicode_labels():
    gold = ["Zelle β", "T-Zelle (CD4⁺)", "細胞"]
    text = "<think>ü</think><answer>ZELLE Β | t-zelle (cd4⁺) | 細胞</answer>"
    s = score(text, gold)
    assert s.valid and s.exact and s.reward == 1.0
    # casefold: German sharp s equals 'ss'
    assert score("<think>x</think><answer>STRASSE</answer>", ["straße"]).exact


def test_score_fields_and_candidates():
    s = score("<think>x</think><answer>B cell | NK cell | Platelet</answer>", GOLD, candidates=GOLD)
    assert s.correct == [True, False, False]
    assert s.cell_accuracy == pytest.approx(1 / 3)
    assert s.unknown_labels == 1  # Platelet is not a candidate: diagnostic only
    assert s.valid
    assert score(GOOD, GOLD).unknown_labels is None
    with pytest.raises(ValueError, match="empty"):
        score(GOOD, [])


# (completion, labels) for the lenient answer parser.
PARSE_CASES = [
    (GOOD, GOLD),
    ("no tags at all", None),
    ("<answer>A</answer> then <answer> B | C </answer>", ["B", "C"]),  # the last block
    ("<answer></answer>", []),
    ("<answer>A | | B</answer>", ["A", "", "B"]),
    ("<answer>A | B", None),  # unclosed
]


@pytest.mark.parametrize(("text", "labels"), PARSE_CASES)
def test_parse_answer(text, labels):
    assert parse_answer(text) == labels


def test_reward_batch_and_trl_protocol():
    completions = [GOOD, "", [{"role": "assistant", "content": GOOD}]]
    answers = [GOLD, GOLD, GOLD]
    # TRL passes prompts, completion_ids, trainer_state and dataset columns by keyword
    out = reward(prompts=["p"] * 3, completions=completions, answer=answers, completion_ids=None, trainer_state=None)
    assert out == [1.0, -1.0, 1.0]
    assert format_reward(completions=completions, answer=answers) == [1.0, 0.0, 1.0]
    assert completion_text([]) == ""
    with pytest.raises(ValueError, match="one answer per completion"):
        reward([GOOD], [GOLD, GOLD])


def _completion(labels, think="reasoning"):
    return f"<think>{think}</think>\n<answer>{' | '.join(labels)}</answer>"


# Labels: printable, no separator or tag characters, no surrounding whitespace, unique when casefolded.
_label = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp"), blacklist_characters="|<>"),
    min_size=1, max_size=12,
).filter(lambda s: s.strip() == s and s)
_labels = st.lists(_label, min_size=1, max_size=15, unique_by=lambda s: s.casefold())


@settings(max_examples=150, deadline=None)
@given(_labels, st.text(alphabet="abc xyz.\n", max_size=40))
def test_gold_in_right_format_scores_one(gold, think):
    s = score(_completion(gold, think), gold)
    assert s.valid and s.exact and s.reward == 1.0


@settings(max_examples=150, deadline=None)
@given(_labels.flatmap(lambda g: st.tuples(st.just(g), st.permutations(g))))
def test_permutation_scores_fixed_points(case):
    gold, perm = case
    s = score(_completion(perm), gold)
    fixed = sum(p == g for p, g in zip(perm, gold, strict=True))
    assert s.valid
    assert s.cell_accuracy == pytest.approx(fixed / len(gold))
    assert s.exact == (fixed == len(gold))
    assert s.reward == pytest.approx((fixed / len(gold) + (fixed == len(gold))) / 2)


@settings(max_examples=150, deadline=None)
@given(_labels, st.lists(st.one_of(_label, st.just("")), max_size=20), st.sampled_from(["full", "cut", "bare", "none"]))
def test_repair_always_returns_a_permutation(cands, written, shape):
    body = " | ".join(written)
    text = {"full": _completion(written), "cut": f"<answer>{body}", "bare": body, "none": "garbage"}[shape]
    r = repair(text, cands)
    assert sorted(r.labels) == sorted(cands)


# (completion, candidates, expected labels, expected repaired)
REPAIR_CASES = [
    # already a valid permutation (case differs): canonical spelling, not repaired
    (_completion(["nk cell", "B CELL"]), ["B cell", "NK cell"], ["NK cell", "B cell"], False),
    # duplicate: the second B cell takes the leftover candidate
    (_completion(["B cell", "B cell", "T cell"]), ["B cell", "NK cell", "T cell"], ["B cell", "NK cell", "T cell"], True),
    # fuzzy: typos go to the closest candidates
    (_completion(["T cel", "Monocytes", "B cell"]), ["B cell", "Monocyte", "T cell"], ["T cell", "Monocyte", "B cell"], True),
    # partial answer (cut off): missing positions get the leftover candidate
    ("<think>x</think><answer>Monocyte | B cell", ["B cell", "Monocyte", "T cell"], ["Monocyte", "B cell", "T cell"], True),
    # labels beyond N are ignored
    (_completion(["B cell", "T cell", "T cell"]), ["B cell", "T cell"], ["B cell", "T cell"], True),
    # an exact match wins over fuzzy matches elsewhere: 'T cell' keeps T cell, 'T cells' takes the rest
    (_completion(["T cells", "T cell"]), ["NK cell", "T cell"], ["NK cell", "T cell"], True),
    # valid format with a label outside the candidates is repaired
    (_completion(["B cell", "Platelet"]), ["B cell", "T cell"], ["B cell", "T cell"], True),
]


@pytest.mark.parametrize(("text", "cands", "labels", "repaired"), REPAIR_CASES)
def test_repair_cases(text, cands, labels, repaired):
    r = repair(text, cands)
    assert r.labels == labels
    assert r.repaired == repaired


# A small fixed set with hand-computed metrics.
RECORDS = [
    # valid, all right (n=2)
    {"id": "p1", "dataset": "d1", "completion": _completion(["A", "B"]), "answer": ["A", "B"], "completion_tokens": 10},
    # valid, swapped: 0/2 (n=2)
    {"id": "p2", "dataset": "d1", "completion": _completion(["B", "A"]), "answer": ["A", "B"], "completion_tokens": 20},
    # invalid (duplicate), n=3; repair -> A, B(leftover), C: all right
    {"id": "p3", "dataset": "d2", "completion": _completion(["A", "A", "C"]), "answer": ["A", "B", "C"]},
    # valid, 1/3 right (n=3); a label outside the candidates; repair -> A, C, B: 1/3
    {"id": "p4", "dataset": "d2", "completion": _completion(["A", "C", "X"]), "answer": ["A", "B", "C"],
     "candidates": ["A", "B", "C"]},
]


def test_metrics_hand_computed():
    m = compute_metrics(RECORDS, n_boot=200)
    o = m["overall"]
    assert o["count"] == 4 and o["cells"] == 10
    assert o["cell_accuracy"] == pytest.approx((1 + 0 + 0 + 1 / 3) / 4)  # paper: mean over puzzles
    assert o["cell_accuracy_micro"] == pytest.approx(3 / 10)  # 2 + 0 + 0 + 1 correct cells
    assert o["batch_accuracy"] == pytest.approx(1 / 4)
    assert o["format_rate"] == pytest.approx(3 / 4)
    assert o["label_uniqueness"] == pytest.approx(3 / 4)
    assert o["mean_reward"] == pytest.approx((1.0 + 0.0 - 1.0 + 1 / 6) / 4)
    assert o["mean_length_chars"] == pytest.approx(np.mean([len(r["completion"]) for r in RECORDS]))
    assert o["mean_length_tokens"] == pytest.approx(15.0)
    assert o["repaired_cell_accuracy"] == pytest.approx((1 + 0 + 1 + 1 / 3) / 4)
    assert o["repaired_batch_accuracy"] == pytest.approx(2 / 4)
    assert o["repair_rate"] == pytest.approx(2 / 4)
    assert set(m["by_n"]) == {"2", "3"}
    assert m["by_n"]["2"]["cell_accuracy"] == pytest.approx(0.5)
    assert m["by_n"]["3"]["format_rate"] == pytest.approx(0.5)
    assert m["by_dataset"]["d2"]["repaired_batch_accuracy"] == pytest.approx(0.5)
    assert m["by_dataset"]["d2"]["mean_length_tokens"] is None
    for group in [o, *m["by_n"].values(), *m["by_dataset"].values()]:
        for key in ("cell_accuracy", "batch_accuracy", "repaired_cell_accuracy", "repaired_batch_accuracy"):
            lo, hi = group[f"{key}_ci"]
            assert lo <= group[key] <= hi


def test_metrics_are_deterministic_and_accept_scored_sets():
    scored = score_records(RECORDS)
    assert isinstance(scored, ScoredSet) and len(scored) == 4
    assert compute_metrics(scored, n_boot=100) == compute_metrics(RECORDS, n_boot=100)


def test_prediction_record_roundtrip():
    rec = prediction_record(_completion(["B", "A"]), ["A", "B"], id="p", dataset="d", candidates=["A", "B"])
    assert rec["labels"] == ["B", "A"] and rec["valid"] and rec["correct"] == [False, False]
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


def test_align_by_id():
    a = score_records(RECORDS)
    b = score_records(list(reversed(RECORDS[1:])))
    ia, ib = align(a, b)
    assert list(a.ids[ia]) == list(b.ids[ib]) == ["p2", "p3", "p4"]

"""cello.scoring: the paper's reward and eval definitions (its released code), pinned on edge cases.

    .venv/bin/pytest tests/test_scoring.py -q
"""

from __future__ import annotations

import math
import re

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
    gold_labels,
    paired_bootstrap_diff,
    parse_answer,
    prediction_record,
    repair,
    reward,
    score,
    score_records,
)

GOLD = ["B cell", "CD4+ T cell", "NK cell"]
AB = ["A", "B"]
GOOD = "<think>CD79A marks B cells.</think>\n<answer>B cell | CD4+ T cell | NK cell</answer>"
# The paper's layout pattern, as its released eval and reward code apply it (with re.match).
PAPER_LAYOUT = re.compile(r"^<think>.*?</think>\n<answer>.*?</answer>$", re.DOTALL)

# (completion, gold, reason, reward, legitimate, correct cells as the eval counts them)
CASES = [
    # the paper's format, exactly: think block, ONE newline, answer block
    (GOOD, GOLD, "ok", 1.0, True, 3),
    ("<think>x</think>\n<answer>A | B</answer>", AB, "ok", 1.0, True, 2),
    # an empty think block is still one think block
    ("<think></think>\n<answer>A | B</answer>", AB, "ok", 1.0, True, 2),
    # no newline between the blocks: not the paper's layout
    ("<think>x</think><answer>A | B</answer>", AB, "layout_between", -1.0, False, 0),
    # a blank line, a space or '\r\n' between the blocks: the same
    ("<think>x</think>\n\n<answer>A | B</answer>", AB, "layout_between", -1.0, False, 0),
    ("<think>x</think> \n<answer>A | B</answer>", AB, "layout_between", -1.0, False, 0),
    ("<think>x</think>\r\n<answer>A | B</answer>", AB, "layout_between", -1.0, False, 0),
    # anything before <think>, even one space or newline
    (" <think>x</think>\n<answer>A | B</answer>", AB, "layout_start", -1.0, False, 0),
    ("\n<think>x</think>\n<answer>A | B</answer>", AB, "layout_start", -1.0, False, 0),
    ("Sure! <think>x</think>\n<answer>A | B</answer>", AB, "layout_start", -1.0, False, 0),
    # after </answer>: one trailing newline is allowed (Python's `$`), nothing else
    ("<think>x</think>\n<answer>A | B</answer>\n", AB, "ok", 1.0, True, 2),
    ("<think>x</think>\n<answer>A | B</answer>\n\n", AB, "layout_end", -1.0, False, 0),
    ("<think>x</think>\n<answer>A | B</answer> ", AB, "layout_end", -1.0, False, 0),
    ("<think>x</think>\n<answer>A | B</answer> Done.", AB, "layout_end", -1.0, False, 0),
    # </answer> before <answer> (inside the think block)
    ("<think>x</answer></think>\n<answer>A | B", AB, "layout_end", -1.0, False, 0),
    # whitespace inside the answer and around labels is fine
    ("<think>x</think>\n<answer>  A|B \t</answer>", AB, "ok", 1.0, True, 2),
    # a trailing separator: the empty label is dropped, so still N labels
    ("<think>x</think>\n<answer>A | B |</answer>", AB, "ok", 1.0, True, 2),
    ("<think>x</think>\n<answer>B cell | | CD4+ T cell | NK cell</answer>", GOLD, "ok", 1.0, True, 3),
    # labels compare with str.lower(), position by position
    ("<think>x</think>\n<answer>b CELL | cd4+ t cell | nk cell</answer>", GOLD, "ok", 1.0, True, 3),
    # repeats differing only by case are not repeats (case-sensitive set): valid, scored by lower()
    ("<think>x</think>\n<answer>B cell | b Cell | NK cell</answer>", GOLD, "ok", (2 / 3 + 0) / 2, True, 2),
    # valid, two cells swapped: 1/3 right, no batch match -> (1/3 + 0) / 2
    ("<think>x</think>\n<answer>B cell | NK cell | CD4+ T cell</answer>", GOLD, "ok", 1 / 6, True, 1),
    # valid, every cell wrong -> 0, not -1
    ("<think>x</think>\n<answer>NK cell | B cell | CD4+ T cell</answer>", GOLD, "ok", 0.0, True, 0),
    # a label outside the candidates is wrong at its position, not invalid
    ("<think>x</think>\n<answer>B cell | CD4+ T cell | Platelet</answer>", GOLD, "ok", 1 / 3, True, 2),
    # an internal space difference is a different label (stripped, not normalised)
    ("<think>x</think>\n<answer>B  cell | CD4+ T cell | NK cell</answer>", GOLD, "ok", 1 / 3, True, 2),
    # a multi-line answer: only its first line is read -> one label short: reward -1, eval 1/2
    ("<think>x</think>\n<answer>A |\nB</answer>", AB, "wrong_count", -1.0, True, 1),
    # nothing after <answer> on its line: the first line with '|' is read instead
    ("<think>x</think>\n<answer>\nA | B\n</answer>", AB, "ok", 1.0, True, 2),
    # ... which may be a line of the think block: labels '<think>a', 'b' (1/2 right by lower())
    ("<think>a | b\n</think>\n<answer>\nA | B\n</answer>", AB, "ok", 0.25, True, 1),
    # N labels with one missing: reward -1, but the eval zips positions: partial credit
    ("<think>x</think>\n<answer>B cell | CD4+ T cell</answer>", GOLD, "wrong_count", -1.0, True, 2),
    # one label too many: reward -1, the eval ignores the extra one (exact match!)
    ("<think>x</think>\n<answer>A | B | C</answer>", AB, "wrong_count", -1.0, True, 2),
    # an exact repeat: reward -1, the eval still scores positions
    ("<think>x</think>\n<answer>A | A</answer>", AB, "duplicate_label", -1.0, True, 1),
    # no '|' in the answer line: not legitimate (so a one-cell answer never is)
    ("<think>x</think>\n<answer>A B</answer>", AB, "no_separator", -1.0, False, 0),
    ("<think>x</think>\n<answer>A</answer>", ["A"], "no_separator", -1.0, False, 0),
    ("<think>x</think>\n<answer> </answer>", AB, "no_separator", -1.0, False, 0),
    # empty output
    ("", AB, "empty", -1.0, False, 0),
    ("  \n ", AB, "empty", -1.0, False, 0),
    # tag counts
    ("<answer>A | B</answer>", AB, "missing_think", -1.0, False, 0),
    ("<think>x\n<answer>A | B</answer>", AB, "missing_think", -1.0, False, 0),
    ("<think>a</think><think>b</think>\n<answer>A | B</answer>", AB, "multiple_think", -1.0, False, 0),
    ("<think>x</think>\nA | B", AB, "missing_answer", -1.0, False, 0),
    ("<think>x</think>\n<answer>A | B", AB, "missing_answer", -1.0, False, 0),  # cut off by the length limit
    ("<think>x</think>\n<answer>A</answer>\n<answer>A | B</answer>", AB, "multiple_answer", -1.0, False, 0),
    ("<answer>A | B</answer>\n<think>x</think>", AB, "layout_start", -1.0, False, 0),
    # upper-case tags are not the paper's tags
    ("<THINK>x</THINK>\n<ANSWER>A | B</ANSWER>", AB, "missing_think", -1.0, False, 0),
]


@pytest.mark.parametrize(("text", "gold", "reason", "expected", "legitimate", "hits"), CASES)
def test_reward_and_eval_cases(text, gold, reason, expected, legitimate, hits):
    s = score(text, gold)
    assert s.reason == reason and reason in REASONS
    assert s.valid == (reason == "ok") == (s.reward != -1)
    assert s.reward == pytest.approx(expected)
    assert s.legitimate == legitimate
    assert sum(s.correct) == hits and len(s.correct) == len(gold)
    assert s.cell_accuracy == pytest.approx(hits / len(gold))
    assert s.exact == (hits == len(gold))
    check = check_format(text, len(gold))
    assert (check.valid, check.reason, check.legitimate) == (s.valid, reason, legitimate)
    assert check.message == REASONS[reason]
    if legitimate:  # the paper's layout regex agrees with the fast check
        assert PAPER_LAYOUT.match(text)


def test_eval_fields_of_a_legitimate_but_invalid_answer():
    s = score("<think>x</think>\n<answer>A | A | C</answer>", ["A", "B", "C"])
    assert (s.valid, s.legitimate, s.reward) == (False, True, -1.0)
    assert s.correct == [True, False, True] and s.uniqueness == pytest.approx(2 / 3)
    short = score("<think>x</think>\n<answer>A | B</answer>", ["A", "B", "C"])
    assert short.correct == [True, True, False] and short.cell_accuracy == pytest.approx(2 / 3) and not short.exact
    assert score("<think>x</think><answer>A | B</answer>", AB).uniqueness == 0.0  # not legitimate


def test_lower_not_casefold():
    # str.lower: 'STRASSE' != 'straße' (casefold would equate them); 'ΟΔΟΣ' lowers to 'οδος'
    s = score("<think>x</think>\n<answer>STRASSE | ΟΔΟΣ</answer>", ["straße", "οδος"])
    assert s.correct == [False, True] and s.valid
    assert score("<think>ü</think>\n<answer>ZELLE Β | 細胞</answer>", ["Zelle β", "細胞"]).reward == 1.0


def test_gold_labels_and_no_gold():
    assert gold_labels(["A ", " B", ""]) == ["A", "B"]
    s = score(GOOD, [])
    assert (s.valid, s.reason, s.reward, s.correct, s.exact) == (False, "no_gold", -1.0, [], False)


def test_score_fields_and_candidates():
    s = score("<think>x</think>\n<answer>B cell | NK cell | Platelet</answer>", GOLD, candidates=GOLD)
    assert s.correct == [True, False, False]
    assert s.cell_accuracy == pytest.approx(1 / 3)
    assert s.unknown_labels == 1  # Platelet is not a candidate: diagnostic only
    assert s.valid and s.uniqueness == 1.0
    assert score(GOOD, GOLD).unknown_labels is None


# (completion, labels) for the paper's line-based extraction.
PARSE_CASES = [
    (GOOD, GOLD),
    ("no tags at all", None),
    ("A | B", ["A", "B"]),  # no tags: the first line with '|'
    ("x\nA | B\nC | D", ["A", "B"]),
    ("<answer></answer>", None),
    ("<answer>A | | B</answer>", ["A", "B"]),  # empty labels dropped
    ("<answer>A | B", ["A", "B"]),  # unclosed: the rest of the line
    ("<answer>A |\nB</answer>", ["A"]),  # first line only
    ("<answer>A | B</answer> more", ["A", "B</answer> more"]),  # </answer> not at the end: kept
    ("<answer>A</answer> then <answer> B | C </answer>", ["A then <answer> B", "C"]),  # every </answer> removed
    ("x\r<answer>A | B\rC</answer>", ["A", "B"]),  # str.splitlines: '\r' ends a line
    ("<answer>A | B\u2028C</answer>", ["A", "B"]),
]


@pytest.mark.parametrize(("text", "labels"), PARSE_CASES)
def test_parse_answer(text, labels):
    assert parse_answer(text) == labels


def _reference_candidate(text: str) -> str:
    """The paper's candidate string, written as its description reads (a loop over lines)."""
    lines, cand = text.splitlines(), ""
    for line in lines:
        if "<answer>" in line:
            cand = line.split("<answer>", 1)[1].strip()
            if cand.endswith("</answer>"):
                cand = cand.replace("</answer>", "").strip()
            break
    return cand or next((line.strip() for line in lines if "|" in line), "")


def _reference_labels(text: str) -> list[str]:
    return [x.strip() for x in _reference_candidate(text).split("|") if x.strip()]


_fragment = st.sampled_from(["<think>", "</think>", "<answer>", "</answer>", "\n", "\n", "\r", "\r\n", " ", "|",
                             " | ", "A", "a", "B", "\u2028", "x"])
_text = st.lists(_fragment, max_size=16).map("".join)
_near = st.tuples(st.sampled_from(["<think>", " <think>", "<think>\n"]), st.sampled_from(["x", "", "a|b\n"]),
                  st.sampled_from(["</think>\n", "</think>", "</think>\n\n", "</think>\r\n"]),
                  st.sampled_from(["<answer>", "<answer>\n"]), st.sampled_from(["A | B", "A|B|", "A |\nB", "A | a", "A"]),
                  st.sampled_from(["</answer>", "\n</answer>"]), st.sampled_from(["", "\n", "\n\n", " ", "\r"])).map("".join)


@settings(max_examples=400, deadline=None)
@given(st.one_of(_text, _near))
def test_fast_checks_match_the_paper_definitions(text):
    s = score(text, AB)
    assert (parse_answer(text) or []) == _reference_labels(text)
    assert (parse_answer(text) is None) == (_reference_candidate(text) == "")
    one_each = all(text.count(tag) == 1 for tag in ("<think>", "</think>", "<answer>", "</answer>"))
    layout_ok = one_each and bool(PAPER_LAYOUT.match(text))
    assert s.legitimate == (layout_ok and "|" in _reference_candidate(text))
    labels = _reference_labels(text)
    assert s.valid == (s.legitimate and len(labels) == 2 and len(set(labels)) == 2)
    assert s.valid == (s.reward != -1) and (s.valid <= s.legitimate)
    assert s.reward == -1 or 0 <= s.reward <= 1
    assert format_reward([text], [AB]) == [float(s.valid)]


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


# Labels: printable, no separator, tag or line-break characters, no surrounding whitespace,
# distinct under str.lower (so fixed points are unambiguous).
_label = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp"), blacklist_characters="|<>"),
    min_size=1, max_size=12,
).filter(lambda s: s.strip() == s and s)
_labels = st.lists(_label, min_size=2, max_size=15, unique_by=lambda s: s.lower())


@settings(max_examples=150, deadline=None)
@given(_labels, st.text(alphabet="abc xyz.|\n", max_size=40))
def test_gold_in_the_papers_format_scores_one(gold, think):
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
    # a right permutation in the wrong layout (no newline): reward -1, so it counts as repaired
    ("<think>x</think><answer>NK cell | B cell</answer>", ["B cell", "NK cell"], ["NK cell", "B cell"], True),
    # duplicate: the second B cell takes the leftover candidate
    (_completion(["B cell", "B cell", "T cell"]), ["B cell", "NK cell", "T cell"], ["B cell", "NK cell", "T cell"], True),
    # fuzzy: typos go to the closest candidates
    (_completion(["T cel", "Monocytes", "B cell"]), ["B cell", "Monocyte", "T cell"], ["T cell", "Monocyte", "B cell"], True),
    # partial answer (cut off): missing positions get the leftover candidate
    ("<think>x</think>\n<answer>Monocyte | B cell", ["B cell", "Monocyte", "T cell"], ["Monocyte", "B cell", "T cell"], True),
    # a multi-line answer is read whole by repair (leniently)
    ("<think>x</think>\n<answer>T cell |\nB cell</answer>", ["B cell", "T cell"], ["T cell", "B cell"], True),
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


# A small fixed set with hand-computed metrics (N = 2, 2, 3, 3, 4, 4: micro and macro differ).
RECORDS = [
    # valid, all right
    {"id": "p1", "dataset": "d1", "completion": _completion(["A", "B"]), "answer": ["A", "B"], "completion_tokens": 10},
    # valid, swapped: 0/2; a valid permutation, so not repaired
    {"id": "p2", "dataset": "d1", "completion": _completion(["B", "A"]), "answer": ["A", "B"], "completion_tokens": 20},
    # repeat: reward -1, legitimate, eval 2/3 (A, C), uniqueness 2/3; repair -> A, B (leftover), C: 3/3
    {"id": "p3", "dataset": "d2", "completion": _completion(["A", "A", "C"]), "answer": ["A", "B", "C"]},
    # valid, 1/3 right, a label outside the candidates; repair -> A, C, B: 1/3
    {"id": "p4", "dataset": "d2", "completion": _completion(["A", "C", "X"]), "answer": ["A", "B", "C"],
     "candidates": ["A", "B", "C"]},
    # no newline between the blocks: not legitimate, 0/4, uniqueness 0; repair -> 4/4
    {"id": "p5", "dataset": "d3", "completion": "<think>x</think><answer>A | B | C | D</answer>", "answer": ["A", "B", "C", "D"]},
    # one label missing: reward -1, legitimate, eval 3/4; repair -> A, B, C, D (leftover): 4/4
    {"id": "p6", "dataset": "d3", "completion": _completion(["A", "B", "C"]), "answer": ["A", "B", "C", "D"]},
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
    rec = prediction_record(_completion(["B", "A"]), ["A", "B"], id="p", dataset="d", candidates=["A", "B"])
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

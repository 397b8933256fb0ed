"""cello.scoring's format rule and reward: the paper's definitions (its released code), pinned on edge cases.

    .venv/bin/pytest tests/scoring -q
"""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cello.scoring import (
    REASONS,
    check_format,
    completion_text,
    gold_labels,
    parse_answer,
    reward,
    score,
    valid_reward,
)
from tests.scoring.cases import AB, GOLD, GOOD, completion, st_labels

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
                  st.sampled_from(["<answer>", "<answer>\n"]),
                  st.sampled_from(["A | B", "A|B|", "A |\nB", "A | a", "A"]),
                  st.sampled_from(["</answer>", "\n</answer>"]),
                  st.sampled_from(["", "\n", "\n\n", " ", "\r"])).map("".join)


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
    assert valid_reward([text], [AB]) == [float(s.valid)]


def test_reward_batch_and_trl_protocol():
    completions = [GOOD, "", [{"role": "assistant", "content": GOOD}]]
    answers = [GOLD, GOLD, GOLD]
    # TRL passes prompts, completion_ids, trainer_state and dataset columns by keyword
    out = reward(prompts=["p"] * 3, completions=completions, answer=answers, completion_ids=None, trainer_state=None)
    assert out == [1.0, -1.0, 1.0]
    assert valid_reward(completions=completions, answer=answers) == [1.0, 0.0, 1.0]
    assert completion_text([]) == ""
    with pytest.raises(ValueError, match="one answer per completion"):
        reward([GOOD], [GOLD, GOLD])



@settings(max_examples=150, deadline=None)
@given(st_labels, st.text(alphabet="abc xyz.|\n", max_size=40))
def test_gold_in_the_papers_format_scores_one(gold, think):
    s = score(completion(gold, think), gold)
    assert s.valid and s.exact and s.reward == 1.0


@settings(max_examples=150, deadline=None)
@given(st_labels.flatmap(lambda g: st.tuples(st.just(g), st.permutations(g))))
def test_permutation_scores_fixed_points(case):
    gold, perm = case
    s = score(completion(perm), gold)
    fixed = sum(p == g for p, g in zip(perm, gold, strict=True))
    assert s.valid
    assert s.cell_accuracy == pytest.approx(fixed / len(gold))
    assert s.exact == (fixed == len(gold))
    assert s.reward == pytest.approx((fixed / len(gold) + (fixed == len(gold))) / 2)

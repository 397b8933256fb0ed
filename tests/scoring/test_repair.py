"""cello.scoring.repair: a valid assignment from any completion, by optimal matching.

    .venv/bin/pytest tests/scoring/test_repair.py -q
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cello.scoring import repair
from tests.scoring.cases import completion, st_label, st_labels


@settings(max_examples=150, deadline=None)
@given(st_labels, st.lists(st.one_of(st_label, st.just("")), max_size=20),
       st.sampled_from(["full", "cut", "bare", "none"]))
def test_repair_always_returns_a_permutation(cands, written, shape):
    body = " | ".join(written)
    text = {"full": completion(written), "cut": f"<answer>{body}", "bare": body, "none": "garbage"}[shape]
    r = repair(text, cands)
    assert sorted(r.labels) == sorted(cands)


# (completion, candidates, expected labels, expected repaired)
REPAIR_CASES = [
    # already a valid permutation (case differs): canonical spelling, not repaired
    (completion(["nk cell", "B CELL"]), ["B cell", "NK cell"], ["NK cell", "B cell"], False),
    # a right permutation in the wrong layout (no newline): reward -1, so it counts as repaired
    ("<think>x</think><answer>NK cell | B cell</answer>", ["B cell", "NK cell"], ["NK cell", "B cell"], True),
    # duplicate: the second B cell takes the leftover candidate
    (completion(["B cell", "B cell", "T cell"]), ["B cell", "NK cell", "T cell"], ["B cell", "NK cell", "T cell"],
     True),
    # fuzzy: typos go to the closest candidates
    (completion(["T cel", "Monocytes", "B cell"]), ["B cell", "Monocyte", "T cell"], ["T cell", "Monocyte", "B cell"],
     True),
    # partial answer (cut off): missing positions get the leftover candidate
    ("<think>x</think>\n<answer>Monocyte | B cell", ["B cell", "Monocyte", "T cell"], ["Monocyte", "B cell", "T cell"],
     True),
    # a multi-line answer is read whole by repair (leniently)
    ("<think>x</think>\n<answer>T cell |\nB cell</answer>", ["B cell", "T cell"], ["T cell", "B cell"], True),
    # labels beyond N are ignored
    (completion(["B cell", "T cell", "T cell"]), ["B cell", "T cell"], ["B cell", "T cell"], True),
    # an exact match wins over fuzzy matches elsewhere: 'T cell' keeps T cell, 'T cells' takes the rest
    (completion(["T cells", "T cell"]), ["NK cell", "T cell"], ["NK cell", "T cell"], True),
    # valid format with a label outside the candidates is repaired
    (completion(["B cell", "Platelet"]), ["B cell", "T cell"], ["B cell", "T cell"], True),
]


@pytest.mark.parametrize(("text", "cands", "labels", "repaired"), REPAIR_CASES)
def test_repair_cases(text, cands, labels, repaired):
    r = repair(text, cands)
    assert r.labels == labels
    assert r.repaired == repaired


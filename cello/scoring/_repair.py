"""Repair: any completion -> a valid assignment (one candidate per cell), by optimal matching.

Beyond the paper: a model whose answer breaks the format, repeats a label or misspells one
still says something about the cells; repair reads it leniently (the whole last answer block,
a cut-off block, or a bare 'A | B' line; case-insensitive) and assigns the candidates to the
written positions so that exact matches count first and fuzzy similarity second. The repaired
figures in `compute_metrics` and the server's `repair` option score this assignment.

    from cello.scoring import repair
    repair("<think>x</think>\\n<answer>T cel | T cell</answer>", ["B cell", "T cell"]).labels  # ['B cell', 'T cell']
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from cello.scoring._reward import check_format

__all__ = ["Repair", "repair"]


@dataclass(frozen=True, slots=True)
class Repair:
    """A valid assignment (one candidate per cell, each used once) and whether it differs
    from what the model wrote (`repaired=False`: a valid completion whose labels already are
    a permutation of the candidates)."""

    labels: list[str]
    repaired: bool


def _split_keep(inner: str) -> list[str]:
    """Labels of an answer body for repair: split on '|', trimmed, empty positions kept."""
    if not inner.strip():
        return []
    return [part.strip() for part in inner.split("|")]


def _written(text: str) -> list[str]:
    """What the model wrote per position, read leniently (for repair only): the last complete
    answer block (all its lines), else a cut-off block, else the last line with a '|'."""
    end = text.rfind("</answer>")
    start = text.rfind("<answer>", 0, end) if end >= 0 else -1
    if start >= 0:
        return _split_keep(text[start + 8:end])
    start = text.rfind("<answer>")
    if start >= 0:  # an answer block cut off by the length limit
        return _split_keep(text[start + 8:])
    for line in reversed(text.strip().splitlines()):  # no tags at all: a bare 'A | B' line
        if "|" in line:
            return _split_keep(line)
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
    written = check.labels if check.valid and check.labels is not None else _written(text)
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


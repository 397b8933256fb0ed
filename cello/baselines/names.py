"""What a cell-type name says on its own: marker genes with a sign, and the words it shares.

A candidate type the baseline never saw in training still carries information in its name:
"CD14-low, CD16-positive monocyte" names two markers (CD14 down, CD16 = FCGR3A up) and shares the
word "monocyte" with a type it may know. `name_prior` turns that into scores for the cells of a
puzzle; the solver uses it only for unseen candidates.

Surface markers are translated to gene symbols with the HGNC names of the CD antigens (CD16 is
FCGR3A, CD56 is NCAM1, ...); a CD number whose gene has the same symbol (CD4, CD14, CD19, ...)
needs no entry. Any other word that is itself a gene symbol of the puzzle's cells counts too.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

# CD antigen -> gene symbol(s), where they differ (HGNC).
CD_GENES: dict[str, tuple[str, ...]] = {
    "CD3": ("CD3E", "CD3D", "CD3G"), "CD8": ("CD8A", "CD8B"), "CD11B": ("ITGAM",), "CD11C": ("ITGAX",),
    "CD16": ("FCGR3A",), "CD20": ("MS4A1",), "CD25": ("IL2RA",), "CD41": ("ITGA2B",), "CD45": ("PTPRC",),
    "CD56": ("NCAM1",), "CD57": ("B3GAT1",), "CD61": ("ITGB3",), "CD62L": ("SELL",), "CD122": ("IL2RB",),
    "CD123": ("IL3RA",), "CD127": ("IL7R",), "CD141": ("THBD",), "CD161": ("KLRB1",), "CD303": ("CLEC4C",),
    "CD304": ("NRP1",),
}
_SIGNS = {"positive": 1.0, "high": 1.0, "hi": 1.0, "bright": 1.0, "+": 1.0,
          "negative": -1.0, "low": -1.0, "lo": -1.0, "dim": -1.0, "-": -1.0}
_TOKEN = re.compile(r"[A-Za-z0-9]+(?:-[A-Za-z0-9]+)*[+-]?")
_CD = re.compile(r"^CD\d+[A-Z]?$")
_STOP = {"cell", "cells", "of", "the", "and", "type", "human", "mature"}


def _split(token: str) -> tuple[str, float | None]:
    """'CD14-low' -> ('CD14', -1), 'CD4+' -> ('CD4', +1), 'monocyte' -> ('monocyte', None)."""
    if token[-1] in "+-":
        return token[:-1], _SIGNS[token[-1]]
    head, _, tail = token.rpartition("-")
    if head and tail.lower() in _SIGNS:
        return head, _SIGNS[tail.lower()]
    return token, None


def markers(name: str, genes: Iterable[str] = ()) -> dict[str, float]:
    """Gene symbol -> +1 (the name calls it up, or just names it) or -1 (negative, low, dim).

    CD antigens always count; any other word only when it is one of `genes` (and longer than
    one letter: the B of "B cell" is not a gene)."""
    known = set(genes)
    out: dict[str, float] = {}
    for token in _TOKEN.findall(name):
        base, sign = _split(token)
        if _CD.match(base.upper()):
            for gene in CD_GENES.get(base.upper(), (base.upper(),)):
                out[gene] = 1.0 if sign is None else sign
        elif base in known and len(base) > 1:
            out[base] = 1.0 if sign is None else sign
    return out


def words(name: str) -> frozenset[str]:
    """The name's words that are neither markers nor filler: 'CD8-positive, alpha-beta T cell' -> {alpha-beta, t}."""
    out = set()
    for token in _TOKEN.findall(name.lower()):
        base, sign = _split(token)
        if sign is not None or _CD.match(base.upper()) or base in _STOP:
            continue
        out.add(base)
    return frozenset(out)


def signature(name: str) -> tuple[str, ...]:
    """The name's alphanumeric runs, case-folded: names that differ only in punctuation match."""
    return tuple(re.findall(r"[a-z0-9]+", name.casefold()))


def similarity(a: frozenset[str], b: frozenset[str]) -> float:
    """Jaccard overlap of two word sets (0 when either is empty)."""
    return len(a & b) / len(a | b) if a and b else 0.0


def name_prior(name: str, cells: Sequence[Sequence[str]], *, known: Mapping[str, np.ndarray],
               weights: Sequence[np.ndarray], base: float, strength: float) -> np.ndarray:
    """Scores of the puzzle's cells for an unseen type `name`, on the scale of log p(type | cell).

    `known` maps each trained type's name to its column of log-posteriors for these cells;
    `weights[i]` holds the rank weights of cell i's genes. The score starts at `base` (the
    uniform log-posterior), moves towards the types whose names share words with this one (by
    overlap), and adds `strength` x the rank weight of every marker the name calls up, minus the
    same for one it calls down or low."""
    score = np.full(len(cells), base)
    mine = words(name)
    sims = {t: similarity(mine, words(t)) for t in known}
    total = sum(sims.values())
    if total > 0:
        for t, s in sims.items():
            if s > 0:
                score += (s / total) * (known[t] - base)
    genes = {g for cell in cells for g in cell}
    signs = markers(name, genes)
    for i, cell in enumerate(cells):
        for gene, w in zip(cell, weights[i], strict=False):
            if gene in signs:
                score[i] += strength * signs[gene] * w
    return score

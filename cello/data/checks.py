"""Rules the cells table must obey wherever it comes from (one h5ad, parts of an atlas, a
published export): labels the answer format can carry, and dataset names that keep cell ids
unique. Light on purpose: puzzles and records check with it without loading the h5ad readers.
"""

from __future__ import annotations

import unicodedata

import numpy as np
import pandas as pd

from cello.errors import InputError


def check_cell_types(labels: np.ndarray | pd.Series, *, source: str, key: str) -> None:
    """Labels must survive the answer format: no '|' or line/control characters, and no two
    labels that differ only by case (answers are compared case-insensitively)."""
    unique = pd.unique(np.asarray(labels, dtype=object))
    bad = [t for t in unique if t and ("|" in t or any(unicodedata.category(ch) in ("Cc", "Zl", "Zp") for ch in t))]
    if bad:
        msg = (
            f"{source}: cell-type labels in {key!r} contain '|' or control/line characters, which the "
            f"answer format (<answer>A | B</answer>) cannot carry: {bad[:5]}. Rename those categories."
        )
        raise InputError(msg)
    by_case: dict[str, set[str]] = {}
    for t in unique:
        if t:
            by_case.setdefault(t.lower(), set()).add(t)
    clashes = [sorted(v) for v in by_case.values() if len(v) > 1]
    if clashes:
        msg = (
            f"{source}: cell-type labels in {key!r} differ only by case: {clashes[:5]}; answers are compared "
            "case-insensitively, so merge them into one label."
        )
        raise InputError(msg)


def check_unique_datasets(datasets: list[str], *, where: str) -> None:
    """Cell ids are '<dataset>:<obs name>': two inputs with one dataset name would collide."""
    if len(set(datasets)) < len(datasets):
        msg = f"two inputs share a dataset name ({datasets}) in {where}; rename one file so cell ids stay unique."
        raise InputError(msg)

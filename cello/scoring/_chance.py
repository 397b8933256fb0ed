"""Chance: the expected figures of a uniformly random valid assignment, defined as the metrics
are, so a model's numbers can be read against them (the floor below the marker baseline).

    from cello.scoring import chance_expected_accuracy, chance_set_accuracy
    chance_expected_accuracy(4)            # ChanceAccuracy(cell=0.25, batch=1/24)
    chance_set_accuracy([3, 4, 8])         # micro cell, macro cell and batch accuracy
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

__all__ = ["ChanceAccuracy", "chance_expected_accuracy", "chance_set_accuracy"]


class ChanceAccuracy(NamedTuple):
    cell: float
    batch: float


def chance_expected_accuracy(n: int) -> ChanceAccuracy:
    """Expected accuracy of a uniformly random permutation of N candidates: 1/N per cell
    (each cell's type is equally likely to be any candidate), 1/N! for the whole batch."""
    if n < 1:
        msg = f"chance_expected_accuracy(): n={n}; a puzzle has at least one cell."
        raise ValueError(msg)
    return ChanceAccuracy(1.0 / n, 1.0 / math.factorial(n))


def chance_set_accuracy(ns: Sequence[int]) -> dict[str, float]:
    """Expected figures of a uniformly random valid assignment over puzzles of sizes `ns`,
    defined as the metrics are: cell_accuracy is micro (correct cells / cells: one expected hit
    per puzzle, so puzzles / cells, not the mean of 1/N), cell_accuracy_macro the mean of 1/N,
    batch_accuracy the mean of 1/N!."""
    chance = [chance_expected_accuracy(n) for n in ns]
    return {
        "cell_accuracy": sum(c.cell * n for c, n in zip(chance, ns, strict=True)) / sum(ns),
        "cell_accuracy_macro": sum(c.cell for c in chance) / len(chance),
        "batch_accuracy": sum(c.batch for c in chance) / len(chance),
    }

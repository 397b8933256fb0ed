"""Shared inputs of the scoring tests: gold answers, a completion builder, label strategies."""

from __future__ import annotations

from hypothesis import strategies as st

GOLD = ["B cell", "CD4+ T cell", "NK cell"]
AB = ["A", "B"]
GOOD = "<think>CD79A marks B cells.</think>\n<answer>B cell | CD4+ T cell | NK cell</answer>"


def completion(labels, think="reasoning"):
    """A completion in the paper's format holding `labels`."""
    return f"<think>{think}</think>\n<answer>{' | '.join(labels)}</answer>"


# Labels: printable, no separator, tag or line-break characters, no surrounding whitespace,
# distinct under str.lower (so fixed points are unambiguous).
st_label = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp"), blacklist_characters="|<>"),
    min_size=1, max_size=12,
).filter(lambda s: s.strip() == s and s)
st_labels = st.lists(st_label, min_size=2, max_size=15, unique_by=lambda s: s.lower())

"""The donor-context sentence of a cell, from its obs fields, in Cello's or Cell-o1's wording.

Missing or placeholder values ("unknown", "na", "", NaN, ...) are dropped, never printed:
a sentence that says "a unknown donor" teaches the model noise. The sentence is built once
per distinct combination of field values, not once per cell.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from cello.data import schema as S

MISSING = frozenset(
    {"", "na", "n/a", "nan", "nat", "<na>", "none", "null", "unknown", "unspecified",
     "not applicable", "not available", "not reported", "missing", "?", "-"}
)


def clean(value: object) -> str:
    """The value as text, or "" when it is missing (None, NaN, pd.NA, NaT) or a placeholder."""
    try:
        if value is None or pd.isna(value) is True:
            return ""
    except (TypeError, ValueError):  # array-likes: not a scalar missing marker
        pass
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # an age stored as 30.0 reads "30"
    text = str(value).strip()
    return "" if text.lower() in MISSING else text


def constant(value: str, n: int) -> pd.Categorical:
    """`value` for each of `n` cells, as a categorical (a field the file does not have)."""
    return pd.Categorical.from_codes(np.zeros(n, dtype=np.int8), categories=[value])


def clean_categorical(col: pd.Series) -> pd.Categorical:
    """`clean` over an obs column, as a categorical of the cleaned values. An obs column stored
    as a categorical (anndata's default for text) is cleaned once per category and never
    expanded to one string per cell; categories that clean to the same text are merged."""
    if isinstance(col.dtype, pd.CategoricalDtype):
        codes, values = col.cat.codes.to_numpy(), [clean(c) for c in col.cat.categories]
    else:
        codes, values = pd.factorize(col.map(clean).to_numpy())
        values = list(values)
    # Code -1 (a missing value) takes the "" appended last.
    merged, categories = pd.factorize(np.array([*values, ""], dtype=object))
    return pd.Categorical.from_codes(merged[codes], categories=categories)


def _stage(stage: str) -> str:
    """CELLxGENE stages already end in "stage" ("29-year-old human stage")."""
    return stage[: -len(" stage")] if stage.lower().endswith(" stage") else stage


def sentence(fields: Mapping[str, str], *, extra: Sequence[str] = ()) -> str:
    """One readable sentence from cleaned fields (sex, development_stage, ... plus extras)."""
    sex, stage = fields.get("sex", ""), _stage(fields.get("development_stage", ""))
    parts = []
    if sex and stage:
        parts.append(f"The cell is from a {sex} donor at the {stage} stage.")
    elif sex:
        parts.append(f"The cell is from a {sex} donor.")
    elif stage:
        parts.append(f"The cell is from a donor at the {stage} stage.")
    if fields.get("self_reported_ethnicity"):
        parts.append(f"The donor's self-reported ethnicity is {fields['self_reported_ethnicity']}.")
    if fields.get("tissue"):
        parts.append(f"The sample was taken from the {fields['tissue']}.")
    if fields.get("disease"):
        disease = fields["disease"]
        if disease.lower() == "normal":
            parts.append("The donor is healthy.")
        else:
            parts.append(f"The donor has been diagnosed with {disease}.")
    for name in extra:
        if fields.get(name):
            parts.append(f"{name.replace('_', ' ').capitalize()}: {fields[name]}.")
    return " ".join(parts)


def context_columns(obs: pd.DataFrame, fields: Sequence[str], extra: Sequence[str]) -> pd.DataFrame:
    """Cleaned context fields of every cell, as categoricals (absent columns give "")."""
    out = {}
    for name in [*fields, *extra]:
        if name in obs.columns:
            out[name] = clean_categorical(obs[name])
        else:
            out[name] = constant("", len(obs))
    return pd.DataFrame(out, index=obs.index)


def sentences(ctx: pd.DataFrame, *, extra: Sequence[str] = ()) -> pd.Series:
    """Sentence per row of `context_columns` (a categorical Series), computed once per distinct
    combination of the fields: the combinations are found from the columns' category codes,
    so no per-cell string is hashed or built."""
    if ctx.empty or ctx.shape[1] == 0:
        return pd.Series(pd.Categorical([""] * len(ctx)), index=ctx.index)
    cols = [pd.Categorical(ctx[name]) for name in ctx.columns]
    combination = np.zeros(len(ctx), dtype=np.int64)
    for col in cols:  # mixed radix over the codes, made dense again after each field: no overflow
        combination, _ = pd.factorize(combination * (len(col.categories) + 1) + col.codes)
    _, first = np.unique(combination, return_index=True)  # one row of each combination, in code order
    texts = [
        sentence({name: col[row] for name, col in zip(ctx.columns, cols, strict=True)}, extra=extra)
        for row in first
    ]
    codes, categories = pd.factorize(np.array(texts, dtype=object))  # two combinations may read alike
    return pd.Series(pd.Categorical.from_codes(codes[combination], categories=categories), index=ctx.index)


# ---------------------------------------------------------------- the Cell-o1 wording
CELL_O1_FIELDS = ("sex", "development_stage", "self_reported_ethnicity", "tissue", "disease")


def cell_o1_sentence(fields: Mapping[str, str], *, extra: Sequence[str] = ()) -> str:
    """The context as the original Cell-o1 pipeline words it, for models trained on its prompts.

    Its quirks are kept on purpose, since a model trained on them expects them: the clauses are
    glued onto "The cell is from" (no sex, stage and ethnicity gives "The cell is from,
    originating from the blood."), the stage is printed whole ("at the 45-year-old human stage"),
    the sentence only ends with a period when a disease follows, and the text ends with the space
    that separated it from the gene list. Extra fields are appended as in `sentence`.
    """
    sex, stage = fields.get("sex", ""), fields.get("development_stage", "")
    ethnicity, tissue, disease = (fields.get(k, "") for k in ("self_reported_ethnicity", "tissue", "disease"))
    intro = "The cell is from"
    intro += f" a {sex}" if sex else ""
    intro += f" at the {stage}" if stage else ""
    intro += f" with {ethnicity} background" if ethnicity else ""
    intro += f", originating from the {tissue}" if tissue else ""
    if disease:
        healthy = disease.lower() == "normal"
        intro += (
            ". The patient is healthy with no diagnosed disease."
            if healthy
            else f". The patient has been diagnosed with {disease}."
        )
    extras = [f"{name.replace('_', ' ').capitalize()}: {fields[name]}." for name in extra if fields.get(name)]
    return " ".join([intro, *extras]) + " "


def puzzle_context(row: Mapping, profile: str) -> str:
    """The context text a puzzle row shows under a prompt profile: the stored sentence, or for
    'cell-o1' the original's wording of the stored fields (when the row has them; imported
    puzzles keep their text verbatim)."""
    raw = row.get(S.CONTEXT_FIELDS)
    if profile == "cell-o1" and isinstance(raw, str) and raw:
        fields = {str(k): clean(v) for k, v in json.loads(raw).items()}
        return cell_o1_sentence(fields, extra=[k for k in fields if k not in CELL_O1_FIELDS])
    return clean_text(row.get(S.CONTEXT))


def clean_text(value: object) -> str:
    """A text cell of a table as str: "" for None or NaN (a Parquet gap)."""
    return "" if value is None or (isinstance(value, float) and value != value) else str(value)

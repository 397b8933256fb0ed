"""Column names of the cells and puzzles tables (Parquet), in one place.

cells.parquet, one row per cell:
    cell_id (str, "<dataset>:<obs name>"), dataset, donor_id, batch ("" when absent),
    cell_type, top_genes (list[str], ranked, highest first), context (the donor sentence),
    plus one `ctx_<field>` string column per context field ("" when missing/unknown).

puzzles.parquet, one row per puzzle:
    puzzle_id, dataset, group ("<donor>" or "<donor>/<batch>"), donor_id, n (int),
    cell_ids (list[str]), cell_genes (list[list[str]], in cell order), context,
    candidates (list[str], sorted), answer (list[str], the types in cell order),
    context_fields (JSON object text: the context fields the sentence was made from, so another
    prompt profile can word it at export time; "" when unknown, e.g. imported puzzles),
    target (an imported assistant message that carries reasoning, verbatim; "" otherwise).
"""

from __future__ import annotations

CELL_ID = "cell_id"
DATASET = "dataset"
DONOR = "donor_id"
BATCH = "batch"
CELL_TYPE = "cell_type"
TOP_GENES = "top_genes"
CONTEXT = "context"
CTX_PREFIX = "ctx_"

CELL_COLUMNS = [CELL_ID, DATASET, DONOR, BATCH, CELL_TYPE, TOP_GENES, CONTEXT]

PUZZLE_ID = "puzzle_id"
GROUP = "group"
N = "n"
CELL_IDS = "cell_ids"
CELL_GENES = "cell_genes"
CANDIDATES = "candidates"
ANSWER = "answer"

CONTEXT_FIELDS = "context_fields"
TARGET = "target"

# What every puzzles table holds; tables written by older versions lack the optional columns.
PUZZLE_REQUIRED = [
    PUZZLE_ID, DATASET, GROUP, DONOR, N, CELL_IDS, CELL_GENES, CONTEXT, CANDIDATES, ANSWER,
]
PUZZLE_COLUMNS = [*PUZZLE_REQUIRED, CONTEXT_FIELDS, TARGET]

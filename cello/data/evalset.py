"""The eval split as items a predictor answers: puzzles rendered with the prompt template, or
records (eval/GRPO, published CellPuzzles) read by `load_records` and laid out by the template.
Kept apart from `cello.evaluate` so that the gate and the baseline can read a split without the
evaluation loop."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cello.data import schema as S
from cello.data.context import puzzle_context
from cello.data.prompt import PromptTemplate
from cello.errors import InputError

__all__ = ["load_eval_items", "puzzle_fingerprint"]


def _as_list(value: Any) -> list:
    return [] if value is None else list(value)


def _item_from_record(rec: dict, where: str, template: PromptTemplate) -> dict[str, Any]:
    messages = rec.get("messages") or rec.get("prompt")
    missing = [
        k
        for k, ok in (("id", "id" in rec), ("messages", bool(messages)), ("answer", bool(rec.get("answer"))))
        if not ok
    ]
    if missing:
        msg = f"{where}: missing field(s) {missing}; expected eval records from `cello data export --format eval`."
        raise InputError(msg)
    messages = template.arrange([m for m in messages if m.get("role") != "assistant"])  # a target is no prompt
    answer = [str(a) for a in rec["answer"]]
    return {
        "id": str(rec["id"]),
        "dataset": str(rec.get("dataset") or ""),
        "group": str(rec.get("group") or ""),
        "n": int(rec.get("n") or len(answer)),
        "messages": messages,
        "answer": answer,
        "candidates": [str(c) for c in _as_list(rec.get("candidates"))] or sorted(answer),
    }


def _item_from_row(row: dict, template: PromptTemplate) -> dict[str, Any]:
    genes = [[str(g) for g in _as_list(cell)] for cell in _as_list(row[S.CELL_GENES])]
    candidates = [str(c) for c in _as_list(row[S.CANDIDATES])]
    answer = [str(a) for a in _as_list(row[S.ANSWER])]
    return {
        "id": str(row[S.PUZZLE_ID]),
        "dataset": str(row.get(S.DATASET) or ""),
        "group": str(row.get(S.GROUP) or ""),
        "n": len(answer),
        "messages": template.messages(puzzle_context(row, template.profile), genes, candidates),
        "answer": answer,
        "candidates": candidates,
        S.CELL_GENES: genes,
    }


def load_eval_items(
    path: str | os.PathLike, *, template: PromptTemplate | None = None, limit: int | None = None
) -> list[dict[str, Any]]:
    """The puzzles of an eval split, each {id, dataset, group, n, messages, answer, candidates}
    (puzzle rows also keep cell_genes), in file order; the first `limit` only when given.

    The split is a puzzles table (Parquet) or records read by `cello.data.records.load_records`
    (JSON list, JSON lines or Parquet, by content): eval/GRPO records, or published CellPuzzles
    records, whose system_msg and user_msg are sent as they are."""
    from cello.data.records import as_chat_record, is_parquet, load_records, parquet_columns

    template = template or PromptTemplate()
    path = Path(path)
    if path.is_dir():
        names = ("test.jsonl", "test.json", "test.parquet")
        found = [path / f for f in names if (path / f).is_file()]
        if not found:
            msg = f"{path}: a directory without {', '.join(names)}; pass the eval split file itself."
            raise InputError(msg)
        path = found[0]
    if not path.is_file():
        msg = (
            f"{path}: no such file; pass eval records (`cello data export --format eval`), published "
            "CellPuzzles records or a split (.parquet)."
        )
        raise InputError(msg)
    if is_parquet(path) and S.CELL_GENES in parquet_columns(path):
        import pandas as pd

        df = pd.read_parquet(path)
        missing = [c for c in (S.PUZZLE_ID, S.CANDIDATES, S.ANSWER) if c not in df.columns]
        if missing:
            msg = f"{path}: missing column(s) {missing}; expected a puzzles table from `cello data split`."
            raise InputError(msg)
        rows = df.head(limit) if limit else df
        items = [_item_from_row(r, template) for r in rows.to_dict("records")]
    else:
        recs = load_records(path)
        items = []
        for i, rec in enumerate(recs[:limit] if limit else recs):
            where = f"{path}: record {i + 1}"
            rec = as_chat_record(rec, index=i, where=where, template=template)
            items.append(_item_from_record(rec, where, template))
    seen: set[str] = set()
    for it in items:
        if it["id"] in seen:
            msg = f"{path}: puzzle id {it['id']!r} occurs twice; ids must be unique (rebuild the split)."
            raise InputError(msg)
        seen.add(it["id"])
    if not items:
        msg = f"{path}: no puzzles to evaluate."
        raise InputError(msg)
    return items


def puzzle_fingerprint(ids: Sequence[str]) -> str:
    """A short hash of the set of puzzle ids: equal fingerprints = runs scored the same puzzles."""
    return hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest()[:16]

"""Splits -> training/eval records (JSONL), and published CellPuzzles records -> puzzles.

Puzzles are stored structured; the chat text is rendered here, at export time, from the
`PromptTemplate` in params.yaml, so a prompt change needs no data rebuild. Formats, one JSON
object per line, one file per split (OUT/train.jsonl, OUT/test.jsonl):

- sft:   {"id", "dataset", "n", "messages": [system, user, assistant]}
- grpo:  {"id", "dataset", "n", "prompt": [system, user], "answer": [...], "candidates": [...]}
- eval:  {"id", "dataset", "group", "n", "messages": [system, user], "answer", "candidates"}
- cellpuzzles: what the original Cell-o1 pipeline writes, OUT/train.json and OUT/test.json, each
  a JSON list of {"system_msg", "user_msg", "assistant_msg"} (indent 2), the answer bare
  ("A | B | ..."), or the imported reasoning trace when the puzzle has one.

`load_records` reads records of any of these shapes from a JSON list, JSON lines or Parquet,
told apart by content; `import_cellpuzzles` reads the published shape into puzzles. Its
assistant message may hold "<think>..</think><answer>A | B</answer>" (kept as the puzzle's
`target`) or just "A | B". Cell ids are derived from each cell's gene list, so identical cells
in two imported files get the same id.

    cello data export data/splits -o data/records/sft --format sft
    cello data import cellpuzzles_train.json -o data/imported.parquet
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cello._io import atomic_path, read_jsonl, write_jsonl
from cello.data import schema as S
from cello.data.context import puzzle_context
from cello.data.prompt import PromptTemplate
from cello.data.puzzles import read_puzzles, unique_id
from cello.errors import ConfigError, InputError

log = logging.getLogger(__name__)

FORMATS = ("sft", "grpo", "eval", "cellpuzzles")
SPLITS = ("train", "test")
RECORD_KEYS = ("system_msg", "user_msg", "assistant_msg")
_ANSWER_RE = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


def to_list(value: Any) -> list:
    """A list (or numpy array read back from Parquet) as a plain list of str, one level deep."""
    return [str(v) for v in value]


def puzzle_record(row: dict, *, fmt: str, template: PromptTemplate) -> dict:
    """One puzzle row (a puzzles.parquet record) as a record of format `fmt`."""
    genes = [to_list(g) for g in row[S.CELL_GENES]]
    candidates = to_list(row[S.CANDIDATES])
    answer = to_list(row[S.ANSWER])
    prompt = template.messages(puzzle_context(row, template.profile), genes, candidates)
    base = {"id": str(row[S.PUZZLE_ID]), "dataset": str(row[S.DATASET]), "n": int(row[S.N])}
    target = str(row.get(S.TARGET) or "")
    if fmt == "sft":
        assistant = {"role": "assistant", "content": target or template.render_answer(answer)}
        return {**base, "messages": [*prompt, assistant]}
    if fmt == "grpo":
        return {**base, "prompt": prompt, "answer": answer, "candidates": candidates}
    if fmt == "eval":
        return {"id": base["id"], "dataset": base["dataset"], "group": str(row[S.GROUP]), "n": base["n"],
                "messages": prompt, "answer": answer, "candidates": candidates}
    if fmt == "cellpuzzles":
        return {"system_msg": prompt[0]["content"], "user_msg": prompt[1]["content"],
                "assistant_msg": target or " | ".join(answer)}
    msg = f"unknown record format {fmt!r}; choose one of: {', '.join(FORMATS)}."
    raise ConfigError(msg)


def export_split(split_dir: str | os.PathLike, out_dir: str | os.PathLike, *, fmt: str,
                 template: PromptTemplate) -> dict[str, int]:
    """Write OUT/<split>.jsonl (cellpuzzles: OUT/<split>.json) in format `fmt` for each
    train/test.parquet in `split_dir`.

    Returns the number of records per split. The directory is written atomically as a whole,
    so a failure never leaves a new train.jsonl beside a stale test.jsonl.
    """
    if fmt not in FORMATS:
        msg = f"unknown export format {fmt!r} (--format); choose one of: {', '.join(FORMATS)}."
        raise ConfigError(msg)
    split_dir, out_dir = Path(split_dir), Path(out_dir)
    present = [name for name in SPLITS if (split_dir / f"{name}.parquet").is_file()]
    if not present:
        msg = (f"{split_dir}: no train.parquet or test.parquet there; "
               f"make them with `cello data split PUZZLES -o {split_dir}`.")
        raise InputError(msg)
    counts = {}
    with atomic_path(out_dir, is_dir=True) as tmp:
        for name in present:
            table = read_puzzles(split_dir / f"{name}.parquet")
            recs = (puzzle_record(row, fmt=fmt, template=template) for row in table.to_dict("records"))
            if fmt == "cellpuzzles":  # the original's json.dump(records, f, indent=2, ensure_ascii=False)
                listed = list(recs)
                (tmp / f"{name}.json").write_text(json.dumps(listed, indent=2, ensure_ascii=False), encoding="utf-8")
                counts[name] = len(listed)
            else:
                counts[name] = write_jsonl(recs, tmp / f"{name}.jsonl")
            log.info("wrote %d %s records to %s", counts[name], fmt, out_dir)
    return counts


# ---------------------------------------------------------------- reading records
def is_parquet(path: str | os.PathLike) -> bool:
    """Whether `path` is a Parquet file, by its magic bytes."""
    with open(path, "rb") as fh:
        return fh.read(4) == b"PAR1"


def parquet_columns(path: str | os.PathLike) -> list[str]:
    """The column names of a Parquet file, or an InputError naming it."""
    import pyarrow.parquet as pq

    try:
        return pq.read_schema(path).names
    except Exception as exc:  # pyarrow raises several types for a damaged file
        msg = f"{path}: not a readable Parquet file ({exc})."
        raise InputError(msg) from exc


def load_records(path: str | os.PathLike) -> list[dict]:
    """Records from a JSON list, JSON lines or Parquet file, told apart by the content (not the
    name): every command that reads records reads them here. A single JSON object is one record."""
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.is_file():
        msg = f"{path}: no such file; give records as a JSON list (.json), JSON lines (.jsonl) or Parquet."
        raise InputError(msg)
    if is_parquet(path):
        try:
            return pq.read_table(path).to_pylist()
        except Exception as exc:  # pyarrow raises several types for a damaged file
            msg = f"{path}: not a readable Parquet file ({exc})."
            raise InputError(msg) from exc
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        msg = f"{path}: neither JSON nor Parquet (not UTF-8 text); give a JSON list, JSON lines or Parquet."
        raise InputError(msg) from exc
    head = text.lstrip()[:1]
    if not head:
        return []
    if head == "[":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            msg = f"{path}: starts like a JSON list but is not valid JSON ({exc.msg}, line {exc.lineno})."
            raise InputError(msg) from exc
        bad = next((i for i, rec in enumerate(data) if not isinstance(rec, dict)), None)
        if bad is not None:
            kind = type(data[bad]).__name__
            msg = f"{path}: record {bad} of the JSON list is a {kind}; expected an object (a record)."
            raise InputError(msg)
        return data
    if head == "{":
        try:
            return read_jsonl(path)
        except InputError as lines_error:
            try:
                return [json.loads(text)]  # one pretty-printed object
            except json.JSONDecodeError:
                raise lines_error from None  # it names the bad line
    msg = (f"{path}: neither a JSON list, JSON lines nor Parquet (it starts with {text.lstrip()[:20]!r}); "
           "give records as a JSON list of objects, one JSON object per line, or a Parquet table.")
    raise InputError(msg)


def is_published(rec: dict) -> bool:
    """A record in the published CellPuzzles shape (system_msg/user_msg/assistant_msg)."""
    return isinstance(rec, dict) and "user_msg" in rec


def published_chat(rec: dict, *, index: int, template: PromptTemplate) -> dict:
    """A published record as Cello's chat record {id, dataset, n, messages, answer, candidates};
    `messages` ends with the assistant turn, verbatim, when the record has one. ValueError if malformed."""
    p = _puzzle_from_record(rec, template=template)
    messages = [{"role": "system", "content": str(rec.get("system_msg") or template.system)},
                {"role": "user", "content": rec["user_msg"]}]
    assistant = _field(rec, "assistant_msg")
    if isinstance(assistant, str):
        messages.append({"role": "assistant", "content": assistant})
    return {"id": str(_field(rec, "id", index)), "dataset": str(_field(rec, "dataset", "")), "n": len(p["genes"]),
            "messages": messages, "answer": p["answer"], "candidates": p["candidates"]}


def as_chat_record(rec: dict, *, index: int, where: str, template: PromptTemplate) -> dict:
    """`rec` as a Cello chat record: a published CellPuzzles record converted (`published_chat`),
    any other record as it is; an InputError naming `where` when a published record is malformed."""
    if not is_published(rec):
        return rec
    try:
        return published_chat(rec, index=index, template=template)
    except ValueError as exc:
        msg = f"{where}: {exc}; fix or remove that record."
        raise InputError(msg) from exc


def parse_published_answer(text: str) -> list[str]:
    """Labels of a published assistant message: the last <answer>...</answer> block, or the whole
    text when it has no tags; strict (an empty label is an error), unlike the paper's extraction
    (`cello.scoring.parse_answer`), which scores model completions."""
    found = _ANSWER_RE.findall(text)
    if found:
        body = found[-1]
    elif "<answer>" in text or "<think>" in text:
        msg = "the assistant message has no complete <answer>...</answer> block"
        raise ValueError(msg)
    else:
        body = text
    labels = [label.strip() for label in body.split("|")]
    if not any(labels) or not all(labels):
        msg = f"the answer {body.strip()!r} has an empty label (expected 'A | B | C')"
        raise ValueError(msg)
    return labels


def cell_id_for(genes: list[str]) -> str:
    """A stable id for a cell known only by its ranked gene list."""
    return "genes:" + hashlib.sha1("\t".join(genes).encode("utf-8")).hexdigest()[:16]


def _field(rec: dict, key: str, default: Any = None) -> Any:
    """rec[key], or `default` when absent, None, NaN (a Parquet gap) or blank."""
    value = rec.get(key)
    if value is None or (isinstance(value, float) and value != value):
        return default
    if isinstance(value, str) and not value.strip():
        return default
    return value


def _answer_labels(rec: dict) -> list[str]:
    value = _field(rec, "assistant_msg")
    if value is None:
        value = _field(rec, "answer")
    if isinstance(value, (list, tuple, np.ndarray)):
        return [str(v).strip() for v in value]
    if not isinstance(value, str):
        msg = "no assistant_msg (or answer) text"
        raise ValueError(msg)
    return parse_published_answer(value)


def _puzzle_from_record(rec: Any, *, template: PromptTemplate) -> dict:
    """The fields of one puzzle row from a published record; ValueError says what is wrong."""
    if not isinstance(rec, dict):
        msg = f"expected an object with keys {list(RECORD_KEYS)}, got a {type(rec).__name__}"
        raise ValueError(msg)
    user = rec.get("user_msg")
    if not isinstance(user, str):
        msg = "no user_msg text"
        raise ValueError(msg)
    context, genes, candidates = template.parse_user(user)
    labels = _answer_labels(rec)
    if len(labels) != len(genes):
        msg = f"the answer has {len(labels)} labels for {len(genes)} cells"
        raise ValueError(msg)
    if len(set(candidates)) != len(candidates):
        msg = f"the candidate list repeats a type: {candidates}"
        raise ValueError(msg)
    spelling = {c.lower(): c for c in candidates}
    answer = [spelling.get(label.lower(), label) for label in labels]
    if Counter(answer) != Counter(candidates):
        msg = f"the answer {answer} is not a permutation of the candidates {sorted(candidates)}"
        raise ValueError(msg)
    assistant = _field(rec, "assistant_msg")
    target = assistant if isinstance(assistant, str) and "<think>" in assistant else ""
    return {"context": context, "genes": genes, "candidates": sorted(candidates), "answer": answer, "target": target}


def records_to_puzzles(records: list, *, dataset: str, template: PromptTemplate,
                       source: str = "records") -> pd.DataFrame:
    """Published records -> a puzzles table (schema in `cello.data.schema`); pure, no I/O."""
    if not records:
        msg = f"{source}: holds no records; expected objects with keys {list(RECORD_KEYS)}."
        raise InputError(msg)
    rows, ids = [], set()
    for i, rec in enumerate(records):
        try:
            p = _puzzle_from_record(rec, template=template)
        except ValueError as exc:
            msg = (f"{source}: record {i}: {exc}. Fix or remove that record (user_msg must follow "
                   "the prompt template; the answer is 'A | B | ...' inside <answer>...</answer>).")
            raise InputError(msg) from exc
        pid = unique_id(str(_field(rec, "id", f"{dataset}-{i}")), ids)
        donor = str(_field(rec, "donor_id", "unknown"))
        rows.append({
            S.PUZZLE_ID: pid, S.DATASET: dataset, S.GROUP: str(_field(rec, "group", donor)),
            S.DONOR: donor, S.N: len(p["genes"]), S.CELL_IDS: [cell_id_for(g) for g in p["genes"]],
            S.CELL_GENES: p["genes"], S.CONTEXT: p["context"], S.CANDIDATES: p["candidates"],
            S.ANSWER: p["answer"], S.CONTEXT_FIELDS: "", S.TARGET: p["target"],
        })
    out = pd.DataFrame(rows, columns=S.PUZZLE_COLUMNS)
    out[S.N] = out[S.N].astype("int64")
    return out


def import_cellpuzzles(source: str | os.PathLike, out_path: str | os.PathLike, *, dataset: str,
                       template: PromptTemplate) -> int:
    """Read published CellPuzzles records into puzzles.parquet (atomically); return the count."""
    table = records_to_puzzles(load_records(source), dataset=dataset, template=template, source=str(source))
    with atomic_path(out_path) as tmp:
        table.to_parquet(tmp, index=False)
    log.info("imported %d puzzles from %s to %s", len(table), source, out_path)
    return len(table)

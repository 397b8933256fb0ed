"""Training records (from `cello data export` or `cello train distill`, or published CellPuzzles
records) -> datasets.

Every trainer reads its records through here (files through `cello.data.records.load_records`:
a JSON list, JSON lines or Parquet, told apart by content), so a malformed file fails in one
place with a message naming the file, the record and the missing field:

- SFT:  {"id", "dataset", "n", "messages": [system, user, assistant]}  -> column `messages`
- GRPO: {"id", "dataset", "n", "prompt": [system, user], "answer": [...], "candidates": [...]}
        (eval records, whose `messages` are [system, user], are accepted too) -> columns
        `prompt`, `answer`, `id` (TRL hands `answer` and `id` to the reward functions).
- published CellPuzzles {"system_msg", "user_msg", "assistant_msg"}: read as either kind; SFT
  needs the reasoning split (an assistant message with <think>), not a bare answer.

    from cello.train.data import read_records, sft_datasets
    train, held_out = sft_datasets(read_records("data/records/sft", kind="sft"), eval_fraction=0.02)
"""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from cello.data.prompt import PromptTemplate
from cello.data.records import as_chat_record, is_published, load_records
from cello.errors import InputError

Kind = Literal["sft", "prompt"]


def resolve_split(path: str | os.PathLike, split: str = "train") -> Path:
    """A records file as given, or `<dir>/<split>.jsonl` (or .json, .parquet) for an export directory."""
    path = Path(path)
    if path.is_dir():
        found = [path / f"{split}{ext}" for ext in (".json", ".parquet") if (path / f"{split}{ext}").is_file()]
        path = path / f"{split}.jsonl" if (path / f"{split}.jsonl").is_file() or not found else found[0]
    if not path.is_file():
        msg = (f"{path}: records not found; pass a records file (JSON list, JSON lines or Parquet) or a "
               f"directory from `cello data export` holding {split}.jsonl or {split}.json.")
        raise InputError(msg)
    return path


def _prompt_of(rec: dict[str, Any]) -> list[dict] | None:
    """The [system, user] prompt of a grpo record (`prompt`) or an eval record (`messages`)."""
    msgs = rec.get("prompt")
    if msgs is None:
        msgs = rec.get("messages")
    if not isinstance(msgs, list) or not msgs:
        return None
    msgs = [m for m in msgs if isinstance(m, dict)]
    if msgs and msgs[-1].get("role") == "assistant":  # an SFT record: drop the reply
        msgs = msgs[:-1]
    return msgs if msgs and msgs[-1].get("role") == "user" else None


def read_records(path: str | os.PathLike, *, kind: Kind, split: str = "train",
                 template: PromptTemplate | None = None) -> list[dict[str, Any]]:
    """Read and check records for a trainer.

    kind="sft": each record needs `messages` ending with an assistant turn.
    kind="prompt": each record needs a [system, user] prompt (`prompt`, or eval `messages`)
    and the gold `answer`; returned records are normalised to id, dataset, n, prompt,
    answer, candidates. Published records are read with `template` (it parses user_msg).
    """
    file = resolve_split(path, split)
    records = load_records(file)
    if not records:
        msg = f"{file}: no records; export some with `cello data export`."
        raise InputError(msg)
    out = []
    for lineno, rec in enumerate(records, 1):
        where = f"{file}: record {lineno} (id {rec.get('id', '?')!r})"
        if is_published(rec):
            rec = _from_published(rec, lineno, where, kind=kind, template=template or PromptTemplate())
        if kind == "sft":
            msgs = rec.get("messages")
            if (
                not isinstance(msgs, list)
                or not msgs
                or not isinstance(msgs[-1], dict)
                or msgs[-1].get("role") != "assistant"
            ):
                msg = (
                    f"{where}: no `messages` ending with an assistant turn; export SFT records (`--format sft`) "
                    "or run `cello train distill`."
                )
                raise InputError(msg)
            out.append(rec)
            continue
        prompt = _prompt_of(rec)
        answer = rec.get("answer")
        if prompt is None or not isinstance(answer, list) or not answer:
            msg = (
                f"{where}: needs a [system, user] `prompt` (or eval `messages`) and a gold `answer` list; "
                "export GRPO or eval records."
            )
            raise InputError(msg)
        out.append(
            {
                "id": str(rec.get("id", lineno)),
                "dataset": str(rec.get("dataset") or ""),
                "n": int(rec.get("n") or len(answer)),
                "prompt": prompt,
                "answer": [str(a) for a in answer],
                "candidates": [str(c) for c in rec.get("candidates") or sorted(answer)],
            }
        )
    return out


def _from_published(rec: dict, index: int, where: str, *, kind: Kind, template: PromptTemplate) -> dict:
    """A published CellPuzzles record as a Cello chat record, or an InputError saying why not."""
    chat = as_chat_record(rec, index=index, where=where, template=template)
    last = chat["messages"][-1]
    if kind == "sft" and (last["role"] != "assistant" or "<think>" not in last["content"]):
        msg = (
            f"{where}: the assistant_msg is a bare answer, not a <think>...</think><answer>...</answer> "
            "completion; SFT needs reasoning traces (the published `reasoning` split, `cello train distill`, "
            "or `cello data export --format sft`)."
        )
        raise InputError(msg)
    return chat


def split_eval(records: Sequence[dict], *, fraction: float, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """A seeded hold-out: (train, eval). At least one record stays in train."""
    if fraction <= 0 or len(records) < 2:
        return list(records), []
    idx = list(range(len(records)))
    random.Random(seed).shuffle(idx)
    k = min(max(1, round(fraction * len(records))), len(records) - 1)
    held = set(idx[:k])
    return [r for i, r in enumerate(records) if i not in held], [r for i, r in enumerate(records) if i in held]


def sft_datasets(
    records: Sequence[dict], *, eval_records: Sequence[dict] | None = None, eval_fraction: float = 0.0, seed: int = 0
):
    """(train, eval or None) `datasets.Dataset`s with one column, `messages`.

    An explicit `eval_records` list wins; otherwise `eval_fraction` of `records` is held out.
    """
    from datasets import Dataset

    if eval_records is None:
        records, eval_records = split_eval(records, fraction=eval_fraction, seed=seed)
    train = Dataset.from_list([{"messages": r["messages"]} for r in records])
    held = Dataset.from_list([{"messages": r["messages"]} for r in eval_records]) if eval_records else None
    return train, held


def grpo_dataset(records: Sequence[dict]):
    """A `datasets.Dataset` with `prompt` (chat messages), `answer` (gold types) and `id`."""
    from datasets import Dataset

    return Dataset.from_list([{"prompt": r["prompt"], "answer": r["answer"], "id": r["id"]} for r in records])

"""cello.train.data: records -> datasets, with errors that name the file and the record."""

from __future__ import annotations

import json

import pytest

from cello.errors import InputError
from cello.train.data import grpo_dataset, read_records, sft_datasets, split_eval


def test_read_records_directory_and_kinds(records, puzzles):
    sft = read_records(records["sft"], kind="sft")
    assert [r["id"] for r in sft] == [p["id"] for p in puzzles]
    prompts = read_records(records["grpo"], kind="prompt")
    assert prompts[0]["answer"] == puzzles[0]["answer"]
    assert [m["role"] for m in prompts[0]["prompt"]] == ["system", "user"]


def test_eval_and_sft_records_give_prompts(tmp_path, puzzles):
    p = puzzles[0]
    rows = [
        {
            "id": "e",
            "dataset": "d",
            "group": "g",
            "n": 3,
            "messages": p["prompt"],
            "answer": p["answer"],
            "candidates": p["candidates"],
        },
        {"id": "s", "messages": [*p["prompt"], {"role": "assistant", "content": "x"}], "answer": p["answer"]},
    ]
    path = tmp_path / "mixed.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = read_records(path, kind="prompt")
    assert [r["prompt"] for r in out] == [p["prompt"], p["prompt"]]  # the assistant reply is dropped


def test_bad_records_name_file_and_record(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps({"id": "x1", "messages": [{"role": "user", "content": "hi"}]}) + "\n")
    with pytest.raises(InputError, match=r"train.jsonl: record 1 \(id 'x1'\).*assistant"):
        read_records(path, kind="sft")
    with pytest.raises(InputError, match="gold `answer`"):
        read_records(path, kind="prompt")
    with pytest.raises(InputError, match="records not found"):
        read_records(tmp_path / "nothing", kind="sft")


def test_split_eval_is_seeded_and_disjoint():
    rows = [{"i": i} for i in range(50)]
    a_train, a_eval = split_eval(rows, fraction=0.1, seed=3)
    b_train, b_eval = split_eval(rows, fraction=0.1, seed=3)
    assert a_eval == b_eval and len(a_eval) == 5 and len(a_train) == 45
    assert not {r["i"] for r in a_eval} & {r["i"] for r in a_train}
    assert split_eval(rows[:1], fraction=0.5) == (rows[:1], [])


def test_datasets_columns(records):
    train, held = sft_datasets(read_records(records["sft"], kind="sft"), eval_fraction=0.25)
    assert train.column_names == ["messages"] and len(held) == 6 and len(train) == 18
    ds = grpo_dataset(read_records(records["grpo"], kind="prompt"))
    assert ds.column_names == ["prompt", "answer", "id"]

"""Tests for cello.data.records: export formats, CellPuzzles import, round trip, bad input."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from cello._io import read_jsonl
from cello.config import PuzzlesConfig
from cello.data.prompt import PromptTemplate
from cello.data.puzzles import build_puzzles
from cello.data.records import (
    FORMATS,
    cell_id_for,
    export_split,
    import_cellpuzzles,
    parse_published_answer,
    records_to_puzzles,
)
from cello.errors import ConfigError, InputError
from tests.conftest import defaults_params

TEMPLATE = PromptTemplate()


def plain(value):
    if isinstance(value, (list, tuple, np.ndarray)):
        return [plain(v) for v in value]
    return value


def make_cells() -> pd.DataFrame:
    rows = []
    for donor in ("d1", "d2"):
        for t in range(5):
            for i in range(3):
                cid = f"{donor}-T{t}-{i}"
                rows.append({"cell_id": cid, "dataset": "toy", "donor_id": donor, "batch": "",
                             "cell_type": f"Type {t}", "top_genes": [f"M{t}", f"G{i}", f"X{donor}{t}{i}"],
                             "context": f"The donor {donor} is female."})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def puzzles() -> pd.DataFrame:
    table, _ = build_puzzles(make_cells(), cfg=PuzzlesConfig(min_n=3, max_n=5, per_n=3, seed=1))
    return table


@pytest.fixture
def split_dir(tmp_path, puzzles):
    d = tmp_path / "splits"
    d.mkdir()
    puzzles.iloc[:6].to_parquet(d / "train.parquet")
    puzzles.iloc[6:].to_parquet(d / "test.parquet")
    return d


def test_sft_records(split_dir, tmp_path, puzzles):
    counts = export_split(split_dir, tmp_path / "sft", fmt="sft", template=TEMPLATE)
    assert counts == {"train": 6, "test": 3}
    recs = read_jsonl(tmp_path / "sft" / "train.jsonl")
    first = puzzles.iloc[0]
    rec = recs[0]
    assert set(rec) == {"id", "dataset", "n", "messages"}
    assert rec["id"] == first["puzzle_id"] and rec["dataset"] == "toy" and rec["n"] == first["n"]
    assert [m["role"] for m in rec["messages"]] == ["system", "user", "assistant"]
    assert rec["messages"][0]["content"] == TEMPLATE.system
    assert rec["messages"][1]["content"] == TEMPLATE.render_user(
        first["context"], plain(first["cell_genes"]), plain(first["candidates"]))
    assert rec["messages"][2]["content"] == TEMPLATE.render_answer(plain(first["answer"]))
    assert rec["messages"][2]["content"].endswith(f"<answer>{' | '.join(first['answer'])}</answer>")


def test_grpo_and_eval_records(split_dir, tmp_path, puzzles):
    export_split(split_dir, tmp_path / "grpo", fmt="grpo", template=TEMPLATE)
    export_split(split_dir, tmp_path / "eval", fmt="eval", template=TEMPLATE)
    last = puzzles.iloc[-1]
    grpo = read_jsonl(tmp_path / "grpo" / "test.jsonl")[-1]
    assert set(grpo) == {"id", "dataset", "n", "prompt", "answer", "candidates"}
    assert [m["role"] for m in grpo["prompt"]] == ["system", "user"]
    assert grpo["answer"] == plain(last["answer"]) and grpo["candidates"] == plain(last["candidates"])
    ev = read_jsonl(tmp_path / "eval" / "test.jsonl")[-1]
    assert set(ev) == {"id", "dataset", "group", "n", "messages", "answer", "candidates"}
    assert ev["group"] == last["group"] and ev["messages"] == grpo["prompt"]
    assert isinstance(ev["n"], int)


def test_cellpuzzles_round_trip(split_dir, tmp_path):
    export_split(split_dir, tmp_path / "cp", fmt="cellpuzzles", template=TEMPLATE)
    assert sorted(p.name for p in (tmp_path / "cp").iterdir()) == ["test.json", "train.json"]
    text = (tmp_path / "cp" / "train.json").read_text()
    recs = json.loads(text)
    assert text == json.dumps(recs, indent=2, ensure_ascii=False)  # the original's json.dump layout
    assert all(list(rec) == ["system_msg", "user_msg", "assistant_msg"] for rec in recs)
    orig = pd.read_parquet(split_dir / "train.parquet")
    assert recs[0]["assistant_msg"] == " | ".join(orig["answer"].iloc[0])  # bare, as published
    n = import_cellpuzzles(tmp_path / "cp" / "train.json", tmp_path / "back.parquet",
                           dataset="imported", template=TEMPLATE)
    assert n == 6
    back = pd.read_parquet(tmp_path / "back.parquet")
    assert back["puzzle_id"].tolist() == [f"imported-{i}" for i in range(6)]  # the shape has no ids
    for col in ("n", "cell_genes", "candidates", "answer", "context"):
        assert plain(back[col].tolist()) == plain(orig[col].tolist()), col
    assert set(back["dataset"]) == {"imported"} and set(back["donor_id"]) == {"unknown"}
    assert plain(back["cell_ids"].iloc[0]) == [cell_id_for(plain(g)) for g in orig["cell_genes"].iloc[0]]


def published(user: str, answer: str) -> dict:
    return {"system_msg": TEMPLATE.system, "user_msg": user, "assistant_msg": answer}


USER = TEMPLATE.render_user("A donor.", [["CD3E", "CD2"], ["MS4A1", "CD79A"]], ["B cell", "T cell"])


@pytest.mark.parametrize("suffix", [".json", ".jsonl", ".parquet", "lines.json"])
def test_import_published_shapes(tmp_path, suffix):
    recs = [published(USER, "T cell | B cell"),  # published test files: plain answer
            published(USER, "<think>CD3E is T.</think>\n<answer>t cell | b cell</answer>")]
    path = tmp_path / f"recs{suffix}"
    if suffix == ".json":
        path.write_text(json.dumps(recs))
    elif suffix == ".parquet":
        pd.DataFrame(recs).to_parquet(path)
    else:
        path.write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    assert import_cellpuzzles(path, tmp_path / "p.parquet", dataset="pub", template=TEMPLATE) == 2
    back = pd.read_parquet(tmp_path / "p.parquet")
    assert back["puzzle_id"].tolist() == ["pub-0", "pub-1"]
    assert plain(back["answer"].tolist()) == [["T cell", "B cell"]] * 2  # spelling of the candidates
    assert plain(back["candidates"].iloc[0]) == ["B cell", "T cell"]
    assert back["context"].tolist() == ["A donor."] * 2
    assert back["n"].tolist() == [2, 2]
    assert back["cell_ids"].iloc[0][0] == back["cell_ids"].iloc[1][0] == cell_id_for(["CD3E", "CD2"])


def test_parse_published_answer():
    assert parse_published_answer("<think>x</think>\n<answer> A |B | C </answer>") == ["A", "B", "C"]
    assert parse_published_answer("A | B") == ["A", "B"]
    with pytest.raises(ValueError, match="no complete"):
        parse_published_answer("<think>x</think><answer>A | B")
    with pytest.raises(ValueError, match="empty label"):
        parse_published_answer("<answer>A || B</answer>")


@pytest.mark.parametrize("bad, problem", [
    ({"system_msg": "s", "assistant_msg": "A | B"}, "no user_msg"),
    (published(USER, "T cell"), "1 labels for 2 cells"),
    (published(USER, "T cell | NK cell"), "not a permutation"),
    (published(USER, "<answer>T cell | B cell"), "no complete"),
    (published("Cell 1: A\nno instruction", "T cell"), "candidate list"),
    ({"system_msg": "s", "user_msg": USER}, "no assistant_msg"),
    ("just a string", "expected an object"),
])
def test_bad_records_name_file_and_index(tmp_path, bad, problem):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps([published(USER, "T cell | B cell"), bad]))
    out = tmp_path / "out.parquet"
    with pytest.raises(InputError) as exc:
        import_cellpuzzles(path, out, dataset="x", template=TEMPLATE)
    assert str(path) in str(exc.value) and "record 1" in str(exc.value) and problem in str(exc.value)
    assert not out.exists()


def test_bad_files(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        import_cellpuzzles(tmp_path / "absent.json", tmp_path / "o.parquet", dataset="x", template=TEMPLATE)
    (tmp_path / "r.csv").write_text("a,b\n")
    with pytest.raises(InputError, match="neither a JSON list, JSON lines nor Parquet"):
        import_cellpuzzles(tmp_path / "r.csv", tmp_path / "o.parquet", dataset="x", template=TEMPLATE)
    (tmp_path / "empty.json").write_text("[]")
    with pytest.raises(InputError, match="no records"):
        import_cellpuzzles(tmp_path / "empty.json", tmp_path / "o.parquet", dataset="x", template=TEMPLATE)
    (tmp_path / "obj.json").write_text('{"a": 1}')
    with pytest.raises(InputError, match="record 0: no user_msg"):
        import_cellpuzzles(tmp_path / "obj.json", tmp_path / "o.parquet", dataset="x", template=TEMPLATE)
    assert not (tmp_path / "o.parquet").exists()


def test_duplicate_ids_made_unique():
    recs = [{**published(USER, "T cell | B cell"), "id": "p"}] * 3
    table = records_to_puzzles(recs, dataset="x", template=TEMPLATE)
    assert table["puzzle_id"].tolist() == ["p", "p-2", "p-3"]


def test_export_errors(tmp_path, split_dir):
    with pytest.raises(ConfigError) as exc:
        export_split(split_dir, tmp_path / "o", fmt="chat", template=TEMPLATE)
    assert all(f in str(exc.value) for f in FORMATS)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="no train.parquet or test.parquet"):
        export_split(empty, tmp_path / "o", fmt="sft", template=TEMPLATE)
    assert not (tmp_path / "o").exists()


def test_export_only_present_splits(tmp_path, split_dir):
    (split_dir / "train.parquet").unlink()
    counts = export_split(split_dir, tmp_path / "o", fmt="eval", template=TEMPLATE)
    assert counts == {"test": 3}
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["test.jsonl"]


def test_cli_export_and_import(tmp_path, split_dir, capsys):
    from cello.cli import main

    none = defaults_params(tmp_path)
    out = tmp_path / "cp"
    assert main(["data", "export", str(split_dir), "-o", str(out), "--format", "cellpuzzles", "--params", none]) == 0
    assert "train: 6 records, test: 3 records" in capsys.readouterr().out
    assert main(["data", "import", str(out / "test.json"), "-o", str(tmp_path / "p.parquet"), "--params", none]) == 0
    assert len(pd.read_parquet(tmp_path / "p.parquet")) == 3
    assert main(["data", "export", str(split_dir), "-o", str(out), "--format", "chat", "--params", none]) == 2
    assert "sft, grpo, eval, cellpuzzles" in capsys.readouterr().err

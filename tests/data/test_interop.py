"""Interoperability with the original Cell-o1 data: the cell-o1 prompt profile, the published
CellPuzzles shape written and read back byte for byte, and one records loader for every command.

tests/fixtures/cellpuzzles_published.json holds records in the published shape (written by hand
from the original pipeline's rendering rules, quirks included), and cellpuzzles_sources.json the
obs fields, gene lists and cell types each was made from.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cello.config import PuzzlesConfig
from cello.data import schema as S
from cello.data.context import cell_o1_sentence, clean
from cello.data.prompt import PromptTemplate
from cello.data.puzzles import build_puzzles
from cello.data.records import export_split, import_cellpuzzles, load_records, puzzle_record
from cello.errors import InputError
from tests.conftest import defaults_params

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
PUBLISHED = FIXTURES / "cellpuzzles_published.json"
CELL_O1 = PromptTemplate(profile="cell-o1")


def published() -> list[dict]:
    return json.loads(PUBLISHED.read_text(encoding="utf-8"))


def sources() -> list[dict]:
    return json.loads((FIXTURES / "cellpuzzles_sources.json").read_text(encoding="utf-8"))


def cells_from_sources() -> pd.DataFrame:
    """A cells table as `cello data cells` writes it: one dataset per source, ctx_ columns cleaned."""
    rows = []
    for k, src in enumerate(sources()):
        for genes, ctype in zip(src["cells"], src["types"], strict=True):
            row = {S.CELL_ID: f"src{k}:{genes[0]}", S.DATASET: f"src{k}", S.DONOR: "d", S.BATCH: "",
                   S.CELL_TYPE: ctype, S.TOP_GENES: genes, S.CONTEXT: "Cello's sentence."}
            row.update({S.CTX_PREFIX + name: clean(value) for name, value in src["fields"].items()})
            rows.append(row)
    return pd.DataFrame(rows)


def in_source_order(row: dict, src: dict) -> dict:
    """The puzzle row with its cells in the order the published record lists them."""
    order = [list(row[S.ANSWER]).index(t) for t in src["types"]]
    return {**row, S.CELL_GENES: [list(row[S.CELL_GENES][i]) for i in order], S.ANSWER: list(src["types"])}


def test_cell_o1_profile_renders_the_published_records_character_by_character():
    puzzles, _ = build_puzzles(cells_from_sources(), cfg=PuzzlesConfig(min_n=2, max_n=3, per_n=1, seed=0))
    for k, (src, want) in enumerate(zip(sources(), published(), strict=True)):
        row = puzzles[(puzzles[S.DATASET] == f"src{k}") & (puzzles[S.N] == len(src["types"]))].iloc[0].to_dict()
        got = puzzle_record(in_source_order(row, src), fmt="cellpuzzles", template=CELL_O1)
        assert list(got) == ["system_msg", "user_msg", "assistant_msg"]
        for key in got:
            assert got[key] == want[key], (k, key)
        cello = puzzle_record(in_source_order(row, src), fmt="cellpuzzles", template=PromptTemplate())
        assert cello["user_msg"].startswith("Context: Cello's sentence.\n\n")  # the default is unchanged


def test_cell_o1_sentence_quirks():
    assert cell_o1_sentence({"tissue": "blood", "disease": "normal"}) == (
        "The cell is from, originating from the blood. The patient is healthy with no diagnosed disease. ")
    male = "The cell is from a male, originating from the kidney "
    assert cell_o1_sentence({"sex": "male", "tissue": "kidney"}) == male
    assert cell_o1_sentence({}) == "The cell is from "
    assert cell_o1_sentence({"disease": "COVID-19", "smoker": "yes"}, extra=["smoker"]) == (
        "The cell is from. The patient has been diagnosed with COVID-19. Smoker: yes. ")


def test_published_records_round_trip_byte_for_byte(tmp_path):
    splits = tmp_path / "splits"
    splits.mkdir()
    assert import_cellpuzzles(PUBLISHED, splits / "test.parquet", dataset="pub", template=CELL_O1) == 3
    export_split(splits, tmp_path / "out", fmt="cellpuzzles", template=CELL_O1)
    assert (tmp_path / "out" / "test.json").read_bytes() == PUBLISHED.read_bytes()


def test_reasoning_targets_are_kept(tmp_path):
    recs = published()
    think = "<think>UMOD marks the thick ascending limb.</think>\n<answer>" + recs[2]["assistant_msg"] + "</answer>"
    recs[2]["assistant_msg"] = think
    (tmp_path / "r.json").write_text(json.dumps(recs))
    splits = tmp_path / "splits"
    import_cellpuzzles(tmp_path / "r.json", splits / "train.parquet", dataset="pub", template=CELL_O1)
    export_split(splits, tmp_path / "cp", fmt="cellpuzzles", template=CELL_O1)
    assert [r["assistant_msg"] for r in json.loads((tmp_path / "cp" / "train.json").read_text())] == \
        [recs[0]["assistant_msg"], recs[1]["assistant_msg"], think]
    export_split(splits, tmp_path / "sft", fmt="sft", template=CELL_O1)
    lines = (tmp_path / "sft" / "train.jsonl").read_text().splitlines()
    assert json.loads(lines[2])["messages"][-1]["content"] == think


# ---------------------------------------------------------------- one loader
RECS = [{"system_msg": "s", "user_msg": "u", "assistant_msg": "A | B"}, {"system_msg": "s2", "user_msg": "u2"}]


@pytest.mark.parametrize("shape", ["list", "lines", "parquet", "list-named-jsonl", "lines-named-json"])
def test_load_records_tells_the_format_from_the_content(tmp_path, shape):
    path = tmp_path / {"list": "r.json", "lines": "r.jsonl", "parquet": "r.data",
                       "list-named-jsonl": "r.jsonl", "lines-named-json": "r.json"}[shape]
    if shape == "parquet":
        pd.DataFrame(RECS).to_parquet(path)
    elif shape.startswith("list"):
        path.write_text("\n" + json.dumps(RECS, indent=2))
    else:
        path.write_text("\n".join(json.dumps(r) for r in RECS) + "\n")
    got = load_records(path)
    assert [r["user_msg"] for r in got] == ["u", "u2"]
    assert got[0]["assistant_msg"] == "A | B"


def test_load_records_errors(tmp_path):
    (tmp_path / "one.json").write_text(json.dumps(RECS[0], indent=2))
    assert load_records(tmp_path / "one.json") == [RECS[0]]
    cases = {"r.csv": ("a,b\n1,2\n", "neither a JSON list, JSON lines nor Parquet"),
             "broken.json": ('[{"a": 1},', "starts like a JSON list but is not valid JSON"),
             "nums.json": ("[1, 2]", "record 0 of the JSON list is a int"),
             "badline.jsonl": ('{"a": 1}\n{"a": \n', "badline.jsonl:2: not valid JSON"),
             "fake.parquet": ("PAR1 not really", "not a readable Parquet file")}
    for name, (text, problem) in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(InputError, match=problem) as exc:
            load_records(tmp_path / name)
        assert str(tmp_path / name) in str(exc.value)
    with pytest.raises(InputError, match="no such file"):
        load_records(tmp_path / "absent.json")


def test_eval_reads_published_records_verbatim(tmp_path, capsys):
    from cello.cli import main
    from cello.evaluate import load_eval_items

    items = load_eval_items(PUBLISHED, template=CELL_O1)
    for it, rec in zip(items, published(), strict=True):
        assert it["messages"] == [{"role": "system", "content": rec["system_msg"]},
                                  {"role": "user", "content": rec["user_msg"]}]
        assert it["answer"] == [a.strip() for a in rec["assistant_msg"].split("|")]
    assert [it["candidates"] for it in items][1] == ["B cell", "T cell", "natural killer cell"]
    out = tmp_path / "eval"
    assert main(["eval", str(PUBLISHED), "--baseline", "chance", "-o", str(out), "--prompt", "cell-o1",
                 "--no-progress", "--params", defaults_params(tmp_path)]) == 0
    assert json.loads((out / "metrics.json").read_text())["overall"]["count"] == 3


def test_user_turn_layout_prompts_as_the_released_evaluation(tmp_path):
    """`prompt.layout: user-turn`: one user message, the question, a newline, the system text, for
    records read as they are and for puzzles rendered by the template alike."""
    from cello.cli import main
    from cello.evaluate import load_eval_items

    user_turn = CELL_O1.model_copy(update={"layout": "user-turn"})
    items = load_eval_items(PUBLISHED, template=user_turn)
    for it, rec in zip(items, published(), strict=True):
        assert it["messages"] == [{"role": "user", "content": rec["user_msg"] + "\n" + rec["system_msg"]}]
    rendered = user_turn.messages("ctx", [["CD3D", "CD3E"]], ["T cell"])
    assert rendered == [{"role": "user", "content": user_turn.render_user("ctx", [["CD3D", "CD3E"]], ["T cell"])
                         + "\n" + user_turn.system}]
    assert CELL_O1.messages("ctx", [["CD3D"]], ["T cell"])[0]["role"] == "system"  # the default keeps both
    out = tmp_path / "eval"
    assert main(["eval", str(PUBLISHED), "--baseline", "chance", "-o", str(out), "--prompt-layout", "user-turn",
                 "--no-progress", "--params", defaults_params(tmp_path)]) == 0
    assert main(["eval", str(PUBLISHED), "--baseline", "chance", "-o", str(tmp_path / "bad"),
                 "--prompt-layout", "one-turn", "--params", defaults_params(tmp_path)]) == 2


def test_train_reads_published_records(tmp_path):
    from cello.train.data import read_records

    prompts = read_records(PUBLISHED, kind="prompt")
    assert prompts[2]["answer"] == ["kidney loop of Henle thick ascending limb epithelial cell", "podocyte"]
    assert prompts[0]["prompt"][1]["content"] == published()[0]["user_msg"]
    with pytest.raises(InputError, match="bare answer"):
        read_records(PUBLISHED, kind="sft")
    recs = published()
    recs[0]["assistant_msg"] = "<think>x</think>\n<answer>" + recs[0]["assistant_msg"] + "</answer>"
    pd.DataFrame(recs[:1]).to_parquet(tmp_path / "train.parquet")
    sft = read_records(tmp_path, kind="sft")  # a directory holding train.parquet
    assert sft[0]["messages"][-1] == {"role": "assistant", "content": recs[0]["assistant_msg"]}


def test_cli_prompt_flag(tmp_path):
    from cello.cli import main

    none = defaults_params(tmp_path)
    splits = tmp_path / "splits"
    assert main(["data", "import", str(PUBLISHED), "-o", str(splits / "test.parquet"), "--prompt", "cell-o1",
                 "--params", none]) == 0
    assert main(["data", "export", str(splits), "-o", str(tmp_path / "cp"), "--format", "cellpuzzles",
                 "--prompt", "cell-o1", "--params", none]) == 0
    assert (tmp_path / "cp" / "test.json").read_bytes() == PUBLISHED.read_bytes()
    assert main(["data", "audit", str(PUBLISHED), str(tmp_path / "cp" / "test.json"), "--prompt", "cell-o1",
                 "--params", none]) == 0
    assert main(["data", "export", str(splits), "-o", str(tmp_path / "x"), "--format", "sft", "--prompt", "o1",
                 "--params", none]) == 2
    table = pd.read_parquet(splits / "test.parquet")
    assert table[S.CONTEXT].iloc[1] == "The cell is from, originating from the blood. " \
        "The patient is healthy with no diagnosed disease. "
    assert np.all(table[S.CONTEXT_FIELDS] == "")


def test_serve_words_field_contexts_by_the_profile():
    from cello.serve.schema import parse_puzzles

    fields = {"sex": "unknown", "tissue": "blood", "disease": "normal"}
    (p,) = parse_puzzles([{"context": fields, "cells": [["CD3E"], ["MS4A1"]], "candidates": ["B cell", "T cell"]}])
    assert p.context_for("cell-o1") == "The cell is from, originating from the blood. " \
        "The patient is healthy with no diagnosed disease. "
    assert p.context_for("cello") == p.context == "The sample was taken from the blood. The donor is healthy."
    (q,) = parse_puzzles([{"context": "A donor.", "cells": [["CD3E"], ["MS4A1"]], "candidates": ["B cell", "T cell"]}])
    assert q.context_for("cell-o1") == "A donor."


def test_baseline_solves_published_records(tmp_path):
    """`cello baseline predict` reads published CellPuzzles (a JSON list) like every other reader."""
    from cello.baselines import load_puzzles

    puzzles = load_puzzles(PUBLISHED)
    assert [p["answer"] for p in puzzles] == [[a.strip() for a in r["assistant_msg"].split("|")] for r in published()]
    jsonl = tmp_path / "test.json"  # JSON lines under a .json name: told apart by content
    jsonl.write_text("".join(json.dumps(p) + "\n" for p in puzzles), encoding="utf-8")
    assert [p["id"] for p in load_puzzles(jsonl)] == [p["id"] for p in puzzles]

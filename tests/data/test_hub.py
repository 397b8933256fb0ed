"""Tests for cello.data.hub: Hub references, the import of a dataset in the Hub's layout (built
here, in tmp, with the published field names), lineage, audit, and the Hub's error paths."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cello._io import read_jsonl
from cello.data.hub import HubRef, import_hub, is_hub_source, load_hub_splits, parse_hub_uri
from cello.data.prompt import PromptTemplate
from cello.errors import ConfigError, InputError
from cello.lineage import data_version_of

TEMPLATE = PromptTemplate()
TYPES = ["B cell", "T cell", "NK cell", "monocyte"]


def _genes(split: str, i: int, t: int) -> list[str]:
    # test puzzle 0 reuses train puzzle 0's cells: the audit must find it
    tag = "train" if (split == "test" and i == 0) else split
    return [f"M{t}", f"{tag.upper()}{i}G{t}", "ACTB"]


def published_rows(split: str, n_rows: int, *, trace: bool) -> list[dict]:
    """Rows in the published shape: a system message, the user prompt, the assistant answer."""
    rows = []
    for i in range(n_rows):
        n = 3 + i % 2
        order = [(i + k) % n for k in range(n)]  # cell k has type order[k]
        cells = [_genes(split, i, t) for t in order]
        candidates = sorted(TYPES[:n])
        answer = " | ".join(TYPES[t] for t in order)
        body = (f"<think>Cell 1 expresses M{order[0]}; every candidate once.</think>\n<answer>{answer}</answer>"
                if trace else answer)
        rows.append({"system_msg": TEMPLATE.system,
                     "user_msg": TEMPLATE.render_user(f"The {split} donor {i} is female.", cells, candidates),
                     "assistant_msg": body})
    return rows


def hub_dir(root, sizes=(("train", 4), ("test", 3), ("reasoning", 5)), fields=None):
    """A dataset directory in the Hub's layout: data/<split>-00000-of-00001.parquet."""
    (root / "data").mkdir(parents=True)
    for split, n in sizes:
        rows = published_rows(split, n, trace=split == "reasoning")
        cols = {f: [r[f] for r in rows] for f in (fields or ("system_msg", "user_msg", "assistant_msg"))}
        pq.write_table(pa.table(cols), root / "data" / f"{split}-00000-of-00001.parquet")
    return root


@pytest.fixture
def cache(tmp_path):
    return tmp_path / "hf-cache"


def test_parse_hub_uri_forms():
    assert parse_hub_uri("hf://ncbi/CellPuzzles") == HubRef("ncbi/CellPuzzles")
    assert parse_hub_uri("hf://ncbi/CellPuzzles@v1.0:test") == HubRef("ncbi/CellPuzzles", "v1.0", "test")
    assert parse_hub_uri("hf://ncbi/CellPuzzles:reasoning") == HubRef("ncbi/CellPuzzles", None, "reasoning")
    model = parse_hub_uri("hf://ncbi/Cell-o1@abc123", model=True)
    assert model == HubRef("ncbi/Cell-o1", "abc123") and model.kserve_uri() == "hf://ncbi/Cell-o1:abc123"
    assert parse_hub_uri("hf://ncbi/Cell-o1:abc123", model=True).revision == "abc123"  # KServe's form
    assert parse_hub_uri("hf://ncbi/Cell-o1", model=True).kserve_uri() == "hf://ncbi/Cell-o1"
    assert str(HubRef("ncbi/CellPuzzles", "main", "test")) == "hf://ncbi/CellPuzzles@main:test"
    for bad in ("hf://ncbi", "hf://a/b/c", "ncbi/CellPuzzles", "hf://ncbi/x:y:z"):
        with pytest.raises(ConfigError, match="not a Hub reference"):
            parse_hub_uri(bad)


def test_import_all_splits_from_hub_layout(tmp_path, cache):
    src = hub_dir(tmp_path / "CellPuzzles")
    assert is_hub_source(str(src)) and is_hub_source(f"{src}:test") and not is_hub_source(str(tmp_path))
    result = import_hub(src, tmp_path / "out", dataset="cellpuzzles", template=TEMPLATE, cache_dir=cache)
    out = tmp_path / "out"
    assert result.counts == {"train": 4, "test": 3, "reasoning": 5}
    # SFT records from `reasoning`: the published messages verbatim, traces kept
    sft = read_jsonl(out / "records" / "sft" / "train.jsonl")
    pub = published_rows("reasoning", 5, trace=True)
    assert [m["role"] for m in sft[0]["messages"]] == ["system", "user", "assistant"]
    assert [r["messages"][2]["content"] for r in sft] == [r["assistant_msg"] for r in pub]
    assert sft[0]["messages"][1]["content"] == pub[0]["user_msg"] and sft[0]["id"] == "reasoning-00000"
    # GRPO from `train`, eval from `test`: the prompt verbatim, gold answer and candidates parsed
    grpo = read_jsonl(out / "records" / "grpo" / "train.jsonl")
    assert grpo[1]["prompt"][1]["content"] == published_rows("train", 4, trace=False)[1]["user_msg"]
    assert grpo[1]["answer"] == ["T cell", "NK cell", "monocyte", "B cell"] and grpo[1]["n"] == 4
    ev = read_jsonl(out / "records" / "eval" / "test.jsonl")
    assert [m["role"] for m in ev[0]["messages"]] == ["system", "user"]
    assert ev[0]["candidates"] == sorted(TYPES[:3]) and ev[0]["answer"] == ["B cell", "T cell", "NK cell"]
    # traces scored with the paper's rules; the audit finds the one shared puzzle
    assert result.traces == {"total": 5, "valid": 5, "correct": 5}
    audit = json.loads((out / "audit.json").read_text())
    assert audit["train"]["test_sharing_identical_cell"] == 1 and audit["reasoning"]["test_sharing_identical_cell"] == 0
    # lineage: the local copy's content hash is the data version that eval and the gate record
    lineage = json.loads((out / "lineage.json").read_text())
    assert lineage["hub"]["version"].startswith("dir:") and len(lineage["hub"]["content_sha256"]) == 64
    version = data_version_of(out / "records" / "eval" / "test.jsonl")
    assert version["version"] == lineage["hub"]["version"] and version["records"] == "records/eval/test.jsonl"
    assert "audit vs train: 1 of 3 test puzzles" in result.render()


def test_import_one_split_and_cli(tmp_path, cache, monkeypatch):
    from typer.testing import CliRunner

    from cello.cli import app
    from tests.conftest import defaults_params

    src = hub_dir(tmp_path / "CP")
    monkeypatch.setattr("datasets.config.HF_DATASETS_CACHE", str(cache))
    res = CliRunner().invoke(app, ["data", "import", f"{src}:test", "-o", str(tmp_path / "one"),
                                   "--params", defaults_params(tmp_path)])
    assert res.exit_code == 0, res.output
    assert "test: 3 puzzles" in res.output
    assert sorted(p.name for p in (tmp_path / "one" / "splits").iterdir()) == ["test.parquet"]
    assert not (tmp_path / "one" / "audit.json").exists()  # nothing to audit against


def test_content_hash_changes_with_the_data(tmp_path, cache):
    a = load_hub_splits(hub_dir(tmp_path / "a"), cache_dir=cache).origin["version"]
    b = load_hub_splits(hub_dir(tmp_path / "b", sizes=(("test", 2),)), cache_dir=cache).origin["version"]
    assert a != b and load_hub_splits(tmp_path / "a", cache_dir=cache).origin["version"] == a


def test_missing_split_and_fields_are_named(tmp_path, cache):
    src = hub_dir(tmp_path / "CP", sizes=(("test", 2),))
    with pytest.raises(InputError, match=r"no split 'reasoning'; it has \['test'\]"):
        load_hub_splits(f"{src}:reasoning", cache_dir=cache)
    bad = hub_dir(tmp_path / "bad", fields=("system_msg", "user_msg"))
    with pytest.raises(InputError, match=r"lacks field\(s\) \['assistant_msg'\]"):
        import_hub(bad, tmp_path / "o", dataset="x", template=TEMPLATE, cache_dir=cache)
    assert not (tmp_path / "o").exists()  # nothing half-written
    with pytest.raises(InputError, match="neither hf://"):
        load_hub_splits(tmp_path, cache_dir=cache)


def test_a_bad_record_names_split_and_record(tmp_path, cache):
    src = hub_dir(tmp_path / "CP", sizes=(("test", 2),))
    table = pq.read_table(src / "data" / "test-00000-of-00001.parquet").to_pylist()
    table[1]["assistant_msg"] = "B cell | B cell | T cell | NK cell"
    pq.write_table(pa.Table.from_pylist(table), src / "data" / "test-00000-of-00001.parquet")
    with pytest.raises(InputError, match=r"split test\): record 1: .*not a permutation"):
        import_hub(src, tmp_path / "o", dataset="x", template=TEMPLATE, cache_dir=cache)
    assert not (tmp_path / "o").exists()


def test_no_network_gives_a_clear_error(tmp_path, cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # read at import: the constant says it for this process
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    with pytest.raises(InputError, match=r"cannot reach the Hugging Face Hub \(HF_HUB_OFFLINE is set\).*hf download"):
        import_hub("hf://cello-nonexistent-org/no-such-dataset@main", tmp_path / "o", dataset="x",
                   template=TEMPLATE, cache_dir=cache)
    assert not (tmp_path / "o").exists()

"""The pipeline's data step with `data.source` set to a published dataset (a Hub-layout directory
built in tmp, read through the same `datasets` call as hf://ncbi/CellPuzzles): no DVC build, the
import in the layout the later stages read, and the data version every stage records."""

from __future__ import annotations

import json

from cello.lineage import data_version_of
from cello.pipeline import data as pdata
from cello.pipeline.run import Run
from tests.conftest import REPO
from tests.data.test_hub import hub_dir


def test_a_published_dataset_is_the_pipelines_data(tmp_path, monkeypatch):
    monkeypatch.setattr("datasets.config.HF_DATASETS_CACHE", str(tmp_path / "datasets-cache"))
    source = str(hub_dir(tmp_path / "CellPuzzles"))
    prep = pdata.prepare(repo=str(REPO), revision="", profile="", overrides={"data.source": source},
                         workdir=str(tmp_path / "work"), run_id="hub")
    assert prep.inputs == [source] and pdata.list_inputs(prep.data_dir) == [source]
    assert pdata.cells_part(data_dir=prep.data_dir, source=source) == ""  # nothing to rank
    summary = pdata.build(data_dir=prep.data_dir, parts=[""])
    assert summary["records"] == {"eval/test": 3, "grpo/train": 4, "sft/train": 5}
    assert summary["split"] == {"train_total": 4, "test_total": 3, "reasoning_total": 5}
    version = summary["version"]["version"]
    assert version.startswith("dir:") and summary["version"]["source"] == source
    p = pdata.paths(prep.data_dir)
    assert p["train_puzzles"].is_file() and p["test_puzzles"].is_file() and (p["sft"] / "train.jsonl").is_file()
    published = json.loads(p["eval"].read_text().splitlines()[0])["messages"][1]["content"]
    assert published.startswith("Context: The test donor 0 is female.")  # the prompt as published
    assert data_version_of(p["eval"])["version"] == version  # what eval and the gate record
    assert Run.open(prep.run_dir).lineage_for(prep.data_dir)["data"]["version"] == version
    text, numbers = pdata.card(summary)
    assert f"Data version `{version}`" in text and numbers["test_total"] == 3.0
    assert pdata.build(data_dir=prep.data_dir, parts=[""])["version"]["version"] == version  # built once

"""cello.card: the model card of a checkpoint (Hub metadata, provenance, eval and gate sections)."""

from __future__ import annotations

import json

import pytest
import yaml

from cello.card import CARD, changed_settings, find_card_dir, read_card, update_section, write_card
from cello.config import GRPOStageConfig, SFTStageConfig
from cello.lineage import data_version_of, dvc_data_version


def versioned_records(root, kinds=("sft", "grpo", "eval")):
    """A project folder whose dvc.lock lists data/records/<kind> (as `dvc repro` writes it)."""
    stages = {f"export_{k}": {"cmd": "x", "outs": [{"path": f"data/records/{k}", "md5": f"{i:032x}.dir"}]}
              for i, k in enumerate(kinds, start=1)}
    root.mkdir(parents=True, exist_ok=True)
    (root / "dvc.lock").write_text(yaml.safe_dump({"schema": "2.0", "stages": stages}))
    for k in kinds:
        (root / "data" / "records" / k).mkdir(parents=True)
        (root / "data" / "records" / k / "train.jsonl").write_text("{}\n")
    return root / "data" / "records"


def test_data_version_is_found_from_a_file_under_the_records(tmp_path):
    records = versioned_records(tmp_path)
    found = data_version_of(records / "sft" / "train.jsonl")
    assert found["version"] == dvc_data_version(tmp_path / "dvc.lock")["version"]
    assert (found["records"], found["md5"]) == ("data/records/sft", f"{1:032x}.dir")
    assert data_version_of(tmp_path / "elsewhere.jsonl") is None  # not an output dvc.lock lists


def test_changed_settings_are_dotted_and_skip_the_model():
    cfg = SFTStageConfig(model="some/model", epochs=2, lora={"r": 8, "alpha": 16})
    assert changed_settings(cfg) == {"epochs": 2.0, "lora.r": 8, "lora.alpha": 16}
    assert changed_settings(GRPOStageConfig()) == {}


def test_card_metadata_provenance_and_idempotent_sections(tmp_path):
    records = versioned_records(tmp_path / "project")
    model = tmp_path / "sft" / "model"
    model.mkdir(parents=True)
    (model / CARD).write_text("# a blank card PEFT wrote\n")
    write_card(model, stage="sft", base_model="Qwen/Qwen2.5-7B-Instruct", records=records / "sft" / "train.jsonl",
               changed={"epochs": 2}, curves={"loss": [[1, 2.5], [10, 0.75]]}, adapter=True)
    meta = read_card(model)
    version = dvc_data_version(tmp_path / "project" / "dvc.lock")["version"]
    assert meta["base_model"] == "Qwen/Qwen2.5-7B-Instruct" and meta["library_name"] == "peft"
    assert meta["datasets"] == [f"cellpuzzles-{version}"] and "sft" in meta["tags"]
    assert meta["cello"]["data_version"] == version and meta["cello"]["curves_last"] == {"loss": 0.75}
    text = (model / CARD).read_text()
    assert "blank card" not in text and "| `epochs` | `2` |" in text and "| loss | 10 | 0.75 |" in text
    assert "git `" in text
    for _ in range(2):  # a rerun replaces its section
        update_section(model, "eval", "## Evaluation\n\nbatch accuracy 0.5")
        update_section(model, "gate", "## Gate: PASS")
    update_section(model, "eval", "## Evaluation\n\nbatch accuracy 0.6")
    text = (model / CARD).read_text()
    assert text.count("## Evaluation") == 1 and "0.6" in text and "0.5" not in text
    assert text.count("## Gate") == 1 and text.index("## Evaluation") < text.index("## Gate")
    assert find_card_dir(tmp_path / "sft") == model and find_card_dir(f"hf:{model}") == model
    assert find_card_dir("http://localhost:8000/v1") is None and find_card_dir(tmp_path) is None


def test_the_card_parses_as_a_hub_model_card(tmp_path):
    hub = pytest.importorskip("huggingface_hub")
    model = tmp_path / "m"
    model.mkdir()
    write_card(model, stage="grpo", base_model=str(tmp_path / "local-base"), records=None,
               curves={"reward": [[3, 0.25]]})
    update_section(model, "eval", "## Evaluation\n\n| a | b |\n|---|---|\n| 1 | 2 |")
    card = hub.ModelCard.load(model / CARD)
    assert card.data.library_name == "transformers" and card.data.license == "other"
    assert "grpo" in card.data.tags and card.data.base_model is None  # a local path is no Hub id
    assert hub.ModelCardData(**card.data.to_dict()).to_dict() == card.data.to_dict()
    assert "## Evaluation" in card.text


def test_a_merged_card_carries_its_sources_provenance(tmp_path):
    records = versioned_records(tmp_path / "project")
    sft = tmp_path / "sft"
    sft.mkdir()
    write_card(sft, stage="sft", base_model="Qwen/Qwen2.5-7B-Instruct", records=records / "sft",
               changed={"epochs": 3}, curves={"loss": [[5, 0.5]]}, adapter=True)
    merged = tmp_path / "merged"
    merged.mkdir()
    write_card(merged, stage="merged", base_model=None, records=None, parent=read_card(sft))
    meta = read_card(merged)
    assert meta["base_model"] == "Qwen/Qwen2.5-7B-Instruct" and meta["library_name"] == "transformers"
    assert meta["cello"]["data_version"] == read_card(sft)["cello"]["data_version"]
    assert meta["cello"]["settings_changed"] == {"epochs": 3}
    assert json.dumps(meta)  # plain data, nothing YAML-only

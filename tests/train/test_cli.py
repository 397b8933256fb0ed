"""`cello train ...` from the command line: --help for each sub-command, and the CPU chain
tiny model -> SFT -> merge -> GRPO on the demo data (pbmc68k from scanpy), all in-process."""

from __future__ import annotations

import json

import pytest
import yaml

from cello.cli import main
from tests.conftest import REPO


@pytest.mark.parametrize("sub", ["sft", "merge", "grpo", "distill"])
def test_help(sub, capsys):
    assert main(["train", sub, "--help"]) == 0
    assert "--out" in capsys.readouterr().out


def test_bad_option_is_a_clear_error(tmp_path, records, capsys):
    params = tmp_path / "p.yaml"
    params.write_text(yaml.safe_dump({"train": {"sft": {"trl": {"learning_rate": 1.0}}}}))
    assert main(["train", "sft", str(records["sft"]), "-o", str(tmp_path / "o"), "--params", str(params)]) == 2
    assert "set by Cello's own fields" in capsys.readouterr().err


@pytest.mark.slow
def test_cpu_chain_on_demo_data(tmp_path, demo_data):
    """The whole chain through the CLI; the SFT loss falls and GRPO starts from the merged SFT model."""
    params = tmp_path / "params.yaml"
    doc = yaml.safe_load((REPO / "params.yaml").read_text())
    doc.pop("profiles", None)
    doc["train"] = {
        "sft": {
            "lora": {"r": 8, "alpha": 16, "dropout": 0.0, "modules_to_save": ["embed_tokens"]},
            "learning_rate": 5e-3,
            "max_steps": 6,
            "effective_batch_size": 2,
            "per_device_batch_size": 2,
            "gradient_checkpointing": False,
            "report_to": ["tensorboard"],
            "logging_steps": 1,
            "eval_fraction": 0.0,
        },
        "grpo": {
            "learning_rate": 1e-4,
            "max_steps": 2,
            "per_device_batch_size": 4,
            "num_generations": 2,
            "prompts_per_step": 2,
            "max_completion_length": 8,
            "gradient_checkpointing": False,
            "report_to": ["none"],
            "logging_steps": 1,
        },
    }
    params.write_text(yaml.safe_dump(doc))
    p = ["--params", str(params)]
    rec = tmp_path / "records"
    for fmt in ("sft", "grpo"):
        assert main(["data", "export", str(demo_data / "splits"), "-o", str(rec / fmt), "-f", fmt, *p]) == 0
    assert main(["model", "tiny", "-o", str(tmp_path / "tiny"), "--corpus", str(rec / "sft" / "train.jsonl"), *p]) == 0
    assert (
        main(["train", "sft", str(rec / "sft"), "-o", str(tmp_path / "sft"), "--model", str(tmp_path / "tiny"), *p])
        == 0
    )
    assert main(["train", "merge", str(tmp_path / "sft"), "-o", str(tmp_path / "merged")]) == 0
    assert (
        main(
            ["train", "grpo", str(rec / "grpo"), "-o", str(tmp_path / "grpo"), "--model", str(tmp_path / "merged"), *p]
        )
        == 0
    )

    sft = json.loads((tmp_path / "sft" / "summary.json").read_text())
    loss = [v for _, v in sft["curves"]["loss"]]
    assert len(loss) == 6 and loss[-1] < loss[0]
    assert any((tmp_path / "sft" / "runs").rglob("events.out.tfevents*"))  # TensorBoard by default
    grpo = json.loads((tmp_path / "grpo" / "summary.json").read_text())
    assert grpo["global_step"] == 2 and {"reward", "format_rate", "batch_accuracy", "kl"} <= set(grpo["curves"])
    assert (tmp_path / "grpo" / "model" / "config.json").exists()

"""SFT: assistant-only labels, a loss that falls, resume after a stop, torchrun with 2 CPU processes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cello.errors import ConfigError
from cello.train import sft as sft_mod
from cello.train.common import read_summary
from cello.train.sft import build_sft_trainer, run_sft
from tests.train.conftest import sft_cfg

REPO = Path(__file__).resolve().parents[2]


def test_only_assistant_tokens_carry_loss(tmp_path, tiny_model_dir, records, puzzles):
    from cello.train.data import read_records

    trainer = build_sft_trainer(records["sft"], tmp_path / "out", cfg=sft_cfg(tiny_model_dir))
    tok = trainer.processing_class
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(3)])
    sft = read_records(records["sft"], kind="sft")
    for row in range(3):
        ids, labels = batch["input_ids"][row], batch["labels"][row]
        real = batch["attention_mask"][row].bool()
        assert (labels[~real] == -100).all()  # padding
        trained = labels != -100
        # exactly the assistant reply and its end-of-turn token, nothing of the system/user turns
        assert tok.decode(ids[trained]) == sft[row]["messages"][-1]["content"] + "<|im_end|>"
        assert (labels[trained] == ids[trained]).all()
        first = int(trained.nonzero()[0])
        assert trained[first:].sum() == trained.sum() and (labels[first:][~trained[first:] & real[first:]]).numel() <= 1
        assert "<|im_start|>assistant" in tok.decode(ids[:first]) and "user" in tok.decode(ids[:first])


def test_padding_free_and_packing_keep_the_mask(tmp_path, tiny_model_dir, records):
    trainer = build_sft_trainer(records["sft"], tmp_path / "out", cfg=sft_cfg(tiny_model_dir, packing=True))
    batch = trainer.data_collator([trainer.train_dataset[0]])
    assert "position_ids" in batch and batch["input_ids"].shape[0] == 1  # one packed row
    assert (batch["labels"] != -100).sum() > 0


def test_sft_loss_falls_and_saves_adapter(tmp_path, tiny_model_dir, records):
    out = tmp_path / "sft"
    result = run_sft(records["sft"], out, cfg=sft_cfg(tiny_model_dir, epochs=2, eval_fraction=0.2, save_steps=5))
    loss = [v for _, v in result.curves["loss"]]
    assert len(loss) == result.global_step == 10  # 24 records - 5 held out = 19 -> 5 batches of 4, x 2 epochs
    assert sum(loss[-3:]) / 3 < sum(loss[:3]) / 3 - 0.3
    assert "eval_loss" in result.curves
    assert (out / "model" / "adapter_config.json").exists() and (out / "model" / "tokenizer.json").exists()
    assert read_summary(out)["global_step"] == result.global_step
    from cello.card import read_card

    card = read_card(out / "model")  # replaces PEFT's blank README
    assert card["library_name"] == "peft" and card["cello"]["stage"] == "sft"
    assert card["cello"]["settings_changed"]["epochs"] == 2 and card["cello"]["curves_last"]["loss"] == loss[-1]


def test_existing_checkpoints_need_resume(tmp_path, tiny_model_dir, records):
    out = tmp_path / "sft"
    (out / "checkpoint-2").mkdir(parents=True)
    with pytest.raises(ConfigError, match="--resume"):
        run_sft(records["sft"], out, cfg=sft_cfg(tiny_model_dir))


def test_batch_must_divide(tmp_path, tiny_model_dir, records):
    with pytest.raises(ConfigError, match="effective_batch_size=6 is not a multiple"):
        build_sft_trainer(records["sft"], tmp_path, cfg=sft_cfg(tiny_model_dir, effective_batch_size=6))


class _Preempted(Exception):
    pass


def test_resume_ends_at_same_step_with_same_data_order(tmp_path, tiny_model_dir, records, monkeypatch):
    """A run killed right after its step-2 checkpoint, resumed, matches an uninterrupted run."""
    from transformers import TrainerCallback

    seen: list[list[int]] = []
    build = sft_mod.build_sft_trainer

    def recording_build(*args, **kwargs):
        trainer = build(*args, **kwargs)
        step = trainer.training_step

        def record(model, inputs, *rest, **kw):  # the batches actually trained on, in order
            seen.append([int(x) for x in inputs["input_ids"].sum(dim=1)])
            return step(model, inputs, *rest, **kw)

        trainer.training_step = record
        return trainer

    monkeypatch.setattr(sft_mod, "build_sft_trainer", recording_build)

    class KillAfterSave(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.global_step == 2:
                raise _Preempted

    cfg = sft_cfg(tiny_model_dir, max_steps=4, save_steps=2, effective_batch_size=2, per_device_batch_size=2)
    full = run_sft(records["sft"], tmp_path / "full", cfg=cfg)
    order_full, seen[:] = list(seen), []

    with pytest.raises(_Preempted):
        run_sft(records["sft"], tmp_path / "cut", cfg=cfg, callbacks=[KillAfterSave()])
    assert (tmp_path / "cut" / "checkpoint-2").is_dir() and not (tmp_path / "cut" / "model").exists()
    resumed = run_sft(records["sft"], tmp_path / "cut", cfg=cfg, resume=True)

    assert resumed.global_step == full.global_step == 4
    assert resumed.resumed_from.endswith("checkpoint-2")
    assert seen == order_full  # first 2 batches before the kill, last 2 after resume
    loss_full = dict((s, v) for s, v in full.curves["loss"])
    loss_resumed = dict((s, v) for s, v in resumed.curves["loss"])
    for step in (3.0, 4.0):
        assert loss_resumed[step] == pytest.approx(loss_full[step], rel=1e-4)


@pytest.mark.slow
def test_torchrun_two_cpu_processes_save_once(tmp_path, tiny_model_dir, records):
    """`torchrun --nproc_per_node 2` on CPU (gloo): both ranks train, rank 0 alone saves."""
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    if torchrun is None:
        pytest.skip("torchrun not installed next to the interpreter")
    params = tmp_path / "params.yaml"
    cfg = sft_cfg(tiny_model_dir, max_steps=3, effective_batch_size=4, per_device_batch_size=2)
    params.write_text(yaml.safe_dump({"train": {"sft": cfg.model_dump()}}))
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [torchrun, "--standalone", "--nproc_per_node", "2", "-m", "cello.cli", "train", "sft",
           str(records["sft"]), "-o", str(out), "--params", str(params)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    logs = proc.stdout + proc.stderr
    assert proc.returncode == 0, logs[-3000:]
    assert logs.count("saved model to") == 1
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["global_step"] == 3
    names = {p.name for p in out.iterdir()}
    assert {"checkpoint-3", "model", "summary.json"} <= names and not any(n.startswith(".") for n in names)
    assert (out / "model" / "adapter_model.safetensors").exists()


@pytest.mark.gpu
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA GPU")
def test_bf16_and_flash_attention_on_gpu(tmp_path, tiny_model_dir, records):
    """On a GPU, 'auto' picks bf16 and flash-attn when it imports (sdpa otherwise), and SFT runs."""
    import torch

    from cello.deps import is_available
    from cello.train.common import device_settings

    s = device_settings("auto", "auto")
    assert s["bf16"] == torch.cuda.is_bf16_supported() and not s["use_cpu"]
    assert s["attn_implementation"] == ("flash_attention_2" if is_available("flash_attn") else "sdpa")
    cfg = sft_cfg(tiny_model_dir, max_steps=3, padding_free=True, packing=True)
    result = run_sft(records["sft"], tmp_path / "gpu", cfg=cfg)
    assert result.global_step == 3


def test_cpu_settings_are_fp32_and_sdpa(monkeypatch):
    import torch

    from cello.train.common import device_settings

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    s = device_settings("auto", "auto")
    assert (s["bf16"], s["fp16"], s["use_cpu"], s["attn_implementation"], s["dtype"]) == (
        False,
        False,
        True,
        "sdpa",
        torch.float32,
    )
    with pytest.raises(ConfigError, match="flash-attn"):
        device_settings("auto", "flash_attention_2")
    with pytest.raises(ConfigError, match="fp16 needs a CUDA GPU"):
        device_settings("fp16", "auto")


@pytest.mark.parametrize(("name", "stage"), [("zero2.json", 2), ("zero3.json", 3)])
def test_deepspeed_configs_defer_to_the_trainer(name, stage):
    cfg = json.loads((REPO / "configs" / "deepspeed" / name).read_text())
    assert cfg["zero_optimization"]["stage"] == stage
    # batch sizes, accumulation, clipping and precision come from Cello's config through TRL ("auto")
    for key in (
        "train_batch_size",
        "train_micro_batch_size_per_gpu",
        "gradient_accumulation_steps",
        "gradient_clipping",
    ):
        assert cfg[key] == "auto"
    assert cfg["bf16"]["enabled"] == "auto"


def test_deepspeed_needs_the_gpu_extra(tmp_path, tiny_model_dir, records):
    from cello.deps import is_available
    from cello.errors import MissingDependencyError

    if is_available("deepspeed"):
        pytest.skip("deepspeed is installed here")
    cfg = sft_cfg(tiny_model_dir, deepspeed=str(REPO / "configs" / "deepspeed" / "zero2.json"))
    with pytest.raises(MissingDependencyError, match=r"cello\[gpu\]"):
        build_sft_trainer(records["sft"], tmp_path, cfg=cfg)

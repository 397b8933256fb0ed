"""GRPO: reward wiring, per-step metrics, vLLM server mode and its health wait."""

from __future__ import annotations

import time

import pytest
import torch

from cello.errors import CelloError, ConfigError
from cello.train.grpo import (
    batch_reward,
    build_grpo_trainer,
    drop_overlong,
    format_reward,
    grpo_args,
    run_grpo,
    wait_for_server,
)
from tests.train.conftest import grpo_cfg


def test_batch_reward_scores_and_logs():
    logged = {}
    gold = [["B cell", "T cell"]] * 4
    completions = [
        [{"role": "assistant", "content": "<think>.</think>\n<answer>B cell | T cell</answer>"}],  # perfect: 1.0
        "<think>.</think>\n<answer>T cell | B cell</answer>",  # valid, all wrong: 0.0
        "<think>.</think>\n<answer>B cell | B cell</answer>",  # paper's format, repeated label: -1
        "<answer>B cell | T cell</answer>",  # no think block: not even the format, -1
    ]
    rewards = batch_reward(completions, gold, log_metric=lambda k, v: logged.__setitem__(k, v))
    assert rewards == [1.0, 0.0, -1.0, -1.0]
    assert logged == {"format_rate": 0.75, "valid_rate": 0.5, "batch_accuracy": 0.25, "cell_accuracy": 0.5 / 4 + 0.25}
    assert format_reward(completions, gold) == [
        1.0,
        1.0,
        1.0,
        0.0,
    ]  # the layout only: the repeat is the batch reward's concern


def test_reward_gets_the_gold_answers_of_the_generated_prompts(tmp_path, tiny_model_dir, records, puzzles):
    by_id = {p["id"]: p for p in puzzles}
    calls = []

    def spy(prompts, completions, answer, id, **kwargs):  # noqa: A002 - TRL passes the dataset column `id`
        calls.append((prompts, completions, answer, id))
        # the paper's reward is -1 for every completion of an untrained model: add a length
        # term so that the group advantages are not all zero and the policy must move
        return [
            r + 0.01 * len(c[0]["content"])
            for r, c in zip(batch_reward(completions, answer, **kwargs), completions, strict=True)
        ]

    spy.__name__ = "batch_reward"
    cfg = grpo_cfg(tiny_model_dir, max_steps=2)
    trainer = build_grpo_trainer(records["grpo"], tmp_path / "grpo", cfg=cfg)
    trainer.reward_funcs[0] = spy
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.train()
    after = trainer.model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)  # the policy moved

    assert len(calls) == 2  # one generation batch per optimizer step
    for prompts, completions, answer, ids in calls:
        assert len(prompts) == len(completions) == len(answer) == len(ids) == cfg.prompts_per_step * cfg.num_generations
        for prompt, gold, pid in zip(prompts, answer, ids, strict=True):
            assert prompt == by_id[pid]["prompt"]  # the prompt that was generated from ...
            assert gold == by_id[pid]["answer"]  # ... comes with its own gold answer
        assert ids[0::2] == ids[1::2]  # each prompt's num_generations completions sit together

    logs = {k for entry in trainer.state.log_history for k in entry}
    assert {
        "reward",
        "reward_std",
        "kl",
        "format_rate",
        "valid_rate",
        "batch_accuracy",
        "cell_accuracy",
        "rewards/batch_reward/mean",
        "rewards/format_reward/mean",
    } <= logs


def test_run_grpo_writes_model_and_curves(tmp_path, tiny_model_dir, records):
    from transformers import AutoModelForCausalLM

    result = run_grpo(records["grpo"], tmp_path / "grpo", cfg=grpo_cfg(tiny_model_dir, max_steps=2, save_steps=1))
    assert result.global_step == 2 and len(result.curves["reward"]) == 2 and "format_rate" in result.curves
    AutoModelForCausalLM.from_pretrained(tmp_path / "grpo" / "model")  # a standalone model dir
    from cello.card import read_card

    card = read_card(tmp_path / "grpo" / "model")
    assert card["library_name"] == "transformers" and card["cello"]["stage"] == "grpo"
    assert card["cello"]["curves_last"]["reward"] == result.curves["reward"][-1][1]
    resumed = run_grpo(
        records["grpo"], tmp_path / "grpo", cfg=grpo_cfg(tiny_model_dir, max_steps=3, save_steps=1), resume=True
    )
    assert resumed.global_step == 3 and resumed.resumed_from.endswith("checkpoint-2")


def test_vllm_server_mode_arguments(tmp_path, tiny_model_dir):
    from cello.train.common import device_settings

    cfg = grpo_cfg(tiny_model_dir, vllm_server="http://vllm-sidecar:8000/")
    args = grpo_args(tmp_path, cfg=cfg, world_size=1, settings=device_settings("fp32", "sdpa"))
    assert (args.use_vllm, args.vllm_mode, args.vllm_server_base_url) == (True, "server", "http://vllm-sidecar:8000")
    assert args.reward_weights == [1.0, 0.5] and args.beta == cfg.beta
    assert args.per_device_train_batch_size * args.gradient_accumulation_steps == 4  # 2 prompts x 2 generations


def test_released_optimizer_settings_reach_trl(tmp_path, tiny_model_dir):
    from cello.config import GRPOStageConfig
    from cello.train.common import device_settings

    cfg = grpo_cfg(tiny_model_dir)
    args = grpo_args(tmp_path, cfg=cfg, world_size=1, settings=device_settings("fp32", "sdpa"))
    default = GRPOStageConfig()
    assert (
        (args.loss_type, args.weight_decay, str(getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type)))
        == (default.loss_type, default.weight_decay, default.lr_scheduler_type)
        == ("bnpo", 0.01, "constant")
    )
    assert args.num_train_epochs == 20 and args.epsilon == 0.2 and args.num_iterations == 1


def test_overlong_prompts_are_dropped_like_verls_filter(tiny_model_dir, records):
    from transformers import AutoTokenizer

    from cello.train.data import read_records

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    recs = read_records(records["grpo"], kind="prompt")
    lengths = sorted(
        len(
            tok.apply_chat_template(r["prompt"], add_generation_prompt=True, tokenize=True, return_dict=True)[
                "input_ids"
            ]
        )
        for r in recs
    )
    assert drop_overlong(recs, tok, None) is recs
    cut = lengths[len(lengths) // 2]
    kept = drop_overlong(recs, tok, cut)
    assert len(kept) == sum(n <= cut for n in lengths) and 0 < len(kept) < len(recs)
    with pytest.raises(ConfigError, match="max_prompt_length=1: every prompt is longer"):
        drop_overlong(recs, tok, 1)


def test_wait_for_server_times_out_with_a_clear_error():
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.monotonic()
    with pytest.raises(CelloError, match=r"not healthy after 1s.*trl vllm-serve"):
        wait_for_server(f"http://127.0.0.1:{port}", timeout=1.0, interval=0.2)
    assert time.monotonic() - start < 10


def test_wait_for_server_returns_when_healthy():
    from tests.llm_server import serve_openai

    with serve_openai() as url:
        wait_for_server(url.removesuffix("/v1"), timeout=5.0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU and vllm")
def test_grpo_with_a_real_vllm_server(tmp_path, tiny_model_dir, records):
    """Server mode end to end: `trl vllm-serve` sidecar on this GPU, 2 GRPO steps through it."""
    import os
    import shutil
    import socket
    import subprocess

    pytest.importorskip("vllm")
    trl = shutil.which("trl")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [trl, "vllm-serve", "--model", str(tiny_model_dir), "--port", str(port), "--gpu-memory-utilization", "0.3"],
        env={**os.environ},
    )
    try:
        cfg = grpo_cfg(tiny_model_dir, vllm_server=f"http://127.0.0.1:{port}", vllm_health_timeout=300)
        result = run_grpo(records["grpo"], tmp_path / "grpo", cfg=cfg)
        assert result.global_step == 2 and result.extra["rollouts"] == "vllm-server"
    finally:
        proc.terminate()
        proc.wait(timeout=60)

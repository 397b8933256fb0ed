"""GRPO on the batch-level reward: TRL GRPOTrainer with the rewards of `cello.scoring`.

Two reward functions, weighted by `reward_weight` and `format_weight`:
- `batch_reward`: the paper's reward, (cell accuracy + batch exact match) / 2 for a valid
  completion, -1 otherwise;
- `format_reward`: 1 for a completion in the paper's format (think, answer, '|'-separated
  labels; the eval's format rate), 0 otherwise (weight 0 by default: logged only). The whole
  validity rule as 1/0 (N distinct labels too) is `cello.scoring.valid_reward`.
Logged per step (TensorBoard and OUT/summary.json): `reward` (weighted mean), `reward_std`,
`kl`, `format_rate`, `valid_rate`, `batch_accuracy`, `cell_accuracy`, `completions/mean_length`.

Rollouts come from transformers `generate` (CPU, tests) or, with `--vllm-server URL`, from a
`trl vllm-serve` sidecar (TRL's server mode; weights are pushed to it after each step). The
server's /health is polled first, with a timeout and a clear error.

    cello train grpo data/records/grpo --model outputs/sft-merged -o outputs/grpo --profile local
    trl vllm-serve --model outputs/sft-merged &        # GPU node: the rollout sidecar
    cello train grpo data/records/grpo --model outputs/sft-merged -o outputs/grpo \
        --vllm-server http://localhost:8000
    cello train grpo data/records/grpo -o outputs/grpo --resume
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

from cello.config import GRPOStageConfig
from cello.errors import CelloError, ConfigError
from cello.scoring import completion_text, score
from cello.train import common
from cello.train.data import grpo_dataset, read_records

log = logging.getLogger(__name__)

CURVES = ["reward", "reward_std", "kl", "format_rate", "valid_rate", "batch_accuracy", "cell_accuracy",
          "rewards/batch_reward/mean", "rewards/format_reward/mean", "completions/mean_length", "loss"]


def batch_reward(completions: Sequence[Any], answer: Sequence[Sequence[str]], *,
                 log_metric: Callable[[str, float], None] | None = None, **_: Any) -> list[float]:
    """The paper's reward per completion; also logs format and valid rate, batch and cell accuracy.

    format_rate: share of completions in the paper's format (`Score.legitimate`, the eval's
    format rate); valid_rate: share whose reward is not -1 (format, N labels, no repeat).
    """
    scores = [score(completion_text(c), a) for c, a in zip(completions, answer, strict=True)]
    if log_metric is not None and scores:
        k = len(scores)
        log_metric("format_rate", sum(s.legitimate for s in scores) / k)
        log_metric("valid_rate", sum(s.valid for s in scores) / k)
        log_metric("batch_accuracy", sum(s.exact for s in scores) / k)
        log_metric("cell_accuracy", sum(s.cell_accuracy for s in scores) / k)
    return [s.reward for s in scores]


def format_reward(completions: Sequence[Any], answer: Sequence[Sequence[str]], **_: Any) -> list[float]:
    """1.0 for a completion in the paper's format (think block, one newline, answer block with
    '|'-separated labels: `Score.legitimate`, the eval's format rate), else 0.0.

    A separate, denser signal than the batch reward, which is -1 unless the format holds *and*
    there are N distinct labels: a weak policy learns the layout from it first.
    """
    return [float(score(completion_text(c), a).legitimate) for c, a in zip(completions, answer, strict=True)]


def wait_for_server(url: str, *, timeout: float, interval: float = 2.0) -> None:
    """Poll `url`/health until it answers 200; raise CelloError after `timeout` seconds."""
    import httpx

    health = url.rstrip("/") + "/health"
    deadline = time.monotonic() + timeout
    last = "no answer"
    while True:
        try:
            r = httpx.get(health, timeout=min(10.0, max(timeout, 0.1)))
            if r.status_code == 200:
                log.info("vLLM server ready at %s", url)
                return
            last = f"HTTP {r.status_code}"
        except httpx.HTTPError as exc:
            last = type(exc).__name__
        if time.monotonic() >= deadline:
            msg = (f"vLLM server {url} not healthy after {timeout:.0f}s ({health}: {last}); start it with "
                   f"`trl vllm-serve --model MODEL`, check the URL, or raise train.grpo.vllm_health_timeout.")
            raise CelloError(msg)
        time.sleep(min(interval, max(0.0, deadline - time.monotonic())) or 0.01)


def grpo_args(out_dir: str | os.PathLike, *, cfg: GRPOStageConfig, world_size: int, settings: dict[str, Any]):
    """TRL GRPOConfig from the stage config (one generation batch per optimizer step)."""
    from trl import GRPOConfig

    completions = cfg.prompts_per_step * cfg.num_generations
    grad_acc = common.accumulation(completions, cfg.per_device_batch_size, world_size,
                                   what="train.grpo.prompts_per_step x num_generations")
    owned = {
        **common.trainer_args(cfg, out_dir, settings=settings, grad_acc=grad_acc),
        "lr_scheduler_type": cfg.lr_scheduler_type,
        "weight_decay": cfg.weight_decay,
        "loss_type": cfg.loss_type,
        "num_generations": cfg.num_generations,
        "max_completion_length": cfg.max_completion_length,
        "temperature": cfg.temperature,
        "top_p": cfg.top_p,
        "beta": cfg.beta,
        "reward_weights": [cfg.reward_weight, cfg.format_weight],
        "steps_per_generation": grad_acc,  # one generation batch per optimizer step: prompts_per_step means that
    }
    if cfg.vllm_server:
        owned.update(use_vllm=True, vllm_mode="server", vllm_server_base_url=cfg.vllm_server.rstrip("/"))
    return common.trl_config(GRPOConfig, owned, cfg.trl, section="train.grpo", reserved=cfg.OWNED_TRL_KEYS)


def drop_overlong(records: list[dict[str, Any]], tokenizer, max_prompt_length: int | None) -> list[dict[str, Any]]:
    """The records whose chat prompt (with the generation prompt) fits `max_prompt_length` tokens:
    verl's `filter_overlong_prompts`, which the released GRPO script turns on."""
    if max_prompt_length is None:
        return records
    kept = [r for r in records
            if len(tokenizer.apply_chat_template(r["prompt"], add_generation_prompt=True, tokenize=True,
                                                 return_dict=True)["input_ids"]) <= max_prompt_length]
    if not kept:
        msg = (f"train.grpo.max_prompt_length={max_prompt_length}: every prompt is longer; raise it, set it to null, "
               "or use fewer genes per cell (data.cells.top_n).")
        raise ConfigError(msg)
    if len(kept) < len(records):
        log.warning("grpo: dropped %d of %d prompts longer than max_prompt_length=%d tokens",
                    len(records) - len(kept), len(records), max_prompt_length)
    return kept


def build_grpo_trainer(train: str | os.PathLike, out_dir: str | os.PathLike, *, cfg: GRPOStageConfig,
                       callbacks: list | None = None):
    """A GRPOTrainer ready to `.train()` (tests swap its reward functions for spies)."""
    from trl import GRPOTrainer

    env = common.dist_env()
    settings = common.device_settings(cfg.precision, cfg.attn_implementation)
    model_path = common.resolve_model(cfg.model, section="train.grpo")
    records = read_records(train, kind="prompt")
    if cfg.max_n is not None:
        kept = [r for r in records if r["n"] <= cfg.max_n]
        if not kept:
            smallest = min(r["n"] for r in records)
            msg = (f"train.grpo.max_n={cfg.max_n}: no puzzle in {train} is that small (smallest: {smallest}); "
                   "raise max_n or set it to null.")
            raise ConfigError(msg)
        log.info("grpo: %d of %d puzzles have n <= max_n=%d", len(kept), len(records), cfg.max_n)
        records = kept
    args = grpo_args(out_dir, cfg=cfg, world_size=env.world_size, settings=settings)
    if cfg.vllm_server and env.is_main:
        wait_for_server(cfg.vllm_server, timeout=cfg.vllm_health_timeout)
    model, tokenizer = common.load_model(model_path, settings=settings)
    records = drop_overlong(records, tokenizer, cfg.max_prompt_length)
    peft_config = common.lora_config(cfg.lora, tied_embeddings=bool(model.config.tie_word_embeddings))
    if env.is_main:
        log.info("grpo: %s, %d prompts, %d x %d completions per step, %s rollouts", model_path, len(records),
                 cfg.prompts_per_step, cfg.num_generations,
                 f"vLLM {cfg.vllm_server}" if cfg.vllm_server else "transformers")
    return GRPOTrainer(
        model=model, reward_funcs=[batch_reward, format_reward], args=args, train_dataset=grpo_dataset(records),
        processing_class=tokenizer, peft_config=peft_config, callbacks=callbacks,
    )


def run_grpo(train: str | os.PathLike, out_dir: str | os.PathLike, *, cfg: GRPOStageConfig, resume: bool = False,
             callbacks: list | None = None) -> common.TrainResult:
    """Train `cfg.model` with GRPO on prompt records; write OUT/model and OUT/summary.json."""
    ckpt = common.last_checkpoint(out_dir, resume=resume)
    trainer = build_grpo_trainer(train, out_dir, cfg=cfg, callbacks=callbacks)
    model_dir, runtime = common.train_and_save(trainer, out_dir, ckpt)
    state = trainer.state
    result = common.TrainResult(
        stage="grpo", out_dir=str(out_dir), model_dir=str(model_dir), global_step=state.global_step,
        world_size=trainer.args.world_size, resumed_from=ckpt, runtime_s=runtime,
        curves=common.curves(state.log_history, CURVES),
        extra={"rollouts": "vllm-server" if cfg.vllm_server else "transformers", "adapter": cfg.lora.enabled},
    )
    return common.finish(trainer, result, cfg=cfg, records=train)

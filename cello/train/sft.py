"""Supervised fine-tuning on chat records: TRL SFTTrainer + PEFT LoRA, loss on assistant tokens.

The paper's recipe (Qwen2.5-7B-Instruct, LoRA r 256 / alpha 512 / dropout 0.05 on all linear
layers, lr 5e-5, 1 epoch, max length 4096, effective batch 96) is the default in
`SFTStageConfig`; the `local` profile swaps in the tiny CPU model. The same code runs as one
process or under torchrun (several GPUs, several nodes, or 2 CPU processes with gloo):

    cello train sft data/records/sft -o outputs/sft --profile local
    torchrun --nproc_per_node 8 -m cello.cli train sft data/records/sft -o outputs/sft
    torchrun --nnodes 2 --nproc_per_node 8 --rdzv-endpoint $MASTER_ADDR:29500 \
        -m cello.cli train sft data/records/sft -o outputs/sft --deepspeed configs/deepspeed/zero3.json
    cello train sft data/records/sft -o outputs/sft --resume     # continue the last checkpoint

Output: OUT/model (the adapter + tokenizer, or the full model without LoRA), OUT/summary.json
(loss curve), OUT/checkpoint-* and OUT/runs (TensorBoard). `cello train merge` turns the
adapter into a standalone model.
"""

from __future__ import annotations

import logging
import os

from cello.config import SFTStageConfig
from cello.train import common
from cello.train.data import read_records, sft_datasets

log = logging.getLogger(__name__)


def build_sft_trainer(
    train: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    cfg: SFTStageConfig,
    eval_path: str | os.PathLike | None = None,
    callbacks: list | None = None,
):
    """An SFTTrainer ready to `.train()` (tests inspect its collated batches)."""
    from trl import SFTConfig, SFTTrainer

    env = common.dist_env()
    settings = common.device_settings(cfg.precision, cfg.attn_implementation)
    common.check_report_to(cfg.report_to)  # fail before the records are read
    model_path = common.resolve_model(cfg.model, section="train.sft")
    if (cfg.packing or cfg.padding_free) and settings["attn_implementation"] != "flash_attention_2":
        log.warning("packing/padding_free with %s: each packed row is attended densely under a block mask "
                    "(correct, but slower than padding; it pays off with flash_attention_2)",
                    settings["attn_implementation"])
    if cfg.padding_free and not cfg.packing:
        log.warning("padding_free without packing: conversations are not cut at max_length=%d (TRL's rule); "
                    "enable packing to bound the row length", cfg.max_length)

    records = read_records(train, kind="sft")
    eval_records = read_records(eval_path, kind="sft", split="test") if eval_path else None
    train_ds, eval_ds = sft_datasets(records, eval_records=eval_records, eval_fraction=cfg.eval_fraction, seed=cfg.seed)

    grad_acc = common.accumulation(cfg.effective_batch_size, cfg.per_device_batch_size, env.world_size,
                                   what="train.sft.effective_batch_size")
    owned = {
        **common.trainer_args(cfg, out_dir, settings=settings, grad_acc=grad_acc),
        "per_device_eval_batch_size": cfg.per_device_batch_size,
        # TRL does not truncate padding-free batches without packing: it wants max_length=None then
        "max_length": None if cfg.padding_free and not cfg.packing else cfg.max_length,
        "truncation_mode": cfg.truncation_mode,
        "packing": cfg.packing,
        "padding_free": cfg.padding_free,
        "assistant_only_loss": cfg.assistant_only_loss,
        "eval_strategy": "steps" if eval_ds is not None else "no",
        "eval_steps": cfg.save_steps if eval_ds is not None else None,
        "dataset_num_proc": None,
    }
    args = common.trl_config(SFTConfig, owned, cfg.trl, section="train.sft", reserved=cfg.OWNED_TRL_KEYS)

    model, tokenizer = common.load_model(model_path, settings=settings)
    peft_config = common.lora_config(cfg.lora, tied_embeddings=bool(model.config.tie_word_embeddings))
    if env.is_main:
        log.info("sft: %s, %d train / %d eval records, %s, batch %d = %d x %d processes x %d accumulation",
                 model_path, len(train_ds), 0 if eval_ds is None else len(eval_ds),
                 "LoRA" if peft_config else "full fine-tuning", cfg.effective_batch_size,
                 cfg.per_device_batch_size, env.world_size, grad_acc)
    return SFTTrainer(
        model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
        processing_class=tokenizer, peft_config=peft_config, callbacks=callbacks,
    )


def run_sft(
    train: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    cfg: SFTStageConfig,
    eval_path: str | os.PathLike | None = None,
    resume: bool = False,
    callbacks: list | None = None,
) -> common.TrainResult:
    """Fine-tune `cfg.model` on SFT records; write OUT/model and OUT/summary.json."""
    ckpt = common.last_checkpoint(out_dir, resume=resume)
    trainer = build_sft_trainer(train, out_dir, cfg=cfg, eval_path=eval_path, callbacks=callbacks)
    model_dir, runtime = common.train_and_save(trainer, out_dir, ckpt)
    state = trainer.state
    result = common.TrainResult(
        stage="sft",
        out_dir=str(out_dir),
        model_dir=str(model_dir),
        global_step=state.global_step,
        world_size=trainer.args.world_size,
        resumed_from=ckpt,
        runtime_s=runtime,
        curves=common.curves(state.log_history, ["loss", "eval_loss", "mean_token_accuracy", "learning_rate"]),
        extra={"num_tokens": _last(state.log_history, "num_tokens"), "adapter": cfg.lora.enabled},
    )
    return common.finish(trainer, result, cfg=cfg, records=train)


def _last(log_history: list[dict], key: str) -> float | None:
    values = [e[key] for e in log_history if key in e]
    return float(values[-1]) if values else None

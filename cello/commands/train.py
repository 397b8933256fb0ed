"""`cello train ...`: distill traces, SFT with LoRA, merge the adapter, GRPO.

    cello train distill data/records/grpo -o data/records/distill --teacher http://vllm:8000/v1
    cello train distill data/records/grpo -o data/records/template --template
    cello train sft data/records/sft -o outputs/sft --model models/tiny --profile local
    cello train merge outputs/sft -o outputs/sft-merged
    cello train grpo data/records/grpo --model outputs/sft-merged -o outputs/grpo --profile local
    torchrun --nproc_per_node 8 -m cello.cli train sft data/records/sft -o outputs/sft
"""

from __future__ import annotations

from pathlib import Path

import typer

from cello.commands._common import PARAMS, PROFILE, option
from cello.config import (
    DistillStageConfig,
    GRPOStageConfig,
    LoraStageConfig,
    SFTStageConfig,
    load_params,
    override,
)

app = typer.Typer(help="Train models: distill traces, SFT (LoRA), merge, GRPO.", no_args_is_help=True)


def _is_main() -> bool:
    import os

    return int(os.environ.get("RANK", "0")) == 0


@app.command("sft")
def sft(
    records: Path = typer.Argument(..., help="SFT records: a JSONL file or a directory holding train.jsonl."),
    out: Path = typer.Option(..., "--out", "-o", help="Output directory (model/, summary.json, checkpoints)."),
    model: str | None = option(SFTStageConfig, "model", "--model"),
    eval_records: Path | None = typer.Option(
        None, "--eval", help="Eval records (file, or dir with test.jsonl) (default: hold out eval_fraction)."
    ),
    epochs: float | None = option(SFTStageConfig, "epochs"),
    max_steps: int | None = option(SFTStageConfig, "max_steps"),
    learning_rate: float | None = option(SFTStageConfig, "learning_rate", "--lr"),
    packing: bool | None = option(SFTStageConfig, "packing", "--packing/--no-packing"),
    padding_free: bool | None = option(SFTStageConfig, "padding_free", "--padding-free/--no-padding-free"),
    dora: bool | None = option(LoraStageConfig, "use_dora", "--dora/--no-dora"),
    deepspeed: str | None = option(SFTStageConfig, "deepspeed", "--deepspeed"),
    report_to: list[str] | None = option(SFTStageConfig, "report_to", "--report-to", note="Repeatable."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the last checkpoint in --out."),
    params: Path | None = PARAMS,
    profile: str | None = PROFILE,
) -> None:
    """Fine-tune with TRL SFTTrainer + LoRA, loss on assistant tokens (one process or torchrun)."""
    from cello.train.sft import run_sft

    p = load_params(params, profile=profile)
    lora = override(p.train.sft.lora, use_dora=dora)
    cfg = override(p.train.sft, model=model, epochs=epochs, max_steps=max_steps, learning_rate=learning_rate,
                   packing=packing, padding_free=padding_free, deepspeed=deepspeed, report_to=report_to or None,
                   lora=lora.model_dump())
    result = run_sft(records, out, cfg=cfg, eval_path=eval_records, resume=resume)
    if _is_main():
        typer.echo(result.render())


@app.command("merge")
def merge(
    adapter: Path = typer.Argument(..., help="Output of `cello train sft` (or its model/ dir)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output model directory."),
    base: str | None = typer.Option(
        None, "--base", help="Base model (default: the adapter's base_model_name_or_path).",
    ),
    dtype: str = typer.Option("auto", "--dtype", help="auto, bf16, fp16 or fp32."),
) -> None:
    """Merge the LoRA adapter into its base: a standalone model + tokenizer."""
    from cello.train.merge import merge_adapter

    path = merge_adapter(adapter, out, base=base, dtype=dtype)
    typer.echo(f"merged {adapter} -> {path}")


@app.command("grpo")
def grpo(
    records: Path = typer.Argument(
        ..., help="GRPO (or eval) records: a JSONL file or a directory holding train.jsonl.",
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Output directory (model/, summary.json, checkpoints)."),
    model: str | None = option(GRPOStageConfig, "model", "--model", note="Usually the merged SFT model."),
    vllm_server: str | None = option(GRPOStageConfig, "vllm_server", "--vllm-server"),
    max_steps: int | None = option(GRPOStageConfig, "max_steps"),
    learning_rate: float | None = option(GRPOStageConfig, "learning_rate", "--lr"),
    num_generations: int | None = option(GRPOStageConfig, "num_generations"),
    format_weight: float | None = option(GRPOStageConfig, "format_weight"),
    report_to: list[str] | None = option(GRPOStageConfig, "report_to", "--report-to", note="Repeatable."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the last checkpoint in --out."),
    params: Path | None = PARAMS,
    profile: str | None = PROFILE,
) -> None:
    """GRPO with the batch-level reward (TRL GRPOTrainer; rollouts by transformers or a vLLM server)."""
    from cello.train.grpo import run_grpo

    p = load_params(params, profile=profile)
    cfg = override(p.train.grpo, model=model, vllm_server=vllm_server, max_steps=max_steps, learning_rate=learning_rate,
                   num_generations=num_generations, format_weight=format_weight, report_to=report_to or None)
    result = run_grpo(records, out, cfg=cfg, resume=resume)
    if _is_main():
        typer.echo(result.render())


@app.command("distill")
def distill(
    records: Path = typer.Argument(..., help="GRPO or eval records: a JSONL file or a directory holding train.jsonl."),
    out: Path = typer.Option(..., "--out", "-o", help="Output directory (train.jsonl SFT records, summary.json)."),
    teacher: str | None = option(DistillStageConfig, "teacher", "--teacher"),
    teacher_model: str | None = option(DistillStageConfig, "teacher_model", "--teacher-model"),
    samples: int | None = option(DistillStageConfig, "samples", "--samples", "-k"),
    min_reward: float | None = option(DistillStageConfig, "min_reward"),
    keep_per_puzzle: int | None = option(DistillStageConfig, "keep_per_puzzle"),
    concurrency: int | None = option(DistillStageConfig, "concurrency"),
    limit: int | None = typer.Option(None, help="Only the first N puzzles."),
    template: bool = typer.Option(False, "--template", help="No teacher: format-only traces from the gold answers."),
    params: Path | None = PARAMS,
    profile: str | None = PROFILE,
) -> None:
    """Build SFT traces from a teacher by rejection sampling on the reward (or --template)."""
    from cello.train.distill import distill as run_distill

    p = load_params(params, profile=profile)
    cfg = override(p.train.distill, teacher=teacher, teacher_model=teacher_model, samples=samples,
                   min_reward=min_reward, keep_per_puzzle=keep_per_puzzle, concurrency=concurrency)
    summary = run_distill(records, out, cfg=cfg, template=p.prompt, use_template=template, limit=limit)
    typer.echo(summary.render())

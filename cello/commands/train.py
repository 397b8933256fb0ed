"""`cello train ...`: distill traces, SFT with LoRA, merge the adapter, GRPO.

    cello train distill data/records/grpo -o data/records/distill --teacher http://vllm:8000/v1
    cello train distill data/records/grpo -o data/records/template --template
    cello train sft data/records/sft -o outputs/sft --profile local
    cello train merge outputs/sft -o outputs/sft-merged
    cello train grpo data/records/grpo --model outputs/sft-merged -o outputs/grpo --profile local
    torchrun --nproc_per_node 8 -m cello.cli train sft data/records/sft -o outputs/sft
"""

from __future__ import annotations

from pathlib import Path

import typer

from cello.commands._common import PARAMS, PROFILE
from cello.config import load_params, override

app = typer.Typer(help="Train models: distill traces, SFT (LoRA), merge, GRPO.", no_args_is_help=True)


def _is_main() -> bool:
    import os

    return int(os.environ.get("RANK", "0")) == 0


@app.command("sft")
def sft(
    records: Path = typer.Argument(..., help="SFT records: a JSONL file or a directory holding train.jsonl."),
    out: Path = typer.Option(..., "--out", "-o", help="Output directory (model/, summary.json, checkpoints)."),
    model: str | None = typer.Option(None, "--model", help="Base model dir or hub id [train.sft.model]."),
    eval_records: Path | None = typer.Option(None, "--eval", help="Eval records (file, or dir with test.jsonl) [hold out eval_fraction]."),
    epochs: float | None = typer.Option(None, help="Passes over the data [1]."),
    max_steps: int | None = typer.Option(None, help="Stop after this many steps [-1: epochs]."),
    learning_rate: float | None = typer.Option(None, "--lr", help="Peak learning rate [5e-5]."),
    packing: bool | None = typer.Option(None, "--packing/--no-packing", help="Pack conversations into max_length rows."),
    padding_free: bool | None = typer.Option(None, "--padding-free/--no-padding-free", help="Flatten batches without padding."),
    dora: bool | None = typer.Option(None, "--dora/--no-dora", help="DoRA instead of LoRA."),
    deepspeed: str | None = typer.Option(None, "--deepspeed", help="DeepSpeed JSON, e.g. configs/deepspeed/zero3.json."),
    report_to: list[str] | None = typer.Option(None, "--report-to", help="tensorboard, mlflow, wandb or none (repeatable)."),
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
    base: str | None = typer.Option(None, "--base", help="Base model [the adapter's base_model_name_or_path]."),
    dtype: str = typer.Option("auto", "--dtype", help="auto, bf16, fp16 or fp32."),
) -> None:
    """Merge the LoRA adapter into its base: a standalone model + tokenizer."""
    from cello.train.merge import merge_adapter

    path = merge_adapter(adapter, out, base=base, dtype=dtype)
    typer.echo(f"merged {adapter} -> {path}")


@app.command("grpo")
def grpo(
    records: Path = typer.Argument(..., help="GRPO (or eval) records: a JSONL file or a directory holding train.jsonl."),
    out: Path = typer.Option(..., "--out", "-o", help="Output directory (model/, summary.json, checkpoints)."),
    model: str | None = typer.Option(None, "--model", help="Starting policy, e.g. the merged SFT model [train.grpo.model]."),
    vllm_server: str | None = typer.Option(None, "--vllm-server", help="Base URL of a `trl vllm-serve` server for rollouts."),
    max_steps: int | None = typer.Option(None, help="Stop after this many steps [-1: epochs]."),
    learning_rate: float | None = typer.Option(None, "--lr", help="Peak learning rate [1e-6]."),
    num_generations: int | None = typer.Option(None, help="Completions per prompt [5]."),
    format_weight: float | None = typer.Option(None, help="Weight of the format reward [0]."),
    report_to: list[str] | None = typer.Option(None, "--report-to", help="tensorboard, mlflow, wandb or none (repeatable)."),
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
    teacher: str | None = typer.Option(None, "--teacher", help="The teacher: OpenAI-compatible base URL (or a backend spec, e.g. a model dir)."),
    teacher_model: str | None = typer.Option(None, "--teacher-model", help="Model name at the teacher's endpoint [first of /models]."),
    samples: int | None = typer.Option(None, "--samples", "-k", help="Completions per puzzle [4]."),
    min_reward: float | None = typer.Option(None, help="Keep only completions with reward >= this [1.0: perfect]."),
    keep_per_puzzle: int | None = typer.Option(None, help="Most traces kept per puzzle [1]."),
    concurrency: int | None = typer.Option(None, help="Requests in flight [8]."),
    limit: int | None = typer.Option(None, help="Only the first N puzzles."),
    template: bool = typer.Option(False, "--template", help="No teacher: format-only traces from the gold answers."),
    params: Path | None = PARAMS,
    profile: str | None = PROFILE,
) -> None:
    """Build SFT traces from a teacher by rejection sampling on the reward (or --template)."""
    from cello.train.distill import distill as run_distill

    p = load_params(params, profile=profile)
    cfg = override(p.train.distill, teacher=teacher, teacher_model=teacher_model, samples=samples, min_reward=min_reward,
                   keep_per_puzzle=keep_per_puzzle, concurrency=concurrency)
    summary = run_distill(records, out, cfg=cfg, template=p.prompt, use_template=template, limit=limit)
    typer.echo(summary.render())

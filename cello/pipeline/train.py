"""The training stages of a pipeline run: base model, distill, SFT, merge, GRPO.

Each takes the run folder, reads its resolved params, writes under `<run>/models/<stage>`
and returns the output's URI (a path on the shared volume). `backend` says where the work
happens:

- "local": here, in a child process (under torchrun when the step has several GPUs: `step_gpus`),
  which gives the memory back when the stage ends;
- "kubernetes": a training job on the cluster's GPU nodes (`cello.k8s`), which this step
  launches, streams the logs of and waits for; the step fails when the job fails.

Either way the stage runs the same `cello train ...` command line, so what a cluster runs is
what a laptop runs. Every run resumes from its last checkpoint, so a retried step continues.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

from cello.errors import ConfigError, InputError
from cello.pipeline.data import paths
from cello.pipeline.run import Run, require

log = logging.getLogger(__name__)

BACKENDS = ("local", "kubernetes")


def check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        msg = f"backend {backend!r}: use one of {', '.join(BACKENDS)}."
        raise ConfigError(msg)
    return backend


def command(stage: str, *args: str, run: Run) -> list[str]:
    """The `cello train STAGE ...` arguments of a stage, reading the run's params."""
    return ["train", stage, *args, "--params", str(run.params_path)]


def execute(stage: str, args: list[str], *, run: Run, backend: str, num_nodes: int = 1, gpus_per_node: int = 0,
            step_gpus: int = 0) -> None:
    """Run `cello <args>` where `backend` says: here (a child process; torchrun over this pod's
    `step_gpus` when there are several) or as a job of `num_nodes` x `gpus_per_node` on the cluster."""
    if check_backend(backend) == "kubernetes":
        from cello.pipeline.cluster import run_job

        run_job(stage, args, run=run, num_nodes=num_nodes, gpus_per_node=gpus_per_node)
        return
    if num_nodes > 1:
        msg = f"{stage}: num_nodes={num_nodes} needs backend 'kubernetes'; the local backend runs on this node only."
        raise ConfigError(msg)
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={step_gpus}"] if step_gpus > 1 else []
    cmd = [sys.executable, *launcher, "-m", "cello.cli", *args]
    log.info("$ %s", " ".join(cmd))
    code = subprocess.run(cmd, check=False).returncode
    if code != 0:
        msg = f"{stage}: `cello {' '.join(args[:2])}` exited with {code}; its log is above."
        raise InputError(msg)


def _summary(out: Path) -> dict[str, Any]:
    from cello.train.common import read_summary

    return read_summary(out)


def base_model(run_dir: str, *, data_dir: str, model: str = "") -> str:
    """The model SFT starts from: `model`, else pipeline.base_model, else train.sft.model;
    'tiny' builds the tiny offline model, its tokenizer trained on this run's SFT records."""
    run = Run.open(run_dir)
    p = run.params
    spec = model or p.pipeline.base_model or p.train.sft.model or ""
    if spec != "tiny":
        if not spec:
            msg = "no base model: set the pipeline parameter base_model, pipeline.base_model or train.sft.model."
            raise ConfigError(msg)
        run.record_step("base-model", model=spec)
        return spec
    from cello.llm.tiny import build_tiny_model, load_corpus

    out = run.path("models", "tiny")
    corpus = load_corpus(paths(data_dir)["sft"] / "train.jsonl", prompt=p.prompt)
    build_tiny_model(out, corpus=corpus, cfg=p.tiny_model, prompt=p.prompt)
    run.stamp(out, data=data_dir, stage="tiny")
    run.record_step("base-model", model=str(out), built="tiny")
    return str(out)


def distill(run_dir: str, *, data_dir: str, teacher: str = "", backend: str = "local") -> str:
    """SFT records with reasoning traces from a teacher endpoint (rejection-sampled on the
    reward); teacher 'template' writes format-only traces from the gold answers instead."""
    run = Run.open(run_dir)
    out = run.path("data-distilled")
    args = command("distill", str(paths(data_dir)["grpo"]), "-o", str(out), run=run)
    if teacher == "template":
        args.append("--template")
    elif teacher:
        args += ["--teacher", teacher]
    execute("distill", args, run=run, backend=backend)
    require(out / "train.jsonl", what="distilled records", made_by="cello train distill")
    run.stamp(out, data=data_dir, stage="distill", teacher=teacher or run.params.train.distill.teacher)
    run.record_step("distill", records=str(out))
    return str(out)


def sft_records(run_dir: str, *, data_dir: str) -> str:
    """The data's SFT records, checked, when no traces are distilled."""
    run = Run.open(run_dir)
    records = require(paths(data_dir)["sft"] / "train.jsonl", what="SFT records", made_by="the data step")
    n = sum(1 for line in records.open() if line.strip())
    if not n:
        msg = f"{records}: no SFT records; check data.puzzles and data.split (the train split is empty)."
        raise InputError(msg)
    run.record_step("sft-records", records=str(records.parent), count=n)
    return str(records.parent)


def sft(run_dir: str, *, data_dir: str, records: str, model: str, backend: str = "local",
        num_nodes: int = 1, gpus_per_node: int = 0, step_gpus: int = 0) -> dict[str, Any]:
    """LoRA SFT of `model` on `records` -> <run>/models/sft (the adapter in model/)."""
    run = Run.open(run_dir)
    out = run.path("models", "sft")
    args = command("sft", records, "-o", str(out), "--model", model, "--resume", run=run)
    execute("sft", args, run=run, backend=backend, num_nodes=num_nodes, gpus_per_node=gpus_per_node,
            step_gpus=step_gpus)
    summary = _summary(out)
    run.stamp(out / "model", data=data_dir, stage="sft", base_model=model)
    run.record_step("sft", model=str(out), summary=summary)
    return {"uri": str(out), "summary": summary}


def merge(run_dir: str, *, data_dir: str, adapter: str, backend: str = "local") -> str:
    """The SFT adapter merged into its base -> <run>/models/sft-merged (a plain model)."""
    run = Run.open(run_dir)
    out = run.path("models", "sft-merged")
    require(Path(adapter), what="SFT output", made_by="the sft step")
    execute("merge", ["train", "merge", adapter, "-o", str(out)], run=run, backend=backend, gpus_per_node=1)
    run.stamp(out, data=data_dir, stage="merge", adapter=adapter)
    run.record_step("merge", model=str(out))
    return str(out)


def grpo(run_dir: str, *, data_dir: str, model: str, backend: str = "local", num_nodes: int = 1,
         gpus_per_node: int = 0, step_gpus: int = 0) -> dict[str, Any]:
    """GRPO on the batch-level reward from `model` -> <run>/models/grpo (the policy in model/)."""
    run = Run.open(run_dir)
    out = run.path("models", "grpo")
    args = command("grpo", str(paths(data_dir)["grpo"]), "-o", str(out), "--model", model, "--resume", run=run)
    if backend == "kubernetes":
        from cello.pipeline.cluster import run_grpo_job

        run_grpo_job(args, run=run, model=model, num_nodes=num_nodes, gpus_per_node=gpus_per_node)
    else:
        execute("grpo", args, run=run, backend=backend, num_nodes=num_nodes, gpus_per_node=gpus_per_node,
                step_gpus=step_gpus)
    summary = _summary(out)
    run.stamp(out / "model", data=data_dir, stage="grpo", start_model=model)
    run.record_step("grpo", model=str(out / "model"), summary=summary)
    return {"uri": str(out / "model"), "summary": summary}


def curve_ends(summary: dict[str, Any]) -> dict[str, float]:
    """A training summary's last value of every curve, plus steps and runtime (KFP metrics)."""
    out = {name: float(points[-1][1]) for name, points in (summary.get("curves") or {}).items() if points}
    for key in ("global_step", "runtime_s", "world_size"):
        if summary.get(key) is not None:
            out[key] = float(summary[key])
    return out

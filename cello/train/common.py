"""What the SFT and GRPO stages share: the process group, devices, TRL arguments, saving.

One process or many: under `torchrun` (or a Kubeflow Trainer / PyTorchJob pod, which set
the standard RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT), every process runs
the same code; the trainer reads the environment, and only the main process writes the
final model and summary. A pod started without torchrun (one process per pod) has no
LOCAL_RANK: `dist_env` sets it to 0 so that the GPU path takes the distributed branch.

Output layout of a training run (OUT = --out):
    OUT/checkpoint-<step>/   trainer checkpoints (what --resume restarts from)
    OUT/runs/                TensorBoard event files (report_to: tensorboard)
    OUT/model/               the final adapter or model + tokenizer (written atomically)
    OUT/summary.json         loss/reward curves and run facts (written atomically)
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cello._io import write_json
from cello.config import LoraStageConfig
from cello.deps import is_available
from cello.errors import ConfigError, InputError
from cello.llm.device import bf16_supported, flash_attention_usable, pick_attention, precision_dtype

log = logging.getLogger(__name__)

MODEL_SUBDIR = "model"
SUMMARY_FILE = "summary.json"
_TRACKERS = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb"}


@dataclass(frozen=True)
class DistEnv:
    rank: int
    local_rank: int
    world_size: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def dist_env() -> DistEnv:
    """The process's place in the job, from the standard torch.distributed environment."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world > 1 and "LOCAL_RANK" not in os.environ:  # one process per pod (PyTorchJob without torchrun)
        os.environ["LOCAL_RANK"] = "0"
    return DistEnv(rank=rank, local_rank=int(os.environ.get("LOCAL_RANK", "0")), world_size=world)


def device_settings(precision: str, attn_implementation: str) -> dict[str, Any]:
    """bf16/fp16/use_cpu flags and the attention kernel for this machine.

    precision 'auto': bf16 on a CUDA GPU that supports it, fp32 otherwise. attention 'auto':
    flash_attention_2 on CUDA when `flash_attn` imports, sdpa otherwise (`cello.llm.device`).
    """
    import torch

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    if precision == "auto":
        precision = "bf16" if bf16_supported(device) else "fp32"
    if precision == "fp16" and not cuda:
        msg = "precision=fp16 needs a CUDA GPU; use precision: auto (fp32 on CPU) or bf16."
        raise ConfigError(msg)
    attn = attn_implementation
    if attn == "auto":
        attn = pick_attention(device)
    elif attn == "flash_attention_2" and not flash_attention_usable(device):
        msg = ("attn_implementation=flash_attention_2 needs CUDA and flash-attn (`pip install 'cello[gpu]'`); "
               "use auto or sdpa.")
        raise ConfigError(msg)
    return {"bf16": precision == "bf16", "fp16": precision == "fp16", "use_cpu": not cuda,
            "attn_implementation": attn, "dtype": precision_dtype(precision)}


def check_report_to(report_to: Sequence[str]) -> list[str]:
    """The trackers to log to; an unknown or uninstalled one is a clear error."""
    out = [r for r in report_to if r != "none"]
    for name in out:
        if name not in _TRACKERS:
            msg = f"report_to: unknown tracker {name!r}; use tensorboard, mlflow, wandb or none."
            raise ConfigError(msg)
        if not is_available(_TRACKERS[name]):
            msg = f"report_to: {name} is not installed; `pip install {name}` or drop it from report_to."
            raise ConfigError(msg)
    return out or ["none"]


def accumulation(total: int, per_device: int, world_size: int, *, what: str) -> int:
    """Gradient accumulation steps so that per_device x world x steps == total."""
    per_step = per_device * world_size
    if total % per_step:
        msg = (f"{what}={total} is not a multiple of per_device_batch_size ({per_device}) x processes "
               f"({world_size}) = {per_step}; change one so that it divides.")
        raise ConfigError(msg)
    return total // per_step


def deepspeed_config(path: str) -> str:
    """A DeepSpeed JSON for TRL's `deepspeed=`; deepspeed itself must be installed (GPU images)."""
    from cello.deps import require

    require("deepspeed", "gpu")
    if not Path(path).is_file():
        msg = f"deepspeed: {path} not found; use configs/deepspeed/zero2.json or zero3.json from the repository."
        raise ConfigError(msg)
    return path


def trainer_args(cfg, out_dir: str | os.PathLike, *, settings: dict[str, Any], grad_acc: int) -> dict[str, Any]:
    """The TrainingArguments that SFT and GRPO set alike from their stage config (`_TrainerStageConfig`)."""
    args = {
        "output_dir": str(out_dir),
        "learning_rate": cfg.learning_rate,
        "num_train_epochs": cfg.epochs,
        "max_steps": cfg.max_steps,
        "per_device_train_batch_size": cfg.per_device_batch_size,
        "gradient_accumulation_steps": grad_acc,
        "gradient_checkpointing": cfg.gradient_checkpointing,
        "bf16": settings["bf16"],
        "fp16": settings["fp16"],
        "use_cpu": settings["use_cpu"],
        "report_to": check_report_to(cfg.report_to),
        "logging_steps": cfg.logging_steps,
        "save_strategy": "steps",
        "save_steps": cfg.save_steps,
        "save_total_limit": cfg.save_total_limit,
        "seed": cfg.seed,
        "data_seed": cfg.seed,
    }
    if cfg.deepspeed:
        args["deepspeed"] = deepspeed_config(cfg.deepspeed)
    return args


def trl_config(cls: type, owned: dict[str, Any], extra: dict[str, Any], *, section: str, reserved: frozenset[str]):
    """Build a TRL config from Cello's fields (`owned`) plus the `trl:` pass-through (`extra`).

    `reserved` is the stage config's OWNED_TRL_KEYS: every key Cello sets must be in it (so the
    check on `trl:` covers it), and no `trl:` entry may touch it."""
    undeclared = sorted(set(owned) - reserved)
    if undeclared:
        msg = f"{section}: Cello sets {undeclared} but they are not in OWNED_TRL_KEYS; add them there."
        raise RuntimeError(msg)
    clash = sorted(set(extra) & reserved)
    if clash:
        msg = (f"{section}.trl: {clash} are set by Cello's own fields; remove them from `trl` and set the matching "
               "field instead.")
        raise ConfigError(msg)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(extra) - known)
    if unknown:
        msg = f"{section}.trl: {unknown} are not {cls.__name__} fields; check the spelling against TRL's docs."
        raise ConfigError(msg)
    kwargs = dict(owned)
    if kwargs.get("gradient_checkpointing"):
        kwargs["gradient_checkpointing_kwargs"] = {"use_reentrant": False}
    if "activation_checkpointing" in known:  # transformers >= 5.x renamed gradient_checkpointing
        for old, new in (("gradient_checkpointing", "activation_checkpointing"),
                         ("gradient_checkpointing_kwargs", "activation_checkpointing_kwargs")):
            if old in kwargs:
                kwargs[new] = kwargs.pop(old)
    kwargs.update(extra)
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as exc:
        msg = f"{section}: TRL rejected the settings: {exc}"
        raise ConfigError(msg) from exc


def lora_config(cfg: LoraStageConfig, *, tied_embeddings: bool):
    """A peft LoraConfig, or None when `enabled` is false (full fine-tuning)."""
    if not cfg.enabled:
        return None
    from peft import LoraConfig

    extra = {}
    if cfg.modules_to_save:
        extra = {"modules_to_save": list(cfg.modules_to_save), "ensure_weight_tying": tied_embeddings}
    return LoraConfig(
        r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=cfg.target_modules,
        use_dora=cfg.use_dora, task_type="CAUSAL_LM", **extra,
    )


def resolve_model(model: str | None, *, section: str) -> str:
    """A model path or hub id; a local-looking path must exist."""
    if not model:
        msg = f"{section}.model is not set; pass --model (a Hugging Face directory or hub id) or set it in params.yaml."
        raise ConfigError(msg)
    p = Path(model).expanduser()
    if (p / MODEL_SUBDIR / "config.json").exists():  # the OUT dir of an earlier stage
        return str(p / MODEL_SUBDIR)
    looks_local = model.startswith((".", "/", "~")) or p.exists() or model.count("/") > 1
    if looks_local and not (p / "config.json").exists():
        msg = (f"{model}: not a model directory (no config.json); build one (`cello model tiny`, "
               "`cello train merge`) or give a hub id.")
        raise InputError(msg)
    return str(p) if looks_local else model


def load_model(path: str, *, settings: dict[str, Any]):
    """Model + tokenizer through from_pretrained, as on a cluster."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=settings["dtype"], attn_implementation=settings["attn_implementation"]
    )
    return model, tokenizer


def last_checkpoint(out_dir: str | os.PathLike, *, resume: bool) -> str | None:
    """The checkpoint to resume from (None: start fresh). Without --resume, old checkpoints are an error."""
    from transformers.trainer_utils import get_last_checkpoint

    out = Path(out_dir)
    ckpt = get_last_checkpoint(str(out)) if out.is_dir() else None
    if ckpt and not resume:
        msg = f"{out} already holds {Path(ckpt).name}; pass --resume to continue it, or choose a new --out."
        raise ConfigError(msg)
    if resume and not ckpt:
        log.warning("--resume: no checkpoint in %s yet; starting from step 0", out)
    return ckpt


def save_final(trainer, out_dir: str | os.PathLike) -> Path:
    """Save the trained adapter/model + tokenizer to OUT/model, atomically, once (main process).

    Every process calls this (DeepSpeed ZeRO-3 gathers the weights collectively); the files
    are written by the main process into a fixed temporary name and renamed at the end.
    """
    final = Path(out_dir) / MODEL_SUBDIR
    tmp = Path(out_dir) / f".{MODEL_SUBDIR}.tmp"
    if trainer.is_world_process_zero() and tmp.exists():
        shutil.rmtree(tmp)
    trainer.accelerator.wait_for_everyone()
    trainer.save_model(str(tmp))  # writes on the main process only
    if trainer.is_world_process_zero():
        trainer.processing_class.save_pretrained(str(tmp))
        tmp.chmod(0o755)
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        log.info("saved model to %s", final)
    trainer.accelerator.wait_for_everyone()
    return final


@dataclass
class TrainResult:
    """What a training run did; `summary.json` holds the same."""

    stage: str
    out_dir: str
    model_dir: str
    global_step: int
    world_size: int
    resumed_from: str | None
    runtime_s: float
    curves: dict[str, list[list[float]]] = field(default_factory=dict)  # name -> [[step, value], ...]
    extra: dict[str, Any] = field(default_factory=dict)

    def render(self) -> str:
        lines = [f"{self.stage}: {self.global_step} steps on {self.world_size} process(es) in "
                 f"{self.runtime_s:.0f}s -> {self.model_dir}"]
        for name, points in self.curves.items():
            if points:
                lines.append(f"  {name}: {points[0][1]:.4g} (step {points[0][0]:g}) -> "
                             f"{points[-1][1]:.4g} (step {points[-1][0]:g})")
        return "\n".join(lines)


def curves(log_history: Sequence[dict], names: Sequence[str]) -> dict[str, list[list[float]]]:
    """Per-step values of the named metrics from the trainer's log history."""
    out: dict[str, list[list[float]]] = {n: [] for n in names}
    for entry in log_history:
        for n in names:
            if n in entry and "step" in entry:
                out[n].append([float(entry["step"]), float(entry[n])])
    return {n: v for n, v in out.items() if v}


def train_and_save(trainer, out_dir: str | os.PathLike, ckpt: str | None) -> tuple[Path, float]:
    """Train (resuming from `ckpt`), save OUT/model; return the model dir and the training seconds."""
    start = time.perf_counter()
    trainer.train(resume_from_checkpoint=ckpt)
    runtime = time.perf_counter() - start
    return save_final(trainer, out_dir), runtime


def finish(trainer, result: TrainResult, *, cfg=None, records: str | os.PathLike | None = None) -> TrainResult:
    """Write summary.json and, given the stage config, the model card of OUT/model (main process
    only: `cello.card`, naming the data version of `records`); return the result."""
    if trainer.is_world_process_zero():
        write_json(dataclasses.asdict(result), Path(result.out_dir) / SUMMARY_FILE)
        if cfg is not None:
            from cello.card import changed_settings, write_card

            write_card(result.model_dir, stage=result.stage, base_model=cfg.model, records=records,
                       changed=changed_settings(cfg), curves=result.curves, adapter=cfg.lora.enabled)
    return result


def read_summary(out_dir: str | os.PathLike) -> dict[str, Any]:
    return json.loads((Path(out_dir) / SUMMARY_FILE).read_text())

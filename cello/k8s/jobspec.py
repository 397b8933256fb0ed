"""What a training job runs, independent of the API that runs it (TrainJob or PyTorchJob).

The pipeline passes a `cello` sub-command (`["train", "sft", DATA, "-o", OUT, ...]`); this module
turns it into the container command:

- SFT and GRPO run under `torchrun -m cello.cli ...`, which reads the rendezvous from the
  `PET_*` variables the controllers inject (Kubeflow Trainer's torch runtime sets all five;
  Training Operator v1 sets PET_NNODES / PET_NODE_RANK / PET_NPROC_PER_NODE but only
  MASTER_ADDR / MASTER_PORT, so those are passed as `$(VAR)` flags that Kubernetes expands).
  A launcher that ignores PET_* would silently train at world size 1 on every node.
- SFT on GPUs gets `--deepspeed <cluster.deepspeed>` unless the command already has one.
- merge and distill are one process on one node (`cello ...`), with at most one GPU.

    spec = training_spec(["train", "sft", "/mnt/cello/data/records/sft", "-o", "/mnt/cello/runs/r1/sft"],
                         stage="sft", run_id="r1", cfg=ClusterConfig(), api="trainjob")
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cello.config import ClusterConfig
from cello.errors import ConfigError
from cello.k8s import podspec
from cello.k8s.images import image as image_ref
from cello.k8s.labels import job_name, run_labels

TORCHRUN_STAGES = ("sft", "grpo")
TRAINING_STAGES = ("sft", "merge", "grpo", "distill")


@dataclass(frozen=True)
class TrainingSpec:
    """One training job: name, labels, image, command, env and size."""

    name: str
    namespace: str
    run_id: str
    stage: str
    labels: dict[str, str]  # on the job and on its pods
    image: str
    command: list[str]  # the container command
    env: dict[str, str]  # plain values
    env_from: list[dict[str, Any]] = field(default_factory=list)  # Secrets, downward API
    num_nodes: int = 1
    gpus_per_node: int = 0


def container_command(command: Sequence[str], *, stage: str, cfg: ClusterConfig, api: str) -> list[str]:
    """The container command that runs the `cello` sub-command `command` for `stage`."""
    args = [str(a) for a in command]
    if not args or args[0] in ("cello", "torchrun", "python", "python3", "-m"):
        msg = (f"command {args[:3]} ...: pass the `cello` sub-command only, e.g. ['train', 'sft', DATA, '-o', OUT]; "
               "the launcher adds `torchrun -m cello.cli` or `cello` itself.")
        raise ConfigError(msg)
    if stage not in TORCHRUN_STAGES:
        return ["cello", *args]
    if stage == "sft" and cfg.deepspeed and cfg.gpus_per_node > 0 and "--deepspeed" not in args:
        args += ["--deepspeed", cfg.deepspeed]
    launcher = ["torchrun"]
    if api == "pytorchjob":  # Training Operator v1 sets MASTER_ADDR/PORT, not PET_MASTER_ADDR/PORT
        launcher += ["--master-addr=$(MASTER_ADDR)", "--master-port=$(MASTER_PORT)"]
    return [*launcher, "-m", "cello.cli", *args]


def training_spec(
    command: Sequence[str],
    *,
    stage: str,
    run_id: str,
    cfg: ClusterConfig,
    api: str | None = None,
    image: str | None = None,
    env: Mapping[str, str] | None = None,
    role: str | None = None,
    extra_env: Sequence[dict[str, Any]] = (),
) -> TrainingSpec:
    """The job for `stage` of `run_id` (name and labels are deterministic)."""
    if stage not in TRAINING_STAGES:
        msg = f"stage {stage!r} is not a training stage; use one of {', '.join(TRAINING_STAGES)}."
        raise ConfigError(msg)
    api = api or cfg.training_api
    distributed = stage in TORCHRUN_STAGES
    return TrainingSpec(
        name=job_name(run_id, stage),
        namespace=cfg.namespace,
        run_id=run_id,
        stage=stage,
        labels=run_labels(run_id, stage, role=role),
        image=image or image_ref("train"),
        command=container_command(command, stage=stage, cfg=cfg, api=api),
        env={"PYTHONUNBUFFERED": "1", "CELLO_RUN_ID": run_id, **{k: str(v) for k, v in (env or {}).items()}},
        env_from=[*podspec.secret_env(cfg), *extra_env],
        num_nodes=cfg.num_nodes if distributed else 1,
        gpus_per_node=cfg.gpus_per_node if distributed else min(cfg.gpus_per_node, 1),
    )

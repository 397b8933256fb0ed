"""Names and labels of everything a run creates on the cluster.

Every object carries the same labels, so that a run's objects can be listed, watched and
deleted together (`cello.k8s.cleanup`); a job's name is a pure function of (run id, stage),
so that a restarted step finds the job it created before instead of creating a second one.

    job_name("9b1c3f2e-5d4a-4e8f-a0b1-c2d3e4f5a6b7", "sft")   # 'cello-sft-9b1c3f2e-5d4a-4e8f-a0b1-c-1d9e2a'
    run_labels("run-1", "grpo", role="rollout")
    run_selector("run-1", stage="grpo")                        # 'cello.dev/run-id=run-1,cello.dev/stage=grpo'
"""

from __future__ import annotations

import hashlib
import re

from cello.errors import ConfigError

PART_OF = "app.kubernetes.io/part-of"
MANAGED_BY = "app.kubernetes.io/managed-by"
RUN_ID = "cello.dev/run-id"
STAGE = "cello.dev/stage"
ROLE = "cello.dev/role"

STAGES = ("sft", "merge", "grpo", "distill", "deploy")
ROLES = ("trainer", "rollout")

# A job name leaves room for what controllers append to it and still stay a DNS label
# (63): JobSet pods '<name>-node-0-0-xxxxx' (hostname '<name>-node-0-0'), PyTorchJob
# '<name>-master-0', GRPO's '<name>-rollout'.
MAX_JOB_NAME = 46

_LABEL_VALUE = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")


def check_run_id(run_id: str) -> str:
    """`run_id` if it can be a label value (what KFP run ids are: UUIDs), else a ConfigError."""
    if not isinstance(run_id, str) or not _LABEL_VALUE.match(run_id):
        msg = (f"run id {run_id!r} cannot be a Kubernetes label value: use at most 63 letters, digits, "
               "'-', '_' or '.', starting and ending with a letter or digit (a KFP run id is a UUID).")
        raise ConfigError(msg)
    return run_id


def _check_stage(stage: str) -> str:
    if stage not in STAGES:
        msg = f"stage {stage!r} is not one of {', '.join(STAGES)}."
        raise ConfigError(msg)
    return stage


def run_labels(run_id: str, stage: str, *, role: str | None = None) -> dict[str, str]:
    """The labels of every object that `run_id` creates for `stage` (and `role`, for GRPO pods)."""
    labels = {PART_OF: "cello", MANAGED_BY: "cello", RUN_ID: check_run_id(run_id), STAGE: _check_stage(stage)}
    if role is not None:
        if role not in ROLES:
            msg = f"role {role!r} is not one of {', '.join(ROLES)}."
            raise ConfigError(msg)
        labels[ROLE] = role
    return labels


def selector(labels: dict[str, str]) -> str:
    """An equality label selector matching `labels`."""
    return ",".join(f"{k}={v}" for k, v in labels.items())


def run_selector(run_id: str, *, stage: str | None = None, role: str | None = None) -> str:
    """Selector of what `run_id` created (for one stage / role when given)."""
    labels = {MANAGED_BY: "cello", RUN_ID: check_run_id(run_id)}
    if stage is not None:
        labels[STAGE] = _check_stage(stage)
    if role is not None:
        labels[ROLE] = role
    return selector(labels)


def job_name(run_id: str, stage: str) -> str:
    """Deterministic DNS-label name of `stage`'s job in `run_id`: 'cello-<stage>-<run id>-<hash>'.

    The hash (of the full run id and stage) keeps two run ids apart when the readable part had to
    be shortened or lower-cased.
    """
    check_run_id(run_id)
    _check_stage(stage)
    digest = hashlib.sha256(f"{run_id}/{stage}".encode()).hexdigest()[:6]
    slug = re.sub(r"[^a-z0-9-]+", "-", run_id.lower()).strip("-")
    room = MAX_JOB_NAME - len(f"cello-{stage}--{digest}")
    slug = slug[:room].rstrip("-")
    return f"cello-{stage}-{slug}-{digest}" if slug else f"cello-{stage}-{digest}"

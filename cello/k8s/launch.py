"""Run a training stage on the cluster and return only when it completed: the entry point of the
pipeline's `kubernetes` backend for SFT, merge, distill (and the trainer of multi-node GRPO).

Like the launchers of Google's pipeline components, it survives a restart: the job name is a
function of (run id, stage), so a restarted step that finds the job re-attaches to it (and
returns at once if it already completed) instead of creating a second one; a job of that name
that belongs to another run is an error, not adopted. Waiting, failure reasons, log streaming
and deletion on cancel are `cello.k8s.wait`'s.

    from cello.k8s.launch import run_training
    run_training(["train", "sft", "/mnt/cello/data/records/sft", "-o", "/mnt/cello/runs/r1/sft"],
                 stage="sft", run_id="r1", cfg=load_params().cluster, log=print)
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from cello.config import ClusterConfig
from cello.errors import ConfigError
from cello.k8s.api import Clients, ClusterError, connect
from cello.k8s.jobspec import TrainingSpec, training_spec
from cello.k8s.labels import RUN_ID
from cello.k8s.wait import JobOutcome, LogFn, job_logger, wait_for


def handle_for(spec: TrainingSpec, cfg: ClusterConfig, api: Clients):
    """The job handle of `cfg.training_api` (TrainJob through the Kubeflow SDK, or PyTorchJob)."""
    if cfg.training_api == "pytorchjob":
        from cello.k8s.pytorchjob import PyTorchJobHandle

        return PyTorchJobHandle(spec, cfg, api)
    from cello.k8s.trainjob import TrainJobHandle

    return TrainJobHandle(spec, cfg, api)


def render_job(spec: TrainingSpec, cfg: ClusterConfig) -> dict[str, Any]:
    """The object `handle_for(spec, cfg, ...).create()` submits, without a cluster (for review)."""
    if cfg.training_api == "pytorchjob":
        from cello.k8s.pytorchjob import render_pytorchjob

        return render_pytorchjob(spec, cfg)
    from cello.k8s.trainjob import render_trainjob

    return render_trainjob(spec, cfg)


@contextlib.contextmanager
def sigterm_exits() -> Iterator[None]:
    """Turn SIGTERM (what Kubernetes sends a cancelled step's pod) into SystemExit, so the wait
    loop deletes the job on the way out. Only in the main thread, only if nobody else handles it."""
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL):
        yield
        return

    def _exit(signum, frame):  # noqa: ARG001
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _exit)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def create_or_attach(job: Any, run_id: str, log: LogFn) -> bool:
    """Create `job`, or re-attach to the one of this run that exists already; True when re-attached."""
    existing = job.read()
    if existing is None:
        try:
            job.create()
            log(f"created {job.kind} {job.namespace}/{job.name}")
            return False
        except ClusterError as exc:
            if exc.status_code != 409:  # 409: created meanwhile (a retried create that had succeeded)
                raise
            existing = job.read()
            if existing is None:
                raise
    owner = ((existing.get("metadata") or {}).get("labels") or {}).get(RUN_ID)
    if owner != run_id:
        msg = (f"{job.kind} {job.namespace}/{job.name} exists but belongs to run {owner!r}, not {run_id!r}; "
               "delete it (kubectl delete) or use another run id.")
        raise ConfigError(msg)
    log(f"re-attached to {job.kind} {job.namespace}/{job.name} (created by an earlier attempt of this step)")
    return True


def launch(job: Any, api: Clients, *, run_id: str, cfg: ClusterConfig, log: LogFn,
           companions: Sequence[str] = ()) -> JobOutcome:
    """Create or re-attach to `job` and wait until it completes."""
    with sigterm_exits():
        reattached = create_or_attach(job, run_id, log)
        return wait_for(job, api, cfg=cfg, log=log, reattached=reattached, companions=companions)


def run_training(
    command: Sequence[str],
    *,
    stage: str,
    run_id: str,
    cfg: ClusterConfig,
    image: str | None = None,
    env: Mapping[str, str] | None = None,
    log: LogFn | None = None,
) -> JobOutcome:
    """Run the `cello` sub-command `command` as `stage`'s training job of `run_id` and wait for it.

    Returns when the job completed; raises a `cello.k8s.wait.JobError` when it failed, passed its
    deadline, vanished or stayed Pending, and a `ClusterError` when the API refused a call.
    """
    log = log or job_logger.info
    spec = training_spec(command, stage=stage, run_id=run_id, cfg=cfg, image=image, env=env)
    api = connect()
    return launch(handle_for(spec, cfg, api), api, run_id=run_id, cfg=cfg, log=log)

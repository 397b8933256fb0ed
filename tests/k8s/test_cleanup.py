"""`cleanup` (the pipeline's exit handler) against the Kubernetes API double: after a failed run it
deletes everything that run created, and nothing of other runs, nor the served model."""

from __future__ import annotations

import pytest

from cello.config import DeployConfig
from cello.k8s.cleanup import cleanup
from cello.k8s.grpo import run_grpo
from cello.k8s.inference import render_inference_service
from cello.k8s.labels import job_name, run_labels
from cello.k8s.launch import run_training
from cello.k8s.wait import JobFailed
from tests.k8s.conftest import fast, in_thread
from tests.k8s.fakecluster import ISVCS, PODS, TRAINJOBS, Plan

SFT = ["train", "sft", "/mnt/cello/data/records/sft", "-o", "/mnt/cello/runs/r1/sft"]
GRPO = ["train", "grpo", "/mnt/cello/data/records/grpo", "-o", "/mnt/cello/runs/r1/grpo"]


class Crash(Exception):
    """The step's process dying mid-run: what it launched keeps running."""


def crash(line):
    if line.startswith("step 1"):
        raise Crash


def owned(cluster, resource, run_id):
    return [n for n in cluster.names(resource)
            if (cluster.get(resource, n)["metadata"].get("labels") or {}).get("cello.dev/run-id") == run_id]


@pytest.mark.asyncio
async def test_cleanup_after_a_failed_run_deletes_only_that_run(cluster):
    cluster.plans[job_name("r1", "sft")] = Plan(outcome="fail")
    cluster.plans[job_name("r1", "grpo")] = Plan(outcome="hang")
    with pytest.raises(JobFailed):  # the failed SFT job is kept for inspection
        await in_thread(run_training, SFT, stage="sft", run_id="r1", cfg=fast())
    with pytest.raises(Crash):  # a GRPO pod left running by a step that died
        await in_thread(run_grpo, GRPO, model="/mnt/cello/runs/r1/merged", run_id="r1", cfg=fast(num_nodes=1),
                        log=crash)
    await in_thread(run_training, ["train", "merge", "a", "-o", "b"], stage="merge", run_id="r2", cfg=fast())
    served = render_inference_service("pvc://cello-workspace/runs/r1/model", cfg=DeployConfig())
    served["metadata"]["labels"].update(run_labels("r1", "deploy"))
    cluster.put(ISVCS, served)
    assert owned(cluster, TRAINJOBS, "r1") and owned(cluster, PODS, "r1")

    deleted = await in_thread(cleanup, "r1", cfg=fast())
    assert f"TrainJob/{job_name('r1', 'sft')}" in deleted and f"Pod/{job_name('r1', 'grpo')}" in deleted
    assert deleted.index(f"TrainJob/{job_name('r1', 'sft')}") < deleted.index(f"Pod/{job_name('r1', 'grpo')}")
    assert owned(cluster, TRAINJOBS, "r1") == [] and owned(cluster, PODS, "r1") == []
    assert owned(cluster, TRAINJOBS, "r2") == [job_name("r2", "merge")]  # another run's job stays
    assert cluster.get(ISVCS, "cello") is not None  # the served model stays
    assert await in_thread(cleanup, "r1", cfg=fast()) == []  # idempotent

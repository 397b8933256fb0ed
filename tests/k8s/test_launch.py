"""`run_training` against the Kubernetes API double: the step succeeds only when the job completes,
and fails, with the reason, for every other ending."""

from __future__ import annotations

import kmock
import pytest
from kubernetes.client.exceptions import ApiException

from cello.errors import ConfigError
from cello.k8s.api import ClusterError, call
from cello.k8s.jobspec import training_spec
from cello.k8s.labels import job_name
from cello.k8s.launch import run_training
from cello.k8s.trainjob import render_trainjob
from cello.k8s.wait import JobDeadlineExceeded, JobFailed, JobVanished, PodsPending
from tests.k8s.conftest import fast, in_thread
from tests.k8s.fakecluster import EVENTS, PODS, PYTORCHJOBS, TRAINJOBS, Plan

SFT = ["train", "sft", "/mnt/cello/data/records/sft", "-o", "/mnt/cello/runs/r1/sft"]
NAME = job_name("r1", "sft")


def creates(cluster, resource=TRAINJOBS) -> int:
    plural = resource.rsplit("/", 1)[1]
    return sum(1 for group, res, verb in cluster.calls() if res == plural and verb == "create")


@pytest.mark.asyncio
async def test_complete_returns_and_streams_node0_logs_while_running(cluster):
    seen = []  # (line, was the job already complete when the line arrived?)

    def log(line):
        job = cluster.get(TRAINJOBS, NAME) or {}
        seen.append((line, bool((job.get("status") or {}).get("conditions"))))

    cluster.plans[NAME] = Plan(run_for=0.8)
    outcome = await in_thread(run_training, SFT, stage="sft", run_id="r1", cfg=fast(), log=log)
    assert (outcome.kind, outcome.name, outcome.reattached) == ("TrainJob", NAME, False)
    lines = [line for line, _ in seen]
    assert lines[0] == f"created TrainJob cello/{NAME}"
    assert lines[1:] == cluster.default.logs  # every line of node 0, in order, once
    assert any(not done for line, done in seen[1:]), "logs arrived only after the job had finished"
    assert outcome.log_tail == cluster.default.logs[-5:]
    job = cluster.get(TRAINJOBS, NAME)
    assert job["spec"]["trainer"]["command"][:3] == ["torchrun", "-m", "cello.cli"]
    assert job["spec"]["trainer"]["numNodes"] == 2
    assert job["metadata"]["labels"]["cello.dev/run-id"] == "r1"
    assert len([p for p in cluster.names(PODS) if p.startswith(NAME)]) == 2


@pytest.mark.asyncio
async def test_failed_job_fails_the_step_with_reason_exit_code_and_log_tail(cluster):
    cluster.plans[NAME] = Plan(outcome="fail", reason="FailedJobs", message="jobset failed: node-0 backoff limit",
                               logs=[f"line {i}" for i in range(9)] + ["torch.OutOfMemoryError: CUDA out of memory"])
    with pytest.raises(JobFailed) as err:
        await in_thread(run_training, SFT, stage="sft", run_id="r1", cfg=fast(), log=lambda line: None)
    text = str(err.value)
    assert f"TrainJob cello/{NAME} failed: FailedJobs: jobset failed: node-0 backoff limit" in text
    assert "container node: Error (exit 1)" in text
    assert "CUDA out of memory" in text and "line 4" not in text  # the last 5 lines only
    assert err.value.log_tail[-1] == "torch.OutOfMemoryError: CUDA out of memory"
    assert cluster.get(TRAINJOBS, NAME) is not None  # kept for inspection; cleanup deletes it


@pytest.mark.asyncio
async def test_deadline_deletes_the_job(cluster):
    cluster.plans[NAME] = Plan(outcome="hang")
    with pytest.raises(JobDeadlineExceeded, match="active_deadline_s=1s"):
        await in_thread(run_training, SFT, stage="sft", run_id="r1",
                        cfg=fast(active_deadline_s=1, pending_timeout_s=30))
    assert cluster.get(TRAINJOBS, NAME) is None


@pytest.mark.asyncio
async def test_deadline_reported_by_the_controller_also_deletes_the_job(cluster):
    cluster.plans[NAME] = Plan(outcome="deadline")
    with pytest.raises(JobDeadlineExceeded, match="DeadlineExceeded"):
        await in_thread(run_training, SFT, stage="sft", run_id="r1", cfg=fast())
    assert cluster.get(TRAINJOBS, NAME) is None


@pytest.mark.asyncio
async def test_vanished_job_fails_the_step(cluster):
    cluster.plans[NAME] = Plan(outcome="vanish")
    with pytest.raises(JobVanished, match="disappeared"):
        await in_thread(run_training, SFT, stage="sft", run_id="r1", cfg=fast())


@pytest.mark.asyncio
async def test_pending_too_long_names_the_pod_and_why(cluster):
    cluster.plans[NAME] = Plan(outcome="pending")
    with pytest.raises(PodsPending) as err:
        await in_thread(run_training, SFT, stage="sft", run_id="r1", cfg=fast())
    text = str(err.value)
    assert f"pod {NAME}-node-" in text and "has been Pending for" in text
    assert "Unschedulable: 0/3 nodes are available: 3 Insufficient nvidia.com/gpu" in text
    assert "FailedScheduling" in text
    assert cluster.get(TRAINJOBS, NAME) is None  # deleted: it must not start behind the failed step
    assert cluster.names(EVENTS)


@pytest.mark.asyncio
async def test_restart_reattaches_instead_of_creating_a_second_job(cluster):
    class Crash(Exception):
        pass

    def crash(line):
        if line.startswith("step 2"):
            raise Crash  # the step's process dies mid-run; the job keeps running

    cluster.plans[NAME] = Plan(run_for=1.0)
    with pytest.raises(Crash):
        await in_thread(run_training, SFT, stage="sft", run_id="r1", cfg=fast(), log=crash)
    lines = []
    outcome = await in_thread(run_training, SFT, stage="sft", run_id="r1", cfg=fast(), log=lines.append)
    assert outcome.reattached
    assert lines[0].startswith(f"re-attached to TrainJob cello/{NAME}")
    assert creates(cluster) == 1
    again = await in_thread(run_training, SFT, stage="sft", run_id="r1", cfg=fast())  # already complete
    assert again.reattached and creates(cluster) == 1


@pytest.mark.asyncio
async def test_a_job_of_another_run_is_not_adopted(cluster):
    other = render_trainjob(training_spec(SFT, stage="sft", run_id="someone-else", cfg=fast()), fast())
    other["metadata"]["name"] = NAME  # a name clash (deterministic names make it all but impossible)
    cluster.put(TRAINJOBS, other)
    with pytest.raises(ConfigError, match="belongs to run 'someone-else'"):
        await in_thread(run_training, SFT, stage="sft", run_id="r1", cfg=fast())


@pytest.mark.asyncio
async def test_cancel_deletes_the_job(cluster):
    def cancel(line):
        if line.startswith("step 1"):
            raise KeyboardInterrupt  # what SIGTERM becomes inside run_training (sigterm_exits)

    cluster.plans[NAME] = Plan(run_for=1.0)
    with pytest.raises(KeyboardInterrupt):
        await in_thread(run_training, SFT, stage="sft", run_id="r1", cfg=fast(), log=cancel)
    assert cluster.get(TRAINJOBS, NAME) is None


@pytest.mark.asyncio
async def test_pytorchjob_completes_with_the_same_semantics(cluster):
    lines = []
    cfg = fast(training_api="pytorchjob", num_nodes=3)
    outcome = await in_thread(run_training, SFT, stage="sft", run_id="r1", cfg=cfg, log=lines.append)
    assert (outcome.kind, outcome.reattached) == ("PyTorchJob", False)
    assert lines[1:] == cluster.default.logs
    job = cluster.get(PYTORCHJOBS, NAME)
    assert job["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] == 2
    assert job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["command"][:3] == [
        "torchrun", "--master-addr=$(MASTER_ADDR)", "--master-port=$(MASTER_PORT)"]
    assert sorted(p for p in cluster.names(PODS) if p.startswith(NAME)) == [f"{NAME}-master-0", f"{NAME}-worker-0",
                                                                            f"{NAME}-worker-1"]


@pytest.mark.asyncio
async def test_pytorchjob_failure_quotes_the_master_log(cluster):
    cluster.plans[NAME] = Plan(outcome="fail", reason="PyTorchJobFailed",
                               message="PyTorchJob r1 is failed because 1 Master replica(s) failed.",
                               logs=["loading", "Traceback (most recent call last):", "ValueError: bad record"])
    with pytest.raises(JobFailed) as err:
        await in_thread(run_training, SFT, stage="sft", run_id="r1", cfg=fast(training_api="pytorchjob"))
    assert "PyTorchJobFailed: PyTorchJob r1 is failed because 1 Master replica(s) failed." in str(err.value)
    assert err.value.log_tail[-1] == "ValueError: bad record"
    assert f"pod {NAME}-master-0: container pytorch: Error (exit 1)" in str(err.value)


@pytest.mark.asyncio
async def test_pytorchjob_pending_too_long_is_deleted(cluster):
    cluster.plans[NAME] = Plan(outcome="pending")
    with pytest.raises(PodsPending, match=f"pod {NAME}-master-0 of PyTorchJob"):
        await in_thread(run_training, SFT, stage="sft", run_id="r1", cfg=fast(training_api="pytorchjob"))
    assert cluster.get(PYTORCHJOBS, NAME) is None


@pytest.mark.asyncio
async def test_refused_call_names_the_rbac_fix(cluster):
    cluster.api["post", kmock.resource(TRAINJOBS)] << kmock.KubernetesError(
        status=403, reason="Forbidden",
        message='trainjobs.trainer.kubeflow.org is forbidden: User "system:serviceaccount:cello:cello-pipeline" '
                "cannot create resource")
    refused = r"create TrainJob cello/.*refused for this step's ServiceAccount \(HTTP 403"
    with pytest.raises(ClusterError, match=refused):
        await in_thread(run_training, SFT, stage="sft", run_id="r1", cfg=fast())


@pytest.mark.asyncio
async def test_merge_is_one_process_on_one_node(cluster):
    merge = ["train", "merge", "/mnt/cello/runs/r1/sft", "-o", "/mnt/cello/runs/r1/merged"]
    await in_thread(run_training, merge, stage="merge", run_id="r1", cfg=fast())
    trainer = cluster.get(TRAINJOBS, job_name("r1", "merge"))["spec"]["trainer"]
    assert trainer["command"] == ["cello", *merge]
    assert trainer["numNodes"] == 1
    assert trainer["resourcesPerNode"]["limits"]["nvidia.com/gpu"] == "1"


def test_transient_errors_are_retried_a_bounded_number_of_times():
    attempts = []

    def flaky(fail: int):
        attempts.append(1)
        if len(attempts) <= fail:
            raise ApiException(status=503, reason="Service Unavailable")
        return "ok"

    def refused():
        attempts.append(1)
        raise ApiException(status=400, reason="Bad Request")

    assert call(flaky, 2, what="get x", retries=2, backoff=0.01) == "ok" and len(attempts) == 3
    attempts.clear()
    with pytest.raises(ClusterError, match="get x: the API server answered HTTP 503"):
        call(flaky, 5, what="get x", retries=1, backoff=0.01)
    assert len(attempts) == 2
    attempts.clear()
    with pytest.raises(ClusterError, match="HTTP 400"):  # not transient: no retry
        call(refused, what="get x", retries=3, backoff=0.01)
    assert len(attempts) == 1


def test_spec_refuses_a_full_command_line():
    with pytest.raises(ConfigError, match="pass the `cello` sub-command only"):
        training_spec(["torchrun", "-m", "cello.cli", "train", "sft"], stage="sft", run_id="r1", cfg=fast())


def test_sigterm_becomes_systemexit_inside_and_is_restored_after():
    """A cancelled KFP step gets SIGTERM; inside run_training it must unwind (and delete the job)."""
    import subprocess
    import sys

    code = ("import os, signal, time\n"
            "from cello.k8s.launch import sigterm_exits\n"
            "try:\n"
            "    with sigterm_exits():\n"
            "        os.kill(os.getpid(), signal.SIGTERM)\n"
            "        time.sleep(5)\n"
            "except SystemExit as exc:\n"
            "    print('exit', exc.code)\n"
            "print('restored', signal.getsignal(signal.SIGTERM) is signal.SIG_DFL)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.split() == ["exit", "143", "restored", "True"]

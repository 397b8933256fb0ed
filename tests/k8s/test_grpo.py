"""GRPO with vLLM rollouts: the objects it runs as (TRL 1.16 server mode), and `run_grpo` against
the Kubernetes API double, single node (native sidecar) and multi-node (server + job)."""

from __future__ import annotations

import pytest

from cello.errors import ConfigError
from cello.k8s.grpo import render_grpo, run_grpo, server_url
from cello.k8s.labels import job_name
from cello.k8s.manifests import core_errors
from cello.k8s.wait import JobFailed
from tests.k8s.conftest import CRDS, fast, in_thread, needs_crds
from tests.k8s.fakecluster import NETPOLS, PODS, SERVICES, TRAINJOBS, Plan

GRPO = ["train", "grpo", "/mnt/cello/data/records/grpo", "-o", "/mnt/cello/runs/r1/grpo"]
MODEL = "/mnt/cello/runs/r1/sft-merged"
NAME = job_name("r1", "grpo")


def _env(container):
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def single(**over):
    return render_grpo(GRPO, model=MODEL, run_id="r1", cfg=fast(num_nodes=1, gpus_per_node=4, **over))


def test_single_node_is_one_pod_with_vllm_as_a_native_sidecar():
    (pod,) = single()
    assert pod["kind"] == "Pod" and pod["spec"]["restartPolicy"] == "Never"
    assert pod["metadata"]["labels"]["cello.dev/role"] == "trainer"
    (sidecar,) = pod["spec"]["initContainers"]
    assert sidecar["restartPolicy"] == "Always"  # native sidecar: stopped by the kubelet when the trainer exits
    assert sidecar["command"][:3] == ["vllm", "serve", MODEL]
    cmd = sidecar["command"]
    assert cmd[cmd.index("--weight-transfer-config") + 1] == '{"backend": "nccl"}'
    assert cmd[cmd.index("--logprobs-mode") + 1] == "processed_logprobs"
    assert cmd[cmd.index("--max-logprobs") + 1] == "-1"
    assert _env(sidecar)["VLLM_SERVER_DEV_MODE"] == "1"
    assert sidecar["startupProbe"]["httpGet"] == {"path": "/health", "port": 8000}
    assert sidecar["resources"]["limits"]["nvidia.com/gpu"] == "1"
    (trainer,) = pod["spec"]["containers"]
    assert trainer["resources"]["limits"]["nvidia.com/gpu"] == "3"  # the node's other GPUs: separate from vLLM's
    assert trainer["command"][:5] == ["torchrun", "--standalone", "--nproc-per-node=3", "-m", "cello.cli"]
    assert trainer["command"][-2:] == ["--vllm-server", "http://localhost:8000"]
    assert _env(trainer)["VLLM_HOST_IP"] == {"fieldRef": {"fieldPath": "status.podIP"}}  # NCCL master address
    assert _env(trainer)["HF_TOKEN"]["secretKeyRef"] == {"name": "cello-hub", "key": "token", "optional": True}
    mounts = {m["mountPath"] for m in trainer["volumeMounts"]}
    assert {"/mnt/cello", "/dev/shm"} <= mounts


def test_single_node_pod_is_a_valid_pod():
    assert core_errors(single()[0]) == []


def test_trainer_and_server_need_separate_gpus():
    with pytest.raises(ConfigError, match="leaves no GPU for the GRPO trainer"):
        render_grpo(GRPO, model=MODEL, run_id="r1", cfg=fast(num_nodes=1, gpus_per_node=1))
    with pytest.raises(ConfigError, match="must not set --vllm-server"):
        render_grpo([*GRPO, "--vllm-server", "http://x"], model=MODEL, run_id="r1", cfg=fast(num_nodes=1))


def test_multi_node_network_policies_open_exactly_the_sync_and_serving_ports():
    pod, service, to_trainer, to_server, job = render_grpo(GRPO, model=MODEL, run_id="r1", cfg=fast())
    assert (pod["kind"], service["kind"], job["kind"]) == ("Pod", "Service", "TrainJob")
    assert service["spec"]["selector"] == pod["metadata"]["labels"]
    assert service["spec"]["ports"][0]["port"] == 8000
    assert job["spec"]["trainer"]["command"][-2:] == ["--vllm-server", server_url("r1", fast())]
    patch_env = job["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0][
        "template"]["spec"]["template"]["spec"]["containers"][0]["env"]
    assert {"name": "VLLM_HOST_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}} in patch_env

    rollout, trainer = {"cello.dev/role": "rollout"}, {"cello.dev/role": "trainer"}
    assert to_trainer["spec"]["podSelector"]["matchLabels"].items() >= trainer.items()
    from_server, from_peers = to_trainer["spec"]["ingress"]
    assert from_server["from"][0]["podSelector"]["matchLabels"].items() >= rollout.items()
    assert {"protocol": "TCP", "port": 51216} in from_server["ports"]
    # NCCL (pods pin ephemeral ports here)
    assert {"protocol": "TCP", "port": 51217, "endPort": 52216} in from_server["ports"]
    assert pod["spec"]["securityContext"]["sysctls"] == [{"name": "net.ipv4.ip_local_port_range",
                                                          "value": "51217 52216"}]
    assert "ports" not in from_peers and from_peers["from"][0]["podSelector"]["matchLabels"].items() >= trainer.items()
    (from_trainer,) = to_server["spec"]["ingress"]
    assert to_server["spec"]["podSelector"]["matchLabels"].items() >= rollout.items()
    assert {"protocol": "TCP", "port": 8000} in from_trainer["ports"] and len(from_trainer["ports"]) == 2
    for policy in (to_trainer, to_server):
        assert policy["spec"]["policyTypes"] == ["Ingress"]
        assert policy["spec"]["podSelector"]["matchLabels"]["cello.dev/run-id"] == "r1"


@needs_crds
@pytest.mark.parametrize("api", ["trainjob", "pytorchjob"])
def test_multi_node_objects_validate(api):
    from cello.k8s.manifests import validate_all

    objs = render_grpo(GRPO, model=MODEL, run_id="r1", cfg=fast(training_api=api))
    validate_all(objs, CRDS)  # core kinds strictly, the job against its CRD


@pytest.mark.asyncio
async def test_single_node_pod_completes_when_the_trainer_exits(cluster):
    lines = []
    outcome = await in_thread(run_grpo, GRPO, model=MODEL, run_id="r1", cfg=fast(num_nodes=1), log=lines.append)
    assert (outcome.kind, outcome.name) == ("Pod", NAME)
    assert lines[1:] == cluster.default.logs  # the trainer container's log
    pod = cluster.get(PODS, NAME)
    assert pod["status"]["phase"] == "Succeeded"
    assert pod["spec"]["initContainers"][0]["restartPolicy"] == "Always"


@pytest.mark.asyncio
async def test_single_node_trainer_failure_fails_the_step(cluster):
    cluster.plans[NAME] = Plan(outcome="fail", exit_code=3, logs=["rollouts from http://localhost:8000",
                                                                  "RuntimeError: NCCL timeout"])
    with pytest.raises(JobFailed) as err:
        await in_thread(run_grpo, GRPO, model=MODEL, run_id="r1", cfg=fast(num_nodes=1))
    assert f"Pod cello/{NAME} failed: Error: the trainer exited with code 3" in str(err.value)
    assert err.value.log_tail[-1] == "RuntimeError: NCCL timeout"


@pytest.mark.asyncio
async def test_multi_node_runs_the_server_then_the_trainer_and_removes_the_server(cluster):
    lines = []
    outcome = await in_thread(run_grpo, GRPO, model=MODEL, run_id="r1", cfg=fast(), log=lines.append)
    assert (outcome.kind, outcome.name) == ("TrainJob", NAME)
    assert f"rollout server {server_url('r1', fast())} created" in lines
    created = [(res, verb) for group, res, verb in cluster.calls() if verb == "create"]
    assert created == [("pods", "create"), ("services", "create"), ("networkpolicies", "create"),
                       ("networkpolicies", "create"), ("trainjobs", "create")]
    assert cluster.get(TRAINJOBS, NAME)["metadata"]["labels"]["cello.dev/role"] == "trainer"
    assert cluster.get(PODS, f"{NAME}-rollout") is None  # the server holds a GPU: gone with the trainer
    assert cluster.names(SERVICES) == [] and cluster.names(NETPOLS) == []


@pytest.mark.asyncio
async def test_multi_node_failure_also_removes_the_server(cluster):
    cluster.plans[NAME] = Plan(outcome="fail")
    with pytest.raises(JobFailed):
        await in_thread(run_grpo, GRPO, model=MODEL, run_id="r1", cfg=fast())
    assert cluster.get(PODS, f"{NAME}-rollout") is None and cluster.names(SERVICES) == []

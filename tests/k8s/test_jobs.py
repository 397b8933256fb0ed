"""Training jobs as objects: names and labels, the container command (torchrun reads PET_*), the
TrainJob and PyTorchJob shapes against the upstream CRDs, the rendered TrainJob being exactly what
the SDK submits, and `cello k8s render trainjob|pytorchjob|grpo`."""

from __future__ import annotations

import re

import pytest
import yaml

from cello.cli import main
from cello.config import ClusterConfig
from cello.errors import ConfigError
from cello.k8s.jobspec import container_command, training_spec
from cello.k8s.labels import MAX_JOB_NAME, job_name, run_labels, run_selector
from cello.k8s.launch import render_job, run_training
from cello.k8s.manifests import validate_all
from cello.k8s.trainjob import render_trainjob
from cello.k8s.validate import schema_errors
from tests.conftest import defaults_params
from tests.k8s.conftest import CRDS, fast, in_thread, needs_crds
from tests.k8s.fakecluster import RUNTIME, TRAINJOBS

SFT = ["train", "sft", "/mnt/cello/data/records/sft", "-o", "/mnt/cello/runs/r1/sft"]
UUID = "9b1c3f2e-5d4a-4e8f-a0b1-c2d3e4f5a6b7"
DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


# ---------------------------------------------------------------- names and labels
@pytest.mark.parametrize("run_id", ["r1", UUID, "Run_2026.11.30", "x" * 63])
@pytest.mark.parametrize("stage", ["sft", "merge", "grpo", "distill", "deploy"])
def test_job_names_are_deterministic_dns_labels(run_id, stage):
    name = job_name(run_id, stage)
    assert name == job_name(run_id, stage)
    assert DNS_LABEL.match(name) and len(name) <= MAX_JOB_NAME
    assert name.startswith(f"cello-{stage}-")


def test_job_names_keep_runs_and_stages_apart():
    names = {job_name(r, s) for r in (UUID, UUID.replace("7", "8"), "Run_1", "run-1") for s in ("sft", "grpo")}
    assert len(names) == 8  # shortened or lower-cased run ids still differ by the hash


def test_labels_and_selectors():
    assert run_labels("r1", "grpo", role="rollout") == {
        "app.kubernetes.io/part-of": "cello", "app.kubernetes.io/managed-by": "cello",
        "cello.dev/run-id": "r1", "cello.dev/stage": "grpo", "cello.dev/role": "rollout"}
    assert run_selector("r1", stage="sft") == ("app.kubernetes.io/managed-by=cello,"
                                               "cello.dev/run-id=r1,cello.dev/stage=sft")
    for bad in ("has space", "-lead", "x" * 64, ""):
        with pytest.raises(ConfigError, match="cannot be a Kubernetes label value"):
            run_labels(bad, "sft")
    with pytest.raises(ConfigError, match="not one of"):
        run_labels("r1", "train")
    with pytest.raises(ConfigError, match="role"):
        run_labels("r1", "grpo", role="server")


# ---------------------------------------------------------------- the container command
def test_sft_runs_under_torchrun_with_deepspeed_once():
    cfg = ClusterConfig()
    cmd = container_command(SFT, stage="sft", cfg=cfg, api="trainjob")
    assert cmd[:3] == ["torchrun", "-m", "cello.cli"]  # no rendezvous flags: torchrun reads PET_*
    assert cmd[-2:] == ["--deepspeed", "configs/deepspeed/zero3.json"]
    again = container_command([*SFT, "--deepspeed", "configs/deepspeed/zero2.json"], stage="sft", cfg=cfg,
                              api="trainjob")
    assert again.count("--deepspeed") == 1 and again[-1].endswith("zero2.json")
    assert "--deepspeed" not in container_command(SFT, stage="sft", cfg=ClusterConfig(gpus_per_node=0), api="trainjob")
    assert "--deepspeed" not in container_command(SFT, stage="sft", cfg=ClusterConfig(deepspeed=None), api="trainjob")


def test_pytorchjob_passes_the_master_address_torchrun_would_not_find():
    cmd = container_command(SFT, stage="sft", cfg=ClusterConfig(), api="pytorchjob")
    assert cmd[:3] == ["torchrun", "--master-addr=$(MASTER_ADDR)", "--master-port=$(MASTER_PORT)"]


def test_merge_and_distill_are_one_process_on_one_node():
    for stage in ("merge", "distill"):
        spec = training_spec(["train", stage, "a", "-o", "b"], stage=stage, run_id="r1", cfg=ClusterConfig(num_nodes=4))
        assert spec.command[0] == "cello" and spec.num_nodes == 1 and spec.gpus_per_node == 1
    with pytest.raises(ConfigError, match="not a training stage"):
        training_spec(SFT, stage="deploy", run_id="r1", cfg=ClusterConfig())


# ---------------------------------------------------------------- objects
def test_trainjob_shape():
    cfg = fast(node_selector={"nvidia.com/gpu.product": "H100"}, active_deadline_s=3600)
    obj = render_trainjob(training_spec(SFT, stage="sft", run_id="r1", cfg=cfg, env={"HF_HUB_OFFLINE": "1"}), cfg)
    spec = obj["spec"]
    assert spec["runtimeRef"] == {"name": "cello-torch", "kind": "ClusterTrainingRuntime"}
    assert spec["activeDeadlineSeconds"] == 3600
    assert spec["trainer"]["numNodes"] == 2
    assert spec["trainer"]["resourcesPerNode"]["limits"] == {"cpu": "32", "memory": "256Gi", "nvidia.com/gpu": "2"}
    assert {"name": "HF_HUB_OFFLINE", "value": "1"} in spec["trainer"]["env"]
    (node,) = spec["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    pod = node["template"]["spec"]["template"]
    assert pod["metadata"]["labels"]["cello.dev/run-id"] == "r1"
    assert pod["spec"]["serviceAccountName"] == "cello-pipeline"
    assert pod["spec"]["nodeSelector"] == {"nvidia.com/gpu.product": "H100"}
    assert {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "64Gi"}} in pod["spec"]["volumes"]
    assert {"name": "workspace", "persistentVolumeClaim": {"claimName": "cello-workspace"}} in pod["spec"]["volumes"]
    (container,) = pod["spec"]["containers"]
    assert container["name"] == "node"
    assert {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "cello-hub", "key": "token",
                                                               "optional": True}}} in container["env"]


def test_pytorchjob_shape():
    cfg = fast(training_api="pytorchjob", num_nodes=3, active_deadline_s=3600)
    obj = render_job(training_spec(SFT, stage="sft", run_id="r1", cfg=cfg), cfg)
    assert obj["kind"] == "PyTorchJob" and obj["spec"]["nprocPerNode"] == "2"
    assert obj["spec"]["runPolicy"] == {"activeDeadlineSeconds": 3600, "backoffLimit": 0, "cleanPodPolicy": "Running"}
    master, worker = obj["spec"]["pytorchReplicaSpecs"]["Master"], obj["spec"]["pytorchReplicaSpecs"]["Worker"]
    assert (master["replicas"], worker["replicas"]) == (1, 2)
    assert master["restartPolicy"] == "Never"
    container = master["template"]["spec"]["containers"][0]
    assert container["name"] == "pytorch" and container["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert {"/mnt/cello", "/dev/shm"} <= {m["mountPath"] for m in container["volumeMounts"]}


VARIANTS = {
    "sft-multinode": ("trainjob", "sft", {}),
    "sft-one-node-cpu": ("trainjob", "sft", {"num_nodes": 1, "gpus_per_node": 0, "deepspeed": None}),
    "merge": ("trainjob", "merge", {"tolerations": [], "secrets": {}}),
    "distill-selector": ("trainjob", "distill", {"node_selector": {"pool": "gpu"}}),
    "pytorchjob-sft": ("pytorchjob", "sft", {"num_nodes": 4}),
    "pytorchjob-merge": ("pytorchjob", "merge", {"num_nodes": 1}),
}


@needs_crds
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_training_jobs_validate_against_the_crds(variant):
    api, stage, over = VARIANTS[variant]
    cfg = fast(training_api=api, **over)
    command = SFT if stage == "sft" else ["train", stage, "a", "-o", "b"]
    validate_all([render_job(training_spec(command, stage=stage, run_id=UUID, cfg=cfg), cfg)], CRDS)


@needs_crds
def test_the_test_runtime_is_a_valid_cluster_training_runtime():
    assert schema_errors(RUNTIME, CRDS) == []


@pytest.mark.asyncio
async def test_rendered_trainjob_is_what_the_sdk_submits(cluster):
    cfg = fast()
    await in_thread(run_training, SFT, stage="sft", run_id="r1", cfg=cfg, env={"A": "1"})
    submitted = cluster.get(TRAINJOBS, job_name("r1", "sft"))
    rendered = render_trainjob(training_spec(SFT, stage="sft", run_id="r1", cfg=cfg, env={"A": "1"}), cfg)
    assert submitted["spec"] == rendered["spec"]
    assert submitted["metadata"]["labels"] == rendered["metadata"]["labels"]


# ---------------------------------------------------------------- CLI
@needs_crds
def test_cli_renders_and_validates_training_jobs(tmp_path):
    out = tmp_path / "job.yaml"
    base = ["--run-id", "r1", "-o", str(out), "--validate", str(CRDS), "--params", defaults_params(tmp_path)]
    assert main(["k8s", "render", "trainjob", *base, "--nodes", "4", "--gpus", "8", "--", *SFT]) == 0
    obj = yaml.safe_load(out.read_text())
    assert obj["kind"] == "TrainJob" and obj["spec"]["trainer"]["numNodes"] == 4
    assert main(["k8s", "render", "pytorchjob", *base, "--stage", "merge", "--env", "A=1",
                 "--", "train", "merge", "a", "-o", "b"]) == 0
    obj = yaml.safe_load(out.read_text())
    master_container = obj["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]
    assert obj["kind"] == "PyTorchJob" and {"name": "A", "value": "1"} in master_container["env"]


@needs_crds
def test_cli_renders_and_validates_grpo(tmp_path):
    out = tmp_path / "grpo.yaml"
    grpo = ["--", "train", "grpo", "/mnt/cello/data/records/grpo", "-o", "/mnt/cello/runs/r1/grpo"]
    common = ["--run-id", "r1", "--model", "/mnt/cello/runs/r1/merged", "-o", str(out), "--validate", str(CRDS),
              "--params", defaults_params(tmp_path)]
    assert main(["k8s", "render", "grpo", *common, *grpo]) == 0
    assert [o["kind"] for o in yaml.safe_load_all(out.read_text())] == ["Pod"]
    assert main(["k8s", "render", "grpo", *common, "--nodes", "2", "--api", "pytorchjob", *grpo]) == 0
    assert [o["kind"] for o in yaml.safe_load_all(out.read_text())] == ["Pod", "Service", "NetworkPolicy",
                                                                        "NetworkPolicy", "PyTorchJob"]


def test_cli_errors_exit_2_and_write_nothing(tmp_path):
    out = tmp_path / "job.yaml"
    assert main(["k8s", "render", "trainjob", "--run-id", "bad id", "-o", str(out), "--", *SFT]) == 2
    assert main(["k8s", "render", "trainjob", "--run-id", "r1", "--stage", "deploy", "-o", str(out), "--", *SFT]) == 2
    assert main(["k8s", "render", "trainjob", "--run-id", "r1", "-o", str(out), "--", "cello", *SFT]) == 2
    assert main(["k8s", "render", "grpo", "--run-id", "r1", "--model", "/m", "--gpus", "1", "--nodes", "1",
                 "-o", str(out), "--", "train", "grpo", "d", "-o", "o"]) == 2
    assert not out.exists()


@pytest.mark.parametrize("kind", ["trainjob", "pytorchjob", "grpo"])
def test_help(kind, capsys):
    assert main(["k8s", "render", kind, "--help"]) == 0
    assert "--run-id" in capsys.readouterr().out


def test_modules_import_without_the_cluster_libraries():
    """kubernetes, kubeflow and kserve load only when a step talks to a cluster."""
    import subprocess
    import sys

    code = ("import sys\n"
            "class Block:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] in ('kubernetes', 'kubeflow', 'kserve'):\n"
            "            raise ImportError('blocked ' + name)\n"
            "sys.meta_path.insert(0, Block())\n"
            "import cello.k8s.launch, cello.k8s.grpo, cello.k8s.deploy, cello.k8s.cleanup, cello.commands.k8s\n"
            "from cello.k8s.jobspec import training_spec\n"
            "from cello.config import ClusterConfig\n"
            "from cello.k8s.pytorchjob import render_pytorchjob\n"
            "cfg = ClusterConfig(training_api='pytorchjob')\n"
            "render_pytorchjob(training_spec(['train', 'merge', 'a'], stage='merge', run_id='r1', cfg=cfg), cfg)\n"
            "from cello.k8s.launch import run_training\n"
            "try:\n"
            "    run_training(['train', 'merge', 'a'], stage='merge', run_id='r1', cfg=cfg)\n"
            "except ImportError as exc:\n"
            "    print(exc)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert "pip install 'cello[pipeline]'" in out.stdout

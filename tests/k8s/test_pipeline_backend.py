"""The pipeline's stages with backend 'kubernetes', against the Kubernetes API double: each stage
launches its job and succeeds only when the job completes; deploy goes to KServe through a real
served route; the incumbent is what is deployed; the exit handler deletes what the run launched.

A run folder and a built data folder are written by hand (what the data step leaves), and a job's
outputs are written before it "runs": the double completes jobs without running them."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from cello.config import ClusterConfig, load_params
from cello.errors import ConfigError
from cello.k8s.labels import job_name
from cello.k8s.wait import JobFailed
from cello.pipeline import deploy as pdeploy
from cello.pipeline import evaluate as peval
from cello.pipeline import train as ptrain
from cello.pipeline.cluster import model_path
from tests.k8s.conftest import CANDIDATES, PUZZLE, in_thread
from tests.k8s.fakecluster import ISVCS, TRAINJOBS, Plan

RUN = "r1"


@pytest.fixture
def run(tmp_path):
    """<workdir>/r1 (resolved params: test-sized timeouts, the workdir as the claim's mount) and
    <workdir>/data/k (a built data folder: dvc.lock, records, the test split)."""
    work = tmp_path / "mnt"
    data = work / "data" / "k"
    for fmt, split in (("sft", "train"), ("grpo", "train"), ("eval", "test")):
        (data / "data" / "records" / fmt).mkdir(parents=True)
        (data / "data" / "records" / fmt / f"{split}.jsonl").write_text('{"id": "p1"}\n')
    (data / "data" / "splits").mkdir(parents=True)
    pd.DataFrame([{"puzzle_id": "smoke", "dataset": "d", "group": "g", "donor_id": "g", "n": 3,
                   "cell_ids": [f"c{i}" for i in range(3)], "cell_genes": [list(c) for c in PUZZLE["cells"]],
                   "context": PUZZLE["context"], "candidates": CANDIDATES, "answer": CANDIDATES}]
                 ).to_parquet(data / "data" / "splits" / "test.parquet")
    (data / "dvc.lock").write_text(yaml.safe_dump({"schema": "2.0", "stages": {f"export@{f}": {"outs": [
        {"path": f"data/records/{f}", "md5": f"{f}-md5.dir"}]} for f in ("sft", "grpo", "eval")}}))
    (data / ".cello-data.json").write_text("{}")
    overrides = {"cluster.mount_path": str(work), "cluster.poll_interval_s": 0.05, "cluster.pending_timeout_s": 2,
                 "cluster.api_retries": 1, "cluster.num_nodes": 1, "deploy.ready_timeout_s": 20,
                 "deploy.smoke_timeout_s": 10, "deploy.poll_interval_s": 0.05}
    params = load_params(None, overrides=overrides)
    run_dir = work / RUN
    run_dir.mkdir(parents=True)
    (run_dir / "params.yaml").write_text(yaml.safe_dump(params.model_dump(mode="json")))
    (run_dir / "lineage.json").write_text(json.dumps({"run_id": RUN, "params_digest": "x"}))
    return work, run_dir, data


def _job_output(run_dir: Path, stage: str) -> None:
    """What the training job leaves on the shared volume when it completes."""
    out = run_dir / "models" / stage
    out.mkdir(parents=True)
    (out / "summary.json").write_text(json.dumps({"stage": stage, "global_step": 7, "curves": {"loss": [[7, 0.5]]}}))


@pytest.mark.asyncio
async def test_sft_stage_launches_a_trainjob_and_returns_when_it_completes(cluster, run):
    work, run_dir, data = run
    _job_output(run_dir, "sft")
    out = await in_thread(ptrain.sft, str(run_dir), data_dir=str(data), records=str(data / "data/records/sft"),
                          model="Qwen/Qwen2.5-7B-Instruct", backend="kubernetes", num_nodes=2, gpus_per_node=4)
    assert out["uri"] == str(run_dir / "models" / "sft") and out["summary"]["global_step"] == 7
    job = cluster.get(TRAINJOBS, job_name(RUN, "sft"))
    command = job["spec"]["trainer"]["command"]
    assert command[:3] == ["torchrun", "-m", "cello.cli"] and command[3:5] == ["train", "sft"]
    assert ["--model", "Qwen/Qwen2.5-7B-Instruct"] == command[command.index("--model"):command.index("--model") + 2]
    assert command[command.index("--params") + 1] == str(run_dir / "params.yaml")
    assert job["spec"]["trainer"]["numNodes"] == 2
    assert job["metadata"]["labels"]["cello.dev/run-id"] == RUN
    lineage = json.loads((run_dir / "models" / "sft" / "model" / "lineage.json").read_text())
    assert lineage["data"]["outs"]["data/records/sft"] == "sft-md5.dir"


@pytest.mark.asyncio
async def test_a_failed_job_fails_the_stage_with_the_reason(cluster, run):
    work, run_dir, data = run
    cluster.plans[job_name(RUN, "sft")] = Plan(outcome="fail", reason="FailedJobs", message="node-0 backoff limit",
                                               logs=["torch.OutOfMemoryError: CUDA out of memory"])
    with pytest.raises(JobFailed, match="FailedJobs: node-0 backoff limit") as err:
        await in_thread(ptrain.sft, str(run_dir), data_dir=str(data), records=str(data / "data/records/sft"),
                        model="m", backend="kubernetes", num_nodes=1, gpus_per_node=8)
    assert "CUDA out of memory" in str(err.value)
    assert not (run_dir / "steps" / "sft.json").exists()  # nothing recorded for a failed stage


@pytest.mark.asyncio
async def test_deploy_stage_goes_to_kserve_and_the_next_run_compares_with_it(kserve, run):
    work, run_dir, data = run
    model = run_dir / "models" / "grpo" / "model"
    info = await in_thread(pdeploy.deploy, str(run_dir), data_dir=str(data), model=str(model), backend="kubernetes")
    assert info["storage_uri"] == f"pvc://cello-workspace/{RUN}/models/grpo/model"
    assert info["url"] == kserve.serving_url and info["valid_format"] is True
    assert sorted(info["assignment"].values()) == sorted(CANDIDATES)
    isvc = kserve.get(ISVCS, "cello")
    assert isvc["spec"]["predictor"]["model"]["storageUri"] == info["storage_uri"]
    assert json.loads((run_dir / "deploy" / "deployed.json").read_text())["lineage"]["data"]["version"]
    found = await in_thread(peval.find_incumbent, str(run_dir), incumbent="", backend="kubernetes")
    assert found == str(model)  # the served checkpoint, as a path on the claim
    given = await in_thread(peval.find_incumbent, str(run_dir), incumbent="/elsewhere/m", backend="kubernetes")
    assert given == "/elsewhere/m"
    published = await in_thread(peval.find_incumbent, str(run_dir), incumbent="hf://ncbi/Cell-o1", backend="kubernetes")
    assert published == "hf://ncbi/Cell-o1"  # the published model as the incumbent, read from the Hub
    with pytest.raises(ConfigError, match="not a Hub reference"):
        await in_thread(peval.find_incumbent, str(run_dir), incumbent="hf://ncbi", backend="kubernetes")
    assert model_path("hf://ncbi/Cell-o1:0a1b2c", ClusterConfig()) == "hf://ncbi/Cell-o1:0a1b2c"  # served from the Hub


class Crash(Exception):
    """The step's process dying mid-run: the job it launched keeps running."""


def crash(line):
    if line.startswith("step 1"):
        raise Crash


@pytest.mark.asyncio
async def test_exit_handler_deletes_what_the_run_launched(cluster, run, monkeypatch):
    work, run_dir, data = run
    name = job_name(RUN, "sft")
    cluster.plans[name] = Plan(outcome="hang")
    monkeypatch.setattr("cello.pipeline.cluster._echo", crash)
    with pytest.raises(Crash):
        await in_thread(ptrain.sft, str(run_dir), data_dir=str(data), records=str(data / "data/records/sft"),
                        model="m", backend="kubernetes", num_nodes=1, gpus_per_node=8)
    assert cluster.get(TRAINJOBS, name) is not None  # left running by the dead step
    monkeypatch.setattr("cello.pipeline.cluster._echo", lambda line: None)
    info = await in_thread(pdeploy.cleanup, str(work), run_id=RUN, backend="kubernetes",
                           status={"state": "FAILED", "error": "sft failed"})
    assert f"TrainJob/{name}" in info["deleted"]
    assert cluster.get(TRAINJOBS, name) is None
    assert json.loads((run_dir / "status.json").read_text()) | {"finished": None} == {
        "run_id": RUN, "state": "FAILED", "error": "sft failed", "backend": "kubernetes", "deleted": info["deleted"],
        "finished": None}

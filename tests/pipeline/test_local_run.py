"""`cello pipeline run --local` end to end on the demo data, both gate branches, and a failing task.

The runs are short versions of `make demo` (fewer SFT epochs and GRPO steps, short completions):
they check the pipeline's mechanics and outputs, not how well the tiny model learns. They share
one workdir, so the data is built once (content-addressed data folders).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
QUICK = ["--set", "train.sft.epochs=2", "--set", "train.grpo.max_steps=3",
         "--set", "generation.sampling.max_new_tokens=48"]
pytestmark = pytest.mark.slow


def cello_pipeline(workdir: Path, run_id: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("CELLO_SERVE_TOKEN", None)
    cmd = [sys.executable, "-m", "cello.cli", "pipeline", "run", "--local", "--profile", "local",
           "--workdir", str(workdir), "--run-id", run_id, "--repo", str(REPO), *QUICK, *args]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("runs")


@pytest.fixture(scope="module")
def rejected(workdir):
    proc = cello_pipeline(workdir, "rejected")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc, workdir / "rejected"


@pytest.fixture(scope="module")
def promoted(workdir, rejected):  # after `rejected`: reuses its data folder
    proc = cello_pipeline(workdir, "promoted", "--set", "gate.min_accuracy=0", "--set", "gate.baseline_margin=-1")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc, workdir / "promoted"


def _executor_outputs(run: Path) -> dict[str, dict]:
    """task name -> the executor_output.json KFP's local runner wrote for it."""
    return {p.parent.name: json.loads(p.read_text()) for p in (run / "kfp").glob("*/*/executor_output.json")}


def test_rejected_run_has_every_artifact_and_skips_deploy(rejected):
    proc, run = rejected
    out = proc.stdout
    for task in ("prepare", "cells-part", "build-data", "base-model", "sft", "merge", "grpo", "evaluate-model",
                 "evaluate-baseline", "gate", "cleanup"):
        assert f"] {task} " in out, f"no progress line for {task}:\n{out}"
    assert "gate     REJECT" in out and "deploy   skipped: the gate rejected the candidate" in out
    assert f"cello serve --model {run}/models/grpo/model" in out or "cello serve --model" in out
    for rel in ("params.yaml", "lineage.json", "models/tiny/config.json", "models/sft/model/adapter_config.json",
                "models/sft-merged/config.json", "models/grpo/model/config.json", "eval/candidate/predictions.jsonl",
                "eval/candidate/metrics.json", "eval/candidate/report.md", "eval/candidate/accuracy_by_n.png",
                "eval/baseline/metrics.json", "gate/decision.json", "gate/decision.md", "status.json", "pipeline.log"):
        assert (run / rel).is_file(), rel
    assert not (run / "deploy").exists()
    decision = json.loads((run / "gate" / "decision.json").read_text())
    rules = {r["rule"] for r in decision["reasons"]}
    assert decision["passed"] is False and rules >= {"min_accuracy", "beats_baseline"}
    assert json.loads((run / "status.json").read_text())["state"] == "SUCCEEDED"


def test_outputs_are_kfp_artifacts_with_lineage(rejected):
    _, run = rejected
    outputs = _executor_outputs(run)
    metrics = outputs["evaluate-model"]["artifacts"]["metrics"]["artifacts"][0]["metadata"]
    assert 0 <= metrics["batch_accuracy"] <= 1 and 0 <= metrics["cell_accuracy"] <= 1
    assert {"format_rate", "valid_rate", "cell_accuracy_ci_low", "puzzles"} <= set(metrics)
    for task, artifact in (("evaluate-model", "report"), ("evaluate-model", "plot"), ("gate", "decision"),
                           ("evaluate-baseline", "report"), ("sft", "metrics"), ("grpo", "metrics")):
        meta = outputs[task]["artifacts"][artifact]["artifacts"][0]["metadata"]
        assert meta["data_version"] and meta["params_digest"] and meta["git_revision"], (task, artifact)
        assert json.loads(meta["lineage"])["run_id"] == "rejected"
    plot = Path(outputs["evaluate-model"]["artifacts"]["plot"]["artifacts"][0]["uri"]).read_text()
    assert plot.startswith("<!doctype html>") and "data:image/png;base64," in plot
    gate_md = Path(outputs["gate"]["artifacts"]["decision"]["artifacts"][0]["uri"]).read_text()
    assert "| min_accuracy | **FAIL** |" in gate_md and "| beats_baseline |" in gate_md
    assert outputs["gate"]["parameterValues"]["Output"] is False
    lineage = json.loads((run / "models" / "grpo" / "model" / "lineage.json").read_text())
    data = json.loads((run / "data" / ".cello-data.json").read_text())
    assert lineage["data"]["version"] == data["version"]["version"] and lineage["profile"] == "local"
    assert lineage["overrides"]["train.grpo.max_steps"] == 3


def test_lowered_gate_deploys_and_the_local_server_answers(promoted, rejected):
    proc, run = promoted
    assert "gate     PASS" in proc.stdout and "deploy   served" in proc.stdout
    deployed = json.loads((run / "deploy" / "deployed.json").read_text())
    request = json.loads((run / "deploy" / "request.json").read_text())
    answer = json.loads((run / "deploy" / "answer.json").read_text())
    puzzle = request["instances"][0]
    assignment = answer["body"]["predictions"][0]["assignment"]
    assert answer["status"] == 200
    assert sorted(assignment) == sorted(c["id"] for c in puzzle["cells"])
    assert sorted(assignment.values()) == sorted(puzzle["candidates"])
    assert deployed["exit_code"] == 0  # the server was stopped cleanly by its PID
    # the second run reused the first run's data folder
    assert (run / "data").resolve() == (rejected[1] / "data").resolve()


def test_a_failing_task_names_itself_and_the_exit_handler_still_runs(workdir, tmp_path):
    corrupt = tmp_path / "corrupt.h5ad"
    corrupt.write_bytes(b"this is not an HDF5 file")
    proc = cello_pipeline(workdir, "broken", "--set", f"data.inputs=[{corrupt}]")
    assert proc.returncode == 2
    err = proc.stderr + proc.stdout
    assert "failed in task 'cells-part'" in err and str(corrupt) in err and "full log:" in err
    status = json.loads((workdir / "broken" / "status.json").read_text())
    assert status["state"] == "FAILED"

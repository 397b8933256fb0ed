"""The pipeline's paths that meet a vLLM server, against a real one.

- evaluation: `cello eval SPLIT --model http://.../v1` over the demo test split writes the same
  files, fields and metrics (same keys, same counts) as the transformers backend on the same model;
- deploy: the local deploy step's smoke test (`serve_and_smoke`) started as the KServe
  transformer in front of vLLM: one real test puzzle in, a valid assignment out, server stopped;
- GRPO: the rollout server health wait returns on vLLM's /health;
- distillation: the teacher client samples k completions per puzzle from vLLM, scores them,
  records token counts, and a rerun resumes (nothing asked again).
"""

from __future__ import annotations

import json

import pytest

from cello.cli import main
from cello.evaluate import METRICS, PREDICTIONS
from tests.conftest import defaults_params
from tests.vllm.conftest import SERVED

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

MAX_NEW = 24


def shape(value):
    """The structure of a JSON value: dict keys and list item shapes, leaves by kind."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [shape(v) for v in value[:1]]
    if isinstance(value, bool) or value is None:
        return "bool/null"
    return "number" if isinstance(value, int | float) else type(value).__name__


@pytest.fixture(scope="module")
def demo_records(demo_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("vllm-demo")
    for fmt in ("eval", "grpo"):
        assert main(["data", "export", str(demo_data / "splits"), "-o", str(root / fmt), "--format", fmt,
                     "--params", defaults_params(root)]) == 0
    return root


def test_eval_over_http_has_the_transformers_backends_shape(vllm, vllm_model, demo_records, api_key, tmp_path):
    split = demo_records / "eval" / "test.jsonl"
    common = ["--max-new-tokens", str(MAX_NEW), "--no-progress", "--params", defaults_params(tmp_path)]
    assert main(["eval", str(split), "--model", vllm.url, "-o", str(tmp_path / "vllm"), "--concurrency", "8",
                 *common]) == 0
    assert main(["eval", str(split), "--model", str(vllm_model), "-o", str(tmp_path / "hf"), "--batch-size", "8",
                 *common]) == 0
    served, local = (json.loads((tmp_path / d / METRICS).read_text()) for d in ("vllm", "hf"))
    n = len(split.read_text().splitlines())
    assert served["overall"]["count"] == local["overall"]["count"] == n
    assert (served["kind"], served["model"], local["kind"]) == ("openai-http", SERVED, "transformers")
    volatile = ("timing", "model", "kind", "model_dir")  # model_dir: the checkpoint, None for a URL
    assert shape({k: v for k, v in served.items() if k not in volatile}) == \
        shape({k: v for k, v in local.items() if k not in volatile})
    assert served.keys() == local.keys()
    assert served["by_n"].keys() == local["by_n"].keys() and served["by_dataset"].keys() == local["by_dataset"].keys()
    rows = {d: [json.loads(x) for x in (tmp_path / d / PREDICTIONS).read_text().splitlines()] for d in ("vllm", "hf")}
    assert [r["id"] for r in rows["vllm"]] == [r["id"] for r in rows["hf"]]
    assert {tuple(sorted(r)) for r in rows["vllm"]} == {tuple(sorted(r)) for r in rows["hf"]}
    assert all(0 < r["completion_tokens"] <= MAX_NEW for r in rows["vllm"])
    assert (tmp_path / "vllm" / "report.md").exists() and (tmp_path / "vllm" / "accuracy_by_n.png").exists()


def test_deploy_smoke_test_through_the_transformer(vllm, demo_data, api_key, tmp_path):
    import shutil

    from cello.pipeline.data import READY, SPLITS_DIR
    from cello.pipeline.deploy import serve_and_smoke, smoke_puzzle
    from cello.pipeline.run import Run

    data = tmp_path / "data"
    (data / SPLITS_DIR).mkdir(parents=True)
    shutil.copy(demo_data / "splits" / "test.parquet", data / SPLITS_DIR / "test.parquet")
    (data / READY).write_text("{}\n")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "params.yaml").write_text(f"serve: {{max_new_tokens: {MAX_NEW}}}\n")
    out = run_dir / "deploy"
    out.mkdir()
    puzzle = smoke_puzzle(str(data))
    info = serve_and_smoke(Run.open(run_dir), vllm.url, puzzle, out)
    assert sorted(info["assignment"]) == sorted(c["id"] for c in puzzle["cells"])
    assert sorted(info["assignment"].values()) == sorted(puzzle["candidates"])
    assert info["exit_code"] == 0 and info["url"].endswith("/v1/models/cello:predict")
    answer = json.loads((out / "answer.json").read_text())
    assert answer["status"] == 200 and answer["body"]["predictions"][0]["completion"]


def test_grpo_waits_for_vllms_health(vllm):
    from cello.train.grpo import wait_for_server

    wait_for_server(vllm.base, timeout=10, interval=0.5)


def test_distill_samples_from_vllm_and_resumes(vllm, demo_records, api_key, tmp_path):
    from cello.config import DistillStageConfig
    from cello.train.distill import distill

    k, samples = 4, 3
    cfg = DistillStageConfig(teacher=vllm.url, samples=samples, temperature=1.0, max_tokens=MAX_NEW, seed=0,
                             concurrency=4, retries=0, chunk=2)
    first = distill(demo_records / "grpo", tmp_path / "distill", cfg=cfg, limit=k)
    assert (first.puzzles, first.samples, first.skipped_done) == (k, k * samples, 0)
    assert first.prompt_tokens > k * 50 and 0 < first.completion_tokens <= k * samples * MAX_NEW
    ledger = [json.loads(x) for x in (tmp_path / "distill" / ".work" / "ledger.jsonl").read_text().splitlines()]
    assert len(ledger) == k and all(len(row["rewards"]) == samples for row in ledger)
    summary = json.loads((tmp_path / "distill" / "summary.json").read_text())
    assert summary["records"] == first.records == len((tmp_path / "distill" / "train.jsonl").read_text().splitlines())
    again = distill(demo_records / "grpo", tmp_path / "distill", cfg=cfg, limit=k)
    assert again.skipped_done == k and again.samples == first.samples

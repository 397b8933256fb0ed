"""cello.evaluate, cello.report and `cello eval run|plot`: the baseline and a tiny model on the demo
test split, through the transformers and the HTTP backends; resume after a crash.

    .venv/bin/pytest tests/test_evaluate.py -q -s     # -s prints baseline vs chance vs tiny model
"""

from __future__ import annotations

import json
import logging

import pytest

from cello.baselines import fit_baseline
from cello.cli import main
from cello.config import EvalConfig
from cello.errors import InputError
from cello.evaluate import (
    METRICS,
    PLOT,
    PREDICTIONS,
    REPORT,
    BaselinePredictor,
    evaluate,
    load_eval_items,
    make_predictor,
    read_predictions,
)
from cello.scoring import compute_metrics
from tests.conftest import defaults_params

try:
    from llm_server import build_test_model, serve_openai
except ImportError:  # tests/ is a package
    from tests.llm_server import build_test_model, serve_openai

FIELDS = (
    "id",
    "dataset",
    "n",
    "completion",
    "labels",
    "answer",
    "candidates",
    "valid",
    "legitimate",
    "reason",
    "reward",
    "correct",
    "cell_accuracy",
    "exact",
    "repaired_labels",
    "repaired",
    "model",
    "group",
)
SCORED = ("overall", "by_n", "by_dataset")


@pytest.fixture(scope="module")
def demo(demo_data, tmp_path_factory):
    """The demo split as eval records, plus the marker baseline fitted on its train split."""
    root = tmp_path_factory.mktemp("eval-demo")
    assert (
        main(
            [
                "data",
                "export",
                str(demo_data / "splits"),
                "-o",
                str(root / "eval"),
                "--format",
                "eval",
                "--params",
                defaults_params(root),
            ]
        )
        == 0
    )
    fit_baseline(demo_data / "splits" / "train.parquet", root / "baseline.json")
    return {
        "records": root / "eval" / "test.jsonl",
        "parquet": demo_data / "splits" / "test.parquet",
        "baseline": root / "baseline.json",
        "none": defaults_params(root),
    }


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    return build_test_model(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def baseline_run(demo, tmp_path_factory):
    """`cello eval` (the default sub-command) of the marker baseline over the whole demo test split."""
    out = tmp_path_factory.mktemp("runs") / "baseline"
    assert (
        main(
            [
                "eval",
                str(demo["records"]),
                "--baseline",
                str(demo["baseline"]),
                "-o",
                str(out),
                "--no-progress",
                "--params",
                demo["none"],
            ]
        )
        == 0
    )
    return out


def _lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _scores(metrics: dict) -> dict:
    return {k: metrics[k] for k in SCORED}


# ---------------------------------------------------------------- the split
def test_jsonl_and_parquet_splits_give_the_same_prompts(demo):
    records, rows = load_eval_items(demo["records"]), load_eval_items(demo["parquet"])
    assert [r["id"] for r in records] == [r["id"] for r in rows]
    for a, b in zip(records, rows, strict=True):
        assert a["messages"] == b["messages"] and a["answer"] == b["answer"] and a["candidates"] == b["candidates"]
        assert [m["role"] for m in a["messages"]] == ["system", "user"] and a["n"] == len(a["answer"])
    assert len(load_eval_items(demo["records"], limit=5)) == 5
    assert load_eval_items(demo["records"].parent)[0]["id"] == records[0]["id"]  # a directory: its test.jsonl


def test_bad_split_and_predictor_choice_are_user_errors(tmp_path, demo):
    with pytest.raises(InputError, match="no such file"):
        load_eval_items(tmp_path / "missing.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"id": "x", "messages": [{"role": "user", "content": "hi"}]}) + "\n")
    with pytest.raises(InputError, match="answer"):
        load_eval_items(bad)
    out = str(tmp_path / "o")
    assert main(["eval", str(tmp_path / "missing.jsonl"), "--baseline", "chance", "-o", out]) == 2
    assert main(["eval", str(demo["records"]), "-o", out, "--params", demo["none"]]) == 2  # neither model nor baseline
    assert main(["eval", "run", str(demo["records"]), "-o", out, "--baseline", "chance", "--model", "x"]) == 2


def test_help():
    for argv in (["eval", "--help"], ["eval", "run", "--help"], ["eval", "gate", "--help"], ["eval", "plot", "--help"]):
        assert main(argv) == 0


# ---------------------------------------------------------------- the baseline on the demo split
def test_baseline_eval_writes_predictions_metrics_report_plot(baseline_run, demo):
    items = load_eval_items(demo["records"])
    preds = _lines(baseline_run / PREDICTIONS)
    assert sorted(p["id"] for p in preds) == sorted(it["id"] for it in items)
    for key in FIELDS:
        assert key in preds[0], key
    assert all(p["valid"] and not p["repaired"] and p["model"] == "marker-baseline" for p in preds)
    metrics = json.loads((baseline_run / METRICS).read_text())
    # metrics are exactly what the predictions say (same bootstrap settings as EvalConfig)
    cfg = EvalConfig()
    assert _scores(metrics) == _scores(compute_metrics(preds, n_boot=cfg.n_boot, seed=cfg.seed, ci=cfg.ci))
    o = metrics["overall"]
    assert o["count"] == len(items) and o["cells"] == sum(it["n"] for it in items)
    assert o["batch_accuracy"] == pytest.approx(sum(p["exact"] for p in preds) / len(preds))
    # the paper's cell-level accuracy is micro (correct cells / cells); the per-puzzle mean is kept as _macro
    assert o["cell_accuracy"] == pytest.approx(sum(sum(p["correct"]) for p in preds) / o["cells"])
    assert o["cell_accuracy_macro"] == pytest.approx(sum(p["cell_accuracy"] for p in preds) / len(preds))
    assert o["format_rate"] == o["valid_rate"] == o["label_uniqueness"] == 1.0
    for n, g in metrics["by_n"].items():
        mine = [p for p in preds if len(p["answer"]) == int(n)]
        assert g["cell_accuracy"] == pytest.approx(sum(sum(p["correct"]) for p in mine) / (int(n) * len(mine)))
    assert metrics["chance"]["cell_accuracy"] == pytest.approx(len(items) / o["cells"])  # 1 cell per puzzle expected
    assert set(metrics["by_n"]) == {str(it["n"]) for it in items}
    assert metrics["model"] == "marker-baseline" and metrics["kind"] == "baseline"
    t = metrics["timing"]
    assert t["wall_s"] >= t["generation_s"] > 0 and 0 < t["outside_generation_share"] <= 1
    assert t["generated"] == len(items) and t["resumed"] == 0
    # the non-LLM floor is far above chance on real PBMCs
    assert o["cell_accuracy_ci"][0] > metrics["chance"]["cell_accuracy"] + 0.2
    assert o["batch_accuracy"] > metrics["chance"]["batch_accuracy"] + 0.1
    report = (baseline_run / REPORT).read_text()
    assert report.startswith("# Evaluation: marker-baseline") and f"| **overall** | {len(items)} |" in report
    assert "| valid (reward) |" in report and "micro" in report
    assert all(f"| N = {n} |" in report for n in metrics["by_n"])
    assert (baseline_run / PLOT).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_chance_run_compared_with_the_baseline(baseline_run, demo, tmp_path, capsys):
    out = tmp_path / "chance"
    assert (
        main(
            [
                "eval",
                "run",
                str(demo["parquet"]),
                "--baseline",
                "chance",
                "-o",
                str(out),
                "--no-progress",
                "--compare",
                str(baseline_run / METRICS),
                "--params",
                demo["none"],
            ]
        )
        == 0
    )
    chance, base = (json.loads((d / METRICS).read_text()) for d in (out, baseline_run))
    assert chance["puzzles"] == base["puzzles"]  # same puzzles from .parquet and .jsonl
    assert chance["overall"]["cell_accuracy"] < base["overall"]["cell_accuracy"] - 0.3
    assert "## Compared runs" in (out / REPORT).read_text()
    with capsys.disabled():
        print(
            f"\ndemo test split ({base['overall']['count']} puzzles): marker baseline batch "
            f"{base['overall']['batch_accuracy']:.3f} cell {base['overall']['cell_accuracy']:.3f}; chance run batch "
            f"{chance['overall']['batch_accuracy']:.3f} cell {chance['overall']['cell_accuracy']:.3f} (expected batch "
            f"{base['chance']['batch_accuracy']:.4f}, cell {base['chance']['cell_accuracy']:.3f})"
        )


def test_plot_command(baseline_run, tmp_path):
    png = tmp_path / "by_n.png"
    m = str(baseline_run / METRICS)
    assert main(["eval", "plot", m, m, "-o", str(png), "--label", "a", "--label", "b"]) == 0
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert main(["eval", "plot", m, "-o", str(png), "--label", "a", "--label", "b"]) == 2
    assert main(["eval", "plot", str(tmp_path / "nope.json"), "-o", str(png)]) == 2


# ---------------------------------------------------------------- resume
def test_resume_skips_done_ids_and_ignores_a_truncated_line(baseline_run, demo, tmp_path, caplog):
    full = _lines(baseline_run / PREDICTIONS)
    out = tmp_path / "resumed"
    out.mkdir()
    half = json.dumps(full[10])
    (out / PREDICTIONS).write_text("".join(json.dumps(r) + "\n" for r in full[:10]) + half[: len(half) // 2])
    with caplog.at_level(logging.WARNING, logger="cello.evaluate"):
        result = evaluate(demo["records"], out, baseline=demo["baseline"], progress=False)
    assert "incomplete last line" in caplog.text
    assert (result.generated, result.resumed) == (len(full) - 10, 10)
    ids = [p["id"] for p in _lines(out / PREDICTIONS)]
    assert len(ids) == len(set(ids)) == len(full) and set(ids) == {p["id"] for p in full}
    # metrics do not depend on the resume history
    assert _scores(result.metrics) == _scores(json.loads((baseline_run / METRICS).read_text()))
    again = evaluate(demo["records"], out, baseline=demo["baseline"], progress=False)  # nothing left to do
    assert (again.generated, again.resumed) == (0, len(full))


class _Crashing(BaselinePredictor):
    """The marker baseline, dying after `ok` chunks (a killed process, as the journal sees it)."""

    def __init__(self, inner: BaselinePredictor, ok: int) -> None:
        super().__init__(inner.solver, name=inner.name, template=inner.template, chunk_size=5)
        self.left = ok

    def predict(self, items, progress=None):
        if self.left == 0:
            raise RuntimeError("killed")
        self.left -= 1
        return super().predict(items, progress)


def test_a_crash_loses_at_most_one_chunk(demo, tmp_path):
    out = tmp_path / "crash"
    inner = make_predictor(baseline=demo["baseline"])
    with pytest.raises(RuntimeError, match="killed"):
        evaluate(demo["records"], out, predictor=_Crashing(inner, ok=2), progress=False)
    assert len(_lines(out / PREDICTIONS)) == 10 and not (out / METRICS).exists()
    result = evaluate(demo["records"], out, baseline=demo["baseline"], progress=False)
    assert result.resumed == 10 and result.metrics["overall"]["count"] == len(load_eval_items(demo["records"]))
    # a journal of another model, or of another split, is refused rather than mixed in
    with pytest.raises(InputError, match="holds predictions of"):
        evaluate(demo["records"], out, baseline="chance", progress=False)
    recs = _lines(out / PREDICTIONS)
    recs[0]["answer"] = list(reversed(recs[0]["answer"]))
    (out / PREDICTIONS).write_text("".join(json.dumps(r) + "\n" for r in recs))
    with pytest.raises(InputError, match="another split"):
        evaluate(demo["records"], out, baseline=demo["baseline"], progress=False)
    assert evaluate(demo["records"], out, baseline="chance", overwrite=True, progress=False).generated == len(recs)


def test_read_predictions_journal_rules(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"id": "a"}\n{"id": "b"}')  # complete, but the newline was lost
    assert [r["id"] for r in read_predictions(path, fix_truncated=True)] == ["a", "b"]
    assert path.read_text().endswith('"b"}\n')
    path.write_text('{"id": "a"}\n{"id": "b"\n{"id": "c"}\n')  # damage in the middle is not a crash
    with pytest.raises(InputError, match=":2:"):
        read_predictions(path)
    path.write_text('{"id": "a"}\n{"id": "b", "comp')
    assert [r["id"] for r in read_predictions(path, fix_truncated=True)] == ["a"]
    assert path.read_text() == '{"id": "a"}\n'
    assert read_predictions(tmp_path / "none.jsonl") == []


# ---------------------------------------------------------------- a tiny model, two backends
def test_tiny_model_through_transformers_and_http_backends(tiny_model, demo, tmp_path, capsys):
    k, tokens = 3, 8
    local, served = tmp_path / "hf", tmp_path / "http"
    assert (
        main(
            [
                "eval",
                str(demo["records"]),
                "--model",
                str(tiny_model),
                "-o",
                str(local),
                "--limit",
                str(k),
                "--max-new-tokens",
                str(tokens),
                "--batch-size",
                "1",
                "--no-progress",
                "--params",
                demo["none"],
            ]
        )
        == 0
    )
    with serve_openai(model_dir=tiny_model) as url:
        assert (
            main(
                [
                    "eval",
                    "run",
                    str(demo["records"]),
                    "--model",
                    url,
                    "-o",
                    str(served),
                    "--limit",
                    str(k),
                    "--max-new-tokens",
                    str(tokens),
                    "--concurrency",
                    "2",
                    "--no-progress",
                    "--compare",
                    str(local / METRICS),
                    "--params",
                    demo["none"],
                ]
            )
            == 0
        )
        bodies = [r.body for r in url.chat_requests]
    assert len(bodies) == k and all(b["max_tokens"] == tokens and b["temperature"] == 0 for b in bodies)
    a, b = _lines(local / PREDICTIONS), _lines(served / PREDICTIONS)
    assert [p["id"] for p in a] == [it["id"] for it in load_eval_items(demo["records"], limit=k)]
    assert all(0 < p["completion_tokens"] <= tokens for p in a)
    # the same greedy model answers the same through both backends
    assert {p["id"]: p["completion"] for p in a} == {p["id"]: p["completion"] for p in b}
    ma, mb = (json.loads((d / METRICS).read_text()) for d in (local, served))
    assert (ma["kind"], mb["kind"], mb["model"]) == ("transformers", "openai-http", "tiny")
    assert ma["overall"]["count"] == mb["overall"]["count"] == k and ma["sampling"]["max_new_tokens"] == tokens
    assert _scores(ma) == _scores(mb)
    assert ma["timing"]["generation_s"] > 0 and (served / PLOT).exists()
    with capsys.disabled():
        o = ma["overall"]
        print(
            f"\ntiny random model, {k} demo puzzles: batch {o['batch_accuracy']:.3f}, cell {o['cell_accuracy']:.3f}, "
            f"format {o['format_rate']:.0%}, repaired cell {o['repaired_cell_accuracy']:.3f}"
        )

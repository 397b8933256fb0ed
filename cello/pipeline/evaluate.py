"""Evaluation and the promotion gate of a pipeline run.

    model      the candidate (or the incumbent) on the data's eval split -> <run>/eval/<role>/
    baseline   the marker-gene baseline, fitted on the train split, on the same eval split
    gate       candidate vs incumbent and baseline -> <run>/gate/decision.json and decision.md

Each returns what its component shows in the KFP UI: the headline metrics (numbers only),
the report as Markdown, and the accuracy-by-N plot as an HTML page with the PNG inside.
"""

from __future__ import annotations

import base64
import html
import importlib.util
import json
import logging
from pathlib import Path
from typing import Any

from cello.pipeline.data import paths
from cello.pipeline.run import Run, require

log = logging.getLogger(__name__)

ROLES = ("candidate", "incumbent", "baseline")
HEADLINE = ("cell_accuracy", "batch_accuracy", "format_rate", "valid_rate", "repaired_cell_accuracy",
            "repaired_batch_accuracy", "label_uniqueness", "mean_reward")


def model_spec(model: str) -> str:
    """The backend spec for a checkpoint or a Hub model (hf://ncbi/Cell-o1, e.g. the incumbent):
    the vLLM engine where a GPU and vLLM are present (a large model on a GPU node), else what
    `model` says (a dir or hf://: transformers; a URL: HTTP)."""
    from cello.data.hub import is_hub_uri

    if (Path(model).is_dir() or is_hub_uri(model)) and importlib.util.find_spec("vllm") is not None:
        import torch

        if torch.cuda.is_available():
            return f"vllm:{model}"
    return model


def headline(metrics: dict[str, Any]) -> dict[str, float]:
    """The numbers a KFP Metrics artifact shows: overall figures and their 95% bounds."""
    o = metrics["overall"]
    out = {k: float(o[k]) for k in HEADLINE if o.get(k) is not None}
    for k in ("cell_accuracy", "batch_accuracy"):
        lo, hi = o[f"{k}_ci"]
        out[f"{k}_ci_low"], out[f"{k}_ci_high"] = float(lo), float(hi)
    out["puzzles"] = float(o["count"])
    return out


def plot_html(png: str | Path, *, title: str) -> str:
    """A self-contained HTML page with the plot embedded (KFP's UI renders HTML artifacts)."""
    data = base64.b64encode(Path(png).read_bytes()).decode()
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title></head>"
            f"<body><h3>{html.escape(title)}</h3>"
            f"<img alt='accuracy by N' src='data:image/png;base64,{data}'></body></html>")


def _lineage_md(lineage: dict[str, Any]) -> str:
    src, data = lineage.get("source") or {}, lineage.get("data") or {}
    return ("\n\n---\nLineage: run `{}`, source {} {}, data version `{}`, params `{}`, cello {}\n".format(
        lineage.get("run_id"), src.get("repo"), src.get("key"), data.get("version"), lineage.get("params_digest"),
        lineage.get("cello_version")))


def _outputs(run: Run, out: Path, result: Any, lineage: dict[str, Any]) -> dict[str, Any]:
    from cello.evaluate import METRICS, PLOT, REPORT

    metrics = result.metrics
    return {
        "metrics_uri": str(out / METRICS), "metrics": headline(metrics), "lineage": lineage,
        "markdown": (out / REPORT).read_text() + _lineage_md(lineage),
        "html": plot_html(out / PLOT, title=f"{metrics['model']}: accuracy by N"),
    }


def model(run_dir: str, *, data_dir: str, model: str, role: str = "candidate", gpus: int = 0) -> dict[str, Any]:
    """Evaluate a checkpoint (path or served URL) on the run's eval split, as `role`; with
    several `gpus` (and vLLM), the model is split over them (tensor parallel)."""
    from cello.config import override
    from cello.evaluate import evaluate

    run = Run.open(run_dir)
    p = run.params
    out = run.path("eval", role)
    backend = override(p.generation.backend, tensor_parallel_size=gpus if gpus > 1 else None)
    result = evaluate(
        paths(data_dir)["eval"], out, model=model_spec(model), name=role, backend=backend,
        sampling=p.generation.sampling, cfg=p.eval, template=p.prompt, progress=False,
    )
    log.info("%s", result.render())
    lineage = run.stamp(out, data=data_dir, stage=f"eval-{role}", model=model)
    run.record_step(f"eval-{role}", metrics=str(out / "metrics.json"), model=model, headline=headline(result.metrics))
    return _outputs(run, out, result, lineage)


def baseline(run_dir: str, *, data_dir: str) -> dict[str, Any]:
    """Fit the marker-gene baseline on the train split; evaluate it on the eval split."""
    from cello.baselines import fit_baseline
    from cello.evaluate import evaluate

    run = Run.open(run_dir)
    p = run.params
    d = paths(data_dir)
    out = run.path("eval", "baseline")
    fit_baseline(d["train_puzzles"], out / "baseline.json", cfg=p.baseline)
    result = evaluate(d["eval"], out, baseline=str(out / "baseline.json"), name="baseline", cfg=p.eval,
                      template=p.prompt, progress=False)
    log.info("%s", result.render())
    lineage = run.stamp(out, data=data_dir, stage="eval-baseline")
    run.record_step("eval-baseline", metrics=str(out / "metrics.json"), headline=headline(result.metrics))
    return _outputs(run, out, result, lineage)


def decision_markdown(decision: Any) -> str:
    """The gate's decision as a table: every rule, its value, threshold and verdict."""
    def num(x: Any) -> str:
        return "-" if x is None else f"{x:.4f}"

    rows = [f"| {r.rule} | {'pass' if r.passed else '**FAIL**'} | {num(r.value)} | {num(r.threshold)} | {r.message} |"
            for r in decision.reasons]
    head = "PASS: the candidate may be deployed" if decision.passed else "REJECT: the candidate is not deployed"
    return "\n".join([f"## Gate: {head}", "",
                      f"Metric: `{decision.metric}`; candidate `{decision.candidate_model}`.", "",
                      "| rule | verdict | value | threshold | why |", "|---|---|---|---|---|", *rows])


def gate(run_dir: str, *, data_dir: str, candidate: str, baseline: str, incumbent: str = "") -> dict[str, Any]:
    """The promotion decision (cello.gate) from the metrics of the three evaluations."""
    from cello.gate import gate as decide

    run = Run.open(run_dir)
    out = run.path("gate")
    for what, path in (("candidate metrics", candidate), ("baseline metrics", baseline),
                       ("incumbent metrics", incumbent)):
        if path:
            require(path, what=what, made_by="an evaluate step")
    decision = decide(candidate, incumbent=incumbent or None, baseline=baseline, cfg=run.params.gate,
                      out=out / "decision.json")
    lineage = run.lineage_for(data_dir, stage="gate")
    markdown = decision_markdown(decision) + _lineage_md(lineage)
    (out / "decision.md").write_text(markdown)
    run.record_step("gate", passed=decision.passed, decision=str(out / "decision.json"),
                    reasons=[{"rule": r.rule, "passed": r.passed, "message": r.message} for r in decision.reasons])
    return {"passed": decision.passed, "markdown": markdown, "lineage": lineage,
            "decision": json.loads((out / "decision.json").read_text())}


def no_incumbent(run_dir: str, *, data_dir: str) -> dict[str, Any]:
    """Say that there is nothing to compare with: a first deployment."""
    run = Run.open(run_dir)
    run.record_step("eval-incumbent", skipped="no incumbent: a first deployment")
    lineage = run.lineage_for(data_dir, stage="eval-incumbent")
    text = "## No incumbent\n\nNothing is deployed and none was given: the gate's no-regression rule passes."
    return {"markdown": text + _lineage_md(lineage), "lineage": lineage}


def find_incumbent(run_dir: str, *, incumbent: str = "", backend: str = "local") -> str:
    """The checkpoint the candidate must not regress against: `incumbent` when given (a path, a
    URL or a Hub model); on a cluster, else the one the InferenceService serves now; "" when none."""
    from cello.data.hub import is_hub_uri, parse_hub_uri

    run = Run.open(run_dir)
    found = incumbent
    if is_hub_uri(found):  # a Hub model (the published hf://ncbi/Cell-o1): a bad reference fails here, not later
        parse_hub_uri(found, model=True)
    if not found and backend == "kubernetes":
        from cello.pipeline.cluster import deployed_model_uri

        found = deployed_model_uri(run) or ""
    run.record_step("find-incumbent", incumbent=found or None, given=bool(incumbent))
    return found

"""`cello eval ...`: evaluate a model or a baseline on an eval split, gate a candidate, plot runs.

    cello eval --model models/tiny data/records/eval/test.jsonl -o outputs/eval/tiny --limit 20
    cello eval --baseline outputs/baseline.json data/splits/test.parquet -o outputs/eval/baseline
    cello eval gate --candidate outputs/eval/tiny/metrics.json --baseline outputs/eval/baseline/metrics.json \\
        -o outputs/gate/decision.json
    cello eval plot outputs/eval/*/metrics.json -o outputs/eval/by_n.png
    cello eval table runs/paper/eval/*/metrics.json --data runs/paper/data -o runs/paper/table.md

`cello eval SPLIT ...` is short for `cello eval run SPLIT ...` (the group runs `run` when the
first word is not a sub-command).
"""

from __future__ import annotations

from pathlib import Path

import typer
from typer.core import TyperGroup

from cello.commands._common import PARAMS, PROFILE, option, prompt_layout_option, prompt_option, template_of
from cello.config import (
    BackendConfig,
    EvalConfig,
    GateConfig,
    SamplingParams,
    load_params,
    override,
)


class _RunByDefault(TyperGroup):
    """A group whose default sub-command is `run`: `cello eval SPLIT --model M` works."""

    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and args[0] not in ctx.help_option_names:
            args = ["run", *args]
        return super().parse_args(ctx, args)


app = typer.Typer(
    cls=_RunByDefault,
    help="Evaluate models and baselines, gate a candidate, plot runs. "
         "`cello eval SPLIT --model M -o DIR` = `cello eval run ...`.",
    no_args_is_help=True,
)

# Options as module-level singletons (ruff B008). Defaults in parentheses, not [brackets]: rich
# reads those as markup.
# Options that set a config field take their help and shown default from it (`option`).
_SPLIT = typer.Argument(
    ...,
    help="Eval split: eval records or published CellPuzzles records (JSON list, JSON lines or Parquet), "
         "a puzzles split (.parquet), or a directory with test.jsonl/test.json/test.parquet.",
)
_OUT = typer.Option(
    ..., "--out", "-o", help="Run directory: predictions.jsonl, metrics.json, report.md, accuracy_by_n.png.",
)
_MODEL = typer.Option(
    None, "--model", "-m",
    help="Backend spec: model DIR (transformers), http(s)://HOST/v1 or openai:NAME@URL, vllm:DIR.",
)
_BASELINE = typer.Option(
    None, "--baseline", help="Evaluate a baseline instead: baseline.json (`cello baseline fit`) or 'chance'.",
)
_NAME = typer.Option(None, "--name", help="Model name in metrics, report and plot (default: dir name / served model).")
_MAX_NEW = option(SamplingParams, "max_new_tokens", "--max-new-tokens")
_TEMP = option(SamplingParams, "temperature", "--temperature")
_BATCH = option(BackendConfig, "batch_size", "--batch-size")
_CONC = option(BackendConfig, "concurrency", "--concurrency")
_CHUNK = option(EvalConfig, "chunk_size", "--chunk-size")
_LIMIT = option(EvalConfig, "limit", "--limit")
_COMPARE = typer.Option(None, "--compare", help="Another run's metrics.json, added to the plot and report. Repeatable.")
_OVERWRITE = typer.Option(False, "--overwrite", help="Discard predictions.jsonl in OUT instead of resuming from it.")
_NO_PROGRESS = typer.Option(False, "--no-progress", help="No progress bar.")
_PROMPT = prompt_option()
_LAYOUT = prompt_layout_option()


@app.command("run")
def run(
    split: Path = _SPLIT,
    out: Path = _OUT,
    model: str | None = _MODEL,
    baseline: str | None = _BASELINE,
    name: str | None = _NAME,
    max_new_tokens: int | None = _MAX_NEW,
    temperature: float | None = _TEMP,
    batch_size: int | None = _BATCH,
    concurrency: int | None = _CONC,
    chunk_size: int | None = _CHUNK,
    limit: int | None = _LIMIT,
    compare: list[Path] | None = _COMPARE,
    overwrite: bool = _OVERWRITE,
    no_progress: bool = _NO_PROGRESS,
    prompt: str | None = _PROMPT,
    prompt_layout: str | None = _LAYOUT,
    params: Path | None = PARAMS,
    profile: str | None = PROFILE,
) -> None:
    """Run a model (or a baseline) over an eval split and score it; resumes an interrupted run."""
    from cello.evaluate import evaluate

    p = load_params(params, profile=profile)
    result = evaluate(
        split, out, model=model, baseline=baseline, name=name,
        backend=override(p.generation.backend, batch_size=batch_size, concurrency=concurrency),
        sampling=override(p.generation.sampling, max_new_tokens=max_new_tokens, temperature=temperature),
        cfg=override(p.eval, chunk_size=chunk_size, limit=limit), template=template_of(p, prompt, prompt_layout),
        compare=compare or [], overwrite=overwrite, progress=not no_progress,
    )
    typer.echo(result.render())


_CAND = typer.Option(..., "--candidate", help="The candidate's metrics.json.")
_INC = typer.Option(
    None, "--incumbent",
    help="The deployed model's metrics.json, or a model (hf://ncbi/Cell-o1, a checkpoint dir, a URL) evaluated "
         "first on the candidate's split into OUT's folder/incumbent/; omit for a first deployment.",
)
_BASE = typer.Option(
    None, "--baseline", help="The marker baseline's metrics.json (`cello eval --baseline baseline.json`).",
)
_CAND_PRED = typer.Option(
    None, "--candidate-predictions", help="The candidate's predictions.jsonl (default: next to its metrics.json).",
)
_INC_PRED = typer.Option(
    None, "--incumbent-predictions", help="The incumbent's predictions.jsonl (default: next to its metrics.json).",
)
_DECISION = typer.Option(
    None, "--out", "-o", help="decision.json to write (default: decision.json next to the candidate's metrics).",
)
_METRIC = option(GateConfig, "metric", "--metric")
_MIN_ACC = option(GateConfig, "min_accuracy", "--min-accuracy")
_TOL = option(GateConfig, "regression_tolerance", "--tolerance")
_MARGIN = option(GateConfig, "baseline_margin", "--baseline-margin")
_FAIL = typer.Option(
    False, "--fail-on-reject", help="Exit 1 when the candidate is rejected (CI); default: exit 0 either way.",
)


@app.command("gate")
def gate(
    candidate: Path = _CAND,
    incumbent: str | None = _INC,
    baseline: Path | None = _BASE,
    candidate_predictions: Path | None = _CAND_PRED,
    incumbent_predictions: Path | None = _INC_PRED,
    out: Path | None = _DECISION,
    metric: str | None = _METRIC,
    min_accuracy: float | None = _MIN_ACC,
    tolerance: float | None = _TOL,
    baseline_margin: float | None = _MARGIN,
    fail_on_reject: bool = _FAIL,
    params: Path | None = PARAMS,
    profile: str | None = PROFILE,
) -> None:
    """Decide whether the candidate may replace the incumbent; write decision.json with every reason."""
    from cello.gate import gate as decide
    from cello.gate import incumbent_metrics

    p = load_params(params, profile=profile)
    cfg = override(p.gate, metric=metric, min_accuracy=min_accuracy, regression_tolerance=tolerance,
                   baseline_margin=baseline_margin)
    out = out or candidate.parent / "decision.json"
    if incumbent is not None:
        incumbent = incumbent_metrics(
            incumbent, candidate=candidate, out=out.parent / "incumbent", backend=p.generation.backend,
            sampling=p.generation.sampling, cfg=p.eval, template=p.prompt)
    decision = decide(candidate, incumbent=incumbent, baseline=baseline, candidate_predictions=candidate_predictions,
                      incumbent_predictions=incumbent_predictions, cfg=cfg, out=out)
    typer.echo(f"{decision.render()}\n-> {out}")
    if fail_on_reject and not decision.passed:
        raise typer.Exit(1)


_RUNS = typer.Argument(..., help="metrics.json files written by `cello eval`, one line per file.")
_PLOT = typer.Option(..., "--out", "-o", help="PNG to write.")
_LABELS = typer.Option(None, "--label", help="Legend label per file, in order (default: the model names). Repeatable.")
_TITLE = typer.Option(None, "--title", help="Figure title.")


@app.command("plot")
def plot(
    metrics: list[Path] = _RUNS, out: Path = _PLOT, label: list[str] | None = _LABELS, title: str | None = _TITLE,
) -> None:
    """Plot cell and batch accuracy by N for several runs (with bootstrap bands and chance)."""
    from cello.errors import ConfigError
    from cello.report import load_metrics, model_label, plot_accuracy_by_n

    if label and len(label) != len(metrics):
        msg = f"{len(label)} --label for {len(metrics)} metrics files; give one label per file or none."
        raise ConfigError(msg)
    loaded = [load_metrics(m) for m in metrics]
    names = label or [model_label(m, path) for m, path in zip(loaded, metrics, strict=True)]
    plot_accuracy_by_n(list(zip(names, loaded, strict=True)), out, title=title)
    typer.echo(f"{len(loaded)} run(s) -> {out}")


_TABLE_RUNS = typer.Argument(None, help="metrics.json files of the runs to show (none: the paper's rows only).")
_TABLE_DATA = typer.Option(
    None, "--data", help="The folder of `cello data import hf://...`: its source, revision and leakage audit.",
)
_NOTES = typer.Option(None, "--note", help="A line added under the table (e.g. what was skipped). Repeatable.")
_TABLE_OUT = typer.Option(None, "--out", "-o", help="Also write the table (Markdown) here.")


@app.command("table")
def table(
    metrics: list[Path] | None = _TABLE_RUNS, data: Path | None = _TABLE_DATA, note: list[str] | None = _NOTES,
    out: Path | None = _TABLE_OUT, label: list[str] | None = _LABELS,
) -> None:
    """The paper's table: each run beside the paper's figures, with the leakage audit of the published split."""
    import json

    from cello._io import atomic_path
    from cello.errors import ConfigError, InputError
    from cello.lineage import HUB_LINEAGE
    from cello.report import load_metrics, model_label, paper_table

    metrics = metrics or []
    if label and len(label) != len(metrics):
        msg = f"{len(label)} --label for {len(metrics)} metrics files; give one label per file or none."
        raise ConfigError(msg)
    loaded = [load_metrics(m) for m in metrics]
    names = label or [model_label(m, path) for m, path in zip(loaded, metrics, strict=True)]
    origin = audit = None
    if data is not None:
        if not (data / HUB_LINEAGE).is_file():
            msg = f"{data}: no {HUB_LINEAGE}; pass the folder `cello data import hf://... -o DIR` wrote."
            raise InputError(msg)
        origin = json.loads((data / HUB_LINEAGE).read_text()).get("hub")
        audit = json.loads((data / "audit.json").read_text()) if (data / "audit.json").is_file() else None
    text = paper_table(list(zip(names, loaded, strict=True)), data=origin, audit=audit, notes=note or [])
    if out is not None:
        with atomic_path(out) as tmp:
            tmp.write_text(text, encoding="utf-8")
    typer.echo(text)

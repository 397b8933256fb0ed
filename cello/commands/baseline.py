"""`cello baseline ...`: the non-LLM marker-gene solver (no GPU needed).

    cello baseline fit data/splits/train.parquet -o outputs/baseline.json
    cello baseline predict outputs/baseline.json data/splits/test.parquet -o outputs/baseline/predictions.jsonl
"""

from __future__ import annotations

from pathlib import Path

import typer

from cello.commands._common import PARAMS, PROFILE, option
from cello.config import BaselineConfig, load_params, override

app = typer.Typer(
    help="Non-LLM baselines: fit the marker-gene solver, predict and score a split.", no_args_is_help=True
)


@app.command("fit")
def fit(
    train: Path = typer.Argument(..., help="Train puzzles (.parquet from `cello data split`)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output baseline.json."),
    l2: float | None = option(BaselineConfig, "l2"),
    rank_weighting: str | None = option(BaselineConfig, "rank_weighting"),
    top_k: int | None = option(BaselineConfig, "top_k"),
    name_prior: float | None = option(BaselineConfig, "name_prior"),
    params: Path | None = PARAMS,
    profile: str | None = PROFILE,
) -> None:
    """Learn per-type log-odds of the ranked genes from the train puzzles."""
    from cello.baselines import fit_baseline

    p = load_params(params, profile=profile)
    cfg = override(p.baseline, l2=l2, rank_weighting=rank_weighting, top_k=top_k, name_prior=name_prior)
    model = fit_baseline(train, out, cfg=cfg)
    typer.echo(f"marker baseline: {len(model.types)} cell types, {sum(model.cells.values())} cells -> {out}")


@app.command("predict")
def predict(
    model: Path = typer.Argument(..., help="baseline.json from `cello baseline fit`."),
    puzzles: Path = typer.Argument(..., help="Puzzles (.parquet) or eval records (.jsonl) to solve."),
    out: Path = typer.Option(..., "--out", "-o", help="Output predictions.jsonl (the `cello eval` record format)."),
    metrics: Path | None = typer.Option(None, "--metrics", help="Also write the metrics (JSON)."),
    params: Path | None = PARAMS,
    profile: str | None = PROFILE,
) -> None:
    """Solve every puzzle, write scored predictions, print accuracy next to chance."""
    from cello.baselines import predict_baseline

    p = load_params(params, profile=profile)
    summary = predict_baseline(model, puzzles, out, metrics_out=metrics, template=p.prompt)
    typer.echo(summary.render())

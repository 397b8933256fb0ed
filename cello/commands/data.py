"""`cello data ...`: h5ad -> cells -> splits (puzzles per side) -> records; puzzles alone; audit, import.

    cello data cells builtin:pbmc68k -o data/cells.parquet
    cello data puzzles data/cells.parquet -o data/puzzles.parquet
    cello data split data/cells.parquet -o data/splits --test-donors D1
    cello data audit data/splits/train.parquet data/splits/test.parquet
    cello data export data/splits -o data/records/sft --format sft
    cello data import cellpuzzles_test.json -o data/imported.parquet
    cello data import hf://ncbi/CellPuzzles -o data/hub
"""

from __future__ import annotations

from pathlib import Path

import typer

from cello.commands._common import NONE_NOTE, PARAMS, PROFILE, option, prompt_option, template_of
from cello.config import CellsConfig, PuzzlesConfig, SplitConfig, load_params, override

app = typer.Typer(help="Build CellPuzzles data from .h5ad files.", no_args_is_help=True)


@app.command("cells")
def cells(
    inputs: list[str] = typer.Argument(
        None,
        help=".h5ad files, directories (searched recursively), or builtin:pbmc68k. Default: data.inputs in params.",
    ),
    out: Path = typer.Option(
        ..., "--out", "-o", help="Output cells.parquet, or a directory (no .parquet suffix) with one part per input.",
    ),
    cell_type_key: str | None = option(CellsConfig, "cell_type_key"),
    donor_key: str | None = option(CellsConfig, "donor_key", note=NONE_NOTE),
    batch_key: str | None = option(CellsConfig, "batch_key", note=NONE_NOTE),
    gene_symbols: str | None = option(CellsConfig, "gene_symbols", note=NONE_NOTE),
    matrix: str | None = option(CellsConfig, "matrix"),
    top_n: int | None = option(CellsConfig, "top_n"),
    pad_genes: bool | None = option(CellsConfig, "pad_genes", "--pad-genes/--no-pad-genes"),
    keep_suspension: str | None = option(CellsConfig, "keep_suspension", note=NONE_NOTE),
    max_cells: int | None = option(CellsConfig, "max_cells"),
    extra_context: list[str] | None = option(
        CellsConfig, "extra_context_fields", "--extra-context", note="Repeatable."
    ),
    workers: int | None = option(CellsConfig, "workers"),
    params: Path | None = PARAMS,
    profile: str | None = PROFILE,
) -> None:
    """Rank each cell's top genes and write its donor context sentence."""
    from cello.data.cells import make_cells

    p = load_params(params, profile=profile)
    none = lambda v: "" if v is not None and v.lower() == "none" else v  # noqa: E731
    cfg = override(
        p.data.cells, cell_type_key=cell_type_key, donor_key=none(donor_key), batch_key=none(batch_key),
        gene_symbols=none(gene_symbols), matrix=matrix, top_n=top_n, pad_genes=pad_genes,
        keep_suspension=none(keep_suspension),
        max_cells=max_cells, extra_context_fields=extra_context or None, workers=workers,
    )
    summary = make_cells(inputs or p.data.inputs, out, cfg=cfg)
    typer.echo(summary.render())


@app.command("puzzles")
def puzzles(
    cells_path: Path = typer.Argument(..., help="cells.parquet, or a directory of parts, from `cello data cells`."),
    out: Path = typer.Option(..., "--out", "-o", help="Output puzzles.parquet."),
    min_n: int | None = option(PuzzlesConfig, "min_n"),
    max_n: int | None = option(PuzzlesConfig, "max_n"),
    per_n: int | None = option(PuzzlesConfig, "per_n"),
    seed: int | None = option(PuzzlesConfig, "seed"),
    params: Path | None = PARAMS,
    profile: str | None = PROFILE,
) -> None:
    """Sample CellPuzzles: N cells of N distinct types from one donor (and batch)."""
    from cello.data.puzzles import make_puzzles

    p = load_params(params, profile=profile)
    cfg = override(p.data.puzzles, min_n=min_n, max_n=max_n, per_n=per_n, seed=seed)
    summary = make_puzzles(cells_path, out, cfg=cfg)
    typer.echo(summary.render())


def _names(text: str | None) -> list[str] | None:
    """'A,B' -> ['A', 'B']; None (flag not given) stays None."""
    return None if text is None else [n.strip() for n in text.split(",") if n.strip()]


@app.command("split")
def split(
    cells_path: Path = typer.Argument(..., help="cells.parquet, or a directory of parts, from `cello data cells`."),
    out: Path = typer.Option(..., "--out", "-o", help="Output directory (train.parquet, test.parquet, summary.json)."),
    by: str | None = option(SplitConfig, "by"),
    test_donors: str | None = option(SplitConfig, "test_donors", "--test-donors", note="Comma-separated: A,B."),
    test_datasets: str | None = option(SplitConfig, "test_datasets", "--test-datasets", note="Comma-separated."),
    test_fraction: float | None = option(SplitConfig, "test_fraction"),
    test_size: int | None = option(SplitConfig, "test_size"),
    seed: int | None = option(SplitConfig, "seed"),
    min_n: int | None = option(PuzzlesConfig, "min_n"),
    max_n: int | None = option(PuzzlesConfig, "max_n"),
    per_n: int | None = option(PuzzlesConfig, "per_n"),
    params: Path | None = PARAMS,
    profile: str | None = PROFILE,
) -> None:
    """Hold out cells (or donors, or datasets), then make train and test puzzles each from its own cells."""
    from cello.data.split import make_split

    p = load_params(params, profile=profile)
    cfg = override(p.data.split, by=by, test_donors=_names(test_donors), test_datasets=_names(test_datasets),
                   test_fraction=test_fraction, test_size=test_size, seed=seed)
    pcfg = override(p.data.puzzles, min_n=min_n, max_n=max_n, per_n=per_n)
    summary = make_split(cells_path, out, cfg=cfg, puzzles=pcfg)
    typer.echo(summary.render())


@app.command("audit")
def audit(
    train: Path = typer.Argument(..., help="Train puzzles (.parquet) or published records (JSON, JSONL, Parquet)."),
    test: Path = typer.Argument(..., help="Test puzzles (.parquet) or published records (JSON, JSONL, Parquet)."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Also write the report as JSON."),
    prompt: str | None = prompt_option(),
    params: Path | None = PARAMS,
    profile: str | None = PROFILE,
) -> None:
    """Count test puzzles that share an identical cell (same ranked gene list) with train."""
    from cello.data.split import audit_paths

    report = audit_paths(train, test, template=template_of(load_params(params, profile=profile), prompt), out=out)
    typer.echo(report.render())


@app.command("export")
def export(
    splits: Path = typer.Argument(..., help="Directory from `cello data split`."),
    out: Path = typer.Option(..., "--out", "-o", help="Output directory (one JSONL file per split)."),
    fmt: str = typer.Option(..., "--format", "-f", help="sft | grpo | eval | cellpuzzles."),
    prompt: str | None = prompt_option(),
    params: Path | None = PARAMS,
    profile: str | None = PROFILE,
) -> None:
    """Render puzzles into SFT, GRPO, eval or published-CellPuzzles records."""
    from cello.data.records import export_split

    counts = export_split(splits, out, fmt=fmt, template=template_of(load_params(params, profile=profile), prompt))
    typer.echo(", ".join(f"{name}: {n} records" for name, n in counts.items()) + f" -> {out}")


@app.command("import")
def import_(
    source: str = typer.Argument(
        ...,
        help="Published CellPuzzles: a JSON list, JSON lines or Parquet file (told apart by content), "
        "hf://ORG/NAME[@REVISION][:SPLIT] (e.g. hf://ncbi/CellPuzzles), or a local directory in the Hub's "
        "dataset layout.",
    ),
    out: Path = typer.Option(
        ...,
        "--out",
        "-o",
        help="Output puzzles.parquet (a file source), or a directory (a Hub source).",
    ),
    dataset: str = typer.Option("cellpuzzles", help="Dataset name given to the imported puzzles."),
    prompt: str | None = prompt_option(),
    params: Path | None = PARAMS,
    profile: str | None = PROFILE,
) -> None:
    """Read published CellPuzzles (system_msg/user_msg/assistant_msg): a file into puzzles.parquet,
    or the Hub dataset (all splits, revision recorded) into splits, records, audit and lineage."""
    from cello.data.hub import import_hub, is_hub_source
    from cello.data.records import import_cellpuzzles

    template = template_of(load_params(params, profile=profile), prompt)
    if is_hub_source(source):
        typer.echo(import_hub(source, out, dataset=dataset, template=template).render())
        return
    n = import_cellpuzzles(source, out, dataset=dataset, template=template)
    typer.echo(f"imported {n} puzzles -> {out}")

"""Configs of the data stage (`cello data`, cello.data): h5ad -> cells -> splits (puzzles per side) -> records."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from cello.config.base import Section

DEFAULT_CONTEXT_FIELDS = ["sex", "development_stage", "self_reported_ethnicity", "tissue", "disease"]


class CellsConfig(Section):
    """h5ad -> one row per cell with its ranked top genes and donor context."""

    cell_type_key: str = Field("cell_type", description="obs column with the cell-type label.")
    donor_key: str | None = Field(
        "donor_id",
        description="obs column with the donor; null: the whole file is one donor.",
    )
    batch_key: str | None = Field(None, description="obs column that splits a donor into batches; null: none.")
    gene_symbols: str | None = Field(
        "auto",
        description=(
            "var column with gene symbols; 'auto': feature_name if present, else var_names; null: var_names."
        ),
    )
    matrix: str = Field("X", description="Expression matrix to rank: 'X', 'raw' (adata.raw.X) or a layer name.")
    top_n: int = Field(50, ge=1, description="Genes per cell, highest expression first (the paper: 50).")
    pad_genes: bool = Field(
        False,
        description=(
            "Always list top_n genes, filling up with unexpressed ones (lowest gene index first), as the "
            "original Cell-o1 scripts do; false: expressed genes only."
        ),
    )
    suspension_key: str = Field(
        "suspension_type",
        description="obs column filtered on `keep_suspension` where present.",
    )
    keep_suspension: str | None = Field("cell", description="Keep only rows with this suspension type; null: keep all.")
    max_cells: int | None = Field(None, ge=1, description="Seeded subsample per file; null: all cells.")
    context_fields: list[str] = Field(
        default_factory=lambda: list(DEFAULT_CONTEXT_FIELDS),
        description="obs fields in the donor sentence.",
    )
    extra_context_fields: list[str] = Field(
        default_factory=list,
        description="More obs fields, written as 'field: value'.",
    )
    chunk_size: int = Field(4096, ge=1, description="Rows read from disk at a time (bounds peak memory).")
    workers: int = Field(2, ge=1, description="Files processed in parallel (processes).")
    threads: int = Field(2, ge=1, description="Chunks of one file ranked in parallel (threads).")
    seed: int = Field(0, description="Seed of the per-file subsample (max_cells).")


class PuzzlesConfig(Section):
    """cells -> CellPuzzles: N cells of N distinct types from one donor (and batch)."""

    min_n: int = Field(8, ge=2, description="Smallest puzzle (the paper: 8).")
    max_n: int = Field(15, ge=2, description="Largest puzzle (the paper: 15).")
    per_n: int = Field(40, ge=1, description="Puzzles per N per dataset (the paper: 40).")
    seed: int = Field(0, description="Seed of the puzzle sampling.")

    @model_validator(mode="after")
    def _check_range(self) -> PuzzlesConfig:
        if self.max_n < self.min_n:
            msg = f"puzzles.max_n={self.max_n} is below puzzles.min_n={self.min_n}; set max_n >= min_n."
            raise ValueError(msg)
        return self


class SplitConfig(Section):
    """cells -> train/test puzzles: the cells are split first, then each side makes its own puzzles."""

    by: Literal["cell", "donor", "dataset"] = Field(
        "cell",
        description=(
            "What is held out: 'cell' (a share of each donor's cells of each type), 'donor' (whole donors) "
            "or 'dataset' (whole datasets); naming test donors or datasets implies it."
        ),
    )
    test_fraction: float = Field(
        0.1, gt=0, lt=1,
        description="Share of cells held out (by donor/dataset: whole ones, picked at random, until it is reached).",
    )
    test_donors: list[str] = Field(
        default_factory=list, description="Donors (donor_id) held out for test; empty: picked at random.",
    )
    test_datasets: list[str] = Field(
        default_factory=list, description="Datasets held out for test; empty: picked at random.",
    )
    test_size: int = Field(
        1000, ge=1, description="Test puzzles, shared evenly over N; an error if the held-out cells cannot make them.",
    )
    seed: int = Field(0, description="Seed of the choice of held-out cells, donors or datasets.")

    @model_validator(mode="before")
    @classmethod
    def _named_units(cls, data):
        """Naming test donors (datasets) means splitting by donor (dataset)."""
        if not isinstance(data, dict):
            return data
        donors, datasets = data.get("test_donors"), data.get("test_datasets")
        if donors and datasets:
            msg = "split.test_donors and split.test_datasets are both set; name donors or datasets, not both."
            raise ValueError(msg)
        for names, unit in ((donors, "donor"), (datasets, "dataset")):
            if names:
                if data.get("by", "cell") not in ("cell", unit):
                    msg = f"split.by={data['by']} cannot hold out the named {unit}s; set split.by: {unit}."
                    raise ValueError(msg)
                data = {**data, "by": unit}
        return data


class ExportConfig(Section):
    """splits -> records for SFT, GRPO and evaluation."""

    formats: list[Literal["sft", "grpo", "eval", "cellpuzzles"]] = Field(
        default_factory=lambda: ["sft", "grpo", "eval"], description="Record formats written by the DVC export stage."
    )


class DataConfig(Section):
    """The data stage: which files, and one section per step."""

    inputs: list[str] = Field(
        default_factory=lambda: ["builtin:pbmc68k"],
        description="h5ad files/dirs, or 'builtin:pbmc68k' (bundled in scanpy)."
    )
    source: str = Field(
        "",
        description="'': build from inputs (DVC). hf://ORG/NAME[@REVISION] (e.g. hf://ncbi/CellPuzzles) or a "
                    "Hub-layout dir: import that published dataset instead, its prompts verbatim.",
    )
    cells: CellsConfig = Field(default_factory=CellsConfig)
    puzzles: PuzzlesConfig = Field(default_factory=PuzzlesConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)

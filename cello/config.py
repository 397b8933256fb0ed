"""Typed configs, one per stage, read from params.yaml (the single source of truth).

`params.yaml` is these models written out with comments; DVC, the CLI and the pipeline all
read it through `load_params`. CLI flags override single fields (`override`). A `profiles:`
section holds named partial overrides (e.g. `local` for the tiny CPU model), applied with
`load_params(path, profile="local")`.

Each section is a pydantic model with `extra="forbid"`, so a misspelt key in params.yaml is
an error that names it, not a silently ignored setting.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from cello.data.prompt import PromptTemplate
from cello.errors import ConfigError

DEFAULT_CONTEXT_FIELDS = ["sex", "development_stage", "self_reported_ethnicity", "tissue", "disease"]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# ---------------------------------------------------------------- data stage
class CellsConfig(Section):
    """h5ad -> one row per cell with its ranked top genes and donor context."""

    cell_type_key: str = Field("cell_type", description="obs column with the cell-type label.")
    donor_key: str | None = Field("donor_id", description="obs column with the donor; null: the whole file is one donor.")
    batch_key: str | None = Field(None, description="obs column that splits a donor into batches; null: none.")
    gene_symbols: str | None = Field(
        "auto", description="var column with gene symbols; 'auto': feature_name if present, else var_names; null: var_names."
    )
    matrix: str = Field("X", description="Expression matrix to rank: 'X', 'raw' (adata.raw.X) or a layer name.")
    top_n: int = Field(50, ge=1, description="Genes per cell, highest expression first (the paper: 50).")
    suspension_key: str = Field("suspension_type", description="obs column filtered on `keep_suspension` where present.")
    keep_suspension: str | None = Field("cell", description="Keep only rows with this suspension type; null: keep all.")
    max_cells: int | None = Field(None, ge=1, description="Seeded subsample per file; null: all cells.")
    context_fields: list[str] = Field(default_factory=lambda: list(DEFAULT_CONTEXT_FIELDS), description="obs fields in the donor sentence.")
    extra_context_fields: list[str] = Field(default_factory=list, description="More obs fields, written as 'field: value'.")
    chunk_size: int = Field(8192, ge=1, description="Rows read from disk at a time (bounds peak memory).")
    workers: int = Field(2, ge=1, description="Files processed in parallel.")
    seed: int = 0


class PuzzlesConfig(Section):
    """cells -> CellPuzzles: N cells of N distinct types from one donor (and batch)."""

    min_n: int = Field(8, ge=2, description="Smallest puzzle (the paper: 8).")
    max_n: int = Field(15, ge=2, description="Largest puzzle (the paper: 15).")
    per_n: int = Field(40, ge=1, description="Puzzles per N per dataset (the paper: 40).")
    seed: int = 0

    @model_validator(mode="after")
    def _check_range(self) -> PuzzlesConfig:
        if self.max_n < self.min_n:
            msg = f"puzzles.max_n={self.max_n} is below puzzles.min_n={self.min_n}; set max_n >= min_n."
            raise ValueError(msg)
        return self


class SplitConfig(Section):
    """puzzles -> train/test, stratified by N, with no shared cell (or donor)."""

    test_fraction: float = Field(0.1, gt=0, lt=1, description="Share of puzzles per N that go to test.")
    max_test: int | None = Field(1000, ge=1, description="Cap on the test size; null: no cap.")
    by: Literal["cell", "donor"] = Field("cell", description="Leakage unit kept out of train: a cell, or a whole donor.")
    seed: int = 0


class ExportConfig(Section):
    """splits -> records for SFT, GRPO and evaluation."""

    formats: list[Literal["sft", "grpo", "eval", "cellpuzzles"]] = Field(
        default_factory=lambda: ["sft", "grpo", "eval"], description="Record formats written by the DVC export stage."
    )


class DataConfig(Section):
    inputs: list[str] = Field(
        default_factory=lambda: ["builtin:pbmc68k"], description="h5ad files/dirs, or 'builtin:pbmc68k' (bundled in scanpy)."
    )
    cells: CellsConfig = Field(default_factory=CellsConfig)
    puzzles: PuzzlesConfig = Field(default_factory=PuzzlesConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)


# ---------------------------------------------------------------- all sections
class Params(Section):
    """Everything in params.yaml."""

    model_config = ConfigDict(extra="allow", validate_assignment=True)  # later stages add sections

    data: DataConfig = Field(default_factory=DataConfig)
    prompt: PromptTemplate = Field(default_factory=PromptTemplate)


S = TypeVar("S", bound=BaseModel)


def _deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def load_params(path: str | os.PathLike | None = "params.yaml", *, profile: str | None = None) -> Params:
    """Read params.yaml (missing file: all defaults) and apply a named profile."""
    raw: dict[str, Any] = {}
    if path is not None and Path(path).exists():
        try:
            raw = yaml.safe_load(Path(path).read_text()) or {}
        except yaml.YAMLError as exc:
            msg = f"{path}: not valid YAML ({exc}); fix the file."
            raise ConfigError(msg) from exc
    profiles = raw.pop("profiles", {}) or {}
    if profile:
        if profile not in profiles:
            msg = f"{path}: no profile {profile!r}; known profiles: {sorted(profiles) or 'none'}."
            raise ConfigError(msg)
        raw = _deep_merge(raw, profiles[profile])
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        msg = f"{path}: invalid settings:\n{exc}"
        raise ConfigError(msg) from exc


def override(section: S, **values: Any) -> S:
    """A copy of `section` with the given fields replaced; None means 'not given' (keep)."""
    given = {k: v for k, v in values.items() if v is not None}
    try:
        return section.model_validate({**section.model_dump(), **given})
    except ValidationError as exc:
        msg = f"invalid option for {type(section).__name__}:\n{exc}"
        raise ConfigError(msg) from exc

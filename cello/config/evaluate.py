"""Configs of scoring a model (`cello baseline`, `cello eval`): the non-LLM baseline, the
evaluation run and the promotion gate."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from cello.config.base import Section


class BaselineConfig(Section):
    """`cello baseline`: the non-LLM marker-gene solver (per-type log-odds of ranked genes + optimal assignment)."""

    l2: float = Field(
        1.0, gt=0,
        description="L2 penalty on the per-type gene weights (logistic regression): larger is smoother.",
    )
    rank_weighting: Literal["log", "linear", "uniform"] = Field(
        "log",
        description=(
            "Weight of a gene by its rank in a cell: 'log' 1/log2(rank+2), 'linear' 1-rank/top_k, 'uniform' 1."
        ),
    )
    top_k: int | None = Field(None, ge=1, description="Use only each cell's first top_k genes; null: all of them.")
    name_prior: float = Field(
        1.0, ge=0,
        description=(
            "For candidate types never seen in training: weight of the markers their names call up or down "
            "(CD16-positive, CD14-low), added to what related seen types say; 0: such types score neutrally."
        ),
    )
    seed: int = Field(0, description="Seed of the chance baseline.")


class EvalConfig(Section):
    """`cello eval`: a model (or the baseline) over an eval split -> predictions, metrics, report, plot.

    The model and sampling come from `generation:` (CLI flags override them)."""

    limit: int | None = Field(
        None, ge=1,
        description="Evaluate only the first `limit` puzzles of the split (quick runs); null: all.",
    )
    chunk_size: int | None = Field(
        None, ge=1,
        description=(
            "Puzzles per generate call, appended to predictions.jsonl after each (a crash loses at most one "
            "chunk); null: the backend batch size (transformers), 4 x concurrency (HTTP), 256 (vLLM, baselines)."
        ),
    )
    n_boot: int = Field(1000, ge=100, description="Bootstrap resamples for the 95% intervals of the metrics.")
    ci: float = Field(0.95, gt=0, lt=1, description="Coverage of the bootstrap intervals.")
    seed: int = Field(0, description="Seed of the bootstrap (and of the chance baseline).")


class GateConfig(Section):
    """`cello eval gate`: promote a candidate only if it clears the floor, does not regress, and beats the baseline."""

    metric: Literal[
        "batch_accuracy", "cell_accuracy", "repaired_batch_accuracy", "repaired_cell_accuracy"
    ] = Field("batch_accuracy", description="The metric every rule compares (the paper's headline: batch_accuracy).")
    min_accuracy: float = Field(0.0, ge=0, le=1, description="Rule 1: the candidate's metric must be >= this.")
    min_puzzles: int = Field(
        1, ge=1,
        description=(
            "The candidate must have been scored on at least this many puzzles (guards against a --limit run)."
        ),
    )
    regression_tolerance: float = Field(
        0.02, ge=0, le=1,
        description="Rule 2: how far below the incumbent the candidate may fall (absolute, same metric)."
    )
    regression_test: Literal["significant", "non_inferiority"] = Field(
        "significant",
        description=(
            "Rule 2 on the paired-bootstrap interval of candidate - incumbent: 'significant' fails when its upper "
            "bound < -tolerance (a regression is shown); 'non_inferiority' passes only when its lower bound >= "
            "-tolerance (no regression is shown)."
        ),
    )
    require_paired: bool = Field(
        True,
        description=(
            "Rule 2 needs both predictions files (paired bootstrap by puzzle id); false: fall back to the point "
            "estimates when one is missing."
        ),
    )
    baseline_margin: float = Field(
        0.0, ge=-1, le=1,
        description=(
            "Rule 3: the candidate's metric must exceed the baseline's by more than this; negative: it may trail "
            "the baseline by up to that much (-1: rule 3 never blocks)."
        ),
    )
    n_boot: int = Field(2000, ge=100, description="Paired-bootstrap resamples.")
    ci: float = Field(0.95, gt=0, lt=1, description="Coverage of the paired-bootstrap interval.")
    seed: int = Field(0, description="Seed of the paired bootstrap.")

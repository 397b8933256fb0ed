"""Config of the Kubeflow pipeline itself (`cello pipeline`, cello.pipeline, pipelines/); each
stage it runs reads its own section."""

from __future__ import annotations

from pydantic import Field

from cello.config.base import Section


class PipelineConfig(Section):
    """`cello pipeline`: settings of the KFP pipeline itself; each stage reads its own section."""

    base_model: str | None = Field(
        None,
        description=(
            "Model SFT starts from: a hub id or a path; 'tiny': a tiny model built offline from the SFT records "
            "(CPU runs); null: train.sft.model."
        ),
    )
    fan_out: int = Field(
        8, ge=1,
        description="Input files ranked at once by the data step's fan-out (dsl.ParallelFor parallelism).",
    )
    step_timeout_s: int = Field(
        7 * 24 * 3600, ge=60,
        description="Timeout of a training or evaluation step's pod on a cluster.",
    )
    deploy_timeout_s: float = Field(
        300.0, gt=0,
        description="Local deploy: seconds for `cello serve` to get ready and answer the smoke puzzle.",
    )

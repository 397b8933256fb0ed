"""Typed configs, one per stage, read from params.yaml (the single source of truth).

    from cello.config import load_params, override, PuzzlesConfig

Why a package: one module per stage keeps each config a screen or two long and next to the
others of its stage, while reading and merging params.yaml is one small module on its own:

    base.py      Section (the base of every config: unknown keys refused), DNS_LABEL
    data.py      the data stage: cells, puzzles, split, export
    prompt.py    the prompt template (`prompt:`), which every stage renders with
    llm.py       the tiny offline model, generation backends and sampling
    train.py     SFT, GRPO (with their LoRA adapter) and distillation
    evaluate.py  the non-LLM baseline, evaluation runs and the promotion gate
    serve.py     the model server
    k8s.py       the KServe deployment and the cluster the training stages run on
    pipeline.py  the Kubeflow pipeline's own settings
    params.py    Params (all sections), load_params, profiles, overrides, error messages

Configs are the bottom layer: they import pydantic and `cello.errors`, never stage code.
Every name is re-exported here, so callers import from `cello.config` only.
"""

from __future__ import annotations

from cello.config.base import DNS_LABEL, Section
from cello.config.data import (
    DEFAULT_CONTEXT_FIELDS,
    CellsConfig,
    DataConfig,
    ExportConfig,
    PuzzlesConfig,
    SplitConfig,
)
from cello.config.evaluate import BaselineConfig, EvalConfig, GateConfig
from cello.config.k8s import ClusterConfig, DeployConfig
from cello.config.llm import BackendConfig, GenerationConfig, SamplingParams, TinyModelConfig
from cello.config.params import (
    DEFAULT_PARAMS,
    Params,
    apply_overrides,
    describe,
    load_params,
    override,
    problems,
)
from cello.config.pipeline import PipelineConfig
from cello.config.prompt import PromptTemplate
from cello.config.serve import ServeConfig
from cello.config.train import (
    DistillStageConfig,
    GRPOStageConfig,
    LoraStageConfig,
    SFTStageConfig,
    TrainConfig,
)

__all__ = [
    "DEFAULT_CONTEXT_FIELDS",
    "DEFAULT_PARAMS",
    "DNS_LABEL",
    "BackendConfig",
    "BaselineConfig",
    "CellsConfig",
    "ClusterConfig",
    "DataConfig",
    "DeployConfig",
    "DistillStageConfig",
    "EvalConfig",
    "ExportConfig",
    "GRPOStageConfig",
    "GateConfig",
    "GenerationConfig",
    "LoraStageConfig",
    "Params",
    "PipelineConfig",
    "PromptTemplate",
    "PuzzlesConfig",
    "SFTStageConfig",
    "SamplingParams",
    "Section",
    "ServeConfig",
    "SplitConfig",
    "TinyModelConfig",
    "TrainConfig",
    "apply_overrides",
    "describe",
    "load_params",
    "override",
    "problems",
]

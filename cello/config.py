"""Typed configs, one per stage, read from params.yaml (the single source of truth).

`params.yaml` is these models written out with comments; DVC, the CLI and the pipeline all
read it through `load_params`. CLI flags override single fields (`override`). A `profiles:`
section holds named partial overrides (e.g. `local` for the tiny CPU model), applied with
`load_params(path, profile="local")`.

Each section is a pydantic model with `extra="forbid"`, so a misspelt key in params.yaml is
an error that names it, not a silently ignored setting.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from cello.data.prompt import PromptTemplate
from cello.errors import ConfigError

log = logging.getLogger(__name__)

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
    chunk_size: int = Field(4096, ge=1, description="Rows read from disk at a time (bounds peak memory).")
    workers: int = Field(2, ge=1, description="Files processed in parallel (processes).")
    threads: int = Field(2, ge=1, description="Chunks of one file ranked in parallel (threads).")
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


# ---------------------------------------------------------------- tiny models (cello.llm.tiny)
class TinyModelConfig(Section):
    """A random-weight Qwen2 causal LM + a BPE tokenizer trained on the puzzle corpus (tests, CPU runs)."""

    hidden_size: int = Field(64, ge=8, description="Hidden width (must be a multiple of num_heads).")
    num_layers: int = Field(2, ge=1, description="Decoder layers.")
    num_heads: int = Field(4, ge=1, description="Attention heads.")
    num_kv_heads: int = Field(2, ge=1, description="Key/value heads (grouped-query attention); divides num_heads.")
    intermediate_size: int = Field(128, ge=8, description="MLP width.")
    max_position_embeddings: int = Field(8192, ge=128, description="Longest sequence (RoPE; costs no parameters).")
    vocab_size: int = Field(2048, ge=300, description="BPE vocabulary (bytes + merges + specials); large enough to keep gene names whole.")
    min_frequency: int = Field(2, ge=1, description="A merge needs at least this many occurrences in the corpus.")
    max_texts: int | None = Field(50000, ge=1, description="Cap on corpus texts used to train the tokenizer; null: all.")
    tie_word_embeddings: bool = Field(True, description="Share input and output embeddings (fewer parameters).")
    init_std: float = Field(
        0.02, gt=0, le=1, description="Std of the random weights (Qwen: 0.02; ~0.2 makes greedy output depend visibly on the prompt)."
    )
    seed: int = Field(0, description="Seed for the weights and the built-in corpus.")

    @model_validator(mode="after")
    def _check_heads(self) -> TinyModelConfig:
        if self.hidden_size % self.num_heads:
            msg = f"tiny_model.hidden_size={self.hidden_size} is not a multiple of num_heads={self.num_heads}; change one."
            raise ValueError(msg)
        if self.num_heads % self.num_kv_heads:
            msg = f"tiny_model.num_kv_heads={self.num_kv_heads} does not divide num_heads={self.num_heads}; use a divisor."
            raise ValueError(msg)
        return self


# ---------------------------------------------------------------- training (cello.train: SFT, GRPO, distill)
class LoraStageConfig(Section):
    """PEFT adapter (the paper: LoRA r 256, alpha 512, dropout 0.05 on all linear layers)."""

    enabled: bool = Field(True, description="Train a LoRA adapter; false: full fine-tuning of every weight.")
    r: int = Field(256, ge=1, description="Adapter rank.")
    alpha: int = Field(512, ge=1, description="Adapter scale numerator (scale = alpha / r).")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the adapter input.")
    target_modules: str | list[str] = Field("all-linear", description="Module names to adapt; 'all-linear': every linear layer except the output head.")
    use_dora: bool = Field(False, description="DoRA (weight-decomposed LoRA) instead of plain LoRA.")
    modules_to_save: list[str] = Field(
        default_factory=list,
        description="Modules trained in full next to the adapter (e.g. [embed_tokens] for a random-weight tiny model, whose frozen embeddings cap the logits); merged like the adapter.",
    )


class _TrainerStageConfig(Section):
    """Fields the SFT and GRPO stages share; any other TRL knob goes through `trl`."""

    # TRL arguments Cello sets itself from the fields below (cello.train.sft / grpo build them, and
    # cello.train.common.trl_config refuses to set one that is not listed here): `trl:` may not
    # override them, or a pass-through entry could silently undo a Cello setting.
    OWNED_TRL_KEYS: ClassVar[frozenset[str]] = frozenset({
        "output_dir", "learning_rate", "num_train_epochs", "max_steps", "per_device_train_batch_size",
        "gradient_accumulation_steps", "gradient_checkpointing", "gradient_checkpointing_kwargs",
        "activation_checkpointing", "activation_checkpointing_kwargs", "bf16", "fp16", "use_cpu", "deepspeed",
        "report_to", "logging_steps", "save_strategy", "save_steps", "save_total_limit", "seed", "data_seed",
    })

    model: str | None = Field(None, description="Model to train: a local Hugging Face directory or a hub id.")
    lora: LoraStageConfig = Field(default_factory=LoraStageConfig)
    learning_rate: float = Field(5e-5, gt=0, description="Peak learning rate.")
    epochs: float = Field(1.0, gt=0, description="Passes over the training records.")
    max_steps: int = Field(-1, description="Stop after this many optimizer steps; -1: run `epochs`.")
    per_device_batch_size: int = Field(1, ge=1, description="Sequences per device per forward pass.")
    gradient_checkpointing: bool = Field(True, description="Recompute activations in backward (less memory, ~20% slower).")
    precision: Literal["auto", "bf16", "fp16", "fp32"] = Field("auto", description="'auto': bf16 on a GPU that supports it, fp32 on CPU.")
    attn_implementation: Literal["auto", "flash_attention_2", "sdpa", "eager"] = Field(
        "auto", description="'auto': flash_attention_2 on CUDA when flash-attn imports, sdpa otherwise."
    )
    deepspeed: str | None = Field(None, description="DeepSpeed JSON (configs/deepspeed/zero2.json or zero3.json); null: plain DDP.")
    report_to: list[str] = Field(default_factory=lambda: ["tensorboard"], description="Experiment trackers: tensorboard, mlflow, wandb, or none.")
    logging_steps: int = Field(10, ge=1, description="Log every this many optimizer steps.")
    save_steps: int = Field(200, ge=1, description="Checkpoint every this many optimizer steps (what --resume restarts from).")
    save_total_limit: int | None = Field(2, ge=1, description="Checkpoints kept; null: all.")
    seed: int = Field(0, description="Seed for weights init, data order and sampling.")
    trl: dict[str, Any] = Field(default_factory=dict, description="Extra keyword arguments for TRL's config, passed as-is (e.g. warmup_ratio).")

    @model_validator(mode="after")
    def _check_trl(self) -> _TrainerStageConfig:
        clash = sorted(set(self.trl) & self.OWNED_TRL_KEYS)
        if clash:
            msg = f"trl: {clash} are set by Cello's own fields; remove them from `trl` and set the matching field instead."
            raise ValueError(msg)
        return self


class SFTStageConfig(_TrainerStageConfig):
    """Supervised fine-tuning on chat records, loss on assistant tokens (the paper's defaults)."""

    OWNED_TRL_KEYS: ClassVar[frozenset[str]] = _TrainerStageConfig.OWNED_TRL_KEYS | {
        "max_length", "packing", "padding_free", "assistant_only_loss", "eval_strategy", "eval_steps",
        "per_device_eval_batch_size", "dataset_num_proc",
    }

    model: str | None = Field("Qwen/Qwen2.5-7B-Instruct", description="Base model: a local Hugging Face directory or a hub id.")
    max_length: int = Field(4096, ge=16, description="Longest tokenized conversation; longer ones are truncated.")
    effective_batch_size: int = Field(96, ge=1, description="Sequences per optimizer step over all devices (per_device_batch_size x devices x accumulation).")
    packing: bool = Field(False, description="Pack several conversations into each max_length row (best-fit, padding-free).")
    padding_free: bool = Field(False, description="Concatenate the batch into one row with no padding (fastest with flash-attn).")
    assistant_only_loss: bool = Field(True, description="Loss on assistant tokens only (needs {% generation %} in the chat template).")
    eval_fraction: float = Field(0.02, ge=0, lt=1, description="Share of train records held out for eval loss when no eval file is given; 0: none.")


class GRPOStageConfig(_TrainerStageConfig):
    """GRPO on the batch-level reward (the paper: 5 generations, lr 1e-6, KL 0.001, 3000 tokens, batch 64)."""

    OWNED_TRL_KEYS: ClassVar[frozenset[str]] = _TrainerStageConfig.OWNED_TRL_KEYS | {
        "num_generations", "max_completion_length", "beta", "temperature", "top_p", "reward_weights",
        "steps_per_generation", "generation_batch_size", "use_vllm", "vllm_mode", "vllm_server_base_url",
    }

    lora: LoraStageConfig = Field(default_factory=lambda: LoraStageConfig(enabled=False))
    learning_rate: float = Field(1e-6, gt=0, description="Peak learning rate.")
    per_device_batch_size: int = Field(8, ge=1, description="Completions per device per forward pass.")
    num_generations: int = Field(5, ge=2, description="Completions sampled per prompt (the group of GRPO).")
    prompts_per_step: int = Field(64, ge=1, description="Prompts per optimizer step over all devices (completions = this x num_generations).")
    max_completion_length: int = Field(3000, ge=1, description="Longest sampled completion, in tokens.")
    logging_steps: int = Field(1, ge=1, description="Log every this many optimizer steps (a GRPO step is long: log each).")
    save_steps: int = Field(50, ge=1, description="Checkpoint every this many optimizer steps (what --resume restarts from).")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature for rollouts.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling for rollouts.")
    beta: float = Field(0.001, ge=0, description="KL coefficient against the starting policy; 0: no reference model.")
    reward_weight: float = Field(1.0, description="Weight of the batch-level reward ((cell acc + batch exact)/2, -1 if badly formatted).")
    format_weight: float = Field(0.0, description="Weight of the separate format reward (1 in the paper's think/answer layout, 0 not); 0: logged only.")
    max_n: int | None = Field(None, ge=1, description="Train only on puzzles with at most this many cells (a small-N curriculum for tiny models); null: all, as the paper.")
    vllm_server: str | None = Field(None, description="Base URL of a `trl vllm-serve` server for rollouts; null: generate with transformers.")
    vllm_health_timeout: float = Field(600.0, gt=0, description="Seconds to wait for the vLLM server's /health before failing.")


class DistillStageConfig(Section):
    """Reasoning traces from a teacher endpoint, kept by rejection sampling on the reward."""

    teacher: str = Field(
        "http://localhost:8000/v1",
        description="The teacher: an OpenAI-compatible base URL (vLLM, KServe /openai/v1, a hosted API), or any cello.llm backend spec (e.g. a model dir).",
    )
    teacher_model: str | None = Field(None, description="Model name sent to the teacher's endpoint; null: the first of GET /models.")
    api_key_env: str = Field("OPENAI_API_KEY", description="Environment variable holding the API key (unset: no key).")
    samples: int = Field(4, ge=1, description="Completions sampled per puzzle (k).")
    temperature: float = Field(0.8, ge=0, description="Teacher sampling temperature.")
    max_tokens: int = Field(4096, ge=1, description="Longest teacher completion, in tokens.")
    min_reward: float = Field(1.0, ge=0, le=1, description="Keep a completion only if its reward >= this (1.0: a perfect answer). A valid format is always required.")
    keep_per_puzzle: int = Field(1, ge=1, description="At most this many distinct top-reward completions kept per puzzle.")
    concurrency: int = Field(8, ge=1, description="Requests in flight at once.")
    retries: int = Field(3, ge=0, description="Retries per request on 429, 5xx, timeouts and connection errors.")
    timeout: float = Field(600.0, gt=0, description="Seconds per request.")
    chunk: int = Field(64, ge=1, description="Puzzles per round trip to the output files (what a resumed run may redo).")
    seed: int = Field(0, description="Sampling seed sent with each request.")


class TrainConfig(Section):
    sft: SFTStageConfig = Field(default_factory=SFTStageConfig)
    grpo: GRPOStageConfig = Field(default_factory=GRPOStageConfig)
    distill: DistillStageConfig = Field(default_factory=DistillStageConfig)


# ---------------------------------------------------------------- serving (cello serve, cello.k8s)
_DNS_LABEL = r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$"


class ServeConfig(Section):
    """`cello serve`: the KServe model server. Every request limit lives here."""

    model_name: str = Field("cello", pattern=_DNS_LABEL, description="Name in the routes (/v1/models/NAME:predict) and the OpenAI `model`.")
    port: int = Field(8080, ge=1, le=65535, description="HTTP port.")
    host: str = Field("0.0.0.0", description="Address to bind: 0.0.0.0 in a pod, 127.0.0.1 for a local-only server.")
    max_puzzles: int = Field(8, ge=1, le=1024, description="Puzzles per request.")
    min_cells: int = Field(2, ge=1, description="Fewest cells in a puzzle.")
    max_cells: int = Field(32, ge=1, le=1024, description="Most cells in a puzzle (the paper: 8-15).")
    max_genes: int = Field(200, ge=1, description="Most genes in a ranked top-gene list.")
    max_expression_genes: int = Field(40000, ge=1, description="Most entries in a gene -> expression map.")
    top_genes: int = Field(50, ge=1, description="Genes kept per cell from an expression map, highest first (the paper: 50).")
    max_name_length: int = Field(128, ge=1, description="Longest gene name, cell type, cell id or context field.")
    max_context_length: int = Field(2000, ge=1, description="Longest donor context sentence.")
    max_body_bytes: int = Field(4 * 2**20, ge=1024, description="Largest request body; larger bodies get 413.")
    max_new_tokens: int = Field(1024, ge=1, description="Generation budget per puzzle.")
    temperature: float = Field(0.0, ge=0.0, le=2.0, description="0 = greedy decoding.")
    timeout_s: float = Field(120.0, gt=0, description="Generation timeout per request; past it the client gets 504.")
    max_batch_size: int = Field(8, ge=1, description="Conversations generated together (requests are batched, not dropped).")
    batch_wait_ms: float = Field(5.0, ge=0, description="How long the batcher waits to fill a batch.")
    max_queue: int = Field(1024, ge=1, description="Conversations waiting for generation; beyond it the client gets 429.")
    repair: bool = Field(True, description="Repair invalid answers into a valid assignment (cello.scoring.repair).")
    cpu_threads: int | None = Field(None, ge=1, description="torch CPU threads for in-process generation; null: torch's default (1 is fastest for small models on a busy machine).")
    auth_token_env: str = Field("CELLO_SERVE_TOKEN", description="Env var holding the bearer token; unset/empty: no auth.")
    auth_token_file: str | None = Field(None, description="File holding the bearer token (a mounted Secret); wins over the env var.")

    @model_validator(mode="after")
    def _check_cells(self) -> ServeConfig:
        if self.max_cells < self.min_cells:
            msg = f"serve.max_cells={self.max_cells} is below serve.min_cells={self.min_cells}; set max_cells >= min_cells."
            raise ValueError(msg)
        return self


class DeployConfig(Section):
    """`cello k8s render isvc|runtime`: KServe InferenceService = vLLM predictor + `cello serve` transformer."""

    name: str = Field("cello", pattern=_DNS_LABEL, description="InferenceService name (a DNS-1035 label).")
    namespace: str = Field("cello", pattern=_DNS_LABEL, description="Namespace of the InferenceService.")
    deployment_mode: Literal["Standard", "Knative"] = Field(
        "Standard", description="KServe deployment mode (Standard was called RawDeployment before KServe 0.15/0.16)."
    )
    served_model_name: str = Field("cello", pattern=_DNS_LABEL, description="--model_name of the vLLM predictor (the OpenAI `model`).")
    runtime: str | None = Field(None, description="ServingRuntime to pin (e.g. the one from `cello k8s render runtime`); null: KServe auto-selects its huggingface runtime.")
    runtime_name: str = Field("cello-vllm", pattern=_DNS_LABEL, description="Name of the ServingRuntime that `cello k8s render runtime` writes.")
    dtype: Literal["auto", "float16", "bfloat16", "float32"] = Field("bfloat16", description="vLLM --dtype.")
    max_model_len: int = Field(8192, ge=256, description="vLLM --max-model-len (prompt + completion tokens).")
    tensor_parallel_size: int = Field(1, ge=1, description="vLLM --tensor-parallel-size (GPUs per replica).")
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1, description="vLLM --gpu-memory-utilization.")
    extra_args: list[str] = Field(default_factory=list, description="More predictor args, e.g. ['--enable-prefix-caching'].")
    gpus: int = Field(1, ge=1, description="GPUs per predictor replica (>= tensor_parallel_size).")
    gpu_resource: str = Field("nvidia.com/gpu", description="Extended resource name of the GPU.")
    cpu: str = Field("8", description="Predictor CPU request and limit.")
    memory: str = Field("64Gi", description="Predictor memory request and limit (7B bf16 weights are ~15 GB).")
    tolerations: list[dict[str, str]] = Field(
        default_factory=lambda: [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        description="Predictor pod tolerations (GPU node taints).",
    )
    node_selector: dict[str, str] = Field(default_factory=dict, description="Predictor node selector, e.g. {'nvidia.com/gpu.product': 'NVIDIA-A100-SXM4-80GB'}.")
    startup_timeout_s: int = Field(1800, ge=60, description="Startup probe budget: download + load a 7B checkpoint (minutes).")
    min_replicas: int = Field(1, ge=0, description="Fewest predictor replicas.")
    max_replicas: int = Field(1, ge=1, description="Most predictor replicas.")
    canary_traffic_percent: int | None = Field(None, ge=0, le=100, description="Share of traffic for a new model (gradual rollout); null: all traffic.")
    canary_name: str = Field("candidate", pattern=_DNS_LABEL, description="Predictor name of the canary (Standard mode, spec.canary).")
    auth: bool = Field(True, description="Ask the platform to require a token (the annotation below).")
    auth_annotation: str = Field("security.opendatahub.io/enable-auth", description="Annotation that turns on auth (Open Data Hub / OpenShift AI; upstream KServe has none).")
    transformer: bool = Field(True, description="Put `cello serve` in front of the predictor as the KServe transformer.")
    transformer_cpu: str = Field("2", description="Transformer CPU request and limit.")
    transformer_memory: str = Field("4Gi", description="Transformer memory request and limit.")
    token_secret: str | None = Field(None, description="Secret (key 'token') with the transformer's own bearer token; null: none.")
    service_account: str | None = Field(None, description="ServiceAccount of the predictor (holds the s3 credentials); null: default.")
    ready_timeout_s: float = Field(2400, gt=0, description="`deploy`: how long the InferenceService may take to become Ready before the rollout is rolled back.")
    smoke_timeout_s: float = Field(300, gt=0, description="`deploy`: budget of the smoke request (retried while the route warms up).")
    poll_interval_s: float = Field(10.0, gt=0, description="`deploy`: seconds between readiness checks.")

    @model_validator(mode="after")
    def _check(self) -> DeployConfig:
        if self.gpus < self.tensor_parallel_size:
            msg = f"deploy.gpus={self.gpus} is below deploy.tensor_parallel_size={self.tensor_parallel_size}; give each replica at least tensor_parallel_size GPUs."
            raise ValueError(msg)
        if self.max_replicas < max(self.min_replicas, 1):
            msg = f"deploy.max_replicas={self.max_replicas} is below deploy.min_replicas={self.min_replicas}; set max_replicas >= min_replicas."
            raise ValueError(msg)
        return self


# ---------------------------------------------------------------- the cluster (cello.k8s, the pipeline's kubernetes backend, k8s/)
class ClusterConfig(Section):
    """Where stages run on Kubernetes. The names here are the ones `k8s/` installs (namespace,
    ServiceAccount, PVC, training runtime), so a change here goes with a change there."""

    namespace: str = Field("cello", pattern=_DNS_LABEL, description="Namespace of every object a run creates.")
    service_account: str = Field("cello-pipeline", pattern=_DNS_LABEL, description="ServiceAccount of the pipeline's pods (RBAC in k8s/base).")
    pvc: str = Field("cello-workspace", description="ReadWriteMany claim shared by every step: data, checkpoints, eval runs.")
    mount_path: str = Field("/mnt/cello", description="Where the claim is mounted in every pod; checkpoint URIs are paths under it.")
    training_api: Literal["trainjob", "pytorchjob"] = Field(
        "trainjob", description="trainjob: Kubeflow Trainer v2 (TrainJob); pytorchjob: Training Operator v1 (kubeflow.org/v1 PyTorchJob)."
    )
    training_runtime: str = Field("cello-torch", description="ClusterTrainingRuntime the TrainJobs refer to (torchrun; installed by k8s/base).")
    num_nodes: int = Field(1, ge=1, description="Nodes per training job.")
    gpus_per_node: int = Field(8, ge=0, description="GPUs per training node (torchrun --nproc_per_node).")
    gpu_resource: str = Field("nvidia.com/gpu", description="Extended resource name of a GPU.")
    cpu_per_node: str = Field("32", description="CPU request and limit per training node.")
    memory_per_node: str = Field("256Gi", description="Memory request and limit per training node.")
    shm_size: str = Field("64Gi", description="/dev/shm (a memory emptyDir) per training pod: NCCL and dataloader workers need more than the 64 MiB default.")
    node_selector: dict[str, str] = Field(default_factory=dict, description="Node selector of GPU steps, e.g. {'nvidia.com/gpu.product': 'NVIDIA-H100-80GB-HBM3'}.")
    tolerations: list[dict[str, str]] = Field(
        default_factory=lambda: [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        description="Tolerations of GPU steps (GPU node taints).",
    )
    rollout_gpus: int = Field(1, ge=1, description="GPUs of the vLLM rollout server of GRPO (separate from the trainer's).")
    active_deadline_s: int = Field(7 * 24 * 3600, ge=1, description="A training job running longer than this is failed and deleted.")
    pending_timeout_s: int = Field(1800, ge=1, description="A job whose pods stay Pending this long (none of their containers started) fails the step; the pod and its events are named.")
    poll_interval_s: float = Field(10.0, gt=0, description="Seconds between status checks while waiting on a job.")
    log_tail_lines: int = Field(50, ge=0, description="Log lines of node 0 quoted when a job fails.")
    api_retries: int = Field(5, ge=0, description="Retries of a Kubernetes API call that failed transiently (connection error, 429, 5xx), with backoff.")
    deepspeed: str | None = Field(
        "configs/deepspeed/zero3.json", description="DeepSpeed config of multi-GPU SFT, relative to the cello-train image's working directory; null: plain DDP."
    )
    rollout_cpu: str = Field("8", description="CPU request and limit of GRPO's vLLM rollout server.")
    rollout_memory: str = Field("64Gi", description="Memory request and limit of GRPO's vLLM rollout server.")
    rollout_args: list[str] = Field(default_factory=list, description="More `vllm serve` args of the rollout server, e.g. ['--max-model-len', '8192'].")
    rollout_startup_timeout_s: int = Field(1800, ge=10, description="Startup probe budget of the rollout server (download + load the policy).")
    nccl_port_range: str = Field(
        "51217-52216", pattern=r"^\d{1,5}-\d{1,5}$",
        description="Ports NCCL opens between GRPO's trainer and rollout pods besides 51216: its sockets are ephemeral, so the training pods set net.ipv4.ip_local_port_range to this range (ends of different parity) and the NetworkPolicies open it.",
    )
    secrets: dict[str, dict[str, str]] = Field(
        default_factory=dict,
        description="Secrets exposed as env to every step: {secret name: {key in the secret: ENV_VAR}} (object-store credentials, a hub token). Optional: a missing Secret is skipped.",
    )

    @model_validator(mode="after")
    def _check_ports(self) -> ClusterConfig:
        low, high = (int(p) for p in self.nccl_port_range.split("-"))
        if not 1024 <= low < high <= 65535 or (high - low) % 2 == 0:
            msg = (f"cluster.nccl_port_range={self.nccl_port_range!r}: use LOW-HIGH within 1024-65535 with ends of "
                   "different parity (the kernel's rule for ip_local_port_range), e.g. 51217-52216.")
            raise ValueError(msg)
        return self


# ---------------------------------------------------------------- the pipeline (cello.pipeline, components/, pipelines/)
class PipelineConfig(Section):
    """`cello pipeline`: settings of the KFP pipeline itself; each stage reads its own section."""

    base_model: str | None = Field(
        None, description="Model SFT starts from: a hub id or a path; 'tiny': a tiny model built offline from the SFT records (CPU runs); null: train.sft.model."
    )
    fan_out: int = Field(8, ge=1, description="Input files ranked at once by the data step's fan-out (dsl.ParallelFor parallelism).")
    step_timeout_s: int = Field(7 * 24 * 3600, ge=60, description="Timeout of a training or evaluation step's pod on a cluster.")
    deploy_timeout_s: float = Field(300.0, gt=0, description="Local deploy: seconds for `cello serve` to get ready and answer the smoke puzzle.")


# ---------------------------------------------------------------- baselines (cello.baselines)
class BaselineConfig(Section):
    """`cello baseline`: the non-LLM marker-gene solver (gene-type association + Hungarian assignment)."""

    alpha: float = Field(0.1, gt=0, description="Additive smoothing of the gene-given-type frequencies (log-lift weights).")
    rank_weighting: Literal["log", "linear", "uniform"] = Field(
        "log", description="Weight of a gene by its rank in a cell: 'log' 1/log2(rank+2), 'linear' 1-rank/top_k, 'uniform' 1."
    )
    top_k: int | None = Field(None, ge=1, description="Use only each cell's first top_k genes; null: all of them.")
    seed: int = Field(0, description="Seed of the chance baseline.")


# ---------------------------------------------------------------- generation (cello.llm backends)
class SamplingParams(Section):
    """How to sample completions; the same meaning for every backend (transformers, HTTP, vLLM)."""

    max_new_tokens: int = Field(1024, ge=1, description="Most tokens generated per completion.")
    temperature: float = Field(0.0, ge=0.0, le=2.0, description="0 = greedy decoding; above 0 samples.")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling mass (ignored when greedy).")
    n: int = Field(1, ge=1, description="Completions per conversation.")
    seed: int | None = Field(0, ge=0, le=2**63 - 1, description="Sampling seed (deterministic runs), 0 to 2**63-1; null: unseeded.")
    stop: list[str] = Field(default_factory=list, description="Stop strings; a completion ends before the first one.")


class BackendConfig(Section):
    """Which model generates, and how to reach it. `spec` picks the backend (see cello.llm.make_backend)."""

    spec: str = Field(
        "", description="Model dir or hf:DIR (transformers), http(s)://HOST:PORT/v1 or openai:MODEL@URL (OpenAI-compatible HTTP), vllm:DIR (vLLM engine)."
    )
    # transformers (in process)
    batch_size: int = Field(8, ge=1, description="transformers: conversations per generate() call.")
    device: str = Field("auto", description="transformers: 'auto' (cuda when available), 'cpu', 'cuda', 'cuda:1'.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field("auto", description="transformers/vLLM: 'auto' = bfloat16 on GPU, float32 on CPU.")
    attn_implementation: str | None = Field(None, description="transformers: null = flash_attention_2 on GPU when importable, else sdpa.")
    # OpenAI-compatible HTTP
    model: str | None = Field(None, description="HTTP: the server's model name; null: the first of GET /models.")
    api_key_env: str = Field("OPENAI_API_KEY", description="HTTP: env var holding the API key (sent as a bearer token; unset: none).")
    concurrency: int = Field(8, ge=1, description="HTTP: requests in flight at once.")
    timeout_s: float = Field(300.0, gt=0, description="HTTP: timeout per request (connect, read, write).")
    max_retries: int = Field(5, ge=0, description="HTTP: retries after the first attempt, on 429, 5xx, timeouts, connection errors.")
    backoff_s: float = Field(1.0, ge=0, description="HTTP: first retry delay; doubles each retry, with jitter.")
    backoff_max_s: float = Field(30.0, ge=0, description="HTTP: cap on one retry delay (also caps a server's Retry-After).")
    # vLLM offline engine (GPU)
    tensor_parallel_size: int = Field(1, ge=1, description="vLLM: GPUs per model.")
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1, description="vLLM: share of GPU memory for weights + KV cache.")
    max_model_len: int | None = Field(None, ge=16, description="vLLM: context length; null: the model's.")


class GenerationConfig(Section):
    """Default backend and sampling for stages that generate (eval, distill)."""

    backend: BackendConfig = Field(default_factory=BackendConfig)
    sampling: SamplingParams = Field(default_factory=SamplingParams)


# ---------------------------------------------------------------- evaluation and gate (cello.evaluate, cello.gate)
class EvalConfig(Section):
    """`cello eval`: a model (or the baseline) over an eval split -> predictions, metrics, report, plot.

    The model and sampling come from `generation:` (CLI flags override them)."""

    limit: int | None = Field(None, ge=1, description="Evaluate only the first `limit` puzzles of the split (quick runs); null: all.")
    chunk_size: int | None = Field(
        None, ge=1,
        description="Puzzles per generate call, appended to predictions.jsonl after each (a crash loses at most one chunk); null: the backend batch size (transformers), 4 x concurrency (HTTP), 256 (vLLM, baselines).",
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
    min_puzzles: int = Field(1, ge=1, description="The candidate must have been scored on at least this many puzzles (guards against a --limit run).")
    regression_tolerance: float = Field(
        0.02, ge=0, le=1, description="Rule 2: how far below the incumbent the candidate may fall (absolute, same metric)."
    )
    regression_test: Literal["significant", "non_inferiority"] = Field(
        "significant",
        description="Rule 2 on the paired-bootstrap interval of candidate - incumbent: 'significant' fails when its upper bound < -tolerance (a regression is shown); 'non_inferiority' passes only when its lower bound >= -tolerance (no regression is shown).",
    )
    require_paired: bool = Field(
        True, description="Rule 2 needs both predictions files (paired bootstrap by puzzle id); false: fall back to the point estimates when one is missing."
    )
    baseline_margin: float = Field(
        0.0, ge=-1, le=1, description="Rule 3: the candidate's metric must exceed the baseline's by more than this; negative: it may trail the baseline by up to that much (-1: rule 3 never blocks)."
    )
    n_boot: int = Field(2000, ge=100, description="Paired-bootstrap resamples.")
    ci: float = Field(0.95, gt=0, lt=1, description="Coverage of the paired-bootstrap interval.")
    seed: int = Field(0, description="Seed of the paired bootstrap.")


# ---------------------------------------------------------------- all sections
class Params(Section):
    """Everything in params.yaml."""

    model_config = ConfigDict(extra="allow", validate_assignment=True)  # later stages add sections

    data: DataConfig = Field(default_factory=DataConfig)
    prompt: PromptTemplate = Field(default_factory=PromptTemplate)
    tiny_model: TinyModelConfig = Field(default_factory=TinyModelConfig)
    generation: GenerationConfig = Field(default_factory=GenerationConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)
    deploy: DeployConfig = Field(default_factory=DeployConfig)
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig)
    baseline: BaselineConfig = Field(default_factory=BaselineConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    gate: GateConfig = Field(default_factory=GateConfig)


S = TypeVar("S", bound=BaseModel)


def _deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _describe(exc: ValidationError, prefix: str = "") -> str:
    """One line per problem: the dotted field, what is wrong, and the value given."""
    lines = []
    for err in exc.errors():
        field = ".".join(str(p) for p in (prefix, *err["loc"]) if p != "")
        given = f" (got {err['input']!r})" if "input" in err and not isinstance(err["input"], dict) else ""
        lines.append(f"  {field or '(top level)'}: {err['msg']}{given}")
    return "\n".join(lines)


def apply_overrides(raw: dict[str, Any], overrides: dict[str, Any] | None) -> dict[str, Any]:
    """`raw` with dotted keys set: {"gate.min_accuracy": 0.0, "train.grpo.max_steps": 10}.

    The first part must name a section of params.yaml (a typo is an error, not a new section);
    the rest is checked when the result is validated."""
    out = _deep_merge(raw, {})
    for key, value in (overrides or {}).items():
        parts = str(key).split(".")
        if parts[0] not in Params.model_fields or not all(parts):
            msg = f"override {key!r}: no such setting; the first part must be one of {sorted(Params.model_fields)} (e.g. gate.min_accuracy=0)."
            raise ConfigError(msg)
        node = out
        for part in parts[:-1]:
            child = node.get(part)
            node[part] = child = dict(child) if isinstance(child, dict) else {}
            node = child
        node[parts[-1]] = value
    return out


DEFAULT_PARAMS = Path("params.yaml")


def load_params(
    path: str | os.PathLike | None = None, *, profile: str | None = None, overrides: dict[str, Any] | None = None,
) -> Params:
    """Read a params file, apply a named profile, then `overrides` (dotted keys, see
    `apply_overrides`). `path` None means ./params.yaml, which may be absent (built-in
    defaults, said in the log); a file given explicitly must exist: a typo in --params must
    not silently start a run with the paper's 7B defaults."""
    raw: dict[str, Any] = {}
    if path is None:
        path = DEFAULT_PARAMS
        if not path.is_file():
            log.info("no %s in %s: using the built-in defaults", path, Path.cwd())
    elif not Path(path).is_file():
        msg = f"{path}: no such params file; fix --params (without it, ./params.yaml or the built-in defaults are used)."
        raise ConfigError(msg)
    if Path(path).is_file():
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
    raw = apply_overrides(raw, overrides)
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        msg = f"{path}: invalid settings (fix these keys):\n{_describe(exc)}"
        raise ConfigError(msg) from exc


def override(section: S, **values: Any) -> S:
    """A copy of `section` with the given fields replaced; None means 'not given' (keep)."""
    given = {k: v for k, v in values.items() if v is not None}
    try:
        return section.model_validate({**section.model_dump(), **given})
    except ValidationError as exc:
        msg = f"invalid option (the flag or params.yaml key named below):\n{_describe(exc)}"
        raise ConfigError(msg) from exc

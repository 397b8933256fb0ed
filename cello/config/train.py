"""Configs of training (`cello train`, cello.train): SFT with LoRA, GRPO, distillation.

Cello keeps only its own fields; any other TRL knob goes through `trl:`, passed as-is to TRL's
SFTConfig / GRPOConfig. The TRL arguments Cello sets itself are declared once per stage
(`OWNED_TRL_KEYS`), so `trl:` cannot silently undo one of them.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from cello.config.base import Section


class LoraStageConfig(Section):
    """PEFT adapter (the released SFT script: DoRA r 256, alpha 512, dropout 0.05 on all linear layers)."""

    enabled: bool = Field(True, description="Train a LoRA adapter; false: full fine-tuning of every weight.")
    r: int = Field(256, ge=1, description="Adapter rank.")
    alpha: int = Field(512, ge=1, description="Adapter scale numerator (scale = alpha / r).")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the adapter input.")
    target_modules: str | list[str] = Field(
        "all-linear",
        description="Module names to adapt; 'all-linear': every linear layer except the output head.",
    )
    use_dora: bool = Field(
        True, description="DoRA (weight-decomposed LoRA, as the released SFT script) instead of plain LoRA.",
    )
    modules_to_save: list[str] = Field(
        default_factory=list,
        description=(
            "Modules trained in full next to the adapter (e.g. [embed_tokens] for a random-weight tiny model, "
            "whose frozen embeddings cap the logits); merged like the adapter."
        ),
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
    gradient_checkpointing: bool = Field(
        True,
        description="Recompute activations in backward (less memory, ~20% slower).",
    )
    precision: Literal["auto", "bf16", "fp16", "fp32"] = Field(
        "auto",
        description="'auto': bf16 on a GPU that supports it, fp32 on CPU.",
    )
    attn_implementation: Literal["auto", "flash_attention_2", "sdpa", "eager"] = Field(
        "auto", description="'auto': flash_attention_2 on CUDA when flash-attn imports, sdpa otherwise."
    )
    deepspeed: str | None = Field(
        None,
        description="DeepSpeed JSON (configs/deepspeed/zero2.json or zero3.json); null: plain DDP.",
    )
    report_to: list[str] = Field(
        default_factory=lambda: ["tensorboard"],
        description="Experiment trackers: tensorboard, mlflow, wandb, or none.",
    )
    logging_steps: int = Field(10, ge=1, description="Log every this many optimizer steps.")
    save_steps: int = Field(
        200, ge=1,
        description="Checkpoint every this many optimizer steps (what --resume restarts from).",
    )
    save_total_limit: int | None = Field(2, ge=1, description="Checkpoints kept; null: all.")
    seed: int = Field(0, description="Seed for weights init, data order and sampling.")
    trl: dict[str, Any] = Field(
        default_factory=dict,
        description="Extra keyword arguments for TRL's config, passed as-is (e.g. warmup_ratio).",
    )

    @model_validator(mode="after")
    def _check_trl(self) -> _TrainerStageConfig:
        clash = sorted(set(self.trl) & self.OWNED_TRL_KEYS)
        if clash:
            msg = (f"trl: {clash} are set by Cello's own fields; "
                   "remove them from `trl` and set the matching field instead.")
            raise ValueError(msg)
        return self


class SFTStageConfig(_TrainerStageConfig):
    """Supervised fine-tuning on chat records, loss on assistant tokens (the paper's defaults)."""

    OWNED_TRL_KEYS: ClassVar[frozenset[str]] = _TrainerStageConfig.OWNED_TRL_KEYS | {
        "max_length", "packing", "padding_free", "assistant_only_loss", "eval_strategy", "eval_steps",
        "per_device_eval_batch_size", "dataset_num_proc", "truncation_mode",
    }

    model: str | None = Field(
        "Qwen/Qwen2.5-7B-Instruct",
        description="Base model: a local Hugging Face directory or a hub id.",
    )
    max_length: int = Field(4096, ge=16, description="Longest tokenized conversation; longer ones are truncated.")
    truncation_mode: Literal["keep_end", "keep_start"] = Field(
        "keep_end",
        description=(
            "Which end of an over-long conversation is kept: keep_end cuts the start (the released script's "
            "left truncation), keep_start cuts the end."
        ),
    )
    effective_batch_size: int = Field(
        96, ge=1,
        description=(
            "Sequences per optimizer step over all devices (per_device_batch_size x devices x accumulation)."
        ),
    )
    packing: bool = Field(
        False,
        description="Pack several conversations into each max_length row (best-fit, padding-free).",
    )
    padding_free: bool = Field(
        False,
        description="Concatenate the batch into one row with no padding (fastest with flash-attn).",
    )
    assistant_only_loss: bool = Field(
        True,
        description="Loss on assistant tokens only (needs {% generation %} in the chat template).",
    )
    logging_steps: int = Field(1, ge=1, description="Log every this many optimizer steps.")
    eval_fraction: float = Field(
        0.1, ge=0, lt=1,
        description="Share of train records held out for eval loss when no eval file is given; 0: none.",
    )


class GRPOStageConfig(_TrainerStageConfig):
    """GRPO on the batch-level reward (the released verl script: 5 generations, lr 1e-6, KL 0.001 as a loss,
    prompts <= 3072 and completions <= 3000 tokens, 64 prompts per step, 20 epochs; docs/paper-fidelity.md)."""

    OWNED_TRL_KEYS: ClassVar[frozenset[str]] = _TrainerStageConfig.OWNED_TRL_KEYS | {
        "num_generations", "max_completion_length", "beta", "temperature", "top_p", "reward_weights",
        "steps_per_generation", "generation_batch_size", "use_vllm", "vllm_mode", "vllm_server_base_url",
        "loss_type", "lr_scheduler_type", "weight_decay",
    }

    lora: LoraStageConfig = Field(default_factory=lambda: LoraStageConfig(enabled=False))
    learning_rate: float = Field(1e-6, gt=0, description="Peak learning rate.")
    epochs: float = Field(20.0, gt=0, description="Passes over the prompts (the released script: 20).")
    lr_scheduler_type: Literal["constant", "linear", "cosine"] = Field(
        "constant", description="Learning-rate schedule (verl's actor: constant, no warmup).",
    )
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay (verl's actor optimizer: 0.01).")
    loss_type: Literal["bnpo", "dapo", "grpo", "dr_grpo"] = Field(
        "bnpo",
        description=(
            "How TRL averages the token losses: bnpo = mean over the tokens of each device batch, as verl's "
            "token-mean; dapo = over the whole generation batch (TRL's default)."
        ),
    )
    max_prompt_length: int | None = Field(
        3072, ge=1,
        description="Drop prompts longer than this many tokens (verl's filter_overlong_prompts); null: keep all.",
    )
    per_device_batch_size: int = Field(8, ge=1, description="Completions per device per forward pass.")
    num_generations: int = Field(5, ge=2, description="Completions sampled per prompt (the group of GRPO).")
    prompts_per_step: int = Field(
        64, ge=1,
        description="Prompts per optimizer step over all devices (completions = this x num_generations).",
    )
    max_completion_length: int = Field(3000, ge=1, description="Longest sampled completion, in tokens.")
    logging_steps: int = Field(
        1, ge=1,
        description="Log every this many optimizer steps (a GRPO step is long: log each).",
    )
    save_steps: int = Field(
        100, ge=1,
        description="Checkpoint every this many optimizer steps (what --resume restarts from).",
    )
    temperature: float = Field(1.0, gt=0, description="Sampling temperature for rollouts.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling for rollouts.")
    beta: float = Field(0.001, ge=0, description="KL coefficient against the starting policy; 0: no reference model.")
    reward_weight: float = Field(
        1.0,
        description="Weight of the batch-level reward ((cell acc + batch exact)/2, -1 if badly formatted).",
    )
    format_weight: float = Field(
        0.0,
        description=(
            "Weight of the separate format reward (1 in the paper's think/answer layout, 0 not); 0: logged only."
        ),
    )
    max_n: int | None = Field(
        None, ge=1,
        description=(
            "Train only on puzzles with at most this many cells (a small-N curriculum for tiny models); null: all, "
            "as the paper."
        ),
    )
    vllm_server: str | None = Field(
        None,
        description="Base URL of a `trl vllm-serve` server for rollouts; null: generate with transformers.",
    )
    vllm_health_timeout: float = Field(
        600.0, gt=0,
        description="Seconds to wait for the vLLM server's /health before failing.",
    )


class DistillStageConfig(Section):
    """Reasoning traces from a teacher endpoint, kept by rejection sampling on the reward."""

    teacher: str = Field(
        "http://localhost:8000/v1",
        description=(
            "The teacher: an OpenAI-compatible base URL (vLLM, KServe /openai/v1, a hosted API), or any cello.llm "
            "backend spec (e.g. a model dir)."
        ),
    )
    teacher_model: str | None = Field(
        None,
        description="Model name sent to the teacher's endpoint; null: the first of GET /models.",
    )
    api_key_env: str = Field("OPENAI_API_KEY", description="Environment variable holding the API key (unset: no key).")
    samples: int = Field(4, ge=1, description="Completions sampled per puzzle (k).")
    temperature: float = Field(0.8, ge=0, description="Teacher sampling temperature.")
    max_tokens: int = Field(4096, ge=1, description="Longest teacher completion, in tokens.")
    min_reward: float = Field(
        1.0, ge=0, le=1,
        description=(
            "Keep a completion only if its reward >= this (1.0: a perfect answer). A valid format is always "
            "required."
        ),
    )
    keep_per_puzzle: int = Field(
        1, ge=1,
        description="At most this many distinct top-reward completions kept per puzzle.",
    )
    concurrency: int = Field(8, ge=1, description="Requests in flight at once.")
    retries: int = Field(3, ge=0, description="Retries per request on 429, 5xx, timeouts and connection errors.")
    timeout: float = Field(600.0, gt=0, description="Seconds per request.")
    chunk: int = Field(
        64, ge=1,
        description="Puzzles per round trip to the output files (what a resumed run may redo).",
    )
    seed: int = Field(0, description="Sampling seed sent with each request.")


class TrainConfig(Section):
    """The training stages, one section each."""

    sft: SFTStageConfig = Field(default_factory=SFTStageConfig)
    grpo: GRPOStageConfig = Field(default_factory=GRPOStageConfig)
    distill: DistillStageConfig = Field(default_factory=DistillStageConfig)

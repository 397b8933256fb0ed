"""Configs of the model layer (cello.llm): the tiny offline model, and how any backend generates."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from cello.config.base import Section


class TinyModelConfig(Section):
    """A random-weight Qwen2 causal LM + a BPE tokenizer trained on the puzzle corpus (tests, CPU runs)."""

    hidden_size: int = Field(
        64, ge=8,
        description="Hidden width (a multiple of num_heads). hidden_size / num_heads is the head size: vLLM's CPU "
                    "attention serves 32, 64, 80, 96, 112, 128, ... (not 16), so the default is 64.",
    )
    num_layers: int = Field(2, ge=1, description="Decoder layers.")
    num_heads: int = Field(1, ge=1, description="Attention heads.")
    num_kv_heads: int = Field(1, ge=1, description="Key/value heads (grouped-query attention); divides num_heads.")
    intermediate_size: int = Field(128, ge=8, description="MLP width.")
    max_position_embeddings: int = Field(8192, ge=128, description="Longest sequence (RoPE; costs no parameters).")
    vocab_size: int = Field(
        2048, ge=300,
        description="BPE vocabulary (bytes + merges + specials); large enough to keep gene names whole.",
    )
    min_frequency: int = Field(2, ge=1, description="A merge needs at least this many occurrences in the corpus.")
    max_texts: int | None = Field(
        50000, ge=1,
        description="Cap on corpus texts used to train the tokenizer; null: all.",
    )
    tie_word_embeddings: bool = Field(True, description="Share input and output embeddings (fewer parameters).")
    init_std: float = Field(
        0.02, gt=0, le=1,
        description="Std of the random weights (Qwen: 0.02; ~0.2 makes greedy output depend visibly on the prompt)."
    )
    seed: int = Field(0, description="Seed for the weights and the built-in corpus.")

    @model_validator(mode="after")
    def _check_heads(self) -> TinyModelConfig:
        if self.hidden_size % self.num_heads:
            msg = (f"tiny_model.hidden_size={self.hidden_size} is not a multiple of "
                   f"num_heads={self.num_heads}; change one.")
            raise ValueError(msg)
        if self.num_heads % self.num_kv_heads:
            msg = (f"tiny_model.num_kv_heads={self.num_kv_heads} does not divide "
                   f"num_heads={self.num_heads}; use a divisor.")
            raise ValueError(msg)
        return self


class SamplingParams(Section):
    """How to sample completions; the same meaning for every backend (transformers, HTTP, vLLM)."""

    max_new_tokens: int = Field(
        3500, ge=1, description="Most tokens generated per completion (a reasoning model cut short gives no answer)."
    )
    temperature: float = Field(0.0, ge=0.0, le=2.0, description="0 = greedy decoding; above 0 samples.")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling mass (ignored when greedy).")
    n: int = Field(1, ge=1, description="Completions per conversation.")
    seed: int | None = Field(
        0, ge=0, le=2**63 - 1,
        description="Sampling seed (deterministic runs), 0 to 2**63-1; null: unseeded.",
    )
    stop: list[str] = Field(default_factory=list, description="Stop strings; a completion ends before the first one.")


class BackendConfig(Section):
    """Which model generates, and how to reach it. `spec` picks the backend (see cello.llm.make_backend)."""

    spec: str = Field(
        "",
        description=(
            "Model dir or hf:DIR (transformers), http(s)://HOST:PORT/v1 or openai:MODEL@URL (OpenAI-compatible "
            "HTTP), vllm:DIR (vLLM engine)."
        ),
    )
    # transformers (in process)
    batch_size: int = Field(8, ge=1, description="transformers: conversations per generate() call.")
    device: str = Field("auto", description="transformers: 'auto' (cuda when available), 'cpu', 'cuda', 'cuda:1'.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto",
        description="transformers/vLLM: 'auto' = bfloat16 on GPU, float32 on CPU.",
    )
    attn_implementation: str | None = Field(
        None,
        description="transformers: null = flash_attention_2 on GPU when importable, else sdpa.",
    )
    # OpenAI-compatible HTTP
    model: str | None = Field(None, description="HTTP: the server's model name; null: the first of GET /models.")
    api_key_env: str = Field(
        "OPENAI_API_KEY",
        description="HTTP: env var holding the API key (sent as a bearer token; unset: none).",
    )
    concurrency: int = Field(8, ge=1, description="HTTP: requests in flight at once.")
    timeout_s: float = Field(300.0, gt=0, description="HTTP: timeout per request (connect, read, write).")
    max_retries: int = Field(
        5, ge=0,
        description="HTTP: retries after the first attempt, on 429, 5xx, timeouts, connection errors.",
    )
    backoff_s: float = Field(1.0, ge=0, description="HTTP: first retry delay; doubles each retry, with jitter.")
    backoff_max_s: float = Field(
        30.0, ge=0,
        description="HTTP: cap on one retry delay (also caps a server's Retry-After).",
    )
    # vLLM offline engine (GPU)
    tensor_parallel_size: int = Field(1, ge=1, description="vLLM: GPUs per model.")
    gpu_memory_utilization: float = Field(
        0.9, gt=0, le=1,
        description="vLLM: share of GPU memory for weights + KV cache.",
    )
    max_model_len: int | None = Field(None, ge=16, description="vLLM: context length; null: the model's.")


class GenerationConfig(Section):
    """Default backend and sampling for stages that generate (eval, distill)."""

    backend: BackendConfig = Field(default_factory=BackendConfig)
    sampling: SamplingParams = Field(default_factory=SamplingParams)

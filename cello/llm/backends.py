"""Pick a generation backend from one string (a CLI flag, `generation.backend.spec` in params.yaml).

    models/tiny  or  hf:models/tiny          transformers, in this process (CPU or GPU)
    hf://ncbi/Cell-o1[@REVISION]             a Hub model (downloaded once, cached), with transformers
    vllm:hf://ncbi/Cell-o1                   the same with the vLLM engine (GPU)
    http://127.0.0.1:8000/v1                 OpenAI-compatible HTTP (vLLM server, KServe /openai/v1)
    openai:MODEL@https://api.example.com/v1  the same, with the model name given
    vllm:models/sft-merged                   vLLM offline engine (GPU)

    from cello.llm import make_backend
    with make_backend("models/tiny", batch_size=4) as backend: ...
    backend = make_backend(params.generation.backend)       # every setting from params.yaml
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from cello.config import BackendConfig, override
from cello.data.hub import fetch_hub_model, is_hub_uri, parse_hub_uri
from cello.errors import ConfigError
from cello.llm.base import Backend

SPEC_FORMS = (
    "a model dir, hf:DIR or hf://ORG/NAME[@REVISION] (transformers), http(s)://HOST:PORT/v1 or openai:MODEL@URL "
    "(OpenAI-compatible HTTP), vllm:DIR or vllm:hf://ORG/NAME (vLLM engine, GPU)"
)


@dataclass(frozen=True)
class BackendSpec:
    """A parsed spec: which backend, and where (a directory or a URL)."""

    kind: Literal["transformers", "openai-http", "vllm"]
    target: str
    model: str | None = None  # HTTP only: the served model name, when given


def parse_spec(spec: str) -> BackendSpec:
    """Read a backend spec string; raise ConfigError listing the accepted forms."""
    s = spec.strip()
    if not s:
        msg = f"no generation backend given; pass {SPEC_FORMS} (flag --backend or generation.backend.spec)."
        raise ConfigError(msg)
    if s.startswith(("http://", "https://")):
        return BackendSpec("openai-http", s)
    if s.startswith("openai:"):
        rest = s[len("openai:") :]
        model, sep, url = rest.partition("@")
        if not sep:
            model, url = "", rest
        if not url.startswith(("http://", "https://")):
            msg = f"backend spec {spec!r}: expected openai:MODEL@http(s)://HOST/v1 (or openai:URL)."
            raise ConfigError(msg)
        return BackendSpec("openai-http", url, model or None)
    if is_hub_uri(s):  # hf://ORG/NAME: a Hub model, fetched by make_backend
        parse_hub_uri(s, model=True)
        return BackendSpec("transformers", s)
    for prefix, kind in (("vllm:", "vllm"), ("hf:", "transformers"), ("transformers:", "transformers")):
        if s.startswith(prefix):
            return BackendSpec(kind, s[len(prefix) :])  # type: ignore[arg-type]
    if Path(s).is_dir():
        return BackendSpec("transformers", s)
    msg = f"backend spec {spec!r} is neither an existing directory nor a known form; use {SPEC_FORMS}."
    raise ConfigError(msg)


def make_backend(spec: str | BackendConfig, **overrides: Any) -> Backend:
    """Build the backend a spec names. Settings come from a BackendConfig (defaults when `spec`
    is a string), then `overrides` (BackendConfig field names; None = keep).
    """
    cfg = spec if isinstance(spec, BackendConfig) else BackendConfig(spec=spec)
    cfg = override(cfg, **overrides)  # validated; an unknown name is a ConfigError
    parsed = parse_spec(cfg.spec)
    if is_hub_uri(parsed.target):  # a Hub model: a local snapshot for the in-process engines
        from dataclasses import replace

        parsed = replace(parsed, target=str(fetch_hub_model(parsed.target)))
    if parsed.kind == "openai-http":
        from cello.llm.openai_http import OpenAIHTTPBackend

        return OpenAIHTTPBackend(
            parsed.target,
            model=parsed.model or cfg.model,
            api_key_env=cfg.api_key_env,
            concurrency=cfg.concurrency,
            timeout_s=cfg.timeout_s,
            max_retries=cfg.max_retries,
            backoff_s=cfg.backoff_s,
            backoff_max_s=cfg.backoff_max_s,
        )
    if parsed.kind == "vllm":
        from cello.llm.vllm_engine import VLLMBackend

        return VLLMBackend(
            parsed.target,
            tensor_parallel_size=cfg.tensor_parallel_size,
            gpu_memory_utilization=cfg.gpu_memory_utilization,
            max_model_len=cfg.max_model_len,
            dtype=cfg.dtype,
        )
    from cello.llm.hf import TransformersBackend

    return TransformersBackend(
        parsed.target,
        batch_size=cfg.batch_size,
        device=cfg.device,
        dtype=cfg.dtype,
        attn_implementation=cfg.attn_implementation,
    )

"""Generation with the vLLM offline engine (GPU only; `pip install 'cello[gpu]'`).

    backend = make_backend("vllm:models/sft-merged")       # or VLLMBackend("models/sft-merged")
    backend.generate(conversations, SamplingParams(max_new_tokens=3000, temperature=0.7, n=5))

vLLM is imported when the backend is built, never at module import, so CPU machines can
import cello.llm freely; without vLLM the error names the extra to install.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from cello.config import SamplingParams
from cello.deps import require
from cello.errors import ConfigError
from cello.llm.base import Backend, Conversation, Generation, Progress

log = logging.getLogger(__name__)


class VLLMBackend(Backend):
    """A model loaded into a vLLM engine in this process."""

    name = "vllm"

    def __init__(
        self,
        model_dir: str | os.PathLike,
        *,
        tensor_parallel_size: int = 1,
        gpu_memory_utilization: float = 0.9,
        max_model_len: int | None = None,
        dtype: str = "auto",
        chunk_size: int = 1024,
    ) -> None:
        super().__init__()
        self._vllm = require("vllm", "gpu")
        import torch

        if not torch.cuda.is_available():
            msg = (
                "the vLLM backend needs a CUDA GPU and none is visible; "
                "use a model dir (transformers) or an HTTP server instead."
            )
            raise ConfigError(msg)
        kwargs = {
            "model": str(Path(model_dir)),
            "tensor_parallel_size": tensor_parallel_size,
            "gpu_memory_utilization": gpu_memory_utilization,
            "dtype": dtype,
        }
        if max_model_len is not None:
            kwargs["max_model_len"] = max_model_len
        self.chunk_size = chunk_size
        self.llm = self._vllm.LLM(**kwargs)
        log.info("vLLM backend: %s (tp=%d)", model_dir, tensor_parallel_size)

    def sampling_params(self, params: SamplingParams):
        """The vLLM SamplingParams with the same meaning as ours (model defaults overridden)."""
        sample = params.temperature > 0
        return self._vllm.SamplingParams(
            n=params.n,
            temperature=params.temperature,
            top_p=params.top_p if sample else 1.0,
            top_k=-1,  # off, as on the other backends
            repetition_penalty=1.0,
            max_tokens=params.max_new_tokens,
            seed=params.seed,
            stop=list(params.stop) or None,
        )

    def _generate(
        self, conversations: list[Conversation], params: SamplingParams, progress: Progress | None
    ) -> list[Generation]:
        sp = self.sampling_params(params)
        results: list[Generation] = []
        for start in range(0, len(conversations), self.chunk_size):  # chunks only to report progress
            chunk = conversations[start : start + self.chunk_size]
            outputs = self.llm.chat(chunk, sp, use_tqdm=False, add_generation_prompt=True)
            with self._usage_lock:
                self.usage.requests += 1
            for out in outputs:
                results.append(
                    Generation(
                        texts=[o.text for o in out.outputs],
                        prompt_tokens=len(out.prompt_token_ids or []),
                        completion_tokens=sum(len(o.token_ids) for o in out.outputs),
                        finish_reasons=[o.finish_reason for o in out.outputs],
                    )
                )
            if progress is not None:
                progress(len(chunk))
        return results

    def close(self) -> None:
        self.llm = None
        try:
            import torch

            torch.cuda.empty_cache()
        except Exception:  # pragma: no cover - best effort on shutdown
            log.debug("could not empty the CUDA cache", exc_info=True)

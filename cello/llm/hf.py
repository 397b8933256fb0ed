"""In-process generation with transformers (CPU, or one GPU): batched, left-padded, greedy or sampled.

    from cello.llm import SamplingParams, TransformersBackend
    backend = TransformersBackend("models/tiny", batch_size=8)
    backend.generate([[{"role": "user", "content": "Cell 1: CD3E"}]], SamplingParams(max_new_tokens=32))

On a GPU the model runs in bfloat16 with flash_attention_2 when the package imports, sdpa
otherwise; on CPU in float32 with sdpa. Conversations are sorted by length before batching
(less padding) and returned in input order. Only the new tokens are decoded, without special
tokens; stop strings cut the text as an OpenAI server would.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from cello.config import SamplingParams
from cello.errors import ConfigError, InputError, is_available
from cello.llm.base import Backend, Conversation, Generation, Progress, cut_at_stop

log = logging.getLogger(__name__)


def resolve_device(device: str) -> str:
    """'auto' -> 'cuda' when a GPU is visible, else 'cpu'; anything else is checked and passed on."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        msg = f"device={device!r} but no CUDA GPU is visible; use device='cpu' or 'auto'."
        raise ConfigError(msg)
    return device


def resolve_dtype(dtype: str, device: str):
    """'auto' -> bfloat16 on a GPU that supports it (float16 on older ones), float32 on CPU."""
    import torch

    if dtype != "auto":
        return getattr(torch, dtype)
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def pick_attention(device: str, requested: str | None = None) -> str:
    """flash_attention_2 on a GPU when the package imports, else sdpa (an explicit choice wins)."""
    if requested:
        return requested
    if device.startswith("cuda") and is_available("flash_attn"):
        return "flash_attention_2"
    return "sdpa"


class TransformersBackend(Backend):
    """A Hugging Face model directory, loaded in this process."""

    name = "transformers"

    def __init__(
        self,
        model_dir: str | os.PathLike,
        *,
        batch_size: int = 8,
        device: str = "auto",
        dtype: str = "auto",
        attn_implementation: str | None = None,
    ) -> None:
        super().__init__()
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = Path(model_dir)
        if not (path / "config.json").is_file():
            msg = f"{path}: not a model directory (no config.json); build one with `cello model tiny -o {path}` or pass a trained checkpoint."
            raise InputError(msg)
        if batch_size < 1:
            msg = f"batch_size={batch_size}; use 1 or more."
            raise ConfigError(msg)
        self.model_dir = path
        self.batch_size = batch_size
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.attn_implementation = pick_attention(self.device, attn_implementation)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if not self.tokenizer.chat_template:
            msg = f"{path}: the tokenizer has no chat template; use an instruct model or a `cello model tiny` directory."
            raise InputError(msg)
        self.model = AutoModelForCausalLM.from_pretrained(
            path, dtype=self.dtype, attn_implementation=self.attn_implementation
        ).to(self.device)
        self.model.eval()
        self._torch = torch
        eos = self.model.generation_config.eos_token_id
        self._eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        self._eos_ids.add(self.tokenizer.eos_token_id)
        log.info("transformers backend: %s on %s (%s, %s)", path, self.device, self.dtype, self.attn_implementation)

    def _gen_kwargs(self, params: SamplingParams) -> dict:
        sample = params.temperature > 0
        kw = {
            "max_new_tokens": params.max_new_tokens,
            "do_sample": sample,
            "num_return_sequences": params.n,
            "pad_token_id": self.tokenizer.pad_token_id,
            "eos_token_id": sorted(self._eos_ids),
            # Override the model's defaults (e.g. Qwen's top_k 20, repetition_penalty 1.05):
            # a SamplingParams means the same thing on every backend.
            "top_k": 0 if sample else 50,  # 0 = off; 50 is the library default (ignored when greedy)
            "repetition_penalty": 1.0,
            "temperature": params.temperature if sample else 1.0,
            "top_p": params.top_p if sample else 1.0,
        }
        if params.stop:
            kw["stop_strings"] = list(params.stop)
            kw["tokenizer"] = self.tokenizer
        return kw

    def _generate(self, conversations: list[Conversation], params: SamplingParams, progress: Progress | None) -> list[Generation]:
        torch = self._torch
        if params.seed is not None:
            torch.manual_seed(params.seed)
        # longest first: less padding per batch, and an out-of-memory error shows up at once
        order = sorted(range(len(conversations)), key=lambda i: -sum(len(m["content"]) for m in conversations[i]))
        results: list[Generation | None] = [None] * len(conversations)
        kw = self._gen_kwargs(params)
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            enc = self.tokenizer.apply_chat_template(
                [conversations[i] for i in idx], add_generation_prompt=True, padding=True, return_tensors="pt", return_dict=True
            ).to(self.device)
            with torch.inference_mode():
                out = self.model.generate(**enc, **kw)
            with self._usage_lock:
                self.usage.requests += 1
            new = out[:, enc["input_ids"].shape[1] :].cpu()
            prompt_lens = enc["attention_mask"].sum(dim=1).tolist()
            for b, i in enumerate(idx):
                rows = new[b * params.n : (b + 1) * params.n]
                results[i] = self._decode(rows, int(prompt_lens[b]), params)
            if progress is not None:
                progress(len(idx))
        return results  # type: ignore[return-value]

    def _decode(self, rows, prompt_tokens: int, params: SamplingParams) -> Generation:
        texts, reasons, n_tokens = [], [], 0
        pad = self.tokenizer.pad_token_id
        for row in rows.tolist():
            ids = []
            finish = "length"
            for t in row:
                if t in self._eos_ids:
                    n_tokens += 1
                    finish = "stop"
                    break
                if t == pad and pad not in self._eos_ids:  # filler after the sequence ended
                    finish = "stop"
                    break
                ids.append(t)
            n_tokens += len(ids)
            text, cut = cut_at_stop(self.tokenizer.decode(ids, skip_special_tokens=True), params.stop)
            texts.append(text)
            reasons.append("stop" if cut else finish)
        return Generation(texts=texts, prompt_tokens=prompt_tokens, completion_tokens=n_tokens, finish_reasons=reasons)

    def close(self) -> None:
        self.model = None  # type: ignore[assignment]
        if self.device.startswith("cuda"):
            self._torch.cuda.empty_cache()

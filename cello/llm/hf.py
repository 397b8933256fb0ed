"""In-process generation with transformers (CPU, or one GPU): batched, left-padded, greedy or sampled.

    from cello.llm import SamplingParams, TransformersBackend
    backend = TransformersBackend("models/tiny", batch_size=8)
    backend.generate([[{"role": "user", "content": "Cell 1: CD3E"}]], SamplingParams(max_new_tokens=32))

On a GPU the model runs in bfloat16 with flash_attention_2 when the package imports, sdpa
otherwise; on CPU in float32 with sdpa (the rule lives in `cello.llm.device`). Conversations are
sorted by length before batching (less padding) and returned in input order. Only the new tokens
are decoded, without special tokens; stop strings cut the text as an OpenAI server would. With
`on_text` the text is also handed out as it is generated (a transformers streamer, decoded
incrementally: a character split over several tokens comes out whole, and text that may be the
start of a stop string is held back).
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

from cello.config import SamplingParams
from cello.errors import ConfigError, InputError
from cello.llm.base import Backend, Conversation, Generation, OnText, Progress, cut_at_stop
from cello.llm.device import pick_attention, resolve_device, resolve_dtype

log = logging.getLogger(__name__)


class TransformersBackend(Backend):
    """A Hugging Face model directory, loaded in this process."""

    name = "transformers"
    abortable = True
    streams = True

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
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = Path(model_dir)
        if not (path / "config.json").is_file():
            msg = (f"{path}: not a model directory (no config.json); build one with `cello model tiny -o {path}` "
                   "or pass a trained checkpoint.")
            raise InputError(msg)
        dev = resolve_device(device)
        attn = pick_attention(dev, attn_implementation)
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=resolve_dtype(dtype, dev),
                                                     attn_implementation=attn).to(dev)
        self._setup(model, tokenizer, batch_size=batch_size, name=str(path))
        self.attn_implementation = attn
        self.model_dir = path

    @classmethod
    def from_objects(cls, model, tokenizer, *, batch_size: int = 8) -> TransformersBackend:
        """Wrap a model and tokenizer already in memory (e.g. inside a trainer or a server)."""
        self = cls.__new__(cls)
        Backend.__init__(self)
        self._setup(model, tokenizer, batch_size=batch_size, name=type(model).__name__)
        self.attn_implementation = getattr(model.config, "_attn_implementation", None)
        self.model_dir = None
        return self

    def _setup(self, model, tokenizer, *, batch_size: int, name: str) -> None:
        import torch

        if batch_size < 1:
            msg = f"batch_size={batch_size}; use 1 or more."
            raise ConfigError(msg)
        if not tokenizer.chat_template:
            msg = (f"{name}: the tokenizer has no chat template; "
                   "use an instruct model or a `cello model tiny` directory.")
            raise InputError(msg)
        tokenizer.padding_side = "left"
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        self._torch = torch
        self._lock = threading.Lock()  # one generate() at a time on this model
        self.batch_size = batch_size
        self.tokenizer = tokenizer
        self.model = model.eval()
        self.device = str(model.device)
        self.dtype = model.dtype
        eos = model.generation_config.eos_token_id
        self._eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        self._eos_ids.add(tokenizer.eos_token_id)
        log.info("transformers backend: %s on %s (%s)", name, self.device, self.dtype)

    def _gen_kwargs(self, params: SamplingParams) -> dict:
        sample = params.temperature > 0
        kw = {
            "max_new_tokens": params.max_new_tokens,
            "do_sample": sample,
            "num_return_sequences": params.n if sample else 1,  # greedy: one, copied n times
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

    def _generate(self, conversations: list[Conversation], params: SamplingParams, progress: Progress | None,
                  abort=None, on_text: OnText | None = None) -> list[Generation]:
        torch = self._torch
        if params.seed is not None:
            # torch takes a 64-bit seed; model_copy(update=...) skips SamplingParams' bound check
            torch.manual_seed(int(params.seed) % 2**63)
        # longest first: less padding per batch, and an out-of-memory error shows up at once
        order = sorted(range(len(conversations)), key=lambda i: -sum(len(m["content"]) for m in conversations[i]))
        results: list[Generation | None] = [None] * len(conversations)
        kw = self._gen_kwargs(params)
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            enc = self.tokenizer.apply_chat_template(
                [conversations[i] for i in idx], add_generation_prompt=True, padding=True, return_tensors="pt",
                return_dict=True,
            ).to(self.device)
            stream = _streamer(self, on_text, idx, kw["num_return_sequences"], params.stop) if on_text else None
            batch_kw = {**kw, "streamer": stream} if stream else kw
            if abort is not None:
                try:
                    out = self._generate_abortable(enc, batch_kw, abort, idx)
                except _Aborted:  # nobody waits for any of them: empty results, dropped by the caller
                    for i in idx:
                        results[i] = Generation(texts=[""] * params.n, completion_tokens=0,
                                                finish_reasons=["abort"] * params.n)
                    continue
            else:
                with self._lock, torch.inference_mode():
                    out = self.model.generate(**enc, **batch_kw)
            with self._usage_lock:
                self.usage.requests += 1
            new = out[:, enc["input_ids"].shape[1] :].cpu()
            if params.temperature == 0 and params.n > 1:
                new = new.repeat_interleave(params.n, dim=0)
            prompt_lens = enc["attention_mask"].sum(dim=1).tolist()
            for b, i in enumerate(idx):
                rows = new[b * params.n : (b + 1) * params.n]
                results[i] = self._decode(rows, int(prompt_lens[b]), params)
                if stream is not None:
                    stream.finish(b * params.n, results[i].texts[0])
            if progress is not None:
                progress(len(idx))
        return results  # type: ignore[return-value]

    def _generate_abortable(self, enc, kw: dict, abort, idx: list[int]):
        """generate() that stops a row once `abort(conversation)` is true (a stopping criterion, each
        step), and stops the whole batch, the prompt pass included, once every row is aborted: the
        prompt is fed in chunks of PREFILL_CHUNK tokens (transformers' chunked prefill, same output)
        and a hook before each forward pass raises _Aborted."""
        torch = self._torch

        def check(module, args):
            if all(abort(i) for i in idx):
                raise _Aborted

        hook = self.model.register_forward_pre_hook(check)
        try:
            with self._lock, torch.inference_mode():
                return self.model.generate(**enc, **kw, prefill_chunk_size=PREFILL_CHUNK,
                                           stopping_criteria=_aborted(abort, idx, kw["num_return_sequences"]))
        finally:
            hook.remove()

    def _decode(self, rows, prompt_tokens: int, params: SamplingParams) -> Generation:
        texts, reasons, n_tokens = [], [], 0
        for row in rows.tolist():
            ids = []
            finish = "length"
            for t in row:
                if self._ends(t):
                    n_tokens += t in self._eos_ids
                    finish = "stop"
                    break
                ids.append(t)
            n_tokens += len(ids)
            text, cut = cut_at_stop(self.tokenizer.decode(ids, skip_special_tokens=True), params.stop)
            texts.append(text)
            reasons.append("stop" if cut else finish)
        return Generation(texts=texts, prompt_tokens=prompt_tokens, completion_tokens=n_tokens, finish_reasons=reasons)

    def _ends(self, token: int) -> bool:
        """An end-of-sequence token, or the padding that follows a sequence that has ended."""
        pad = self.tokenizer.pad_token_id
        return token in self._eos_ids or (token == pad and pad not in self._eos_ids)

    def close(self) -> None:
        self.model = None  # type: ignore[assignment]
        if self.device.startswith("cuda"):
            self._torch.cuda.empty_cache()


PREFILL_CHUNK = 256  # tokens per prompt chunk when a generation may be aborted


class _Aborted(Exception):
    """Every conversation of a batch was aborted mid-generation."""


def _aborted(abort, idx: list[int], rows: int):
    """A stopping criterion: a row ends at the next step once `abort(conversation)` is true."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    class Aborted(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            flags = [bool(abort(i)) for i in idx for _ in range(rows)]
            return torch.tensor(flags, dtype=torch.bool, device=input_ids.device)

    return StoppingCriteriaList([Aborted()])


def _streamer(backend: TransformersBackend, on_text: OnText, idx: list[int], rows: int, stop: list[str]):
    """A transformers streamer (`put` gets the prompt once, then one new token per row each step) that
    calls `on_text(conversation, piece)` for the first completion of each conversation. Each step the
    row's tokens are decoded whole and only the new suffix goes out: merged tokens and multi-byte
    characters come out right (a trailing U+FFFD means a character is still incomplete: wait), and the
    last len(longest stop) - 1 characters wait until they cannot start a stop string."""
    from transformers.generation.streamers import BaseStreamer

    hold = max((len(s) for s in stop), default=1) - 1

    class Stream(BaseStreamer):
        def __init__(self) -> None:
            self.prompt = True
            self.ids: dict[int, list[int]] = {r: [] for r in range(0, len(idx) * rows, rows)}
            self.sent = dict.fromkeys(self.ids, "")
            self.ended: set[int] = set()

        def put(self, value) -> None:
            if self.prompt:  # the first call hands over the prompt
                self.prompt = False
                return
            tokens = value.reshape(-1).tolist()
            for r, ids in self.ids.items():
                if r in self.ended:
                    continue
                if backend._ends(tokens[r]):
                    self.ended.add(r)
                    continue
                ids.append(tokens[r])
                text = backend.tokenizer.decode(ids, skip_special_tokens=True)
                if text.endswith("\ufffd"):
                    continue
                text, cut = cut_at_stop(text, stop)
                if cut:
                    self.ended.add(r)
                elif hold:
                    text = text[: len(text) - hold]
                self._send(r, text)

        def end(self) -> None:
            """Nothing: `finish` sends the rest once the completion's final text is known."""

        def finish(self, r: int, text: str) -> None:
            self._send(r, text)

        def _send(self, r: int, text: str) -> None:
            sent = self.sent[r]
            if len(text) > len(sent) and text.startswith(sent):
                self.sent[r] = text
                on_text(idx[r // rows], text[len(sent) :])

    return Stream()

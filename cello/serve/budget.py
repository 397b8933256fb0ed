"""Refuse prompts the model cannot hold, before they reach it.

A transformers model indexes its position embeddings with the sequence length: a prompt plus
completion longer than `max_position_embeddings` fails inside the model (a server error), or
silently degrades. The server counts the prompt's tokens with the model's own chat template
and answers 400 with the numbers instead. An upstream server (vLLM) checks this itself and
answers 400, which the server passes on.

The count uses its own copy of the tokenizer: a Hugging Face fast tokenizer keeps padding
settings as state, and counting while the generation thread pads a batch with the same object
races (the batch then fails to stack). The server counts with `await budget.acheck(...)`: in
one thread of its own (counts never overlap on the copy), so a maximum-size body being
tokenized does not hold up the event loop (health probes, other requests).

Whatever the tokenizer raises on a prompt (it refuses text that is not valid Unicode, for
one) is the request's fault: a RequestError (400), never a server error.
"""

from __future__ import annotations

import asyncio
import copy
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from cello.serve.schema import RequestError

log = logging.getLogger(__name__)


class PromptBudget:
    """Token counting for an in-process backend; a no-op for backends without a tokenizer."""

    def __init__(self, backend: Any) -> None:
        model = getattr(backend, "model", None)
        value = getattr(getattr(model, "config", None), "max_position_embeddings", None)
        tokenizer = getattr(backend, "tokenizer", None)
        self.limit = int(value) if isinstance(value, int) and value > 0 and tokenizer is not None else None
        self.tokenizer = copy.deepcopy(tokenizer) if self.limit is not None else None
        self._executor: ThreadPoolExecutor | None = None

    async def acheck(self, conversations: list[list[dict]], max_new_tokens: int) -> None:
        """`check` in the budget's own thread, so the event loop keeps answering meanwhile."""
        if self.limit is None:
            return
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cello-budget")
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self.check, conversations, max_new_tokens)

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    def tokens(self, conversation: list[dict]) -> int | None:
        """Tokens of `conversation` with the generation prompt (None: cannot tell)."""
        if self.tokenizer is None:
            return None
        enc = self.tokenizer.apply_chat_template(conversation, add_generation_prompt=True, tokenize=True)
        ids = enc if isinstance(enc, list) else enc["input_ids"]
        return len(ids)

    def check(self, conversations: list[list[dict]], max_new_tokens: int) -> None:
        """RequestError naming the first conversation whose prompt + max_new_tokens does not fit."""
        if self.limit is None:
            return
        for i, conv in enumerate(conversations):
            try:
                n = self.tokens(conv)
            except Exception as exc:  # the tokenizer refused this text: the request's fault
                log.info("puzzle %d: the tokenizer refused the prompt: %s: %s", i, type(exc).__name__, exc)
                msg = (f"puzzle {i}: the prompt cannot be tokenized ({type(exc).__name__}); "
                       "send text that is valid Unicode (UTF-8, no lone surrogates)")
                raise RequestError(msg) from None
            if n is not None and n + max_new_tokens > self.limit:
                msg = (
                    f"puzzle {i}: the prompt is {n} tokens and up to {max_new_tokens} more are generated, "
                    f"but the model holds {self.limit}; send fewer cells or genes, or a smaller max_new_tokens"
                )
                raise RequestError(msg)

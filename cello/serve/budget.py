"""Refuse prompts the model cannot hold, before they reach it.

A transformers model indexes its position embeddings with the sequence length: a prompt plus
completion longer than `max_position_embeddings` fails inside the model (a server error), or
silently degrades. The server counts the prompt's tokens with the model's own chat template
and answers 400 with the numbers instead. An upstream server (vLLM) checks this itself and
answers 400, which the server passes on.

Counting is cheap only for what can fit. Tokenizing a 3.6 MiB message takes seconds and a
GiB of memory, so a character bound comes first: no token of the vocabulary decodes to more
than `max_token_chars` characters, and Unicode normalisation merges at most 3 characters into
one (NFC), so a prompt of more than 3 x max_token_chars x limit characters cannot fit and is
refused without tokenizing. What passes is counted exactly.

Counts run in a small pool of threads, each with its own copy of the tokenizer (a Hugging Face
fast tokenizer keeps padding settings as state: counting while the generation thread pads a
batch with the same object races), so a large prompt being counted neither holds up the event
loop (health probes) nor the counts of other requests.

Whatever the tokenizer raises on a prompt (it refuses text that is not valid Unicode, for
one) is the request's fault: a RequestError (400), never a server error.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from cello.serve.errors import RequestError

log = logging.getLogger(__name__)

NFC_MERGE = 3  # the most characters Unicode normalisation (NFC) composes into one
COUNT_THREADS = 4


class PromptBudget:
    """Token counting for an in-process backend; a no-op for backends without a tokenizer."""

    def __init__(self, backend: Any) -> None:
        model = getattr(backend, "model", None)
        value = getattr(getattr(model, "config", None), "max_position_embeddings", None)
        tokenizer = getattr(backend, "tokenizer", None)
        self.limit = int(value) if isinstance(value, int) and value > 0 and tokenizer is not None else None
        self.tokenizer = copy.deepcopy(tokenizer) if self.limit is not None else None
        vocab = getattr(self.tokenizer, "get_vocab", None)
        # None: a tokenizer without a vocabulary to read (no character bound, every prompt is counted)
        self.max_token_chars = max((len(t) for t in vocab()), default=None) if vocab else None
        self._local = threading.local()
        self._executor: ThreadPoolExecutor | None = None

    async def acheck(self, conversations: list[list[dict]], max_new_tokens: int) -> None:
        """`check` in the budget's thread pool, so the event loop and other counts go on meanwhile."""
        if self.limit is None:
            return
        self.check_length(conversations, max_new_tokens)
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=COUNT_THREADS, thread_name_prefix="cello-budget")
        loop = asyncio.get_running_loop()
        # one job per conversation: a cancelled request (its client left) drops the counts not yet started
        jobs = [loop.run_in_executor(self._executor, self._check_one, i, conv, max_new_tokens)
                for i, conv in enumerate(conversations)]
        try:
            await asyncio.gather(*jobs)
        finally:
            for job in jobs:
                job.cancel()

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    def check_length(self, conversations: list[list[dict]], max_new_tokens: int) -> None:
        """RequestError for the first conversation too long to fit whatever its tokens (no tokenizing)."""
        if self.limit is None or not self.max_token_chars:
            return
        room = self.limit - max_new_tokens
        for i, conv in enumerate(conversations):
            chars = sum(len(m["content"]) for m in conv)
            at_least = chars // (NFC_MERGE * self.max_token_chars)
            if at_least > room:
                msg = (f"puzzle {i}: the prompt is {chars} characters, at least {at_least} tokens, and up to "
                       f"{max_new_tokens} more are generated, but the model holds {self.limit}; send fewer cells "
                       "or genes, or a smaller max_new_tokens")
                raise RequestError(msg)

    def _tokenizer(self):
        """This thread's copy of the tokenizer (tokenizers keep state; copies never race)."""
        mine = getattr(self._local, "tokenizer", None)
        if mine is None:
            mine = self._local.tokenizer = copy.deepcopy(self.tokenizer)
        return mine

    def tokens(self, conversation: list[dict]) -> int | None:
        """Tokens of `conversation` with the generation prompt (None: cannot tell)."""
        if self.tokenizer is None:
            return None
        enc = self._tokenizer().apply_chat_template(conversation, add_generation_prompt=True, tokenize=True)
        ids = enc if isinstance(enc, list) else enc["input_ids"]
        return len(ids)

    def check(self, conversations: list[list[dict]], max_new_tokens: int) -> None:
        """RequestError naming the first conversation whose prompt + max_new_tokens does not fit."""
        if self.limit is None:
            return
        self.check_length(conversations, max_new_tokens)
        for i, conv in enumerate(conversations):
            self._check_one(i, conv, max_new_tokens)

    def _check_one(self, i: int, conv: list[dict], max_new_tokens: int) -> None:
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

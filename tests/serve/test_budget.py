"""The prompt budget alone (no server): counting runs off the event loop, and whatever the
tokenizer raises on a prompt is the request's fault (RequestError, a 400), not a server error."""

from __future__ import annotations

import asyncio
import threading
from types import SimpleNamespace

import pytest

from cello.serve.budget import PromptBudget
from cello.serve.schema import RequestError

CONV = [{"role": "user", "content": "Cell 1: CD3E"}]


class BlockingTokenizer:
    """Counts 10 tokens, but first waits (at most 5 s) until the test releases it."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.release = threading.Event()
        self.timed_out = False

    def __deepcopy__(self, memo):  # PromptBudget copies its tokenizer; keep this one
        return self

    def apply_chat_template(self, conversation, **kwargs):
        self.started.set()
        self.timed_out = not self.release.wait(5)
        return list(range(10))


class RefusingTokenizer:
    """Refuses a conversation holding a lone surrogate, as a Hugging Face fast tokenizer does."""

    def apply_chat_template(self, conversation, **kwargs):
        if any("\ud800" in m["content"] for m in conversation):
            msg = "TextEncodeInput must be Union[TextInputSequence, Tuple[InputSequence, InputSequence]]"
            raise TypeError(msg)
        return [0, 1, 2]


def backend(tokenizer, limit: int = 32) -> SimpleNamespace:
    return SimpleNamespace(
        tokenizer=tokenizer, model=SimpleNamespace(config=SimpleNamespace(max_position_embeddings=limit))
    )


def test_counting_leaves_the_event_loop_free():
    tok = BlockingTokenizer()
    budget = PromptBudget(backend(tok))

    async def main() -> None:
        check = asyncio.create_task(budget.acheck([CONV], 4))
        # While the tokenizer is busy, this coroutine still runs (on the loop) and releases it.
        # Counting on the loop would block here until the tokenizer's 5 s wait ran out.
        await asyncio.wait_for(asyncio.to_thread(tok.started.wait, 5), 6)
        tok.release.set()
        await check

    try:
        asyncio.run(main())
    finally:
        budget.close()
    assert tok.started.is_set() and not tok.timed_out


def test_over_budget_is_a_request_error():
    tok = BlockingTokenizer()
    tok.release.set()
    budget = PromptBudget(backend(tok, limit=12))
    budget.check([CONV], 2)  # 10 + 2 fits
    with pytest.raises(RequestError, match="puzzle 0: the prompt is 10 tokens"):
        asyncio.run(budget.acheck([CONV], 3))
    budget.close()


def test_a_tokenizer_error_is_a_request_error():
    budget = PromptBudget(backend(RefusingTokenizer()))
    with pytest.raises(RequestError, match=r"puzzle 1: the prompt cannot be tokenized \(TypeError\)"):
        budget.check([CONV, [{"role": "user", "content": "\ud800"}]], 4)


def test_no_tokenizer_no_check():
    budget = PromptBudget(SimpleNamespace())
    assert budget.limit is None and budget.tokens(CONV) is None
    asyncio.run(budget.acheck([CONV], 10**6))


def test_the_real_tokenizer_refusing_a_surrogate_is_a_request_error(model_dir):
    from transformers import AutoTokenizer

    budget = PromptBudget(backend(AutoTokenizer.from_pretrained(model_dir), limit=4096))
    assert budget.tokens(CONV) > 0
    with pytest.raises(RequestError, match="cannot be tokenized"):
        budget.check(
            [[{"role": "user", "content": "CD3E \ud800"}]], 4
        )  # schema checks refuse it first; this is the backstop


class VocabTokenizer(BlockingTokenizer):
    """A vocabulary whose longest token has 4 characters; counting blocks until released."""

    def get_vocab(self):
        return {"a": 0, "abcd": 1, " ": 2}


def test_a_prompt_too_long_by_its_characters_is_refused_without_tokenizing():
    """A prompt of more than 3 x (longest token) x limit characters cannot fit: refused at once
    (the tokenizer, which would block, is never called)."""
    tok = VocabTokenizer()
    budget = PromptBudget(backend(tok, limit=100))
    huge = [{"role": "user", "content": "a " * 1000}]  # 2000 chars >= 2000 // 12 = 166 tokens > 100
    with pytest.raises(RequestError, match="at least 166 tokens"):
        asyncio.run(budget.acheck([huge], 4))
    assert not tok.started.is_set()
    budget.close()


def test_counts_run_in_parallel():
    """One slow count does not hold up another: two counts are in the tokenizer at once."""
    inside = threading.Barrier(2, timeout=5)

    class Meeting:
        def __deepcopy__(self, memo):
            return self

        def apply_chat_template(self, conversation, **kwargs):
            inside.wait()  # breaks (BrokenBarrierError) unless a second count arrives meanwhile
            return [0, 1]

    budget = PromptBudget(backend(Meeting(), limit=100))

    async def main() -> None:
        await asyncio.gather(budget.acheck([CONV], 4), budget.acheck([CONV], 4))

    try:
        asyncio.run(main())
    finally:
        budget.close()

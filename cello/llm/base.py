"""The one generation interface every backend implements (transformers, OpenAI HTTP, vLLM).

A conversation is a list of chat messages `{"role": ..., "content": ...}` (system + user for a
puzzle). `generate` always returns one list of `params.n` completions per conversation, in the
input order, so callers never branch on n:

    with make_backend("models/tiny") as backend:
        texts = backend.generate([messages], SamplingParams(max_new_tokens=64))[0][0]

`generate_full` returns `Generation` objects with token counts too (for distillation and cost
reports); `backend.usage` sums them over the backend's life.
"""

from __future__ import annotations

import abc
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from cello.config import SamplingParams
from cello.errors import InputError

Conversation = list[dict]
Progress = Callable[[int], None]  # called with the number of conversations just finished
OnText = Callable[[int, str], None]  # called with (conversation index, text that follows what came before)


@dataclass
class Generation:
    """The completions for one conversation."""

    texts: list[str]
    prompt_tokens: int | None = None  # None: the backend could not tell
    completion_tokens: int | None = None  # summed over the n completions
    finish_reasons: list[str | None] = field(default_factory=list)  # "stop", "length", ... per text


@dataclass
class Usage:
    """Totals over a backend's life (thread-safe updates through `Backend._record`)."""

    requests: int = 0
    conversations: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0


def check_conversations(conversations: Sequence[Conversation]) -> list[Conversation]:
    """Reject shapes every backend would choke on, naming the conversation and message."""
    if isinstance(conversations, dict) or (conversations and isinstance(conversations[0], dict)):
        msg = ("generate() takes a list of conversations (each a list of messages); "
               "wrap a single conversation in a list.")
        raise InputError(msg)
    out = []
    for i, conv in enumerate(conversations):
        if not conv:
            msg = f"conversation {i} is empty; give at least one message."
            raise InputError(msg)
        for j, m in enumerate(conv):
            if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
                msg = f"conversation {i}, message {j}: expected {{'role': str, 'content': str}}, got {m!r:.120}."
                raise InputError(msg)
        out.append([{"role": m["role"], "content": m["content"]} for m in conv])
    return out


def cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """Cut `text` before the first stop string (OpenAI semantics); return (text, whether cut)."""
    cuts = [i for i in (text.find(s) for s in stop if s) if i >= 0]
    return (text[: min(cuts)], True) if cuts else (text, False)


class Backend(abc.ABC):
    """Generates completions for chat conversations. Use as a context manager to release resources."""

    name: str = "backend"
    abortable: bool = False  # generate_full(..., abort=) can stop conversations mid-generation
    streams: bool = False  # generate_full(..., on_text=) hands out text as it is generated

    def __init__(self) -> None:
        self.usage = Usage()
        self._usage_lock = threading.Lock()

    def generate(
        self, conversations: Sequence[Conversation], params: SamplingParams | None = None, *,
        progress: Progress | None = None,
    ) -> list[list[str]]:
        """One list of `params.n` completions per conversation, in input order."""
        return [g.texts for g in self.generate_full(conversations, params, progress=progress)]

    def generate_full(
        self, conversations: Sequence[Conversation], params: SamplingParams | None = None, *,
        progress: Progress | None = None, abort: Callable[[int], bool] | None = None, on_text: OnText | None = None,
    ) -> list[Generation]:
        """Like `generate`, with token counts and finish reasons. `abort(i)` true: conversation i is
        no longer wanted; an `abortable` backend stops generating it at the next step (what it
        returns for it is then cut short). A `streams` backend calls `on_text(i, piece)` (in the
        generating thread) as the first completion of conversation i grows; the pieces join to its
        returned text. Other backends ignore `on_text`: the caller sends the whole text at the end."""
        params = params or SamplingParams()
        convs = check_conversations(conversations)
        if not convs:
            return []
        hooks: dict = {}
        if abort and self.abortable:
            hooks["abort"] = abort
        if on_text and self.streams:
            hooks["on_text"] = on_text
        out = self._generate(convs, params, progress, **hooks)
        with self._usage_lock:
            self.usage.conversations += len(out)
            self.usage.prompt_tokens += sum(g.prompt_tokens or 0 for g in out)
            self.usage.completion_tokens += sum(g.completion_tokens or 0 for g in out)
        return out

    @abc.abstractmethod
    def _generate(self, conversations: list[Conversation], params: SamplingParams,
                  progress: Progress | None) -> list[Generation]:
        """Generate for validated, non-empty conversations; one Generation each, in order."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release clients, pools or GPU memory."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

"""Refuse prompts the model cannot hold, before they reach it.

A transformers model indexes its position embeddings with the sequence length: a prompt plus
completion longer than `max_position_embeddings` fails inside the model (a server error), or
silently degrades. The server counts the prompt's tokens with the model's own chat template
and answers 400 with the numbers instead. An upstream server (vLLM) checks this itself and
answers 400, which the server passes on.
"""

from __future__ import annotations

from typing import Any

from cello.serve.schema import RequestError


def context_length(backend: Any) -> int | None:
    """The model's context window when the backend runs in this process, else None."""
    model = getattr(backend, "model", None)
    config = getattr(model, "config", None)
    value = getattr(config, "max_position_embeddings", None)
    return int(value) if isinstance(value, int) and value > 0 else None


def prompt_tokens(backend: Any, conversation: list[dict]) -> int | None:
    """Tokens of `conversation` with the generation prompt, or None when the backend has no tokenizer."""
    tokenizer = getattr(backend, "tokenizer", None)
    if tokenizer is None:
        return None
    enc = tokenizer.apply_chat_template(conversation, add_generation_prompt=True, tokenize=True)
    ids = enc["input_ids"] if not isinstance(enc, list) else enc
    return len(ids)


def check_prompt_budget(backend: Any, conversations: list[list[dict]], max_new_tokens: int) -> None:
    """RequestError naming the first conversation whose prompt + max_new_tokens does not fit."""
    limit = context_length(backend)
    if limit is None:
        return
    for i, conv in enumerate(conversations):
        n = prompt_tokens(backend, conv)
        if n is not None and n + max_new_tokens > limit:
            msg = (
                f"puzzle {i}: the prompt is {n} tokens and up to {max_new_tokens} more are generated, "
                f"but the model holds {limit}; send fewer cells or genes, or a smaller max_new_tokens"
            )
            raise RequestError(msg)

"""OpenAI-style routes for the in-process model, so standard clients (the openai SDK, LangChain,
chat UIs, curl) can talk to a Cello model with free-form chat:

    POST /openai/v1/chat/completions   {"model": "cello", "messages": [...], "max_tokens": 256}
    GET  /openai/v1/models             GET /openai/v1/models/cello

KServe registers its own /openai routes only with vLLM installed; these are Cello's, added
to the server's FastAPI app before it starts. They share the model's batcher (so chat and
puzzle requests are batched together), its limits and its timeout.

No field is silently ignored: Cello applies model, messages, max_tokens /
max_completion_tokens, temperature, top_p, stop, seed (a seeded request is generated alone,
so it is reproducible whatever else is queued), stream and stream_options.include_usage.
Fields it cannot apply (tools, response_format other than text, logprobs, penalties,
logit_bias, ...) are accepted only at their no-op value and otherwise answered 400 naming the
field; identifiers that do not change the output (user, metadata, service_tier) are accepted;
any other field is a 400. Errors come in OpenAI's shape, on unknown /openai routes too.

`stream: true` answers server-sent events as OpenAI does (`data: {chunk}` lines: the role first,
then `delta.content` pieces, a chunk with the finish reason, the usage chunk when
`stream_options.include_usage`, `data: [DONE]`). With the in-process transformers backend the
text streams token by token (the request is generated in a batch of its own; a client that
leaves mid-stream stops the generation at the next step, cello.serve.middleware); an upstream
backend answers whole completions, so its text arrives in one chunk. The status line is sent
with the first piece of text: errors until then (limits, queue full, timeout) keep their
status; a failure after it is a last `data: {"error": ...}` event, which the SDK raises.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any, Literal

from fastapi import Request
from fastapi.responses import StreamingResponse
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from cello.serve.errors import NotFound, RequestError, Unavailable, error_body, status_of
from cello.serve.offload import off_loop
from cello.serve.schema import describe, parse_json, utf8

MAX_MESSAGES = 64
MAX_SEED = 2**63 - 1  # torch, vLLM and numpy seeds are 64-bit


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    type: Literal["text"]
    text: str

    @field_validator("text")
    @classmethod
    def _utf8(cls, value: str) -> str:
        return utf8(value, what="text")


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    role: Literal["system", "user", "assistant"]
    content: str | list[TextPart]

    @field_validator("content")
    @classmethod
    def _utf8(cls, value: str | list[TextPart]) -> str | list[TextPart]:
        return utf8(value, what="content") if isinstance(value, str) else value

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


# OpenAI fields Cello cannot apply: accepted only at these no-op values, else a 400 naming the field.
NO_OP: dict[str, tuple] = {
    "tools": (None, []), "tool_choice": (None, "none"), "functions": (None, []), "function_call": (None, "none"),
    "parallel_tool_calls": (None, True, False), "response_format": (None, {"type": "text"}),
    "logprobs": (None, False), "top_logprobs": (None, 0), "frequency_penalty": (None, 0), "presence_penalty": (None, 0),
    "logit_bias": (None, {}), "audio": (None,), "modalities": (None, ["text"]), "prediction": (None,),
    "store": (None, False), "reasoning_effort": (None,), "web_search_options": (None,),
}
# Fields that identify or route a request but do not change its output: accepted.
IDENTIFIERS = {"user", "metadata", "service_tier", "safety_identifier", "prompt_cache_key"}


def _same(a: Any, b: Any) -> bool:
    """JSON equality without Python's True == 1 == 1.0 (0 and 0.0 are the same number)."""
    if isinstance(a, bool) or isinstance(b, bool) or a is None or b is None:
        return a is b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    return type(a) is type(b) and a == b


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    include_usage: bool = False


class ChatRequest(BaseModel):
    """The subset of OpenAI's chat completion request that Cello serves (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    model: str = Field(..., max_length=256)
    messages: list[Message] = Field(..., min_length=1, max_length=MAX_MESSAGES)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    n: int = Field(1, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    stream: bool = False
    stream_options: StreamOptions | None = None

    @model_validator(mode="before")
    @classmethod
    def _supported(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        for key, value in data.items():
            if key in NO_OP:
                if not any(_same(value, ok) for ok in NO_OP[key]):
                    msg = (f"{key}={json.dumps(value)[:60]} is not supported by this server (it would be ignored); "
                           f"leave '{key}' out")
                    raise ValueError(msg)
            elif key not in cls.model_fields and key not in IDENTIFIERS:
                msg = f"unknown field {str(key)[:40]!r}; this server applies: {', '.join(cls.model_fields)}"
                raise ValueError(msg)
        return {k: v for k, v in data.items() if k in cls.model_fields}

    @model_validator(mode="after")
    def _check(self, info: ValidationInfo) -> ChatRequest:
        limit = (info.context or {}).get("max_new_tokens")
        if self.stream_options is not None and not self.stream:
            msg = "stream_options is only allowed with stream=true"
            raise ValueError(msg)
        if self.n != 1:
            msg = f"n={self.n} is not supported; send n=1 (or several requests)"
            raise ValueError(msg)
        stops = [self.stop] if isinstance(self.stop, str) else (self.stop or [])
        if len(stops) > 4 or any(not s or len(s) > 64 for s in stops):
            msg = "stop takes at most 4 non-empty strings of at most 64 characters"
            raise ValueError(msg)
        for s in stops:
            utf8(s, what="stop")
        utf8(self.model, what="model")
        wanted = self.max_completion_tokens or self.max_tokens
        if limit is not None and wanted is not None and wanted > limit:
            msg = f"max_tokens={wanted}; the limit is {limit} (serve.max_new_tokens)"
            raise ValueError(msg)
        return self


def parse_chat(body: bytes, *, max_new_tokens: int) -> ChatRequest:
    data = parse_json(body)
    if not isinstance(data, dict):
        msg = f"the body must be a JSON object, got {type(data).__name__}"
        raise RequestError(msg)
    try:
        return ChatRequest.model_validate(data, context={"max_new_tokens": max_new_tokens})
    except ValidationError as exc:
        raise RequestError(describe(exc)) from None


def _chunk(base: dict, delta: dict, finish: str | None, usage: Any = ...) -> str:
    """One server-sent event of a streamed chat completion."""
    chunk = {**base, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
    if usage is not ...:
        chunk["usage"] = usage
    return f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"


class Chunks:
    """The server-sent events of one streamed chat completion: role, content pieces, finish, [usage], [DONE]."""

    def __init__(self, model_name: str, *, include_usage: bool) -> None:
        self.base = {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion.chunk",
                     "created": int(time.time()), "model": model_name}
        self.include_usage = include_usage
        self.none = None if include_usage else ...  # with include_usage every chunk has "usage": null but the last

    def role(self) -> str:
        return _chunk(self.base, {"role": "assistant", "content": ""}, None, self.none)

    def content(self, piece: str) -> str:
        return _chunk(self.base, {"content": piece}, None, self.none)

    def end(self, completion: dict) -> list[str]:
        """The finish reason, the usage (when asked for) and [DONE], from the finished completion."""
        events = [_chunk(self.base, {}, completion["choices"][0]["finish_reason"], self.none)]
        if self.include_usage:
            events.append(f"data: {json.dumps({**self.base, 'choices': [], 'usage': completion['usage']})}\n\n")
        events.append("data: [DONE]\n\n")
        return events


def sse_events(completion: dict, *, include_usage: bool) -> list[str]:
    """A finished chat completion as OpenAI's stream, its text in one content chunk."""
    chunks = Chunks(completion["model"], include_usage=include_usage)
    chunks.base.update(id=completion["id"], created=completion["created"])
    text = completion["choices"][0]["message"]["content"]
    return [chunks.role(), *([chunks.content(text)] if text else []), *chunks.end(completion)]


def completion_body(model_name: str, gen: Any) -> dict:
    """An OpenAI chat.completion for one Generation."""
    prompt_tokens = gen.prompt_tokens or 0
    completion_tokens = gen.completion_tokens or 0
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model_name,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": gen.texts[0] if gen.texts else ""},
            "logprobs": None,
            "finish_reason": (gen.finish_reasons or ["stop"])[0] or "stop",
        }],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
    }


async def stream_chat(model: Any, conversation: list[dict], params: Any, *, include_usage: bool) -> StreamingResponse:
    """Generate `conversation` alone, sending its text as the backend produces it (see the module docstring).

    Pieces arrive on a queue (the batcher calls `put_nowait` on the event loop); None marks the end
    of the generation, whose result (or error) is then read from its task. Cancelled (the client
    left): the generation task is cancelled, which withdraws it and aborts the running batch."""
    pieces: asyncio.Queue[str | None] = asyncio.Queue()
    task = asyncio.ensure_future(
        model.batcher.generate([conversation], params, timeout_s=model.cfg.timeout_s, on_text=pieces.put_nowait))
    task.add_done_callback(lambda _: pieces.put_nowait(None))
    try:
        first = await pieces.get()
        if first is None:
            task.result()  # an error before any text keeps its status
    except BaseException:
        task.cancel()
        raise
    chunks = Chunks(model.name, include_usage=include_usage)

    async def events():
        try:
            yield chunks.role()
            sent, piece = [], first
            while piece is not None:
                sent.append(piece)
                yield chunks.content(piece)
                piece = await pieces.get()
            try:
                (result,) = task.result()
            except Exception as exc:  # after the status line: OpenAI's error event
                yield f"data: {error_body('/openai/', status_of(exc)[0], str(exc)).decode()}\n\n"
                return
            completion = completion_body(model.name, result.generation)
            text, streamed = completion["choices"][0]["message"]["content"], "".join(sent)
            if len(text) > len(streamed) and text.startswith(streamed):  # a backend that sent part of it
                yield chunks.content(text[len(streamed) :])
            for event in chunks.end(completion):
                yield event
        finally:
            task.cancel()

    return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


def register_openai_routes(app: Any, model: Any) -> None:
    """Add /openai/v1/chat/completions and /openai/v1/models[/{id}] for `model` (a CelloModel) to `app`."""
    created = int(time.time())

    def card() -> dict:
        return {"id": model.name, "object": "model", "created": created, "owned_by": "cello"}

    async def list_models() -> dict:
        return {"object": "list", "data": [card()]}

    async def get_model(model_id: str) -> dict:
        if model_id != model.name:
            msg = f"model {model_id[:80]!r} not found; this server serves {model.name!r}"
            raise NotFound(msg)
        return card()

    async def chat_completions(request: Request):
        req = await off_loop(parse_chat, await request.body(), max_new_tokens=model.cfg.max_new_tokens)
        if req.model != model.name:
            msg = f"model {req.model[:80]!r} not found; this server serves {model.name!r}"
            raise NotFound(msg)
        if not await model.healthy():
            msg = f"model {model.name!r} is not ready (loading, or the server is shutting down); retry shortly"
            raise Unavailable(msg)
        conversation = [{"role": m.role, "content": m.text()} for m in req.messages]
        update: dict[str, Any] = {"n": 1, "seed": req.seed}  # unseeded unless the request sets one
        if req.max_completion_tokens or req.max_tokens:
            update["max_new_tokens"] = req.max_completion_tokens or req.max_tokens
        if req.temperature is not None:
            update["temperature"] = req.temperature
        if req.top_p is not None:
            update["top_p"] = req.top_p
        if req.stop is not None:
            update["stop"] = [req.stop] if isinstance(req.stop, str) else list(req.stop)
        params = model.sampling.model_copy(update=update)
        try:
            await model.budget.acheck([conversation], params.max_new_tokens)
        except RequestError as exc:
            raise RequestError(str(exc).replace("puzzle 0: ", "")) from None
        usage = bool(req.stream_options and req.stream_options.include_usage)
        if req.stream and getattr(model.backend, "streams", False):
            return await stream_chat(model, conversation, params, include_usage=usage)
        (result,) = await model.batcher.generate([conversation], params, timeout_s=model.cfg.timeout_s)
        completion = completion_body(model.name, result.generation)
        if not req.stream:
            return completion
        return StreamingResponse(iter(sse_events(completion, include_usage=usage)), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})

    app.add_api_route("/openai/v1/models", list_models, methods=["GET"])
    app.add_api_route("/openai/v1/models/{model_id}", get_model, methods=["GET"])
    app.add_api_route("/openai/v1/chat/completions", chat_completions, methods=["POST"], response_model=None)

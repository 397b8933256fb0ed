"""OpenAI-style routes for the in-process model, so standard clients (openai, LangChain, curl)
can talk to a Cello model with free-form chat:

    POST /openai/v1/chat/completions   {"model": "cello", "messages": [...], "max_tokens": 256}
    GET  /openai/v1/models

KServe registers its own /openai routes only with vLLM installed; these are Cello's, added
to the server's FastAPI app before it starts. They share the model's batcher (so chat and
puzzle requests are batched together), its limits and its timeout. Not supported, with a 400
that says so: streaming, n > 1, tools. Unknown fields are ignored, as OpenAI clients send
many optional ones.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from fastapi import Request
from fastapi.responses import JSONResponse
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from cello.serve.schema import RequestError, describe, parse_json, utf8

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


class ChatRequest(BaseModel):
    """The subset of OpenAI's chat completion request that Cello serves."""

    model_config = ConfigDict(extra="ignore", strict=True)

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

    @model_validator(mode="after")
    def _check(self, info: ValidationInfo) -> ChatRequest:
        limit = (info.context or {}).get("max_new_tokens")
        if self.stream:
            msg = "stream=true is not supported; send stream=false"
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


def _error(status: int, message: str, code: str | int | None = None) -> JSONResponse:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return JSONResponse({"error": {"message": message, "type": kind, "code": code or status}}, status_code=status)


def register_openai_routes(app: Any, model: Any) -> None:
    """Add /openai/v1/chat/completions and /openai/v1/models for `model` (a CelloModel) to `app`."""
    created = int(time.time())

    async def list_models() -> dict:
        return {"object": "list", "data": [{"id": model.name, "object": "model", "created": created, "owned_by": "cello"}]}

    async def chat_completions(request: Request):
        try:
            req = parse_chat(await request.body(), max_new_tokens=model.cfg.max_new_tokens)
        except RequestError as exc:
            return _error(400, str(exc))
        if req.model != model.name:
            return _error(404, f"model {req.model[:80]!r} not found; this server serves {model.name!r}", "model_not_found")
        if not await model.healthy():
            return _error(503, f"model {model.name!r} is not ready yet; retry shortly")
        conversation = [{"role": m.role, "content": m.text()} for m in req.messages]
        update: dict[str, Any] = {"n": 1}
        if req.max_completion_tokens or req.max_tokens:
            update["max_new_tokens"] = req.max_completion_tokens or req.max_tokens
        if req.temperature is not None:
            update["temperature"] = req.temperature
        if req.top_p is not None:
            update["top_p"] = req.top_p
        if req.seed is not None:
            update["seed"] = req.seed
        if req.stop is not None:
            update["stop"] = [req.stop] if isinstance(req.stop, str) else list(req.stop)
        params = model.sampling.model_copy(update=update)
        try:
            await model.budget.acheck([conversation], params.max_new_tokens)
        except RequestError as exc:
            return _error(400, str(exc).replace("puzzle 0: ", ""))
        (result,) = await model.batcher.generate([conversation], params, timeout_s=model.cfg.timeout_s)
        gen = result.generation
        prompt_tokens = gen.prompt_tokens or 0
        completion_tokens = gen.completion_tokens or 0
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model.name,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": gen.texts[0] if gen.texts else ""},
                "finish_reason": (gen.finish_reasons or ["stop"])[0] or "stop",
            }],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        }

    app.add_api_route("/openai/v1/models", list_models, methods=["GET"])
    app.add_api_route("/openai/v1/chat/completions", chat_completions, methods=["POST"], response_model=None)

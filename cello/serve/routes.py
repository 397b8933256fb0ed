"""Cello's own v1/v2 inference routes, registered before KServe's so they take precedence.

KServe's generic handlers trust parts of the request that Cello must not: a v2 request with
a non-JSON content type is read as the binary tensor extension and answers 400 with a
confusing message, a malformed `inference-header-content-length` answers 500, and
`/versions/...` routes answer 501. These routes read the body as JSON whatever its content
type, refuse the binary extension with a clear 400, and then call the model exactly as
KServe does (`model(request)`: preprocess -> predict -> postprocess, timed into KServe's
histograms). A GET on those routes is 405 (KServe's `/v1/models/{name}` route would read
"cello:predict" as a model name and answer 404). `GET /v2` is Cello's: it advertises no
extensions, as the model repository extension is not served. Health, model metadata and
/metrics stay KServe's. Errors are raised as cello.serve.errors types (one status table).
"""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError

from cello.serve.errors import MethodNotAllowed, NotFound, RequestError, Unavailable
from cello.serve.offload import off_loop
from cello.serve.schema import describe, parse_json


def register_inference_routes(app: Any, model: Any) -> None:
    """v1 :predict, v2 /infer for `model` (a CelloModel), server metadata, and clear 404/405s."""
    from kserve.protocol.infer_type import InferRequest
    from kserve.protocol.rest.v2_datamodels import InferenceRequest

    def read_v2(body: bytes, model_name: str) -> InferRequest:
        """The body as a v2 InferRequest (in the parse pool, cello.serve.offload)."""
        data = parse_json(body)
        if not isinstance(data, dict):
            msg = f"the body must be a JSON object with 'inputs', got {type(data).__name__}"
            raise RequestError(msg)
        try:
            return InferRequest.from_inference_request(InferenceRequest.model_validate(data), model_name)
        except ValidationError as exc:
            raise RequestError("invalid v2 request: " + describe(exc)) from None

    async def ready(model_name: str) -> None:
        if model_name != model.name:
            msg = f"model {model_name[:80]!r} not found; this server serves {model.name!r}"
            raise NotFound(msg)
        if not await model.healthy():
            msg = f"model {model.name!r} is not ready (loading, or the server is shutting down); retry shortly"
            raise Unavailable(msg)

    async def v1_predict(model_name: str, request: Request) -> Response:
        await ready(model_name)
        body = await request.body()
        response, _ = await model(body, headers=dict(request.headers))
        return JSONResponse(response)

    async def v2_infer(model_name: str, request: Request) -> Response:
        await ready(model_name)
        if "inference-header-content-length" in request.headers:
            msg = ("the binary tensor extension is not supported; send the request as JSON "
                   "(BYTES input 'puzzles', one puzzle JSON string per element)")
            raise RequestError(msg)
        infer_request = await off_loop(read_v2, await request.body(), model_name)
        response, _ = await model(infer_request, headers=dict(request.headers))
        body, _ = response.to_rest()
        return JSONResponse(body)

    async def post_only(request: Request) -> Response:
        msg = f"{request.method} {request.url.path[:100]}: this route takes POST with a JSON body"
        raise MethodNotAllowed(msg, allow="POST")

    async def not_served(request: Request) -> Response:
        msg = (f"{request.url.path[:100]} is not served: Cello has no model versions and no explainer; "
               f"use /v1/models/{model.name}:predict or /v2/models/{model.name}/infer")
        raise NotFound(msg)

    async def server_metadata() -> dict:
        """v2 server metadata; no extensions (the model repository extension is blocked)."""
        from importlib.metadata import version

        return {"name": "kserve", "version": version("kserve"), "extensions": []}

    other = ["GET", "PUT", "DELETE", "PATCH"]
    app.add_api_route("/v2", server_metadata, methods=["GET"])
    for path, handler in (("/v1/models/{model_name}:predict", v1_predict), ("/v2/models/{model_name}/infer", v2_infer)):
        app.add_api_route(path, handler, methods=["POST"], response_model=None)
        app.add_api_route(path, post_only, methods=other, response_model=None)
    app.add_api_route("/v1/models/{model_name}:explain", not_served, methods=["POST"], response_model=None)
    for path in (
        "/v2/models/{model_name}/versions/{version}",
        "/v2/models/{model_name}/versions/{version}/{rest:path}",
    ):
        app.add_api_route(path, not_served, methods=["GET", "POST"], response_model=None)

"""Cello's own v1/v2 inference routes, registered before KServe's so they take precedence.

KServe's generic handlers trust parts of the request that Cello must not: a v2 request with
a non-JSON content type is read as the binary tensor extension and answers 400 with a
confusing message, a malformed `inference-header-content-length` answers 500, and
`/versions/...` routes answer 501. These routes read the body as JSON whatever its content
type, refuse the binary extension with a clear 400, and then call the model exactly as
KServe does (`model(request)`: preprocess -> predict -> postprocess, timed into KServe's
histograms). Health, metadata and /metrics stay KServe's.
"""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError

from cello.serve.schema import RequestError, describe, parse_json


def _error(status: int, message: str) -> Response:
    return JSONResponse({"error": message}, status_code=status)


def register_inference_routes(app: Any, model: Any) -> None:
    """v1 :predict, v2 /infer for `model` (a CelloModel), plus clear 404s for what is not served."""
    from kserve.errors import ModelNotFound, ModelNotReady
    from kserve.protocol.infer_type import InferRequest
    from kserve.protocol.rest.v2_datamodels import InferenceRequest

    async def ready(model_name: str) -> None:
        if model_name != model.name:
            raise ModelNotFound(model_name)
        if not await model.healthy():
            raise ModelNotReady(model_name)

    async def v1_predict(model_name: str, request: Request) -> Response:
        await ready(model_name)
        body = await request.body()
        response, _ = await model(body, headers=dict(request.headers))
        return JSONResponse(response)

    async def v2_infer(model_name: str, request: Request) -> Response:
        await ready(model_name)
        if "inference-header-content-length" in request.headers:
            return _error(400, "the binary tensor extension is not supported; send the request as JSON "
                               "(BYTES input 'puzzles', one puzzle JSON string per element)")
        try:
            data = parse_json(await request.body())
        except RequestError as exc:
            return _error(400, str(exc))
        if not isinstance(data, dict):
            return _error(400, f"the body must be a JSON object with 'inputs', got {type(data).__name__}")
        try:
            infer_request = InferRequest.from_inference_request(InferenceRequest.model_validate(data), model_name)
        except ValidationError as exc:
            return _error(400, "invalid v2 request: " + describe(exc))
        response, _ = await model(infer_request, headers=dict(request.headers))
        body, _ = response.to_rest()
        return JSONResponse(body)

    async def not_served(request: Request) -> Response:
        return _error(404, f"{request.url.path} is not served: Cello has no model versions and no explainer; "
                           f"use /v1/models/{model.name}:predict or /v2/models/{model.name}/infer")

    app.add_api_route("/v1/models/{model_name}:predict", v1_predict, methods=["POST"], response_model=None)
    app.add_api_route("/v2/models/{model_name}/infer", v2_infer, methods=["POST"], response_model=None)
    app.add_api_route("/v1/models/{model_name}:explain", not_served, methods=["POST"], response_model=None)
    for path in ("/v2/models/{model_name}/versions/{version}", "/v2/models/{model_name}/versions/{version}/{rest:path}"):
        app.add_api_route(path, not_served, methods=["GET", "POST"], response_model=None)

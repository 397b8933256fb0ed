"""The KServe model: structured puzzles in, cell-type assignments out.

One request path, KServe's: preprocess (decode + validate the puzzles) -> predict (render the
prompts, generate through the batcher) -> postprocess (check the format, repair, build the
response). Each step is timed into KServe's Prometheus histograms.

Protocols (the same puzzle JSON in both; see cello.serve.schema):
- v1  POST /v1/models/NAME:predict
      {"instances": [puzzle, ...], "parameters": {"max_new_tokens": 256, "temperature": 0}}
      -> {"predictions": [result, ...]}
- v2  POST /v2/models/NAME/infer
      {"inputs": [{"name": "puzzles", "datatype": "BYTES", "shape": [k], "data": ["<puzzle JSON>", ...]}],
       "parameters": {...}}
      -> {"outputs": [{"name": "predictions", "datatype": "BYTES", "shape": [k], "data": ["<result JSON>", ...]}]}

A result: {"id", "assignment": {cell id: type}, "completion": raw text, "valid": the paper's
format rule, "reason": why not, "repaired": the assignment differs from what the model
wrote (repair by optimal matching), "finish_reason", "latency_ms"}.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from cello.config import SamplingParams, ServeConfig
from cello.data.prompt import PromptTemplate
from cello.serve.engine import Batcher, Result
from cello.serve.offload import off_loop
from cello.serve.schema import (
    Options,
    Puzzle,
    RequestError,
    parse_json,
    parse_options,
    parse_puzzles,
)

log = logging.getLogger(__name__)

V2_INPUT = "puzzles"
V2_OUTPUT = "predictions"
_V1_KEYS = {"instances", "parameters", "id"}


@dataclass
class Job:
    """One request on its way through preprocess -> predict -> postprocess."""

    protocol: str  # "v1" | "v2"
    puzzles: list[Puzzle]
    options: Options
    request_id: str | None = None
    results: list[Result] = field(default_factory=list)


def decode_v1(payload: Any, *, limits: ServeConfig) -> Job:
    """A v1 body (already JSON-decoded by KServe, or raw bytes for a non-JSON content type)."""
    if isinstance(payload, bytes | bytearray | str):
        payload = parse_json(payload)
    if not isinstance(payload, dict):
        msg = f"the body must be a JSON object {{\"instances\": [...]}}, got {type(payload).__name__}"
        raise RequestError(msg)
    unknown = sorted(set(payload) - _V1_KEYS)
    if unknown:
        msg = f"unknown field(s) {unknown[:5]}; a v1 request has 'instances' and optionally 'parameters'"
        raise RequestError(msg)
    if "instances" not in payload:
        msg = "missing 'instances': send {\"instances\": [puzzle, ...]}"
        raise RequestError(msg)
    puzzles = parse_puzzles(payload["instances"], limits=limits)
    request_id = payload.get("id") if isinstance(payload.get("id"), str) else None
    return Job("v1", puzzles, parse_options(payload.get("parameters"), limits=limits), request_id)


def decode_v2(request: Any, *, limits: ServeConfig) -> Job:
    """A v2 InferRequest whose single BYTES input holds one puzzle (JSON) per element."""
    inputs = list(request.inputs or [])
    if len(inputs) != 1:
        msg = f"expected 1 input tensor named {V2_INPUT!r} (BYTES, one puzzle JSON per element), got {len(inputs)}"
        raise RequestError(msg)
    tensor = inputs[0]
    if tensor.datatype != "BYTES":
        msg = f"input {tensor.name!r} has datatype {tensor.datatype}; send BYTES (one puzzle JSON per element)"
        raise RequestError(msg)
    data = tensor.data
    if not isinstance(data, list):
        msg = f"input {tensor.name!r}: 'data' must be a list of puzzle JSON strings"
        raise RequestError(msg)
    shape = list(tensor.shape or [])
    if shape != [len(data)]:
        msg = f"input {tensor.name!r}: shape {shape} does not match {len(data)} elements; use shape [{len(data)}]"
        raise RequestError(msg)
    if len(data) > limits.max_puzzles:
        msg = f"{len(data)} puzzles in one request; the limit is {limits.max_puzzles} (serve.max_puzzles)"
        raise RequestError(msg)
    items = []
    for i, element in enumerate(data):
        if isinstance(element, bytes | bytearray):
            element = element.decode("utf-8", errors="replace")
        if isinstance(element, str):
            element = parse_json(element, what=f"puzzle {i}: the element")
        items.append(element)
    wanted = [out.name for out in (request.request_outputs or [])]
    if any(name != V2_OUTPUT for name in wanted):
        msg = f"requested outputs {wanted[:5]}; this model has one output, {V2_OUTPUT!r}"
        raise RequestError(msg)
    params = request.parameters if isinstance(request.parameters, dict) else None
    return Job(
        "v2", parse_puzzles(items, limits=limits, where=tensor.name), parse_options(params, limits=limits), request.id
    )


def result_record(puzzle: Puzzle, result: Result, *, repair_answers: bool) -> dict[str, Any]:
    """Check, repair and describe one completion."""
    from cello.scoring import check_format, repair

    gen = result.generation
    text = gen.texts[0] if gen.texts else ""
    check = check_format(text, len(puzzle.candidates))
    if repair_answers:
        fixed = repair(text, puzzle.candidates)
        labels, repaired = fixed.labels, fixed.repaired
    else:
        labels, repaired = (check.labels if check.valid else None), False
    reasons = getattr(gen, "finish_reasons", None) or [None]
    return {
        "id": puzzle.id,
        "assignment": dict(zip(puzzle.cell_ids, labels, strict=True)) if labels is not None else None,
        "completion": text,
        "valid": check.valid,
        "reason": None if check.valid else check.message,
        "repaired": repaired,
        "finish_reason": reasons[0],
        "latency_ms": round(result.latency_s * 1000, 3),
    }


def _make_model_class():
    from kserve import Model

    class CelloModel(Model):
        """A Cello annotator behind KServe (in-process transformers, or an upstream OpenAI server)."""

        def __init__(
            self,
            name: str,
            *,
            backend_factory,
            cfg: ServeConfig,
            prompt: PromptTemplate,
            sampling: SamplingParams,
            workers: int = 1,
            health=None,
        ) -> None:
            super().__init__(name)
            self.cfg = cfg
            self.prompt = prompt
            self.sampling = sampling.model_copy(update={"n": 1})
            self._backend_factory = backend_factory
            self._workers = workers
            self._health = health  # async () -> bool, for an upstream; None: ready once loaded
            self.backend = None
            self.batcher: Batcher | None = None
            self.budget = None
            self.draining = False

        def load(self) -> bool:
            from cello.serve.budget import PromptBudget

            self.backend = self._backend_factory()
            self.budget = PromptBudget(self.backend)
            self.batcher = Batcher(
                self.backend,
                max_batch_size=self.cfg.max_batch_size,
                # An upstream server (vLLM) batches continuously itself: waiting here only adds latency.
                wait_s=0.0 if self._health is not None else self.cfg.batch_wait_ms / 1000,
                max_queue=self.cfg.max_queue,
                workers=self._workers,
            )
            self._warm_up()
            self.ready = True
            return self.ready

        def _warm_up(self) -> None:
            """One small puzzle through the tokenizer and the model before the server reports ready: the
            first real request would otherwise pay for lazy initialisation (about 10x its latency).
            Only in process: an upstream warms itself."""
            if self._health is not None:
                return
            start = time.perf_counter()
            conversation = self.prompt.messages("", [["CD3E", "CD4"], ["MS4A1", "CD79A"]], ["B cell", "T cell"])
            self.budget.check([conversation], 1)
            self.backend.generate_full([conversation], self.sampling.model_copy(update={"max_new_tokens": 2}))
            log.info("warm-up generation took %.2f s", time.perf_counter() - start)

        async def healthy(self) -> bool:
            if not self.ready or self.draining:
                return False
            return True if self._health is None else await self._health()

        def begin_drain(self, seconds: float) -> None:
            """SIGTERM (on the event loop): not ready, no new work; queued work given up after `seconds`."""
            self.draining = True
            log.warning("draining: new work gets 503; queued work runs for %.1f s more", seconds)
            if self.batcher is not None:
                self.batcher.drain(seconds)

        def get_input_types(self) -> list[dict]:
            """v2 model metadata: one BYTES input, one puzzle JSON per element."""
            return [{"name": V2_INPUT, "datatype": "BYTES", "shape": [-1]}]

        def get_output_types(self) -> list[dict]:
            """v2 model metadata: one BYTES output, one result JSON per puzzle."""
            return [{"name": V2_OUTPUT, "datatype": "BYTES", "shape": [-1]}]

        def params_for(self, options: Options) -> SamplingParams:
            update = {k: v for k, v in options.model_dump().items() if v is not None}
            return self.sampling.model_copy(update=update) if update else self.sampling

        async def preprocess(self, payload: Any, headers: dict[str, str] | None = None) -> Job:
            from kserve.protocol.infer_type import InferRequest

            # off the event loop (cello.serve.offload): a wave of large bodies must not hold up the loop
            decode = decode_v2 if isinstance(payload, InferRequest) else decode_v1
            return await off_loop(decode, payload, limits=self.cfg)

        async def predict(self, job: Job, headers: dict[str, str] | None = None) -> Job:
            conversations = [self.prompt.messages(p.context_for(self.prompt.profile), p.cell_genes, p.candidates)
                             for p in job.puzzles]
            params = self.params_for(job.options)
            await self.budget.acheck(conversations, params.max_new_tokens)
            assert self.batcher is not None
            job.results = await self.batcher.generate(conversations, params, timeout_s=self.cfg.timeout_s)
            return job

        async def postprocess(self, job: Job, headers: dict[str, str] | None = None, response_headers=None):
            records = [
                result_record(p, r, repair_answers=self.cfg.repair)
                for p, r in zip(job.puzzles, job.results, strict=True)
            ]
            if job.protocol == "v1":
                return {"predictions": records}
            from kserve.protocol.infer_type import InferOutput, InferResponse

            out = InferOutput(
                name=V2_OUTPUT,
                shape=[len(records)],
                datatype="BYTES",
                data=[json.dumps(r, ensure_ascii=False) for r in records],
            )
            return InferResponse(
                response_id=job.request_id or f"cello-{time.time_ns()}", model_name=self.name, infer_outputs=[out]
            )

        def stop(self) -> None:
            super().stop()
            if self.budget is not None:
                self.budget.close()
            if self.backend is not None and hasattr(self.backend, "close"):
                self.backend.close()

    return CelloModel


def make_model(name: str, **kwargs: Any):
    """A `kserve.Model` for Cello (kserve is imported here, not at module import)."""
    return _make_model_class()(name, **kwargs)

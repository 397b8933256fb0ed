"""Serving: a KServe model server for Cello annotators (`cello serve`).

- `cello.serve.schema`: the request schema (puzzles with limits) and its error messages.
- `cello.serve.engine`: the batcher (queue, batch, timeout) in front of a generation backend.
- `cello.serve.model`: the `kserve.Model` (preprocess -> predict -> postprocess, v1 and v2).
- `cello.serve.openai`: OpenAI-style chat routes for the in-process model.
- `cello.serve.middleware`: bearer-token auth, body size limit, Prometheus metrics.
- `cello.serve.server`: wiring and `serve()`, the entry point of `cello serve`.

    cello serve --model models/tiny --port 8080

Importing this package imports neither kserve nor torch.
"""

"""Serving: a KServe model server for Cello annotators (`cello serve`).

- `cello.serve.schema`: the request schema (puzzles with limits) and its error messages.
- `cello.serve.engine`: the batcher (queue, batch, timeout) in front of a generation backend.
- `cello.serve.model`: the `kserve.Model` (preprocess -> predict -> postprocess, v1 and v2).
- `cello.serve.budget`: prompts longer than the model holds are refused before generation.
- `cello.serve.offload`: request bodies parsed in a thread pool, so the event loop stays free.
- `cello.serve.routes`: Cello's v1/v2 routes (in front of KServe's generic ones).
- `cello.serve.openai`: OpenAI-style chat routes for the in-process model (streaming too).
- `cello.serve.errors`: every error a client sees, its HTTP status (one table), its JSON body.
- `cello.serve.auth`: the bearer token source (fails closed).
- `cello.serve.middleware`: auth, drain, body limits, disconnects, Prometheus metrics.
- `cello.serve.protocol`: uvicorn's HTTP protocol with a header read timeout.
- `cello.serve.server`: wiring, SIGTERM drain and `serve()`, the entry point of `cello serve`.

    cello serve --model models/tiny --port 8080

Importing this package imports neither kserve nor torch.
"""

"""`cello serve`: the KServe model server for a Cello model (in process, or in front of vLLM).

    cello serve --model models/tiny --port 8080
    cello serve --model http://127.0.0.1:8000/v1 --upstream-model cello     # transformer mode
    CELLO_SERVE_TOKEN=s3cret cello serve --model models/tiny                # bearer-token auth

KServe starts a transformer with `--model_name NAME --predictor_host HOST --http_port 8080`;
those spellings are accepted too.
"""

from __future__ import annotations

from pathlib import Path

import typer

from cello.commands._common import PARAMS, PROFILE, option
from cello.config import BackendConfig, ServeConfig, load_params, override


def command(
    model: str | None = typer.Option(
        None, "--model", "-m", help="Model directory, or upstream http(s)://HOST/openai/v1 (transformer mode)."
    ),
    port: int | None = option(ServeConfig, "port", "--port", "--http_port", "--http-port"),
    host: str | None = option(ServeConfig, "host", "--host"),
    model_name: str | None = option(ServeConfig, "model_name", "--model-name", "--model_name"),
    predictor_host: str | None = typer.Option(
        None, "--predictor-host", "--predictor_host",
        help="Upstream host as KServe passes it: HOST or http(s)://HOST (-> http(s)://HOST/openai/v1).",
    ),
    upstream_model: str | None = typer.Option(
        None, "--upstream-model", help="Model name the upstream serves (default: the first of GET /models)."
    ),
    max_new_tokens: int | None = option(ServeConfig, "max_new_tokens"),
    temperature: float | None = option(ServeConfig, "temperature"),
    timeout_s: float | None = option(ServeConfig, "timeout_s", "--timeout-s"),
    max_batch_size: int | None = option(ServeConfig, "max_batch_size"),
    max_puzzles: int | None = option(ServeConfig, "max_puzzles"),
    token_file: str | None = option(ServeConfig, "auth_token_file", "--token-file"),
    drain_s: float | None = option(ServeConfig, "drain_s", "--drain-s"),
    device: str | None = option(BackendConfig, "device", note="In process only."),
    threads: int | None = option(ServeConfig, "cpu_threads", "--threads"),
    workers: int = typer.Option(1, "--workers", help="Uvicorn workers (only 1: batching needs one process)."),
    params: Path | None = PARAMS,
    profile: str | None = PROFILE,
) -> None:
    """Serve a Cello model over KServe v1/v2 (and OpenAI chat when in process)."""
    from cello.errors import ConfigError
    from cello.serve.server import serve

    if workers != 1:
        msg = f"--workers {workers}: cello serve batches requests in one process; scale with replicas instead."
        raise ConfigError(msg)
    p = load_params(params, profile=profile)
    cfg = override(p.serve, port=port, host=host, model_name=model_name, max_new_tokens=max_new_tokens,
                   temperature=temperature, timeout_s=timeout_s, max_batch_size=max_batch_size,
                   max_puzzles=max_puzzles, auth_token_file=token_file, cpu_threads=threads, drain_s=drain_s)
    generation = p.generation.model_copy(update={"backend": override(p.generation.backend, device=device)})
    serve(model, cfg=cfg, prompt=p.prompt, generation=generation,
          predictor_host=predictor_host, upstream_model=upstream_model)

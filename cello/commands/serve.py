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

from cello.commands._common import PARAMS, PROFILE
from cello.config import load_params, override


def command(
    model: str | None = typer.Option(None, "--model", "-m", help="Model directory, or upstream http(s)://HOST/openai/v1 (transformer mode)."),
    port: int | None = typer.Option(None, "--port", "--http_port", "--http-port", help="HTTP port [8080]."),
    host: str | None = typer.Option(None, "--host", help="Address to bind [0.0.0.0]; 127.0.0.1 for local only."),
    model_name: str | None = typer.Option(None, "--model-name", "--model_name", help="Name in the routes [cello]."),
    predictor_host: str | None = typer.Option(None, "--predictor-host", "--predictor_host", help="Upstream host as KServe passes it: HOST or http(s)://HOST (-> http(s)://HOST/openai/v1)."),
    upstream_model: str | None = typer.Option(None, "--upstream-model", help="Model name the upstream serves [first of GET /models]."),
    max_new_tokens: int | None = typer.Option(None, help="Generation budget per puzzle [1024]."),
    temperature: float | None = typer.Option(None, help="0 = greedy [0]."),
    timeout_s: float | None = typer.Option(None, "--timeout-s", help="Generation timeout per request, seconds [120]."),
    max_batch_size: int | None = typer.Option(None, help="Conversations generated together [8]."),
    max_puzzles: int | None = typer.Option(None, help="Puzzles per request [8]."),
    token_file: str | None = typer.Option(None, "--token-file", help="File with the bearer token (a mounted Secret) [env CELLO_SERVE_TOKEN]."),
    device: str | None = typer.Option(None, help="In process: auto | cpu | cuda [auto]."),
    threads: int | None = typer.Option(None, "--threads", help="In process: torch CPU threads [torch default]."),
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
                   max_puzzles=max_puzzles, auth_token_file=token_file, cpu_threads=threads)
    generation = p.generation.model_copy(update={"backend": override(p.generation.backend, device=device)})
    serve(model, cfg=cfg, prompt=p.prompt, generation=generation,
          predictor_host=predictor_host, upstream_model=upstream_model)

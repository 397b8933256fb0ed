"""Config of serving (`cello serve`, cello.serve): the KServe model server. Every request limit
lives here."""

from __future__ import annotations

from pydantic import Field, model_validator

from cello.config.base import DNS_LABEL, Section


class ServeConfig(Section):
    """`cello serve`: the KServe model server. Every request limit lives here."""

    model_name: str = Field(
        "cello", pattern=DNS_LABEL,
        description="Name in the routes (/v1/models/NAME:predict) and the OpenAI `model`.",
    )
    port: int = Field(8080, ge=1, le=65535, description="HTTP port.")
    host: str = Field("0.0.0.0", description="Address to bind: 0.0.0.0 in a pod, 127.0.0.1 for a local-only server.")
    max_puzzles: int = Field(8, ge=1, le=1024, description="Puzzles per request.")
    min_cells: int = Field(2, ge=1, description="Fewest cells in a puzzle.")
    max_cells: int = Field(32, ge=1, le=1024, description="Most cells in a puzzle (the paper: 8-15).")
    max_genes: int = Field(200, ge=1, description="Most genes in a ranked top-gene list.")
    max_expression_genes: int = Field(40000, ge=1, description="Most entries in a gene -> expression map.")
    top_genes: int = Field(
        50, ge=1,
        description="Genes kept per cell from an expression map, highest first (the paper: 50).",
    )
    max_name_length: int = Field(128, ge=1, description="Longest gene name, cell type, cell id or context field.")
    max_context_length: int = Field(2000, ge=1, description="Longest donor context sentence.")
    max_body_bytes: int = Field(4 * 2**20, ge=1024, description="Largest request body; larger bodies get 413.")
    max_new_tokens: int = Field(1024, ge=1, description="Generation budget per puzzle.")
    temperature: float = Field(0.0, ge=0.0, le=2.0, description="0 = greedy decoding.")
    timeout_s: float = Field(120.0, gt=0, description="Generation timeout per request; past it the client gets 504.")
    max_batch_size: int = Field(
        8, ge=1,
        description="Conversations generated together (requests are batched, not dropped).",
    )
    batch_wait_ms: float = Field(
        5.0, ge=0,
        description="How long the batcher waits to fill a batch (in-process models; an upstream batches itself).",
    )
    max_queue: int = Field(
        1024, ge=1,
        description="Conversations waiting for generation; beyond it the client gets 429.",
    )
    drain_s: float = Field(
        20.0, ge=0, le=600,
        description=(
            "After SIGTERM: seconds to finish queued work before the rest is answered 503 (with Retry-After) and the "
            "process exits; keep it under the pod's terminationGracePeriodSeconds (Kubernetes' default: 30)."
        ),
    )
    read_timeout_s: float = Field(
        30.0, gt=0,
        description="Most seconds a client may take to send its request headers, and again its body (408 past it).",
    )
    repair: bool = Field(True, description="Repair invalid answers into a valid assignment (cello.scoring.repair).")
    cpu_threads: int | None = Field(
        None, ge=1,
        description=(
            "torch CPU threads for in-process generation; null: torch's default (1 is fastest for small models on "
            "a busy machine)."
        ),
    )
    auth_token_env: str = Field(
        "CELLO_SERVE_TOKEN",
        description=(
            "Env var holding the bearer token; unset/empty at start: no auth (unless auth_token_file is set)."
        ),
    )
    auth_token_file: str | None = Field(
        None,
        description=(
            "File holding the bearer token (a mounted Secret), re-read when it changes; wins over auth_token_env. "
            "Auth then stays on: an empty, unreadable or missing file refuses every protected request (401)."
        ),
    )

    @model_validator(mode="after")
    def _check_cells(self) -> ServeConfig:
        if self.max_cells < self.min_cells:
            msg = (f"serve.max_cells={self.max_cells} is below serve.min_cells={self.min_cells}; "
                   "set max_cells >= min_cells.")
            raise ValueError(msg)
        return self

"""Request bodies are parsed off the event loop (cello.serve.offload): while a large body is
decoded the loop goes on (it reads new requests and sees clients leave), and a parse still
queued when its request is cancelled (the client left) never runs."""

from __future__ import annotations

import asyncio
import json
import threading

from cello.config import SamplingParams, ServeConfig
from cello.data.prompt import PromptTemplate
from cello.serve import offload
from cello.serve.offload import off_loop


def big_v1_body(puzzles: int = 8, cells: int = 8, genes: int = 50) -> bytes:
    puzzle = {
        "cells": [[f"G{c}-{g}" for g in range(genes)] for c in range(cells)],
        "candidates": [f"type {c}" for c in range(cells)],
    }
    return json.dumps({"instances": [puzzle] * puzzles}).encode()


def test_the_event_loop_runs_while_a_body_is_parsed():
    from cello.serve.model import make_model

    model = make_model("cello", backend_factory=lambda: None, cfg=ServeConfig(), prompt=PromptTemplate(),
                       sampling=SamplingParams())
    body = big_v1_body()

    async def main():
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        task = asyncio.create_task(ticker())
        job = await model.preprocess(body)
        seen = ticks
        task.cancel()
        return job, seen

    job, ticks = asyncio.run(main())
    assert len(job.puzzles) == 8 and len(job.puzzles[0].cell_genes[0]) == 50
    assert ticks > 0  # on the loop, the parse ran to its end before any other task could


def test_a_parse_whose_request_is_cancelled_while_queued_never_runs():
    release = threading.Event()
    ran: list[str] = []

    def job(name: str) -> str:
        release.wait(10)
        ran.append(name)
        return name

    async def main():
        busy = [asyncio.ensure_future(off_loop(job, f"busy{i}")) for i in range(offload.PARSE_THREADS)]
        await asyncio.sleep(0.05)  # every parse thread is taken
        queued = asyncio.ensure_future(off_loop(job, "gone"))
        await asyncio.sleep(0.05)
        queued.cancel()  # the client left while its parse waited
        await asyncio.sleep(0.05)  # the cancellation reaches the pool's queue on the loop's next turn
        release.set()
        return await asyncio.gather(*busy)

    assert asyncio.run(main()) == [f"busy{i}" for i in range(offload.PARSE_THREADS)]
    assert "gone" not in ran

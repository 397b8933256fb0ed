"""SIGTERM inside Kubernetes' grace period: drain, answer everyone, exit 0.

Kubernetes sends SIGTERM and kills the pod `terminationGracePeriodSeconds` later (30 s by
default); KServe's own shutdown keeps serving for its 30 s grace period and then cancels what is
left (plain-text 500s), so a pod with a backlog was killed. Cello drains in `drain_s` instead:

1. at once: new work and readiness probes get 503 with Retry-After (cello.serve.middleware;
   the listener stays open, so requests already on their way get an answer, not a reset);
2. queued work is generated until `give_up_at(drain_s)`; then whatever is left gets a JSON 503
   and the running batch stops at the next step (cello.serve.engine);
3. once no request is in flight (at the latest `drain_s` less a second), uvicorn's own shutdown
   runs (closing the listener, with a short grace for the last bytes) and the process exits 0.

A second SIGTERM/SIGINT goes straight to uvicorn (stop now).
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable

log = logging.getLogger(__name__)


def give_up_at(drain_s: float) -> float:
    """Seconds after SIGTERM at which queued work is answered 503: the period less a margin for
    answering it and shutting down (3 s, or a third of a short period)."""
    return drain_s - min(3.0, drain_s / 3)


def stop_at(drain_s: float) -> float:
    """Seconds after SIGTERM at which uvicorn's shutdown starts even if a request is still in flight."""
    return drain_s - min(1.5, drain_s / 4)


def install(server, *, drain_s: float, traffic, begin_drain: Callable[[float], None]) -> None:
    """Put the drain in front of `server.handle_exit` (a uvicorn.Server, before it starts serving:
    uvicorn installs `handle_exit` as the signal handler)."""
    uvicorn_exit = server.handle_exit
    server.config.timeout_graceful_shutdown = drain_s - stop_at(drain_s)  # then uvicorn cancels (a backstop)

    async def drain(sig: int) -> None:
        loop = asyncio.get_running_loop()
        end = loop.time() + stop_at(drain_s)
        begin_drain(give_up_at(drain_s))
        while traffic.in_flight > 0 and loop.time() < end:
            await asyncio.sleep(0.05)
        log.info("drained (%d requests still in flight); stopping", traffic.in_flight)
        uvicorn_exit(sig, None)

    def handle_exit(sig: int, frame) -> None:
        if sig not in (signal.SIGTERM, signal.SIGINT) or traffic.draining:
            uvicorn_exit(sig, frame)
            return
        traffic.draining = True  # the guard refuses new work from now on
        loop = asyncio.get_event_loop()
        loop.call_soon_threadsafe(lambda: loop.create_task(drain(sig)))

    server.handle_exit = handle_exit

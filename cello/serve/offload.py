"""Request parsing off the event loop, in a small pool of threads.

Why: the event loop runs the steps of every request one after another and polls the network
only between them. Decoding and validating a body of 8 puzzles (tens of thousands of gene
names for a wave of clients) is pure Python: on the loop, a wave of 30 such requests kept it
busy for most of a second at a time, during which it accepted no new request and did not see
that those clients had already left, so it went on parsing bodies nobody waited for. Here the
loop stays free: a new request is read at once, a client that leaves is noticed at once, and
the parse of a request whose client left while it waited in the pool's queue never starts
(cancelling the request cancels its queued job).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")
PARSE_THREADS = 2  # parsing holds the GIL: more threads would only share it
_POOL: list[ThreadPoolExecutor] = []


async def off_loop(fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """`fn(*args, **kwargs)` in the parse pool; cancelled while queued, it never runs."""
    if not _POOL:
        _POOL.append(ThreadPoolExecutor(max_workers=PARSE_THREADS, thread_name_prefix="cello-parse"))
    return await asyncio.get_running_loop().run_in_executor(_POOL[0], functools.partial(fn, *args, **kwargs))

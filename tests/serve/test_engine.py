"""The batcher: concurrent requests are batched (never dropped), keep their order, time out,
and a full queue is refused. A fake backend stands in for the model (no server, no torch)."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from cello.config import SamplingParams
from cello.serve.engine import BackendError, Batcher, Draining, GenerationTimeout, QueueFull


class Gen:
    def __init__(self, text):
        self.texts = [text]
        self.finish_reasons = ["stop"]


class FakeBackend:
    """Echoes the last message; records batch sizes; can be held or made to fail."""

    def __init__(self, *, hold: threading.Event | None = None, fail: Exception | None = None):
        self.sizes: list[int] = []
        self.hold = hold
        self.fail = fail

    def generate_full(self, conversations, params):
        if self.hold is not None:
            self.hold.wait(5)
        if self.fail is not None:
            raise self.fail
        self.sizes.append(len(conversations))
        return [Gen(f"{c[-1]['content']}/{params.max_new_tokens}") for c in conversations]


def conv(i):
    return [{"role": "user", "content": f"q{i}"}]


def run(coro):
    return asyncio.run(coro)


def test_concurrent_requests_are_batched_in_order():
    hold = threading.Event()
    backend = FakeBackend(hold=hold)
    batcher = Batcher(backend, max_batch_size=4, wait_s=0.0)
    params = SamplingParams(max_new_tokens=7)

    async def main():
        first = asyncio.create_task(batcher.generate([conv(0)], params, timeout_s=10))
        await asyncio.sleep(0.05)  # the first batch is running (held); the rest queue up
        rest = [
            asyncio.create_task(batcher.generate([conv(i), conv(i + 100)], params, timeout_s=10)) for i in range(1, 6)
        ]
        await asyncio.sleep(0.05)
        hold.set()
        out = [await first] + [await t for t in rest]
        await batcher.close()
        return out

    out = run(main())
    assert out[0][0].generation.texts == ["q0/7"]
    for i, res in enumerate(out[1:], 1):  # every request gets its own answers, in its order
        assert [r.generation.texts[0] for r in res] == [f"q{i}/7", f"q{i + 100}/7"]
    assert backend.sizes[0] == 1
    assert sum(backend.sizes) == 11 and max(backend.sizes) == 4  # 10 queued conversations in batches of 4
    assert all(r.latency_s >= 0 for res in out for r in res)


def test_different_sampling_settings_are_not_mixed():
    backend = FakeBackend()
    batcher = Batcher(backend, max_batch_size=8, wait_s=0.02)

    async def main():
        a = batcher.generate([conv(1)], SamplingParams(max_new_tokens=5), timeout_s=5)
        b = batcher.generate([conv(2)], SamplingParams(max_new_tokens=9), timeout_s=5)
        out = await asyncio.gather(a, b)
        await batcher.close()
        return out

    a, b = run(main())
    assert a[0].generation.texts == ["q1/5"] and b[0].generation.texts == ["q2/9"]
    assert sorted(backend.sizes) == [1, 1]


def test_timeout_raises_and_withdraws_the_request():
    hold = threading.Event()
    backend = FakeBackend(hold=hold)
    batcher = Batcher(backend, max_batch_size=1, wait_s=0.0)

    async def main():
        running = asyncio.create_task(batcher.generate([conv(0)], SamplingParams(), timeout_s=10))
        await asyncio.sleep(0.05)
        with pytest.raises(GenerationTimeout, match="serve.timeout_s"):
            await batcher.generate([conv(1)], SamplingParams(), timeout_s=0.05)
        assert batcher.pending == 0  # the timed-out conversation left the queue
        hold.set()
        await running
        await batcher.close()

    run(main())
    assert backend.sizes == [1]  # conversation 1 was never generated


def test_full_queue_is_refused():
    hold = threading.Event()
    batcher = Batcher(FakeBackend(hold=hold), max_batch_size=1, wait_s=0.0, max_queue=3)

    async def main():
        running = asyncio.create_task(batcher.generate([conv(0)], SamplingParams(), timeout_s=10))
        await asyncio.sleep(0.05)
        queued = asyncio.create_task(batcher.generate([conv(1), conv(2)], SamplingParams(), timeout_s=10))
        await asyncio.sleep(0.01)
        with pytest.raises(QueueFull, match="busy"):
            await batcher.generate([conv(3), conv(4)], SamplingParams(), timeout_s=10)
        hold.set()
        await running
        assert len(await queued) == 2
        await batcher.close()

    run(main())


def test_backend_failure_reaches_every_waiting_request_and_the_worker_survives():
    backend = FakeBackend(fail=RuntimeError("boom"))
    batcher = Batcher(backend, max_batch_size=4, wait_s=0.01)

    async def main():
        results = await asyncio.gather(
            *(batcher.generate([conv(i)], SamplingParams(), timeout_s=5) for i in range(3)), return_exceptions=True
        )
        assert all(isinstance(r, BackendError) and "boom" in str(r) for r in results)
        backend.fail = None
        ok = await batcher.generate([conv(9)], SamplingParams(), timeout_s=5)
        await batcher.close()
        return ok

    assert run(main())[0].generation.texts[0].startswith("q9")


def test_latency_counts_queueing():
    hold = threading.Event()
    batcher = Batcher(FakeBackend(hold=hold), max_batch_size=1, wait_s=0.0)

    async def main():
        task = asyncio.create_task(batcher.generate([conv(0)], SamplingParams(), timeout_s=5))
        t0 = time.perf_counter()
        await asyncio.sleep(0.1)
        hold.set()
        (res,) = await task
        await batcher.close()
        return res, time.perf_counter() - t0

    res, waited = run(main())
    assert 0 < res.latency_s <= waited + 0.05


class SteppingBackend:
    """Generates in steps of 10 ms (max_new_tokens steps), stopping a conversation once `abort(i)`
    is true, as the transformers backend does; records every batch it was asked for."""

    abortable = True

    def __init__(self):
        self.batches: list[list[str]] = []
        self.steps: list[int] = []

    def generate_full(self, conversations, params, abort=None):
        self.batches.append([c[-1]["content"] for c in conversations])
        step = 0
        for step in range(1, params.max_new_tokens + 1):  # noqa: B007 - the count is recorded
            if abort is not None and all(abort(i) for i in range(len(conversations))):
                break
            time.sleep(0.01)
        self.steps.append(step)
        return [Gen(c[-1]["content"]) for c in conversations]


def test_a_cancelled_request_is_withdrawn_and_its_running_batch_stops():
    """Issue: 30 clients that gave up left ~30 batches to generate. A cancelled request (its client
    disconnected) is withdrawn from the queue and the batch running only for it stops at the next step."""
    backend = SteppingBackend()
    batcher = Batcher(backend, max_batch_size=2, wait_s=0.0)
    params = SamplingParams(max_new_tokens=500)  # 5 s if it ran to the end

    async def main():
        gone = [
            asyncio.create_task(batcher.generate([conv(2 * i), conv(2 * i + 1)], params, timeout_s=60))
            for i in range(5)
        ]
        await asyncio.sleep(0.1)  # the first batch runs, four wait
        for task in gone:
            task.cancel()  # the clients leave
        await asyncio.gather(*gone, return_exceptions=True)
        start = time.perf_counter()
        fresh = await batcher.generate([conv(99)], SamplingParams(max_new_tokens=3), timeout_s=60)
        waited = time.perf_counter() - start
        await batcher.close()
        return fresh, waited

    fresh, waited = run(main())
    assert fresh[0].generation.texts == ["q99"]
    assert backend.batches == [["q0", "q1"], ["q99"]]  # the queued ones never ran
    assert backend.steps[0] < 500  # the running one stopped early
    assert waited < 4.5  # well before the abandoned batch would have finished


def test_drain_refuses_new_work_finishes_what_fits_then_answers_draining():
    backend = SteppingBackend()
    batcher = Batcher(backend, max_batch_size=1, wait_s=0.0)

    async def main():
        quick = asyncio.create_task(batcher.generate([conv(0)], SamplingParams(max_new_tokens=2), timeout_s=60))
        slow = asyncio.create_task(batcher.generate([conv(1)], SamplingParams(max_new_tokens=1000), timeout_s=60))
        queued = asyncio.create_task(batcher.generate([conv(2)], SamplingParams(max_new_tokens=2), timeout_s=60))
        await asyncio.sleep(0.05)
        batcher.drain(0.5)
        with pytest.raises(Draining, match="shutting down"):
            await batcher.generate([conv(3)], SamplingParams(max_new_tokens=2), timeout_s=60)
        results = await asyncio.gather(quick, slow, queued, return_exceptions=True)
        await batcher.close()
        return results

    quick, slow, queued = run(main())
    assert quick[0].generation.texts == ["q0"]  # finished inside the drain period
    assert isinstance(slow, Draining) and isinstance(queued, Draining)
    assert backend.steps[1] < 1000  # the running batch was stopped, not run to the end
    assert ["q2"] not in backend.batches


def test_a_seeded_sampled_request_runs_alone():
    """Issue: a seed applied per batch, so the same seeded request gave different outputs alone and
    in a burst. A request that samples with a seed gets a batch of its own."""
    hold = threading.Event()
    backend = FakeBackend(hold=hold)
    batcher = Batcher(backend, max_batch_size=8, wait_s=0.0)
    seeded = SamplingParams(max_new_tokens=3, temperature=0.9, seed=7)
    greedy = SamplingParams(max_new_tokens=3, seed=7)  # greedy: the seed changes nothing, batching stays

    async def main():
        first = asyncio.create_task(batcher.generate([conv(0)], greedy, timeout_s=10))
        await asyncio.sleep(0.05)
        tasks = [asyncio.create_task(batcher.generate([conv(i)], seeded, timeout_s=10)) for i in range(1, 4)]
        tasks += [asyncio.create_task(batcher.generate([conv(i)], greedy, timeout_s=10)) for i in range(4, 7)]
        await asyncio.sleep(0.05)
        hold.set()
        await asyncio.gather(first, *tasks)
        await batcher.close()

    run(main())
    assert backend.sizes == [1, 1, 1, 1, 3]


def test_the_transformers_backend_stops_an_aborted_conversation(model_dir):
    """The real backend honours `abort`: a conversation nobody waits for ends at the next step,
    the others in its batch run on."""
    from cello.llm import make_backend

    with make_backend(str(model_dir), device="cpu") as backend:
        assert backend.abortable
        params = SamplingParams(max_new_tokens=40, temperature=0.0)
        convs = [conv(1), conv(2)]
        full = backend.generate_full(convs, params)
        cut = backend.generate_full(convs, params, abort=lambda i: i == 0)
    assert cut[0].completion_tokens <= 2 < full[0].completion_tokens
    assert cut[1].texts == full[1].texts


def test_the_transformers_backend_stops_a_batch_in_its_prompt_pass(model_dir):
    """A batch nobody waits for any more stops between prompt chunks, before its first new token."""
    from cello.llm import make_backend

    long = [{"role": "user", "content": " ".join(f"G{i}" for i in range(600))}]
    calls = {"n": 0}

    def abort(i):
        calls["n"] += 1
        return calls["n"] > 2  # true from the second prompt chunk on

    with make_backend(str(model_dir), device="cpu") as backend:
        (gen,) = backend.generate_full([long], SamplingParams(max_new_tokens=40), abort=abort)
    assert gen.completion_tokens == 0 and gen.finish_reasons == ["abort"]

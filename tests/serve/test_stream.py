"""Token-by-token streaming with the in-process transformers backend: the streamer's incremental
decoding, the batcher handing pieces to the event loop, and the official `openai` SDK against a
loopback server whose client leaves mid-stream (the generation stops)."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
import torch

from cello.config import SamplingParams, ServeConfig
from cello.data.prompt import PromptTemplate
from cello.llm.hf import TransformersBackend, _streamer
from cello.serve.engine import Batcher
from tests.conftest import free_port

HI = [{"role": "user", "content": "Cell 1: CD3E, CD4"}]


@pytest.fixture(scope="module")
def backend(model_dir):
    with TransformersBackend(model_dir, batch_size=4) as b:
        yield b


def feed(backend, text: str, stop: list[str]) -> list[str]:
    """Push `text`'s tokens one step at a time through the streamer (as generate() does); the pieces."""
    pieces: list[str] = []
    stream = _streamer(backend, lambda i, piece: pieces.append(piece), [0], 1, stop)
    stream.put(torch.tensor([[1, 2, 3]]))  # the prompt comes first and is not part of the text
    for token in backend.tokenizer.encode(text, add_special_tokens=False):
        stream.put(torch.tensor([token]))
    stream.end()
    return pieces


def test_the_streamer_sends_whole_characters_as_tokens_arrive(backend):
    text = "é ✓ 細胞 B cell, CD4-positive"
    tokens = backend.tokenizer.encode(text, add_special_tokens=False)
    assert len(tokens) > len(text.split())  # characters split over several tokens
    pieces = feed(backend, text, [])
    assert len(pieces) > 1
    assert all("\ufffd" not in p for p in pieces)
    assert "".join(pieces) == backend.tokenizer.decode(tokens, skip_special_tokens=True)


def test_the_streamer_never_sends_a_stop_string_or_what_follows(backend):
    pieces = feed(backend, "B cell</answer> and more", ["</answer>"])
    assert "".join(pieces) == "B cell"
    assert not any("<" in p for p in pieces)  # the start of the stop string was held back, then dropped


def test_streamed_pieces_join_to_the_greedy_answer_and_the_request_runs_alone(backend):
    params = SamplingParams(max_new_tokens=12, temperature=0)
    (plain,) = backend.generate_full([HI], params)
    sizes: list[int] = []
    inner = backend.generate_full

    def recording(conversations, p, **kw):
        sizes.append(len(conversations))
        return inner(conversations, p, **kw)

    batcher = Batcher(backend, max_batch_size=4, wait_s=0.02)
    batcher.backend = type("Recording", (), {"generate_full": staticmethod(recording), "abortable": True,
                                             "streams": True})()

    async def main():
        pieces: list[str] = []
        streamed = asyncio.create_task(batcher.generate([HI], params, timeout_s=60, on_text=pieces.append))
        others = asyncio.create_task(batcher.generate([HI, HI], params, timeout_s=60))
        (result,), _ = await asyncio.gather(streamed, others)
        await batcher.close()
        return pieces, result

    pieces, result = asyncio.run(main())
    assert len(pieces) > 1
    assert "".join(pieces) == result.generation.texts[0] == plain.texts[0]
    assert sorted(sizes) == [1, 2]  # the streamed request was not batched with the others


class SlowBackend(TransformersBackend):
    """The tiny model, slowed to 50 ms per token (so a stream lasts seconds), reporting each finished
    generation."""

    def generate_full(self, conversations, params=None, **kw):
        on_text = kw.get("on_text")
        if on_text is not None:
            def slow(i, piece):
                self.pieces += 1
                on_text(i, piece)
                time.sleep(0.05)

            kw["on_text"] = slow
        gens = super().generate_full(conversations, params, **kw)
        if on_text is not None:
            self.finished.append(gens[0])
            self.done.set()
        return gens


@pytest.fixture(scope="module")
def loopback(model_dir):
    """A Cello app (guard + OpenAI routes, SlowBackend) on uvicorn in a thread."""
    import uvicorn
    from fastapi import FastAPI

    from cello.serve.model import make_model
    from cello.serve.server import install

    cfg = ServeConfig(max_new_tokens=400)
    slow = SlowBackend(model_dir, batch_size=4)
    slow.pieces, slow.finished, slow.done = 0, [], threading.Event()
    model = make_model("cello", backend_factory=lambda: slow, cfg=cfg, prompt=PromptTemplate(),
                       sampling=SamplingParams(max_new_tokens=32, temperature=0))
    model.load()
    app = FastAPI()
    install(app, model, cfg=cfg, openai_routes=True)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", slow
    server.should_exit = True
    thread.join(30)


def test_the_sdk_streams_token_by_token_with_usage(loopback):
    import openai

    url, slow = loopback
    sdk = openai.OpenAI(base_url=url + "/openai/v1", api_key="none", max_retries=0, timeout=60)
    plain = sdk.chat.completions.create(model="cello", messages=HI, max_tokens=6, temperature=0)
    chunks = list(sdk.chat.completions.create(model="cello", messages=HI, max_tokens=6, temperature=0, stream=True,
                                              stream_options={"include_usage": True}))
    content = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(content) > 1
    assert "".join(content) == plain.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == plain.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.model_dump() == plain.usage.model_dump()


def test_a_client_that_leaves_mid_stream_stops_the_generation(loopback):
    """400 tokens at 50 ms each would take 20 s; the client reads two pieces and closes the stream."""
    import openai

    url, slow = loopback
    slow.done.clear()
    slow.pieces = 0
    sdk = openai.OpenAI(base_url=url + "/openai/v1", api_key="none", max_retries=0, timeout=60)
    stream = sdk.chat.completions.create(model="cello", messages=HI, max_tokens=400, temperature=0, stream=True)
    got = 0
    for chunk in stream:
        got += bool(chunk.choices and chunk.choices[0].delta.content)
        if got == 2:
            break
    stream.close()
    assert slow.done.wait(60), "the generation did not end"
    assert slow.finished[-1].finish_reasons == ["abort"]
    assert slow.pieces < 100

"""One real vLLM OpenAI server per test session, serving the tiny model (marker `vllm`).

The server runs from the separate vLLM env (`make vllm`; `make test` makes it where it can) and
requires the bearer token TOKEN, so every client here must send it: `cello eval`, the distill
teacher client and the KServe transformer (`cello serve --model URL`) read it from
$OPENAI_API_KEY, as in production. Where there is no vLLM env every test here skips, saying why.
Starting vLLM costs ~40-50 s on 2 cores, hence one server for the whole session.
"""

from __future__ import annotations

import pytest

from tests.llm_server import build_test_model
from tests.vllm_server import VLLMServer, VLLMUnavailable, vllm_python

TOKEN = "vllm-test-token-9c2e"
SERVED = "cello-tiny"
CONTEXT = 4096  # the demo test split's longest prompt is ~2400 tokens with the tiny tokenizer


@pytest.fixture(scope="session")
def vllm_model(tmp_path_factory):
    """The session's tiny model (the same directory the transformers tests load)."""
    return build_test_model(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="session")
def vllm(vllm_model, tmp_path_factory):
    """A started VLLMServer (`.url` is http://127.0.0.1:PORT/v1); stopped by PID at the end."""
    try:
        python = vllm_python()
    except VLLMUnavailable as exc:
        pytest.skip(f"no vLLM server: {exc}")
    log = tmp_path_factory.mktemp("vllm") / "server.log"
    server = VLLMServer(vllm_model, python=python, name=SERVED, api_key=TOKEN, log_path=log,
                        max_model_len=CONTEXT)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def api_key(monkeypatch):
    """The server's token in $OPENAI_API_KEY (where cello's OpenAI clients read it)."""
    monkeypatch.setenv("OPENAI_API_KEY", TOKEN)
    return TOKEN

"""Fixtures for tests/llm: one tiny model per session (built in ~4 s, shared by all tests)."""

from __future__ import annotations

import pytest

from tests.llm_server import build_test_model


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny Qwen2 model directory (built-in corpus, default TinyModelConfig), built once."""
    return build_test_model(tmp_path_factory.getbasetemp())

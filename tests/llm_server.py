"""Test helpers for code that talks to models: a tiny model dir, built once per session.

    from llm_server import build_test_model     # (or tests.llm_server when tests/ is a package)
    model_dir = build_test_model(tmp_path_factory.getbasetemp())
"""

from __future__ import annotations

from pathlib import Path


def build_test_model(root: str | Path) -> Path:
    """The default tiny model under `root/tiny-model`, built on first use and reused after.

    Pass a session-wide directory (`tmp_path_factory.getbasetemp()`), so that several
    conftest files sharing this helper still build the model once per test session.
    """
    from cello.llm.tiny import build_tiny_model

    out = Path(root) / "tiny-model"
    if not (out / "config.json").exists():
        build_tiny_model(out)
    return out

"""Fixtures of the cluster tests: the Kubernetes API double (`tests.k8s.fakecluster`) and the
record of every API call the code made in them, which `test_rbac.py` compares with the Role."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import pytest_asyncio

from cello.config import ClusterConfig
from tests.k8s.fakecluster import running_cluster

CRDS = Path(__file__).resolve().parents[2] / ".." / "shared" / "schemas" / "crds"
needs_crds = pytest.mark.skipif(not CRDS.is_dir(), reason=f"CRD schemas not found at {CRDS}")

# (apiGroup, resource, verb) of every call made against the double in this session, by test module.
RECORDED: dict[str, set[tuple[str, str, str]]] = {}


@pytest_asyncio.fixture
async def cluster(request, tmp_path, monkeypatch):
    async with running_cluster(tmp_path, monkeypatch) as c:
        yield c
        RECORDED.setdefault(request.module.__name__, set()).update(c.calls())


def fast(**over) -> ClusterConfig:
    """Cluster settings with test-sized timeouts."""
    # pending_timeout_s 2: creationTimestamps have whole seconds, so a pod may look up to 1 s older
    base = {"poll_interval_s": 0.05, "pending_timeout_s": 2, "api_retries": 1, "log_tail_lines": 5,
            "num_nodes": 2, "gpus_per_node": 2, "secrets": {"cello-hub": {"token": "HF_TOKEN"}}}
    return ClusterConfig(**{**base, **over})


async def in_thread(fn, *args, **kwargs):
    """Run blocking client code off the event loop that serves the double."""
    return await asyncio.to_thread(fn, *args, **kwargs)


def pytest_collection_modifyitems(config, items):
    """The RBAC comparison reads what the other cluster tests recorded: run it last."""
    items.sort(key=lambda item: item.module.__name__.endswith("test_rbac"))

"""Fixtures of the cluster tests: the Kubernetes API double (`tests.k8s.fakecluster`), a real
served route for KServe deploys (`served`, `kserve`), and the record of every API call the code
made in them, which `test_rbac.py` compares with the Role."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import pytest_asyncio

from cello.config import ClusterConfig
from tests.k8s.fakecluster import running_cluster
from tests.llm_server import serve_openai
from tests.serve.conftest import Server

CRDS = Path(__file__).resolve().parents[2] / ".." / "shared" / "schemas" / "crds"
needs_crds = pytest.mark.skipif(not CRDS.is_dir(), reason=f"CRD schemas not found at {CRDS}")

# (apiGroup, resource, verb) of every call made against the double in this session, by test module.
RECORDED: dict[str, set[tuple[str, str, str]]] = {}


@pytest_asyncio.fixture
async def cluster(request, tmp_path, monkeypatch):
    async with running_cluster(tmp_path, monkeypatch) as c:
        yield c
        RECORDED.setdefault(request.module.__name__, set()).update(c.calls())


CANDIDATES = ["B cell", "T cell", "monocyte"]
PUZZLE = {"id": "smoke", "context": "The cells are from the blood of a healthy donor.",
          "cells": [["MS4A1", "CD79A", "CD19"], ["CD3E", "IL7R", "CD2"], ["LYZ", "CD14", "S100A8"]],
          "candidates": CANDIDATES}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The transformer route, and the switch that decides how the model behind it answers."""
    model = {"mode": "good"}

    def respond(messages, body):
        if model["mode"] == "garbled":
            return "The first cell looks like a B cell, I think."
        return ("<think>MS4A1 marks B cells, CD3E T cells, LYZ monocytes.</think>\n<answer>"
                + " | ".join(CANDIDATES) + "</answer>")

    logs = tmp_path_factory.mktemp("deploy-serve")
    with serve_openai(responder=respond, model_name="cello") as upstream:
        server = Server("transformer", ["--model", upstream, "--upstream-model", "cello", "--max-new-tokens", "64",
                                        "--model_name", "cello"], log_dir=logs)
        try:
            server.wait_ready("/v1/models/cello")
            yield server.url, model
        finally:
            server.stop()


@pytest_asyncio.fixture
async def kserve(cluster, served):
    """The cluster with KServe: Ready InferenceServices route to the served transformer."""
    url, model = served
    cluster.serving_url = url

    def on_ready(isvc):
        spec = isvc["spec"]
        newest = spec["canary"][-1]["predictor"] if spec.get("canary") else spec["predictor"]
        model["mode"] = "garbled" if "garbled" in newest["model"]["storageUri"] else "good"

    cluster.on_ready = on_ready
    model["mode"] = "good"
    return cluster


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

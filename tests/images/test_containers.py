"""The CPU images, built and run: stages work inside them as the non-root user.

    .venv/bin/python -m pytest -q tests/images -m image

- `cello`: `cello data cells builtin:pbmc68k` into a mounted output folder (no network), the
  same table as on the host; the libraries the pipeline's CPU steps import; `cello eval` in
  process on a tiny model, and over HTTP against the `cello-serve` container.
- `cello-serve`: the default command serves a tiny model mounted read-only; a request from the
  host on a loopback port gets an answer; the HEALTHCHECK passes; the container stops on SIGTERM.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import time
import urllib.request
import uuid
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from cello import __version__
from tests.conftest import REPO, free_port

pytestmark = [pytest.mark.image, pytest.mark.slow]

REQUEST = {"instances": [{
    "context": "The sample was taken from the blood.",
    "cells": [["CD3E", "IL7R", "LTB"], ["MS4A1", "CD79A", "CD74"]],
    "candidates": ["B cell", "T cell"],
}]}


def _get(url: str, body: dict | None = None, timeout: float = 60) -> dict:
    data = None if body is None else json.dumps(body).encode()
    with urllib.request.urlopen(urllib.request.Request(url, data=data), timeout=timeout) as resp:
        return json.loads(resp.read() or b"{}")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A tiny model built by `cello model tiny`, as a user would, world-readable for uid 1000."""
    from cello.cli import main

    out = tmp_path_factory.mktemp("model") / "tiny"
    assert main(["model", "tiny", "-o", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def server(engine, built_images, model_dir):
    """`cello-serve` with its default command, the model at /mnt/models (read-only), port on loopback."""
    port, name = free_port(), f"cello-serve-test-{uuid.uuid4().hex[:8]}"
    engine("run", "-d", "--name", name, "-p", f"127.0.0.1:{port}:8080",
           "-v", f"{model_dir}:/mnt/models:ro", built_images["cello-serve"])
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                _get(f"{url}/v2/health/ready", timeout=5)
                break
            except OSError:
                state = engine("inspect", "--format", "{{.State.Status}}", name).stdout.strip()
                if state != "running" or time.monotonic() > deadline:
                    logs = engine("logs", name, check=False).stderr[-3000:]
                    pytest.fail(f"cello-serve is {state}, not ready after 120 s:\n{logs}")
                time.sleep(1)
        yield name, url
    finally:
        engine("stop", "--time", "20", name, check=False)
        engine("rm", "--force", name, check=False)


def test_images_are_labelled_and_run_as_uid_1000(engine, built_images):
    revision = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    for ref in built_images.values():
        config = json.loads(engine("image", "inspect", ref).stdout)[0]["Config"]
        assert config["User"] == "1000"
        assert config["Labels"]["org.opencontainers.image.version"] == __version__
        assert config["Labels"]["org.opencontainers.image.revision"] == (revision or "unknown")


def test_cello_writes_cells_as_non_root_into_a_mounted_folder(engine, built_images, out_dir, demo_data):
    """A data stage in the image, without network: the same cells table as on the host."""
    engine("run", "--rm", "--network", "none", "-v", f"{out_dir}:/workspace/out",
           "-v", f"{REPO / 'params.yaml'}:/workspace/params.yaml:ro", built_images["cello"],
           "data", "cells", "builtin:pbmc68k", "-o", "out/cells.parquet")
    written = out_dir / "cells.parquet"
    if os.geteuid() == 0:  # a rootful engine keeps uids: the file is the image user's
        assert written.stat().st_uid == 1000
    table = pq.read_table(written)
    assert table.num_rows > 0 and {"cell_type", "top_genes", "donor_id"} <= set(table.column_names)
    assert table.equals(pq.read_table(demo_data / "cells.parquet"))


def test_cello_loads_the_ranking_kernel_from_the_images_cache(engine, built_images):
    """The data stage's compiled kernel was compiled when the image was built: as the image user,
    without network, it loads from that cache (a hit, no compilation)."""
    check = (
        "from cello.data import _kernels as k; k.warm_up(); "
        "print(len(k._rank_csr.stats.cache_hits), len(k._rank_csr.stats.cache_misses))"
    )
    proc = engine("run", "--rm", "--network", "none", "--entrypoint", "python3", built_images["cello"], "-c", check)
    assert proc.stdout.split() == ["1", "0"]


def test_cello_has_what_the_pipeline_steps_import(engine, built_images):
    check = (
        "import importlib.metadata as m, kfp, kfp.kubernetes, kubernetes, kubeflow.trainer, kserve, torch, "
        "transformers, dvc;"
        "print(*(f'{d}=={m.version(d)}' for d in "
        "('kfp', 'kfp-kubernetes', 'kubernetes', 'kubeflow', 'kserve', 'torch')))"
    )
    proc = engine("run", "--rm", "--network", "none", "--entrypoint", "sh", built_images["cello"], "-c",
                  f'git --version && dvc --version && python3 -c "{check}"')
    versions = dict(v.split("==") for v in proc.stdout.split("\n")[-2].split())
    pins = dict(line.split("==") for line in (REPO / "constraints.txt").read_text().split() if "==" in line)
    for dist in ("kfp", "kfp-kubernetes", "kubernetes", "kubeflow", "kserve"):
        assert versions[dist] == pins[dist], dist
    assert versions["torch"].endswith("+cpu")  # never the multi-GB CUDA build
    assert proc.stdout.startswith("git version")


def test_cello_evaluates_a_tiny_model_in_process(engine, built_images, model_dir, demo_data, out_dir):
    engine("run", "--rm", "--network", "none", "-v", f"{out_dir}:/workspace/out",
           "-v", f"{model_dir}:/models/tiny:ro", "-v", f"{demo_data / 'splits'}:/data:ro", built_images["cello"],
           "eval", "run", "/data/test.parquet", "--model", "/models/tiny", "-o", "out/eval",
           "--limit", "2", "--max-new-tokens", "16", "--no-progress", timeout=600)
    metrics = json.loads((out_dir / "eval" / "metrics.json").read_text())
    assert len((out_dir / "eval" / "predictions.jsonl").read_text().splitlines()) == 2
    assert "cell_accuracy" in json.dumps(metrics)


def test_model_files_are_readable_by_the_image_user(model_dir):
    for f in model_dir.iterdir():
        assert f.stat().st_mode & stat.S_IROTH, f"{f.name} is not world-readable"


def test_cello_serve_answers_a_request_from_the_host(server):
    _, url = server
    answer = _get(f"{url}/v1/models/cello:predict", REQUEST)
    [prediction] = answer["predictions"]
    assert prediction["completion"]  # the tiny model wrote something
    # every cell gets a distinct candidate (the model's answer, or its repair)
    assert sorted(prediction["assignment"].values()) == ["B cell", "T cell"]


def test_cello_evaluates_over_http_against_cello_serve(engine, built_images, server, demo_data, out_dir):
    """The cello image as an HTTP client (`--model http://.../v1`), the server in the other image."""
    _, url = server
    engine("run", "--rm", "--network", "host", "-v", f"{out_dir}:/workspace/out",
           "-v", f"{demo_data / 'splits'}:/data:ro", built_images["cello"],
           "eval", "run", "/data/test.parquet", "--model", f"{url}/openai/v1", "-o", "out/eval",
           "--limit", "2", "--max-new-tokens", "16", "--no-progress", timeout=600)
    assert len((out_dir / "eval" / "predictions.jsonl").read_text().splitlines()) == 2


def test_cello_serve_healthcheck_and_clean_stop(engine, server):
    name, _ = server
    if engine.name == "podman":
        assert engine("healthcheck", "run", name, check=False).returncode == 0
    else:  # docker runs it every 30 s; wait for the first verdict
        deadline = time.monotonic() + 90
        while (health := engine("inspect", "--format", "{{.State.Health.Status}}", name).stdout.strip()) == "starting":
            assert time.monotonic() < deadline
            time.sleep(2)
        assert health == "healthy"
    engine("stop", "--time", "20", name)
    assert engine("inspect", "--format", "{{.State.ExitCode}}", name).stdout.strip() == "0"  # SIGTERM: a clean exit

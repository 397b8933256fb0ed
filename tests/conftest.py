"""Shared fixtures: synthetic AnnData, the shared real h5ad files, the demo data."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def free_port() -> int:
    """A free TCP port on loopback, for a server a test starts."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def defaults_params(folder: str | Path) -> str:
    """A params file that sets nothing: every setting at its built-in default, whatever the
    repository's params.yaml says (a --params file that does not exist is an error)."""
    path = Path(folder) / "defaults.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("{}\n")
    return str(path)


def make_adata(
    n_cells: int = 60,
    n_genes: int = 80,
    *,
    n_donors: int = 3,
    n_types: int = 5,
    sparse: str | None = "csr",
    seed: int = 0,
    with_batch: bool = False,
    ensembl_suffix: bool = False,
):
    """A small labelled AnnData in the CELLxGENE schema, with marker genes per type."""
    import anndata as ad
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    types = np.array([f"type {chr(65 + i)}" for i in range(n_types)])
    cell_type = types[np.arange(n_cells) % n_types]
    donor = np.array([f"donor{i % n_donors}" for i in range(n_cells)])
    x = rng.poisson(0.3, size=(n_cells, n_genes)).astype(np.float32)
    for t in range(n_types):  # genes 3t..3t+2 mark type t
        x[cell_type == types[t], 3 * t : 3 * t + 3] += 20 + 3 * np.arange(3)[::-1]
    obs = pd.DataFrame(
        {
            "cell_type": pd.Categorical(cell_type),
            "donor_id": pd.Categorical(donor),
            "sex": np.where(np.arange(n_cells) % 2, "female", "unknown"),
            "development_stage": "45-year-old stage",
            "self_reported_ethnicity": "na",
            "tissue": "blood",
            "disease": "normal",
            "suspension_type": "cell",
        },
        index=[f"c{i}" for i in range(n_cells)],
    )
    if with_batch:
        obs["batch"] = np.where(np.arange(n_cells) % 4 < 2, "b1", "b2")
    symbols = [f"G{i}" for i in range(n_genes)]
    if ensembl_suffix:
        symbols = [f"{s}_ENSG{100000 + i:011d}" for i, s in enumerate(symbols)]
    var = pd.DataFrame({"feature_name": symbols}, index=[f"ENSG{100000 + i:011d}" for i in range(n_genes)])
    matrix = {"csr": sp.csr_matrix, "csc": sp.csc_matrix, None: np.asarray}[sparse](x)
    return ad.AnnData(X=matrix, obs=obs, var=var)


@pytest.fixture
def adata_factory():
    return make_adata


@pytest.fixture
def shared_data() -> Path:
    """The shared real h5ad files; tests using it skip cleanly when they are absent."""
    path = SHARED / "data"
    if not any(path.glob("*.h5ad")):
        pytest.skip(f"no shared h5ad files at {path}")
    return path


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory) -> Path:
    """The demo data (cells, splits) built from builtin:pbmc68k through the CLI."""
    from cello.cli import main

    root = tmp_path_factory.mktemp("demo")
    params = ["--params", str(REPO / "params.yaml")]
    assert main(["data", "cells", "builtin:pbmc68k", "-o", str(root / "cells.parquet"), *params]) == 0
    assert main(["data", "split", str(root / "cells.parquet"), "-o", str(root / "splits"), *params]) == 0
    return root


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny Qwen2-architecture model built offline, once per test session."""
    from tests.llm_server import build_test_model

    return build_test_model(tmp_path_factory.getbasetemp())


def hub_cache(model_dir: Path, root: Path, repos: tuple[str, ...] = ("cello-test/tiny-cell",)) -> Path:
    """A Hugging Face Hub cache under `root` holding `model_dir` as each of `repos`: with the Hub
    offline (HF_HUB_OFFLINE, HF_HUB_CACHE=the returned folder), hf://REPO resolves the way a
    downloaded model does."""
    import shutil

    cache = root / "hub-cache"
    for repo_id in repos:
        repo = cache / ("models--" + repo_id.replace("/", "--"))
        sha = "0123456789abcdef0123456789abcdef01234567"
        shutil.copytree(model_dir, repo / "snapshots" / sha)
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text(sha)
    return cache


@pytest.fixture
def hub_model(tiny_model_dir, tmp_path, monkeypatch) -> str:
    """The tiny model as the Hub model hf://cello-test/tiny-cell, from a Hub cache in tmp, offline."""
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(hub_cache(tiny_model_dir, tmp_path)))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    return "hf://cello-test/tiny-cell"

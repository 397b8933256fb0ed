"""Reading CSR values in place (cello.data.h5map): the mapped bytes are exactly what h5py reads,
whatever the layout, and whatever cannot be mapped is read with h5py as before."""

from __future__ import annotations

import mmap

import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from cello.config import CellsConfig
from cello.data.cells import make_cells
from cello.data.h5map import DatasetMap
from cello.data.sources import CSRGroupReader, open_h5ad
from tests.conftest import make_adata


def _pieces(dataset, lo, hi):
    mapped = DatasetMap.of(dataset)
    with open(dataset.file.filename, "rb") as f:
        return mapped.pieces(f.fileno(), lo, hi)


def _views_a_mapping(array) -> bool:
    while isinstance(array, np.ndarray):
        array = array.base
    return isinstance(array, memoryview) and isinstance(array.obj, mmap.mmap)


def _rewrite_x_in_runs(path, *, data_chunk=37, indices_chunk=53, rounds=40):
    """Rewrite the CSR X of an .h5ad so that its values lie in many short runs: data and indices
    are appended in turns, so their chunks alternate in the file and break at other places."""
    with h5py.File(path, "r+") as f:
        x = f["X"]
        data, indices = x["data"][:], x["indices"][:]
        for name, values, chunk in (("data", data, data_chunk), ("indices", indices, indices_chunk)):
            del x[name]
            x.create_dataset(name, shape=(0,), maxshape=(None,), dtype=values.dtype, chunks=(chunk,))
        for part in np.array_split(np.arange(len(data)), rounds):
            for name, values in (("data", data), ("indices", indices)):
                ds = x[name]
                ds.resize((part[-1] + 1,))
                ds[part[0] : part[-1] + 1] = values[part]
                f.flush()


def test_a_contiguous_dataset_is_one_run(tmp_path):
    path = tmp_path / "plain.h5"
    values = np.random.default_rng(0).random(5000).astype(np.float32)
    with h5py.File(path, "w", userblock_size=1024) as f:  # offsets count the user block
        f.create_dataset("v", data=values)
    with h5py.File(path) as f:
        mapped = DatasetMap.of(f["v"])
        assert mapped is not None and len(mapped.starts) == 1
        assert np.array_equal(np.concatenate(_pieces(f["v"], 17, 4321)), values[17:4321])


def test_chunks_in_many_runs_read_back_exactly_and_writable(tmp_path):
    path = tmp_path / "runs.h5"
    values = np.arange(20_000, dtype=np.int64)
    with h5py.File(path, "w") as f:
        a = f.create_dataset("a", shape=(0,), maxshape=(None,), dtype=np.int64, chunks=(100,))
        b = f.create_dataset("b", shape=(0,), maxshape=(None,), dtype=np.int64, chunks=(100,))
        for lo in range(0, len(values), 700):  # a and b alternate in the file
            for ds in (a, b):
                ds.resize((min(lo + 700, len(values)),))
                ds[lo:] = values[lo : lo + 700]
                f.flush()  # chunks are placed in the file when they leave HDF5's cache
    with h5py.File(path) as f:
        mapped = DatasetMap.of(f["a"])
        assert mapped is not None and len(mapped.starts) > 10
        rng = np.random.default_rng(1)
        for lo, hi in [(0, 20_000), (699, 701), (700, 1400), (5, 6), *rng.integers(0, 20_000, (40, 2))]:
            lo, hi = sorted((int(lo), int(hi)))
            pieces = _pieces(f["a"], lo, hi)
            assert len(pieces) == len(mapped.breaks(lo, hi)) + 1
            assert np.array_equal(np.concatenate(pieces), values[lo:hi])
        view = _pieces(f["a"], 0, 100)[0]
        view[:] = -1  # a copy-on-write view: the file is never written
    with h5py.File(path) as f:
        assert np.array_equal(f["a"][:100], values[:100])


@pytest.mark.parametrize(
    "create",
    [
        pytest.param(lambda f, v: f.create_dataset("v", data=v, compression="gzip"), id="compressed"),
        pytest.param(lambda f, v: f.create_dataset("v", data=v, chunks=(64,), shuffle=True), id="shuffled"),
        pytest.param(lambda f, v: f.create_dataset("v", data=v.astype(">f4")), id="big-endian"),
        pytest.param(lambda f, v: f.create_dataset("v", shape=v.shape, dtype=v.dtype), id="never-written"),
        pytest.param(lambda f, v: f.create_dataset("v", shape=v.shape, dtype=v.dtype, chunks=(64,)).__setitem__(
            slice(0, 100), v[:100]), id="chunks-missing"),
        pytest.param(lambda f, v: f.create_dataset("v", data=v.reshape(10, -1)), id="2-d"),
    ],
)
def test_what_cannot_be_read_in_place_is_not_mapped(tmp_path, create):
    with h5py.File(tmp_path / "x.h5", "w") as f:
        create(f, np.arange(1000, dtype=np.float32))
    with h5py.File(tmp_path / "x.h5") as f:
        assert DatasetMap.of(f["v"]) is None


def test_mapped_blocks_are_the_rows_h5py_reads(tmp_path):
    adata = make_adata(n_cells=300, n_genes=90, sparse="csr", seed=5)
    x = adata.X.tolil()
    x[40:60] = 0  # empty rows, some at run edges
    adata.X = x.tocsr()
    path = tmp_path / "runs.h5ad"
    adata.write_h5ad(path)
    _rewrite_x_in_runs(path)
    with h5py.File(path) as f:
        reader = CSRGroupReader(f["X"], *adata.shape)
        try:
            assert reader._maps is not None and all(len(m.starts) > 20 for m in reader._maps)
            rng = np.random.default_rng(2)
            for start, stop in [(0, 300), (40, 60), (39, 61), *rng.integers(0, 301, (60, 2))]:
                start, stop = sorted((int(start), int(stop)))
                blocks = reader.blocks(start, stop)
                assert sum(b.shape[0] for b in blocks) == stop - start
                # Only a row that straddles two runs is copied; other blocks view the file.
                assert all(_views_a_mapping(b.data) for b in blocks if b.shape[0] > 1 and b.nnz)
                stacked = sp.vstack(blocks, format="csr") if blocks else None
                assert (stacked != reader.rows(start, stop)).nnz == 0
                assert np.array_equal(stacked.indices, reader.rows(start, stop).indices)
        finally:
            reader.close()


def test_cells_are_the_same_read_in_place_or_through_hdf5(tmp_path):
    """The stage's output does not depend on how X is stored: in many runs (mapped), compressed
    (read with h5py), or as AnnData writes it (mapped, one run per chunk index node)."""
    adata = make_adata(n_cells=400, n_genes=120, sparse="csr", seed=7)
    paths = {name: tmp_path / f"{name}.h5ad" for name in ("runs", "gzip", "plain")}
    adata.write_h5ad(paths["runs"])
    _rewrite_x_in_runs(paths["runs"], data_chunk=29, indices_chunk=41, rounds=11)
    adata.write_h5ad(paths["gzip"], compression="gzip")
    adata.write_h5ad(paths["plain"])
    mapped = {}
    for name, path in paths.items():
        with open_h5ad(str(path)) as (_, _, _, reader):
            mapped[name] = reader._maps is not None
    assert mapped == {"runs": True, "gzip": False, "plain": True}
    frames = []
    for name, path in paths.items():
        make_cells([str(path)], tmp_path / f"{name}.parquet", cfg=CellsConfig(top_n=30, chunk_size=37))
        frames.append(pd.read_parquet(tmp_path / f"{name}.parquet").drop(columns=["cell_id", "dataset"]))
    for other in frames[1:]:
        pd.testing.assert_frame_equal(other, frames[0])


def test_a_file_system_that_cannot_map_files_is_read_with_h5py(tmp_path, monkeypatch):
    import cello.data.h5map as h5map

    adata = make_adata(n_cells=120, n_genes=60, sparse="csr", seed=9)
    path = tmp_path / "x.h5ad"
    adata.write_h5ad(path)
    make_cells([str(path)], tmp_path / "mapped.parquet", cfg=CellsConfig(top_n=10, chunk_size=16))

    def no_mmap(*args, **kwargs):
        raise OSError(19, "No such device")  # what mmap says on a file system without it

    monkeypatch.setattr(h5map.mmap, "mmap", no_mmap)
    with open_h5ad(str(path)) as (_, _, _, reader):
        assert reader._maps is None and reader._file is None
    make_cells([str(path)], tmp_path / "read.parquet", cfg=CellsConfig(top_n=10, chunk_size=16))
    read, mapped = (pd.read_parquet(tmp_path / f"{name}.parquet") for name in ("read", "mapped"))
    pd.testing.assert_frame_equal(read, mapped)


@pytest.mark.parametrize("compression", [None, "gzip"], ids=["mapped", "read"])
@pytest.mark.parametrize("corrupt", ["past-the-end", "decreasing", "values-and-indices-differ"])
def test_a_corrupt_csr_index_is_a_clear_error_not_a_read_past_the_values(tmp_path, compression, corrupt):
    from cello.errors import InputError

    path = tmp_path / "x.h5ad"
    make_adata(n_cells=80, sparse="csr", seed=2).write_h5ad(path, compression=compression)
    with h5py.File(path, "r+") as f:
        x = f["X"]
        if corrupt == "past-the-end":
            x["indptr"][-1] = x["indptr"][-1] + 10_000
        elif corrupt == "decreasing":
            x["indptr"][40] = 0
        else:
            indices = x["indices"][:-1]
            del x["indices"]
            x.create_dataset("indices", data=indices)
    out = tmp_path / "cells.parquet"
    with pytest.raises(InputError, match="corrupt"):
        make_cells([str(path)], out, cfg=CellsConfig(top_n=10, chunk_size=16))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.h5ad"]

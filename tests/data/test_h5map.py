"""Reading CSR values in place (cello.data.h5map): the mapped bytes are exactly what h5py reads,
whatever the layout, and whatever cannot be mapped is read with h5py as before."""

from __future__ import annotations

import mmap
import os

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


def _fd(dataset) -> int:
    return dataset.file.id.get_vfd_handle()


def _map_of(dataset):
    return DatasetMap.of(dataset, _fd(dataset))


def _pieces(dataset, lo, hi):
    return _map_of(dataset).mapped(_fd(dataset), lo, hi).pieces(lo, hi)


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
        mapped = _map_of(f["v"])
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
        mapped = _map_of(f["a"])
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
        assert _map_of(f["v"]) is None


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
            views = 0
            for start, stop in [(0, 300), (40, 60), (39, 61), *rng.integers(0, 301, (60, 2))]:
                start, stop = sorted((int(start), int(stop)))
                blocks = reader.blocks(start, stop)
                assert sum(b.shape[0] for b in blocks) == stop - start
                # Mapped (runs close enough, or few): only a row that straddles two runs is
                # copied, other blocks view the file. Else the rows are read with h5py.
                ptr = reader._indptr_slice(start, stop)
                if all(m.mapped(reader._fd, int(ptr[0]), int(ptr[-1])) for m in reader._maps):
                    assert all(_views_a_mapping(b.data) for b in blocks if b.shape[0] > 1 and b.nnz)
                    views += 1
                else:
                    assert len(blocks) == 1 and not _views_a_mapping(blocks[0].data)
                stacked = sp.vstack(blocks, format="csr")
                assert (stacked != reader.rows(start, stop)).nnz == 0
                assert np.array_equal(stacked.indices, reader.rows(start, stop).indices)
            assert views > 20  # both cases were seen
        finally:
            reader.close()


def test_cells_are_the_same_read_in_place_or_through_hdf5(tmp_path, monkeypatch):

    """The stage's output does not depend on how X is stored: in many runs (mapped), compressed
    (read with h5py), or as AnnData writes it (mapped; one run in a file this small). Ranked with
    numpy and with the compiled kernel."""
    import cello.data.cells as cells_mod

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
    for compiled_from in (10**9, 1):
        monkeypatch.setattr(cells_mod, "COMPILED_FROM_CELLS", compiled_from)
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
        assert reader._maps is None and reader._fd is None
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


def _mapping(array):
    while isinstance(array, np.ndarray):
        array = array.base
    return array.obj


def test_runs_close_together_are_mapped_once_and_scattered_ones_are_not_mapped_one_by_one(tmp_path, monkeypatch):
    """A dataset written at once has its chunks back to back but for HDF5's index nodes (as
    AnnData writes X): a range over several runs is one mapping, one file descriptor. Runs far
    apart get a mapping each, up to a few; beyond that the range is not mapped at all."""
    import cello.data.h5map as h5map

    values = np.arange(40_000, dtype=np.float32)
    with h5py.File(tmp_path / "x.h5", "w") as f:
        f.create_dataset("close", data=values, chunks=(50,))
        apart = f.create_dataset("apart", shape=(0,), maxshape=(None,), dtype=np.float32, chunks=(50,))
        other = f.create_dataset("other", shape=(0,), maxshape=(None,), dtype=np.float32, chunks=(5_000,))
        for lo in range(0, len(values), 500):  # 80 KB of another dataset between runs of 2 KB
            apart.resize((lo + 500,))
            apart[lo:] = values[lo : lo + 500]
            other.resize((other.shape[0] + 20_000,))
            other[-20_000:] = 1.0
            f.flush()
    monkeypatch.setattr(h5map, "_GAP_BYTES", 64 << 10)  # (1 MiB by default: this file is small)
    with h5py.File(tmp_path / "x.h5") as f:
        close, apart = _map_of(f["close"]), _map_of(f["apart"])
        assert len(close.breaks(0, 40_000)) >= 5
        whole = close.mapped(_fd(f["close"]), 0, 40_000)
        assert len({id(_mapping(piece)) for piece in whole.pieces(0, 40_000)}) == 1
        assert np.array_equal(np.concatenate(whole.pieces(123, 39_999)), values[123:39_999])
        few = apart.mapped(_fd(f["apart"]), 250, 2_750)  # 6 runs
        assert len({id(_mapping(piece)) for piece in few.pieces(250, 2_750)}) == 6
        assert np.array_equal(np.concatenate(few.pieces(250, 2_750)), values[250:2_750])
        assert apart.mapped(_fd(f["apart"]), 0, 40_000) is None


def test_blocks_hold_few_file_descriptors_whatever_the_layout(tmp_path):
    """Each mapping holds a descriptor: rows over scattered runs are read, not mapped run by run."""
    adata = make_adata(n_cells=300, n_genes=90, sparse="csr", seed=5)
    path = tmp_path / "runs.h5ad"
    adata.write_h5ad(path)
    _rewrite_x_in_runs(path, data_chunk=7, indices_chunk=11, rounds=150)
    with h5py.File(path) as f:
        reader = CSRGroupReader(f["X"], *adata.shape)
        try:
            before = len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else None
            held = [reader.blocks(r, r + 100) for r in range(0, 300, 100)]
            if before is not None:
                assert len(os.listdir("/proc/self/fd")) - before <= 3 * 2 * 8
            stacked = sp.vstack([b for blocks in held for b in blocks], format="csr")
            assert (stacked != adata.X).nnz == 0
        finally:
            reader.close()


def test_a_file_renamed_over_while_open_is_still_the_one_read(tmp_path):
    """The values are mapped through the descriptor HDF5 reads with, not the path: a new file
    renamed over the old one (how tools write) does not mix into the one being read."""
    old, new = make_adata(n_cells=200, sparse="csr", seed=1), make_adata(n_cells=200, sparse="csr", seed=2)
    path, other = tmp_path / "x.h5ad", tmp_path / "new.h5ad"
    old.write_h5ad(path)
    new.write_h5ad(other)
    with h5py.File(path) as f:
        reader = CSRGroupReader(f["X"], *old.shape)
        try:
            assert reader._maps is not None
            os.replace(other, path)
            stacked = sp.vstack(reader.blocks(0, 200), format="csr")
            assert (stacked != old.X).nnz == 0
        finally:
            reader.close()


@pytest.mark.filterwarnings("ignore:Element .* was written without encoding metadata")
def test_obs_in_the_older_dataframe_encoding_is_read_whole(tmp_path):
    """anndata's 0.1.0 dataframes keep categoricals' categories in a shared group that only a
    whole read applies: reading selected columns would give codes for labels."""
    from cello.data.sources import _read_elem

    with h5py.File(tmp_path / "legacy.h5ad", "w") as f:
        obs = f.create_group("obs")
        obs.attrs.update({"encoding-type": "dataframe", "encoding-version": "0.1.0", "_index": "_index"})
        obs.attrs["column-order"] = np.array(["cell_type"], dtype=h5py.string_dtype())
        obs.create_dataset("_index", data=np.array(["c0", "c1", "c2"], dtype=h5py.string_dtype()))
        categories = obs.create_group("__categories")
        categories.create_dataset("cell_type", data=np.array(["B cell", "T cell"], dtype=h5py.string_dtype()))
        codes = obs.create_dataset("cell_type", data=np.array([0, 1, 1], np.int8))
        codes.attrs["categories"] = categories["cell_type"].ref
    with h5py.File(tmp_path / "legacy.h5ad") as f:
        assert list(_read_elem(f, "obs", "x", {"cell_type"})["cell_type"]) == ["B cell", "T cell", "T cell"]

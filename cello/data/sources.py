"""Where cells come from: .h5ad files read lazily from disk, or a built-in dataset.

`open_h5ad` reads obs and var with AnnData's element reader and leaves the expression matrix
on disk (its CSR datasets directly, mapped where stored uncompressed; AnnData's sparse
dataset for CSC, h5py for dense), so rows are read chunk by chunk.
`open_builtin("builtin:pbmc68k")` turns the real PBMC dataset shipped inside scanpy (700
cells, 10 types in `bulk_labels`, one donor) into the same CELLxGENE-like shape, so the
demo needs no download.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Collection, Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from cello.data.h5map import DatasetMap
from cello.errors import InputError

log = logging.getLogger(__name__)

BUILTIN_PREFIX = "builtin:"
BUILTINS = {"pbmc68k": "pbmc68k_reduced"}


class MatrixReader:
    """Row-chunk access to an expression matrix (in memory or on disk)."""

    def __init__(self, matrix, n_obs: int, n_vars: int):
        self.matrix, self.n_obs, self.n_vars = matrix, n_obs, n_vars

    def rows(self, start: int, stop: int):
        """Rows [start, stop) as a scipy CSR matrix or a dense ndarray."""
        block = self.matrix[start:stop]
        if sp.issparse(block):
            return block.tocsr()
        return np.asarray(block)

    def blocks(self, start: int, stop: int) -> list:
        """Rows [start, stop) as consecutive blocks (one here; see `CSRGroupReader`)."""
        return [self.rows(start, stop)]

    def close(self) -> None:
        """Release what the reader holds open."""


class CSRGroupReader(MatrixReader):
    """Rows of an on-disk CSR group read straight from its three HDF5 datasets: one slice of
    indptr, data and indices per chunk. AnnData's sparse dataset does the same, plus checks
    that cost as much as the read itself at chunk sizes of a few thousand rows.

    Where data and indices are stored uncompressed, `blocks` does not read them at all: it maps
    them (`cello.data.h5map`), so rows come as views of the page cache, split where the file
    stores the values in separate runs (a row that straddles two runs is copied, alone)."""

    def __init__(self, group, n_obs: int, n_vars: int):
        super().__init__(group, n_obs, n_vars)
        self._data, self._indices, self._indptr = group["data"], group["indices"], group["indptr"]
        if self._data.shape != self._indices.shape:
            msg = (
                f"{group.file.filename}: {group.name} stores {self._data.shape} values but {self._indices.shape} "
                "indices; the file is corrupt: re-export it with anndata."
            )
            raise InputError(msg)
        self._maps, self._fd = None, None
        try:  # the descriptor HDF5 reads through (the sec2 driver's), so a rename cannot swap files
            self._fd = os.dup(group.file.id.get_vfd_handle())
        except (OSError, TypeError, ValueError) as exc:
            log.debug("%s: no file descriptor to map (%s); reading it with h5py", group.file.filename, exc)
            return
        maps = (DatasetMap.of(self._data, self._fd), DatasetMap.of(self._indices, self._fd))
        try:  # a file system that cannot map files: read with h5py
            if None not in maps and all(m.mapped(self._fd, 0, 1) for m in maps):
                self._maps = maps
        except (OSError, ValueError) as exc:
            log.debug("%s: cannot be mapped (%s); reading it with h5py", group.file.filename, exc)
        if self._maps is None:
            self.close()

    def _indptr_slice(self, start: int, stop: int) -> np.ndarray:
        """indptr[start:stop + 1], checked: a corrupt one must not read (or map) past the values."""
        indptr = self._indptr[start : stop + 1].astype(np.int64)
        nnz = self._data.shape[0]
        if len(indptr) != stop - start + 1 or indptr[0] < 0 or indptr[-1] > nnz or (np.diff(indptr) < 0).any():
            msg = (
                f"{self._data.file.filename}: {self._indptr.name} is not a valid CSR row index for rows "
                f"{start}-{stop} ({nnz} stored values); the file is corrupt: re-export it with anndata."
            )
            raise InputError(msg)
        return indptr

    def rows(self, start: int, stop: int) -> sp.csr_matrix:
        indptr = self._indptr_slice(start, stop)
        lo, hi = int(indptr[0]), int(indptr[-1])
        return sp.csr_matrix((self._data[lo:hi], self._indices[lo:hi], indptr - lo), shape=(stop - start, self.n_vars))

    def blocks(self, start: int, stop: int) -> list[sp.csr_matrix]:
        if self._maps is None:
            return [self.rows(start, stop)]
        indptr = self._indptr_slice(start, stop)
        lo, hi = int(indptr[0]), int(indptr[-1])
        ranges = [m.mapped(self._fd, lo, hi) for m in self._maps]
        if None in ranges:  # runs scattered over the file: a copy is cheaper than many mappings
            return [self.rows(start, stop)]
        # Block edges: a row whose values begin at a break starts a block; a row with a break
        # inside its values is a block of its own (the only values copied).
        edges = {0, stop - start}
        for mapped in ranges:
            for element in mapped.edges[1:-1]:  # where a new run starts
                row = int(np.searchsorted(indptr, element, side="right")) - 1
                edges.update((row, row + 1) if indptr[row] != element else (row,))
        edges = sorted(edges)
        if len(edges) == 1:  # no rows
            return [self._block(ranges, indptr)]
        return [self._block(ranges, indptr[a : b + 1]) for a, b in zip(edges[:-1], edges[1:], strict=True)]

    def _block(self, ranges: list, indptr: np.ndarray) -> sp.csr_matrix:
        lo, hi = int(indptr[0]), int(indptr[-1])
        data, indices = (np.concatenate(p) if len(p) > 1 else p[0] for p in (r.pieces(lo, hi) for r in ranges))
        return sp.csr_matrix((data, indices, indptr - lo), shape=(len(indptr) - 1, self.n_vars))

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _read_elem(h5, key: str, source: str, columns: Collection[str] | None = None):
    """An element of the file; for a dataframe with `columns`, only those the file has, so that
    columns nobody uses (CELLxGENE's per-cell `observation_joinid`, ontology ids, QC metrics) are
    never read. `attrs["columns_in_file"]` then names all of them, for error messages."""
    import anndata as ad
    import h5py

    if key not in h5:
        msg = f"{source}: the file has no '{key}' element; is it a complete .h5ad written by anndata?"
        raise InputError(msg)
    elem = h5[key]
    # Only the current dataframe encoding stores each column whole (in 0.1.0, categoricals keep
    # their categories in a shared group that only a whole read applies).
    current = isinstance(elem, h5py.Group) and elem.attrs.get("encoding-version") == "0.2.0"
    if columns is None or not current or elem.attrs.get("encoding-type") != "dataframe":
        return ad.io.read_elem(elem)
    in_file, columns = [str(c) for c in elem.attrs["column-order"]], set(columns)
    wanted = [c for c in in_file if c in columns]
    frame = pd.DataFrame(
        {c: ad.io.read_elem(elem[c]) for c in wanted},
        index=_read_names(elem[elem.attrs["_index"]]),
        columns=wanted or None,
    )
    if elem.attrs["_index"] != "_index":
        frame.index.name = elem.attrs["_index"]  # as anndata names it
    frame.attrs["columns_in_file"] = in_file
    return frame


def count_cells(path: str) -> int | None:
    """The number of cells of an .h5ad file, from the length of its obs names, without reading
    anything else; None where that cannot be read (`open_h5ad` then says what is wrong)."""
    import h5py

    try:
        with h5py.File(path, "r") as h5:
            obs = h5["obs"]
            return int(obs[obs.attrs["_index"]].shape[0])
    except Exception:  # noqa: BLE001  only a hint: open_h5ad reports the real problem
        return None


def _read_names(ds) -> pd.Index:
    """A dataframe's index (the obs names): a string dataset goes to Arrow through numpy's
    StringDType (numpy 2, h5py >= 3.14), with no Python string per name: 200,000 obs names in
    ~50 instead of ~100 ms, and the cell ids are made from Arrow anyway. Anything else (or an
    older numpy or h5py) through AnnData's reader."""
    import anndata as ad
    import h5py
    import pyarrow as pa

    if getattr(ds, "ndim", None) == 1 and h5py.check_string_dtype(ds.dtype) is not None:
        try:
            values = ds.astype("T")[()]
        except Exception as exc:  # noqa: BLE001  no StringDType here: AnnData's reader says what is wrong, if anything
            log.debug("%s: not read as StringDType (%s)", ds.name, exc)
        else:
            return pd.Index(pd.arrays.ArrowStringArray(pa.array(values, pa.large_string())))
    return pd.Index(ad.io.read_elem(ds))


@contextlib.contextmanager
def open_h5ad(
    path: str, *, matrix: str = "X", obs_columns: Collection[str] | None = None
) -> Iterator[tuple[str, pd.DataFrame, pd.DataFrame, MatrixReader]]:
    """Yield (dataset name, obs, var, reader) for an .h5ad file; X stays on disk. With
    `obs_columns`, obs holds only those of them the file has (see `_read_elem`)."""
    import anndata as ad
    import h5py

    source = str(path)
    try:
        h5 = h5py.File(source, "r")
    except OSError as exc:
        msg = (
            f"{source}: cannot be read as an .h5ad (HDF5) file ({exc}); "
            "the file is corrupt or not h5ad: re-download or re-export it."
        )
        raise InputError(msg) from exc
    try:
        if matrix == "X":
            mkey, vkey = "X", "var"
        elif matrix == "raw":
            mkey, vkey = "raw/X", "raw/var"
        else:
            mkey, vkey = f"layers/{matrix}", "var"
        if mkey not in h5:
            layers = list(h5["layers"].keys()) if "layers" in h5 else []
            msg = (
                f"{source}: no matrix {matrix!r} ({mkey}); choose --matrix X"
                + (", raw" if "raw" in h5 else "")
                + "".join(f", {k}" for k in layers)
                + "."
            )
            raise InputError(msg)
        try:
            obs = _read_elem(h5, "obs", source, obs_columns)
            var = _read_elem(h5, vkey, source)
            elem = h5[mkey]
            if isinstance(elem, h5py.Group):
                encoding = elem.attrs.get("encoding-type", "")
                if encoding not in ("csr_matrix", "csc_matrix"):
                    msg = f"{source}: matrix {mkey} has unsupported encoding {encoding!r} (expected csr/csc or dense)."
                    raise InputError(msg)
                data = ad.io.sparse_dataset(elem)
                if encoding == "csc_matrix":
                    log.warning(
                        "%s: %s is stored column-wise (CSC): each row chunk reads the whole matrix; "
                        "rewrite it as CSR for large files.",
                        source,
                        mkey,
                    )
            else:
                data = elem
            n_obs, n_vars = data.shape
        except (KeyError, OSError, ValueError, TypeError) as exc:
            msg = f"{source}: the .h5ad file is malformed ({type(exc).__name__}: {exc}); re-export it with anndata."
            raise InputError(msg) from exc
        if n_obs != len(obs) or n_vars != len(var):
            msg = (
                f"{source}: matrix shape {(n_obs, n_vars)} does not match obs/var ({len(obs)}, {len(var)}); "
                "the file is corrupt."
            )
            raise InputError(msg)
        csr = isinstance(elem, h5py.Group) and elem.attrs.get("encoding-type", "") == "csr_matrix"
        reader = CSRGroupReader(elem, n_obs, n_vars) if csr else MatrixReader(data, n_obs, n_vars)
        try:
            yield Path(source).stem, obs, var, reader
        finally:
            reader.close()
    finally:
        h5.close()


@contextlib.contextmanager
def open_builtin(spec: str) -> Iterator[tuple[str, pd.DataFrame, pd.DataFrame, MatrixReader]]:
    """The bundled real dataset in the CELLxGENE shape: cell_type, donor_id, tissue; genes from .raw."""
    name = spec[len(BUILTIN_PREFIX) :]
    if name not in BUILTINS:
        msg = f"unknown built-in source {spec!r}; available: {', '.join(BUILTIN_PREFIX + k for k in BUILTINS)}."
        raise InputError(msg)
    import scanpy as sc

    adata = sc.datasets.pbmc68k_reduced()
    raw = adata.raw
    obs = pd.DataFrame(
        {
            "cell_type": adata.obs["bulk_labels"].astype(str).to_numpy(),
            "donor_id": BUILTINS[name],  # one donor: the whole dataset is one group
            "tissue": "blood",  # peripheral blood mononuclear cells
        },
        index=adata.obs_names,
    )
    var = pd.DataFrame(index=raw.var_names)
    yield BUILTINS[name], obs, var, MatrixReader(raw.X, raw.X.shape[0], raw.X.shape[1])

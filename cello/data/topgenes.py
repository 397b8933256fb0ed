"""Top-N expressed genes per cell.

The ranking rule (the same for CSR, CSC and dense input): genes with a stored non-zero,
finite value, highest value first (compared as float32), ties broken by the lower gene index;
a cell with fewer than N expressed genes gets fewer genes. Zeros are never ranked: a dense
row's zero entries carry no information, and an arbitrary pick among them would make the
output depend on the format.

`pad_unexpressed` gives the original Cell-o1 shape on request: always N genes. A cell with k < N
expressed genes is filled up with the first N - k unexpressed genes in the file's gene order
(lowest gene index first). The original takes them from `np.argpartition` over the zeros, whose
order is an accident of the algorithm; a fixed order keeps the lists reproducible.

The ranking is one compiled pass per row (numba, already installed with scanpy): each stored
value is compared with the N-th best so far and, rarely, inserted into a sorted run of N. That
reads every value once (~3x faster than the vectorised numpy passes it replaced, which needed a
dozen passes over the values) and releases the GIL, so `cello data cells`' threads rank chunks
in parallel. The compiled code is cached on disk (numba's cache: next to this file, else the
user's cache directory; without either it compiles in memory once per process).
"""

from __future__ import annotations

import warnings

import numba
import numpy as np
import scipy.sparse as sp


def _jit(fn):
    """`numba.njit` without the GIL, cached on disk where a cache directory can be written."""
    try:
        return numba.njit(nogil=True, cache=True)(fn)
    except RuntimeError:  # read-only install and no writable user cache: compile in memory
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", numba.NumbaWarning)
            return numba.njit(nogil=True)(fn)


@_jit
def _push(value, gene, best_values, best_genes, k, top_n):
    """Insert (value, gene) into the sorted run of the k best so far if it belongs there; new k."""
    if k == top_n:
        last = best_values[k - 1]
        if not (value > last or (value == last and gene < best_genes[k - 1])):
            return k
        pos = k - 1
    else:
        pos = k
        k += 1
    while pos > 0 and (value > best_values[pos - 1] or (value == best_values[pos - 1] and gene < best_genes[pos - 1])):
        best_values[pos] = best_values[pos - 1]
        best_genes[pos] = best_genes[pos - 1]
        pos -= 1
    best_values[pos] = value
    best_genes[pos] = gene
    return k


@_jit
def _rank_csr(data, indices, indptr, top_n, out):
    best_values = np.empty(top_n, np.float32)
    best_genes = np.empty(top_n, np.int64)
    for row in range(len(indptr) - 1):
        k = 0
        for j in range(indptr[row], indptr[row + 1]):
            value = data[j]
            if value != 0 and np.isfinite(value):
                k = _push(value, np.int64(indices[j]), best_values, best_genes, k, top_n)
        out[row, :k] = best_genes[:k]


@_jit
def _rank_dense(block, top_n, out):
    best_values = np.empty(top_n, np.float32)
    best_genes = np.empty(top_n, np.int64)
    for row in range(block.shape[0]):
        k = 0
        for gene in range(block.shape[1]):
            value = block[row, gene]
            if value != 0 and np.isfinite(value):
                k = _push(value, np.int64(gene), best_values, best_genes, k, top_n)
        out[row, :k] = best_genes[:k]


def top_genes(block, top_n: int) -> np.ndarray:
    """Gene indices (rows x top_n, int64, -1 where a cell has fewer expressed genes) of a block
    of cells: scipy sparse of any format, or dense."""
    if top_n < 1:
        msg = f"top_n must be at least 1, got {top_n}."
        raise ValueError(msg)
    out = np.full((block.shape[0], top_n), -1, dtype=np.int64)
    if sp.issparse(block):
        block = block.tocsr()
        # One set of argument types, so one compiled specialisation (the one `warm_up` loads).
        data = np.asarray(block.data, dtype=np.float32)
        indices = np.asarray(block.indices, dtype=np.int32)
        indptr = np.asarray(block.indptr, dtype=np.int64)
        _rank_csr(data, indices, indptr, top_n, out)
    else:
        _rank_dense(np.ascontiguousarray(block, dtype=np.float32), top_n, out)
    return out


def warm_up() -> None:
    """Load (or compile) the ranking kernels now: ~0.3 s from numba's cache, a few seconds on the
    first run after an install. `cello data cells` calls it in a thread while it reads obs/var."""
    top_genes(sp.csr_matrix(np.ones((1, 1), dtype=np.float32)), 1)
    top_genes(np.ones((1, 1), dtype=np.float32), 1)


def pad_unexpressed(tops: np.ndarray, n_genes: int) -> np.ndarray:
    """Fill the -1 slots of `top_genes` output with unexpressed genes, lowest gene index first.

    A row with k expressed genes needs N - k fillers, and they all lie among the first
    N + k <= 2N gene indices, so one boolean block of width 2N finds them without a per-cell loop.
    """
    top_n = tops.shape[1]
    missing = (tops < 0).sum(axis=1)
    rows = np.flatnonzero(missing)
    if rows.size == 0:
        return tops
    if n_genes < top_n:
        msg = f"cannot pad to {top_n} genes from {n_genes}: lower top_n to at most {n_genes}."
        raise ValueError(msg)
    width = min(n_genes, 2 * top_n)
    sub = tops[rows]
    taken = np.zeros((len(rows), width), dtype=bool)
    r, c = np.nonzero((sub >= 0) & (sub < width))
    taken[r, sub[r, c]] = True
    free = ~taken
    # The j-th free gene of a row goes to its j-th empty slot (empty slots are the row's last ones).
    rank = np.cumsum(free, axis=1)
    r, gene = np.nonzero(free & (rank <= missing[rows, None]))
    out = tops.copy()
    out[rows[r], top_n - missing[rows[r]] + rank[r, gene] - 1] = gene
    return out


def top_genes_reference(row: np.ndarray, top_n: int, *, pad: bool = False) -> list[int]:
    """Per-cell reference of the same rule (tests and the benchmark baseline use it)."""
    row = np.asarray(row, dtype=np.float32).ravel()
    ranked = (row != 0) & np.isfinite(row)
    nz = np.flatnonzero(ranked)
    order = np.lexsort((nz, -row[nz]))  # value descending, then gene index ascending
    out = nz[order[:top_n]].tolist()
    if pad:
        out += np.flatnonzero(~ranked)[: top_n - len(out)].tolist()
    return out

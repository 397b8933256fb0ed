"""The compiled top-N ranking (numba): one pass per cell over its stored values.

Each value is compared with the N-th best so far and, rarely, inserted into a sorted run of N.
That reads every value once (against a dozen vectorised passes in `cello.data.topgenes`' numpy
path) and releases the GIL, so threads rank chunks in parallel: about 3x less CPU per value.
Importing and loading it costs ~0.3-0.5 s per process (numba's start-up, then its on-disk cache:
next to this file, else the user's cache directory; without either it compiles in memory), so
`cello.data.topgenes` uses it only when asked to (large files).
"""

from __future__ import annotations

import numba
import numpy as np
import scipy.sparse as sp


def _jit(fn):
    """`numba.njit` without the GIL, cached on disk where a cache directory can be written."""
    try:
        return numba.njit(nogil=True, cache=True)(fn)
    except RuntimeError:  # read-only install and no writable user cache: compile in memory
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


def top_genes_compiled(block, top_n: int) -> np.ndarray:
    """`cello.data.topgenes.top_genes` with the compiled kernels (same rule, same output)."""
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
    """Load (or compile) both kernels for the argument types `top_genes_compiled` passes."""
    top_genes_compiled(sp.csr_matrix(np.ones((1, 1), dtype=np.float32)), 1)
    top_genes_compiled(np.ones((1, 1), dtype=np.float32), 1)

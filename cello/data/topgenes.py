"""Top-N expressed genes per cell, vectorised over a block of rows.

The ranking rule (the same for CSR, CSC and dense input): genes with a stored non-zero,
finite value, highest value first, ties broken by the lower gene index; a cell with fewer than N
expressed genes gets fewer genes. Zeros are never ranked: a dense row's zero entries carry no
information, and an arbitrary pick among them would make the output depend on the format.

The trick that makes this one vectorised pass: each (value, gene) pair becomes one uint64 key
whose order is (value, then lower gene index first), so "top N by value with a deterministic
tie-break" is "the N largest keys", found with `np.partition` over a padded 2-D block in
O(nnz) instead of a sort per cell.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

_MAX_BLOCK = 1 << 24  # elements in one padded key block (128 MiB of uint64)


def _sortable_bits(values: np.ndarray) -> np.ndarray:
    """float32 -> uint32 with the same order (negative values included)."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    neg = bits >= np.uint32(0x80000000)
    if not neg.any():  # the usual case: counts or log-normalised values
        return bits | np.uint32(0x80000000)
    return np.where(neg, ~bits, bits | np.uint32(0x80000000))


def _keys(values: np.ndarray, genes: np.ndarray) -> np.ndarray:
    """uint64 keys ordered by value, then by lower gene index; always > 0."""
    hi = _sortable_bits(values).astype(np.uint64) << np.uint64(32)
    return hi | (np.uint64(0xFFFFFFFF) - genes.astype(np.uint64))


def _decode_genes(keys: np.ndarray) -> np.ndarray:
    return (np.uint64(0xFFFFFFFF) - (keys & np.uint64(0xFFFFFFFF))).astype(np.int64)


def _top_of_padded(keys2d: np.ndarray, top_n: int) -> np.ndarray:
    """Largest `top_n` keys of each row, descending (in place; pad 0 stays last)."""
    width = keys2d.shape[1]
    if width > top_n:
        keys2d.partition(width - top_n, axis=1)
        keys2d = keys2d[:, width - top_n :]
    keys2d.sort(axis=1)
    return keys2d[:, ::-1]


def top_genes_csr(block: sp.csr_matrix, top_n: int) -> np.ndarray:
    """Gene indices (rows x top_n, int64, -1 where a cell has fewer expressed genes).

    Rows are grouped by their number of stored values into power-of-two width classes, so
    the padded key blocks waste at most half their space even when a few cells detect many
    more genes than the rest.
    """
    block = block.tocsr()
    n_rows = block.shape[0]
    out = np.full((n_rows, top_n), -1, dtype=np.int64)
    if n_rows == 0 or block.nnz == 0:
        return out
    data, indices, indptr = block.data, block.indices, block.indptr
    keys = _keys(data, indices)
    unranked = (data == 0) | ~np.isfinite(data)
    if unranked.any():  # explicit zeros (and NaN/inf) are stored but not expressed
        keys[unranked] = 0
    counts = np.diff(indptr)
    width_class = np.ceil(np.log2(np.maximum(counts, 1))).astype(np.int64)
    for k in np.unique(width_class):
        width = 1 << int(k)
        rows_k = np.flatnonzero(width_class == k)
        step = max(1, _MAX_BLOCK // width)
        for s in range(0, len(rows_k), step):
            rows = rows_k[s : s + step]
            c = counts[rows]
            first = np.cumsum(c) - c  # where each row's values start in the gathered run
            run = np.arange(int(c.sum()))
            src = run + np.repeat(indptr[rows] - first, c)
            dest = run + np.repeat(np.arange(len(rows)) * width - first, c)
            keys2d = np.zeros((len(rows), width), dtype=np.uint64)
            keys2d.ravel()[dest] = keys[src]
            top = _top_of_padded(keys2d, top_n)
            out[rows, : top.shape[1]] = np.where(top > 0, _decode_genes(top), -1)
    return out


def top_genes_dense(block: np.ndarray, top_n: int) -> np.ndarray:
    """Same as `top_genes_csr` for a dense 2-D block."""
    block = np.asarray(block, dtype=np.float32)
    n_rows, n_genes = block.shape
    out = np.full((n_rows, top_n), -1, dtype=np.int64)
    step = max(1, _MAX_BLOCK // max(n_genes, 1))
    genes_idx = np.arange(n_genes)
    for start in range(0, n_rows, step):
        sub = block[start : start + step]
        keys2d = _keys(sub, np.broadcast_to(genes_idx, sub.shape)).reshape(sub.shape)
        keys2d[(sub == 0) | ~np.isfinite(sub)] = 0
        top = _top_of_padded(keys2d, top_n)
        out[start : start + step, : top.shape[1]] = np.where(top > 0, _decode_genes(top), -1)
    return out


def top_genes(block, top_n: int) -> np.ndarray:
    """Dispatch on the block type (scipy sparse of any format, or dense)."""
    if sp.issparse(block):
        return top_genes_csr(block.tocsr(), top_n)
    return top_genes_dense(block, top_n)


def top_genes_reference(row: np.ndarray, top_n: int) -> list[int]:
    """Per-cell reference of the same rule (tests and the benchmark baseline use it)."""
    row = np.asarray(row, dtype=np.float32).ravel()
    nz = np.flatnonzero((row != 0) & np.isfinite(row))
    order = np.lexsort((nz, -row[nz]))  # value descending, then gene index ascending
    return nz[order[:top_n]].tolist()

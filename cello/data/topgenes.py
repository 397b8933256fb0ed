"""Top-N expressed genes per cell, vectorised over a block of rows.

The ranking rule (the same for CSR, CSC and dense input): genes with a stored non-zero,
finite value, highest value first, ties broken by the lower gene index; a cell with fewer than N
expressed genes gets fewer genes. Zeros are never ranked: a dense row's zero entries carry no
information, and an arbitrary pick among them would make the output depend on the format.

`pad_unexpressed` gives the original Cell-o1 shape on request: always N genes. A cell with k < N
expressed genes is filled up with the first N - k unexpressed genes in the file's gene order
(lowest gene index first). The original takes them from `np.argpartition` over the zeros, whose
order is an accident of the algorithm; a fixed order keeps the lists reproducible.

The trick that makes this one vectorised pass: each (value, gene) pair becomes one uint64 key
whose order is (value, then lower gene index first), so "top N by value with a deterministic
tie-break" is "the N largest keys", found with `np.partition` over a padded 2-D block in
O(nnz) instead of a sort per cell.

`top_genes(..., compiled=True)` ranks with a compiled kernel instead (`cello.data._kernels`,
numba): ~3.6 ns of CPU a stored value against ~18 ns here, but ~0.4-0.5 s to load per process.
`cello data cells` asks for it from `COMPILED_FROM_CELLS` cells on, where it pays (the whole
stage on a synthetic file of ~760 genes a cell, 2 cores, alternating runs, medians of 7:
50,000 cells 1.27 s against 2.21 s with numpy). Both paths give the same output; the tests hold
both to the per-cell reference.
"""

from __future__ import annotations

import functools
import logging
import threading

import numpy as np
import scipy.sparse as sp

log = logging.getLogger(__name__)

COMPILED_FROM_CELLS = 50_000  # where the compiled kernel's loading cost is paid back (see above)

_MAX_BLOCK = 1 << 24  # elements in one padded key block (128 MiB of uint64)
_BIN_BITS = 10  # histogram bins of the coarse pre-filter (the keys' top bits)


def _sortable_bits(values: np.ndarray) -> np.ndarray:
    """float32 -> uint32 with the same order (negative values included)."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    neg = bits >= np.uint32(0x80000000)
    if not neg.any():  # the usual case: counts or log-normalised values
        return bits | np.uint32(0x80000000)
    return np.where(neg, ~bits, bits | np.uint32(0x80000000))


def _keys(values: np.ndarray, genes: np.ndarray) -> np.ndarray:
    """uint64 keys ordered by value, then by lower gene index; always > 0."""
    return _keys_of_bits(_sortable_bits(values), genes)


def _keys_of_bits(bits: np.ndarray, genes: np.ndarray) -> np.ndarray:
    """`_keys` from sortable value bits; bits 0 (a value that is not ranked) gives key 0."""
    keys = (bits.astype(np.uint64) << np.uint64(32)) | (np.uint64(0xFFFFFFFF) - genes.astype(np.uint64))
    keys[bits == 0] = 0
    return keys


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


def _coarse_threshold(bits: np.ndarray, counts: np.ndarray, top_n: int) -> tuple[np.ndarray, np.ndarray]:
    """Which stored values can be among their row's top `top_n` (a boolean mask over `bits`),
    and the row of each value kept.

    Every value falls in one of 1024 bins that keep the value order (the top 10 of its sortable
    bits: sign, exponent and first mantissa bit). A row's N-th largest value lies in the highest
    bin b whose count of values at or above b reaches N, so the values below b can never be in
    the top N: one histogram pass drops most of a long row before the exact ranking."""
    n_rows = len(counts)
    row = np.repeat(np.arange(n_rows, dtype=np.int32), counts)
    bins = (bits >> np.uint32(32 - _BIN_BITS)).astype(np.int32)
    low = bins.min()
    bins -= low  # only the bins in use: counts or log-normalised values span a few dozen
    width = int(bins.max()) + 1
    cut = np.empty(n_rows, dtype=np.int32)
    step = max(1, _MAX_BLOCK // width)
    for r0 in range(0, n_rows, step):
        r1 = min(r0 + step, n_rows)
        lo, hi = np.searchsorted(row, [r0, r1])
        hist = np.bincount((row[lo:hi] - r0) * width + bins[lo:hi], minlength=(r1 - r0) * width)
        from_top = np.cumsum(hist.reshape(r1 - r0, width)[:, ::-1], axis=1)  # values in the top b+1 bins
        cut[r0:r1] = width - 1 - (from_top < top_n).sum(axis=1)  # -1: fewer than N values, keep them all
    keep = bins >= cut[row]
    return keep, row[keep]


def top_genes_csr(block: sp.csr_matrix, top_n: int) -> np.ndarray:
    """Gene indices (rows x top_n, int64, -1 where a cell has fewer expressed genes).

    Rows longer than 2N first lose the values that cannot reach their top N
    (`_coarse_threshold`); the rest are grouped by their number of stored values into
    power-of-two width classes, so the padded key blocks waste at most half their space even
    when a few cells detect many more genes than the rest.
    """
    block = block.tocsr()
    n_rows = block.shape[0]
    out = np.full((n_rows, top_n), -1, dtype=np.int64)
    if n_rows == 0 or block.nnz == 0:
        return out
    data, indices, indptr = block.data, block.indices, block.indptr
    bits = _sortable_bits(data)
    if not (data.min() > 0 and np.isfinite(data.max())):  # two reductions spare the usual case 3 passes
        unranked = (data == 0) | ~np.isfinite(data)
        if unranked.any():  # explicit zeros (and NaN/inf) are stored but not expressed: bits 0, key 0
            bits = np.where(unranked, np.uint32(0), bits)
    counts = np.diff(indptr)
    if counts.max() > 2 * top_n:
        keep, row = _coarse_threshold(bits, counts, top_n)
        counts = np.bincount(row, minlength=n_rows)
        bits, indices = bits[keep], indices[keep]
        indptr = np.concatenate([[0], np.cumsum(counts)])
    keys = _keys_of_bits(bits, indices)
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


def top_genes(block, top_n: int, *, compiled: bool = False) -> np.ndarray:
    """Gene indices (rows x top_n, int64, -1 where a cell has fewer expressed genes) of a block
    of cells (scipy sparse of any format, or dense); `compiled`: with the numba kernel, where
    it loads (else numpy, saying why once)."""
    if top_n < 1:
        msg = f"top_n must be at least 1, got {top_n}."
        raise ValueError(msg)
    kernels = _compiled_kernels() if compiled else None
    if kernels is not None:  # it checks the genes' order as it ranks (no pass of its own)
        return kernels.top_genes_compiled(block, top_n)
    if sp.issparse(block):
        block = block.tocsr()
        if not block.has_canonical_format:  # a gene stored twice in a row counts once, summed (as toarray)
            block = block.copy()
            block.sum_duplicates()
        return top_genes_csr(block, top_n)
    return top_genes_dense(block, top_n)


_LOADING = threading.Lock()  # threads that ask while the kernel loads wait for it


@functools.cache
def _compiled_kernels():
    """The kernel module, loaded once per process; None where numba is missing or fails."""
    with _LOADING:
        try:
            from cello.data import _kernels

            _kernels.warm_up()
        except Exception as exc:  # an optional speed-up: the numpy path gives the same output
            why = f"{type(exc).__name__}: {exc}"
            log.warning("the compiled top-N kernel is unavailable (%s); ranking with numpy", why)
            return None
        return _kernels


def load_compiled_in_background() -> None:
    """Start loading the compiled kernel in a thread, so that its ~0.4 s overlap the caller's
    own start-up (reading obs). Most of it holds the GIL, but not LLVM's part nor the BLAS
    threads scipy starts on the way, which then use the idle core (measured, the whole stage
    at 200,000 cells: 1.39 -> 1.30 s and 1.41 -> 1.35 s in two A/B runs; 50,000: ~0.05 s).
    `top_genes(..., compiled=True)` waits for it."""
    threading.Thread(target=_compiled_kernels, name="cello-kernel-load").start()


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

"""The compiled top-N ranking (numba): a couple of passes per cell over its stored values, no GIL.

A CSR row is ranked in three steps. A strided sample of its values (every 7th for N=50) gives a
threshold that about 2.5N of the row's values reach; one branch-free pass copies the row's keys
and keeps those at or above it; an in-place quickselect (branch-free partitions) then an
insertion sort order the best N.
If the sample was unlucky (fewer than N values reached its threshold: ~0.1% of rows), the row is
taken whole. A key packs (value, gene) into one uint64 ordered by value, then by lower gene index,
so every comparison is one integer comparison and the tie rule holds by construction.
The hot loops index with unsigned integers: numba gives a signed index Python's meaning (a
negative one counts from the end), a check on every access that cost ~20% of the kernel.
Dense rows (mostly zeros) keep a sorted run of the N best instead.

This reads every value about once (against a dozen vectorised passes in `cello.data.topgenes`'
numpy path) and releases the GIL, so threads rank chunks in parallel: ~3.6 ns a value (most of
it the one pass over the values), about 5x less CPU than numpy. Importing and loading it
costs ~0.4-0.5 s per process (numba's start-up, then its on-disk cache: next to this file, else
the user's cache directory; without either it compiles in memory), so `cello.data.topgenes` uses
it only when asked to (large files).
"""

from __future__ import annotations

import numba
import numpy as np
import scipy.sparse as sp


def _jit(fn=None, **options):
    """`numba.njit` without the GIL, cached on disk where a cache directory can be written."""
    if fn is None:
        return lambda f: _jit(f, **options)
    try:
        return numba.njit(nogil=True, cache=True, **options)(fn)
    except RuntimeError:  # read-only install and no writable user cache: compile in memory
        return numba.njit(nogil=True, **options)(fn)


_SAMPLED = 16  # sampled values above the threshold: the threshold's spread is ~1/sqrt(16) of its rank


@_jit(inline="always")
def _key(bits, gene):
    """uint64 ordered by the float32 value (given as its bits), then by lower gene index."""
    bits = ~bits if bits & np.uint32(0x80000000) else bits | np.uint32(0x80000000)
    return (np.uint64(bits) << np.uint64(32)) | np.uint64(np.uint32(0xFFFFFFFF) - np.uint32(gene))


@_jit(inline="always")
def _ranked(value):
    """A stored value takes part in the ranking: non-zero and finite."""
    return (value != 0) & np.isfinite(value)


@_jit(inline="always")
def _gene_of(key):
    return np.int64(np.uint32(0xFFFFFFFF) - np.uint32(key & np.uint64(0xFFFFFFFF)))


@_jit(inline="always")
def _row_keys(data, bits, indices, lo, hi, threshold, buf):
    """Put the keys >= threshold among stored values [lo, hi) in buf[:m]; return m, or -1 where
    the row's genes are not strictly increasing (a gene stored twice, or unsorted: the caller
    ranks the canonical form instead). Branch-free: each key is written at buf[m] and m moves
    on only past one that is kept, so the next key overwrites the others (a value that is not
    ranked gets key 0, below every threshold)."""
    m = np.uint64(0)
    previous = -1
    increasing = True
    for j in range(np.uint64(lo), np.uint64(hi)):
        gene = indices[j]
        increasing &= gene > previous
        previous = gene
        key = _key(bits[j], gene) if _ranked(data[j]) else np.uint64(0)
        buf[m] = key
        m += np.uint64(key >= threshold)
    return np.int64(m) if increasing else -1


@_jit(inline="always")
def _sample_threshold(data, bits, indices, lo, hi, step, sample, r):
    """The `r`-th largest key among every `step`-th stored value (1: fewer were ranked). The
    sampled keys are gathered without a branch, then selected like the row's candidates."""
    k = np.uint64(0)
    for j in range(np.uint64(lo), np.uint64(hi), np.uint64(step)):
        key = _key(bits[j], indices[j]) if _ranked(data[j]) else np.uint64(0)
        sample[k] = key
        k += np.uint64(key != 0)
    k = np.int64(k)
    if k < r:
        return np.uint64(1)
    _select_largest(sample, k, r)
    return sample[r - 1]


@_jit(inline="always")
def _partition(buf, lo, hi):
    """Partition buf[lo:hi + 1] around the median of its first, middle and last keys: larger
    keys first; return where the pivot lands. Branch-free (each key is swapped to the front
    and the front moves on only past a larger one), so unsorted keys cost no mispredictions."""
    mid = (lo + hi) >> np.uint64(1)
    a, b, c = buf[lo], buf[mid], buf[hi]
    p = lo if (a > b) != (a > c) else (mid if (b > a) != (b > c) else hi)
    pivot = buf[p]
    buf[p] = buf[hi]
    buf[hi] = pivot
    front = lo
    for i in range(lo, hi):
        key = buf[i]
        buf[i] = buf[front]
        buf[front] = key
        front += np.uint64(key > pivot)
    buf[hi] = buf[front]
    buf[front] = pivot
    return front


@_jit(inline="always")
def _select_largest(buf, m, top_n):
    """Move the `top_n` largest of buf[:m] to buf[:top_n], the `top_n`-th at buf[top_n - 1]
    (in place: quickselect)."""
    lo, hi, kth = np.uint64(0), np.uint64(m - 1), np.uint64(top_n - 1)  # unsigned: no index wrap-around
    while lo < hi:
        p = _partition(buf, lo, hi)
        if p == kth:
            return
        if p > kth:
            hi = p - np.uint64(1)
        else:
            lo = p + np.uint64(1)


@_jit(inline="always")
def _sort_descending(buf, k):
    """Insertion sort of buf[:k], largest first (k <= N: a few hundred moves)."""
    for a in range(1, k):
        key = buf[a]
        b = a - 1
        while b >= 0 and buf[b] < key:
            buf[b + 1] = buf[b]
            b -= 1
        buf[b + 1] = key


@_jit
def _rank_csr(data, bits, indices, indptr, top_n, out):
    """Rank every row into `out`; return -1, or the first row whose genes are not strictly
    increasing (then the rows from it on are left for the caller)."""
    width = 1
    for row in range(len(indptr) - 1):
        width = max(width, indptr[row + 1] - indptr[row])
    buf = np.empty(width, np.uint64)
    r = min(_SAMPLED, top_n)
    step = max(1, (5 * top_n) // (2 * r))  # ~2.5 N values reach the sample's threshold
    sample = np.empty(width // step + 1, np.uint64)
    for row in range(len(indptr) - 1):
        lo, hi = indptr[row], indptr[row + 1]
        threshold = np.uint64(1)  # every ranked value's key is above 1
        if hi - lo > 3 * top_n:
            threshold = _sample_threshold(data, bits, indices, lo, hi, step, sample, r)
        m = _row_keys(data, bits, indices, lo, hi, threshold, buf)
        if m < 0:
            return row
        if m < top_n and threshold > 1:  # an unlucky sample: take the whole row
            m = _row_keys(data, bits, indices, lo, hi, np.uint64(1), buf)
        if m > top_n:
            _select_largest(buf, m, top_n)
            m = top_n
        _sort_descending(buf, m)
        for i in range(m):
            out[row, i] = _gene_of(buf[i])
    return -1


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
def _rank_dense(block, top_n, out):
    best_values = np.empty(top_n, np.float32)
    best_genes = np.empty(top_n, np.int64)
    for row in range(block.shape[0]):
        k = 0
        for gene in range(block.shape[1]):
            value = block[row, gene]
            if _ranked(value):
                k = _push(value, np.int64(gene), best_values, best_genes, k, top_n)
        out[row, :k] = best_genes[:k]


def top_genes_compiled(block, top_n: int) -> np.ndarray:
    """`cello.data.topgenes.top_genes` with the compiled kernels (same rule, same output)."""
    out = np.full((block.shape[0], top_n), -1, dtype=np.int64)
    if sp.issparse(block):
        block = block.tocsr()
        stopped = _rank_csr_block(block, top_n, out)
        if stopped >= 0:  # a gene stored twice (or unsorted): as `toarray` reads it, summed once
            rest = block[stopped:].copy()
            rest.sum_duplicates()
            _rank_csr_block(rest, top_n, out[stopped:])
    else:
        _rank_dense(np.ascontiguousarray(block, dtype=np.float32), top_n, out)
    return out


def _rank_csr_block(block, top_n: int, out: np.ndarray) -> int:
    # One set of argument types, so one compiled specialisation (the one `warm_up` loads).
    # Aligned and contiguous too: a view of a mapped file could be neither (a copy then).
    data = np.require(block.data, np.float32, "CA")
    indices = np.require(block.indices, np.int32, "CA")
    indptr = np.asarray(block.indptr, dtype=np.int64)
    return _rank_csr(data, data.view(np.uint32), indices, indptr, top_n, out)


def warm_up() -> None:
    """Load (or compile) both kernels for the argument types `top_genes_compiled` passes."""
    top_genes_compiled(sp.csr_matrix(np.ones((1, 1), dtype=np.float32)), 1)
    top_genes_compiled(np.ones((1, 1), dtype=np.float32), 1)

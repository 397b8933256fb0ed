"""Read an HDF5 dataset's stored bytes in place: memory-mapped views instead of copies.

An uncompressed dataset (no filters: how AnnData writes a CSR matrix unless asked to compress)
keeps its values in the file as they are, in contiguous runs of chunks. Mapping those bytes
lets the ranking threads read the page cache directly: no copy into a fresh buffer, no HDF5
call per chunk, nothing done while holding the GIL. At 200,000 cells (1.2 GB of values) that
is ~0.7 CPU s of reading in the main thread replaced by ~0.1 s of page faults spread over the
ranking threads (see benchmarks/bench_data.py).

The file is mapped through the descriptor HDF5 already holds, so a file replaced by a rename
(how DVC, anndata and most tools write) is safe: the mapping keeps reading the file that was
opened. A file truncated or rewritten in place while it is read stops the process with SIGBUS
instead of an error, as with any mapped reader.

`DatasetMap.of(dataset, fileno)` says whether a dataset can be mapped (None otherwise: filters,
another byte order, external or virtual storage, missing chunks, a driver other than the
default one, or a mapping that does not read back what h5py reads); `mapped(fileno, lo, hi)`
maps elements [lo, hi) (one mapping where their runs lie close together in the file, as AnnData
writes them), and its `pieces(a, b)` are writable copy-on-write views, one per run crossed.
"""

from __future__ import annotations

import itertools
import logging
import mmap
import os
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)

_GRANULARITY = mmap.ALLOCATIONGRANULARITY
# Chunk tables are read with HDF5's chunk iterator (one call); without it (HDF5 < 1.14), one
# call per chunk costs ~0.1 ms, so only datasets with few chunks are mapped.
_MAX_CHUNKS_ONE_BY_ONE = 1024
# Runs of one range are mapped at once where the bytes between them (HDF5's chunk index nodes,
# ~2 KB) are at most this share of the range or 1 MiB; else one mapping per run, up to
# _MAX_RUNS_APART of them (each holds a file descriptor), and beyond that the range is not mapped.
_GAP_SHARE, _GAP_BYTES, _MAX_RUNS_APART = 8, 1 << 20, 8


@dataclass(frozen=True)
class DatasetMap:
    """Where a 1-D dataset's elements lie in its file: runs of elements stored back to back.

    `starts[i]` is the first element of run i, `offsets[i]` its byte offset in the file; run i
    ends where run i + 1 starts (the last one at `size`)."""

    dtype: np.dtype
    size: int
    starts: np.ndarray
    offsets: np.ndarray

    @classmethod
    def of(cls, dataset, fileno: int) -> DatasetMap | None:
        """The map of an h5py dataset whose file is open as `fileno`, or None where its bytes
        cannot be read in place."""
        try:
            found = cls._locate(dataset)
            if found is None or not found._reads_like(dataset, fileno):
                return None
        except (AttributeError, NotImplementedError, OSError, RuntimeError, ValueError) as exc:
            log.debug("%s: not mapped (%s: %s)", dataset.name, type(exc).__name__, exc)
            return None
        return found

    @classmethod
    def _locate(cls, dataset) -> DatasetMap | None:
        from h5py import h5d

        dtype = dataset.dtype
        if dataset.ndim != 1 or dataset.size == 0 or not dtype.isnative or dtype.kind not in "iuf":
            return None
        if dataset.file.driver != "sec2":  # the default driver: one file, addresses are its offsets
            return None
        plist = dataset.id.get_create_plist()
        if plist.get_nfilters() or plist.get_external_count():
            return None
        layout = plist.get_layout()
        if layout == h5d.CONTIGUOUS:
            offset = dataset.id.get_offset()
            if offset is None:  # never written: reads as the fill value
                return None
            return cls(dtype, dataset.size, np.zeros(1, np.int64), np.array([offset], np.int64))
        if layout != h5d.CHUNKED:  # compact (in the header) or virtual (other datasets)
            return None
        chunk = dataset.chunks[0]
        n_chunks = -(-dataset.size // chunk)
        infos: list = []
        if hasattr(dataset.id, "chunk_iter"):
            dataset.id.chunk_iter(infos.append)
        elif n_chunks <= _MAX_CHUNKS_ONE_BY_ONE:
            infos = [dataset.id.get_chunk_info(i) for i in range(dataset.id.get_num_chunks())]
        else:
            return None
        if len(infos) != n_chunks:  # a chunk never written reads as the fill value
            return None
        first = np.array([info.chunk_offset[0] for info in infos], np.int64)
        offsets = np.array([info.byte_offset for info in infos], np.int64)
        sizes = np.array([info.size for info in infos], np.int64)
        order = np.argsort(first, kind="stable")
        first, offsets, sizes = first[order], offsets[order], sizes[order]
        if not (first == np.arange(n_chunks) * chunk).all() or (sizes != chunk * dtype.itemsize).any():
            return None
        # A new run starts wherever a chunk does not follow the previous one in the file.
        new_run = np.concatenate([[True], offsets[1:] != offsets[:-1] + sizes[:-1]])
        return cls(dtype, dataset.size, first[new_run], offsets[new_run])

    def _reads_like(self, dataset, fileno: int) -> bool:
        """Whether the mapped bytes are what h5py reads, at the edges of every run (a cheap
        guard against a layout this module misreads: it then reads with h5py instead)."""
        positions = np.unique(np.concatenate([self.starts, self.starts[1:] - 1, [self.size - 1]]))
        if len(positions) > 64:
            positions = np.unique(np.concatenate([positions[:32], positions[-32:]]))
        size = self.dtype.itemsize
        for pos in positions.tolist():
            stored = os.pread(fileno, size, self._offset(pos))
            if stored != dataset[pos : pos + 1].tobytes():
                log.debug("%s: the mapped bytes differ from h5py's at %d; not mapped", dataset.name, pos)
                return False
        return True

    def _offset(self, element: int) -> int:
        run = int(np.searchsorted(self.starts, element, side="right") - 1)
        return int(self.offsets[run]) + (element - int(self.starts[run])) * self.dtype.itemsize

    def breaks(self, lo: int, hi: int) -> np.ndarray:
        """Elements in (lo, hi) where a new run starts: [lo, hi) is one piece only without them."""
        inner = self.starts[1:]
        return inner[(inner > lo) & (inner < hi)]

    def mapped(self, fileno: int, lo: int, hi: int) -> MappedRange | None:
        """Elements [lo, hi) mapped from the file, or None where their runs lie too far apart."""
        edges = np.concatenate([[lo], self.breaks(lo, hi), [hi]]).tolist()
        size = self.dtype.itemsize
        spans = [(self._offset(a), self._offset(a) + (b - a) * size) for a, b in itertools.pairwise(edges)]
        gaps = [start - end for (_, end), (start, _) in itertools.pairwise(spans)]
        if hi <= lo:  # (a mapping of length 0 would be the whole file)
            mappings = [(b"", spans[0][0])]
        elif min(gaps, default=0) >= 0 and sum(gaps) <= max((hi - lo) * size // _GAP_SHARE, _GAP_BYTES):
            mappings = [_map(fileno, spans[0][0], spans[-1][1])] * len(spans)
        elif len(spans) <= _MAX_RUNS_APART:
            mappings = [_map(fileno, start, end) for start, end in spans]
        else:
            return None
        return MappedRange(self.dtype, edges, [start for start, _ in spans], mappings)


@dataclass(frozen=True)
class MappedRange:
    """Mapped elements of a dataset: run i holds elements [edges[i], edges[i + 1]), stored from
    file offset `offsets[i]` on, in `mappings[i]` (a mapping and the file offset it begins at)."""

    dtype: np.dtype
    edges: list[int]
    offsets: list[int]
    mappings: list[tuple]

    def pieces(self, a: int, b: int) -> list[np.ndarray]:
        """Elements [a, b) (within the mapped range), one array per run they cross. Each views
        the mapping directly (not as a slice of a larger array, which scipy would copy), is
        writable copy-on-write (a write would never reach the file), so it types like any other
        array; a mapping is released with the last array viewing it."""
        size, out = self.dtype.itemsize, []
        for i, (start, stop) in enumerate(itertools.pairwise(self.edges)):
            first, last = max(a, start), min(b, stop)
            if last > first:
                mapping, base = self.mappings[i]
                offset = self.offsets[i] + (first - start) * size - base
                out.append(np.frombuffer(mapping, self.dtype, count=last - first, offset=offset))
        return out or [np.empty(0, self.dtype)]


def _map(fileno: int, start: int, end: int) -> tuple[mmap.mmap, int]:
    """A private mapping of the file's bytes [start, end), and the file offset it begins at."""
    base = start - start % _GRANULARITY
    return mmap.mmap(fileno, end - base, offset=base, access=mmap.ACCESS_COPY), base

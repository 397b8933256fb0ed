"""Read an HDF5 dataset's stored bytes in place: memory-mapped views instead of copies.

An uncompressed dataset (no filters: how AnnData writes a CSR matrix unless asked to compress)
keeps its values in the file as they are, in contiguous runs of chunks. Mapping those bytes
lets the ranking threads read the page cache directly: no copy into a fresh buffer, no HDF5
call per chunk, nothing done while holding the GIL. At 200,000 cells (1.2 GB of values) that
is ~0.7 CPU s of reading in the main thread replaced by ~0.3 s of page faults spread over the
ranking threads (see benchmarks/bench_data.py).

A file replaced by a rename (how DVC, anndata and most tools write) is safe: the mapping keeps
the old file. A file truncated or rewritten in place while it is read stops the process with
SIGBUS instead of an error, as with any mapped reader.

`DatasetMap.of(dataset)` says whether a dataset can be mapped (None otherwise: filters,
another byte order, external or virtual storage, missing chunks, a driver other than the
default one, or a mapping that does not read back what h5py reads); `pieces(lo, hi)` gives
elements [lo, hi) as read-only arrays, one per physically contiguous run they cross.
"""

from __future__ import annotations

import logging
import mmap
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)

_GRANULARITY = mmap.ALLOCATIONGRANULARITY
# Chunk tables are read with HDF5's chunk iterator (one call); without it (HDF5 < 1.14), one
# call per chunk costs ~0.1 ms, so only datasets with few chunks are mapped.
_MAX_CHUNKS_ONE_BY_ONE = 1024


@dataclass(frozen=True)
class DatasetMap:
    """Where a 1-D dataset's elements lie in its file: runs of elements stored back to back.

    `starts[i]` is the first element of run i, `offsets[i]` its byte offset in the file; run i
    ends where run i + 1 starts (the last one at `size`)."""

    path: str
    dtype: np.dtype
    size: int
    starts: np.ndarray
    offsets: np.ndarray

    @classmethod
    def of(cls, dataset) -> DatasetMap | None:
        """The map of an h5py dataset, or None where its bytes cannot be read in place."""
        try:
            found = cls._locate(dataset)
        except (AttributeError, NotImplementedError, OSError, RuntimeError, ValueError) as exc:
            log.debug("%s: not mapped (%s: %s)", dataset.name, type(exc).__name__, exc)
            return None
        if found is None or not found._reads_like(dataset):
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
        path = dataset.file.filename
        layout = plist.get_layout()
        if layout == h5d.CONTIGUOUS:
            offset = dataset.id.get_offset()
            if offset is None:  # never written: reads as the fill value
                return None
            return cls(path, dtype, dataset.size, np.zeros(1, np.int64), np.array([offset], np.int64))
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
        return cls(path, dtype, dataset.size, first[new_run], offsets[new_run])

    def _reads_like(self, dataset) -> bool:
        """Whether the mapped bytes are what h5py reads, at the edges of every run (a cheap
        guard against a layout this module misreads: it then reads with h5py instead)."""
        positions = np.unique(np.concatenate([self.starts, self.starts[1:] - 1, [self.size - 1]]))
        if len(positions) > 64:
            positions = np.unique(np.concatenate([positions[:32], positions[-32:]]))
        with open(self.path, "rb") as f:
            for pos in positions:
                run = int(np.searchsorted(self.starts, pos, side="right") - 1)
                f.seek(int(self.offsets[run] + (pos - self.starts[run]) * self.dtype.itemsize))
                stored = np.frombuffer(f.read(self.dtype.itemsize), self.dtype)
                if stored.size != 1 or stored.tobytes() != dataset[int(pos) : int(pos) + 1].tobytes():
                    log.debug("%s: the mapped bytes differ from h5py's at %d; not mapped", dataset.name, pos)
                    return False
        return True

    def breaks(self, lo: int, hi: int) -> np.ndarray:
        """Elements in (lo, hi) where a new run starts: [lo, hi) is one piece only without them."""
        inner = self.starts[1:]
        return inner[(inner > lo) & (inner < hi)]

    def pieces(self, fileno: int, lo: int, hi: int) -> list[np.ndarray]:
        """Elements [lo, hi) as arrays viewing the mapped file, one per run crossed. The arrays
        are writable copy-on-write views (a write would never reach the file), so they type
        like any other array; each mapping is released when its array is."""
        if hi <= lo:
            return [np.empty(0, self.dtype)]  # (a mapping of length 0 would be the whole file)
        out = []
        edges = np.concatenate([[lo], self.breaks(lo, hi), [hi]])
        for a, b in zip(edges[:-1].tolist(), edges[1:].tolist(), strict=True):
            run = int(np.searchsorted(self.starts, a, side="right") - 1)
            start = int(self.offsets[run]) + (a - int(self.starts[run])) * self.dtype.itemsize
            aligned = start - start % _GRANULARITY
            length = start - aligned + (b - a) * self.dtype.itemsize
            view = mmap.mmap(fileno, length, offset=aligned, access=mmap.ACCESS_COPY)
            out.append(np.frombuffer(view, self.dtype, count=b - a, offset=start - aligned))
        return out

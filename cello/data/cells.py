"""h5ad -> cells.parquet: each cell's ranked top-N genes and its donor-context sentence.

    cello data cells data/raw/ -o data/cells.parquet --max-cells 20000
    cello data cells builtin:pbmc68k -o data/cells.parquet

Files are read in row chunks straight from HDF5 (uncompressed CSR values are mapped rather
than copied: `cello.data.h5map`), so peak memory depends on `chunk_size`, not on the number of
cells; several files are processed in parallel processes, each writing its own Parquet part,
merged at the end. Within a file, reading, ranking (`cello.data.topgenes`, in threads; compiled
for large files) and writing overlap. The output appears atomically: on any error nothing is left.

The output may also be a directory of parts, one per input file (`part-00000.parquet`, ...,
numbered by the input's position): `cello data cells atlas/ -o data/cells` writes them all, and
`make_cells_part` writes one, which is how a pipeline fans the files of a large atlas out over
a cluster and still produces the very same directory. `cello data puzzles` reads either form.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import re
import tempfile
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm.auto import tqdm

try:  # numpy's switch behind its NUMPY_MADVISE_HUGEPAGE variable (numpy.core before numpy 2)
    from numpy._core.multiarray import _set_madvise_hugepage
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import _set_madvise_hugepage

from cello._io import atomic_path
from cello.config import CellsConfig
from cello.data import schema as S
from cello.data.cells_table import chunk_table, conform, file_columns, parquet_writer
from cello.data.checks import check_cell_types, check_unique_datasets
from cello.data.context import clean_categorical, constant, context_columns, sentences
from cello.data.seeds import stable_seed
from cello.data.sources import BUILTIN_PREFIX, MatrixReader, count_cells, open_builtin, open_h5ad
from cello.data.topgenes import COMPILED_FROM_CELLS, load_compiled_in_background, pad_unexpressed, top_genes
from cello.errors import InputError

# Cells a Parquet row group holds (whole chunks): each row group stores the gene names again
# as its dictionary, so a row group per 4,096-cell chunk cost ~20% more writing and file size.
ROW_GROUP_CELLS = 32_768

log = logging.getLogger(__name__)

_ENSEMBL_SUFFIX = re.compile(r"^(.+?)[_|](ENS[A-Z]*G\d{6,}(?:\.\d+)?)$")


def strip_ensembl(names: np.ndarray) -> np.ndarray:
    """'CD3E_ENSG00000198851' -> 'CD3E'; other names unchanged."""
    return np.array([m.group(1) if (m := _ENSEMBL_SUFFIX.match(n)) else n for n in names], dtype=object)


@dataclass
class FileSummary:
    source: str
    dataset: str
    cells_in_file: int = 0
    kept: int = 0
    dropped_suspension: int = 0
    dropped_unlabelled: int = 0
    dropped_no_donor: int = 0
    dropped_subsample: int = 0
    dropped_no_expression: int = 0
    fewer_than_top_n: int = 0
    donors: int = 0
    groups: int = 0
    cell_types: int = 0


@dataclass
class CellsSummary:
    out: str
    files: list[FileSummary] = field(default_factory=list)
    padded: bool = False  # gene lists filled up to top_n with unexpressed genes

    @property
    def kept(self) -> int:
        return sum(f.kept for f in self.files)

    def to_dict(self) -> dict:
        return {"out": self.out, "cells": self.kept, "padded": self.padded, "files": [asdict(f) for f in self.files]}

    def render(self) -> str:
        lines = [f"{self.kept} cells from {len(self.files)} file(s) -> {self.out}"]
        for f in self.files:
            dropped = {k: v for k, v in asdict(f).items() if k.startswith("dropped_") and v}
            lines.append(
                f"  {f.dataset}: {f.kept}/{f.cells_in_file} cells, {f.donors} donors, "
                f"{f.groups} groups, {f.cell_types} cell types"
                + (f"; dropped {dropped}" if dropped else "")
                + (f"; {f.fewer_than_top_n} cells with fewer expressed genes than top_n"
                   + (" (padded with unexpressed genes)" if self.padded else "") if f.fewer_than_top_n else "")
            )
        return "\n".join(lines)


def resolve_inputs(inputs: list[str]) -> list[str]:
    """Expand directories (recursively) into .h5ad files; check that every input exists."""
    if not inputs:
        msg = "no input given: pass .h5ad files or directories, or builtin:pbmc68k."
        raise InputError(msg)
    out: list[str] = []
    for item in inputs:
        if item.startswith(BUILTIN_PREFIX):
            out.append(item)
            continue
        path = Path(item)
        if path.is_dir():
            found = sorted(str(p) for p in path.rglob("*.h5ad"))
            if not found:
                msg = f"{path}: directory holds no .h5ad file; point to .h5ad files or another directory."
                raise InputError(msg)
            out.extend(found)
        elif path.is_file():
            if path.suffix != ".h5ad":
                msg = f"{path}: not an .h5ad file (suffix {path.suffix!r}); convert it with anndata (adata.write_h5ad)."
                raise InputError(msg)
            out.append(str(path))
        else:
            msg = f"{path}: no such file or directory."
            raise InputError(msg)
    return out


def _obs_columns(cfg: CellsConfig) -> set[str]:
    """The obs columns the stage reads: labels, the suspension filter and the context fields."""
    keys = (cfg.cell_type_key, cfg.donor_key, cfg.batch_key, cfg.suspension_key)
    return {k for k in keys if k} | set(cfg.context_fields) | set(cfg.extra_context_fields)


def _labels(obs: pd.DataFrame, key: str, what: str, source: str) -> pd.Categorical:
    if key not in obs.columns:
        in_file = obs.attrs.get("columns_in_file", list(obs.columns))
        hint = [c for c in in_file if any(w in c.lower() for w in ("type", "label", "donor", "batch", "sample"))]
        msg = (
            f"{source}: obs has no column {key!r} for the {what}; set --{what.replace(' ', '-')}-key "
            f"(or data.cells.{what.replace(' ', '_')}_key in params.yaml). "
            f"Candidate columns: {hint or in_file[:20]}."
        )
        raise InputError(msg)
    return clean_categorical(obs[key])  # per category, never one string per cell


def _equals_ignoring_case(col: pd.Series, value: str) -> np.ndarray:
    """Per cell: does the column's text equal `value`, ignoring case (a categorical: per category)."""
    if isinstance(col.dtype, pd.CategoricalDtype):
        match = np.append(col.cat.categories.astype(str).str.lower() == value.lower(), False)  # -1: missing
        return match[col.cat.codes.to_numpy()]
    return col.astype(str).str.lower().to_numpy() == value.lower()


def _select_rows(obs: pd.DataFrame, cfg: CellsConfig, summary: FileSummary) -> tuple[np.ndarray, dict]:
    """Boolean mask of the cells to keep, and their labels (categoricals of cleaned text)."""
    n = len(obs)
    keep = np.ones(n, dtype=bool)
    if cfg.keep_suspension and cfg.suspension_key in obs.columns:
        ok = _equals_ignoring_case(obs[cfg.suspension_key], cfg.keep_suspension)
        summary.dropped_suspension = int((~ok).sum())
        keep &= ok
    cell_type = _labels(obs, cfg.cell_type_key, "cell type", summary.source)
    present = np.bincount(cell_type.codes, minlength=len(cell_type.categories)) > 0
    check_cell_types(cell_type.categories[present], source=summary.source, key=cfg.cell_type_key)
    summary.dropped_unlabelled = int((keep & (cell_type == "")).sum())
    keep &= cell_type != ""
    if cfg.donor_key:
        donor = _labels(obs, cfg.donor_key, "donor", summary.source)
        summary.dropped_no_donor = int((keep & (donor == "")).sum())
        keep &= donor != ""
    else:
        donor = constant(summary.dataset, n)
    batch = _labels(obs, cfg.batch_key, "batch", summary.source) if cfg.batch_key else constant("", n)
    if cfg.max_cells is not None and keep.sum() > cfg.max_cells:
        rng = np.random.default_rng(stable_seed(cfg.seed, summary.dataset))
        chosen = rng.choice(np.flatnonzero(keep), size=cfg.max_cells, replace=False)
        sub = np.zeros(n, dtype=bool)
        sub[chosen] = True
        summary.dropped_subsample = int(keep.sum() - cfg.max_cells)
        keep = sub
    return keep, {S.CELL_TYPE: cell_type, S.DONOR: donor, S.BATCH: batch}


def _cell_ids(index: pd.Index, source: str) -> pa.Array:
    """The obs names as an Arrow column, made unique: cell ids must be, the split relies on them
    (duplicates get '#<row>' appended)."""
    if isinstance(index.dtype, pd.StringDtype) and index.dtype.storage == "pyarrow":  # see sources._read_names
        names = pa.array(index.array).cast(pa.string())
    else:
        names = pa.array(index.astype(str).to_numpy(dtype=object), pa.string())
    if len(pc.unique(names)) == len(names):  # Arrow's hash: ~2x pandas' is_unique on 200,000 names
        return names
    dup = index.duplicated(keep=False)
    log.warning("%s: %d cells share an obs name; their ids get '#<row>' appended", source, int(dup.sum()))
    rows = pa.array(np.arange(len(index)).astype(str))
    return pc.if_else(pa.array(dup), pc.binary_join_element_wise(names, rows, "#"), names)


def _gene_names(var: pd.DataFrame, cfg: CellsConfig, source: str) -> np.ndarray:
    key = cfg.gene_symbols
    if key == "auto":
        key = "feature_name" if "feature_name" in var.columns else None
    if key:
        if key not in var.columns:
            msg = (
                f"{source}: var has no column {key!r} for gene symbols; set --gene-symbols to one of "
                f"{list(var.columns)[:20]}, or 'none' to use var_names."
            )
            raise InputError(msg)
        names = var[key].astype(object).to_numpy()
        fallback = var.index.to_numpy().astype(object)
        names = np.where(pd.isna(names) | (names == ""), fallback, names).astype(str)
    else:
        names = var.index.to_numpy().astype(str)
    return strip_ensembl(names)


def process_source(source: str, part: str, cfg: CellsConfig, *, progress: bool = False) -> FileSummary:
    """Rank the cells of one input and write them to the Parquet file `part`."""
    with _chunk_allocation():
        return _process_source(source, part, cfg, progress=progress)


@contextlib.contextmanager
def _chunk_allocation() -> Iterator[None]:
    """Allocation settings for a stream of chunk-sized buffers, restored afterwards.

    - Arrow buffers come from the system allocator: Arrow's default pool keeps freed chunk
      buffers, so its footprint would grow with the number of chunks (the system pool is also
      faster here).
    - numpy does not ask for transparent huge pages: every chunk allocates and frees arrays of
      megabytes from several threads, and where the kernel compacts memory for each huge page
      (THP defrag "madvise", a common default) that cost more than it saved (measured at
      200,000 cells: 1.3-1.6 -> 0.7 s of system time, ~12% of the stage's wall time).
    - Python's cyclic garbage collector is paused: the stage makes no cyclic garbage to speak of
      (8 objects for a whole file, at 50,000 as at 200,000 cells), but loading the ranking
      kernel creates enough objects to set off full collections, each walking every object of
      the process while holding the GIL (measured at 200,000 cells: ~0.11 s of collections,
      one full one 83 ms). Reference counting frees everything else as usual; what survives
      goes to the oldest generation, where the next full collection looks at it.
    """
    previous_pool = pa.default_memory_pool()
    pa.set_memory_pool(pa.system_memory_pool())
    previous_hugepage = _set_madvise_hugepage(False)
    collecting = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if collecting:
            if not gc.get_freeze_count():  # (nobody else's frozen objects to thaw by mistake)
                # What was made meanwhile and is still alive is mostly the kernel's code and
                # types, alive for good: the first young collection would walk it all (~40 ms).
                # Freezing then thawing moves every object to the oldest generation as it is.
                gc.freeze()
                gc.unfreeze()
            gc.enable()
        _set_madvise_hugepage(previous_hugepage)
        pa.set_memory_pool(previous_pool)


def _process_source(source: str, part: str, cfg: CellsConfig, *, progress: bool) -> FileSummary:
    if source.startswith(BUILTIN_PREFIX):
        handle = open_builtin(source)
    else:
        if (count_cells(source) or 0) >= COMPILED_FROM_CELLS:
            load_compiled_in_background()  # while obs is read
        handle = open_h5ad(source, matrix=cfg.matrix, obs_columns=_obs_columns(cfg))
    with handle as (dataset, obs, var, reader):
        reader: MatrixReader
        summary = FileSummary(source=source, dataset=dataset, cells_in_file=len(obs))
        names = _gene_names(var, cfg, source)
        if len(names) < cfg.top_n:
            msg = (
                f"{source}: only {len(names)} genes but top_n={cfg.top_n}; lower --top-n "
                f"(data.cells.top_n) to at most {len(names)}, or use a matrix with more genes (--matrix raw)."
            )
            raise InputError(msg)
        keep, labels = _select_rows(obs, cfg, summary)
        ctx = context_columns(obs, cfg.context_fields, cfg.extra_context_fields)
        context = sentences(ctx, extra=cfg.extra_context_fields)
        genes = pa.array(names, pa.string())
        columns = file_columns(_cell_ids(obs.index, source), labels, ctx, context, dataset)
        compiled = len(obs) >= COMPILED_FROM_CELLS

        def rank(r0: int, local: np.ndarray, blocks: list) -> tuple[pa.Table, dict]:
            """Rank one chunk (runs in a worker thread: numpy and the kernel release the GIL)."""
            parts, first = [], 0
            for block in blocks:  # consecutive rows; `local` (sorted) picks the kept ones among them
                n = block.shape[0]
                a, b = np.searchsorted(local, [first, first + n])
                if b > a:
                    picked = local[a:b] - first
                    parts.append(top_genes(block[picked] if b - a < n else block, cfg.top_n, compiled=compiled))
                first += n
            tops = parts[0] if len(parts) == 1 else np.concatenate(parts)
            expressed = (tops >= 0).sum(axis=1)
            ok = expressed > 0
            counts = {
                "dropped_no_expression": int((~ok).sum()),
                "fewer_than_top_n": int((ok & (expressed < cfg.top_n)).sum()),
            }
            rows, tops = r0 + local[ok], tops[ok]
            if cfg.pad_genes:
                tops = pad_unexpressed(tops, len(names))
            return chunk_table(rows, tops, genes, columns, dataset), counts

        writer = None
        pending: list[pa.Table] = []  # ranked chunks not yet written: one row group of ROW_GROUP_CELLS

        def write(table: pa.Table | None, counts: dict, rows_after: int = 0) -> None:
            """Gather ranked chunks into a row group; write it when full, or the rest (table None).
            The chunks of the file's last ROW_GROUP_CELLS rows are written one by one, so that the
            stream does not end waiting on one large write."""
            nonlocal writer
            if table is not None:
                pending.append(table)
                summary.kept += table.num_rows
                for key, value in counts.items():
                    setattr(summary, key, getattr(summary, key) + value)
            full = sum(t.num_rows for t in pending) >= ROW_GROUP_CELLS or rows_after < ROW_GROUP_CELLS
            if pending and full:  # (the final call, table None, has rows_after 0)
                if writer is None:
                    writer = parquet_writer(part, pending[0].schema)
                writer.write_table(pa.concat_tables(pending))  # one row group: no copy
                pending.clear()

        # Read chunk i+1 (this thread; mapped values cost little more than their indptr) while
        # worker threads rank the chunks before it and one more thread writes the ranked ones in
        # order (Arrow releases the GIL): reading, ranking and writing overlap. At most
        # `threads + 2` chunks are in memory at once, plus the ranked tables of one row group
        # (~1 MB a chunk of 4,096 cells).
        try:
            with (
                ThreadPoolExecutor(max_workers=cfg.threads, thread_name_prefix="cello-rank") as pool,
                ThreadPoolExecutor(max_workers=1, thread_name_prefix="cello-write") as writing,
            ):
                ranked: deque = deque()
                written: deque = deque()

                def hand_over(limit: int) -> None:
                    """Pass ranked chunks to the writer until `limit` are left; at most one write waits."""
                    while len(ranked) > limit:
                        future, rows_after = ranked.popleft()
                        written.append(writing.submit(write, *future.result(), rows_after))
                    while len(written) > min(limit, 1):
                        written.popleft().result()  # raises what the write raised

                chunks = range(0, len(obs), cfg.chunk_size)
                for r0 in tqdm(chunks, desc=dataset, unit="chunk", disable=not progress, leave=False):
                    r1 = min(r0 + cfg.chunk_size, len(obs))
                    local = np.flatnonzero(keep[r0:r1])
                    if local.size == 0:
                        continue
                    ranked.append((pool.submit(rank, r0, local, reader.blocks(r0, r1)), len(obs) - r1))
                    hand_over(cfg.threads)
                hand_over(0)
                write(None, {})
        finally:
            if writer is not None:
                writer.close()
        if summary.kept:
            kept_rows = np.flatnonzero(keep)
            kept_df = pd.DataFrame({k: labels[k][kept_rows] for k in (S.DONOR, S.BATCH, S.CELL_TYPE)})
            summary.donors = kept_df[S.DONOR].nunique()
            summary.groups = len(kept_df.drop_duplicates([S.DONOR, S.BATCH]))
            summary.cell_types = kept_df[S.CELL_TYPE].nunique()
        return summary


def part_name(index: int) -> str:
    """File name of the part written for the `index`-th input (in `resolve_inputs` order)."""
    return f"part-{index:05d}.parquet"


def is_parts_dir(out: str | os.PathLike) -> bool:
    """Whether `out` names a directory of parts rather than one .parquet file."""
    return Path(out).suffix != ".parquet"


def make_cells_part(inputs: list[str], index: int, out_dir: str | os.PathLike, *, cfg: CellsConfig) -> FileSummary:
    """Rank the cells of the `index`-th input only, into `out_dir/part-<index>.parquet`.

    The part is the one `make_cells(inputs, out_dir)` writes for that input, byte for byte, so
    a pipeline can build the parts of a large atlas on many nodes. An input whose cells are all
    filtered out writes no part (as in `make_cells`)."""
    sources = resolve_inputs(list(inputs))
    if not 0 <= index < len(sources):
        msg = f"part {index} asked for, but the inputs resolve to {len(sources)} file(s): {sources}."
        raise InputError(msg)
    final = Path(out_dir) / part_name(index)
    with atomic_path(final) as tmp:
        summary = process_source(sources[index], str(tmp), cfg)
        if not summary.kept:
            tmp.unlink(missing_ok=True)
    if not summary.kept:
        final.unlink(missing_ok=True)
    return summary


def make_cells(inputs: list[str], out: str | os.PathLike, *, cfg: CellsConfig) -> CellsSummary:
    """Build cells from .h5ad files/directories (or builtin:pbmc68k): one `out` .parquet file,
    or, when `out` has no .parquet suffix, a directory with one part per input."""
    sources = resolve_inputs(list(inputs))
    summary = CellsSummary(out=str(out), padded=cfg.pad_genes)
    parts_dir = is_parts_dir(out)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    # Parts live next to the output, so a single part can become the output by a rename.
    with tempfile.TemporaryDirectory(prefix=".cello-cells-", dir=Path(out).parent) as tmp:
        parts = {src: os.path.join(tmp, part_name(i)) for i, src in enumerate(sources)}
        results: dict[str, FileSummary] = {}
        parallel = [s for s in sources if not s.startswith(BUILTIN_PREFIX)]
        if cfg.workers > 1 and len(parallel) > 1:
            with ProcessPoolExecutor(max_workers=min(cfg.workers, len(parallel))) as pool:
                futures = {pool.submit(process_source, s, parts[s], cfg): s for s in parallel}
                for fut in tqdm(as_completed(futures), total=len(futures), desc="files", unit="file"):
                    results[futures[fut]] = fut.result()
        for src in sources:
            if src not in results:
                results[src] = process_source(src, parts[src], cfg, progress=True)
        summary.files = [results[s] for s in sources]
        written = [parts[s] for s in sources if results[s].kept]
        if not written:
            msg = (
                f"no cells left from {', '.join(sources)}: every cell was filtered out "
                f"({[asdict(f) for f in summary.files]}). Check --keep-suspension, --cell-type-key and --donor-key."
            )
            raise InputError(msg)
        check_unique_datasets([f.dataset for f in summary.files], where=", ".join(sources))
        if parts_dir:
            with atomic_path(out, is_dir=True) as tmp_dir:
                for p in written:
                    os.replace(p, tmp_dir / Path(p).name)
            log.info("wrote %d cells in %d part(s) to %s", summary.kept, len(written), out)
            return summary
        schema = pa.unify_schemas([pq.read_schema(p) for p in written])
        with atomic_path(out) as tmp_out:
            if len(written) == 1:  # nothing to merge: the part is the output
                os.replace(written[0], tmp_out)
            else:
                with parquet_writer(str(tmp_out), schema) as writer:
                    for p in written:
                        for batch in pq.ParquetFile(p).iter_batches():
                            writer.write_table(conform(pa.Table.from_batches([batch]), schema))
    log.info("wrote %d cells to %s", summary.kept, out)
    return summary

"""cells -> splits/{train,test}.parquet, leakage-free by construction; and the audit.

The split holds out CELLS first, then each side makes its own puzzles, so no cell can be in a
train and a test puzzle, and no puzzle is dropped to keep the sides apart:

- by="cell" (default): in every (dataset, donor, batch, cell type), `test_fraction` of the cells
  (at least one where there are two or more) go to test, so each donor keeps its types on both
  sides.
- by="donor" / by="dataset": whole donors or datasets go to test, the named ones
  (`test_donors`, `test_datasets`) or random ones until `test_fraction` of the cells is reached:
  the test of whether a model generalises to people (or studies) it has not seen.

Train puzzles: `puzzles.per_n` per N per dataset from the train cells. Test puzzles: `test_size`
in all, shared evenly over N, from the test cells, all different; when the held-out cells cannot
make that many, the split stops and says so, rather than returning a smaller test set.

The audit (`audit_overlap`, `cello data audit`) stays the independent check: it counts test
puzzles holding a cell IDENTICAL to a train cell, i.e. the same ranked gene list under any id.
Different cells can share a gene list, and the published CellPuzzles split has such overlaps
(and shares cells outright); users need to see them.

    cello data split data/cells -o data/splits --by donor --test-donors D1,D2 --test-size 200
    cello data audit data/splits/train.parquet data/splits/test.parquet
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from cello._io import atomic_path, write_json
from cello.config import PuzzlesConfig, SplitConfig
from cello.data import schema as S
from cello.data.prompt import PromptTemplate
from cello.data.puzzles import CELL_COLUMNS_NEEDED, build_puzzles, read_cells, read_puzzles
from cello.data.records import is_parquet, load_records, parquet_columns, records_to_puzzles
from cello.data.seeds import stable_seed
from cello.errors import InputError

log = logging.getLogger(__name__)

# ---------------------------------------------------------------- audit
@dataclass
class AuditReport:
    """Overlap between a train and a test set, by identical gene list and by cell id."""

    train_puzzles: int
    test_puzzles: int
    test_sharing_identical_cell: int  # test puzzles with >= 1 cell whose gene list is in train
    test_sharing_cell_id: int  # test puzzles with >= 1 cell id that is in train
    shared_gene_lists: int  # distinct ranked gene lists found in both splits
    test_cells: int
    test_cells_identical: int  # test cells (with repeats) whose gene list is in train
    examples: list[str] = field(default_factory=list)  # a few affected test puzzle ids

    def to_dict(self) -> dict:
        return asdict(self)

    def render(self) -> str:
        pct = 100.0 * self.test_sharing_identical_cell / max(self.test_puzzles, 1)
        lines = [
            f"audit: {self.train_puzzles} train / {self.test_puzzles} test puzzles",
            f"  test puzzles sharing an identical cell (same ranked gene list) with train: "
            f"{self.test_sharing_identical_cell} ({pct:.1f}%)",
            f"  test puzzles sharing a cell id with train: {self.test_sharing_cell_id}",
            f"  distinct gene lists in both: {self.shared_gene_lists}; test cells affected: "
            f"{self.test_cells_identical} of {self.test_cells}",
        ]
        if self.examples:
            lines.append(f"  e.g. {', '.join(self.examples)}")
        return "\n".join(lines)


def _gene_keys(cell_genes) -> list[tuple[str, ...]]:
    return [tuple(str(g) for g in genes) for genes in cell_genes]


def audit_overlap(train: pd.DataFrame, test: pd.DataFrame) -> AuditReport:
    """How much of `test` is already in `train`: identical gene lists, and shared cell ids."""
    train_lists: set[tuple[str, ...]] = set()
    for cell_genes in train[S.CELL_GENES]:
        train_lists.update(_gene_keys(cell_genes))
    train_ids = {str(c) for ids in train[S.CELL_IDS] for c in ids}
    test_lists: set[tuple[str, ...]] = set()
    by_genes = by_id = cells = cells_identical = 0
    examples: list[str] = []
    for pid, ids, cell_genes in zip(test[S.PUZZLE_ID], test[S.CELL_IDS], test[S.CELL_GENES], strict=True):
        keys = _gene_keys(cell_genes)
        test_lists.update(keys)
        hits = sum(k in train_lists for k in keys)
        cells += len(keys)
        cells_identical += hits
        if hits:
            by_genes += 1
            if len(examples) < 5:
                examples.append(str(pid))
        by_id += any(str(c) in train_ids for c in ids)
    return AuditReport(
        train_puzzles=len(train), test_puzzles=len(test), test_sharing_identical_cell=by_genes,
        test_sharing_cell_id=by_id, shared_gene_lists=len(train_lists & test_lists),
        test_cells=cells, test_cells_identical=cells_identical, examples=examples,
    )


def _load_side(path: str | os.PathLike, template: PromptTemplate) -> pd.DataFrame:
    """A puzzles table (Parquet), or published records (JSON list, JSON lines or Parquet) as one."""
    path = Path(path)
    if path.is_file() and is_parquet(path):
        if "user_msg" not in parquet_columns(path):
            return read_puzzles(path, required=[S.PUZZLE_ID, S.CELL_IDS, S.CELL_GENES])
    return records_to_puzzles(load_records(path), dataset=path.stem, template=template, source=str(path))


def audit_paths(train_path: str | os.PathLike, test_path: str | os.PathLike, *,
                template: PromptTemplate, out: str | os.PathLike | None = None) -> AuditReport:
    """Audit a train/test pair read from files; write the report as JSON to `out` when given."""
    report = audit_overlap(_load_side(train_path, template), _load_side(test_path, template))
    if out is not None:
        write_json(report.to_dict(), out)
    return report


# ---------------------------------------------------------------- split
@dataclass
class SplitSummary:
    """Which cells were held out, and the puzzles each side made from its own cells."""

    by: str
    seed: int
    held_out: list[str]  # the held-out donors ("dataset/donor") or datasets; by cell: []
    train_cells: int
    test_cells: int
    train_by_n: dict[int, int]
    test_by_n: dict[int, int]
    train_groups: int
    test_groups: int
    train_datasets: dict[str, int]
    test_datasets: dict[str, int]
    train_donors: int
    test_donors: int
    repeated_cell_sets: int  # train puzzles repeating a cell set (groups too small to avoid it)
    identical_cell_overlap: int  # test puzzles with a cell whose gene list is also in train (the audit)
    audit: dict = field(default_factory=dict)

    @property
    def train_total(self) -> int:
        return sum(self.train_by_n.values())

    @property
    def test_total(self) -> int:
        return sum(self.test_by_n.values())

    def to_dict(self) -> dict:
        out = asdict(self)
        for key in ("train_by_n", "test_by_n"):
            out[key] = {str(k): v for k, v in out[key].items()}
        out.update(train_total=self.train_total, test_total=self.test_total)
        return out

    def render(self) -> str:
        ns = sorted(set(self.train_by_n) | set(self.test_by_n))
        held = ""
        if self.held_out:
            held = f": {', '.join(self.held_out[:10])}" + (" ..." if len(self.held_out) > 10 else "")
        lines = [
            f"split by {self.by} (seed {self.seed}): cells train {self.train_cells}, test {self.test_cells}"
            f"{held}; puzzles train {self.train_total}, test {self.test_total}",
            "  N      " + " ".join(f"{n:>5}" for n in ns),
            "  train  " + " ".join(f"{self.train_by_n.get(n, 0):>5}" for n in ns),
            "  test   " + " ".join(f"{self.test_by_n.get(n, 0):>5}" for n in ns),
            f"  groups: train {self.train_groups}, test {self.test_groups}; donors: train "
            f"{self.train_donors}, test {self.test_donors}; datasets: train "
            f"{len(self.train_datasets)}, test {len(self.test_datasets)}",
        ]
        if self.repeated_cell_sets:
            lines.append(f"  {self.repeated_cell_sets} train puzzle(s) repeat a cell set (too few cells to avoid it)")
        shared = self.audit.get("test_sharing_cell_id", 0)
        lines.append(f"  audit: test puzzles sharing a cell id with train: {shared}; "
                     f"with a cell identical (same gene list) to a train cell: {self.identical_cell_overlap}")
        return "\n".join(lines)


def quota_over_n(size: int, min_n: int, max_n: int) -> dict[int, int]:
    """`size` test puzzles shared evenly over N = min_n..max_n (the remainder to the smallest N)."""
    ns = list(range(min_n, max_n + 1))
    base, rest = divmod(size, len(ns))
    return {n: base + (i < rest) for i, n in enumerate(ns)}


def _strata(cells: pd.DataFrame) -> pd.Series:
    """(dataset, donor, batch, cell type) of every cell: the unit a by-cell split samples within."""
    batch = cells[S.BATCH].astype(str) if S.BATCH in cells.columns else ""
    return (cells[S.DATASET].astype(str) + "\0" + cells[S.DONOR].astype(str) + "\0" + batch + "\0"
            + cells[S.CELL_TYPE].astype(str))


def _hold_out_cells(cells: pd.DataFrame, fraction: float, rng) -> np.ndarray:
    """Test mask: in every stratum of c >= 2 cells, round(fraction * c) of them (at least 1, at
    most c - 1) at random, so each donor keeps its types on both sides; single cells stay in train."""
    strata = _strata(cells)
    rank = pd.Series(rng.random(len(cells)), index=cells.index).groupby(strata).rank(method="first") - 1
    size = strata.map(strata.value_counts())
    k = np.where(size >= 2, np.clip(np.floor(fraction * size + 0.5), 1, size - 1), 0)
    return (rank < k).to_numpy()


def _hold_out_units(cells: pd.DataFrame, cfg: SplitConfig, rng, source: str) -> tuple[np.ndarray, list[str]]:
    """Test mask of whole donors or datasets: the named ones, or random ones until the test
    fraction of cells is reached (at least one, never all)."""
    dataset = cells[S.DATASET].astype(str)
    unit = dataset if cfg.by == "dataset" else dataset + "/" + cells[S.DONOR].astype(str)
    sizes = unit.value_counts().sort_index()
    names = cfg.test_datasets if cfg.by == "dataset" else cfg.test_donors
    if names:
        plain = cells[S.DONOR].astype(str) if cfg.by == "donor" else dataset
        unknown = [n for n in names if n not in set(plain) and n not in sizes.index]
        if unknown:
            known = ", ".join(sorted(set(plain))[:20])
            msg = f"{source}: no {cfg.by} named {unknown}; the {cfg.by}s there are: {known}."
            raise InputError(msg)
        test = (plain.isin(names) | unit.isin(names)).to_numpy()
        if test.all():
            msg = f"{source}: holding out {names} leaves no cells to train on; name fewer {cfg.by}s."
            raise InputError(msg)
        return test, sorted(set(unit[test]))
    if len(sizes) < 2:
        msg = (f"{source}: --by {cfg.by} needs at least 2 {cfg.by}s, found {len(sizes)} "
               f"({', '.join(sizes.index)}); use --by cell, or add {cfg.by}s.")
        raise InputError(msg)
    chosen, total, target = [], 0, cfg.test_fraction * len(cells)
    for i in rng.permutation(len(sizes)):
        if total >= target or len(chosen) == len(sizes) - 1:
            break
        chosen.append(str(sizes.index[i]))
        total += int(sizes.iloc[i])
    return unit.isin(chosen).to_numpy(), sorted(chosen)


def split_cells(cells: pd.DataFrame, *, cfg: SplitConfig, puzzles: PuzzlesConfig,
                source: str = "cells table") -> tuple[pd.DataFrame, pd.DataFrame, SplitSummary]:
    """Split the cells, then make train puzzles from the train cells (`puzzles.per_n` per N per
    dataset) and test puzzles from the test cells (`cfg.test_size`, evenly over N): no cell can
    be on both sides. Pure and deterministic for the seeds; (train, test, summary)."""
    missing = [c for c in CELL_COLUMNS_NEEDED if c not in cells.columns]
    if missing:
        msg = (f"{source}: missing column(s) {missing}; `cello data split` takes the cells table of "
               "`cello data cells` (a puzzles table cannot be split without sharing cells: audit it instead).")
        raise InputError(msg)
    cells = cells.sort_values([S.DATASET, S.CELL_ID], kind="stable").reset_index(drop=True)
    rng = np.random.default_rng(stable_seed(cfg.seed, f"split-by-{cfg.by}"))
    if cfg.by == "cell":
        in_test, held = _hold_out_cells(cells, cfg.test_fraction, rng), []
    else:
        in_test, held = _hold_out_units(cells, cfg, rng, source)
    quota = quota_over_n(cfg.test_size, puzzles.min_n, puzzles.max_n)
    test, _ = build_puzzles(cells[in_test], cfg=puzzles, quota=quota, source=f"{source} (held-out cells, by {cfg.by})")
    train, train_summary = build_puzzles(cells[~in_test], cfg=puzzles, source=f"{source} (train cells)")
    report = audit_overlap(train, test)
    donors = [set(zip(t[S.DATASET], t[S.DONOR], strict=True)) for t in (train, test)]
    summary = SplitSummary(
        by=cfg.by, seed=cfg.seed, held_out=held, train_cells=int((~in_test).sum()), test_cells=int(in_test.sum()),
        train_by_n=_by_n(train), test_by_n=_by_n(test),
        train_groups=int(train[[S.DATASET, S.GROUP]].drop_duplicates().shape[0]),
        test_groups=int(test[[S.DATASET, S.GROUP]].drop_duplicates().shape[0]),
        train_datasets={str(k): int(v) for k, v in train[S.DATASET].value_counts().sort_index().items()},
        test_datasets={str(k): int(v) for k, v in test[S.DATASET].value_counts().sort_index().items()},
        train_donors=len(donors[0]), test_donors=len(donors[1]),
        repeated_cell_sets=train_summary.repeated_cell_sets,
        identical_cell_overlap=report.test_sharing_identical_cell, audit=report.to_dict(),
    )
    return train, test, summary


def _by_n(df: pd.DataFrame) -> dict[int, int]:
    return {int(n): int(c) for n, c in df[S.N].value_counts().sort_index().items()}


def make_split(cells_path: str | os.PathLike, out_dir: str | os.PathLike, *, cfg: SplitConfig,
               puzzles: PuzzlesConfig) -> SplitSummary:
    """Read cells (a file or a directory of parts); write OUT/train.parquet, OUT/test.parquet and
    OUT/summary.json as one unit."""
    path = Path(cells_path)
    if path.is_file() and is_parquet(path) and S.PUZZLE_ID in parquet_columns(path):
        msg = (f"{path}: a puzzles table; `cello data split` holds out cells first and makes each side's "
               "puzzles itself, so it takes the cells table of `cello data cells` (check an existing "
               "split with `cello data audit`).")
        raise InputError(msg)
    train, test, summary = split_cells(read_cells(cells_path), cfg=cfg, puzzles=puzzles, source=str(cells_path))
    with atomic_path(out_dir, is_dir=True) as tmp:
        train.to_parquet(tmp / "train.parquet", index=False)
        test.to_parquet(tmp / "test.parquet", index=False)
        write_json(summary.to_dict(), tmp / "summary.json")
    log.info("split %s: train %d, test %d", cells_path, len(train), len(test))
    return summary

"""cells.parquet -> puzzles.parquet: CellPuzzles, N cells of N distinct types from one donor group.

A puzzle (the Cell-o1 "CellPuzzle") takes N cells from one donor (and batch, where the data
has batches), each of a different cell type; the model sees the cells' ranked top genes plus
the N types as sorted candidates and must assign every type to exactly one cell.

Sampling, per dataset: for every N in `min_n..max_n`, `per_n` puzzles (or, for the split's
held-out cells, a fixed count per N over all datasets); each picks a random eligible group (one
with at least N distinct types), N distinct types in random order, and one random cell of each
type. An exact repeat of an earlier cell set is re-drawn a bounded number of
times. Randomness comes from a numpy Generator seeded with `seed` and a stable hash of the
dataset name, so the output is the same for the same input and seed.

    cello data puzzles data/cells.parquet -o data/puzzles.parquet --min-n 8 --max-n 15
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from cello._io import atomic_path
from cello.config import PuzzlesConfig
from cello.data import schema as S
from cello.data.checks import check_cell_types, check_unique_datasets
from cello.data.context import MISSING
from cello.data.seeds import stable_seed
from cello.errors import InputError

log = logging.getLogger(__name__)

# The columns of a cells table that puzzles read: needed, and used when present.
CELL_COLUMNS_NEEDED = [S.CELL_ID, S.DATASET, S.DONOR, S.CELL_TYPE, S.TOP_GENES]
CELL_COLUMNS_OPTIONAL = [S.BATCH, S.CONTEXT]
MAX_TRIES = 20  # draws per puzzle before an exact repeat of a cell set is accepted


def safe_id(text: str) -> str:
    """`text` with every run of characters outside [A-Za-z0-9._-] replaced by '_'."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "x"


def unique_id(base: str, taken: set[str]) -> str:
    """`base`, else `base-2`, `base-3`, ...: the first one not in `taken`, which it joins."""
    pid, dup = base, 1
    while pid in taken:
        dup += 1
        pid = f"{base}-{dup}"
    taken.add(pid)
    return pid


@dataclass
class PuzzleSummary:
    """What `build_puzzles` made, and what it had to skip."""

    min_n: int
    max_n: int
    per_n: int
    by_n: dict[int, int] = field(default_factory=dict)
    by_dataset: dict[str, int] = field(default_factory=dict)
    groups_total: int = 0
    groups_used: int = 0
    skipped_groups: list[dict] = field(default_factory=list)  # {dataset, group, n_types}
    missing_n: dict[str, list[int]] = field(default_factory=dict)  # dataset -> Ns no group allows
    repeated_cell_sets: int = 0
    unlabelled_cells: int = 0
    max_types: int = 0

    @property
    def total(self) -> int:
        return sum(self.by_n.values())

    @property
    def groups_skipped(self) -> int:
        return len(self.skipped_groups)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["by_n"] = {str(k): v for k, v in self.by_n.items()}
        out.update(total=self.total, groups_skipped=self.groups_skipped)
        return out

    def render(self) -> str:
        lines = [
            f"puzzles: {self.total} from {len(self.by_dataset)} dataset(s); groups: "
            f"{self.groups_used} used, {self.groups_skipped} skipped (< {self.min_n} types) "
            f"of {self.groups_total}"
        ]
        ns = sorted(self.by_n)
        lines.append("  N      " + " ".join(f"{n:>5}" for n in ns))
        lines.append("  count  " + " ".join(f"{self.by_n[n]:>5}" for n in ns))
        shown_ds = list(self.by_dataset.items())[:10]
        width = max([len(d) for d, _ in shown_ds] + [7])
        for ds, count in shown_ds:
            lines.append(f"  {ds:<{width}}  {count} puzzles")
        if len(self.by_dataset) > len(shown_ds):
            lines.append(f"  (+{len(self.by_dataset) - len(shown_ds)} more datasets)")
        if self.skipped_groups:
            shown = ", ".join(
                f"{g['dataset']}:{g['group']} ({g['n_types']})" for g in self.skipped_groups[:5]
            )
            more = len(self.skipped_groups) - 5
            lines.append(f"  skipped groups (types): {shown}" + (f" (+{more} more)" if more > 0 else ""))
        for ds, missing in list(self.missing_n.items())[:5]:
            lines.append(f"  {ds}: no group has enough types for N = {_ranges(missing)}")
        if len(self.missing_n) > 5:
            lines.append(f"  (+{len(self.missing_n) - 5} more datasets lack some N)")
        if self.repeated_cell_sets:
            lines.append(f"  {self.repeated_cell_sets} puzzle(s) repeat a cell set (groups too small to avoid it)")
        if self.unlabelled_cells:
            lines.append(f"  {self.unlabelled_cells} cell(s) without a cell type were left out")
        return "\n".join(lines)


def _ranges(values: list[int]) -> str:
    """[8, 9, 10, 12] -> '8-10, 12'."""
    out: list[str] = []
    for v in sorted(values):
        if out and out[-1].split("-")[-1] == str(v - 1):
            out[-1] = f"{out[-1].split('-')[0]}-{v}"
        else:
            out.append(str(v))
    return ", ".join(out)


@dataclass
class _Group:
    dataset: str
    name: str
    donor: str
    types: list[str]
    rows: list[np.ndarray]  # row positions of each type's cells, aligned with `types`


def _clean(values: pd.Series, *, default: str = "") -> pd.Series:
    out = values.astype(object).where(values.notna(), "").astype(str).str.strip()
    return out.where(out != "", default) if default else out


def _prepare(cells: pd.DataFrame, source: str) -> tuple[pd.DataFrame, int]:
    """Normalised copy: string columns, a group column, unlabelled cells dropped, stable order."""
    missing = [c for c in CELL_COLUMNS_NEEDED if c not in cells.columns]
    if missing:
        msg = (
            f"{source}: missing column(s) {missing}; a cells table needs {CELL_COLUMNS_NEEDED}. "
            "Rebuild it with `cello data cells`."
        )
        raise InputError(msg)
    df = pd.DataFrame({c: cells[c] for c in CELL_COLUMNS_NEEDED})
    df[S.BATCH] = _clean(cells[S.BATCH]) if S.BATCH in cells.columns else ""
    df[S.CONTEXT] = _clean(cells[S.CONTEXT]) if S.CONTEXT in cells.columns else ""
    for col in _ctx_columns(cells):
        df[col] = _clean(cells[col])
    for col in (S.CELL_ID, S.DATASET, S.CELL_TYPE):
        df[col] = _clean(df[col])
    df[S.DONOR] = _clean(df[S.DONOR], default="unknown")
    labelled = ~df[S.CELL_TYPE].str.lower().isin(MISSING)
    unlabelled = int((~labelled).sum())
    df = df[labelled]
    check_cell_types(df[S.CELL_TYPE], source=source, key=S.CELL_TYPE)
    df[S.GROUP] = df[S.DONOR].where(df[S.BATCH] == "", df[S.DONOR] + "/" + df[S.BATCH])
    df = df.sort_values([S.DATASET, S.GROUP, S.CELL_TYPE, S.CELL_ID], kind="stable")
    return df.reset_index(drop=True), unlabelled


def _ctx_columns(table: pd.DataFrame) -> list[str]:
    return [c for c in table.columns if c.startswith(S.CTX_PREFIX)]


def _fields_json(df: pd.DataFrame, row: int) -> str:
    """The context fields of one cell as JSON text (missing ones left out); "" if the table has none."""
    cols = _ctx_columns(df)
    if not cols:
        return ""
    values = {c[len(S.CTX_PREFIX):]: str(df.at[row, c]) for c in cols}
    return json.dumps({k: v for k, v in values.items() if v}, ensure_ascii=False)


def _groups(df: pd.DataFrame) -> dict[str, list[_Group]]:
    """dataset -> its groups (sorted by name), each with its types and their cells' rows."""
    out: dict[str, list[_Group]] = {}
    donor = df[S.DONOR].to_numpy()
    indices = df.groupby([S.DATASET, S.GROUP, S.CELL_TYPE], sort=True).indices
    for (ds, grp, ctype), rows in sorted(indices.items(), key=lambda kv: kv[0]):
        groups = out.setdefault(ds, [])
        if not groups or groups[-1].name != grp:
            groups.append(_Group(ds, grp, str(donor[rows[0]]), [], []))
        groups[-1].types.append(ctype)
        groups[-1].rows.append(np.sort(rows))
    return out


def _as_list(genes) -> list[str]:
    """A gene list (a list, or the numpy array Parquet gives back) as a plain list."""
    return genes.tolist() if isinstance(genes, np.ndarray) else list(genes)


def _context(contexts: list[str]) -> int:
    """Which chosen cell's context the puzzle shows: the first one holding the most common context."""
    counts = Counter(contexts)
    return contexts.index(max(counts, key=lambda c: counts[c]))


def distinct_sets(counts: list[int], n: int) -> int:
    """How many different cell sets of n distinct types a group holds: the elementary symmetric
    polynomial of degree n of its per-type cell counts."""
    dp = [1] + [0] * n
    for c in counts:
        for k in range(n, 0, -1):
            dp[k] += dp[k - 1] * c
    return dp[n]


class _Drawer:
    """Draws puzzles from a prepared cells table into rows, counting them in the summary."""

    def __init__(self, df: pd.DataFrame, summary: PuzzleSummary) -> None:
        self.df, self.summary = df, summary
        self.cell_id = df[S.CELL_ID].to_numpy()
        self.genes = df[S.TOP_GENES].to_numpy()
        self.context = df[S.CONTEXT].to_numpy()
        self.rows: list[dict] = []
        self.ids: set[str] = set()
        self.used: set[tuple[str, str]] = set()
        self.counters: Counter = Counter()

    def draw(self, eligible: list[_Group], n: int, count: int, rng, seen: set, tries: int = MAX_TRIES) -> None:
        """`count` puzzles of N=n, each from a random eligible group; an exact repeat of a cell set
        is re-drawn up to `tries` times."""
        for _ in range(count):
            for _try in range(tries):
                g = eligible[int(rng.integers(len(eligible)))]
                picked = rng.choice(len(g.types), size=n, replace=False)  # random order
                rows = [int(g.rows[t][rng.integers(len(g.rows[t]))]) for t in picked]
                key = frozenset(rows)
                if key not in seen:
                    break
            else:
                self.summary.repeated_cell_sets += 1
            seen.add(key)
            self._add(g, n, picked, rows)

    def _add(self, g: _Group, n: int, picked, rows: list[int]) -> None:
        k = self.counters[(g.dataset, g.name, n)]
        self.counters[(g.dataset, g.name, n)] += 1
        self.used.add((g.dataset, g.name))
        answer = [g.types[t] for t in picked]
        shown = rows[_context([str(self.context[r]) for r in rows])]
        self.rows.append({
            S.PUZZLE_ID: unique_id(safe_id(f"{g.dataset}-{g.name}-n{n}-{k}"), self.ids),
            S.DATASET: g.dataset,
            S.GROUP: g.name,
            S.DONOR: g.donor,
            S.N: n,
            S.CELL_IDS: [str(self.cell_id[r]) for r in rows],
            S.CELL_GENES: [_as_list(self.genes[r]) for r in rows],
            S.CONTEXT: str(self.context[shown]),
            S.CANDIDATES: sorted(answer),
            S.ANSWER: answer,
            S.CONTEXT_FIELDS: _fields_json(self.df, shown),
            S.TARGET: "",
        })
        self.summary.by_n[n] = self.summary.by_n.get(n, 0) + 1
        self.summary.by_dataset[g.dataset] = self.summary.by_dataset.get(g.dataset, 0) + 1


def _draw_quota(drawer: _Drawer, groups: list[_Group], quota: dict[int, int], *, seed: int, source: str) -> None:
    """Puzzles to a fixed count per N over all groups together, or an InputError when the cells
    cannot make that many different ones."""
    rng = np.random.default_rng(stable_seed(seed, "quota"))
    seen: set[frozenset] = set()
    for n, count in sorted(quota.items()):
        eligible = [g for g in groups if len(g.types) >= n]
        most = sum(distinct_sets([len(r) for r in g.rows], n) for g in eligible)
        if count > most:
            widest = max((len(g.types) for g in groups), default=0)
            msg = (f"{source}: {count} puzzles of N={n} were asked for, but these cells make only {most} "
                   f"different ones (their donor groups have at most {widest} cell types). Lower the test size "
                   "(--test-size) or --max-n, raise --test-fraction, or hold out other or more donors/datasets.")
            raise InputError(msg)
        drawer.draw(eligible, n, count, rng, seen, tries=MAX_TRIES * 10)


def build_puzzles(
    cells: pd.DataFrame, *, cfg: PuzzlesConfig, source: str = "cells table", quota: dict[int, int] | None = None,
) -> tuple[pd.DataFrame, PuzzleSummary]:
    """Sample puzzles from a cells table (schema in `cello.data.schema`); pure, no I/O.

    Without `quota`: `cfg.per_n` puzzles per N per dataset, for every N some group allows. With
    `quota` ({N: count}, what the split asks of its held-out cells): exactly that many per N over
    all datasets together, all different, or an `InputError` saying why the cells cannot.
    `source` names the table in error messages. Raises `InputError` when a required column is
    missing or when no group has `cfg.min_n` distinct cell types.
    """
    df, unlabelled = _prepare(cells, source)
    per_n = cfg.per_n if quota is None else max(quota.values(), default=0)
    summary = PuzzleSummary(min_n=cfg.min_n, max_n=cfg.max_n, per_n=per_n, unlabelled_cells=unlabelled)
    by_dataset = _groups(df)
    drawer = _Drawer(df, summary)
    largest = (0, "", "")
    for ds, groups in by_dataset.items():
        summary.groups_total += len(groups)
        for g in groups:
            largest = max(largest, (len(g.types), ds, g.name), key=lambda t: t[0])
            if len(g.types) < cfg.min_n:
                summary.skipped_groups.append({"dataset": ds, "group": g.name, "n_types": len(g.types)})
    if quota is not None:
        _draw_quota(drawer, [g for groups in by_dataset.values() for g in groups], quota, seed=cfg.seed, source=source)
    else:
        for ds, groups in by_dataset.items():
            rng = np.random.default_rng(stable_seed(cfg.seed, ds))
            seen: set[frozenset] = set()
            for n in range(cfg.min_n, cfg.max_n + 1):
                eligible = [g for g in groups if len(g.types) >= n]
                if not eligible:
                    summary.missing_n.setdefault(ds, []).append(n)
                    continue
                drawer.draw(eligible, n, cfg.per_n, rng, seen)
    summary.groups_used = len(drawer.used)
    summary.by_n = dict(sorted(summary.by_n.items()))
    summary.max_types = largest[0]
    if not drawer.rows:
        where = f" (group {largest[2]!r} of dataset {largest[1]!r})" if largest[0] else ""
        msg = (
            f"{source}: no puzzle can be made: puzzles need at least min_n={cfg.min_n} distinct "
            f"cell types in one donor group, and the most any group has is {largest[0]}{where}. "
            f"Lower data.puzzles.min_n (--min-n) to at most {max(largest[0], 2)}, or check "
            "--donor-key/--batch-key of `cello data cells` (a too fine grouping splits the types)."
        )
        raise InputError(msg)
    out = pd.DataFrame(drawer.rows, columns=S.PUZZLE_COLUMNS)
    out[S.N] = out[S.N].astype("int64")
    return out, summary


def _read_table(path: str | os.PathLike, required: list[str], *, made_by: str) -> tuple[Path, list[str]]:
    """Check that `path` is a readable Parquet file holding `required`; return its column names."""
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.is_file():
        msg = f"{path}: no such file; build it with `{made_by}`."
        raise InputError(msg)
    try:
        names = pq.read_schema(path).names
    except Exception as exc:  # pyarrow raises several types for a non-Parquet file
        msg = f"{path}: not a readable Parquet file ({exc}); rebuild it with `{made_by}`."
        raise InputError(msg) from exc
    missing = [c for c in required if c not in names]
    if missing:
        msg = f"{path}: missing column(s) {missing}; is this a table from `{made_by}`? Rebuild it."
        raise InputError(msg)
    return path, names


def read_cells(path: str | os.PathLike) -> pd.DataFrame:
    """Read the columns puzzles need from cells.parquet, or from a directory of parts (one per
    input file, in input order), with clear errors for bad files."""
    path = Path(path)
    parts = sorted(path.glob("part-*.parquet")) if path.is_dir() else [path]
    if not parts:
        msg = f"{path}: directory holds no part-*.parquet; build it with `cello data cells ... -o {path}`."
        raise InputError(msg)
    frames = []
    for part in parts:
        part, names = _read_table(part, CELL_COLUMNS_NEEDED, made_by="cello data cells")
        wanted = [c for c in CELL_COLUMNS_NEEDED + CELL_COLUMNS_OPTIONAL if c in names]
        wanted += [c for c in names if c.startswith(S.CTX_PREFIX)]
        frames.append(pd.read_parquet(part, columns=wanted))
    if len(frames) == 1:
        return frames[0]
    check_unique_datasets([str(f[S.DATASET].iloc[0]) for f in frames if len(f)], where=str(path))
    cells = pd.concat(frames, ignore_index=True)
    ctx = _ctx_columns(cells)  # parts may hold different extra fields
    cells[ctx] = cells[ctx].fillna("")
    return cells


def read_puzzles(path: str | os.PathLike, *, required: list[str] | None = None) -> pd.DataFrame:
    """Read a puzzles.parquet; a missing/unreadable file or column is an `InputError`."""
    path, _ = _read_table(path, S.PUZZLE_REQUIRED if required is None else required, made_by="cello data puzzles")
    return pd.read_parquet(path)


def make_puzzles(cells_path: str | os.PathLike, out_path: str | os.PathLike, *, cfg: PuzzlesConfig) -> PuzzleSummary:
    """Read cells.parquet, sample puzzles, write puzzles.parquet atomically; return the summary."""
    cells = read_cells(cells_path)
    puzzles, summary = build_puzzles(cells, cfg=cfg, source=str(cells_path))
    with atomic_path(out_path) as tmp:
        puzzles.to_parquet(tmp, index=False)
    log.info("wrote %d puzzles to %s", len(puzzles), out_path)
    return summary

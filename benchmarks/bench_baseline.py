"""The non-LLM floor on real PBMC data: the marker baseline on held-out donors and a held-out dataset.

    python benchmarks/bench_baseline.py                          # the real files next to the checkout
    python benchmarks/bench_baseline.py --data DIR --per-n 100   # another folder of the same files

Uses the two Kang et al. 2018 PBMC files (GEO GSE96583) of the shared test data: `kang3` (3 donors,
8 cell types, 100 genes) and `kang5` (5 donors, 4 cell types, 2511 genes). Cells are built with
`cello data cells` (top 50 genes) and puzzles with `cello data puzzles`; the baseline is fitted on
the train puzzles and solves the test puzzles. The splits:
- held-out donor (`kang3`, `kang5`): each donor in turn is the test set, puzzles from the other
  donors train; the test predictions of all folds are pooled.
- held-out dataset: fit on one file, solve the other (`kang5 -> kang3`: 4 of the 8 types were never
  seen, so the prior from the candidates' names matters; `kang3 -> kang5`: 100 genes known of 2511).
  Donor 1015 is in both files and is left out of both sides. `kang5 -> pbmc68k`: scanpy's bundled
  PBMC data (another study, 10 types named differently, e.g. "CD56+ NK", "CD19+ B"): no candidate
  name is known, so everything rests on the names' words and markers.
Prints cell and batch accuracy overall and by N next to chance (1/N, 1/N!) and writes
benchmarks/results/bench_baseline.json. Skips (exit 0, a message) when the files are absent.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
FILES = {
    "kang3": "kang2018_pbmc_3donors_8celltypes_100genes.h5ad",
    "kang5": "kang2018_pbmc_5donors_4celltypes_2511genes.h5ad",
}
SHARED_DONOR = "1015"  # in both files


def load_cells(data: Path, tmp: Path) -> dict[str, pd.DataFrame]:
    from cello.config import CellsConfig
    from cello.data.cells import make_cells

    out = {}
    sources = {**{name: str(data / file) for name, file in FILES.items()}, "pbmc68k": "builtin:pbmc68k"}
    for name, source in sources.items():
        make_cells([source], tmp / f"{name}.parquet", cfg=CellsConfig(top_n=50, workers=1))
        out[name] = pd.read_parquet(tmp / f"{name}.parquet")
    return out


def puzzles(cells: pd.DataFrame, donors, *, min_n: int, max_n: int, per_n: int, seed: int) -> pd.DataFrame:
    from cello.config import PuzzlesConfig
    from cello.data.puzzles import build_puzzles

    subset = cells[cells["donor_id"].isin(list(donors))]
    out, _ = build_puzzles(subset, cfg=PuzzlesConfig(min_n=min_n, max_n=max_n, per_n=per_n, seed=seed))
    return out


def solve(train: pd.DataFrame, test: pd.DataFrame) -> list[dict]:
    """Fit on `train`, predict `test`: prediction records, scored like an LLM's."""
    from cello.baselines import MarkerBaseline
    from cello.scoring import prediction_record

    model = MarkerBaseline().fit(train)
    records = []
    for p in test.to_dict("records"):
        labels = model.predict(p)
        records.append(prediction_record(MarkerBaseline.completion(labels), list(p["answer"]), id=p["puzzle_id"],
                                         dataset=p["dataset"], n=int(p["n"]), candidates=list(p["candidates"])))
    return records


def summarise(name: str, records: list[dict], train_puzzles: int, seconds: float) -> dict:
    from cello.scoring import chance_set_accuracy, compute_metrics

    m = compute_metrics(records, n_boot=200, seed=0)
    chance = chance_set_accuracy([int(r["n"]) for r in records])
    o = m["overall"]
    by_n = {
        int(n): {"puzzles": g["count"], "cell": round(g["cell_accuracy"], 4), "batch": round(g["batch_accuracy"], 4),
                 "chance_cell": round(1 / int(n), 4), "chance_batch": round(1 / math.factorial(int(n)), 5)}
        for n, g in m["by_n"].items()
    }
    row = {
        "split": name, "train_puzzles": train_puzzles, "test_puzzles": len(records),
        "cell": round(o["cell_accuracy"], 4), "cell_ci": [round(x, 4) for x in o["cell_accuracy_ci"]],
        "batch": round(o["batch_accuracy"], 4), "batch_ci": [round(x, 4) for x in o["batch_accuracy_ci"]],
        "chance_cell": round(chance["cell_accuracy"], 4), "chance_batch": round(chance["batch_accuracy"], 5),
        "seconds": round(seconds, 2), "by_n": by_n,
    }
    print(f"{name}: {row['test_puzzles']} test puzzles ({train_puzzles} train), cell {row['cell']:.3f} "
          f"{row['cell_ci']}, batch {row['batch']:.3f} {row['batch_ci']}; chance cell {row['chance_cell']:.3f}, "
          f"batch {row['chance_batch']:.4f}  ({seconds:.1f} s)")
    for n, g in by_n.items():
        print(f"    N={n:>2}: {g['puzzles']:>4} puzzles, cell {g['cell']:.3f} (chance {g['chance_cell']:.3f}), "
              f"batch {g['batch']:.3f} (chance {g['chance_batch']:.4f})")
    return row


def held_out_donor(name: str, cells: pd.DataFrame, *, min_n: int, max_n: int, per_n: int) -> dict:
    donors = sorted(cells["donor_id"].unique())
    t, records, n_train = time.perf_counter(), [], 0
    for i, donor in enumerate(donors):
        train = puzzles(cells, [d for d in donors if d != donor], min_n=min_n, max_n=max_n, per_n=per_n, seed=i)
        test = puzzles(cells, [donor], min_n=min_n, max_n=max_n, per_n=per_n, seed=100 + i)
        records += solve(train, test)
        n_train += len(train)
    return summarise(f"held-out donor, {name} ({len(donors)} folds)", records, n_train, time.perf_counter() - t)


def held_out_dataset(src: str, dst: str, cells: dict[str, pd.DataFrame], *, min_n: int, max_n: int,
                     per_n: int) -> dict:
    t = time.perf_counter()
    keep = {k: sorted(set(v["donor_id"]) - {SHARED_DONOR}) for k, v in cells.items()}
    train = puzzles(cells[src], keep[src], min_n=2, max_n=8, per_n=per_n, seed=0)
    test = puzzles(cells[dst], keep[dst], min_n=min_n, max_n=max_n, per_n=per_n, seed=1)
    return summarise(f"held-out dataset, {src} -> {dst}", solve(train, test), len(train), time.perf_counter() - t)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data", help="folder with the h5ad files")
    parser.add_argument("--per-n", type=int, default=100, help="puzzles per N per dataset (train and test sides)")
    parser.add_argument("--out", type=Path, default=RESULTS / "bench_baseline.json")
    args = parser.parse_args(argv)
    missing = [f for f in FILES.values() if not (args.data / f).exists()]
    if missing:
        print(f"skipped: {missing} not in {args.data} (pass --data)")
        return 0
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="cello-bench-baseline-") as tmp:
        cells = load_cells(args.data, Path(tmp))
    rows = [
        held_out_donor("kang3", cells["kang3"], min_n=3, max_n=8, per_n=args.per_n),
        held_out_donor("kang5", cells["kang5"], min_n=2, max_n=4, per_n=args.per_n),
        held_out_dataset("kang5", "kang3", cells, min_n=3, max_n=8, per_n=args.per_n),
        held_out_dataset("kang3", "kang5", cells, min_n=2, max_n=4, per_n=args.per_n),
        held_out_dataset("kang5", "pbmc68k", cells, min_n=3, max_n=8, per_n=args.per_n),
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"benchmark": "marker baseline on real PBMC data", "per_n": args.per_n,
                                    "splits": rows}, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

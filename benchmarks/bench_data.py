"""Benchmark `cello data cells` against a per-cell implementation of the same step.

    python benchmarks/bench_data.py                      # 200,000 x 20,000, plus a half-size run
    python benchmarks/bench_data.py --cells 50000        # a smaller file: fixed costs weigh more
    python benchmarks/bench_data.py --cells 400000       # a larger one: they weigh less
    python benchmarks/bench_data.py --cells 5000 --baseline-cells 1000 --repeat 1   # quick look

Generates a synthetic CELLxGENE-schema .h5ad (sparse counts, several donors, a realistic
spread of detected genes per cell), then times, in one run and each in a fresh process:
- `floor`: just reading X from the file, chunk by chunk: the slices of its CSR datasets with
  h5py, what any reader that copies X out of the file pays (cello itself maps uncompressed
  values instead of copying them, so part of this cost is one it no longer pays);
- `anndata read`: the same chunks through AnnData's sparse dataset (what the floor was before:
  its per-chunk checks cost about as much as the bytes; reported for comparison);
- `cello`: `cello.data.cells.make_cells` (the real stage: read obs, rank, context, write Parquet),
  with `--threads` ranking threads (default: the machine's cores);
- `per_cell`: the straightforward per-cell version of the step, as the original Cell-o1 scripts
  do it: for each cell take its row, densify it, arg-partition the top 50, sort them and look up
  the names. Primary figure: rows read from the file (AnnData backed mode, the per-cell way that
  keeps memory bounded like cello does); also reported: the same loop over a matrix loaded whole
  into memory (faster per cell, but its memory grows with the file). Both are timed on
  `--baseline-cells` cells and extrapolated linearly (a per-cell loop is linear), and their lists
  are checked to be identical to cello's for those cells.
Floor, AnnData read and cello run `--repeat` times each, interleaved, and the ratios use the
medians: on a shared machine one run says little (the JSON keeps every run, the load average
and the CPU seconds). Every timed run starts with the file in the page cache (read once,
untimed), and cello runs once untimed first (the first process after an install compiles its
ranking kernel into numba's cache; later ones load it). Peak memory (max RSS of each
child process) is measured at both sizes to show that cello's does not grow with the number of
cells. Prints ratios and writes benchmarks/results/bench_data.json.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
TOP_N = 50


def generate(path: Path, n_cells: int, n_genes: int, *, seed: int = 0, donors: int = 6) -> float:
    """Write a synthetic CELLxGENE-like h5ad; return the mean number of detected genes per cell."""
    import anndata as ad
    import pandas as pd
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    # Detected genes per cell: log-normal around ~1,000 (droplet data), gene popularity Zipf-like.
    per_cell = np.clip(rng.lognormal(np.log(900), 0.45, n_cells), 100, n_genes // 2).astype(np.int64)
    popularity = 1.0 / np.arange(1, n_genes + 1) ** 0.8
    popularity /= popularity.sum()
    indptr = np.concatenate([[0], np.cumsum(per_cell)])
    cols = rng.choice(n_genes, size=int(indptr[-1]), p=popularity).astype(np.int32)
    rows = np.repeat(np.arange(n_cells), per_cell)
    order = np.lexsort((cols, rows))
    rows, cols = rows[order], cols[order]
    dup = np.concatenate([[False], (rows[1:] == rows[:-1]) & (cols[1:] == cols[:-1])])
    rows, cols = rows[~dup], cols[~dup]
    counts = (rng.geometric(0.35, size=len(cols))).astype(np.float32)  # small integers: many ties
    x = sp.csr_matrix((counts, (rows, cols)), shape=(n_cells, n_genes), dtype=np.float32)
    types = [f"cell type {i}" for i in range(12)]
    obs = pd.DataFrame(
        {
            "cell_type": pd.Categorical(rng.choice(types, n_cells)),
            "donor_id": pd.Categorical([f"donor_{i % donors}" for i in range(n_cells)]),
            "sex": pd.Categorical(rng.choice(["female", "male", "unknown"], n_cells)),
            "development_stage": pd.Categorical(rng.choice(["40-year-old stage", "unknown"], n_cells)),
            "self_reported_ethnicity": pd.Categorical(["unknown"] * n_cells),
            "tissue": pd.Categorical(["lung"] * n_cells),
            "disease": pd.Categorical(["normal"] * n_cells),
            "suspension_type": pd.Categorical(["cell"] * n_cells),
        },
        index=[f"cell{i}" for i in range(n_cells)],
    )
    var = pd.DataFrame(
        {"feature_name": [f"GENE{i}" for i in range(n_genes)]}, index=[f"ENSG{i:011d}" for i in range(n_genes)]
    )
    ad.AnnData(X=x, obs=obs, var=var).write_h5ad(path)
    return float(x.nnz / n_cells)


# Each measurement runs in a fresh process so that max RSS is its own peak.
CHUNK = 4096  # rows per read, as `cello data cells` reads them (data.cells.chunk_size)


def _floor(path: str) -> dict:
    import h5py

    t, cpu = time.perf_counter(), time.process_time()
    with h5py.File(path) as h5:
        x = h5["X"]
        n, nnz = x["indptr"].shape[0] - 1, 0
        for r0 in range(0, n, CHUNK):
            ptr = x["indptr"][r0 : min(r0 + CHUNK, n) + 1]
            data, _indices = x["data"][ptr[0] : ptr[-1]], x["indices"][ptr[0] : ptr[-1]]
            nnz += len(data)
    return {"seconds": time.perf_counter() - t, "cpu_seconds": time.process_time() - cpu, "nnz": nnz}


def _anndata_read(path: str) -> dict:
    import anndata as ad
    import h5py

    t, cpu = time.perf_counter(), time.process_time()
    with h5py.File(path) as h5:
        ds = ad.io.sparse_dataset(h5["X"])
        nnz = 0
        for r0 in range(0, ds.shape[0], CHUNK):
            nnz += ds[r0 : r0 + CHUNK].nnz
    return {"seconds": time.perf_counter() - t, "cpu_seconds": time.process_time() - cpu, "nnz": nnz}


def _cello(path: str, out: str, threads: int) -> dict:
    import anndata  # noqa: F401  imported before the clock, as in `_floor`: both time the work
    import h5py  # noqa: F401

    from cello.config import CellsConfig
    from cello.data.cells import make_cells

    t, cpu = time.perf_counter(), time.process_time()
    summary = make_cells([path], out, cfg=CellsConfig(top_n=TOP_N, workers=1, threads=threads, chunk_size=CHUNK))
    return {"seconds": time.perf_counter() - t, "cpu_seconds": time.process_time() - cpu, "cells": summary.kept}


def _per_cell(path: str, limit: int, mode: str) -> dict:
    """The per-cell loop; `mode` "backed" reads each row from the file (bounded memory, like
    cello), "memory" loads the whole matrix first (needs RAM for the whole file)."""
    import anndata as ad

    t = time.perf_counter()
    adata = ad.read_h5ad(path, backed="r" if mode == "backed" else None)
    load = time.perf_counter() - t
    names = adata.var["feature_name"].to_numpy()
    lists = []
    t = time.perf_counter()
    for i in range(limit):
        row = adata.X[i].toarray().ravel()
        idx = np.argpartition(-row, TOP_N)[:TOP_N]
        # Same tie rule as cello (value desc, then lower gene index), zeros never ranked.
        cand = np.flatnonzero((row >= row[idx].min()) & (row != 0))
        idx = cand[np.lexsort((cand, -row[cand]))][:TOP_N]
        lists.append([names[j] for j in idx])
    loop = time.perf_counter() - t
    per_cell = loop / limit
    return {"load_seconds": load, "per_cell_seconds": per_cell,
            "seconds": load + per_cell * adata.n_obs, "lists": lists}


def _peak_rss_mib() -> float:
    """This process's peak resident memory (VmHWM; unlike ru_maxrss it is not inherited)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _child(conn, fn, args):
    result = fn(*args)
    result["max_rss_mib"] = _peak_rss_mib()
    conn.send(result)
    conn.close()


def warm_page_cache(path: str) -> None:
    """Read the file once, untimed, so that every timed run finds it in the page cache: the
    runs then compare work, not how much of the file the kernel happened to keep since the last
    run (a cold read times the disk, the same for every reader)."""
    with open(path, "rb") as f:
        while f.read(1 << 24):
            pass


def measure(fn, *args) -> dict:
    if args and str(args[0]).endswith(".h5ad"):
        warm_page_cache(str(args[0]))
    parent, child = mp.get_context("spawn").Pipe()
    proc = mp.get_context("spawn").Process(target=_child, args=(child, fn, args))
    proc.start()
    result = parent.recv()
    proc.join()
    return result


def _median(runs: list[dict], key: str = "seconds") -> float:
    return float(np.median([r[key] for r in runs]))


def run_size(tmp: Path, n_cells: int, n_genes: int, baseline_cells: int, *, repeat: int, threads: int) -> dict:
    h5 = tmp / f"synthetic_{n_cells}.h5ad"
    t = time.perf_counter()
    mean_genes = generate(h5, n_cells, n_genes)
    print(f"[{n_cells} x {n_genes}] generated in {time.perf_counter() - t:.1f} s "
          f"({h5.stat().st_size / 2**20:.0f} MiB, {mean_genes:.0f} detected genes per cell)")
    # One untimed run first: the first process after an install (or an edit of the kernel)
    # compiles the ranking kernel (~5 s) into numba's on-disk cache; every later one loads it.
    measure(_cello, str(h5), str(tmp / "cells.parquet"), threads)
    floors, reads, cellos = [], [], []
    for _ in range(repeat):  # interleaved, so that a burst of load hits all three alike
        floors.append(measure(_floor, str(h5)))
        reads.append(measure(_anndata_read, str(h5)))
        cellos.append(measure(_cello, str(h5), str(tmp / "cells.parquet"), threads))
        cellos[-1]["load_average"] = os.getloadavg()[0]
    floor = {"seconds": _median(floors), "max_rss_mib": max(r["max_rss_mib"] for r in floors)}
    cello = {"seconds": _median(cellos), "max_rss_mib": max(r["max_rss_mib"] for r in cellos)}
    timed = min(baseline_cells, n_cells)
    base = measure(_per_cell, str(h5), timed, "backed")
    memory = measure(_per_cell, str(h5), timed, "memory")
    import pandas as pd

    ours = pd.read_parquet(tmp / "cells.parquet", columns=["top_genes"]).top_genes.head(timed)
    identical = all(list(a) == b for a, b in zip(ours, base.pop("lists"), strict=False)) and all(
        list(a) == b for a, b in zip(ours, memory.pop("lists"), strict=False))
    out = {
        "cells": n_cells, "genes": n_genes, "mean_detected_genes": mean_genes,
        "floor_read_seconds": floor["seconds"], "floor_max_rss_mib": floor["max_rss_mib"],
        "anndata_read_seconds": _median(reads), "cello_seconds": cello["seconds"],
        "cello_cpu_seconds": _median(cellos, "cpu_seconds"), "cello_max_rss_mib": cello["max_rss_mib"],
        "runs": {"floor": [r["seconds"] for r in floors], "anndata_read": [r["seconds"] for r in reads],
                 "cello": [r["seconds"] for r in cellos], "cello_cpu": [r["cpu_seconds"] for r in cellos],
                 "load_average": [r["load_average"] for r in cellos]},
        "per_cell_seconds_extrapolated": base["seconds"], "per_cell_load_seconds": base["load_seconds"],
        "per_cell_us_per_cell": base["per_cell_seconds"] * 1e6, "per_cell_timed_cells": timed,
        "per_cell_max_rss_mib": base["max_rss_mib"],
        "in_memory_per_cell_seconds_extrapolated": memory["seconds"],
        "in_memory_per_cell_us_per_cell": memory["per_cell_seconds"] * 1e6,
        "in_memory_per_cell_max_rss_mib": memory["max_rss_mib"],
        "speedup_vs_per_cell": base["seconds"] / cello["seconds"],
        "speedup_vs_in_memory_per_cell": memory["seconds"] / cello["seconds"],
        "cello_over_floor": cello["seconds"] / floor["seconds"],
        "cello_over_anndata_read": cello["seconds"] / _median(reads),
        "identical_top_genes": identical,
    }
    runs = out["runs"]
    print(f"  floor (read X only): {out['floor_read_seconds']:.2f} s (runs {_fmt(runs['floor'])}), "
          f"{out['floor_max_rss_mib']:.0f} MiB; through AnnData: {out['anndata_read_seconds']:.2f} s")
    print(f"  cello data cells   : {out['cello_seconds']:.2f} s (runs {_fmt(runs['cello'])}; "
          f"CPU {_fmt(runs['cello_cpu'])} s; load {_fmt(runs['load_average'], 1)}), "
          f"{out['cello_max_rss_mib']:.0f} MiB ({out['cello_over_floor']:.1f}x the floor, "
          f"{out['cello_over_anndata_read']:.1f}x the AnnData read)")
    print(f"  per-cell           : {out['per_cell_seconds_extrapolated']:.1f} s "
          f"({out['per_cell_us_per_cell']:.0f} us/cell on {out['per_cell_timed_cells']} cells "
          f"+ {out['per_cell_load_seconds']:.1f} s load), "
          f"{out['per_cell_max_rss_mib']:.0f} MiB")
    print(f"  per-cell, in memory: {out['in_memory_per_cell_seconds_extrapolated']:.1f} s "
          f"({out['in_memory_per_cell_us_per_cell']:.0f} us/cell), {out['in_memory_per_cell_max_rss_mib']:.0f} MiB")
    print(f"  speed-up: {out['speedup_vs_per_cell']:.0f}x vs per-cell (backed), "
          f"{out['speedup_vs_in_memory_per_cell']:.0f}x vs per-cell in memory; "
          f"identical top-{TOP_N} lists: {identical}")
    return out


def run_real(paths: list[Path], *, repeat: int, threads: int, tmp: Path) -> list[dict]:
    """Floor and cello on real files as they are (the stage's defaults: cell_type, donor_id)."""
    out = []
    for path in paths:
        floors, cellos = [], []
        for _ in range(repeat):
            floors.append(measure(_floor, str(path)))
            cellos.append(measure(_cello, str(path), str(tmp / f"{path.stem}.parquet"), threads))
        row = {"file": path.name, "cells": cellos[0]["cells"], "floor_read_seconds": _median(floors),
               "cello_seconds": _median(cellos), "runs": {"floor": [r["seconds"] for r in floors],
                                                          "cello": [r["seconds"] for r in cellos]}}
        row["cello_over_floor"] = row["cello_seconds"] / row["floor_read_seconds"]
        print(f"  {path.name}: {row['cells']} cells, floor {row['floor_read_seconds']:.3f} s "
              f"({_fmt(row['runs']['floor'], 3)}), cello {row['cello_seconds']:.2f} s ({_fmt(row['runs']['cello'])}): "
              f"{row['cello_over_floor']:.0f}x (a small file: the fixed costs, reading obs and var, dominate)")
        out.append(row)
    return out


def _fmt(values: list[float], digits: int = 2) -> str:
    return "/".join(f"{v:.{digits}f}" for v in values)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=200_000)
    parser.add_argument("--genes", type=int, default=20_000)
    parser.add_argument("--baseline-cells", type=int, default=5_000, help="cells the per-cell loop is timed on")
    parser.add_argument("--repeat", type=int, default=3, help="runs of floor, AnnData read and cello (medians)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2, help="ranking threads of cello")
    parser.add_argument("--real", type=Path, nargs="*", default=[],
                        help="real CSR .h5ad files (CELLxGENE columns) to time as well, floor vs cello")
    parser.add_argument("--out", type=Path, default=RESULTS / "bench_data.json")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="cello-bench-") as tmp:
        real = run_real(args.real, repeat=args.repeat, threads=args.threads, tmp=Path(tmp)) if args.real else []
        sizes = [args.cells // 2, args.cells]
        runs = [run_size(Path(tmp), n, args.genes, args.baseline_cells, repeat=args.repeat, threads=args.threads)
                for n in sizes]
    big, small = runs[-1], runs[0]
    result = {
        "benchmark": "cello data cells vs per-cell top-50",
        "runs": runs,
        "speedup_vs_per_cell": big["speedup_vs_per_cell"],
        "cello_over_floor": big["cello_over_floor"],
        "cello_over_anndata_read": big["cello_over_anndata_read"],
        "cpu_count": os.cpu_count(), "threads": args.threads, "repeat": args.repeat, "real_files": real,
        "cello_memory_growth_mib": big["cello_max_rss_mib"] - small["cello_max_rss_mib"],
        "speedup_vs_in_memory_per_cell": big["speedup_vs_in_memory_per_cell"],
        "per_cell_memory_growth_mib": big["per_cell_max_rss_mib"] - small["per_cell_max_rss_mib"],
        "in_memory_per_cell_memory_growth_mib": (
            big["in_memory_per_cell_max_rss_mib"] - small["in_memory_per_cell_max_rss_mib"]
        ),
    }
    print(f"\nspeed-up vs per-cell (row read from the file): {result['speedup_vs_per_cell']:.0f}x (target >= 100x); "
          f"vs per-cell on an in-memory matrix: {result['speedup_vs_in_memory_per_cell']:.0f}x; "
          f"cello / read floor: {result['cello_over_floor']:.1f}x at {big['cells']} cells "
          f"({small['cello_over_floor']:.1f}x at {small['cells']}; target <= 3x), "
          f"/ AnnData read: {result['cello_over_anndata_read']:.1f}x")
    print(f"peak memory {small['cells']} -> {big['cells']} cells: cello {small['cello_max_rss_mib']:.0f} -> "
          f"{big['cello_max_rss_mib']:.0f} MiB, "
          f"per-cell {small['per_cell_max_rss_mib']:.0f} -> {big['per_cell_max_rss_mib']:.0f} MiB, "
          f"in-memory per-cell {small['in_memory_per_cell_max_rss_mib']:.0f} "
          f"-> {big['in_memory_per_cell_max_rss_mib']:.0f} MiB")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark cello.scoring: completions scored per second (N = 15, one core), and the share of
eval wall time spent outside generation.

    python benchmarks/bench_scoring.py                 # full run (~1 min; --no-eval: ~20 s)
    python benchmarks/bench_scoring.py --quick         # smaller rounds

Part 1 (scoring throughput): realistic N = 15 completions (a ~1,500-character reasoning block,
CELLxGENE-style type names) in three sets: `valid` (right format, some cells swapped),
`invalid` (a mix of duplicate labels, wrong count, missing/doubled tags, text outside the
blocks, truncation, empty output, no newline or a blank line between the blocks, an answer
over two lines) and `mixed` (half and half, shuffled). The process is pinned
to one CPU; each figure is the best of several rounds. Also timed: `reward()` as GRPO calls it
(chat-message completions), `repair()` and `compute_metrics()` (with repair and bootstrap).

Part 2 (share of eval wall time outside generation): a tiny-model `cello eval` over 30 demo
test puzzles through the transformers backend, at two generation budgets (16 and 128 new
tokens); see `eval_overhead_share`. Skipped with --no-eval.

Prints the figures and writes benchmarks/results/bench_scoring.json.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cello.scoring import compute_metrics, repair, reward, score  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
N = 15
TYPES = [
    "CD4-positive, alpha-beta T cell", "CD8-positive, alpha-beta T cell", "natural killer cell",
    "B cell", "classical monocyte", "non-classical monocyte", "plasmacytoid dendritic cell",
    "conventional dendritic cell", "platelet", "erythrocyte", "regulatory T cell",
    "mucosal invariant T cell", "gamma-delta T cell", "plasmablast", "hematopoietic stem cell",
    "memory B cell", "naive B cell", "mast cell",
]


def _think(rng: np.random.Generator) -> str:
    words = ["CD3E", "marks", "T", "cells;", "LYZ", "and", "S100A8", "point", "to", "monocytes.", "Cell", "3"]
    return " ".join(rng.choice(words, size=230))  # ~1,500 characters


def make_completions(kind: str, count: int, *, seed: int = 0) -> tuple[list[str], list[list[str]]]:
    """`count` completions of one kind with their gold answers (N = 15 each)."""
    rng = np.random.default_rng(seed)
    texts, golds = [], []
    for i in range(count):
        gold = [str(t) for t in rng.choice(TYPES, size=N, replace=False)]  # str, as read from JSON
        labels = list(gold)
        for _ in range(int(rng.integers(0, 4))):  # a few swapped cells
            a, b = rng.choice(N, size=2, replace=False)
            labels[a], labels[b] = labels[b], labels[a]
        think = _think(rng)
        good = f"<think>{think}</think>\n<answer>{' | '.join(labels)}</answer>"
        if kind == "valid" or (kind == "mixed" and i % 2 == 0):
            texts.append(good)
        else:
            mode = i % 10
            if mode == 0:  # duplicate label
                labels[1] = labels[0]
                texts.append(f"<think>{think}</think>\n<answer>{' | '.join(labels)}</answer>")
            elif mode == 1:  # wrong count
                texts.append(f"<think>{think}</think>\n<answer>{' | '.join(labels[:-2])}</answer>")
            elif mode == 2:  # missing think
                texts.append(f"{think}\n<answer>{' | '.join(labels)}</answer>")
            elif mode == 3:  # doubled answer
                texts.append(good + f"\n<answer>{' | '.join(labels)}</answer>")
            elif mode == 4:  # text outside the blocks
                texts.append("Sure, here is my analysis. " + good + " Hope this helps!")
            elif mode == 5:  # truncated by the length limit
                texts.append(good[: len(good) - 120])
            elif mode == 6:  # no newline between the blocks
                texts.append(good.replace("</think>\n<answer>", "</think><answer>"))
            elif mode == 7:  # a blank line between the blocks
                texts.append(good.replace("</think>\n<answer>", "</think>\n\n<answer>"))
            elif mode == 8:  # the answer over two lines: only the first is read
                texts.append(f"<think>{think}</think>\n<answer>{' | '.join(labels[:7])} |\n"
                             f"{' | '.join(labels[7:])}</answer>")
            else:  # empty output
                texts.append("")
        golds.append(gold)
    if kind == "mixed":
        order = rng.permutation(count)
        texts, golds = [texts[i] for i in order], [golds[i] for i in order]
    return texts, golds


def _best_rate(fn, count: int, rounds: int) -> float:
    """Items per second: best of `rounds` timed calls of fn() processing `count` items."""
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return count / best


def pin_one_core() -> str:
    if hasattr(os, "sched_setaffinity"):
        cpu = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpu})
        return f"pinned to CPU {cpu}"
    return "not pinned (no sched_setaffinity on this OS)"


def scoring_throughput(*, count: int, rounds: int) -> dict:
    out: dict[str, dict] = {}
    for kind in ("valid", "invalid", "mixed"):
        texts, golds = make_completions(kind, count, seed={"valid": 0, "invalid": 1, "mixed": 2}[kind])
        pairs = list(zip(texts, golds, strict=True))
        rate = _best_rate(lambda pairs=pairs: [score(t, g) for t, g in pairs], count, rounds)
        chats = [[{"role": "assistant", "content": t}] for t in texts]
        grpo = _best_rate(lambda chats=chats, golds=golds: reward(chats, golds), count, rounds)
        rep_n = max(count // 4, 50)
        rep_pairs = [(t, sorted(g)) for t, g in pairs[:rep_n]]
        repair(*rep_pairs[0])  # warm-up: the first call imports scipy
        rep = _best_rate(lambda rep_pairs=rep_pairs: [repair(t, c) for t, c in rep_pairs], len(rep_pairs),
                         max(rounds // 2, 1))
        out[kind] = {
            "score_per_s": rate, "us_per_score": 1e6 / rate, "reward_per_s": grpo, "repair_per_s": rep,
            "valid_share": float(np.mean([score(t, g).valid for t, g in pairs])),
            "legitimate_share": float(np.mean([score(t, g).legitimate for t, g in pairs])),
            "mean_chars": float(np.mean([len(t) for t in texts])),
        }
    texts, golds = make_completions("mixed", 1000, seed=3)
    records = [{"id": str(i), "completion": t, "answer": g} for i, (t, g) in enumerate(zip(texts, golds, strict=True))]
    t0 = time.perf_counter()
    compute_metrics(records, n_boot=1000)
    out["compute_metrics_1000_puzzles_s"] = time.perf_counter() - t0
    return out


# ---------------------------------------------------------------- part 2: eval overhead
def eval_overhead_share(*, puzzles: int = 30, max_new_tokens: tuple[int, ...] = (16, 128)) -> dict | None:
    """Share of `cello eval` wall time spent outside generation, on a tiny-model eval.

    Builds the demo data (builtin:pbmc68k with the repo's params.yaml, eval records of the test
    split) and a tiny model, then runs `cello.evaluate.evaluate` on the first `puzzles` test
    puzzles through the transformers backend, once per generation budget. The timing is the one
    eval writes into metrics.json: generation = the backend's generate calls; outside it =
    model load + prompt rendering, scoring and repair, the predictions journal, metrics with
    bootstrap, report and plot. Torch is already imported (by the model build), as in a
    long-lived process. The CPU pin of part 1 is lifted first: eval runs as it would for a user.
    Returns None when transformers is not installed.
    """
    if importlib.util.find_spec("cello.evaluate") is None or importlib.util.find_spec("transformers") is None:
        return None
    import logging
    import tempfile

    from cello.cli import main as cli
    from cello.config import EvalConfig, SamplingParams, TinyModelConfig
    from cello.evaluate import evaluate
    from cello.llm.tiny import build_tiny_model

    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
    logging.disable(logging.WARNING)
    params = str(Path(__file__).resolve().parents[1] / "params.yaml")
    runs = []
    with tempfile.TemporaryDirectory(prefix="bench-eval-") as tmp:
        root = Path(tmp)
        for argv in (
            ["data", "cells", "builtin:pbmc68k", "-o", str(root / "cells.parquet")],
            ["data", "puzzles", str(root / "cells.parquet"), "-o", str(root / "puzzles.parquet")],
            ["data", "split", str(root / "puzzles.parquet"), "-o", str(root / "splits")],
            ["data", "export", str(root / "splits"), "-o", str(root / "eval"), "--format", "eval"],
        ):
            if cli([*argv, "--params", params]) != 0:
                raise RuntimeError(f"demo data step failed: {argv}")
        model = build_tiny_model(root / "tiny", cfg=TinyModelConfig(init_std=0.2))
        for budget in max_new_tokens:
            res = evaluate(root / "eval" / "test.jsonl", root / f"run-{budget}", model=str(model),
                           sampling=SamplingParams(max_new_tokens=budget), cfg=EvalConfig(limit=puzzles),
                           progress=False)
            t, o = res.metrics["timing"], res.metrics["overall"]
            runs.append({
                "max_new_tokens": budget, "puzzles": o["count"], "mean_completion_tokens": o["mean_length_tokens"],
                "wall_s": t["wall_s"], "load_s": t["load_s"], "generation_s": t["generation_s"],
                "scoring_io_s": t["scoring_io_s"], "outside_generation_share": t["outside_generation_share"],
                "outside_generation_share_excluding_load": t["scoring_io_s"] / (t["wall_s"] - t["load_s"]),
                "scoring_io_ms_per_puzzle": 1e3 * t["scoring_io_s"] / o["count"],
            })
    logging.disable(logging.NOTSET)
    first = runs[0]
    return {**first, "runs": runs, "backend": "transformers (CPU, float32)", "cpus": os.cpu_count()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=4000, help="Completions per set.")
    parser.add_argument("--rounds", type=int, default=5, help="Timed rounds (best is kept).")
    parser.add_argument("--quick", action="store_true", help="Fewer completions and rounds.")
    parser.add_argument("--no-eval", action="store_true", help="Skip part 2 (the tiny-model eval).")
    parser.add_argument("--out", type=Path, default=RESULTS / "bench_scoring.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.count, args.rounds = 1000, 3
    pinned = pin_one_core()
    print(f"scoring throughput, N = {N}, {args.count} completions per set, best of {args.rounds} ({pinned})")
    thr = scoring_throughput(count=args.count, rounds=args.rounds)
    for kind in ("valid", "invalid", "mixed"):
        r = thr[kind]
        print(f"  {kind:8s} score: {r['score_per_s']:>9,.0f}/s ({r['us_per_score']:.1f} us each)  "
              f"reward(): {r['reward_per_s']:>9,.0f}/s  repair: {r['repair_per_s']:>8,.0f}/s  "
              f"[valid {r['valid_share']:.0%}, legitimate {r['legitimate_share']:.0%}, {r['mean_chars']:.0f} chars]")
    print(f"  compute_metrics, 1000 puzzles (score + repair + bootstrap x1000): "
          f"{thr['compute_metrics_1000_puzzles_s']:.2f} s")
    overhead = None if args.no_eval else eval_overhead_share()
    if overhead is None:
        print("eval wall time outside generation (tiny-model eval): not measured yet")
    else:
        for r in overhead["runs"]:
            print(f"eval wall time outside generation (tiny-model eval, {r['puzzles']} demo puzzles, max_new_tokens "
                  f"{r['max_new_tokens']}): {r['outside_generation_share']:.1%} of {r['wall_s']:.1f} s "
                  f"(generation {r['generation_s']:.1f} s, load {r['load_s']:.2f} s, "
                  f"scoring/IO {r['scoring_io_s']:.2f} s = {r['scoring_io_ms_per_puzzle']:.0f} ms/puzzle; "
                  f"{r['outside_generation_share_excluding_load']:.1%} without the load)")
    result = {
        "benchmark": "bench_scoring", "n": N, "count": args.count, "rounds": args.rounds, "cpu": pinned,
        "python": platform.python_version(), "machine": platform.machine(),
        "scoring": thr, "eval_overhead": overhead if overhead is not None else "not measured yet",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

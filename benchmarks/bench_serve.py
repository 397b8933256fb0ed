"""Load test of `cello serve` on loopback: C concurrent clients for T seconds each (C = 1, 4, 16).

    python benchmarks/bench_serve.py                      # tiny model, T = 10 s per level (~1 min)
    python benchmarks/bench_serve.py --quick              # T = 3 s
    python benchmarks/bench_serve.py --model models/sft-merged --max-new-tokens 256

A tiny model is built (or --model is used), `cello serve` starts as a subprocess on a free
127.0.0.1 port, and each client thread sends v1 :predict requests back to back: one puzzle
of 8 cells x 50 genes (the paper's shape) per request, greedy, --max-new-tokens new tokens.
A share of the requests (--bad-share) is invalid on purpose (duplicate candidates, too many
cells, broken JSON): they must get 400, under load, and count as rejected, not as errors.

Reported per level: requests/s, p50/p95/p99 latency of the valid requests, the mean batch
size (from the server's cello_batch_conversations histogram), errors (anything but 200 for a
valid request or 400 for a bad one; must be 0), and latency relative to C = 1. The server is
stopped with SIGTERM. Writes benchmarks/results/bench_serve.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
RESULTS = REPO / "benchmarks" / "results"

GENES = [f"G{i}" for i in range(400)] + ["CD3E", "CD4", "LYZ", "CD14", "MS4A1", "CD79A", "NKG7", "GNLY", "PPBP", "HBB"]
TYPES = ["B cell", "CD4-positive, alpha-beta T cell", "CD8-positive, alpha-beta T cell", "natural killer cell",
         "classical monocyte", "non-classical monocyte", "platelet", "erythrocyte", "plasmacytoid dendritic cell"]


def make_puzzle(rng: random.Random, n: int = 8, genes: int = 50) -> dict:
    return {
        "id": f"bench-{rng.randrange(10**9)}",
        "context": "The cell is from a female donor at the adult stage. The sample was taken from the blood.",
        "cells": [rng.sample(GENES, genes) for _ in range(n)],
        "candidates": rng.sample(TYPES, n),
    }


def bad_request(rng: random.Random) -> bytes:
    p = make_puzzle(rng)
    kind = rng.randrange(3)
    if kind == 0:
        p["candidates"][1] = p["candidates"][0]  # duplicate candidates
    elif kind == 1:
        p["cells"] = p["cells"] * 5  # 40 cells, 8 candidates
    else:
        return b'{"instances": [{"cells": '  # broken JSON
    return json.dumps({"instances": [p]}).encode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def batch_stats(url: str) -> tuple[float, float]:
    text = httpx.get(url + "/metrics", timeout=10).text
    def value(name: str) -> float:
        m = re.search(rf"^{name} ([0-9.e+]+)$", text, re.M)
        return float(m.group(1)) if m else 0.0
    return value("cello_batch_conversations_sum"), value("cello_batch_conversations_count")


def run_level(url: str, clients: int, seconds: float, *, max_new_tokens: int, bad_share: float, seed: int) -> dict:
    stop = time.monotonic() + seconds
    lock = threading.Lock()
    latencies: list[float] = []
    counts = {"ok": 0, "rejected": 0, "errors": 0}
    error_samples: list[str] = []
    sum0, count0 = batch_stats(url)

    def client(i: int) -> None:
        rng = random.Random(seed * 1000 + i)
        with httpx.Client(base_url=url, timeout=300) as http:
            while time.monotonic() < stop:
                bad = rng.random() < bad_share
                body = bad_request(rng) if bad else json.dumps(
                    {"instances": [make_puzzle(rng)], "parameters": {"max_new_tokens": max_new_tokens}}).encode()
                t0 = time.perf_counter()
                try:
                    r = http.post("/v1/models/cello:predict", content=body, headers={"Content-Type": "application/json"})
                    status, ok_body = r.status_code, (r.status_code != 200 or "predictions" in r.json())
                except (httpx.HTTPError, ValueError) as exc:
                    status, ok_body = -1, False
                    r = None
                    err = f"{type(exc).__name__}: {exc}"
                dt = time.perf_counter() - t0
                with lock:
                    if not bad and status == 200 and ok_body:
                        counts["ok"] += 1
                        latencies.append(dt)
                    elif bad and status == 400:
                        counts["rejected"] += 1
                    else:
                        counts["errors"] += 1
                        if len(error_samples) < 5:
                            error_samples.append(f"{status}: {r.text[:200] if r is not None else err}")

    t_start = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t_start
    sum1, count1 = batch_stats(url)
    lat = np.array(latencies) * 1000 if latencies else np.array([float("nan")])
    return {
        "clients": clients,
        "seconds": round(wall, 2),
        "requests_ok": counts["ok"],
        "requests_rejected_400": counts["rejected"],
        "errors": counts["errors"],
        "error_samples": error_samples,
        "throughput_rps": round(counts["ok"] / wall, 3),
        "p50_ms": round(float(np.percentile(lat, 50)), 1),
        "p95_ms": round(float(np.percentile(lat, 95)), 1),
        "p99_ms": round(float(np.percentile(lat, 99)), 1),
        "mean_batch_size": round((sum1 - sum0) / (count1 - count0), 2) if count1 > count0 else None,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="Model directory [a freshly built tiny model].")
    ap.add_argument("--seconds", type=float, default=10.0, help="Duration per concurrency level.")
    ap.add_argument("--clients", default="1,4,16", help="Concurrency levels.")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--max-batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads of the server (1: best for the tiny model on a shared machine).")
    ap.add_argument("--bad-share", type=float, default=0.1, help="Share of deliberately invalid requests.")
    ap.add_argument("--quick", action="store_true", help="3 s per level.")
    ap.add_argument("--out", default=str(RESULTS / "bench_serve.json"))
    args = ap.parse_args(argv)
    seconds = 3.0 if args.quick else args.seconds
    levels = [int(c) for c in args.clients.split(",")]

    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        model = args.model
        if model is None:
            from cello.llm.tiny import build_tiny_model

            model = str(build_tiny_model(Path(tmp) / "tiny"))
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        log = open(Path(tmp) / "server.log", "w")  # noqa: SIM115
        env = {k: v for k, v in os.environ.items() if k != "CELLO_SERVE_TOKEN"} | {"TOKENIZERS_PARALLELISM": "false"}
        cmd = [sys.executable, "-m", "cello.cli", "serve", "--model", model, "--host", "127.0.0.1", "--port", str(port),
               "--max-new-tokens", str(args.max_new_tokens), "--max-batch-size", str(args.max_batch_size),
               "--timeout-s", "300", "--threads", str(args.threads), "--params", str(Path(tmp) / "none.yaml")]
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        try:
            t0 = time.monotonic()
            while True:
                if proc.poll() is not None:
                    raise SystemExit(f"server exited:\n{(Path(tmp) / 'server.log').read_text()[-2000:]}")
                try:
                    if httpx.get(url + "/v1/models/cello", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() - t0 > 180:
                    raise SystemExit("server not ready after 180 s")
                time.sleep(0.2)
            startup_s = time.monotonic() - t0
            run_level(url, 2, 2.0, max_new_tokens=args.max_new_tokens, bad_share=0.0, seed=99)  # warm-up
            results = []
            for c in levels:
                res = run_level(url, c, seconds, max_new_tokens=args.max_new_tokens, bad_share=args.bad_share, seed=c)
                results.append(res)
                print(f"C={c:>2}: {res['throughput_rps']:7.2f} req/s  p50 {res['p50_ms']:7.1f} ms  p95 {res['p95_ms']:7.1f} ms  "
                      f"p99 {res['p99_ms']:7.1f} ms  batch {res['mean_batch_size']}  ok {res['requests_ok']}  "
                      f"rejected {res['requests_rejected_400']}  errors {res['errors']}", flush=True)
        finally:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
            log.close()

    base = results[0]["p50_ms"]
    for res in results:
        res["p50_vs_c1"] = round(res["p50_ms"] / base, 2) if base else None
        res["throughput_vs_c1"] = round(res["throughput_rps"] / results[0]["throughput_rps"], 2) if results[0]["throughput_rps"] else None
    report = {
        "benchmark": "bench_serve",
        "what": "cello serve (KServe ModelServer, in-process transformers, tiny model) on loopback; v1 :predict, 1 puzzle of 8 cells x 50 genes per request",
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count()},
        "settings": {"seconds_per_level": seconds, "max_new_tokens": args.max_new_tokens, "max_batch_size": args.max_batch_size, "threads": args.threads,
                     "bad_share": args.bad_share, "model": "tiny (built)" if args.model is None else args.model},
        "startup_s": round(startup_s, 2),
        "server_exit_code": proc.returncode,
        "levels": results,
        "total_errors": sum(r["errors"] for r in results),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    from cello._io import write_json

    write_json(report, out)
    print(f"latency p50 vs C=1: {[r['p50_vs_c1'] for r in results]}; throughput vs C=1: {[r['throughput_vs_c1'] for r in results]}")
    print(f"errors: {report['total_errors']} (must be 0); server exit code {proc.returncode}; wrote {out}")
    return 0 if report["total_errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

"""What the KServe transformer costs: requests straight to vLLM vs through `cello serve`, same load.

    python benchmarks/bench_serve_vllm.py                 # tiny model, T = 12 s per level and path
    python benchmarks/bench_serve_vllm.py --quick         # T = 4 s
    python benchmarks/bench_serve_vllm.py --model models/sft-merged --max-new-tokens 64

The production topology on loopback: a real vLLM OpenAI server (from the vLLM env, `make vllm`)
serving a model built by `cello model tiny` (or --model), and `cello serve --model <vLLM>/v1`
in front of it (transformer mode). At each concurrency level C (1, 4), C client threads send
requests back to back to each path, in alternating rounds so that the two paths share the
machine's noise alike:
- direct:  POST <vLLM>/v1/chat/completions with the very messages the transformer renders for
  the puzzle (the same prompt template), greedy, --max-new-tokens;
- through: POST <cello serve>/v1/models/cello:predict with the puzzle (8 cells x 50 genes, the
  paper's shape), greedy, the same budget.
Greedy decoding of the same prompt generates the same tokens both ways (checked), so the
difference is the transformer's own work: HTTP in and out, validation, prompt rendering, the
batcher, the format check and repair, plus one more loopback hop.

Reported per level: requests/s and p50/p99 latency of each path, the added p50 and p99 (through
minus direct; goal: under 5 ms at p50), the throughput lost, and the CPU time `cello serve` spent
per request (from /proc: its own work, whatever the machine's load). On a small shared machine
the transformer's CPU competes with vLLM's for the same cores, so the wall-clock figures carry
that contention too; in a cluster the two run in separate pods. The servers are stopped by PID.
Writes benchmarks/results/bench_serve_vllm.json. Without a vLLM env it says why and exits 0.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import signal
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
RESULTS = REPO / "benchmarks" / "results" / "bench_serve_vllm.json"


def make_puzzle(*, cells: int = 8, genes: int = 50, seed: int = 0) -> dict:
    """One request puzzle in the paper's shape: marker genes of each type, then filler genes."""
    from cello.llm.tiny import _HOUSEKEEPING, _MARKERS

    rng = random.Random(seed)
    types = rng.sample(sorted(_MARKERS), cells)
    pool = sorted({g for v in _MARKERS.values() for g in v} | set(_HOUSEKEEPING))
    rows = [{"id": f"c{i}", "genes": list(dict.fromkeys(_MARKERS[t] + rng.sample(pool, genes)))[:genes]}
            for i, t in enumerate(types)]
    return {"id": "bench", "context": "The cells come from a 45-year-old female donor, blood tissue, normal.",
            "cells": rows, "candidates": sorted(types)}


def start_transformer(upstream: str, *, workdir: Path, max_new_tokens: int) -> tuple[subprocess.Popen, str]:
    from tests.conftest import free_port

    port = free_port()
    (workdir / "defaults.yaml").write_text("{}\n")
    cmd = [sys.executable, "-m", "cello.cli", "serve", "--model", upstream, "--host", "127.0.0.1", "--port", str(port),
           "--params", str(workdir / "defaults.yaml"), "--max-new-tokens", str(max_new_tokens)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    env.pop("CELLO_SERVE_TOKEN", None)
    log = open(workdir / "transformer.log", "w")  # noqa: SIM115 - lives as long as the server
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"cello serve exited with {proc.returncode}; see {workdir / 'transformer.log'}")
        try:
            if httpx.get(f"{url}/v2/health/ready", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    proc.kill()
    raise SystemExit(f"cello serve not ready in 120 s; see {workdir / 'transformer.log'}")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def load(send, *, clients: int, seconds: float) -> tuple[list[float], int, float]:
    """`clients` threads calling send(client) back to back for `seconds`: latencies (s), errors, wall."""
    lat: list[float] = []
    errors = [0]
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def worker() -> None:
        with httpx.Client(timeout=120) as client:
            while time.monotonic() < stop_at:
                t = time.perf_counter()
                ok = send(client)
                dt = time.perf_counter() - t
                with lock:
                    (lat.append(dt) if ok else errors.__setitem__(0, errors[0] + 1))

    start = time.monotonic()
    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return lat, errors[0], time.monotonic() - start


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc); nan elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q) * 1000) if values else float("nan")


def summarize(clients: int, res: dict[str, tuple[list[float], int, float]]) -> dict:
    """One level's figures per path, and what going through the transformer adds."""
    row: dict = {"clients": clients}
    for name, (lat, err, wall) in res.items():
        row[name] = {"requests": len(lat), "errors": err, "rps": len(lat) / wall if wall else 0.0,
                     "p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99)}
    direct, through = row["direct"], row["through"]
    row["added_p50_ms"] = through["p50_ms"] - direct["p50_ms"]
    row["added_p99_ms"] = through["p99_ms"] - direct["p99_ms"]
    row["throughput_lost"] = 1 - through["rps"] / direct["rps"] if direct["rps"] else None
    return row


def render(row: dict) -> str:
    d, t = row["direct"], row["through"]
    return (f"C={row['clients']:<2} direct {d['rps']:6.1f} req/s p50 {d['p50_ms']:7.1f} ms p99 {d['p99_ms']:7.1f} ms"
            f" | through cello serve {t['rps']:6.1f} req/s p50 {t['p50_ms']:7.1f} ms p99 {t['p99_ms']:7.1f} ms"
            f" | added p50 {row['added_p50_ms']:+6.1f} ms p99 {row['added_p99_ms']:+6.1f} ms,"
            f" throughput lost {row['throughput_lost']:+.1%}, errors {d['errors']}/{t['errors']};"
            f" cello serve CPU {row['transformer_cpu_ms_per_request']:.1f} ms/request")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="Model dir to serve (default: a tiny model built here)")
    ap.add_argument("--seconds", type=float, default=12.0, help="Load time per level and path")
    ap.add_argument("--quick", action="store_true", help="4 s per level and path")
    ap.add_argument("--levels", default="1,4", help="Concurrency levels")
    ap.add_argument("--rounds", type=int, default=4, help="Alternating rounds per level")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    seconds = 4.0 if args.quick else args.seconds

    from tests.vllm_server import VLLMServer, VLLMUnavailable, vllm_python

    try:
        python = vllm_python()
    except VLLMUnavailable as exc:
        print(f"bench_serve_vllm: skipped, {exc}")
        return

    from cello.data.prompt import PromptTemplate

    work = Path(tempfile.mkdtemp(prefix="bench-serve-vllm-"))
    model = Path(args.model) if args.model else None
    if model is None:
        from cello.config import TinyModelConfig
        from cello.llm.tiny import build_tiny_model

        model = build_tiny_model(work / "tiny", cfg=TinyModelConfig(init_std=0.2))
    puzzle = make_puzzle()
    messages = PromptTemplate().messages(puzzle["context"], [c["genes"] for c in puzzle["cells"]], puzzle["candidates"])
    budget = args.max_new_tokens
    with VLLMServer(model, python=python, name="cello", log_path=work / "vllm.log") as vllm:
        print(f"vLLM ready in {vllm.ready_s:.0f} s at {vllm.url}")
        proc, via = start_transformer(vllm.url, workdir=work, max_new_tokens=budget)
        try:
            direct_body = {"model": "cello", "messages": messages, "max_tokens": budget, "temperature": 0.0, "n": 1}
            via_body = {"instances": [puzzle]}

            def direct(client: httpx.Client) -> bool:
                r = client.post(f"{vllm.url}/chat/completions", json=direct_body)
                return r.status_code == 200

            def through(client: httpx.Client) -> bool:
                r = client.post(f"{via}/v1/models/cello:predict", json=via_body)
                return r.status_code == 200

            with httpx.Client(timeout=120) as c:  # warm both paths; the same tokens both ways
                a = c.post(f"{vllm.url}/chat/completions", json=direct_body).json()["choices"][0]["message"]["content"]
                b = c.post(f"{via}/v1/models/cello:predict", json=via_body).json()["predictions"][0]["completion"]
            same = a == b
            levels = []
            for clients in (int(x) for x in args.levels.split(",")):
                res = {"direct": ([], 0, 0.0), "through": ([], 0, 0.0)}
                cpu = 0.0
                for _ in range(args.rounds):
                    for name, send in (("direct", direct), ("through", through)):
                        before = cpu_seconds(proc.pid)
                        lat, err, wall = load(send, clients=clients, seconds=seconds / args.rounds)
                        if name == "through":
                            cpu += cpu_seconds(proc.pid) - before
                        old = res[name]
                        res[name] = (old[0] + lat, old[1] + err, old[2] + wall)
                levels.append(summarize(clients, res))
                # the transformer's own work, free of the machine's noise: its CPU time per request
                levels[-1]["transformer_cpu_ms_per_request"] = 1000 * cpu / max(len(res["through"][0]), 1)
                print(render(levels[-1]))
        finally:
            stop(proc)
    goal = levels[0]["added_p50_ms"] < 5.0 if levels else None
    print(f"same completion both ways: {same}; added p50 at C={levels[0]['clients']}: "
          f"{levels[0]['added_p50_ms']:.1f} ms (goal < 5 ms: {'met' if goal else 'not met'})")
    out = {"bench": "serve_vllm", "model": str(model), "max_new_tokens": budget, "seconds_per_level": seconds,
           "rounds": args.rounds, "puzzle": {"cells": len(puzzle["cells"]), "genes": len(puzzle["cells"][0]["genes"])},
           "same_completion": same, "levels": levels, "goal_added_p50_under_5ms": goal,
           "vllm_ready_s": vllm.ready_s, "machine": {"python": platform.python_version(), "cpus": os.cpu_count()}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()

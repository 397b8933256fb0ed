"""Load and abuse test of `cello serve` on loopback: C concurrent clients for T seconds each
(C = 1, 4, 16), then an abandoned-client wave, an oversized prompt and SIGTERM under a backlog.

    python benchmarks/bench_serve.py                      # tiny model, T = 10 s per level (~3 min in all)
    python benchmarks/bench_serve.py --quick              # T = 3 s
    python benchmarks/bench_serve.py --scenarios abandoned,sigterm
    python benchmarks/bench_serve.py --model models/sft-merged --max-new-tokens 256

A tiny model is built (or --model is used), `cello serve` starts as a subprocess on a free
127.0.0.1 port, and each client thread sends v1 :predict requests back to back: one puzzle
of 8 cells x 50 genes (the paper's shape) per request, greedy, --max-new-tokens new tokens.
A share of the requests (--bad-share) is invalid on purpose (duplicate candidates, too many
cells, broken JSON): they must get 400, under load, and count as rejected, not as errors.

Reported per level: requests/s, p50/p95/p99 latency of the valid requests, the mean batch
size (from the server's cello_batch_conversations histogram), errors (anything but 200 for a
valid request or 400 for a bad one; must be 0), and latency relative to C = 1. The server is
stopped with SIGTERM. Then (each a function below, with what it reports):
- abandoned: 30 clients send 8 puzzles each and leave after 0.5 s; a small request's latency
  at once and 1 s later, against its idle latency, and the batches generated meanwhile;
- oversized: a 3.6 MiB chat message: time to its 400 and the server's peak extra memory, then
  four at once and a small chat request's latency meanwhile;
- sigterm: a fresh server with 80 eight-puzzle requests queued gets SIGTERM: seconds to exit,
  exit code, readiness right after, responses by status (every 503 JSON with Retry-After).
Writes benchmarks/results/bench_serve.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
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
                    r = http.post(
                        "/v1/models/cello:predict", content=body, headers={"Content-Type": "application/json"}
                    )
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


class Server:
    """`cello serve` on a free loopback port, as a subprocess (stopped with SIGTERM by its PID)."""

    def __init__(self, model: str, tmp: Path, name: str, extra: list[str]) -> None:
        from tests.conftest import free_port

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = Path(tmp) / f"{name}.log"
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        env = {k: v for k, v in os.environ.items() if k != "CELLO_SERVE_TOKEN"} | {"TOKENIZERS_PARALLELISM": "false"}
        params = Path(tmp) / "defaults.yaml"  # every setting at its built-in default
        params.write_text("{}\n")
        cmd = [
            sys.executable,
            "-m",
            "cello.cli",
            "serve",
            "--model",
            model,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--params",
            str(params),
            *extra,
        ]
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        t0 = time.monotonic()
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(f"server exited:\n{self.log_path.read_text()[-2000:]}")
            try:
                if httpx.get(self.url + "/v1/models/cello", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() - t0 > 180:
                raise SystemExit("server not ready after 180 s")
            time.sleep(0.2)
        self.startup_s = time.monotonic() - t0

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


def small_request(url: str, *, timeout: float = 120) -> tuple[int, float]:
    """One 3-cell puzzle, 8 new tokens: (status, seconds)."""
    body = {"instances": [make_puzzle(random.Random(7), n=3, genes=5)], "parameters": {"max_new_tokens": 8}}
    t0 = time.perf_counter()
    r = httpx.post(url + "/v1/models/cello:predict", json=body, timeout=timeout)
    return r.status_code, time.perf_counter() - t0


def idle_latency(url: str, repeats: int = 5) -> float:
    small_request(url)  # warm the connection path
    return float(np.median([small_request(url)[1] for _ in range(repeats)]))


def abandoned_wave(
    url: str, *, clients: int = 30, puzzles: int = 8, client_timeout: float = 0.5, max_new_tokens: int = 64
) -> dict:
    """`clients` clients send `puzzles` puzzles each, give up after `client_timeout` s and disconnect;
    then a small request at once, and another 1 s later: their latency against the idle one (the server
    should not work for clients that are gone). The first one can wait for the one batch already in its
    prompt pass (prefill), which cannot be interrupted; every later step can."""
    idle = idle_latency(url)
    _, count0 = batch_stats(url)
    body = json.dumps(
        {
            "instances": [make_puzzle(random.Random(i)) for i in range(puzzles)],
            "parameters": {"max_new_tokens": max_new_tokens},
        }
    ).encode()
    gave_up = []

    def client() -> None:
        try:
            with httpx.Client(timeout=client_timeout) as http:
                http.post(url + "/v1/models/cello:predict", content=body, headers={"Content-Type": "application/json"})
        except httpx.TimeoutException:
            gave_up.append(1)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    status, fresh = small_request(url)
    time.sleep(1.0)
    settled_status, settled = small_request(url)
    _, count1 = batch_stats(url)
    return {
        "clients": clients,
        "puzzles_per_request": puzzles,
        "client_timeout_s": client_timeout,
        "clients_gave_up": len(gave_up),
        "idle_latency_ms": round(idle * 1000, 1),
        "fresh_latency_ms": round(fresh * 1000, 1),
        "fresh_status": status,
        "fresh_vs_idle": round(fresh / idle, 2),
        "after_1s_latency_ms": round(settled * 1000, 1),
        "after_1s_status": settled_status,
        "after_1s_vs_idle": round(settled / idle, 2),
        "batches_during_and_after_wave": int(count1 - count0) - 2,
    }


def rss_peak(pid: int, stop: threading.Event, out: dict) -> None:
    """Sample the server's resident memory every 10 ms until `stop` (Linux /proc)."""
    peak = 0
    while not stop.is_set():
        try:
            text = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            break
        m = re.search(r"^VmRSS:\s+(\d+) kB", text, re.M)
        peak = max(peak, int(m.group(1)) if m else 0)
        stop.wait(0.01)
    out["peak_kb"] = peak


def oversized_prompt(url: str, pid: int, *, mib: float = 3.6, parallel: int = 4) -> dict:
    """A chat message of `mib` MiB of "a a a ...": time to its 400 and the server's peak RSS; then
    `parallel` of them at once and the latency of a small chat request meanwhile."""
    chat = url + "/openai/v1/chat/completions"
    small = {"model": "cello", "messages": [{"role": "user", "content": "Cell 1: CD3E, CD4"}], "max_tokens": 4}

    def small_chat() -> float:
        t0 = time.perf_counter()
        httpx.post(chat, json=small, timeout=120).raise_for_status()
        return time.perf_counter() - t0

    small_chat()
    small_idle = float(np.median([small_chat() for _ in range(5)]))
    content = "a " * int(mib * 2**20 / 2)
    body = json.dumps({"model": "cello", "messages": [{"role": "user", "content": content}], "max_tokens": 4}).encode()
    base_kb = int(re.search(r"^VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.M).group(1))
    stop, peak = threading.Event(), {}
    sampler = threading.Thread(target=rss_peak, args=(pid, stop, peak))
    sampler.start()
    t0 = time.perf_counter()
    r = httpx.post(chat, content=body, headers={"Content-Type": "application/json"}, timeout=300)
    one_s = time.perf_counter() - t0
    stop.set()
    sampler.join()
    statuses = []

    def big() -> None:
        statuses.append(
            httpx.post(chat, content=body, headers={"Content-Type": "application/json"}, timeout=300).status_code
        )

    threads = [threading.Thread(target=big) for _ in range(parallel)]
    for t in threads:
        t.start()
    time.sleep(0.2)  # the big bodies are on their way
    during = small_chat()
    for t in threads:
        t.join()
    return {
        "body_mib": round(len(body) / 2**20, 2),
        "status": r.status_code,
        "time_to_answer_ms": round(one_s * 1000, 1),
        "rss_before_mib": round(base_kb / 1024, 1),
        "rss_peak_extra_mib": round((peak.get("peak_kb", 0) - base_kb) / 1024, 1),
        "parallel": parallel,
        "parallel_statuses": sorted(statuses),
        "small_chat_idle_ms": round(small_idle * 1000, 1),
        "small_chat_during_parallel_ms": round(during * 1000, 1),
    }


def sigterm_backlog(
    model: str,
    tmp: Path,
    *,
    requests: int = 80,
    puzzles: int = 8,
    max_new_tokens: int = 64,
    extra: list[str] | None = None,
) -> dict:
    """`requests` requests of `puzzles` puzzles queued, then SIGTERM: seconds to exit, exit code,
    responses by status (conn = no HTTP answer), and whether every 503 is JSON with Retry-After."""
    server = Server(
        model,
        tmp,
        "sigterm",
        ["--max-new-tokens", str(max_new_tokens), "--threads", "1", "--timeout-s", "300", *(extra or [])],
    )
    body = json.dumps(
        {
            "instances": [make_puzzle(random.Random(i)) for i in range(puzzles)],
            "parameters": {"max_new_tokens": max_new_tokens},
        }
    ).encode()
    statuses: list[str] = []
    bad_503: list[str] = []
    lock = threading.Lock()

    def client() -> None:
        try:
            r = httpx.post(
                server.url + "/v1/models/cello:predict",
                content=body,
                headers={"Content-Type": "application/json"},
                timeout=120,
            )
            status = str(r.status_code)
            if r.status_code == 503:
                try:
                    json_ok = "error" in r.json()
                except ValueError:
                    json_ok = False
                if not json_ok or "retry-after" not in r.headers:
                    bad_503.append(r.text[:200])
            elif r.status_code >= 500:
                status = f"{r.status_code}: {r.text[:80]}"
        except httpx.HTTPError as exc:
            status = f"conn: {type(exc).__name__}"
        with lock:
            statuses.append(status)

    threads = [threading.Thread(target=client) for _ in range(requests)]
    for t in threads:
        t.start()
    time.sleep(3.0)  # the requests are queued
    t_sig = time.monotonic()
    os.kill(server.proc.pid, signal.SIGTERM)
    try:
        ready = httpx.get(server.url + "/v2/health/ready", timeout=2).status_code
    except httpx.HTTPError as exc:
        ready = f"conn: {type(exc).__name__}"
    server.proc.wait(timeout=120)
    exit_s = time.monotonic() - t_sig
    for t in threads:
        t.join()
    code = server.stop()
    by_status: dict[str, int] = {}
    for s in statuses:
        by_status[s] = by_status.get(s, 0) + 1
    return {
        "requests": requests,
        "puzzles_per_request": puzzles,
        "seconds_to_exit": round(exit_s, 2),
        "exit_code": code,
        "ready_after_sigterm": ready,
        "responses": dict(sorted(by_status.items())),
        "non_json_503_or_no_retry_after": len(bad_503),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="Model directory [a freshly built tiny model].")
    ap.add_argument("--seconds", type=float, default=10.0, help="Duration per concurrency level.")
    ap.add_argument("--clients", default="1,4,16", help="Concurrency levels.")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--max-batch-size", type=int, default=8)
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads of the server (1: best for the tiny model on a shared machine).",
    )
    ap.add_argument("--bad-share", type=float, default=0.1, help="Share of deliberately invalid requests.")
    ap.add_argument("--quick", action="store_true", help="3 s per level.")
    ap.add_argument(
        "--scenarios",
        default="load,abandoned,oversized,sigterm",
        help="Which scenarios to run (comma-separated): load, abandoned, oversized, sigterm.",
    )
    ap.add_argument("--out", default=str(RESULTS / "bench_serve.json"))
    args = ap.parse_args(argv)
    seconds = 3.0 if args.quick else args.seconds
    levels = [int(c) for c in args.clients.split(",")]
    scenarios = set(args.scenarios.split(","))
    report: dict = {
        "benchmark": "bench_serve",
        "what": "cello serve (KServe ModelServer, in-process transformers, tiny model) on loopback; v1 :predict, "
        "1 puzzle of 8 cells x 50 genes per request",
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count()},
        "settings": {
            "seconds_per_level": seconds,
            "max_new_tokens": args.max_new_tokens,
            "max_batch_size": args.max_batch_size,
            "threads": args.threads,
            "bad_share": args.bad_share,
            "model": "tiny (built)" if args.model is None else args.model,
        },
    }
    results: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        model = args.model
        if model is None:
            from cello.llm.tiny import build_tiny_model

            model = str(build_tiny_model(Path(tmp) / "tiny"))
        server = Server(
            model,
            Path(tmp),
            "server",
            [
                "--max-new-tokens",
                str(max(args.max_new_tokens, 64)),
                "--max-batch-size",
                str(args.max_batch_size),
                "--timeout-s",
                "300",
                "--threads",
                str(args.threads),
            ],
        )
        report["startup_s"] = round(server.startup_s, 2)
        try:
            if "load" in scenarios:
                run_level(server.url, 2, 2.0, max_new_tokens=args.max_new_tokens, bad_share=0.0, seed=99)  # warm-up
                for c in levels:
                    res = run_level(
                        server.url, c, seconds, max_new_tokens=args.max_new_tokens, bad_share=args.bad_share, seed=c
                    )
                    results.append(res)
                    print(
                        f"C={c:>2}: {res['throughput_rps']:7.2f} req/s  p50 {res['p50_ms']:7.1f} ms  "
                        f"p95 {res['p95_ms']:7.1f} ms  p99 {res['p99_ms']:7.1f} ms  batch {res['mean_batch_size']}  "
                        f"ok {res['requests_ok']}  rejected {res['requests_rejected_400']}  errors {res['errors']}",
                        flush=True,
                    )
            if "abandoned" in scenarios:
                report["abandoned_wave"] = abandoned_wave(server.url)
                print(f"abandoned wave: {report['abandoned_wave']}", flush=True)
            if "oversized" in scenarios:
                report["oversized_prompt"] = oversized_prompt(server.url, server.proc.pid)
                print(f"oversized prompt: {report['oversized_prompt']}", flush=True)
        finally:
            report["server_exit_code"] = server.stop()
        if "sigterm" in scenarios:
            report["sigterm_backlog"] = sigterm_backlog(model, Path(tmp))
            print(f"SIGTERM under backlog: {report['sigterm_backlog']}", flush=True)

    if results:
        base, rps = results[0]["p50_ms"], results[0]["throughput_rps"]
        for res in results:
            res["p50_vs_c1"] = round(res["p50_ms"] / base, 2) if base else None
            res["throughput_vs_c1"] = round(res["throughput_rps"] / rps, 2) if rps else None
        print(
            f"latency p50 vs C=1: {[r['p50_vs_c1'] for r in results]}; "
            f"throughput vs C=1: {[r['throughput_vs_c1'] for r in results]}"
        )
    report["levels"] = results
    report["total_errors"] = sum(r["errors"] for r in results)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    from cello._io import write_json

    write_json(report, out)
    print(f"errors: {report['total_errors']} (must be 0); server exit code {report['server_exit_code']}; wrote {out}")
    return 0 if report["total_errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

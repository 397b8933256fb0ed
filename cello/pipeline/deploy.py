"""Deploy the promoted checkpoint, prove it answers, and clean up after the run.

- backend "local": start `cello serve` on the checkpoint (a free loopback port), send one real
  puzzle from the test split, check the answer assigns every candidate to exactly one cell,
  record the request and the answer under <run>/deploy/, and stop the server by its PID;
- backend "kubernetes": KServe (`cello.pipeline.cluster`): apply the InferenceService, wait
  for Ready, send the same smoke puzzle, roll back on failure.

`cleanup` is the exit handler's step: it writes the run's final state and, on a cluster,
deletes what the run launched (jobs, rollout servers); locally nothing outlives its step.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from cello._io import write_json
from cello.errors import CelloError
from cello.pipeline.data import paths
from cello.pipeline.run import Run, require
from cello.pipeline.train import check_backend

log = logging.getLogger(__name__)


class SmokeTestError(CelloError):
    """The deployed model did not answer the smoke puzzle with a valid assignment."""


def smoke_puzzle(data_dir: str) -> dict[str, Any]:
    """The first puzzle of the test split, as a `cello serve` request puzzle (no answer)."""
    import pandas as pd

    from cello.data import schema as S

    row = pd.read_parquet(paths(data_dir)["test_puzzles"]).iloc[0]
    return {
        "id": str(row[S.PUZZLE_ID]), "context": str(row[S.CONTEXT]),
        "cells": [{"id": str(c), "genes": [str(g) for g in genes]}
                  for c, genes in zip(row[S.CELL_IDS], row[S.CELL_GENES], strict=True)],
        "candidates": [str(c) for c in row[S.CANDIDATES]],
    }


def check_answer(puzzle: dict[str, Any], answer: dict[str, Any]) -> list[str]:
    """What is wrong with a served answer to `puzzle` (nothing: a valid assignment)."""
    preds = answer.get("predictions")
    if not isinstance(preds, list) or len(preds) != 1 or not isinstance(preds[0], dict):
        return [f"expected {{'predictions': [one result]}}, got {json.dumps(answer)[:300]}"]
    assignment = preds[0].get("assignment")
    cells = [c["id"] for c in puzzle["cells"]]
    if not isinstance(assignment, dict):
        return [f"no assignment in the answer ({preds[0].get('reason') or 'no reason given'})"]
    problems = []
    if sorted(assignment) != sorted(cells):
        problems.append(f"assigned cells {sorted(assignment)} are not the puzzle's {sorted(cells)}")
    if sorted(assignment.values()) != sorted(puzzle["candidates"]):
        problems.append(f"assigned types {sorted(assignment.values())} are not each candidate once "
                        f"{sorted(puzzle['candidates'])}")
    return problems


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_ready(url: str, proc: subprocess.Popen, log_path: Path, *, deadline: float) -> None:
    import httpx

    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-20:])
            msg = f"`cello serve` exited with {proc.returncode} before it was ready; its log ({log_path}) ends:\n{tail}"
            raise SmokeTestError(msg)
        try:
            if httpx.get(f"{url}/v2/health/ready", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    msg = f"`cello serve` was not ready within the deploy timeout (pipeline.deploy_timeout_s); see {log_path}."
    raise SmokeTestError(msg)


def serve_and_smoke(run: Run, model: str, puzzle: dict[str, Any], out: Path) -> dict[str, Any]:
    """Start `cello serve` on `model`, ask it `puzzle`, stop it; return what happened."""
    import httpx

    p = run.params
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = out / "server.log"
    cmd = [sys.executable, "-m", "cello.cli", "serve", "--model", model, "--host", "127.0.0.1", "--port", str(port),
           "--params", str(run.params_path)]
    deadline = time.monotonic() + p.pipeline.deploy_timeout_s
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop(p.serve.auth_token_env, None)  # a loopback smoke server needs no token
    with open(log_path, "w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)
    log.info("cello serve (pid %d) on %s", proc.pid, url)
    try:
        _wait_ready(url, proc, log_path, deadline=deadline)
        route = f"{url}/v1/models/{p.serve.model_name}:predict"
        request = {"instances": [puzzle]}
        write_json(request, out / "request.json")
        resp = httpx.post(route, json=request, timeout=max(deadline - time.monotonic(), 1.0))
        is_json = resp.headers.get("content-type", "").startswith("application/json")
        answer = resp.json() if is_json else {"body": resp.text}
        write_json({"status": resp.status_code, "body": answer}, out / "answer.json")
        problems = [f"HTTP {resp.status_code}"] if resp.status_code != 200 else check_answer(puzzle, answer)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if problems:
        msg = f"smoke test of {model} at {route} failed: {'; '.join(problems)} (request and answer in {out})."
        raise SmokeTestError(msg)
    result = answer["predictions"][0]
    return {"url": route, "pid": proc.pid, "exit_code": proc.returncode, "valid_format": result.get("valid"),
            "repaired": result.get("repaired"), "assignment": result.get("assignment")}


def deploy(run_dir: str, *, data_dir: str, model: str, backend: str = "local") -> dict[str, Any]:
    """Deploy `model` (the gate's candidate) and prove it answers a real puzzle."""
    run = Run.open(run_dir)
    out = run.path("deploy")
    out.mkdir(parents=True, exist_ok=True)
    puzzle = smoke_puzzle(data_dir)
    if check_backend(backend) == "kubernetes":
        from cello.pipeline.cluster import deploy_model

        info = deploy_model(model, run=run, smoke=puzzle)
    else:
        require(model, what="the checkpoint to deploy", made_by="the grpo step")
        info = serve_and_smoke(run, model, puzzle, out)
    info = {"model": model, "backend": backend, **info, "lineage": run.lineage_for(data_dir, stage="deploy")}
    write_json(info, out / "deployed.json")
    run.record_step("deploy", **info)
    how = "valid" if info.get("valid_format") else "repaired into a valid assignment"
    info["markdown"] = (f"## Deployed `{model}`\n\nRoute: `{info.get('url')}`; the smoke puzzle's answer was {how}.\n"
                        f"Request and answer: `{out}`.")
    return info


def cleanup(workdir: str, *, run_id: str, backend: str, status: dict[str, Any] | None = None) -> dict[str, Any]:
    """The exit handler: record how the run ended; on a cluster delete what it launched.

    It takes the run id, not the run folder: it must run even when the data step failed
    before the folder existed."""
    run_path = Path(workdir) / run_id
    state = (status or {}).get("state", "UNKNOWN")
    deleted: list[str] = []
    if backend == "kubernetes":
        from cello.pipeline.cluster import delete_run_objects

        deleted = delete_run_objects(run_id, run_dir=run_path)
    info = {"run_id": run_id, "state": state, "error": (status or {}).get("error"), "backend": backend,
            "deleted": deleted, "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if run_path.is_dir():
        write_json(info, run_path / "status.json")
    log.info("run %s ended: %s%s", run_id, state, f"; deleted {', '.join(deleted)}" if deleted else "")
    return info

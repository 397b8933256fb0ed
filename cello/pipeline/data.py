"""The data step: the project's DVC pipeline at a pinned revision, with the cells stage fanned
out over the input files, so a large atlas is ranked across the cluster, not on one node; or,
with `data.source` set (hf://ncbi/CellPuzzles), the published dataset imported as it is.

    prepare     the source at the revision -> a data folder keyed by (source, data settings);
                the run folder with the resolved params; the list of input files
    cells_part  one input file -> data/cells/part-<i>.parquet (one task per file)
    build       `dvc commit` of the parts, then `dvc repro` (split -> export)

A data folder is content-addressed: `<workdir>/data/<key>`, the key a digest of the source
and of the `data:` and `prompt:` settings. Runs with the same data share it (and DVC's cache
under `<workdir>/dvc-cache`), so a second run rebuilds nothing. When the project has a DVC
remote, `dvc pull` fetches what it already holds for the pinned revision. Each part is the
file `cello data cells` writes for that input, so `dvc repro` on one machine and the fan-out
give the same data version.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from cello.config import Params, load_params
from cello.errors import ConfigError, InputError
from cello.lineage import HUB_LINEAGE
from cello.pipeline.lineage import data_folder_version, digest
from cello.pipeline.run import LINEAGE, PARAMS, run_id_for
from cello.pipeline.source import snapshot

log = logging.getLogger(__name__)

CELLS_DIR = "data/cells"
HUB_DIR = "data"  # data.source: the published dataset is imported here, in the layout `paths` reads
SPLITS_DIR = "data/splits"
RECORDS_DIR = "data/records"
READY = ".cello-data.json"  # written into a data folder once `build` has finished
FRESH = ".cello-cells-fresh"  # the cells parts are up to date: fan-out tasks have nothing to do


@dataclass
class Prepared:
    run_id: str
    run_dir: str
    data_dir: str
    inputs: list[str]


def _env() -> dict[str, str]:
    """The environment of DVC and the `cello` commands in dvc.yaml: this interpreter's bin
    first, so they are the ones installed with this library."""
    bin_dir = str(Path(sys.executable).parent)
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", "DVC_NO_ANALYTICS": "1"}


def dvc(args: list[str], *, cwd: str | os.PathLike, check: bool = True) -> subprocess.CompletedProcess:
    """Run `dvc ARGS` in `cwd`, its output into this step's log; a failure names the command."""
    cmd = [sys.executable, "-m", "dvc", *args]
    log.info("$ dvc %s  (in %s)", " ".join(args), cwd)
    proc = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, check=False)
    for line in (proc.stdout + proc.stderr).splitlines():
        print(f"    {line}", flush=True)
    if check and proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        msg = f"`dvc {' '.join(args)}` failed in {cwd} (exit {proc.returncode}):\n{tail}"
        raise InputError(msg)
    return proc


def _resolved(params: Params) -> str:
    return yaml.safe_dump(params.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


def _write_run(run_dir: Path, text: str, lineage: dict[str, Any]) -> None:
    """The run folder's params.yaml and lineage.json; a retried step finds them unchanged."""
    path = run_dir / PARAMS
    if path.is_file() and path.read_text() != text:
        msg = f"{run_dir} already holds a run with other settings; give this run another run id."
        raise ConfigError(msg)
    run_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    (run_dir / LINEAGE).write_text(json.dumps(lineage, indent=2) + "\n")


def _configure_dvc(data_dir: Path, cache_dir: Path) -> None:
    """Share one DVC cache per workdir; a copy that is not a git repository runs without SCM."""
    if not (data_dir / ".dvc").is_dir():
        msg = f"{data_dir}: the source has no .dvc folder; is this the Cello project (dvc init)?"
        raise InputError(msg)
    if not (data_dir / ".git").exists():
        dvc(["config", "--local", "core.no_scm", "true"], cwd=data_dir)
    dvc(["config", "--local", "cache.dir", str(cache_dir)], cwd=data_dir)


def _cells_fresh(data_dir: Path) -> bool:
    """Whether DVC finds the cells stage up to date (e.g. after `dvc pull`)."""
    proc = dvc(["status", "cells", "--json"], cwd=data_dir, check=False)
    try:
        return proc.returncode == 0 and json.loads(proc.stdout or "{}") == {}
    except json.JSONDecodeError:
        return False


def prepare(*, repo: str, revision: str, profile: str, overrides: dict[str, Any] | None, workdir: str,
            run_id: str = "", job_name: str = "") -> Prepared:
    """Check out the source, resolve the params, create the run and data folders; list the inputs."""
    work = Path(workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    run_id = run_id_for(run_id, job_name)
    tmp = Path(tempfile.mkdtemp(prefix=".source-", dir=work))
    tmp.chmod(0o755)  # mkdtemp makes 0700; later steps may run as other users on the shared volume
    try:
        source = snapshot(repo, revision, tmp)
        params = load_params(tmp / PARAMS, profile=profile or None, overrides=overrides)
        text = _resolved(params)
        data_key = digest({"source": source.key, "data": params.data.model_dump(mode="json"),
                           "prompt": params.prompt.model_dump(mode="json")}, n=16)
        data_dir = work / "data" / data_key
        if not (data_dir / PARAMS).is_file():
            (tmp / PARAMS).write_text(text)  # DVC reads the stage settings from here
            data_dir.parent.mkdir(parents=True, exist_ok=True)
            try:
                tmp.rename(data_dir)
            except OSError:  # another run created it meanwhile: use theirs
                if not (data_dir / PARAMS).is_file():
                    raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    run_dir = work / run_id
    lineage = {"run_id": run_id, "source": source.to_dict(), "profile": profile or None, "overrides": overrides or {},
               "params_digest": digest(params.model_dump(mode="json"))}
    _write_run(run_dir, text, lineage)
    link = run_dir / "data"
    if not link.exists():
        link.symlink_to(os.path.relpath(data_dir, run_dir))
    if not (data_dir / READY).is_file() and not params.data.source:
        _configure_dvc(data_dir, work / "dvc-cache")
        if dvc(["remote", "list"], cwd=data_dir, check=False).stdout.strip():
            dvc(["pull", "--allow-missing"], cwd=data_dir, check=False)
        fresh = _cells_fresh(data_dir)
        (data_dir / FRESH).unlink(missing_ok=True)
        if fresh:
            (data_dir / FRESH).touch()
        else:
            shutil.rmtree(data_dir / CELLS_DIR, ignore_errors=True)
    inputs = list_inputs(data_dir)
    log.info("run %s: source %s, data %s, %d input file(s)", run_id, source.key, data_dir, len(inputs))
    return Prepared(run_id, str(run_dir), str(data_dir), inputs)


def list_inputs(data_dir: str | os.PathLike) -> list[str]:
    """The data's input files (`data.inputs`, directories expanded), as absolute paths:
    relative ones are relative to the project root, i.e. the data folder."""
    from cello.data.cells import resolve_inputs

    data = Path(data_dir)
    params = load_params(data / PARAMS)
    if params.data.source:  # a published dataset: one input, imported whole by `build`
        return [params.data.source]
    cwd = os.getcwd()
    os.chdir(data)
    try:
        found = resolve_inputs(params.data.inputs)
        return [i if i.startswith("builtin:") else str(Path(i).resolve()) for i in found]
    finally:
        os.chdir(cwd)


def cells_part(*, data_dir: str, source: str) -> str:
    """Rank the cells of one input file into its part; nothing to do when the parts are fresh."""
    from cello.data.cells import make_cells_part, part_name

    data = Path(data_dir)
    inputs = list_inputs(data)
    if source not in inputs:
        msg = f"{source} is not one of the data's inputs {inputs}."
        raise InputError(msg)
    index = inputs.index(source)
    part = data / CELLS_DIR / part_name(index)
    if load_params(data / PARAMS).data.source:
        log.info("%s: a published dataset; nothing to rank, `build` imports it", source)
        return ""
    if (data / FRESH).is_file() or (data / READY).is_file():
        log.info("%s: up to date", part)
        return str(part) if part.is_file() else ""
    params = load_params(data / PARAMS)
    summary = make_cells_part(inputs, index, data / CELLS_DIR, cfg=params.data.cells)
    log.info("%s: %d cells from %s", part, summary.kept, source)
    return str(part) if summary.kept else ""


def build(*, data_dir: str, parts: list[str]) -> dict[str, Any]:
    """Record the fanned-out parts in DVC, run the rest of dvc.yaml, and describe the data.

    Takes nothing run-specific, so a cluster's pipeline cache can skip it for the same data."""
    data = Path(data_dir)
    params = load_params(data / PARAMS)
    if not (data / READY).is_file() and params.data.source:
        from cello.data.hub import import_hub

        import_hub(params.data.source, data / HUB_DIR, dataset="cellpuzzles", template=params.prompt)
    elif not (data / READY).is_file():
        if not any(parts):
            msg = f"no cells were kept from any input of {data}: check data.inputs and data.cells (keys, filters)."
            raise InputError(msg)
        if not (data / FRESH).is_file():
            dvc(["commit", "--force", "cells"], cwd=data)
        dvc(["repro"], cwd=data)
    summary = describe(data)
    (data / READY).write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def describe(data_dir: str | os.PathLike) -> dict[str, Any]:
    """The data version and the sizes of the splits and record sets in a built data folder."""
    data = Path(data_dir)
    counts: dict[str, int] = {}
    for path in sorted((data / RECORDS_DIR).glob("*/*.json*")):
        if path.suffix == ".json":  # cellpuzzles: a JSON list
            counts[f"{path.parent.name}/{path.stem}"] = len(json.loads(path.read_text(encoding="utf-8")))
            continue
        with open(path, "rb") as fh:
            counts[f"{path.parent.name}/{path.stem}"] = sum(1 for line in fh if line.strip())
    summary = data / SPLITS_DIR / "summary.json"
    split = json.loads(summary.read_text()) if summary.is_file() else {}
    imported = data / HUB_DIR / HUB_LINEAGE
    if not split and imported.is_file():  # a published dataset: its own splits, as published
        split = {f"{name}_total": n for name, n in json.loads(imported.read_text())["counts"].items()}
    return {"data_dir": str(data), "version": data_folder_version(data), "records": counts, "split": split}


def paths(data_dir: str | os.PathLike) -> dict[str, Path]:
    """Where a built data folder keeps what the later stages read."""
    data = Path(data_dir)
    if not (data / READY).is_file():
        msg = f"{data}: not a built data folder (no {READY}); the pipeline's data step builds it."
        raise InputError(msg)
    return {"splits": data / SPLITS_DIR, "sft": data / RECORDS_DIR / "sft", "grpo": data / RECORDS_DIR / "grpo",
            "eval": data / RECORDS_DIR / "eval" / "test.jsonl", "train_puzzles": data / SPLITS_DIR / "train.parquet",
            "test_puzzles": data / SPLITS_DIR / "test.parquet"}


def card(summary: dict[str, Any]) -> tuple[str, dict[str, float]]:
    """The data step's report (Markdown) and headline numbers (for a KFP Metrics artifact)."""
    split, records, version = summary.get("split") or {}, summary.get("records") or {}, summary["version"]
    numbers = {f"records_{k.replace('/', '_')}": float(v) for k, v in records.items()}
    heads = ("train_total", "test_total", "train_cells", "test_cells")
    numbers.update({k: float(split[k]) for k in heads if k in split})
    rows = [f"| {name} | {count} |" for name, count in records.items()]
    outs = [f"| `{path}` | `{md5}` |" for path, md5 in version["outs"].items()]
    text = "\n".join([
        f"## Data version `{version['version']}`", "", f"Data folder: `{summary['data_dir']}`", "",
        f"Puzzles: {split.get('train_total', '?')} train, {split.get('test_total', '?')} test, each made from "
        f"its own cells ({split.get('train_cells', '?')} and {split.get('test_cells', '?')}, held apart by "
        f"{split.get('by', '?')}); test puzzles sharing a cell with train: "
        f"{(split.get('audit') or {}).get('test_sharing_cell_id', '?')}.", "",
        "| record set | records |", "|---|---|", *rows, "", "| DVC output | md5 |", "|---|---|", *outs,
    ])
    return text, numbers

"""Lineage: what an output was made from, so a served model traces back to its exact source
revision, data version and settings (the pipeline's lineage.json, model cards, eval reports).

    git      the source revision the run used (sha, dirty flag, digest of the files when dirty)
    data     the DVC data version: the md5 of every record set in the data's dvc.lock
    params   the digest of the resolved params.yaml (profile and overrides applied)

    from cello.lineage import data_version_of, dvc_data_version
    dvc_data_version("runs/data/1f2e.../dvc.lock")   # {"version": "9c1d...", "outs": {...}}
    data_version_of("data/records/eval/test.jsonl")  # the same, found from a file under the records
    data_version_of("data/hub/records/eval/test.jsonl")  # a Hub import: {"version": "ncbi/CellPuzzles@<commit>"}
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import yaml

from cello.errors import InputError

# The outputs whose hashes define the data version (what training and evaluation read).
RECORD_PREFIX = "data/records/"
# Written by `cello data import hf://...` into its folder: the Hub revision (or the local copy's hash).
HUB_LINEAGE = "lineage.json"


def digest(obj: Any, *, n: int = 12) -> str:
    """A short stable hash of a JSON-able object (keys sorted)."""
    text = json.dumps(obj, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:n]


def dvc_data_version(dvc_lock: str | os.PathLike) -> dict[str, Any]:
    """The md5 DVC recorded for each record set in `dvc_lock`, and one version over all of them."""
    path = Path(dvc_lock)
    if not path.is_file():
        msg = f"{path}: no dvc.lock; the data step writes it (`dvc repro`); rerun the data step."
        raise InputError(msg)
    lock = yaml.safe_load(path.read_text()) or {}
    outs = {
        out["path"]: out.get("md5") or out.get("hash")
        for stage in (lock.get("stages") or {}).values()
        for out in stage.get("outs") or []
        if str(out.get("path", "")).startswith(RECORD_PREFIX)
    }
    if not outs:
        msg = f"{path}: records no {RECORD_PREFIX}* output; is the export stage in dvc.yaml?"
        raise InputError(msg)
    return {"version": digest(outs), "outs": dict(sorted(outs.items()))}


def data_version_of(path: str | os.PathLike) -> dict[str, Any] | None:
    """The data version of the records `path` lies in: the nearest dvc.lock above it (the
    project's, or a pipeline data folder's), plus `lock` and the record set holding `path`
    (`records`: its dvc.lock path, `md5`). None when no dvc.lock above it lists that path."""
    target = Path(path).resolve()
    for folder in target.parents:
        lock = folder / "dvc.lock"
        if not lock.is_file():
            hub = _hub_version(folder, target)
            if hub is not None:
                return hub
            continue
        try:
            found = dvc_data_version(lock)
        except InputError:
            return None
        rel = target.relative_to(folder).as_posix()
        for out, md5 in found["outs"].items():
            if rel == out or rel.startswith(out.rstrip("/") + "/"):
                return {**found, "lock": str(lock), "records": out, "md5": md5}
        return None
    return None


def hub_data_version(folder: str | os.PathLike) -> dict[str, Any] | None:
    """The data version of a published-dataset import (`cello data import hf://... -o folder`):
    its lineage.json names the Hub commit (or the local copy's content hash); None elsewhere."""
    path = Path(folder) / HUB_LINEAGE
    if not path.is_file():
        return None
    try:
        lineage = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    origin = lineage.get("hub") if isinstance(lineage, dict) else None
    if not isinstance(origin, dict) or not origin.get("version"):
        return None
    pinned = origin.get("commit") or origin.get("content_sha256")
    return {"version": origin["version"], "source": origin.get("source"), "lock": str(path), "outs": {"hub": pinned}}


def _hub_version(folder: Path, target: Path) -> dict[str, Any] | None:
    found = hub_data_version(folder)
    return None if found is None else {**found, "records": target.relative_to(folder).as_posix(), "md5": None}


def data_folder_version(data_dir: str | os.PathLike) -> dict[str, Any]:
    """The data version of a pipeline data folder: the published dataset it imported (data/), or
    the md5s of the record sets in its dvc.lock."""
    return hub_data_version(Path(data_dir) / "data") or dvc_data_version(Path(data_dir) / "dvc.lock")


def _git(repo: Path, *args: str) -> str:
    proc = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=False)
    return proc.stdout.strip() if proc.returncode == 0 else ""


def git_revision(repo: str | os.PathLike | None = None) -> dict[str, Any]:
    """The commit checked out in `repo` (None: the working directory, else the checkout holding
    this package) and whether the working tree differs from it."""
    if repo is None:
        here = git_revision(Path.cwd())
        return here if here["revision"] else git_revision(Path(__file__).resolve().parent)
    repo = Path(repo)
    sha = _git(repo, "rev-parse", "HEAD")
    return {"revision": sha or None, "dirty": bool(_git(repo, "status", "--porcelain")) if sha else None}

"""The run folder that every step of one pipeline run shares (on the shared volume, or under
runs/ locally). The data step creates it; every later step opens it by its path.

    <workdir>/<run id>/
        params.yaml       the resolved parameters (profile and overrides applied): what every step reads
        lineage.json      the source revision, the profile, the overrides, the params digest
        models/           tiny/, sft/, sft-merged/, grpo/: checkpoints, each with a lineage.json
        eval/             candidate/, incumbent/, baseline/: predictions, metrics, report, plot
        gate/             decision.json, decision.md
        deploy/           what was deployed, the smoke request and its answer
        steps/<step>.json what each step did (read by `cello pipeline run` for its summary)
        status.json       the run's final state, written by the exit handler
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cello import __version__
from cello._io import write_json
from cello.config import Params, load_params
from cello.errors import InputError
from cello.pipeline.lineage import data_folder_version

PARAMS = "params.yaml"
LINEAGE = "lineage.json"


@dataclass
class Run:
    """An open run folder: its resolved params and lineage."""

    dir: Path
    params: Params
    lineage: dict[str, Any]

    @classmethod
    def open(cls, run_dir: str | os.PathLike) -> Run:
        run = Path(run_dir)
        if not (run / PARAMS).is_file():
            msg = (f"{run}: not a Cello run folder (no {PARAMS}); the pipeline's data step creates it. "
                   "If a cached step points at a folder that was deleted since, rerun with caching off.")
            raise InputError(msg)
        lineage = json.loads((run / LINEAGE).read_text()) if (run / LINEAGE).is_file() else {}
        return cls(run, load_params(run / PARAMS), lineage)

    @property
    def id(self) -> str:
        return self.dir.name

    @property
    def params_path(self) -> Path:
        return self.dir / PARAMS

    def path(self, *parts: str) -> Path:
        return self.dir.joinpath(*parts)

    def lineage_for(self, data: str | os.PathLike | None = None, **extra: Any) -> dict[str, Any]:
        """The run's lineage plus the data version of `data` (a data folder: DVC's, or the Hub's)."""
        out = {**self.lineage, "cello_version": __version__}
        if data:
            out["data"] = {"uri": str(data), **data_folder_version(data)}
        return {**out, **extra}

    def stamp(self, out_dir: str | os.PathLike, *, data: str | os.PathLike | None = None,
              **extra: Any) -> dict[str, Any]:
        """Write lineage.json into an output folder (a checkpoint, an eval run); return it."""
        lineage = self.lineage_for(data, **extra)
        write_json(lineage, Path(out_dir) / LINEAGE)
        return lineage

    def record_step(self, step: str, **info: Any) -> dict[str, Any]:
        """Write steps/<step>.json: what the step produced, with the time it finished."""
        rec = {"step": step, "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **info}
        write_json(rec, self.path("steps", f"{step}.json"))
        return rec


def run_id_for(run_id: str, job_name: str = "") -> str:
    """The run id: the one given, else the KFP job's name (unique per run), else a new one."""
    import re
    import uuid

    rid = run_id or re.sub(r"[^a-z0-9-]+", "-", job_name.lower()).strip("-")
    return rid or time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]


def require(path: str | os.PathLike, *, what: str, made_by: str) -> Path:
    """`path` if it exists, else an InputError naming the step that should have made it."""
    p = Path(path)
    if not p.exists():
        msg = (f"{what} {p} does not exist; it is made by {made_by}. If that step was taken from the "
               "pipeline cache but its output was deleted since, rerun with caching off.")
        raise InputError(msg)
    return p

"""Fill KFP output artifacts from what a stage returned (used inside component bodies).

Artifacts are taken as they come (anything with `.path`, `.metadata`, and for metrics
`.log_metric`), so this module does not import kfp. Every artifact gets the run's lineage in
its metadata, so the KFP UI shows what each number was computed from.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def _flat(lineage: dict[str, Any] | None) -> dict[str, Any]:
    """Lineage as flat string values (KFP metadata shows scalars best)."""
    lineage = lineage or {}
    src, data = lineage.get("source") or {}, lineage.get("data") or {}
    return {
        "run_id": lineage.get("run_id"), "git_revision": src.get("revision"), "git_dirty": src.get("dirty"),
        "source": src.get("key"), "data_version": data.get("version"), "params_digest": lineage.get("params_digest"),
        "cello_version": lineage.get("cello_version"), "lineage": json.dumps(lineage, sort_keys=True, default=str),
    }


def publish(*, lineage: dict[str, Any] | None = None, metrics: Any = None, values: dict[str, float] | None = None,
            markdown: Any = None, text: str | None = None, html: Any = None, page: str | None = None) -> None:
    """Write `values` into a Metrics artifact, `text` into a Markdown one, `page` into an HTML one."""
    meta = _flat(lineage)
    if metrics is not None:
        for key, value in (values or {}).items():
            metrics.log_metric(key, float(value))
        metrics.metadata.update(meta)
    for artifact, content in ((markdown, text), (html, page)):
        if artifact is not None:
            Path(artifact.path).parent.mkdir(parents=True, exist_ok=True)
            Path(artifact.path).write_text(content or "", encoding="utf-8")
            artifact.metadata.update(meta)

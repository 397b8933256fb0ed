"""Write rendered objects as YAML, validated first: custom resources against their CRD schemas
(`cello.k8s.validate`), core kinds (Pod, Service, NetworkPolicy) against the Kubernetes
OpenAPI schemas with `kubernetes-validate` in strict mode (unknown fields rejected).

    from cello.k8s.manifests import emit
    text = emit(objects, "grpo.yaml", crd_dir="crds/")   # raises ManifestError naming every problem
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

# The Kubernetes version whose schemas core kinds are checked against: native sidecars
# (init containers with restartPolicy: Always) need >= 1.29, where they are on by default.
K8S_VERSION = "1.33"

# API groups served by Kubernetes itself (no CRD): validated with kubernetes-validate.
_CORE_GROUPS = {"", "apps", "batch", "networking.k8s.io", "rbac.authorization.k8s.io", "policy"}


def is_core(obj: dict[str, Any]) -> bool:
    """True for a kind Kubernetes serves itself (v1 Pod, networking.k8s.io/v1 NetworkPolicy, ...)."""
    api_version = str(obj.get("apiVersion", ""))
    group = api_version.split("/")[0] if "/" in api_version else ""
    return group in _CORE_GROUPS


def core_errors(obj: dict[str, Any], version: str = K8S_VERSION) -> list[str]:
    """Every way a core-kind object breaks the Kubernetes schema of `version` (strict)."""
    from cello.deps import require

    kv = require("kubernetes_validate", "dev")
    try:
        kv.validate(obj, version, strict=True)
    except kv.ValidationError as exc:
        where = ".".join(str(p) for p in exc.absolute_path) or "(root)"
        return [f"{where}: {exc.message}"]
    return []


def validate_all(objects: Iterable[dict[str, Any]], crd_dir: str | os.PathLike) -> None:
    """Validate every object: custom resources against the CRDs in `crd_dir`, core kinds strictly."""
    from cello.k8s.validate import ManifestError, validate

    for obj in objects:
        if not is_core(obj):
            validate(obj, crd_dir)
            continue
        problems = core_errors(obj)
        if problems:
            name = (obj.get("metadata") or {}).get("name", "?")
            msg = (f"{obj.get('kind')} {name} does not match the Kubernetes {K8S_VERSION} schema:\n  "
                   + "\n  ".join(problems))
            raise ManifestError(msg)


def to_yaml(objects: Iterable[dict[str, Any]]) -> str:
    """Multi-document YAML, keys in the order they were built."""
    import yaml

    return yaml.safe_dump_all(list(objects), sort_keys=False, default_flow_style=False)


def write_manifests(objects: Iterable[dict[str, Any]], out: str | os.PathLike | None) -> str:
    """Write `objects` as YAML to `out` atomically (None or '-': return the text only)."""
    from cello._io import atomic_path

    text = to_yaml(objects)
    if out is not None and str(out) != "-":
        with atomic_path(out) as tmp:
            tmp.write_text(text, encoding="utf-8")
    return text


def emit(objects: list[dict[str, Any]], out: str | os.PathLike | None, crd_dir: str | os.PathLike | None) -> str:
    """Validate `objects` when `crd_dir` is given, then write them (nothing is written on error)."""
    if crd_dir is not None:
        validate_all(objects, crd_dir)
    return write_manifests(objects, out)

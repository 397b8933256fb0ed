"""Validate rendered Kubernetes custom resources against their CRD schemas, offline.

No cluster is needed: the upstream CRD YAML files (KServe InferenceService/ServingRuntime,
Kubeflow TrainJob/PyTorchJob, ...) carry `spec.versions[].schema.openAPIV3Schema`, which
`jsonschema` checks directly. By default the check is *strict*: an object schema that lists
`properties` and does not say `x-kubernetes-preserve-unknown-fields` rejects unknown fields,
as the API server's structural-schema pruning would silently drop them (a misspelt field is
then a setting that never takes effect; here it is an error). `metadata` gets the checks the
API server makes itself (DNS names, string label and annotation values).

    from cello.k8s.validate import validate
    validate(obj, crd_dir)            # raises ManifestError listing every problem
    problems = schema_errors(obj, crd_dir)

The CRD directory comes from the caller, or from the env var CELLO_CRD_DIR.
"""

from __future__ import annotations

import copy
import functools
import os
import re
from pathlib import Path
from typing import Any

from cello.errors import InputError

CRD_DIR_ENV = "CELLO_CRD_DIR"

_DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
_QUALIFIED_KEY = re.compile(r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"  # DNS prefix/
                            r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")

# What the API server itself checks in ObjectMeta (the CRD schemas say only `type: object`).
_METADATA_SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 63, "pattern": _DNS_LABEL},
        "generateName": {"type": "string"},
        "namespace": {"type": "string", "maxLength": 63, "pattern": _DNS_LABEL},
        "labels": {"type": "object", "additionalProperties": {"type": "string", "maxLength": 63}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
        "finalizers": {"type": "array", "items": {"type": "string"}},
        "ownerReferences": {"type": "array", "items": {"type": "object"}},
        "uid": {"type": "string"},
        "resourceVersion": {"type": "string"},
        "generation": {"type": "integer"},
        "creationTimestamp": {},
        "deletionTimestamp": {},
        "deletionGracePeriodSeconds": {"type": "integer"},
        "managedFields": {"type": "array"},
        "selfLink": {"type": "string"},
    },
    "additionalProperties": False,
}


class ManifestError(InputError):
    """A rendered object does not match its CRD schema; the message lists every problem."""


def default_crd_dir() -> Path | None:
    """The CRD directory named by $CELLO_CRD_DIR, or None."""
    value = os.environ.get(CRD_DIR_ENV, "").strip()
    return Path(value) if value else None


def _load_yaml(path: Path) -> Any:
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with open(path, encoding="utf-8") as fh:
        return yaml.load(fh, Loader=loader)  # noqa: S506 - a safe loader


def _crd_identity(path: Path) -> tuple[str, str] | None:
    """(group, kind) of a CRD file, read from its head (spec.group, spec.names.kind) without parsing the schema."""
    with open(path, encoding="utf-8") as fh:
        head = fh.read(16384)
    if not re.search(r"^kind:\s*CustomResourceDefinition\s*$", head, re.M):
        return None
    group = re.search(r"^  group:\s*(\S+)\s*$", head, re.M)
    kind = re.search(r"^  names:\s*$(?:\n    .*$)*?\n    kind:\s*(\S+)\s*$", head, re.M)
    return (group.group(1), kind.group(1)) if group and kind else None


@functools.lru_cache(maxsize=64)
def _find_crd(api_version: str, kind: str, directory: str) -> Path:
    group = api_version.split("/")[0] if "/" in api_version else ""
    for path in sorted(Path(directory).glob("*.yaml")) + sorted(Path(directory).glob("*.yml")):
        if _crd_identity(path) == (group, kind):
            return path
    msg = f"no CRD for {kind} ({api_version}) in {directory}; add its CustomResourceDefinition YAML there."
    raise InputError(msg)


def find_crd(api_version: str, kind: str, crd_dir: str | os.PathLike) -> Path:
    """The CRD file in `crd_dir` that defines `kind` in the group of `api_version`."""
    directory = Path(crd_dir)
    if not directory.is_dir():
        msg = (f"CRD directory {directory} does not exist; pass the folder holding the CRD YAML files "
               f"(or set {CRD_DIR_ENV}).")
        raise InputError(msg)
    return _find_crd(api_version, kind, str(directory.resolve()))


def strict(schema: dict) -> dict:
    """A copy of `schema` in which every object with `properties` rejects unknown fields,
    unless it says `x-kubernetes-preserve-unknown-fields` or already sets `additionalProperties`."""
    out = copy.deepcopy(schema)

    def walk(node: Any) -> None:
        if isinstance(node, list):
            for item in node:
                walk(item)
            return
        if not isinstance(node, dict):
            return
        if (
            "properties" in node
            and "additionalProperties" not in node
            and not node.get("x-kubernetes-preserve-unknown-fields")
        ):
            node["additionalProperties"] = False
        for key in ("properties", "patternProperties", "definitions"):
            for child in node.get(key, {}).values():
                walk(child)
        for key in ("items", "additionalProperties", "not"):
            walk(node.get(key))
        for key in ("anyOf", "allOf", "oneOf"):
            walk(node.get(key, []))

    walk(out)
    return out


@functools.lru_cache(maxsize=16)
def load_schema(crd_path: str, version: str, *, strict_fields: bool = True) -> dict:
    """`openAPIV3Schema` of `version` in the CRD file (strict: unknown fields rejected)."""
    doc = _load_yaml(Path(crd_path))
    for entry in doc["spec"]["versions"]:
        if entry["name"] == version:
            schema = dict(entry["schema"]["openAPIV3Schema"])
            schema.setdefault("properties", {})
            schema["properties"] = {**schema["properties"], "metadata": _METADATA_SCHEMA}
            return strict(schema) if strict_fields else schema
    served = [v["name"] for v in doc["spec"]["versions"]]
    msg = f"{crd_path} has no version {version!r} (it has {served}); render apiVersion with one of those."
    raise InputError(msg)


def _where(error: Any) -> str:
    parts = []
    for part in error.absolute_path:
        parts.append(f"[{part}]" if isinstance(part, int) else f".{part}")
    return "".join(parts).lstrip(".") or "(root)"


def _metadata_errors(obj: dict) -> list[str]:
    """Label/annotation keys and label values as the API server checks them."""
    meta = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
    problems = []
    for field in ("labels", "annotations"):
        for key, value in (meta.get(field) or {}).items():
            if not isinstance(key, str) or not _QUALIFIED_KEY.match(key):
                problems.append(f"metadata.{field}: {key!r} is not a valid key ([prefix/]name, name <= 63 chars)")
            if field == "labels" and isinstance(value, str) and not _LABEL_VALUE.match(value):
                problems.append(f"metadata.labels.{key}: {value!r} is not a valid label value")
    return problems


def schema_errors(obj: dict, crd_dir: str | os.PathLike | None = None, *, strict_fields: bool = True) -> list[str]:
    """Every way `obj` breaks its CRD schema (empty list: valid)."""
    import jsonschema

    if not isinstance(obj, dict) or "apiVersion" not in obj or "kind" not in obj:
        return ["(root): not a Kubernetes object (apiVersion and kind are required)"]
    directory = crd_dir if crd_dir is not None else default_crd_dir()
    if directory is None:
        msg = f"no CRD directory given; pass one or set {CRD_DIR_ENV}."
        raise InputError(msg)
    api_version, kind = obj["apiVersion"], obj["kind"]
    path = find_crd(api_version, kind, directory)
    version = api_version.split("/")[-1]
    schema = load_schema(str(path), version, strict_fields=strict_fields)
    validator = jsonschema.Draft7Validator(schema)
    problems = [f"{_where(e)}: {e.message}" for e in validator.iter_errors(obj)]
    return sorted(problems) + _metadata_errors(obj)


def validate(obj: dict, crd_dir: str | os.PathLike | None = None, *, strict_fields: bool = True) -> None:
    """Raise ManifestError naming every problem of `obj` against its CRD schema."""
    problems = schema_errors(obj, crd_dir, strict_fields=strict_fields)
    if problems:
        name = (obj.get("metadata") or {}).get("name", "?") if isinstance(obj, dict) else "?"
        kind = obj.get("kind", "object") if isinstance(obj, dict) else "object"
        listing = "\n  ".join(problems[:50])
        more = f"\n  ... and {len(problems) - 50} more" if len(problems) > 50 else ""
        msg = f"{kind} {name} does not match its CRD schema:\n  {listing}{more}"
        raise ManifestError(msg)

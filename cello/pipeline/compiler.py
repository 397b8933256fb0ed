"""Compile the pipeline to the IR YAML a Kubeflow Pipelines 2.x cluster runs, and draw its DAG.

    cello pipeline compile -o pipelines/cello.yaml        # what is committed (a test keeps it current)
    cello pipeline compile -o /tmp/x.yaml --registry registry.example.com/ml --tag 0.2.0
    python scripts/render_dag.py                          # pipelines/cello-dag.png for the README

The images are chosen when the components are imported (`cello.k8s.images`), so a registry
or tag given here is put into the environment first, in a fresh process.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from cello.errors import ConfigError

DEFAULT_OUT = Path("pipelines/cello.yaml")


def use_images(*, registry: str | None = None, tag: str | None = None) -> None:
    """Point the components at another registry/tag: set the env that `cello.k8s.images`
    reads and re-import the component modules that already chose their images."""
    import importlib
    import sys

    for var, value in (("CELLO_IMAGE_REGISTRY", registry), ("CELLO_IMAGE_TAG", tag)):
        if value:
            os.environ[var] = value
    for name in sorted(m for m in sys.modules
                       if m == "components" or m.startswith("components.") or m == "pipelines.cello"):
        importlib.reload(sys.modules[name])


def require_kfp() -> None:
    """kfp is an optional extra: say how to install it instead of failing on an import."""
    try:
        import kfp  # noqa: F401
        from kfp import kubernetes  # noqa: F401
    except ImportError as exc:
        msg = f"the pipeline needs Kubeflow Pipelines ({exc}); install it with: pip install 'cello[pipeline]'"
        raise ConfigError(msg) from exc


def pipeline_function(params_path: str | os.PathLike | None = None) -> Any:
    """The pipeline built with the defaults and cluster settings of `params_path`."""
    from cello.config import load_params

    require_kfp()
    try:
        from pipelines.cello import make
    except ModuleNotFoundError as exc:
        if exc.name not in ("pipelines", "pipelines.cello", "components"):
            raise
        msg = ("the pipeline definition (pipelines/, components/) is not importable: "
               "run from a Cello checkout installed with `make install`.")
        raise ConfigError(msg) from exc
    return make(load_params(params_path))


def compile_pipeline(out: str | os.PathLike = DEFAULT_OUT, *, params_path: str | os.PathLike | None = None) -> Path:
    """Write the pipeline's IR YAML to `out` (atomically); return its path."""
    require_kfp()
    from kfp import compiler

    from cello._io import atomic_path

    fn = pipeline_function(params_path)
    with atomic_path(out) as tmp:
        staged = tmp.with_suffix(".yaml")  # KFP insists on the suffix
        try:
            compiler.Compiler().compile(fn, str(staged))
            staged.replace(tmp)
        finally:
            staged.unlink(missing_ok=True)
    return Path(out)


def load_ir(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Any]]:
    """The pipeline spec and the platform (kubernetes) spec of a compiled YAML."""
    docs = list(yaml.safe_load_all(Path(path).read_text()))
    return docs[0], (docs[1] if len(docs) > 1 else {})


def dag_edges(spec: dict[str, Any]) -> tuple[list[str], list[tuple[str, str]], dict[str, str]]:
    """Tasks (with sub-DAGs flattened), their dependencies, and the group each one sits in."""
    comps = spec["components"]
    nodes: list[str] = []
    edges: list[tuple[str, str]] = []
    group: dict[str, str] = {}

    def walk(dag: dict[str, Any], prefix: str, label: str) -> dict[str, list[str]]:
        leaves: dict[str, list[str]] = {}
        for name, task in dag.get("tasks", {}).items():
            comp = comps[task["componentRef"]["name"]]
            if "dag" in comp:
                inner = walk(comp["dag"], f"{prefix}{name}/", task.get("taskInfo", {}).get("name", name))
                leaves[name] = [n for ns in inner.values() for n in ns]
            else:
                node = task.get("taskInfo", {}).get("name", name)
                nodes.append(node)
                group[node] = label
                leaves[name] = [node]
        for name, task in dag.get("tasks", {}).items():
            for dep in task.get("dependentTasks", []):
                for a in leaves.get(dep, []):
                    for b in leaves[name]:
                        edges.append((a, b))
        return leaves

    walk(spec["root"]["dag"], "", "")
    return nodes, sorted(set(edges)), group

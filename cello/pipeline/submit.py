"""`cello pipeline submit`: start a run of the compiled pipeline on a Kubeflow Pipelines cluster.

    cello pipeline submit --host https://kfp.example.com --experiment cello \\
        --param repo=https://github.com/org/cello.git --param revision=v0.2.0 --set gate.min_accuracy=0.2

Auth: a bearer token from $KFP_TOKEN when set; otherwise kfp.Client's own discovery (the
in-cluster ServiceAccount token at $KF_PIPELINES_SA_TOKEN_PATH, or none). The run uses the
ServiceAccount of `cluster.service_account`, which k8s/ grants exactly what the steps need.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

from cello.errors import CelloError, ConfigError

log = logging.getLogger(__name__)

TOKEN_ENV = "KFP_TOKEN"


class SubmitError(CelloError):
    """The cluster could not be reached or refused the run."""


@dataclass
class Submitted:
    run_id: str
    url: str
    experiment: str
    arguments: dict[str, Any]


def check_arguments(arguments: dict[str, Any], package: str | os.PathLike) -> dict[str, Any]:
    """Reject parameters the compiled pipeline does not have, listing the ones it has."""
    from cello.pipeline.compiler import load_ir

    spec, _ = load_ir(package)
    known = spec["root"].get("inputDefinitions", {}).get("parameters", {})
    unknown = sorted(set(arguments) - set(known))
    if unknown:
        msg = f"unknown pipeline parameter(s) {unknown}; the pipeline takes: {', '.join(sorted(known))}."
        raise ConfigError(msg)
    return arguments


def submit(*, host: str, package: str | os.PathLike, arguments: dict[str, Any], experiment: str = "cello",
           run_name: str | None = None, service_account: str | None = None, namespace: str | None = None) -> Submitted:
    """Upload `package` as a run with `arguments`; return its id and the URL of its page."""
    from cello.pipeline.compiler import require_kfp

    require_kfp()
    import kfp

    check_arguments(arguments, package)
    token = os.environ.get(TOKEN_ENV) or None
    try:
        client = kfp.Client(host=host, existing_token=token, namespace=namespace)
        result = client.create_run_from_pipeline_package(
            str(package), arguments=arguments, run_name=run_name, experiment_name=experiment,
            namespace=namespace, service_account=service_account,
        )
    except Exception as exc:  # connection refused, DNS, 401/403, 4xx from the API server: all say the same to a user
        reason = getattr(exc, "reason", None) or str(exc).splitlines()[0][:300]
        status = getattr(exc, "status", None)
        msg = (f"could not submit to Kubeflow Pipelines at {host}: {reason}{f' (HTTP {status})' if status else ''}. "
               f"Check --host (the KFP API/UI URL), the network, and the token (${TOKEN_ENV}).")
        raise SubmitError(msg) from exc
    run_id = result.run_id
    return Submitted(run_id, f"{host.rstrip('/')}/#/runs/details/{run_id}", experiment, arguments)


def source_defaults(repo: str | os.PathLike = ".") -> dict[str, str]:
    """`repo` and `revision` for a cluster run: this checkout's origin URL and HEAD commit.
    A cluster clones them, so uncommitted or unpushed changes are not in the run: warn."""
    import subprocess

    def git(*args: str) -> str:
        proc = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=False)
        return proc.stdout.strip() if proc.returncode == 0 else ""

    out = {}
    if url := git("remote", "get-url", "origin"):
        out["repo"] = url
    if sha := git("rev-parse", "HEAD"):
        out["revision"] = sha
        if git("status", "--porcelain"):
            log.warning("the working tree has uncommitted changes; the run uses commit %s without them", sha[:12])
        if url and not git("branch", "-r", "--contains", sha):
            log.warning("commit %s is on no remote branch; push it, or the cluster cannot check it out", sha[:12])
    return out

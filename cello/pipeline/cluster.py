"""The pipeline's `kubernetes` backend: each stage handed to `cello.k8s`, its log streamed into
the step's own log (what the KFP UI shows), its failure the step's failure.

    SFT, merge, distill  a Trainer job (or PyTorchJob) of num_nodes x gpus_per_node
    GRPO                 a pod with a vLLM sidecar, or a rollout server + a multi-node job
    deploy               the InferenceService, Ready, one smoke puzzle, roll back on failure
    cleanup              what the run launched, by its run id (never the served model)

Checkpoints are paths under `cluster.mount_path` on the shared claim; KServe reads them as
`pvc://<claim>/<path>`, and the deployed model maps back to a path for the incumbent's eval.
"""

from __future__ import annotations

import logging
from pathlib import Path, PurePosixPath
from typing import Any

from cello.config import ClusterConfig, load_params, override
from cello.errors import ConfigError
from cello.pipeline.run import Run

log = logging.getLogger(__name__)


def _echo(line: str) -> None:
    print(line, flush=True)  # the step's stdout is its log in the KFP UI


def _cluster(run: Run, *, num_nodes: int, gpus_per_node: int) -> ClusterConfig:
    return override(run.params.cluster, num_nodes=num_nodes, gpus_per_node=gpus_per_node)


def run_job(stage: str, args: list[str], *, run: Run, num_nodes: int, gpus_per_node: int) -> None:
    """`cello <args>` as a training job on the cluster; returns once it completed."""
    from cello.k8s.launch import run_training

    outcome = run_training(args, stage=stage, run_id=run.id,
                           cfg=_cluster(run, num_nodes=num_nodes, gpus_per_node=gpus_per_node),
                           log=_echo)
    log.info("%s: %s %s completed in %.0f s%s", stage, outcome.kind, outcome.name, outcome.elapsed_s,
             " (re-attached)" if outcome.reattached else "")


def run_grpo_job(args: list[str], *, run: Run, model: str, num_nodes: int, gpus_per_node: int) -> None:
    """GRPO with its vLLM rollout server (serving `model`, the starting policy) on the cluster."""
    from cello.k8s.grpo import run_grpo

    outcome = run_grpo(args, model=model, run_id=run.id, cfg=_cluster(run, num_nodes=num_nodes,
                                                                      gpus_per_node=gpus_per_node),
                       log=_echo)
    log.info("grpo: %s %s completed in %.0f s", outcome.kind, outcome.name, outcome.elapsed_s)


def deploy_model(model: str, *, run: Run, smoke: dict[str, Any]) -> dict[str, Any]:
    """Roll `model` (a path on the shared claim) out to KServe; what the smoke test saw."""
    from cello.k8s.deploy import deploy, storage_uri

    p = run.params
    outcome = deploy(storage_uri(model, p.cluster), cfg=p.deploy, cluster=p.cluster, run_id=run.id, smoke_puzzle=smoke,
                     log=_echo)
    pred = outcome.prediction or {}
    return {"url": outcome.url, "storage_uri": outcome.model_uri, "previous_uri": outcome.previous_uri,
            "canary": outcome.canary, "valid_format": pred.get("valid"), "repaired": pred.get("repaired"),
            "assignment": pred.get("assignment")}


def model_path(uri: str, cluster: ClusterConfig) -> str:
    """A deployed storage URI as something `cello eval` can read: pvc://<our claim>/x -> <mount>/x;
    a Hub model (hf://ORG/NAME[:REVISION], e.g. the published Cell-o1) is read from the Hub."""
    from cello.data.hub import is_hub_uri

    prefix = f"pvc://{cluster.pvc}/"
    if uri.startswith(prefix):
        return str(PurePosixPath(cluster.mount_path) / uri[len(prefix):])
    if uri.startswith(("http://", "https://")) or is_hub_uri(uri) or Path(uri).is_dir():
        return uri
    msg = (f"the deployed model {uri} is not on the claim {cluster.pvc}; give the incumbent as a path under "
           f"{cluster.mount_path} or its served URL (--param incumbent=...).")
    raise ConfigError(msg)


def deployed_model_uri(run: Run) -> str | None:
    """The checkpoint the InferenceService serves now, as a path the evaluation can read."""
    from cello.k8s.deploy import deployed_model_uri as current

    uri = current(run.params.deploy)
    return model_path(uri, run.params.cluster) if uri else None


def delete_run_objects(run_id: str, *, run_dir: str | Path | None = None) -> list[str]:
    """Delete what run `run_id` launched (jobs, pods, Services, NetworkPolicies)."""
    from cello.k8s.cleanup import cleanup

    resolved = Path(run_dir) / "params.yaml" if run_dir else None
    params = load_params(resolved if resolved is not None and resolved.is_file() else None)
    return cleanup(run_id, cfg=params.cluster, log=_echo)

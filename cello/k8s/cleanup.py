"""Delete what a run created on the cluster: what the pipeline's exit handler calls when a run fails
or is cancelled (a finished run has nothing left running; calling it then is harmless).

Everything is found by the labels every object of a run carries (`app.kubernetes.io/managed-by:
cello`, `cello.dev/run-id`): TrainJobs, PyTorchJobs, pods (GRPO's pod and rollout server, and
any pod a job left), Services and NetworkPolicies, jobs first so that their controllers stop.
InferenceServices are left alone on purpose: a failed deploy restores the previous model
itself, and deleting the served model because some later step failed would take it down.

    from cello.k8s.cleanup import cleanup
    cleanup("9b1c3f2e-5d4a-4e8f-a0b1-c2d3e4f5a6b7", cfg=load_params().cluster)   # ['TrainJob/cello-sft-...', ...]
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from cello.config import ClusterConfig
from cello.k8s.api import Clients, call, connect
from cello.k8s.labels import run_selector
from cello.k8s.wait import LogFn, job_logger


def _custom(group: str, version: str, plural: str) -> tuple[Callable, Callable]:
    def lister(api: Clients, ns: str, selector: str, **kw: Any) -> list[str]:
        found = api.custom.list_namespaced_custom_object(group, version, ns, plural, label_selector=selector, **kw)
        return [item["metadata"]["name"] for item in found.get("items", [])]

    def deleter(api: Clients, ns: str, name: str, **kw: Any) -> None:
        api.custom.delete_namespaced_custom_object(group, version, ns, plural, name, propagation_policy="Background",
                                                   **kw)

    return lister, deleter


def _typed(client: str, plural: str) -> tuple[Callable, Callable]:
    def lister(api: Clients, ns: str, selector: str, **kw: Any) -> list[str]:
        found = getattr(getattr(api, client), f"list_namespaced_{plural}")(ns, label_selector=selector, **kw)
        return [item.metadata.name for item in found.items]

    def deleter(api: Clients, ns: str, name: str, **kw: Any) -> None:
        getattr(getattr(api, client), f"delete_namespaced_{plural}")(name, ns, **kw)

    return lister, deleter


# In deletion order: the jobs first, so their controllers do not recreate pods.
KINDS: list[tuple[str, tuple[Callable, Callable]]] = [
    ("TrainJob", _custom("trainer.kubeflow.org", "v1alpha1", "trainjobs")),
    ("PyTorchJob", _custom("kubeflow.org", "v1", "pytorchjobs")),
    ("Pod", _typed("core", "pod")),
    ("Service", _typed("core", "service")),
    ("NetworkPolicy", _typed("networking", "network_policy")),
]


def cleanup(run_id: str, *, cfg: ClusterConfig, log: LogFn | None = None) -> list[str]:
    """Delete every TrainJob, PyTorchJob, pod, Service and NetworkPolicy of `run_id`; return 'Kind/name's."""
    log = log or job_logger.info
    api = connect()
    selector = run_selector(run_id)
    deleted = []
    for kind, (lister, deleter) in KINDS:
        names = call(lister, api, cfg.namespace, selector, what=f"list {kind}s of run {run_id} in {cfg.namespace}",
                     retries=cfg.api_retries, missing_ok=True)  # 404: that CRD is not installed here
        for name in names or []:
            call(deleter, api, cfg.namespace, name, what=f"delete {kind} {cfg.namespace}/{name}",
                 retries=cfg.api_retries, missing_ok=True)
            deleted.append(f"{kind}/{name}")
            log(f"deleted {kind} {cfg.namespace}/{name}")
    return deleted

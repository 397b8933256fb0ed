r"""Training stages as Training Operator v1 PyTorchJobs (`kubeflow.org/v1`), for clusters not yet
on Kubeflow Trainer v2 (`cluster.training_api: pytorchjob`).

The Kubeflow SDK 0.5 speaks only TrainJob, so this is a plain object written with the
`kubernetes` client: one Master and `num_nodes - 1` Workers, container `pytorch` (the name the
operator looks for), `nprocPerNode` = GPUs per node, `restartPolicy: Never` with
`backoffLimit: 0` (a failed rank fails the job instead of looping), the active deadline, and
the same pod pieces as a TrainJob (PVC, /dev/shm, Secrets, scheduling). It is awaited with the
same semantics (`cello.k8s.wait`): conditions Succeeded / Failed.

    cello k8s render pytorchjob --run-id r1 --stage sft -- \
        train sft /mnt/cello/data/records/sft -o /mnt/cello/runs/r1/sft
"""

from __future__ import annotations

from typing import Any

from cello.config import ClusterConfig
from cello.k8s import podspec
from cello.k8s.api import Clients, call
from cello.k8s.jobspec import TrainingSpec
from cello.k8s.wait import State, state_from_conditions

GROUP, VERSION, PLURAL = "kubeflow.org", "v1", "pytorchjobs"
CONTAINER = "pytorch"
JOB_NAME_LABEL = "training.kubeflow.org/job-name"
REPLICA_TYPE_LABEL = "training.kubeflow.org/replica-type"
REPLICA_INDEX_LABEL = "training.kubeflow.org/replica-index"


def _replica(spec: TrainingSpec, cfg: ClusterConfig, replicas: int) -> dict[str, Any]:
    container = {
        "name": CONTAINER,
        "image": spec.image,
        "command": list(spec.command),
        "env": [*podspec.plain_env(spec.env), *spec.env_from],
        "resources": podspec.resources(cfg, gpus=spec.gpus_per_node, cpu=cfg.cpu_per_node, memory=cfg.memory_per_node),
        "volumeMounts": podspec.volume_mounts(cfg),
    }
    return {
        "replicas": replicas,
        "restartPolicy": "Never",
        "template": {
            "metadata": {"labels": dict(spec.labels)},
            "spec": {
                "serviceAccountName": cfg.service_account,
                "containers": [container],
                "volumes": podspec.volumes(cfg),
                **podspec.scheduling(cfg),
                "securityContext": podspec.security_context(cfg),
            },
        },
    }


def render_pytorchjob(spec: TrainingSpec, cfg: ClusterConfig) -> dict[str, Any]:
    """The PyTorchJob for `spec`."""
    replicas = {"Master": _replica(spec, cfg, 1)}
    if spec.num_nodes > 1:
        replicas["Worker"] = _replica(spec, cfg, spec.num_nodes - 1)
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "PyTorchJob",
        "metadata": {"name": spec.name, "namespace": spec.namespace, "labels": dict(spec.labels)},
        "spec": {
            "nprocPerNode": str(spec.gpus_per_node) if spec.gpus_per_node > 0 else "auto",
            "runPolicy": {
                "activeDeadlineSeconds": cfg.active_deadline_s,
                "backoffLimit": 0,
                "cleanPodPolicy": "Running",  # finished pods stay, so their logs can be read
            },
            "pytorchReplicaSpecs": replicas,
        },
    }


class PyTorchJobHandle:
    """A PyTorchJob on the cluster, through CustomObjectsApi and CoreV1Api."""

    kind = "PyTorchJob"
    log_container = CONTAINER

    def __init__(self, spec: TrainingSpec, cfg: ClusterConfig, api: Clients):
        self.spec, self.cfg, self.api = spec, cfg, api
        self.name, self.namespace = spec.name, spec.namespace
        self.pod_selector = f"{JOB_NAME_LABEL}={spec.name}"

    def create(self) -> None:
        call(self.api.custom.create_namespaced_custom_object, GROUP, VERSION, self.namespace, PLURAL,
             render_pytorchjob(self.spec, self.cfg), what=f"create PyTorchJob {self.namespace}/{self.name}",
             retries=self.cfg.api_retries)

    def read(self) -> dict[str, Any] | None:
        return call(self.api.custom.get_namespaced_custom_object, GROUP, VERSION, self.namespace, PLURAL, self.name,
                    what=f"get PyTorchJob {self.namespace}/{self.name}", retries=self.cfg.api_retries, missing_ok=True)

    def state(self, obj: dict[str, Any]) -> State:
        return state_from_conditions(obj, complete="Succeeded")

    def is_node0(self, pod: Any) -> bool:
        labels = pod.metadata.labels or {}
        return labels.get(REPLICA_TYPE_LABEL) == "master" and labels.get(REPLICA_INDEX_LABEL) == "0"

    def follow_logs(self, pod_name: str):
        from kubernetes import watch

        return watch.Watch().stream(self.api.core.read_namespaced_pod_log, name=pod_name, namespace=self.namespace,
                                    container=CONTAINER, follow=True)

    def delete(self) -> None:
        call(self.api.custom.delete_namespaced_custom_object, GROUP, VERSION, self.namespace, PLURAL, self.name,
             what=f"delete PyTorchJob {self.namespace}/{self.name}", retries=self.cfg.api_retries, missing_ok=True)

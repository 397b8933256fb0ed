"""Kubernetes settings of the pipeline's tasks (kfp-kubernetes), from the `cluster:` config.

Every task mounts the shared volume and gets the configured Secrets as (optional) env vars;
GPU tasks get the accelerator type and limit, the GPU node selector and tolerations, and a
memory-backed /dev/shm; long tasks a timeout. The local runner ignores all of this; the
compiled YAML carries it (its `platforms.kubernetes` section).
"""

from __future__ import annotations

from typing import Any

from cello.config import ClusterConfig

SHM_VOLUME = "dshm"


def on_cluster(task: Any, cluster: ClusterConfig, *, gpus: Any = None, timeout_s: int | None = None,
               cache: bool = False, cpu: str | None = None, memory: str | None = None) -> Any:
    """Apply the cluster settings to a KFP task; return it. `gpus`: an int or a pipeline parameter."""
    from kfp import kubernetes

    kubernetes.mount_pvc(task, pvc_name=cluster.pvc, mount_path=cluster.mount_path)
    for secret, keys in cluster.secrets.items():
        kubernetes.use_secret_as_env(task, secret_name=secret, secret_key_to_env=dict(keys), optional=True)
    kubernetes.add_pod_label(task, "app.kubernetes.io/part-of", "cello")
    if gpus is not None:
        task.set_accelerator_type(cluster.gpu_resource).set_accelerator_limit(gpus)
        for key, value in cluster.node_selector.items():
            kubernetes.add_node_selector(task, label_key=key, label_value=value)
        for tol in cluster.tolerations:
            kubernetes.add_toleration(task, key=tol.get("key"), operator=tol.get("operator", "Equal"),
                                      value=tol.get("value"), effect=tol.get("effect"))
        kubernetes.empty_dir_mount(task, volume_name=SHM_VOLUME, mount_path="/dev/shm", medium="Memory",
                                   size_limit=cluster.shm_size)
    if cpu:
        task.set_cpu_request(cpu).set_cpu_limit(cpu)
    if memory:
        task.set_memory_request(memory).set_memory_limit(memory)
    if timeout_s:
        kubernetes.set_timeout(task, timeout_s)
    task.set_caching_options(cache)
    return task

"""Pod pieces every Cello workload shares, built once from `ClusterConfig`.

- the workspace PVC (ReadWriteMany) at `cluster.mount_path`: data, checkpoints, eval runs;
- `/dev/shm` as a memory emptyDir: NCCL and dataloader workers need more than the
  container runtime's 64 MiB default;
- the Secrets of `cluster.secrets` as env vars, each optional (a cluster without an object store
  or a hub token simply lacks that Secret);
- GPU scheduling: node selector and tolerations;
- the sysctl that keeps NCCL's ephemeral ports inside `cluster.nccl_port_range`, the range the
  GRPO NetworkPolicies open (NCCL cannot be told which ports to use; the kernel picks them);
- resources with requests = limits (GPUs cannot be overcommitted anyway).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cello.config import ClusterConfig

WORKSPACE_VOLUME = "workspace"
SHM_VOLUME = "dshm"


def volumes(cfg: ClusterConfig) -> list[dict[str, Any]]:
    """The workspace claim and /dev/shm."""
    return [
        {"name": WORKSPACE_VOLUME, "persistentVolumeClaim": {"claimName": cfg.pvc}},
        {"name": SHM_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": cfg.shm_size}},
    ]


def volume_mounts(cfg: ClusterConfig) -> list[dict[str, Any]]:
    """Where `volumes(cfg)` appear in a container."""
    return [
        {"name": WORKSPACE_VOLUME, "mountPath": cfg.mount_path},
        {"name": SHM_VOLUME, "mountPath": "/dev/shm"},
    ]


def secret_env(cfg: ClusterConfig) -> list[dict[str, Any]]:
    """`cluster.secrets` as env entries ({secret: {key: ENV}}), optional so a missing Secret is skipped."""
    return [
        {"name": env, "valueFrom": {"secretKeyRef": {"name": secret, "key": key, "optional": True}}}
        for secret, keys in cfg.secrets.items()
        for key, env in keys.items()
    ]


def plain_env(env: Mapping[str, str] | None) -> list[dict[str, Any]]:
    """{NAME: value} as env entries."""
    return [{"name": k, "value": str(v)} for k, v in (env or {}).items()]


def pod_ip_env(name: str) -> dict[str, Any]:
    """An env var holding the pod's own IP (the downward API)."""
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}


def resources(cfg: ClusterConfig, *, gpus: int, cpu: str, memory: str) -> dict[str, Any]:
    """Requests = limits, with `gpus` of `cfg.gpu_resource` when > 0."""
    amounts: dict[str, str] = {"cpu": cpu, "memory": memory}
    if gpus > 0:
        amounts[cfg.gpu_resource] = str(gpus)
    return {"requests": dict(amounts), "limits": dict(amounts)}


def security_context(cfg: ClusterConfig) -> dict[str, Any]:
    """The pod securityContext: ephemeral ports (hence NCCL's sockets) in `cluster.nccl_port_range`.
    `net.ipv4.ip_local_port_range` is a namespaced, 'safe' sysctl: allowed without cluster changes."""
    low, high = cfg.nccl_port_range.split("-")
    return {"sysctls": [{"name": "net.ipv4.ip_local_port_range", "value": f"{low} {high}"}]}


def scheduling(cfg: ClusterConfig) -> dict[str, Any]:
    """nodeSelector and tolerations of GPU steps (only those that are set)."""
    out: dict[str, Any] = {}
    if cfg.node_selector:
        out["nodeSelector"] = dict(cfg.node_selector)
    if cfg.tolerations:
        out["tolerations"] = [dict(t) for t in cfg.tolerations]
    return out

"""GRPO on GPU nodes with vLLM rollouts, in TRL 1.16's server mode.

The protocol, read from TRL 1.16 (`trl/generation/vllm_client.py`): the rollout server is
`vllm serve MODEL --weight-transfer-config '{"backend": "nccl"}' --logprobs-mode
processed_logprobs --max-logprobs -1` with VLLM_SERVER_DEV_MODE=1 (`trl vllm-serve` is
deprecated and only runs that; the trainer refuses a server without the weight-transfer
engine). The trainer's rank 0 joins the weight-sync group as its NCCL *master* on port 51216
at its own IP (vLLM's `get_ip()`: VLLM_HOST_IP, set here to the pod IP), so the server must
reach the trainer's pod on that port. Server and trainer need separate GPUs.

- Single node (`cluster.num_nodes: 1`, the default): one Pod. vLLM is a native sidecar (an
  init container with `restartPolicy: Always`, its own GPU limit and a startup probe on
  /health), so the kubelet starts the trainer only once vLLM serves, and the pod completes
  when the trainer exits. The trainer is `torchrun --standalone` on the node's other GPUs
  with `--vllm-server http://localhost:8000`.
- Multi-node: the server is a one-replica Pod behind a Service, the trainer a multi-node
  TrainJob / PyTorchJob pointed at the Service, and two NetworkPolicies that open exactly
  what flows between them: 51216 (weight sync) into the trainer pods, 8000 (rollouts) into
  the server, and both ways NCCL's bootstrap and data sockets, which use ephemeral ports
  (`cluster.nccl_port_range`); trainer pods of the run reach each other on any port
  (torchrun's rendezvous and DDP). The server objects are deleted when the trainer ends.

Both are awaited with the launcher's semantics (`cello.k8s.wait`).

    cello k8s render grpo --run-id r1 --model /mnt/cello/runs/r1/sft-merged -- \\
        train grpo /mnt/cello/data/records/grpo -o /mnt/cello/runs/r1/grpo
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from cello.config import ClusterConfig
from cello.errors import ConfigError, InputError
from cello.k8s import podspec
from cello.k8s.api import Clients, ClusterError, call, connect
from cello.k8s.images import image as image_ref
from cello.k8s.jobspec import TrainingSpec, training_spec
from cello.k8s.labels import job_name, run_labels, run_selector
from cello.k8s.launch import handle_for, launch, render_job
from cello.k8s.wait import JobOutcome, LogFn, State, job_logger

SERVE_PORT = 8000  # vllm serve (TRL's default vllm_server_port)
WEIGHT_SYNC_PORT = 51216  # TRL's vllm_group_port: the trainer's rank 0 listens
SIDECAR, TRAINER = "vllm", "trainer"


def rollout_command(model: str, cfg: ClusterConfig) -> list[str]:
    """`vllm serve` as TRL 1.16 needs it (weight transfer over NCCL, processed logprobs)."""
    if not isinstance(model, str) or not model.strip():
        msg = "GRPO needs the starting policy (--model): the merged SFT checkpoint on the shared volume."
        raise InputError(msg)
    return ["vllm", "serve", model.strip(), "--host", "0.0.0.0", "--port", str(SERVE_PORT),  # noqa: S104 - in a pod
            "--weight-transfer-config", '{"backend": "nccl"}', "--logprobs-mode", "processed_logprobs",
            "--max-logprobs", "-1", *cfg.rollout_args]


def _rollout_container(model: str, cfg: ClusterConfig) -> dict[str, Any]:
    return {
        "name": SIDECAR,
        "image": image_ref("vllm"),
        "command": rollout_command(model, cfg),
        "env": [{"name": "VLLM_SERVER_DEV_MODE", "value": "1"}, podspec.pod_ip_env("VLLM_HOST_IP"),
                *podspec.secret_env(cfg)],
        "ports": [{"name": "http", "containerPort": SERVE_PORT, "protocol": "TCP"}],
        "resources": podspec.resources(cfg, gpus=cfg.rollout_gpus, cpu=cfg.rollout_cpu, memory=cfg.rollout_memory),
        # Until this passes, a native sidecar blocks the main container: the trainer starts once vLLM serves.
        "startupProbe": {"httpGet": {"path": "/health", "port": SERVE_PORT}, "periodSeconds": 10,
                         "failureThreshold": max(1, math.ceil(cfg.rollout_startup_timeout_s / 10))},
        "volumeMounts": podspec.volume_mounts(cfg),
    }


def _trainer_spec(command: Sequence[str], server: str, *, run_id: str, cfg: ClusterConfig, image: str | None,
                  env: Mapping[str, str] | None, api: str) -> TrainingSpec:
    if "--vllm-server" in command:
        msg = "the GRPO command must not set --vllm-server: run_grpo points it at the rollout server it starts."
        raise ConfigError(msg)
    return training_spec([*command, "--vllm-server", server], stage="grpo", run_id=run_id, cfg=cfg, api=api,
                         image=image, env=env, role=TRAINER, extra_env=[podspec.pod_ip_env("VLLM_HOST_IP")])


def trainer_gpus(cfg: ClusterConfig) -> int:
    """GPUs left for the trainer on a single node next to the rollout server."""
    gpus = cfg.gpus_per_node - cfg.rollout_gpus
    if gpus < 1:
        msg = (f"cluster.gpus_per_node={cfg.gpus_per_node} leaves no GPU for the GRPO trainer next to the vLLM "
               f"server's rollout_gpus={cfg.rollout_gpus} (they need separate GPUs); use a node with more GPUs or "
               "num_nodes > 1.")
        raise ConfigError(msg)
    return gpus


def render_grpo_pod(command: Sequence[str], *, model: str, run_id: str, cfg: ClusterConfig,
                    image: str | None = None, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Single node: the trainer with vLLM as a native sidecar, in one Pod."""
    gpus = trainer_gpus(cfg)
    spec = _trainer_spec(command, f"http://localhost:{SERVE_PORT}", run_id=run_id, cfg=cfg, image=image, env=env,
                         api="trainjob")
    sidecar = {**_rollout_container(model, cfg), "restartPolicy": "Always"}
    trainer = {
        "name": TRAINER,
        "image": spec.image,
        "command": ["torchrun", "--standalone", f"--nproc-per-node={gpus}", *spec.command[1:]],
        "env": [*podspec.plain_env(spec.env), *spec.env_from],
        "resources": podspec.resources(cfg, gpus=gpus, cpu=cfg.cpu_per_node, memory=cfg.memory_per_node),
        "volumeMounts": podspec.volume_mounts(cfg),
    }
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": spec.name, "namespace": spec.namespace, "labels": dict(spec.labels)},
        "spec": {
            "restartPolicy": "Never",
            "activeDeadlineSeconds": cfg.active_deadline_s,
            "serviceAccountName": cfg.service_account,
            "initContainers": [sidecar],
            "containers": [trainer],
            "volumes": podspec.volumes(cfg),
            **podspec.scheduling(cfg),
            "securityContext": podspec.security_context(cfg),
        },
    }


def _server_name(run_id: str) -> str:
    return f"{job_name(run_id, 'grpo')}-rollout"


def _network_policy(name: str, run_id: str, cfg: ClusterConfig, *, target: str, ports: list[int],
                    peers_any_port: bool) -> dict[str, Any]:
    def pods(role: str) -> dict[str, Any]:
        return {"podSelector": {"matchLabels": run_labels(run_id, "grpo", role=role)}}

    low, high = (int(p) for p in cfg.nccl_port_range.split("-"))
    source = "rollout" if target == TRAINER else TRAINER
    rules: list[dict[str, Any]] = [{
        "from": [pods(source)],
        "ports": [*({"protocol": "TCP", "port": p} for p in ports), {"protocol": "TCP", "port": low, "endPort": high}],
    }]
    if peers_any_port:
        rules.append({"from": [pods(target)]})
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": cfg.namespace, "labels": run_labels(run_id, "grpo")},
        "spec": {"podSelector": {"matchLabels": run_labels(run_id, "grpo", role=target)},
                 "policyTypes": ["Ingress"], "ingress": rules},
    }


def render_rollout_server(*, model: str, run_id: str, cfg: ClusterConfig) -> list[dict[str, Any]]:
    """Multi-node: the vLLM server Pod, its Service and the two NetworkPolicies."""
    name = _server_name(run_id)
    labels = run_labels(run_id, "grpo", role="rollout")
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": cfg.namespace, "labels": labels},
        "spec": {
            "restartPolicy": "Always",
            "serviceAccountName": cfg.service_account,
            "containers": [{**_rollout_container(model, cfg),
                            "readinessProbe": {"httpGet": {"path": "/health", "port": SERVE_PORT},
                                               "periodSeconds": 10}}],
            "volumes": podspec.volumes(cfg),
            **podspec.scheduling(cfg),
            "securityContext": podspec.security_context(cfg),
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": cfg.namespace, "labels": labels},
        "spec": {"selector": labels, "ports": [{"name": "http", "port": SERVE_PORT, "targetPort": SERVE_PORT,
                                                "protocol": "TCP"}]},
    }
    job = job_name(run_id, "grpo")
    return [
        pod,
        service,
        _network_policy(f"{job}-trainer", run_id, cfg, target=TRAINER, ports=[WEIGHT_SYNC_PORT], peers_any_port=True),
        _network_policy(f"{job}-rollout", run_id, cfg, target="rollout", ports=[SERVE_PORT], peers_any_port=False),
    ]


def server_url(run_id: str, cfg: ClusterConfig) -> str:
    """The in-cluster URL of the multi-node rollout server's Service."""
    return f"http://{_server_name(run_id)}.{cfg.namespace}.svc:{SERVE_PORT}"


def multinode_trainer_spec(command: Sequence[str], *, run_id: str, cfg: ClusterConfig, image: str | None = None,
                           env: Mapping[str, str] | None = None) -> TrainingSpec:
    """Multi-node: the trainer job, pointed at the rollout server's Service."""
    return _trainer_spec(command, server_url(run_id, cfg), run_id=run_id, cfg=cfg, image=image, env=env,
                         api=cfg.training_api)


def render_grpo(command: Sequence[str], *, model: str, run_id: str, cfg: ClusterConfig,
                image: str | None = None, env: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """Every object GRPO runs as: one Pod (single node), or server + Service + policies + trainer job."""
    if cfg.num_nodes == 1:
        return [render_grpo_pod(command, model=model, run_id=run_id, cfg=cfg, image=image, env=env)]
    spec = multinode_trainer_spec(command, run_id=run_id, cfg=cfg, image=image, env=env)
    return [*render_rollout_server(model=model, run_id=run_id, cfg=cfg), render_job(spec, cfg)]


class GRPOPodHandle:
    """The single-node GRPO pod as a `Workload`: done when the trainer container has ended."""

    kind = "Pod"
    log_container = TRAINER

    def __init__(self, pod: dict[str, Any], cfg: ClusterConfig, api: Clients, run_id: str):
        self.pod, self.cfg, self.api = pod, cfg, api
        self.name, self.namespace = pod["metadata"]["name"], pod["metadata"]["namespace"]
        self.pod_selector = run_selector(run_id, stage="grpo", role=TRAINER)

    def create(self) -> None:
        call(self.api.core.create_namespaced_pod, self.namespace, self.pod,
             what=f"create pod {self.namespace}/{self.name}",
             retries=self.cfg.api_retries)

    def read(self) -> dict[str, Any] | None:
        pod = call(self.api.core.read_namespaced_pod, self.name, self.namespace,
                   what=f"get pod {self.namespace}/{self.name}",
                   retries=self.cfg.api_retries, missing_ok=True)
        return None if pod is None else self.api.core.api_client.sanitize_for_serialization(pod)

    def state(self, obj: dict[str, Any]) -> State:
        status = obj.get("status") or {}
        phase = status.get("phase")
        if phase == "Succeeded":
            return State(done=True, ok=True)
        if phase != "Failed":
            return State(done=False)
        for cs in status.get("containerStatuses") or []:
            term = (cs.get("state") or {}).get("terminated") or {}
            if cs.get("name") == TRAINER and term and not status.get("reason"):
                return State(done=True, reason=term.get("reason") or "Error",
                             message=f"the trainer exited with code {term.get('exitCode')}")
        return State(done=True, reason=status.get("reason") or "Failed", message=status.get("message") or "")

    def is_node0(self, pod: Any) -> bool:
        return pod.metadata.name == self.name

    def follow_logs(self, pod_name: str):
        from kubernetes import watch

        return watch.Watch().stream(self.api.core.read_namespaced_pod_log, name=pod_name, namespace=self.namespace,
                                    container=TRAINER, follow=True)

    def delete(self) -> None:
        call(self.api.core.delete_namespaced_pod, self.name, self.namespace,
             what=f"delete pod {self.namespace}/{self.name}",
             retries=self.cfg.api_retries, missing_ok=True)


_CREATE = {"Pod": ("core", "create_namespaced_pod", "delete_namespaced_pod"),
           "Service": ("core", "create_namespaced_service", "delete_namespaced_service"),
           "NetworkPolicy": ("networking", "create_namespaced_network_policy", "delete_namespaced_network_policy")}


def _apply(api: Clients, obj: dict[str, Any], cfg: ClusterConfig) -> None:
    group, create, _ = _CREATE[obj["kind"]]
    what = f"create {obj['kind']} {cfg.namespace}/{obj['metadata']['name']}"
    try:
        call(getattr(getattr(api, group), create), cfg.namespace, obj, what=what, retries=cfg.api_retries)
    except ClusterError as exc:
        if exc.status_code != 409:  # 409: there from an earlier attempt of this step
            raise


def _remove(api: Clients, obj: dict[str, Any], cfg: ClusterConfig, log: LogFn) -> None:
    group, _, delete = _CREATE[obj["kind"]]
    name = obj["metadata"]["name"]
    call(getattr(getattr(api, group), delete), name, cfg.namespace, what=f"delete {obj['kind']} {cfg.namespace}/{name}",
         retries=cfg.api_retries, missing_ok=True)
    log(f"deleted {obj['kind']} {cfg.namespace}/{name}")


def run_grpo(
    command: Sequence[str],
    *,
    model: str,
    run_id: str,
    cfg: ClusterConfig,
    image: str | None = None,
    env: Mapping[str, str] | None = None,
    log: LogFn | None = None,
) -> JobOutcome:
    """Run `cello train grpo ...` (`command`, without --vllm-server) with vLLM rollouts serving `model`.

    Same contract as `run_training`: returns when the trainer completed, raises a `JobError` otherwise.
    """
    log = log or job_logger.info
    api = connect()
    if cfg.num_nodes == 1:
        pod = render_grpo_pod(command, model=model, run_id=run_id, cfg=cfg, image=image, env=env)
        return launch(GRPOPodHandle(pod, cfg, api, run_id), api, run_id=run_id, cfg=cfg, log=log)
    server = render_rollout_server(model=model, run_id=run_id, cfg=cfg)
    spec = multinode_trainer_spec(command, run_id=run_id, cfg=cfg, image=image, env=env)
    try:
        for obj in server:
            _apply(api, obj, cfg)
        log(f"rollout server {server_url(run_id, cfg)} created")
        return launch(handle_for(spec, cfg, api), api, run_id=run_id, cfg=cfg, log=log,
                      companions=[run_selector(run_id, stage="grpo", role="rollout")])
    finally:  # the server holds GPUs: it goes with the trainer, whatever the ending
        for obj in server:
            try:
                _remove(api, obj, cfg, log)
            except Exception as exc:  # noqa: BLE001 - report, and let the exit handler's cleanup finish it
                log(f"could not delete {obj['kind']} {obj['metadata']['name']}: {exc}")

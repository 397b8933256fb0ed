"""Configs of Kubernetes (cello.k8s, `cello k8s render`, the pipeline's kubernetes backend, k8s/):
the KServe deployment, and the cluster the training stages run on."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from cello.config.base import DNS_LABEL, Section


class DeployConfig(Section):
    """`cello k8s render isvc|runtime`: KServe InferenceService = vLLM predictor + `cello serve` transformer."""

    name: str = Field("cello", pattern=DNS_LABEL, description="InferenceService name (a DNS-1035 label).")
    namespace: str = Field("cello", pattern=DNS_LABEL, description="Namespace of the InferenceService.")
    deployment_mode: Literal["Standard", "Knative"] = Field(
        "Standard", description="KServe deployment mode (Standard was called RawDeployment before KServe 0.15/0.16)."
    )
    served_model_name: str = Field(
        "cello", pattern=DNS_LABEL,
        description="--model_name of the vLLM predictor (the OpenAI `model`).",
    )
    runtime: str | None = Field(
        None,
        description=(
            "ServingRuntime to pin (e.g. the one from `cello k8s render runtime`); null: KServe auto-selects its "
            "huggingface runtime."
        ),
    )
    runtime_name: str = Field(
        "cello-vllm", pattern=DNS_LABEL,
        description="Name of the ServingRuntime that `cello k8s render runtime` writes.",
    )
    dtype: Literal["auto", "float16", "bfloat16", "float32"] = Field("bfloat16", description="vLLM --dtype.")
    max_model_len: int = Field(8192, ge=256, description="vLLM --max-model-len (prompt + completion tokens).")
    tensor_parallel_size: int = Field(1, ge=1, description="vLLM --tensor-parallel-size (GPUs per replica).")
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1, description="vLLM --gpu-memory-utilization.")
    extra_args: list[str] = Field(
        default_factory=list,
        description="More predictor args, e.g. ['--enable-prefix-caching'].",
    )
    gpus: int = Field(1, ge=1, description="GPUs per predictor replica (>= tensor_parallel_size).")
    gpu_resource: str = Field("nvidia.com/gpu", description="Extended resource name of the GPU.")
    cpu: str = Field("8", description="Predictor CPU request and limit.")
    memory: str = Field("64Gi", description="Predictor memory request and limit (7B bf16 weights are ~15 GB).")
    tolerations: list[dict[str, str]] = Field(
        default_factory=lambda: [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        description="Predictor pod tolerations (GPU node taints).",
    )
    node_selector: dict[str, str] = Field(
        default_factory=dict,
        description="Predictor node selector, e.g. {'nvidia.com/gpu.product': 'NVIDIA-A100-SXM4-80GB'}.",
    )
    startup_timeout_s: int = Field(
        1800, ge=60,
        description="Startup probe budget: download + load a 7B checkpoint (minutes).",
    )
    min_replicas: int = Field(1, ge=0, description="Fewest predictor replicas.")
    max_replicas: int = Field(1, ge=1, description="Most predictor replicas.")
    canary_traffic_percent: int | None = Field(
        None, ge=0, le=100,
        description="Share of traffic for a new model (gradual rollout); null: all traffic.",
    )
    canary_name: str = Field(
        "candidate", pattern=DNS_LABEL,
        description="Predictor name of the canary (Standard mode, spec.canary).",
    )
    auth: bool = Field(True, description="Ask the platform to require a token (the annotation below).")
    auth_annotation: str = Field(
        "security.opendatahub.io/enable-auth",
        description="Annotation that turns on auth (Open Data Hub / OpenShift AI; upstream KServe has none).",
    )
    transformer: bool = Field(
        True,
        description="Put `cello serve` in front of the predictor as the KServe transformer.",
    )
    transformer_cpu: str = Field("2", description="Transformer CPU request and limit.")
    transformer_memory: str = Field("4Gi", description="Transformer memory request and limit.")
    token_secret: str | None = Field(
        None,
        description="Secret (key 'token') with the transformer's own bearer token; null: none.",
    )
    service_account: str | None = Field(
        None,
        description="ServiceAccount of the predictor (holds the s3 credentials); null: default.",
    )
    ready_timeout_s: float = Field(
        2400, gt=0,
        description=(
            "`deploy`: how long the InferenceService may take to become Ready before the rollout is rolled back."
        ),
    )
    smoke_timeout_s: float = Field(
        300, gt=0,
        description="`deploy`: budget of the smoke request (retried while the route warms up).",
    )
    poll_interval_s: float = Field(10.0, gt=0, description="`deploy`: seconds between readiness checks.")

    @model_validator(mode="after")
    def _check(self) -> DeployConfig:
        if self.gpus < self.tensor_parallel_size:
            msg = (f"deploy.gpus={self.gpus} is below deploy.tensor_parallel_size={self.tensor_parallel_size}; "
                   "give each replica at least tensor_parallel_size GPUs.")
            raise ValueError(msg)
        if self.max_replicas < max(self.min_replicas, 1):
            msg = (f"deploy.max_replicas={self.max_replicas} is below deploy.min_replicas={self.min_replicas}; "
                   "set max_replicas >= min_replicas.")
            raise ValueError(msg)
        return self


class ClusterConfig(Section):
    """Where stages run on Kubernetes. The names here are the ones `k8s/` installs (namespace,
    ServiceAccount, PVC, training runtime), so a change here goes with a change there."""

    namespace: str = Field("cello", pattern=DNS_LABEL, description="Namespace of every object a run creates.")
    service_account: str = Field(
        "cello-pipeline", pattern=DNS_LABEL,
        description="ServiceAccount of the pipeline's pods (RBAC in k8s/base).",
    )
    pvc: str = Field(
        "cello-workspace",
        description="ReadWriteMany claim shared by every step: data, checkpoints, eval runs.",
    )
    mount_path: str = Field(
        "/mnt/cello",
        description="Where the claim is mounted in every pod; checkpoint URIs are paths under it.",
    )
    training_api: Literal["trainjob", "pytorchjob"] = Field(
        "trainjob",
        description=(
            "trainjob: Kubeflow Trainer v2 (TrainJob); pytorchjob: Training Operator v1 (kubeflow.org/v1 "
            "PyTorchJob)."
        ),
    )
    training_runtime: str = Field(
        "cello-torch",
        description="ClusterTrainingRuntime the TrainJobs refer to (torchrun; installed by k8s/base).",
    )
    num_nodes: int = Field(1, ge=1, description="Nodes per training job.")
    gpus_per_node: int = Field(8, ge=0, description="GPUs per training node (torchrun --nproc_per_node).")
    gpu_resource: str = Field("nvidia.com/gpu", description="Extended resource name of a GPU.")
    cpu_per_node: str = Field("32", description="CPU request and limit per training node.")
    memory_per_node: str = Field("256Gi", description="Memory request and limit per training node.")
    shm_size: str = Field(
        "64Gi",
        description=(
            "/dev/shm (a memory emptyDir) per training pod: NCCL and dataloader workers need more than the 64 MiB "
            "default."
        ),
    )
    node_selector: dict[str, str] = Field(
        default_factory=dict,
        description="Node selector of GPU steps, e.g. {'nvidia.com/gpu.product': 'NVIDIA-H100-80GB-HBM3'}.",
    )
    tolerations: list[dict[str, str]] = Field(
        default_factory=lambda: [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        description="Tolerations of GPU steps (GPU node taints).",
    )
    rollout_gpus: int = Field(
        1, ge=1,
        description="GPUs of the vLLM rollout server of GRPO (separate from the trainer's).",
    )
    active_deadline_s: int = Field(
        7 * 24 * 3600, ge=1,
        description="A training job running longer than this is failed and deleted.",
    )
    pending_timeout_s: int = Field(
        1800, ge=1,
        description=(
            "A job whose pods stay Pending this long (none of their containers started) fails the step; the pod "
            "and its events are named."
        ),
    )
    poll_interval_s: float = Field(10.0, gt=0, description="Seconds between status checks while waiting on a job.")
    log_tail_lines: int = Field(50, ge=0, description="Log lines of node 0 quoted when a job fails.")
    api_retries: int = Field(
        5, ge=0,
        description=(
            "Retries of a Kubernetes API call that failed transiently (connection error, 429, 5xx), with backoff."
        ),
    )
    deepspeed: str | None = Field(
        "configs/deepspeed/zero3.json",
        description=(
            "DeepSpeed config of multi-GPU SFT, relative to the cello-train image's working directory; null: plain "
            "DDP."
        ),
    )
    rollout_cpu: str = Field("8", description="CPU request and limit of GRPO's vLLM rollout server.")
    rollout_memory: str = Field("64Gi", description="Memory request and limit of GRPO's vLLM rollout server.")
    rollout_args: list[str] = Field(
        default_factory=list,
        description="More `vllm serve` args of the rollout server, e.g. ['--max-model-len', '8192'].",
    )
    rollout_startup_timeout_s: int = Field(
        1800, ge=10,
        description="Startup probe budget of the rollout server (download + load the policy).",
    )
    nccl_port_range: str = Field(
        "51217-52216", pattern=r"^\d{1,5}-\d{1,5}$",
        description=(
            "Ports NCCL opens between GRPO's trainer and rollout pods besides 51216: its sockets are ephemeral, so "
            "the training pods set net.ipv4.ip_local_port_range to this range (ends of different parity) and the "
            "NetworkPolicies open it."
        ),
    )
    secrets: dict[str, dict[str, str]] = Field(
        default_factory=dict,
        description=(
            "Secrets exposed as env to every step: {secret name: {key in the secret: ENV_VAR}} (object-store "
            "credentials, a hub token). Optional: a missing Secret is skipped."
        ),
    )

    @model_validator(mode="after")
    def _check_ports(self) -> ClusterConfig:
        low, high = (int(p) for p in self.nccl_port_range.split("-"))
        if not 1024 <= low < high <= 65535 or (high - low) % 2 == 0:
            msg = (f"cluster.nccl_port_range={self.nccl_port_range!r}: use LOW-HIGH within 1024-65535 with ends of "
                   "different parity (the kernel's rule for ip_local_port_range), e.g. 51217-52216.")
            raise ValueError(msg)
        return self

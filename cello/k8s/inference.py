"""KServe objects for serving a Cello checkpoint: the InferenceService and a ServingRuntime.

The InferenceService has two parts:
- predictor: KServe's Hugging Face runtime with the vLLM backend (`modelFormat: huggingface`,
  `--backend=vllm`), reading the checkpoint from `s3://...`, `pvc://...` or the Hugging Face Hub
  (`hf://ORG/NAME[@REVISION]`, written as KServe's `hf://ORG/NAME:REVISION`; the storage
  initializer copies it to /mnt/models), on GPU nodes, with a startup probe long enough to
  download and load a 7B model;
- transformer: the `cello serve` image in upstream mode. It takes structured puzzles, renders
  the prompt, calls the predictor's OpenAI route (`http://<name>-predictor.<ns>/openai/v1`),
  and parses, checks and repairs the answer.

Gradual rollout: in Standard mode (KServe >= 0.20) the new model is a `spec.canary` entry with
`trafficPercent`; in Knative mode it is `predictor.canaryTrafficPercent` (the new revision gets
that share, the last ready revision the rest).

    cello k8s render isvc s3://models/cello-7b -o isvc.yaml
    cello k8s render isvc hf://ncbi/Cell-o1 -o isvc.yaml          # the published model, straight from the Hub
    cello k8s render isvc pvc://models/incumbent --canary-uri pvc://models/candidate --canary-percent 10
    cello k8s render runtime -o runtime.yaml

    from cello.k8s.inference import render_inference_service
    obj = render_inference_service("s3://models/cello-7b", cfg=load_params().deploy)
"""

from __future__ import annotations

import copy
import os
import re
from typing import Any

from cello import __version__
from cello.config import DeployConfig
from cello.errors import ConfigError, InputError
from cello.k8s.images import image
from cello.k8s.manifests import emit, to_yaml, write_manifests  # noqa: F401 - re-exported

API_VERSION = "serving.kserve.io/v1beta1"
RUNTIME_API_VERSION = "serving.kserve.io/v1alpha1"
DEPLOYMENT_MODE_ANNOTATION = "serving.kserve.io/deploymentMode"
HTTP_PORT = 8080
MODEL_FORMAT = "huggingface"

# Schemes KServe's storage initializer understands and that make sense for a checkpoint.
_URI = re.compile(r"^(s3|gs|pvc|hf|oci|https)://[^\s/]+(/[^\s]*)?$")


def check_model_uri(uri: str, *, what: str = "model URI") -> str:
    """`uri` if KServe can fetch it, else an InputError that says which forms work. A Hub model
    (`hf://ORG/NAME[@REVISION]`, e.g. the published hf://ncbi/Cell-o1) is written in the form
    KServe's storage initializer reads, `hf://ORG/NAME[:REVISION]`."""
    from cello.data.hub import is_hub_uri, parse_hub_uri

    if is_hub_uri(uri):
        try:
            return parse_hub_uri(uri, model=True).kserve_uri()
        except ConfigError as exc:
            msg = f"{what}: {exc}"
            raise InputError(msg) from exc
    if not isinstance(uri, str) or not _URI.match(uri.strip()):
        msg = (
            f"{what} {uri!r} is not a storage URI KServe can fetch; use s3://bucket/path or "
            "pvc://claim/path (also gs://, hf://, oci://, https://)."
        )
        raise InputError(msg)
    return uri.strip()


def _labels(cfg: DeployConfig, component: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "cello",
        "app.kubernetes.io/instance": cfg.name,
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/managed-by": "cello",
        "app.kubernetes.io/version": __version__,
    }


def predictor_args(cfg: DeployConfig) -> list[str]:
    """Arguments of KServe's huggingfaceserver for a vLLM-backed chat model."""
    return [
        f"--model_name={cfg.served_model_name}",
        "--backend=vllm",
        f"--dtype={cfg.dtype}",
        f"--max-model-len={cfg.max_model_len}",
        f"--tensor-parallel-size={cfg.tensor_parallel_size}",
        f"--gpu-memory-utilization={cfg.gpu_memory_utilization}",
        *cfg.extra_args,
    ]


def _probe(path: str, *, period: int, failures: int, timeout: int = 5) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": HTTP_PORT},
        "periodSeconds": period,
        "timeoutSeconds": timeout,
        "failureThreshold": failures,
    }


def _predictor(uri: str, cfg: DeployConfig) -> dict[str, Any]:
    resources = {"cpu": cfg.cpu, "memory": cfg.memory, cfg.gpu_resource: str(cfg.gpus)}
    ready = f"/v2/models/{cfg.served_model_name}/ready"
    model: dict[str, Any] = {
        "name": "kserve-container",  # KServe's default; the canary schema requires it
        "modelFormat": {"name": MODEL_FORMAT},
        "storageUri": uri,
        "args": predictor_args(cfg),
        "resources": {"requests": dict(resources), "limits": dict(resources)},
        # Until this succeeds the kubelet runs no liveness probe: downloading and loading a
        # 7B checkpoint (and vLLM's CUDA graph capture) takes minutes, not seconds. The
        # model-level route answers 200 only once the engine is up (/v2/health/ready does not).
        "startupProbe": _probe(ready, period=10, failures=max(1, cfg.startup_timeout_s // 10)),
        "readinessProbe": _probe(ready, period=10, failures=3),
        "livenessProbe": _probe("/v2/health/live", period=30, failures=3, timeout=10),
    }
    if cfg.runtime:
        model["runtime"] = cfg.runtime
    pred: dict[str, Any] = {
        "minReplicas": cfg.min_replicas,
        "maxReplicas": cfg.max_replicas,
        "labels": _labels(cfg, "predictor"),
        "model": model,
    }
    if cfg.tolerations:
        pred["tolerations"] = [dict(t) for t in cfg.tolerations]
    if cfg.node_selector:
        pred["nodeSelector"] = dict(cfg.node_selector)
    if cfg.service_account:
        pred["serviceAccountName"] = cfg.service_account
    return pred


def predictor_host(cfg: DeployConfig) -> str:
    """In-cluster host of the predictor Service (what KServe would pass as --predictor_host)."""
    return f"{cfg.name}-predictor.{cfg.namespace}"


def transformer_args(cfg: DeployConfig) -> list[str]:
    """`cello serve` in upstream mode, pointed at the predictor's OpenAI route."""
    return [
        "serve",
        "--predictor_host", predictor_host(cfg),
        "--upstream-model", cfg.served_model_name,
        "--model_name", cfg.name,
        "--http_port", str(HTTP_PORT),
    ]


def _transformer(cfg: DeployConfig) -> dict[str, Any]:
    resources = {"cpu": cfg.transformer_cpu, "memory": cfg.transformer_memory}
    container: dict[str, Any] = {
        "name": "kserve-container",
        "image": image("serve"),
        "command": ["cello"],
        "args": transformer_args(cfg),
        "ports": [{"containerPort": HTTP_PORT, "protocol": "TCP"}],
        "resources": {"requests": dict(resources), "limits": dict(resources)},
        # ready once the predictor answers (cello serve checks its upstream)
        "readinessProbe": _probe(f"/v2/models/{cfg.name}/ready", period=10, failures=3),
        "livenessProbe": _probe("/v2/health/live", period=30, failures=3),
    }
    if cfg.token_secret:
        container["env"] = [{
            "name": "CELLO_SERVE_TOKEN",
            "valueFrom": {"secretKeyRef": {"name": cfg.token_secret, "key": "token"}},
        }]
    return {
        "minReplicas": max(cfg.min_replicas, 1),
        "maxReplicas": cfg.max_replicas,
        "labels": _labels(cfg, "transformer"),
        "containers": [container],
    }


def _check_names(cfg: DeployConfig, *, canary: bool) -> None:
    derived = [f"{cfg.name}-predictor", f"{cfg.name}-transformer"]
    if canary:
        derived.append(f"{cfg.name}-{cfg.canary_name}-predictor")
    too_long = [n for n in derived if len(n) > 63]
    if too_long:
        msg = f"deploy.name={cfg.name!r} gives Kubernetes names over 63 characters ({too_long}); use a shorter name."
        raise ConfigError(msg)


def render_inference_service(
    model_uri: str,
    *,
    cfg: DeployConfig | None = None,
    canary_uri: str | None = None,
) -> dict[str, Any]:
    """The InferenceService for `model_uri` (a plain dict, ready for YAML or the API).

    With `canary_uri` (Standard mode), `model_uri` stays the stable model and `canary_uri` gets
    `cfg.canary_traffic_percent` of the traffic. In Knative mode, `cfg.canary_traffic_percent`
    sends that share to the revision that `model_uri` creates.
    """
    cfg = cfg or DeployConfig()
    uri = check_model_uri(model_uri)
    annotations = {DEPLOYMENT_MODE_ANNOTATION: cfg.deployment_mode}
    if cfg.auth:
        annotations[cfg.auth_annotation] = "true"
    predictor = _predictor(uri, cfg)
    spec: dict[str, Any] = {"predictor": predictor}

    if cfg.deployment_mode == "Standard":
        if (canary_uri is None) != (cfg.canary_traffic_percent is None):
            msg = (
                "a Standard-mode canary needs both the new model (--canary-uri) and its share "
                f"(--canary-percent / deploy.canary_traffic_percent); got canary_uri={canary_uri!r}, "
                f"canary_traffic_percent={cfg.canary_traffic_percent}. Give both, or neither."
            )
            raise ConfigError(msg)
        if canary_uri is not None:
            canary = copy.deepcopy(predictor)
            canary["model"]["storageUri"] = check_model_uri(canary_uri, what="canary URI")
            # KServe 0.20 gives a canary fixed replicas: no max/autoscaling, min <= stable min.
            canary.pop("maxReplicas", None)
            canary.pop("minReplicas", None)
            canary["name"] = cfg.canary_name
            canary["labels"] = _labels(cfg, "canary")
            spec["canary"] = [{"predictor": canary, "trafficPercent": cfg.canary_traffic_percent}]
    else:
        if canary_uri is not None:
            msg = (
                "Knative mode has no separate canary model: render the new model as the main "
                "model URI and set --canary-percent; Knative splits traffic with the last ready revision."
            )
            raise ConfigError(msg)
        if cfg.canary_traffic_percent is not None:
            predictor["canaryTrafficPercent"] = cfg.canary_traffic_percent

    if cfg.transformer:
        spec["transformer"] = _transformer(cfg)
    _check_names(cfg, canary="canary" in spec)
    return {
        "apiVersion": API_VERSION,
        "kind": "InferenceService",
        "metadata": {
            "name": cfg.name,
            "namespace": cfg.namespace,
            "labels": _labels(cfg, "inference"),
            "annotations": annotations,
        },
        "spec": spec,
    }


def render_serving_runtime(*, cfg: DeployConfig | None = None) -> dict[str, Any]:
    """A ServingRuntime that pins the vLLM-capable huggingfaceserver image for `modelFormat: huggingface`.

    Use it by setting `deploy.runtime` to `deploy.runtime_name`; without it KServe picks the
    cluster's own ClusterServingRuntime (whatever image the cluster admin installed).
    """
    cfg = cfg or DeployConfig()
    return {
        "apiVersion": RUNTIME_API_VERSION,
        "kind": "ServingRuntime",
        "metadata": {
            "name": cfg.runtime_name,
            "namespace": cfg.namespace,
            "labels": _labels(cfg, "runtime"),
            "annotations": {"serving.kserve.io/server-type": "huggingfaceserver"},
        },
        "spec": {
            "annotations": {"prometheus.kserve.io/port": str(HTTP_PORT), "prometheus.kserve.io/path": "/metrics"},
            "supportedModelFormats": [{"name": MODEL_FORMAT, "version": "1", "autoSelect": False, "priority": 1}],
            "protocolVersions": ["v2", "v1"],
            "containers": [{
                "name": "kserve-container",
                "image": image("kserve-huggingfaceserver"),
                # {{.Name}} is filled in by KServe with the InferenceService name.
                "args": ["--model_name={{.Name}}", "--backend=vllm"],
                "env": [{"name": "HF_HUB_OFFLINE", "value": "1"}],
                "ports": [{"containerPort": HTTP_PORT, "protocol": "TCP"}],
                "securityContext": {
                    "allowPrivilegeEscalation": False,
                    "privileged": False,
                    "runAsNonRoot": True,
                    "capabilities": {"drop": ["ALL"]},
                },
                "volumeMounts": [{"name": "devshm", "mountPath": "/dev/shm"}],
            }],
            # vLLM's tensor parallelism shares memory through /dev/shm.
            "volumes": [{"name": "devshm", "emptyDir": {"medium": "Memory"}}],
        },
    }


def write_inference_service(
    model_uri: str,
    out: str | os.PathLike | None = None,
    *,
    cfg: DeployConfig | None = None,
    canary_uri: str | None = None,
    crd_dir: str | os.PathLike | None = None,
) -> str:
    """Render the InferenceService, validate it against the CRDs in `crd_dir` (if given), write YAML."""
    return emit([render_inference_service(model_uri, cfg=cfg, canary_uri=canary_uri)], out, crd_dir)


def write_serving_runtime(
    out: str | os.PathLike | None = None,
    *,
    cfg: DeployConfig | None = None,
    crd_dir: str | os.PathLike | None = None,
) -> str:
    """Render the ServingRuntime, validate it against the CRDs in `crd_dir` (if given), write YAML."""
    return emit([render_serving_runtime(cfg=cfg)], out, crd_dir)

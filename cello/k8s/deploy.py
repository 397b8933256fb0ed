"""Deploy a checkpoint to KServe, prove it answers, and put the previous model back when it does not.

Through the KServe Python SDK (`KServeClient`), on the InferenceService that
`render_inference_service` builds (Hugging Face runtime with `--backend=vllm`, `cello serve` as the
transformer, Standard mode):

1. read the InferenceService `deploy.name`: the incumbent (`deployed_model_uri`, which the gate
   also uses as its default incumbent);
2. apply the new spec as a JSON merge patch over the incumbent's (a create when there is none).
   With `deploy.canary_traffic_percent` set and an incumbent to compare with, the candidate
   goes out as a canary first (Standard: a `spec.canary` predictor with that share; Knative:
   `canaryTrafficPercent` on the new revision), and is promoted only after its smoke test;
3. after each change, wait until the service is Ready *for that generation* (deploy.ready_timeout_s;
   a model that failed to load ends the wait at once), then send one real puzzle through the
   served route (the transformer's `/v1/models/<name>:predict`) and require a valid answer: the
   model's own completion in the paper's format, each candidate used once (`valid`, not a
   repaired one);
4. on any failure (not Ready in time, the model failed to load, a bad or missing answer, or the
   step cancelled), restore the incumbent's spec, labels and annotations (which also drops a
   canary), or delete the service when there was none, and raise `DeployFailed` with the reason.

The SDK's own `wait_isvc_ready` is not used: it sleeps out the whole timeout on a model that has
already failed to load, and its timeout error dumps the object instead of saying why.

    from cello.k8s.deploy import deploy
    deploy("pvc://cello-workspace/runs/r1/grpo/model", cfg=params.deploy, cluster=params.cluster,
           run_id="r1", smoke_puzzle={"cells": [...], "candidates": [...]})
"""

from __future__ import annotations

import copy
import os
import time
from dataclasses import dataclass, field
from typing import Any

from cello.config import ClusterConfig, DeployConfig
from cello.errors import CelloError, ConfigError
from cello.k8s.api import ClusterError, call, load_config
from cello.k8s.inference import API_VERSION, check_model_uri, render_inference_service
from cello.k8s.labels import run_labels
from cello.k8s.launch import sigterm_exits
from cello.k8s.wait import LogFn, job_logger

TOKEN_ENV = "CELLO_SERVE_TOKEN"  # the transformer's bearer token, as `cello serve` reads it
_FAILED_TRANSITIONS = {"BlockedByFailedLoad", "InvalidSpec"}


class DeployFailed(CelloError):
    """The new model did not become Ready or failed its smoke test; the previous one was restored."""

    def __init__(self, msg: str, *, reason: str, restored: str | None):
        super().__init__(msg)
        self.reason, self.restored = reason, restored


class _NotReady(Exception):
    pass


@dataclass(frozen=True)
class DeployOutcome:
    """A model that serves: where, what it replaced, and the smoke test's answer."""

    name: str
    namespace: str
    model_uri: str
    previous_uri: str | None
    url: str
    canary: bool  # went out as a canary first, then was promoted
    prediction: dict[str, Any] = field(default_factory=dict)


def kserve_client():
    """A KServeClient on the step's credentials (in-cluster, else $KUBECONFIG read now)."""
    from cello.deps import require

    require("kserve", "serve")
    from kserve import KServeClient

    load_config()  # the clear error when there are no credentials at all
    if os.path.isdir("/var/run/secrets/kubernetes.io/"):
        return KServeClient()
    return KServeClient(config_file=os.environ.get("KUBECONFIG") or None)


def merge_patch(current: Any, desired: Any) -> Any:
    """The RFC 7386 merge patch that turns `current` into `desired` (null removes a key, lists are replaced)."""
    if not isinstance(current, dict) or not isinstance(desired, dict):
        return copy.deepcopy(desired)
    patch: dict[str, Any] = {key: None for key in current if key not in desired}
    for key, value in desired.items():
        if key not in current:
            patch[key] = copy.deepcopy(value)
        elif current[key] != value:
            patch[key] = merge_patch(current[key], value)
    return patch


def _sdk_object(obj: dict[str, Any]) -> Any:
    """KServeClient.create/patch read `.api_version` and `.metadata` off a model object; the spec
    stays the dict that validates against the CRD (the SDK's deserializer cannot read core types)."""
    from kserve import V1beta1InferenceService
    from kubernetes.client import V1ObjectMeta

    meta = obj["metadata"]
    return V1beta1InferenceService(
        api_version=obj["apiVersion"], kind=obj["kind"], spec=obj.get("spec"),
        metadata=V1ObjectMeta(name=meta["name"], namespace=meta["namespace"], labels=meta.get("labels"),
                              annotations=meta.get("annotations")),
    )


def storage_uri(path: str, cluster: ClusterConfig) -> str:
    """The storageUri KServe reads a checkpoint from: a path on the shared volume becomes
    pvc://<claim>/<path under the mount>; a URI (s3://, pvc://, ...) is kept."""
    if "://" in path:
        return check_model_uri(path)
    mount = cluster.mount_path.rstrip("/")
    if not path.startswith(mount + "/"):
        msg = (f"checkpoint {path!r} is neither a storage URI nor under the shared volume {mount}/; "
               "KServe can only fetch it from s3://, pvc://, ... or the workspace claim.")
        raise ConfigError(msg)
    return check_model_uri(f"pvc://{cluster.pvc}/{path[len(mount) + 1:].strip('/')}")


def predictor_uri(obj: dict[str, Any] | None) -> str | None:
    """The stable model of an InferenceService (`spec.predictor.model.storageUri`)."""
    return ((((obj or {}).get("spec") or {}).get("predictor") or {}).get("model") or {}).get("storageUri")


def deployed_model_uri(cfg: DeployConfig, *, retries: int = 5) -> str | None:
    """The checkpoint deployed now (the gate's default incumbent); None when nothing is deployed."""
    kserve = kserve_client()
    obj = call(kserve.get, cfg.name, namespace=cfg.namespace, what=f"get InferenceService {cfg.namespace}/{cfg.name}",
               retries=retries, missing_ok=True)
    return predictor_uri(obj)


def why_not_ready(status: dict[str, Any]) -> str:
    """The InferenceService's own account of why it is not Ready."""
    parts = [f"{c.get('type')}: {c.get('reason') or ''} {c.get('message') or ''}".strip()
             for c in status.get("conditions") or [] if c.get("status") != "True"]
    model = status.get("modelStatus") or {}
    failure = model.get("lastFailureInfo") or {}
    if failure:
        parts.append(f"model: {failure.get('reason')}: {failure.get('message')}")
    for canary in status.get("canaryStatuses") or []:
        if not canary.get("ready"):
            parts.append(f"canary {canary.get('name')} not ready")
    return "; ".join(parts) or "no status yet (is the KServe controller running?)"


def _load_failed(status: dict[str, Any]) -> bool:
    model = status.get("modelStatus") or {}
    states = model.get("states") or {}
    canaries = [c.get("modelStatus") or {} for c in status.get("canaryStatuses") or []]
    return (model.get("transitionStatus") in _FAILED_TRANSITIONS or states.get("activeModelState") == "FailedToLoad"
            or any(c.get("transitionStatus") in _FAILED_TRANSITIONS for c in canaries))


def wait_ready(kserve: Any, cfg: DeployConfig, generation: int, *, retries: int) -> dict[str, Any]:
    """The InferenceService once Ready for `generation` (canaries too); _NotReady with the reason otherwise."""
    deadline = time.monotonic() + cfg.ready_timeout_s
    what = f"InferenceService {cfg.namespace}/{cfg.name}"
    while True:
        ready = call(kserve.is_isvc_ready, cfg.name, namespace=cfg.namespace, expected_generation=generation,
                     what=f"check {what}", retries=retries)
        obj = call(kserve.get, cfg.name, namespace=cfg.namespace, what=f"get {what}", retries=retries)
        status = obj.get("status") or {}
        observed = status.get("observedGeneration", 0) >= generation
        if ready and all(c.get("ready") for c in status.get("canaryStatuses") or []):
            return obj
        if observed and _load_failed(status):
            msg = f"the model failed to load: {why_not_ready(status)}"
            raise _NotReady(msg)
        if time.monotonic() >= deadline:
            seen = why_not_ready(status) if observed else f"the controller has not seen generation {generation} yet"
            msg = f"not Ready after {cfg.ready_timeout_s:.0f}s (deploy.ready_timeout_s): {seen}"
            raise _NotReady(msg)
        time.sleep(cfg.poll_interval_s)


def answer_problem(puzzle: dict[str, Any], prediction: dict[str, Any]) -> str | None:
    """What is wrong with a served answer to `puzzle` (None: a valid assignment from the model itself)."""
    if not prediction.get("valid"):
        return (f"the model's answer is not valid ({prediction.get('reason') or 'no reason given'}): "
                f"{str(prediction.get('completion'))[:300]!r}")
    assignment = prediction.get("assignment") or {}
    wanted = sorted(c.lower() for c in puzzle.get("candidates", []))
    if len(assignment) != len(puzzle.get("cells", [])) or sorted(str(v).lower() for v in assignment.values()) != wanted:
        return f"the assignment {assignment} does not give each of the {len(wanted)} candidates to one cell"
    return None


def smoke_test(url: str, puzzle: dict[str, Any], *, cfg: DeployConfig, token: str | None = None) -> dict[str, Any]:
    """Send `puzzle` through `url`'s v1 predict route; return the prediction, or raise _NotReady why not.

    Connection errors and 5xx are retried until deploy.smoke_timeout_s (the route may still be warming
    up); a 4xx or a wrong answer is final.
    """
    import httpx

    route = f"{url.rstrip('/')}/v1/models/{cfg.name}:predict"
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    deadline = time.monotonic() + cfg.smoke_timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            r = httpx.post(route, json={"instances": [puzzle]}, headers=headers,
                           timeout=max(1.0, min(120.0, deadline - time.monotonic())))
        except httpx.HTTPError as exc:
            last = f"{type(exc).__name__}: {exc}"
        else:
            if r.status_code == 200:
                try:
                    prediction = (r.json().get("predictions") or [{}])[0]
                except (ValueError, AttributeError, IndexError):
                    prediction = {"valid": False, "reason": f"not a v1 predict response: {r.text[:200]!r}"}
                problem = answer_problem(puzzle, prediction)
                if problem:
                    msg = f"smoke test at {route}: {problem}"
                    raise _NotReady(msg)
                return prediction
            last = f"HTTP {r.status_code}: {r.text[:300]}"
            if r.status_code < 500:
                msg = f"smoke test at {route} refused: {last}"
                raise _NotReady(msg)
        time.sleep(min(1.0, cfg.poll_interval_s))
    msg = f"smoke test at {route}: no answer within {cfg.smoke_timeout_s:.0f}s (deploy.smoke_timeout_s): {last}"
    raise _NotReady(msg)


def _plan(model_uri: str, previous: dict[str, Any] | None, cfg: DeployConfig) -> list[dict[str, Any]]:
    """The specs to roll out, in order: [canary, promoted] or [direct]."""
    final = render_inference_service(model_uri, cfg=cfg.model_copy(update={"canary_traffic_percent": None}))
    incumbent = predictor_uri(previous)
    if cfg.canary_traffic_percent is None or incumbent is None or incumbent == model_uri:
        return [final]
    if cfg.deployment_mode == "Standard":
        return [render_inference_service(incumbent, cfg=cfg, canary_uri=model_uri), final]
    return [render_inference_service(model_uri, cfg=cfg), final]


def _apply(kserve: Any, obj: dict[str, Any], current: dict[str, Any] | None, *, retries: int) -> int:
    """Create `obj`, or merge-patch `current` into it; the generation the API server gave it."""
    meta = obj["metadata"]
    what = f"InferenceService {meta['namespace']}/{meta['name']}"
    if current is None:
        out = call(kserve.create, _sdk_object(obj), namespace=meta["namespace"], what=f"create {what}", retries=retries)
    else:
        cur_meta = current.get("metadata") or {}
        patch = {
            "apiVersion": obj["apiVersion"], "kind": obj["kind"],
            "metadata": {"name": meta["name"], "namespace": meta["namespace"],
                         "labels": merge_patch(cur_meta.get("labels") or {}, meta.get("labels") or {}),
                         "annotations": merge_patch(cur_meta.get("annotations") or {}, meta.get("annotations") or {})},
            "spec": merge_patch(current.get("spec") or {}, obj["spec"]),
        }
        out = call(kserve.patch, meta["name"], _sdk_object(patch), namespace=meta["namespace"], what=f"patch {what}",
                   retries=retries)
    return int(((out or {}).get("metadata") or {}).get("generation") or 1)


def _restore(kserve: Any, previous: dict[str, Any] | None, cfg: DeployConfig, *, retries: int, log: LogFn) -> str:
    """Put the incumbent back (or delete what this step created); say what was done."""
    what = f"InferenceService {cfg.namespace}/{cfg.name}"
    if previous is None:
        call(kserve.delete, cfg.name, namespace=cfg.namespace, what=f"delete {what}", retries=retries, missing_ok=True)
        log(f"rolled back: deleted {what} (nothing was deployed before)")
        return "nothing (the new InferenceService was deleted)"
    current = call(kserve.get, cfg.name, namespace=cfg.namespace, what=f"get {what}", retries=retries, missing_ok=True)
    restored = {"apiVersion": API_VERSION, "kind": "InferenceService", "spec": previous.get("spec") or {},
                "metadata": {**{k: v for k, v in (previous.get("metadata") or {}).items()
                                if k in ("labels", "annotations")},
                             "name": cfg.name, "namespace": cfg.namespace}}
    generation = _apply(kserve, restored, current, retries=retries)
    uri = predictor_uri(previous)
    try:
        wait_ready(kserve, cfg, generation, retries=retries)
        log(f"rolled back: {what} serves {uri} again (Ready)")
        return f"{uri} (Ready again)"
    except _NotReady as exc:
        log(f"rolled back: {what} restored to {uri}, not Ready yet: {exc}")
        return f"{uri} (restored, not Ready yet: {exc})"


def deploy(
    model_uri: str,
    *,
    cfg: DeployConfig,
    cluster: ClusterConfig,
    run_id: str,
    smoke_puzzle: dict[str, Any],
    token: str | None = None,
    log: LogFn | None = None,
) -> DeployOutcome:
    """Roll `model_uri` out to the InferenceService `cfg.name`, smoke-test it, roll back on failure.

    `smoke_puzzle` is one puzzle in `cello serve`'s request schema; `token` (default: $CELLO_SERVE_TOKEN)
    is sent as the bearer token. Raises `DeployFailed` after restoring the previous model.
    """
    log = log or job_logger.info
    check_model_uri(model_uri)
    if not cfg.transformer:
        msg = ("deploy's smoke test sends a puzzle through the `cello serve` transformer's v1 route; "
               "set deploy.transformer: true (or deploy without this step).")
        raise ConfigError(msg)
    token = token if token is not None else os.environ.get(TOKEN_ENV) or None
    retries = cluster.api_retries
    kserve = kserve_client()
    what = f"InferenceService {cfg.namespace}/{cfg.name}"
    previous = call(kserve.get, cfg.name, namespace=cfg.namespace, what=f"get {what}", retries=retries, missing_ok=True)
    steps = _plan(model_uri, previous, cfg)
    for obj in steps:
        obj["metadata"]["labels"].update(run_labels(run_id, "deploy"))
    with sigterm_exits():
        try:
            current, url, prediction = previous, "", {}
            for i, obj in enumerate(steps):
                step = "canary" if i < len(steps) - 1 else ("promotion" if len(steps) > 1 else "rollout")
                generation = _apply(kserve, obj, current, retries=retries)
                log(f"{what}: {step} of {model_uri} applied (generation {generation}); waiting for Ready")
                current = wait_ready(kserve, cfg, generation, retries=retries)
                status = current.get("status") or {}
                url = (status.get("address") or {}).get("url") or status.get("url") or ""
                if not url:
                    msg = "Ready, but the status has no URL to send the smoke request to"
                    raise _NotReady(msg)
                prediction = smoke_test(url, smoke_puzzle, cfg=cfg, token=token)
                log(f"{what}: {step} answered the smoke puzzle with a valid assignment: {prediction.get('assignment')}")
        except BaseException as exc:  # whatever stopped the rollout (cancel included): restore first
            reason = str(exc) or type(exc).__name__
            try:
                restored = _restore(kserve, previous, cfg, retries=retries, log=log)
            except ClusterError as again:
                restored = f"nothing: the rollback failed too ({again})"
            if not isinstance(exc, _NotReady | ClusterError):
                raise
            msg = (f"deploying {model_uri} to {what} failed: {reason}. Rolled back to {restored}. Check the "
                   f"predictor's logs (kubectl logs -n {cfg.namespace} "
                   f"-l serving.kserve.io/inferenceservice={cfg.name}).")
            raise DeployFailed(msg, reason=reason, restored=predictor_uri(previous)) from exc
    return DeployOutcome(cfg.name, cfg.namespace, model_uri, predictor_uri(previous), url, canary=len(steps) > 1,
                         prediction=prediction)


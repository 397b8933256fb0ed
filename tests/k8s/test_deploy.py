"""`deploy` against the Kubernetes API double with a real served route: the fake KServe controller
points status.url at a real `cello serve` transformer on loopback, in front of a scripted
OpenAI-compatible model whose answers follow the model URI the InferenceService now serves
(a URI containing 'garbled' answers garbage). Ready + smoke ok, never Ready, smoke fails and
canary cases; every failure must leave the previous model in place."""

from __future__ import annotations

import time

import pytest

from cello.config import DeployConfig
from cello.k8s.deploy import DeployFailed, deploy, deployed_model_uri, merge_patch, predictor_uri
from cello.k8s.inference import render_inference_service
from tests.k8s.conftest import CANDIDATES, PUZZLE, fast, in_thread
from tests.k8s.fakecluster import ISVCS

OLD, NEW = "pvc://cello-workspace/runs/r0/model", "pvc://cello-workspace/runs/r1/model"
GARBLED = "pvc://cello-workspace/runs/garbled/model"


def cfg(**over) -> DeployConfig:
    return DeployConfig(**{"ready_timeout_s": 20, "smoke_timeout_s": 10, "poll_interval_s": 0.05, **over})


def incumbent(cluster, uri=OLD, run_id="r0"):
    """What an earlier run deployed: the InferenceService, Ready."""
    obj = render_inference_service(uri, cfg=cfg())
    obj["metadata"]["labels"]["cello.dev/run-id"] = run_id
    cluster.put(ISVCS, obj)


def isvc(cluster):
    return cluster.get(ISVCS, "cello")


def history(cluster):
    return [dict(v) for v in cluster.api.objects[cluster.key(ISVCS, "cello", "cello")].history if v is not None]


async def run(**kwargs):
    args = {"cfg": cfg(), "cluster": fast(), "run_id": "r1", "smoke_puzzle": PUZZLE, **kwargs}
    model = args.pop("model_uri", NEW)
    return await in_thread(deploy, model, **args)


@pytest.mark.asyncio
async def test_first_deploy_ready_and_smoke_ok(kserve):
    lines = []
    outcome = await run(log=lines.append)
    assert (outcome.model_uri, outcome.previous_uri, outcome.canary) == (NEW, None, False)
    assert outcome.url == kserve.serving_url
    assert outcome.prediction["valid"] and sorted(outcome.prediction["assignment"].values()) == sorted(CANDIDATES)
    obj = isvc(kserve)
    assert predictor_uri(obj) == NEW
    labels = obj["metadata"]["labels"]
    assert labels["cello.dev/run-id"] == "r1" and labels["cello.dev/stage"] == "deploy"
    assert any("answered the smoke puzzle with a valid assignment" in line for line in lines)


@pytest.mark.asyncio
async def test_upgrade_replaces_the_incumbent_and_reports_it(kserve):
    incumbent(kserve)
    assert await in_thread(deployed_model_uri, cfg()) == OLD
    outcome = await run()
    assert outcome.previous_uri == OLD
    assert await in_thread(deployed_model_uri, cfg()) == NEW
    assert isvc(kserve)["metadata"]["generation"] == 2


@pytest.mark.asyncio
async def test_never_ready_model_is_rolled_back_at_once(kserve):
    incumbent(kserve)
    kserve.never_ready.add(NEW)
    began = time.monotonic()
    with pytest.raises(DeployFailed) as err:
        await run()
    assert time.monotonic() - began < 10  # a failed load ends the wait; no 20 s timeout
    assert "the model failed to load" in str(err.value) and "ModelLoadFailed" in str(err.value)
    assert f"Rolled back to {OLD} (Ready again)" in str(err.value)
    obj = isvc(kserve)
    assert predictor_uri(obj) == OLD and obj["metadata"]["labels"]["cello.dev/run-id"] == "r0"


@pytest.mark.asyncio
async def test_not_ready_in_time_is_rolled_back(kserve):
    incumbent(kserve)
    kserve.stalled.add(NEW)  # the controller never reports on it
    with pytest.raises(DeployFailed, match=r"not Ready after 1s \(deploy.ready_timeout_s\)"):
        await run(cfg=cfg(ready_timeout_s=1))
    assert predictor_uri(isvc(kserve)) == OLD


@pytest.mark.asyncio
async def test_failed_smoke_test_is_rolled_back(kserve):
    incumbent(kserve)
    with pytest.raises(DeployFailed) as err:
        await run(model_uri=GARBLED)
    assert "smoke test at" in str(err.value) and "the model's answer is not valid" in str(err.value)
    assert predictor_uri(isvc(kserve)) == OLD


@pytest.mark.asyncio
async def test_failed_first_deploy_deletes_what_it_created(kserve):
    kserve.never_ready.add(NEW)
    with pytest.raises(DeployFailed, match="the new InferenceService was deleted"):
        await run()
    assert isvc(kserve) is None
    assert await in_thread(deployed_model_uri, cfg()) is None


@pytest.mark.asyncio
async def test_canary_is_promoted_after_its_smoke_test(kserve):
    incumbent(kserve)
    outcome = await run(cfg=cfg(canary_traffic_percent=10))
    assert outcome.canary and outcome.previous_uri == OLD
    canaries = [v["spec"]["canary"] for v in history(kserve) if v.get("spec", {}).get("canary")]
    assert canaries and canaries[0][0]["trafficPercent"] == 10
    assert canaries[0][0]["predictor"]["model"]["storageUri"] == NEW
    final = isvc(kserve)
    assert predictor_uri(final) == NEW and "canary" not in final["spec"]  # promoted: the canary is gone


@pytest.mark.asyncio
async def test_failed_canary_is_dropped(kserve):
    incumbent(kserve)
    with pytest.raises(DeployFailed, match="not valid"):
        await run(model_uri=GARBLED, cfg=cfg(canary_traffic_percent=10))
    final = isvc(kserve)
    assert predictor_uri(final) == OLD and "canary" not in final["spec"]
    assert any(v.get("spec", {}).get("canary") for v in history(kserve))  # it did go out as a canary


def _apply_merge_patch(target, patch):  # RFC 7386, as the API server applies it
    if not isinstance(patch, dict):
        return patch
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = _apply_merge_patch(out.get(key), value)
    return out


@pytest.mark.parametrize(("current", "desired"), [
    ({"a": 1, "b": {"c": 2, "d": 3}, "l": [1, 2]}, {"a": 1, "b": {"c": 5}, "l": [3]}),
    ({"predictor": {"model": {"storageUri": OLD}}, "canary": [{"trafficPercent": 10}]},
     {"predictor": {"model": {"storageUri": OLD}}}),
    ({}, {"x": {"y": [1]}}),
])
def test_merge_patch_turns_current_into_desired(current, desired):
    patch = merge_patch(current, desired)
    assert _apply_merge_patch(current, patch) == desired


@pytest.mark.asyncio
async def test_knative_canary_splits_traffic_then_promotes(kserve):
    incumbent(kserve)
    outcome = await run(cfg=cfg(deployment_mode="Knative", canary_traffic_percent=20))
    assert outcome.canary
    shares = [v["spec"]["predictor"].get("canaryTrafficPercent") for v in history(kserve)]
    assert 20 in shares  # the new revision got 20 % first
    final = isvc(kserve)
    assert predictor_uri(final) == NEW and "canaryTrafficPercent" not in final["spec"]["predictor"]


@pytest.mark.asyncio
async def test_cancel_during_rollout_restores_the_incumbent(kserve):
    incumbent(kserve)

    def cancel(line):
        if "waiting for Ready" in line:
            raise KeyboardInterrupt  # what SIGTERM becomes inside deploy

    with pytest.raises(KeyboardInterrupt):
        await run(log=cancel)
    assert predictor_uri(isvc(kserve)) == OLD


def test_deploy_needs_the_transformer_for_its_smoke_test():
    from cello.config import ClusterConfig
    from cello.errors import ConfigError

    with pytest.raises(ConfigError, match="deploy.transformer: true"):
        deploy(NEW, cfg=cfg(transformer=False), cluster=ClusterConfig(), run_id="r1", smoke_puzzle=PUZZLE)


def test_storage_uri_maps_the_shared_volume_to_the_claim():
    from cello.config import ClusterConfig
    from cello.errors import ConfigError
    from cello.k8s.deploy import storage_uri

    assert storage_uri("/mnt/cello/runs/r1/grpo/model", ClusterConfig()) == "pvc://cello-workspace/runs/r1/grpo/model"
    assert storage_uri("s3://models/cello-7b", ClusterConfig()) == "s3://models/cello-7b"
    with pytest.raises(ConfigError, match="neither a storage URI nor under the shared volume"):
        storage_uri("/tmp/model", ClusterConfig())

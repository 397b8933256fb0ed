"""The rendered KServe objects validate against the upstream CRD schemas (strictly) and say
what a 7B vLLM deployment needs. Skips the schema checks when ../shared/schemas/crds is absent."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from cello.cli import main
from cello.config import DeployConfig
from cello.errors import ConfigError, InputError
from cello.k8s import images
from cello.k8s.inference import (
    predictor_host,
    render_inference_service,
    render_serving_runtime,
    write_inference_service,
)
from cello.k8s.validate import ManifestError, schema_errors, strict, validate
from tests.conftest import defaults_params

CRDS = Path(__file__).resolve().parents[2] / ".." / "shared" / "schemas" / "crds"
needs_crds = pytest.mark.skipif(not CRDS.is_dir(), reason=f"CRD schemas not found at {CRDS}")

URI = "s3://models/cello-7b"


def _args(obj):
    return obj["spec"]["predictor"]["model"]["args"]


# ---------------------------------------------------------------- what is rendered
def test_isvc_has_the_vllm_predictor_settings():
    cfg = DeployConfig(dtype="float16", max_model_len=4096, tensor_parallel_size=2, gpus=2)
    obj = render_inference_service(URI, cfg=cfg)
    assert obj["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Standard"
    assert obj["metadata"]["annotations"][cfg.auth_annotation] == "true"
    model = obj["spec"]["predictor"]["model"]
    assert model["modelFormat"] == {"name": "huggingface"}
    assert model["storageUri"] == URI
    assert {"--backend=vllm", "--model_name=cello", "--dtype=float16", "--max-model-len=4096",
            "--tensor-parallel-size=2"} <= set(_args(obj))
    assert model["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert model["resources"]["requests"]["nvidia.com/gpu"] == "2"
    assert obj["spec"]["predictor"]["tolerations"][0]["key"] == "nvidia.com/gpu"
    probe = model["startupProbe"]
    assert probe["periodSeconds"] * probe["failureThreshold"] >= 1800  # 30 min for a 7B model


def test_transformer_is_cello_serve_pointed_at_the_predictor():
    cfg = DeployConfig(name="annot", namespace="ml", served_model_name="c7b")
    obj = render_inference_service("pvc://models/c7b", cfg=cfg)
    container = obj["spec"]["transformer"]["containers"][0]
    assert container["image"] == images.image("serve")
    assert container["command"] == ["cello"]
    args = container["args"]
    assert args[0] == "serve"
    assert args[args.index("--predictor_host") + 1] == "annot-predictor.ml" == predictor_host(cfg)
    assert args[args.index("--upstream-model") + 1] == "c7b"
    assert args[args.index("--model_name") + 1] == "annot"


def test_standard_canary_is_a_second_predictor_with_a_traffic_share():
    cfg = DeployConfig(canary_traffic_percent=10)
    obj = render_inference_service("pvc://m/incumbent", cfg=cfg, canary_uri="pvc://m/candidate")
    (canary,) = obj["spec"]["canary"]
    assert canary["trafficPercent"] == 10
    assert canary["predictor"]["name"] == "candidate"
    assert canary["predictor"]["model"]["storageUri"] == "pvc://m/candidate"
    assert "maxReplicas" not in canary["predictor"]  # KServe 0.20 rejects it on a canary
    assert obj["spec"]["predictor"]["model"]["storageUri"] == "pvc://m/incumbent"


def test_knative_canary_uses_canary_traffic_percent():
    cfg = DeployConfig(deployment_mode="Knative", canary_traffic_percent=25)
    obj = render_inference_service(URI, cfg=cfg)
    assert obj["spec"]["predictor"]["canaryTrafficPercent"] == 25
    assert "canary" not in obj["spec"]
    assert obj["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Knative"


@pytest.mark.parametrize(
    ("kwargs", "canary_uri", "error"),
    [
        ({"canary_traffic_percent": 10}, None, ConfigError),  # share without a new model
        ({}, "pvc://m/new", ConfigError),  # new model without a share
        ({"deployment_mode": "Knative", "canary_traffic_percent": 5}, "pvc://m/new", ConfigError),
        ({"name": "a" * 55}, None, ConfigError),  # derived names over 63 characters
    ],
)
def test_inconsistent_settings_are_refused(kwargs, canary_uri, error):
    with pytest.raises(error):
        render_inference_service(URI, cfg=DeployConfig(**kwargs), canary_uri=canary_uri)


@pytest.mark.parametrize("uri", ["", "models/c7b", "ftp://x/y", "s3://", "s3://bucket with space/x",
                                 "file:///etc/passwd"])
def test_bad_model_uris_are_refused(uri):
    with pytest.raises(InputError, match="s3://bucket/path or pvc://claim/path"):
        render_inference_service(uri)


@pytest.mark.parametrize(
    "kwargs",
    [{"gpus": 1, "tensor_parallel_size": 2}, {"canary_traffic_percent": 101}, {"name": "Cello_1"},
     {"min_replicas": 3, "max_replicas": 2}, {"dtype": "int4"}],
)
def test_deploy_config_rejects_bad_values(kwargs):
    with pytest.raises(ValidationError):
        DeployConfig(**kwargs)


def test_images_are_overridable_by_env(monkeypatch):
    monkeypatch.setenv("CELLO_IMAGE_REGISTRY", "registry.example.com/ml/")
    assert images.image("serve").startswith("registry.example.com/ml/cello-serve:")
    monkeypatch.setenv("CELLO_IMAGE_SERVE", "example.org/serve@sha256:abc")
    assert images.image("serve") == "example.org/serve@sha256:abc"
    obj = render_inference_service(URI)
    assert obj["spec"]["transformer"]["containers"][0]["image"] == "example.org/serve@sha256:abc"
    monkeypatch.setenv("CELLO_IMAGE_KSERVE_HUGGINGFACESERVER", "example.org/hf:1")
    assert render_serving_runtime()["spec"]["containers"][0]["image"] == "example.org/hf:1"
    with pytest.raises(KeyError, match="known images"):
        images.image("nope")


def test_hub_models_are_served_in_kserves_hf_form():
    obj = render_inference_service("hf://ncbi/Cell-o1@0a1b2c3", canary_uri="hf://ncbi/Cell-o1",
                                   cfg=DeployConfig(canary_traffic_percent=10))
    assert obj["spec"]["predictor"]["model"]["storageUri"] == "hf://ncbi/Cell-o1:0a1b2c3"
    assert obj["spec"]["canary"][0]["predictor"]["model"]["storageUri"] == "hf://ncbi/Cell-o1"
    assert render_inference_service("hf://ncbi/Cell-o1:0a1b2c3")["spec"]["predictor"]["model"]["storageUri"] == (
        "hf://ncbi/Cell-o1:0a1b2c3")  # KServe's own form passes as it is
    with pytest.raises(InputError, match="not a Hub reference"):
        render_inference_service("hf://ncbi")
    if CRDS.is_dir():
        assert schema_errors(obj, CRDS) == []


# ---------------------------------------------------------------- against the CRD schemas
VARIANTS = {
    "default": ({}, None),
    "no-transformer-no-auth": ({"transformer": False, "auth": False}, None),
    "pinned-runtime-tp2": ({"runtime": "cello-vllm", "tensor_parallel_size": 2, "gpus": 2}, None),
    "scheduling": ({"node_selector": {"nvidia.com/gpu.product": "A100"}, "service_account": "s3-reader",
                    "token_secret": "cello-token", "extra_args": ["--enable-prefix-caching"]}, None),
    "standard-canary": ({"canary_traffic_percent": 10}, "pvc://m/candidate"),
    "knative-canary": ({"deployment_mode": "Knative", "canary_traffic_percent": 30}, None),
}


@needs_crds
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_isvc_validates_against_the_crd(variant):
    kwargs, canary_uri = VARIANTS[variant]
    obj = render_inference_service(URI, cfg=DeployConfig(**kwargs), canary_uri=canary_uri)
    assert schema_errors(obj, CRDS) == []


@needs_crds
def test_serving_runtime_validates_against_the_crd():
    obj = render_serving_runtime(cfg=DeployConfig(runtime_name="cello-vllm", namespace="ml"))
    assert schema_errors(obj, CRDS) == []
    assert obj["spec"]["supportedModelFormats"][0]["name"] == "huggingface"


@needs_crds
@pytest.mark.parametrize(
    ("path", "field"),
    [
        (("spec",), "predictr"),
        (("spec", "predictor"), "gpu"),
        (("spec", "predictor", "model"), "storageURI"),
        (("spec", "predictor", "model", "startupProbe"), "timeout"),
        (("spec", "transformer", "containers", 0), "cmd"),
        (("metadata",), "label"),
    ],
)
def test_unknown_fields_are_rejected(path, field):
    obj = render_inference_service(URI)
    node = obj
    for key in path:
        node = node[key]
    node[field] = "x"
    problems = schema_errors(obj, CRDS)
    assert any(repr(field) in p and "not allowed" in p for p in problems), problems
    if path != ("metadata",):  # the upstream schema alone lets it through: strictness is ours
        assert schema_errors(obj, CRDS, strict_fields=False) == []


@needs_crds
@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (lambda o: o["spec"]["predictor"].update(minReplicas="one"), "minReplicas"),
        (lambda o: o["spec"]["predictor"]["model"]["resources"]["limits"].update({"nvidia.com/gpu": "two"}),
         "nvidia.com/gpu"),
        (lambda o: o["spec"]["predictor"]["model"]["modelFormat"].pop("name"), "'name' is a required property"),
        (lambda o: o["metadata"].update(name="Bad_Name"), "metadata.name"),
        (lambda o: o["metadata"]["labels"].update(team="not a label value"), "metadata.labels.team"),
        (lambda o: o["spec"].pop("predictor"), "'predictor' is a required property"),
    ],
)
def test_wrong_values_are_rejected(mutate, needle):
    obj = copy.deepcopy(render_inference_service(URI))
    mutate(obj)
    with pytest.raises(ManifestError, match="does not match its CRD schema") as info:
        validate(obj, CRDS)
    assert needle in str(info.value)


@needs_crds
def test_unknown_kind_is_a_clear_error():
    with pytest.raises(InputError, match="no CRD for Widget"):
        schema_errors({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}}, CRDS)


def test_strict_leaves_maps_and_preserved_objects_open():
    schema = {
        "type": "object",
        "properties": {
            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            "raw": {"type": "object", "x-kubernetes-preserve-unknown-fields": True, "properties": {"a": {}}},
            "items": {"type": "array", "items": {"type": "object", "properties": {"b": {}}}},
        },
    }
    out = strict(schema)
    assert out["additionalProperties"] is False
    assert out["properties"]["labels"]["additionalProperties"] == {"type": "string"}
    assert "additionalProperties" not in out["properties"]["raw"]
    assert out["properties"]["items"]["items"]["additionalProperties"] is False
    assert "additionalProperties" not in schema  # the input is not modified


# ---------------------------------------------------------------- CLI
@needs_crds
def test_cli_renders_and_validates(tmp_path):
    out = tmp_path / "isvc.yaml"
    code = main(["k8s", "render", "isvc", URI, "-o", str(out), "--validate", str(CRDS), "--gpus", "2",
                 "--tensor-parallel-size", "2", "--node-selector", "pool=gpu", "--params", defaults_params(tmp_path)])
    assert code == 0
    obj = yaml.safe_load(out.read_text())
    assert obj["spec"]["predictor"]["nodeSelector"] == {"pool": "gpu"}
    assert "--tensor-parallel-size=2" in _args(obj)
    out = tmp_path / "runtime.yaml"
    assert main(["k8s", "render", "runtime", "-o", str(out), "--validate", str(CRDS)]) == 0
    assert yaml.safe_load(out.read_text())["kind"] == "ServingRuntime"


def test_cli_errors_exit_2_and_write_nothing(tmp_path):
    out = tmp_path / "isvc.yaml"
    assert main(["k8s", "render", "isvc", "models/c7b", "-o", str(out)]) == 2
    assert main(["k8s", "render", "isvc", URI, "--node-selector", "novalue", "-o", str(out)]) == 2
    assert not out.exists()


def test_write_to_stdout_returns_yaml():
    text = write_inference_service(URI)
    assert yaml.safe_load(text)["kind"] == "InferenceService"


@pytest.mark.parametrize("argv", [["k8s", "--help"], ["k8s", "render", "isvc", "--help"],
                                  ["k8s", "render", "runtime", "--help"]])
def test_help(argv, capsys):
    assert main(argv) == 0
    assert "Usage" in capsys.readouterr().out

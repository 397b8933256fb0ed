"""`cello k8s ...`: render the Kubernetes objects Cello runs as (no cluster needed).

    cello k8s render isvc s3://models/cello-7b -o isvc.yaml
    cello k8s render isvc pvc://models/incumbent --canary-uri pvc://models/candidate --canary-percent 10
    cello k8s render isvc s3://models/cello-7b --validate ../shared/schemas/crds   # check against the CRDs
    cello k8s render runtime -o runtime.yaml
"""

from __future__ import annotations

from pathlib import Path

import typer

from cello.commands._common import PARAMS, PROFILE
from cello.config import load_params, override

app = typer.Typer(help="Render Kubernetes objects (KServe InferenceService, ServingRuntime).", no_args_is_help=True)
render = typer.Typer(help="Render one object as YAML (stdout, or --out).", no_args_is_help=True)
app.add_typer(render, name="render")

OUT = typer.Option(None, "--out", "-o", help="Output YAML file [stdout].")
VALIDATE = typer.Option(None, "--validate", help="Folder of CRD YAML files to validate against before writing.")


def _pairs(values: list[str] | None, flag: str) -> dict[str, str] | None:
    from cello.errors import ConfigError

    if not values:
        return None
    out = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            msg = f"{flag} takes KEY=VALUE, got {item!r}."
            raise ConfigError(msg)
        out[key] = value
    return out


@render.command("isvc")
def isvc(
    model_uri: str = typer.Argument(..., help="Checkpoint URI: s3://bucket/path or pvc://claim/path."),
    out: Path | None = OUT,
    name: str | None = typer.Option(None, help="InferenceService name [cello]."),
    namespace: str | None = typer.Option(None, help="Namespace [cello]."),
    mode: str | None = typer.Option(None, "--mode", help="Deployment mode: Standard | Knative [Standard]."),
    runtime: str | None = typer.Option(None, help="ServingRuntime to pin (e.g. cello-vllm) [auto-select]."),
    served_model_name: str | None = typer.Option(None, help="Model name the predictor serves [cello]."),
    dtype: str | None = typer.Option(None, help="auto | float16 | bfloat16 | float32 [bfloat16]."),
    max_model_len: int | None = typer.Option(None, help="vLLM --max-model-len [8192]."),
    tensor_parallel_size: int | None = typer.Option(None, help="vLLM --tensor-parallel-size [1]."),
    gpus: int | None = typer.Option(None, help="GPUs per predictor replica [1]."),
    node_selector: list[str] | None = typer.Option(None, "--node-selector", help="KEY=VALUE, repeatable."),
    canary_uri: str | None = typer.Option(None, help="New model for a Standard-mode canary (model_uri stays stable)."),
    canary_percent: int | None = typer.Option(None, help="Traffic share of the new model, 0-100."),
    transformer: bool | None = typer.Option(None, "--transformer/--no-transformer", help="Put `cello serve` in front [yes]."),
    auth: bool | None = typer.Option(None, "--auth/--no-auth", help="Add the auth annotation [yes]."),
    validate: Path | None = VALIDATE,
    params: Path = PARAMS,
    profile: str | None = PROFILE,
) -> None:
    """Render the KServe InferenceService: vLLM predictor + `cello serve` transformer."""
    from cello.k8s.inference import write_inference_service

    p = load_params(params, profile=profile)
    cfg = override(
        p.deploy, name=name, namespace=namespace, deployment_mode=mode, runtime=runtime,
        served_model_name=served_model_name, dtype=dtype, max_model_len=max_model_len,
        tensor_parallel_size=tensor_parallel_size, gpus=gpus,
        node_selector=_pairs(node_selector, "--node-selector"), canary_traffic_percent=canary_percent,
        transformer=transformer, auth=auth,
    )
    text = write_inference_service(model_uri, out, cfg=cfg, canary_uri=canary_uri, crd_dir=validate)
    _report(text, out, "InferenceService", cfg.name, validate)


@render.command("runtime")
def runtime(
    out: Path | None = OUT,
    name: str | None = typer.Option(None, help="ServingRuntime name [cello-vllm]."),
    namespace: str | None = typer.Option(None, help="Namespace [cello]."),
    validate: Path | None = VALIDATE,
    params: Path = PARAMS,
    profile: str | None = PROFILE,
) -> None:
    """Render a ServingRuntime that pins the vLLM-capable KServe huggingfaceserver image."""
    from cello.k8s.inference import write_serving_runtime

    p = load_params(params, profile=profile)
    cfg = override(p.deploy, runtime_name=name, namespace=namespace)
    text = write_serving_runtime(out, cfg=cfg, crd_dir=validate)
    _report(text, out, "ServingRuntime", cfg.runtime_name, validate)


def _report(text: str, out: Path | None, kind: str, name: str, validate: Path | None) -> None:
    if out is None or str(out) == "-":
        typer.echo(text, nl=False)
        return
    checked = " (validated against the CRD schema)" if validate else ""
    typer.echo(f"{kind} {name} -> {out}{checked}")

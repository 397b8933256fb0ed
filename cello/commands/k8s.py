"""`cello k8s ...`: render the Kubernetes objects Cello runs as, for review (no cluster needed).

    cello k8s render isvc s3://models/cello-7b -o isvc.yaml
    cello k8s render isvc pvc://models/incumbent --canary-uri pvc://models/candidate --canary-percent 10
    cello k8s render isvc s3://models/cello-7b --validate path/to/crds   # check against the CRDs
    cello k8s render runtime -o runtime.yaml
    cello k8s render trainjob --run-id r1 --nodes 2 -- train sft /mnt/cello/data/records/sft -o /mnt/cello/runs/r1/sft
    cello k8s render pytorchjob --run-id r1 --stage merge -- \\
        train merge /mnt/cello/runs/r1/sft -o /mnt/cello/runs/r1/merged
    cello k8s render grpo --run-id r1 --model /mnt/cello/runs/r1/merged -- \\
        train grpo /mnt/cello/data/records/grpo -o /mnt/cello/runs/r1/grpo
"""

from __future__ import annotations

from pathlib import Path

import typer

from cello.commands._common import PARAMS, PROFILE, option
from cello.config import ClusterConfig, DeployConfig, load_params, override

app = typer.Typer(
    help="Render Kubernetes objects (InferenceService, ServingRuntime, TrainJob, PyTorchJob, GRPO).",
    no_args_is_help=True,
)
render = typer.Typer(help="Render one object as YAML (stdout, or --out).", no_args_is_help=True)
app.add_typer(render, name="render")

OUT = typer.Option(None, "--out", "-o", help="Output YAML file (default: stdout).")
VALIDATE = typer.Option(
    None, "--validate",
    help="Folder of CRD YAML files to validate against before writing (core kinds: the Kubernetes schema, strict).",
)
COMMAND = typer.Argument(..., help="The `cello` sub-command the job runs, after --, e.g. -- train sft DATA -o OUT.")
RUN_ID = typer.Option(..., "--run-id", help="Run id (names and labels every object; a KFP run id).")
NODES = option(ClusterConfig, "num_nodes", "--nodes")
GPUS = option(ClusterConfig, "gpus_per_node", "--gpus")
IMAGE = typer.Option(None, "--image", help="Container image (default: the cello-train image).")
ENV = typer.Option(None, "--env", help="KEY=VALUE for the trainer's environment, repeatable.")


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
    name: str | None = option(DeployConfig, "name"),
    namespace: str | None = option(DeployConfig, "namespace"),
    mode: str | None = option(DeployConfig, "deployment_mode", "--mode"),
    runtime: str | None = option(DeployConfig, "runtime"),
    served_model_name: str | None = option(DeployConfig, "served_model_name"),
    dtype: str | None = option(DeployConfig, "dtype"),
    max_model_len: int | None = option(DeployConfig, "max_model_len"),
    tensor_parallel_size: int | None = option(DeployConfig, "tensor_parallel_size"),
    gpus: int | None = option(DeployConfig, "gpus"),
    node_selector: list[str] | None = option(
        DeployConfig, "node_selector", "--node-selector", note="KEY=VALUE, repeatable."
    ),
    canary_uri: str | None = typer.Option(None, help="New model for a Standard-mode canary (model_uri stays stable)."),
    canary_percent: int | None = option(DeployConfig, "canary_traffic_percent", "--canary-percent"),
    transformer: bool | None = option(DeployConfig, "transformer", "--transformer/--no-transformer"),
    auth: bool | None = option(DeployConfig, "auth", "--auth/--no-auth"),
    validate: Path | None = VALIDATE,
    params: Path | None = PARAMS,
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
    name: str | None = option(DeployConfig, "runtime_name", "--name"),
    namespace: str | None = option(DeployConfig, "namespace"),
    validate: Path | None = VALIDATE,
    params: Path | None = PARAMS,
    profile: str | None = PROFILE,
) -> None:
    """Render a ServingRuntime that pins the vLLM-capable KServe huggingfaceserver image."""
    from cello.k8s.inference import write_serving_runtime

    p = load_params(params, profile=profile)
    cfg = override(p.deploy, runtime_name=name, namespace=namespace)
    text = write_serving_runtime(out, cfg=cfg, crd_dir=validate)
    _report(text, out, "ServingRuntime", cfg.runtime_name, validate)


def _training_command(api: str, doc: str):
    """`cello k8s render trainjob|pytorchjob`: the same options, for one training API."""

    def command(
        command: list[str] = COMMAND,
        run_id: str = RUN_ID,
        stage: str = typer.Option("sft", "--stage", help="sft | merge | distill | grpo."),
        nodes: int | None = NODES,
        gpus: int | None = GPUS,
        image: str | None = IMAGE,
        env: list[str] | None = ENV,
        out: Path | None = OUT,
        validate: Path | None = VALIDATE,
        params: Path | None = PARAMS,
        profile: str | None = PROFILE,
    ) -> None:
        from cello.k8s.jobspec import training_spec
        from cello.k8s.launch import render_job
        from cello.k8s.manifests import emit

        cfg = override(load_params(params, profile=profile).cluster, training_api=api, num_nodes=nodes,
                       gpus_per_node=gpus)
        spec = training_spec(command, stage=stage, run_id=run_id, cfg=cfg, image=image, env=_pairs(env, "--env"))
        obj = render_job(spec, cfg)
        _report(emit([obj], out, validate), out, obj["kind"], obj["metadata"]["name"], validate)

    command.__doc__ = doc
    return command


render.command("trainjob")(_training_command(
    "trainjob", "Render a stage as a Kubeflow Trainer TrainJob (torchrun on the cello-torch runtime)."
))
render.command("pytorchjob")(_training_command(
    "pytorchjob", "Render a stage as a Training Operator v1 PyTorchJob (kubeflow.org/v1)."
))


@render.command("grpo")
def grpo(
    command: list[str] = COMMAND,
    run_id: str = RUN_ID,
    model: str = typer.Option(..., "--model", help="Starting policy on the shared volume (what vLLM serves)."),
    nodes: int | None = NODES,
    gpus: int | None = GPUS,
    api: str | None = option(ClusterConfig, "training_api", "--api", note="The trainer of multi-node GRPO."),
    image: str | None = IMAGE,
    env: list[str] | None = ENV,
    out: Path | None = OUT,
    validate: Path | None = VALIDATE,
    params: Path | None = PARAMS,
    profile: str | None = PROFILE,
) -> None:
    """Render GRPO: one pod with a vLLM sidecar (1 node), or server + Service + NetworkPolicies + trainer job."""
    from cello.k8s.grpo import render_grpo
    from cello.k8s.manifests import emit

    cfg = override(load_params(params, profile=profile).cluster, training_api=api, num_nodes=nodes, gpus_per_node=gpus)
    objs = render_grpo(command, model=model, run_id=run_id, cfg=cfg, image=image, env=_pairs(env, "--env"))
    text = emit(objs, out, validate)
    _report(text, out, " + ".join(o["kind"] for o in objs), objs[-1]["metadata"]["name"], validate)


def _report(text: str, out: Path | None, kind: str, name: str, validate: Path | None) -> None:
    if out is None or str(out) == "-":
        typer.echo(text, nl=False)
        return
    checked = " (validated)" if validate else ""
    typer.echo(f"{kind} {name} -> {out}{checked}")

"""`cello pipeline ...`: the Kubeflow pipeline: compile it, run it here, submit it to a cluster.

    cello pipeline compile -o pipelines/cello.yaml
    cello pipeline run --local --profile local                       # what `make demo` runs
    cello pipeline run --local --profile local --set gate.min_accuracy=0 --set gate.baseline_margin=-1
    cello pipeline submit --host https://kfp.example.com --param num_nodes=2 --set train.sft.epochs=2

`--set KEY=VALUE` changes a params.yaml setting for this run (dotted key); `--param KEY=VALUE`
sets a pipeline parameter (see `cello pipeline params`). Values are read as YAML (2, 0.5, true).
"""

from __future__ import annotations

from pathlib import Path

import typer

from cello.commands._common import PARAMS, PROFILE, option
from cello.config import ClusterConfig

app = typer.Typer(help="The Kubeflow pipeline: compile, run locally, submit to a cluster.", no_args_is_help=True)

_SET = typer.Option(None, "--set", help="params.yaml setting for this run, KEY=VALUE with a dotted key (repeatable).")
_PARAM = typer.Option(
    None, "--param", help="Pipeline parameter, KEY=VALUE (repeatable; list them: cello pipeline params).",
)


def _pairs(items: list[str] | None, flag: str) -> dict:
    import yaml

    from cello.errors import ConfigError

    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            msg = f"{flag} takes KEY=VALUE, got {item!r}."
            raise ConfigError(msg)
        try:
            out[key.strip()] = yaml.safe_load(value) if value.strip() else ""
        except yaml.YAMLError:
            out[key.strip()] = value
    return out


def _known(params: Path | None, values: dict, *, drop: tuple[str, ...] = ()) -> dict:
    """`values` if every key is a parameter of the pipeline, else an error listing them."""
    from cello.errors import ConfigError
    from cello.pipeline.compiler import pipeline_function

    known = set(pipeline_function(params).component_spec.inputs or {}) - set(drop)
    unknown = sorted(set(values) - known)
    if unknown:
        msg = f"unknown pipeline parameter(s) {unknown}; known: {', '.join(sorted(known))}."
        raise ConfigError(msg)
    return values


@app.command("compile")
def compile_(
    out: Path = typer.Option(Path("pipelines/cello.yaml"), "--out", "-o", help="IR YAML to write."),
    registry: str | None = typer.Option(
        None, "--registry", help="Registry of the Cello images (default: cello.k8s.images).",
    ),
    tag: str | None = typer.Option(None, "--tag", help="Tag of the Cello images (default: the package version)."),
    params: Path | None = PARAMS,
) -> None:
    """Compile the pipeline to the IR YAML a Kubeflow Pipelines 2.x cluster runs."""
    from cello.pipeline.compiler import compile_pipeline, use_images

    if registry or tag:
        use_images(registry=registry, tag=tag)
    path = compile_pipeline(out, params_path=params)
    typer.echo(f"pipeline -> {path}")


@app.command("params")
def params_(params: Path | None = PARAMS) -> None:
    """List the pipeline's parameters with their types and defaults."""
    from cello.pipeline.compiler import pipeline_function

    for name, spec in sorted((pipeline_function(params).component_spec.inputs or {}).items()):
        typer.echo(f"  {name:<16} {spec.type:<8} default {spec.default!r}")


@app.command("run")
def run(
    local: bool = typer.Option(
        False, "--local", help="Run with KFP's local runner on this machine (the only mode here).",
    ),
    profile: str | None = PROFILE,
    set_: list[str] | None = _SET,
    param: list[str] | None = _PARAM,
    run_id: str | None = typer.Option(
        None, "--run-id", help="Run id, the folder under --workdir (default: a timestamp).",
    ),
    workdir: Path = typer.Option(Path("runs"), "--workdir", help="Where data/, dvc-cache/ and run folders go."),
    repo: Path = typer.Option(Path("."), "--repo", help="The Cello project whose params.yaml/dvc.yaml the run uses."),
    revision: str = typer.Option(
        "", "--revision", help="Pin data and settings to this commit ('': the working tree as it is).",
    ),
) -> None:
    """Run the whole pipeline (data -> SFT -> merge -> GRPO -> eval -> gate -> deploy) locally.

    The run's settings are REPO's params.yaml (at --revision), with --profile and --set applied."""
    from cello.errors import ConfigError
    from cello.pipeline.local import render, run_local

    if not local:
        msg = "`cello pipeline run` runs here and needs --local; on a cluster use `cello pipeline submit --host URL`."
        raise ConfigError(msg)
    fixed = ("repo", "revision", "profile", "overrides", "workdir", "run_id")
    params = repo / "params.yaml"
    arguments = _known(params if params.is_file() else None, _pairs(param, "--param"), drop=fixed)
    result = run_local(repo=str(repo.resolve()), revision=revision, profile=profile or "",
                       overrides=_pairs(set_, "--set"), workdir=str(workdir), run_id=run_id or "",
                       arguments=arguments)
    typer.echo(render(result))


@app.command("submit")
def submit(
    host: str = typer.Option(..., "--host", help="Kubeflow Pipelines URL, e.g. https://kfp.example.com."),
    experiment: str = typer.Option("cello", "--experiment", help="KFP experiment to file the run under."),
    set_: list[str] | None = _SET,
    param: list[str] | None = _PARAM,
    package: Path = typer.Option(
        Path("pipelines/cello.yaml"), "--package", help="Compiled pipeline (cello pipeline compile).",
    ),
    run_name: str | None = typer.Option(None, "--run-name", help="Name of the run in the UI."),
    namespace: str | None = typer.Option(None, "--namespace", help="KFP profile namespace (multi-user installs)."),
    service_account: str | None = option(ClusterConfig, "service_account", "--service-account"),
    params: Path | None = PARAMS,
) -> None:
    """Submit a run to a Kubeflow Pipelines cluster; print its URL."""
    from cello.config import load_params
    from cello.pipeline.submit import source_defaults
    from cello.pipeline.submit import submit as send

    p = load_params(params)
    arguments = {**source_defaults(), **_pairs(param, "--param")}
    overrides = _pairs(set_, "--set")
    if overrides:
        arguments["overrides"] = {**arguments.get("overrides", {}), **overrides}
    done = send(host=host, package=package, arguments=arguments, experiment=experiment, run_name=run_name,
                service_account=service_account or p.cluster.service_account, namespace=namespace)
    typer.echo(f"submitted run {done.run_id} to {host} (experiment {done.experiment}):\n  {done.url}")

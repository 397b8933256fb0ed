"""The compiled pipeline: every stage, the control flow, the cluster settings, and the committed
YAML kept current. Also: components stay thin wrappers around cello.pipeline."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from cello.config import load_params
from cello.k8s import images
from cello.pipeline.compiler import compile_pipeline, dag_edges, load_ir

REPO = Path(__file__).resolve().parents[2]
COMMITTED = REPO / "pipelines" / "cello.yaml"
STAGES = {"prepare", "list-inputs", "cells-part", "build-data", "distill", "sft-records", "base-model", "sft", "merge",
          "grpo", "evaluate-model", "evaluate-baseline", "find-incumbent", "no-incumbent", "gate", "deploy", "cleanup"}
TRAINING = ("sft", "merge", "grpo")


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    out = compile_pipeline(tmp_path_factory.mktemp("ir") / "cello.yaml", params_path=REPO / "params.yaml")
    return out


@pytest.fixture(scope="module")
def ir(compiled):
    return load_ir(compiled)


def _tasks(spec):
    """Every task in every (sub-)DAG: name -> task spec."""
    out = {}
    for comp in [spec["root"], *spec["components"].values()]:
        out.update(comp.get("dag", {}).get("tasks", {}))
    return out


def _executor(spec, task_name):
    tasks = _tasks(spec)
    comp = spec["components"][tasks[task_name]["componentRef"]["name"]]
    return comp["executorLabel"]


def test_committed_yaml_equals_a_fresh_compile(compiled):
    assert COMMITTED.read_text() == compiled.read_text(), "pipelines/cello.yaml is stale: run `make pipeline`"


def test_every_stage_is_a_task(ir):
    spec, _ = ir
    nodes, edges, _ = dag_edges(spec)
    assert STAGES <= set(nodes)
    for a, b in [("prepare", "list-inputs"), ("cells-part", "build-data"), ("sft", "merge"), ("merge", "grpo"),
                 ("grpo", "evaluate-model"), ("gate", "deploy")]:
        assert (a, b) in edges


def test_control_flow_fan_out_conditions_and_exit_handler(ir):
    spec, _ = ir
    params = load_params(REPO / "params.yaml")
    tasks = _tasks(spec)
    loops = [t for t in tasks.values() if "parameterIterator" in t]
    assert len(loops) == 1 and loops[0]["iteratorPolicy"]["parallelismLimit"] == params.pipeline.fan_out
    conditions = [t["triggerPolicy"]["condition"] for t in tasks.values() if "condition" in t.get("triggerPolicy", {})]
    assert "inputs.parameter_values['pipelinechannel--gate-Output'] == true" in conditions
    assert any("distill_traces" in c for c in conditions) and any("find-incumbent-Output" in c for c in conditions)
    root = spec["root"]["dag"]["tasks"]
    assert root["cleanup"]["triggerPolicy"]["strategy"] == "ALL_UPSTREAM_TASKS_COMPLETED"
    assert root["cleanup"]["dependentTasks"] == ["exit-handler-1"]
    cleanup_inputs = spec["components"]["comp-cleanup"]["inputDefinitions"]["parameters"]
    assert cleanup_inputs["status"]["parameterType"] == "TASK_FINAL_STATUS"


def test_cluster_settings_on_every_task_and_gpus_on_training(ir):
    spec, platform = ir
    cluster = load_params(REPO / "params.yaml").cluster
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert set(executors) == set(spec["deploymentSpec"]["executors"])
    for name, ex in executors.items():
        mount = ex["pvcMount"][0]
        assert mount["constant"] == cluster.pvc and mount["mountPath"] == cluster.mount_path, name
        assert {s["secretName"] for s in ex["secretAsEnv"]} == set(cluster.secrets), name
        assert all(s["optional"] for s in ex["secretAsEnv"])
    for stage in (*TRAINING, "evaluate-model"):
        label = _executor(spec, stage)
        resources = spec["deploymentSpec"]["executors"][label]["container"]["resources"]
        assert resources["accelerator"]["resourceType"] == cluster.gpu_resource
        assert "resourceCount" in resources["accelerator"]  # a pipeline parameter (step_gpus / eval_gpus)
        ex = executors[label]
        assert ex["activeDeadlineSeconds"] == str(load_params(REPO / "params.yaml").pipeline.step_timeout_s)
        assert {t["key"] for t in ex["tolerations"]} == {t["key"] for t in cluster.tolerations}
        assert ex["emptyDirMounts"][0]["mountPath"] == "/dev/shm" and ex["emptyDirMounts"][0]["medium"] == "Memory"


def test_caching_only_on_data_steps(ir):
    spec, _ = ir
    cached = {name for name, t in _tasks(spec).items() if t.get("cachingOptions", {}).get("enableCache")}
    assert cached == {"cells-part", "build-data"}


def test_every_image_is_a_cello_image_with_a_dockerfile(ir):
    spec, _ = ir
    used = {ex["container"]["image"] for ex in spec["deploymentSpec"]["executors"].values()}
    cello_images = {images.image(k) for k in ("cello", "train")}
    assert used == cello_images
    for ref in used:
        name = ref.rsplit("/", 1)[-1].split(":")[0]
        assert (REPO / "images" / name / "Dockerfile").is_file(), f"{ref} has no images/{name}/Dockerfile"
    for ex in spec["deploymentSpec"]["executors"].values():
        assert "pip install" not in " ".join(ex["container"]["command"])  # install_kfp_package=False


def test_registry_and_tag_are_chosen_at_compile_time(tmp_path):
    import subprocess
    import sys

    out = tmp_path / "x.yaml"
    proc = subprocess.run([sys.executable, "-m", "cello.cli", "pipeline", "compile", "-o", str(out), "--registry",
                           "registry.example.com/ml", "--tag", "9.9.9", "--params", str(REPO / "params.yaml")],
                          cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    spec, _ = load_ir(out)
    used = {ex["container"]["image"] for ex in spec["deploymentSpec"]["executors"].values()}
    assert used == {"registry.example.com/ml/cello:9.9.9", "registry.example.com/ml/cello-train:9.9.9"}


# ---------------------------------------------------------------- components stay thin
ALLOWED_IMPORTS = {"kfp", "kfp.dsl", "typing", "cello.k8s.images"}
COMPONENT_FILES = sorted(p for p in (REPO / "components").glob("*.py") if p.name != "__init__.py")


@pytest.mark.parametrize("path", COMPONENT_FILES, ids=lambda p: p.stem)
def test_component_modules_import_only_kfp_and_call_cello_pipeline(path):
    tree = ast.parse(path.read_text())
    for node in tree.body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            mod = node.module if isinstance(node, ast.ImportFrom) else node.names[0].name
            assert mod in ALLOWED_IMPORTS, f"{path.name}: module-level import of {mod}"
    functions = [n for n in tree.body if isinstance(n, ast.FunctionDef)]
    assert functions
    for fn in functions:
        deco = fn.decorator_list[0]
        assert isinstance(deco, ast.Call) and ast.unparse(deco.func) == "dsl.component", fn.name
        kwargs = {k.arg: ast.unparse(k.value) for k in deco.keywords}
        assert kwargs["install_kfp_package"] == "False" and kwargs["base_image"].startswith("image("), fn.name
        body = [s for s in fn.body if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))]
        imports = [s for s in body if isinstance(s, ast.ImportFrom)]
        assert imports and all(s.module.startswith(("cello.pipeline", "pathlib", "collections"))
                               for s in imports), fn.name
        logic = [s for s in body if not isinstance(s, ast.ImportFrom)]
        assert len(logic) <= 5, f"{fn.name}: {len(logic)} statements; move logic into cello.pipeline"
        assert not any(isinstance(n, ast.For | ast.While | ast.If | ast.Try) for n in ast.walk(fn)), fn.name

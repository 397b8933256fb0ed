"""k8s/: every overlay renders with `kubectl kustomize` and validates (core kinds with
kubernetes-validate --strict, custom resources strictly against the upstream CRDs); the names
equal params.yaml and the config defaults; the generated ServingRuntime is current; the
NetworkPolicies and the Role grant exactly what GRPO and the steps need.

Skips the rendering tests when kubectl is not on PATH, the CRD checks when ../shared/schemas/crds
is absent."""

from __future__ import annotations

import ast
import copy
import functools
import importlib.util
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from cello.config import ClusterConfig, DeployConfig, load_params
from cello.k8s import images
from cello.k8s.manifests import core_errors
from cello.k8s.validate import find_crd, schema_errors

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
BASE = K8S / "base"
CRDS = ROOT / ".." / "shared" / "schemas" / "crds"
OVERLAYS = sorted(p.parent.name for p in (K8S / "overlays").glob("*/kustomization.yaml"))
KUBECTL = shutil.which("kubectl")
CRD_GROUPS = ("trainer.kubeflow.org", "kubeflow.org", "serving.kserve.io")
PART_OF = {"app.kubernetes.io/part-of": "cello"}

needs_kubectl = pytest.mark.skipif(KUBECTL is None, reason="kubectl not on PATH (it renders the kustomizations)")
needs_crds = pytest.mark.skipif(not CRDS.is_dir(), reason=f"CRD schemas not found at {CRDS}")


# ---------------------------------------------------------------- helpers
def _group(obj: dict) -> str:
    api = obj["apiVersion"]
    return api.split("/")[0] if "/" in api else ""


def _is_custom(obj: dict) -> bool:
    return _group(obj) in CRD_GROUPS


@functools.cache
def _rendered(overlay: str) -> tuple[dict, ...]:
    out = subprocess.run(
        [KUBECTL, "kustomize", str(K8S / "overlays" / overlay)],
        check=True, capture_output=True, text=True, timeout=120,
    )
    return tuple(d for d in yaml.safe_load_all(out.stdout) if d)


def rendered(overlay: str) -> list[dict]:
    return copy.deepcopy(list(_rendered(overlay)))


@functools.cache
def _base_objects() -> tuple[dict, ...]:
    kustomization = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    docs = []
    for name in kustomization["resources"]:
        docs += [d for d in yaml.safe_load_all((BASE / name).read_text()) if d]
    return tuple(docs)


def base(kind: str, name: str | None = None) -> dict:
    found = [d for d in _base_objects() if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''} in k8s/base, found {len(found)}"
    return copy.deepcopy(found[0])


def pick(objs: list[dict], kind: str) -> list[dict]:
    return [d for d in objs if d["kind"] == kind]


def pod_spec(runtime: dict) -> dict:
    (job,) = runtime["spec"]["template"]["spec"]["replicatedJobs"]
    return job["template"]["spec"]["template"]["spec"]


def node_container(runtime: dict) -> dict:
    (container,) = [c for c in pod_spec(runtime)["containers"] if c["name"] == "node"]
    return container


def volume(runtime: dict, name: str) -> dict:
    (vol,) = [v for v in pod_spec(runtime)["volumes"] if v["name"] == name]
    return vol


@functools.cache
def _crd_scope(api_version: str, kind: str) -> str:
    """spec.scope of the CRD, read from the file's head (the schema after it is large)."""
    head = find_crd(api_version, kind, CRDS).read_text()[:16384]
    return re.search(r"^  scope:\s*(\w+)\s*$", head, re.M).group(1)


def cluster_scoped(obj: dict) -> bool:
    if _is_custom(obj):
        return _crd_scope(obj["apiVersion"], obj["kind"]) == "Cluster"
    return obj["kind"] in {"Namespace", "ClusterRole", "ClusterRoleBinding"}


def trl_grpo_defaults(*names: str) -> dict:
    """Defaults of GRPOConfig fields, read from the installed TRL's source (importing trl takes
    seconds: it loads torch and transformers)."""
    spec = importlib.util.find_spec("trl")
    if spec is None or spec.origin is None:
        pytest.skip("trl is not installed (the train extra)")
    tree = ast.parse((Path(spec.origin).parent / "trainer" / "grpo_config.py").read_text())
    found = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.target.id in names:
            (default,) = [k.value for k in node.value.keywords if k.arg == "default"]
            found[node.target.id] = ast.literal_eval(default)
    assert set(found) == set(names), f"GRPOConfig in {spec.origin} has no {set(names) - set(found)}"
    return found


def load_script():
    spec = importlib.util.spec_from_file_location("render_manifests", ROOT / "scripts" / "render_manifests.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------- every overlay renders and validates
def test_there_is_a_dev_and_a_prod_overlay():
    assert {"dev", "prod"} <= set(OVERLAYS)


EXPECTED = {
    ("Namespace", "cello"), ("ServiceAccount", "cello-pipeline"), ("Role", "cello-pipeline"),
    ("RoleBinding", "cello-pipeline"), ("ClusterRole", "cello-pipeline-runtime"),
    ("ClusterRoleBinding", "cello-pipeline-runtime"), ("PersistentVolumeClaim", "cello-workspace"),
    ("ClusterTrainingRuntime", "cello-torch"), ("ServingRuntime", "cello-vllm"),
    ("NetworkPolicy", "cello-grpo-default-deny"),
}


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_the_whole_install(overlay):
    objs = rendered(overlay)
    assert {(d["kind"], d["metadata"]["name"]) for d in objs} == EXPECTED
    for obj in objs:
        assert obj["metadata"]["labels"].items() >= PART_OF.items(), obj["metadata"]["name"]


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_core_kinds_validate_strictly(overlay):
    pytest.importorskip("kubernetes_validate")
    core = [d for d in rendered(overlay) if not _is_custom(d)]
    assert len(core) == 8
    problems = {f"{d['kind']}/{d['metadata']['name']}": core_errors(d) for d in core}
    assert all(not p for p in problems.values()), problems


@needs_kubectl
@needs_crds
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_custom_resources_validate_against_the_crds(overlay):
    custom = [d for d in rendered(overlay) if _is_custom(d)]
    assert sorted(d["kind"] for d in custom) == ["ClusterTrainingRuntime", "ServingRuntime"]
    problems = {f"{d['kind']}/{d['metadata']['name']}": schema_errors(d, CRDS) for d in custom}
    assert all(not p for p in problems.values()), problems


@needs_kubectl
@needs_crds
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_namespaced_objects_are_in_the_cello_namespace_and_cluster_ones_in_none(overlay):
    namespace = ClusterConfig().namespace
    for obj in rendered(overlay):
        where = obj["metadata"].get("namespace")
        assert where == (None if cluster_scoped(obj) else namespace), (obj["kind"], where)


@needs_kubectl
@needs_crds
def test_validation_is_strict_so_a_typo_fails():
    pytest.importorskip("kubernetes_validate")
    objs = rendered("dev")
    (pvc,) = pick(objs, "PersistentVolumeClaim")
    pvc["spec"]["accessMode"] = ["ReadWriteMany"]  # accessModes misspelt
    assert "accessMode" in core_errors(pvc)[0]
    (policy,) = pick(objs, "NetworkPolicy")
    policy["spec"]["ingres"] = []  # ingress misspelt
    assert core_errors(policy)
    (runtime,) = pick(objs, "ClusterTrainingRuntime")
    node_container(runtime)["resource"] = {}  # resources misspelt
    assert any("'resource'" in p and "not allowed" in p for p in schema_errors(runtime, CRDS))


# ---------------------------------------------------------------- what the overlays change
@needs_kubectl
def test_dev_is_one_gpu_node_with_a_small_claim():
    objs = rendered("dev")
    (runtime,) = pick(objs, "ClusterTrainingRuntime")
    (pvc,) = pick(objs, "PersistentVolumeClaim")
    limits = node_container(runtime)["resources"]["limits"]
    assert limits[ClusterConfig().gpu_resource] == "1"
    assert runtime["spec"]["mlPolicy"]["numNodes"] == 1
    assert volume(runtime, "dshm")["emptyDir"]["sizeLimit"] == "16Gi"
    assert pvc["spec"]["storageClassName"]
    assert pvc["spec"]["resources"]["requests"]["storage"] == "100Gi"


@needs_kubectl
def test_prod_is_multi_node_on_gpu_nodes_with_a_large_claim():
    objs = rendered("prod")
    (runtime,) = pick(objs, "ClusterTrainingRuntime")
    (serving,) = pick(objs, "ServingRuntime")
    (pvc,) = pick(objs, "PersistentVolumeClaim")
    assert runtime["spec"]["mlPolicy"]["numNodes"] >= 2
    assert node_container(runtime)["resources"]["limits"][ClusterConfig().gpu_resource] == "8"
    gpu_nodes = {"nvidia.com/gpu.present": "true"}
    assert pod_spec(runtime)["nodeSelector"] == gpu_nodes
    assert serving["spec"]["nodeSelector"] == gpu_nodes
    assert serving["spec"]["tolerations"] == ClusterConfig().tolerations
    assert pod_spec(runtime)["tolerations"] == ClusterConfig().tolerations
    assert pvc["spec"]["storageClassName"]
    assert pvc["spec"]["resources"]["requests"]["storage"] == "2Ti"


@needs_kubectl
@pytest.mark.parametrize("kind", ["Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding", "NetworkPolicy"])
def test_overlays_leave_permissions_and_network_policy_alone(kind):
    for overlay in OVERLAYS:
        got = sorted((d for d in pick(rendered(overlay), kind)), key=lambda d: d["metadata"]["name"])
        want = sorted((d for d in _base_objects() if d["kind"] == kind), key=lambda d: d["metadata"]["name"])
        for d in got:
            d["metadata"]["labels"] = {k: v for k, v in d["metadata"]["labels"].items() if k not in PART_OF}
            if not d["metadata"]["labels"]:
                del d["metadata"]["labels"]
        assert got == want, overlay


# ---------------------------------------------------------------- names equal the config
def test_config_names_in_params_yaml_are_the_defaults():
    params = load_params(ROOT / "params.yaml")
    fields = ["namespace", "service_account", "pvc", "mount_path", "training_runtime", "gpu_resource",
              "gpus_per_node", "cpu_per_node", "memory_per_node", "shm_size", "tolerations"]
    assert {f: getattr(params.cluster, f) for f in fields} == {f: getattr(ClusterConfig(), f) for f in fields}
    for field in ("namespace", "runtime_name"):
        assert getattr(params.deploy, field) == getattr(DeployConfig(), field)


def test_manifest_names_equal_the_cluster_config():
    cfg = ClusterConfig()
    assert base("Namespace")["metadata"]["name"] == cfg.namespace
    sa = base("ServiceAccount")
    assert (sa["metadata"]["name"], sa["metadata"]["namespace"]) == (cfg.service_account, cfg.namespace)
    for kind in ("RoleBinding", "ClusterRoleBinding"):
        assert base(kind)["subjects"] == [{"kind": "ServiceAccount", "name": cfg.service_account,
                                           "namespace": cfg.namespace}]
    pvc = base("PersistentVolumeClaim")
    assert pvc["metadata"]["name"] == cfg.pvc
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    assert "storageClassName" not in pvc["spec"]  # the overlays choose it


def test_training_runtime_matches_the_cluster_config(monkeypatch):
    for var in [v for v in os.environ if v.startswith("CELLO_IMAGE_")]:  # overrides of image(), registry, tag
        monkeypatch.delenv(var)
    cfg = ClusterConfig()
    runtime = base("ClusterTrainingRuntime")
    assert runtime["metadata"]["name"] == cfg.training_runtime
    assert "torch" in runtime["spec"]["mlPolicy"]  # PET_* rendezvous env for torchrun
    spec = pod_spec(runtime)
    node = node_container(runtime)
    assert node["image"] == images.image("train")
    assert "args" not in node  # a TrainJob's command must not get the runtime's args appended
    assert {m["mountPath"]: m["name"] for m in node["volumeMounts"]} == {cfg.mount_path: "workspace",
                                                                         "/dev/shm": "dshm"}
    assert volume(runtime, "workspace")["persistentVolumeClaim"] == {"claimName": cfg.pvc}
    assert volume(runtime, "dshm")["emptyDir"] == {"medium": "Memory", "sizeLimit": cfg.shm_size}
    want = {"cpu": cfg.cpu_per_node, "memory": cfg.memory_per_node, cfg.gpu_resource: str(cfg.gpus_per_node)}
    assert node["resources"] == {"requests": want, "limits": want}
    assert spec["tolerations"] == cfg.tolerations
    assert spec["restartPolicy"] == "Never"
    assert spec["automountServiceAccountToken"] is False


def test_the_kubeflow_sdk_reads_the_runtime_as_a_torch_custom_trainer():
    pytest.importorskip("kubeflow.trainer")
    from kubeflow.trainer.backends.kubernetes import utils
    from kubeflow.trainer.types import types
    from kubeflow_trainer_api import models

    cr = models.TrainerV1alpha1ClusterTrainingRuntime.from_dict(base("ClusterTrainingRuntime"))
    trainer = utils.get_runtime_trainer(
        cr.metadata.labels["trainer.kubeflow.org/framework"], cr.spec.template.spec.replicated_jobs, cr.spec.ml_policy
    )
    assert trainer.trainer_type == types.TrainerType.CUSTOM_TRAINER  # CustomTrainerContainer is accepted
    assert trainer.framework == "torch"
    assert (trainer.device, trainer.device_count) == ("gpu", str(ClusterConfig().gpus_per_node))
    assert "torchrun" in trainer.command[-1]  # the SDK's entrypoint for a torch runtime


def test_serving_runtime_names_equal_the_deploy_config():
    runtime = base("ServingRuntime")
    assert runtime["metadata"]["name"] == DeployConfig().runtime_name
    assert runtime["metadata"]["namespace"] == DeployConfig().namespace == ClusterConfig().namespace


def test_committed_serving_runtime_equals_a_fresh_render(monkeypatch):
    monkeypatch.setenv("CELLO_IMAGE_KSERVE_HUGGINGFACESERVER", "example.org/not-this:1")  # ignored on purpose
    script = load_script()
    files = script.render()
    assert set(files) == {BASE / "servingruntime.yaml"}
    assert (BASE / "servingruntime.yaml").read_text() == files[BASE / "servingruntime.yaml"], "run `make manifests`"
    assert script.main(["--check"]) == 0


def test_stale_serving_runtime_is_reported(tmp_path, monkeypatch, capsys):
    script = load_script()
    (tmp_path / "k8s" / "base").mkdir(parents=True)
    (tmp_path / "params.yaml").write_text("deploy:\n  runtime_name: other-vllm\n")
    monkeypatch.setattr(script, "ROOT", tmp_path)
    monkeypatch.setattr(script, "render", functools.partial(script.render, tmp_path))
    assert script.main(["--check"]) == 1
    assert "make manifests" in capsys.readouterr().err
    assert script.main([]) == 0
    written = yaml.safe_load((tmp_path / "k8s" / "base" / "servingruntime.yaml").read_text())
    assert written["metadata"]["name"] == "other-vllm"
    assert script.main(["--check"]) == 0


# ---------------------------------------------------------------- GRPO network policy
def _ports(rule: dict) -> list[tuple[int, int]] | None:
    """(first, last) port ranges of an ingress rule; None: every port."""
    if "ports" not in rule:
        return None
    out = []
    for port in rule["ports"]:
        assert port["protocol"] == "TCP"
        out.append((port["port"], port.get("endPort", port["port"])))
    return out


def _role(selector: dict) -> str:
    labels = selector["matchLabels"]
    assert set(selector) == {"matchLabels"}, selector  # no expressions that could widen it
    assert labels.items() >= PART_OF.items() and labels["cello.dev/run-id"] == RUN, labels
    return labels["cello.dev/role"]


RUN = "r1"


def _run_policies() -> list[dict]:
    """The NetworkPolicies multi-node GRPO creates for one run (cello.k8s.grpo)."""
    from cello.k8s.grpo import render_rollout_server

    cfg = ClusterConfig(num_nodes=2)
    return [o for o in render_rollout_server(model="/mnt/cello/m", run_id=RUN, cfg=cfg) if o["kind"] == "NetworkPolicy"]


def _edges() -> set[tuple[str, str, tuple[int, int] | None]]:
    """(from role, to role, port range or None for all) for every opening of a run's policies."""
    edges = set()
    for policy in _run_policies():
        spec = policy["spec"]
        assert spec["policyTypes"] == ["Ingress"]
        target = _role(spec["podSelector"])
        for rule in spec["ingress"]:
            for peer in rule["from"]:
                assert set(peer) == {"podSelector"}, peer  # no namespaceSelector, no ipBlock
                source = _role(peer["podSelector"])
                for ports in _ports(rule) or [None]:
                    edges.add((source, target, ports))
    return edges


def _nccl() -> tuple[int, int]:
    low, high = ClusterConfig().nccl_port_range.split("-")
    return int(low), int(high)


def test_base_policy_shuts_every_grpo_pod_and_nothing_else():
    (policy,) = [d for d in _base_objects() if d["kind"] == "NetworkPolicy"]
    spec = policy["spec"]
    assert spec["policyTypes"] == ["Ingress"] and spec["ingress"] == []  # deny all ingress...
    assert spec["podSelector"]["matchLabels"] == PART_OF  # ...to Cello's pods...
    (expr,) = spec["podSelector"]["matchExpressions"]  # ...that have a GRPO role
    assert expr == {"key": "cello.dev/role", "operator": "In", "values": ["trainer", "rollout"]}


def test_run_policies_open_exactly_the_grpo_ports_between_the_roles():
    trl = trl_grpo_defaults("vllm_server_port", "vllm_group_port")
    serving, sync = trl["vllm_server_port"], trl["vllm_group_port"]  # 8000, 51216 in TRL 1.16
    nccl = _nccl()
    between = {e for e in _edges() if e[0] != e[1]}
    assert between == {
        ("trainer", "rollout", (serving, serving)),  # vLLM's HTTP API
        ("rollout", "trainer", (sync, sync)),  # the weight-sync rendezvous on the trainer's rank 0
        ("trainer", "rollout", nccl),  # NCCL's own sockets, both ways
        ("rollout", "trainer", nccl),
    }
    assert not nccl[0] <= sync <= nccl[1] and not nccl[0] <= serving <= nccl[1]
    assert (nccl[1] - nccl[0]) % 2 == 1  # ip_local_port_range ends of different parity


def test_run_policies_let_trainer_nodes_reach_each_other_and_nothing_else_in():
    same = {e for e in _edges() if e[0] == e[1]}
    assert same == {("trainer", "trainer", None)}  # torchrun rendezvous + NCCL between the trainer's nodes


def test_every_training_pod_keeps_nccl_in_the_opened_range():
    from cello.k8s.grpo import render_grpo

    want = [{"name": "net.ipv4.ip_local_port_range", "value": "{} {}".format(*_nccl())}]
    runtime = base("ClusterTrainingRuntime")
    pod = runtime["spec"]["template"]["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]
    assert pod["securityContext"]["sysctls"] == want
    cfg = ClusterConfig(num_nodes=2)
    objects = render_grpo(["train", "grpo", "/mnt/cello/d", "-o", "/mnt/cello/o"], model="/mnt/cello/m", run_id=RUN,
                          cfg=cfg)
    (server,) = [o for o in objects if o["kind"] == "Pod"]
    assert server["spec"]["securityContext"]["sysctls"] == want
    comments = " ".join(line.lstrip("# ") for line in (BASE / "networkpolicy.yaml").read_text().splitlines()
                        if line.startswith("#"))
    assert 'net.ipv4.ip_local_port_range to "{} {}"'.format(*_nccl()) in " ".join(comments.split())


# ---------------------------------------------------------------- RBAC: least privilege
READ = {"get", "list", "watch"}
WRITE = {"create", "patch", "delete"}
ALLOWED_RESOURCES = {
    "trainer.kubeflow.org": {"trainjobs", "trainingruntimes", "clustertrainingruntimes"},
    "kubeflow.org": {"pytorchjobs"},
    "serving.kserve.io": {"inferenceservices"},
    "": {"pods", "pods/log", "events", "services"},
    "networking.k8s.io": {"networkpolicies"},
}


def _rules(kind: str) -> list[dict]:
    return base(kind)["rules"]


@pytest.mark.parametrize("kind", ["Role", "ClusterRole"])
def test_rbac_has_no_wildcards_no_secrets_and_only_the_steps_resources(kind):
    for rule in _rules(kind):
        assert set(rule) <= {"apiGroups", "resources", "verbs", "resourceNames"}, rule  # no nonResourceURLs
        values = [*rule["apiGroups"], *rule["resources"], *rule["verbs"], *rule.get("resourceNames", [])]
        assert not any("*" in v for v in values), rule
        assert "secrets" not in rule["resources"]
        (group,) = rule["apiGroups"]
        assert set(rule["resources"]) <= ALLOWED_RESOURCES[group], rule
        assert set(rule["verbs"]) <= READ | WRITE, rule  # no update, escalate, bind, impersonate, deletecollection
        assert len(rule["verbs"]) == len(set(rule["verbs"]))


def test_role_has_one_rule_per_resource_each_with_a_comment():
    resources = [(r["apiGroups"][0], res) for r in _rules("Role") for res in r["resources"]]
    assert len(resources) == len(set(resources)) == len(_rules("Role"))
    lines = (BASE / "rbac.yaml").read_text().splitlines()
    starts = [i for i, line in enumerate(lines) if line.strip().startswith("- apiGroups:")]
    assert len(starts) == len(_rules("Role")) + len(_rules("ClusterRole"))
    for i in starts:
        assert lines[i - 1].strip().startswith("#"), f"rbac.yaml line {i + 1}: say which step uses this rule"


def test_role_grants_each_step_resource_with_the_verbs_it_needs():
    granted = {(r["apiGroups"][0], res): set(r["verbs"]) for r in _rules("Role") for res in r["resources"]}
    assert set(granted) == {(g, r) for g, rs in ALLOWED_RESOURCES.items() for r in rs} - {
        ("trainer.kubeflow.org", "clustertrainingruntimes")
    }
    for key in [("trainer.kubeflow.org", "trainjobs"), ("kubeflow.org", "pytorchjobs")]:
        assert granted[key] >= {"create", "get", "delete"}  # launch, wait, delete on deadline and cleanup
    assert granted[("serving.kserve.io", "inferenceservices")] >= {"create", "get", "patch"}  # deploy, roll back
    assert granted[("", "pods/log")] == {"get"}
    assert granted[("", "events")] <= READ


def test_runtime_lookups_are_read_only_and_limited_to_the_cello_runtime():
    cfg = ClusterConfig()
    (cluster_rule,) = _rules("ClusterRole")
    assert cluster_rule == {"apiGroups": ["trainer.kubeflow.org"], "resources": ["clustertrainingruntimes"],
                            "resourceNames": [cfg.training_runtime], "verbs": ["get"]}
    (ns_rule,) = [r for r in _rules("Role") if r["resources"] == ["trainingruntimes"]]
    assert ns_rule["resourceNames"] == [cfg.training_runtime] and ns_rule["verbs"] == ["get"]
    assert base("RoleBinding")["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                              "name": "cello-pipeline"}
    assert base("ClusterRoleBinding")["roleRef"]["name"] == base("ClusterRole")["metadata"]["name"]

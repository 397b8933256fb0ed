"""The Role grants exactly what the steps use: the API calls recorded against the double in the
other cluster tests (RECORDED, filled by the `cluster` fixture) equal `cello.k8s.permissions`, and
so do the rights k8s/base/rbac.yaml binds to the pipeline's ServiceAccount (skipped while that file
is absent)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from cello.config import ClusterConfig
from cello.k8s.permissions import CLUSTER, NAMESPACED, OPTIONAL, as_triples
from tests.k8s.conftest import RECORDED

RBAC = Path(__file__).resolve().parents[2] / "k8s" / "base" / "rbac.yaml"
MODULES = {"tests.k8s.test_launch", "tests.k8s.test_grpo", "tests.k8s.test_deploy", "tests.k8s.test_cleanup"}


def test_recorded_calls_are_exactly_the_permissions():
    missing = MODULES - set(RECORDED)
    if missing:
        pytest.skip(f"run the whole tests/k8s folder: {sorted(missing)} recorded no calls in this session")
    recorded = set().union(*RECORDED.values()) - as_triples(OPTIONAL)
    needed = as_triples(NAMESPACED) | as_triples(CLUSTER)
    assert recorded - needed == set(), "calls the code makes that cello.k8s.permissions does not list"
    assert needed - recorded == set(), "permissions listed that no test exercised (unused, or untested)"


def _grants(docs: list[dict], service_account: str) -> tuple[set, set]:
    """(namespaced, cluster-wide) (apiGroup, resource, verb) granted to `service_account` by the bindings in `docs`."""
    roles = {(d["kind"], d["metadata"]["name"]): d for d in docs if d.get("kind") in ("Role", "ClusterRole")}

    def rules(ref: dict) -> set:
        role = roles.get((ref["kind"], ref["name"]))
        assert role is not None, f"{ref['kind']} {ref['name']} is bound but not defined in {RBAC.name}"
        return {(group, resource, verb) for rule in role.get("rules") or [] for group in rule.get("apiGroups", [])
                for resource in rule.get("resources", []) for verb in rule.get("verbs", [])}

    namespaced, cluster = set(), set()
    for doc in docs:
        if doc.get("kind") not in ("RoleBinding", "ClusterRoleBinding"):
            continue
        if not any(s.get("kind") == "ServiceAccount" and s.get("name") == service_account
                   for s in doc.get("subjects") or []):
            continue
        (namespaced if doc["kind"] == "RoleBinding" else cluster).update(rules(doc["roleRef"]))
    return namespaced, cluster


@pytest.mark.skipif(not RBAC.is_file(), reason=f"{RBAC} not written yet")
def test_role_in_k8s_base_grants_exactly_what_the_steps_use():
    docs = [d for d in yaml.safe_load_all(RBAC.read_text()) if d]
    account = ClusterConfig().service_account
    namespaced, cluster = _grants(docs, account)
    assert namespaced or cluster, f"nothing in {RBAC.name} is bound to the ServiceAccount {account}"
    assert not any("*" in triple for triple in namespaced | cluster), "wildcards grant more than the steps use"
    optional = as_triples(OPTIONAL)
    assert namespaced - optional == as_triples(NAMESPACED)
    assert cluster - optional == as_triples(CLUSTER)  # a ClusterRoleBinding of namespaced rights would over-grant

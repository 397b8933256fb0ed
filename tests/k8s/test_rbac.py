"""The Role grants exactly what the steps use: the API calls recorded against the double in the
other cluster tests (RECORDED, filled by the `cluster` fixture) equal `cello.k8s.permissions`, and
so do the rules of k8s/base/rbac.yaml (skipped while that file is absent)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

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


def _granted(kind: str) -> set[tuple[str, str, str]]:
    out = set()
    for doc in yaml.safe_load_all(RBAC.read_text()):
        if not doc or doc.get("kind") != kind:
            continue
        for rule in doc.get("rules") or []:
            for group in rule.get("apiGroups", []):
                for resource in rule.get("resources", []):
                    out |= {(group, resource, verb) for verb in rule.get("verbs", [])}
    return out


@pytest.mark.skipif(not RBAC.is_file(), reason=f"{RBAC} not written yet")
def test_role_in_k8s_base_grants_exactly_what_the_steps_use():
    role, cluster_role = _granted("Role"), _granted("ClusterRole")
    assert not any("*" in triple for triple in role | cluster_role), "wildcards grant more than the steps use"
    optional = as_triples(OPTIONAL)
    assert role - optional == as_triples(NAMESPACED)
    assert cluster_role - optional == as_triples(CLUSTER)

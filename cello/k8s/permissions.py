"""Every Kubernetes API call Cello's cluster steps make, as RBAC rules: what the pipeline's
ServiceAccount must be granted (k8s/base/rbac.yaml), and nothing more.

`tests/k8s/test_rbac.py` checks both directions: the calls recorded while the launchers, GRPO,
deploy and cleanup run against the API double are exactly these, and the Role in k8s/base
grants exactly these.

    from cello.k8s.permissions import NAMESPACED, CLUSTER
"""

from __future__ import annotations

# (apiGroup, resource) -> verbs, in the run's namespace (a Role).
NAMESPACED: dict[tuple[str, str], frozenset[str]] = {
    ("trainer.kubeflow.org", "trainjobs"): frozenset({"create", "get", "list", "delete"}),
    # The Kubeflow SDK looks for a namespaced TrainingRuntime before the cluster one; a 403 here
    # fails the step (only a 404 falls through to the ClusterTrainingRuntime).
    ("trainer.kubeflow.org", "trainingruntimes"): frozenset({"get"}),
    ("kubeflow.org", "pytorchjobs"): frozenset({"create", "get", "list", "delete"}),
    ("", "pods"): frozenset({"create", "get", "list", "delete"}),  # GRPO pods; job pods: list, delete
    ("", "pods/log"): frozenset({"get"}),  # node 0's log: streamed, and its tail on failure
    ("", "events"): frozenset({"list"}),  # why a pod is Pending
    ("", "services"): frozenset({"create", "list", "delete"}),  # multi-node GRPO's rollout server
    ("networking.k8s.io", "networkpolicies"): frozenset({"create", "list", "delete"}),
    ("serving.kserve.io", "inferenceservices"): frozenset({"create", "get", "patch", "delete"}),
}

# (apiGroup, resource) -> verbs on cluster-scoped resources (a ClusterRole).
CLUSTER: dict[tuple[str, str], frozenset[str]] = {
    ("trainer.kubeflow.org", "clustertrainingruntimes"): frozenset({"get"}),  # the SDK reads cello-torch
}

# Calls that may be refused without harm: the Kubeflow SDK reads its control plane's version
# (ConfigMap kubeflow-trainer-public in kubeflow-system) and only logs a warning when it cannot.
OPTIONAL: dict[tuple[str, str], frozenset[str]] = {
    ("", "configmaps"): frozenset({"get"}),
}


def as_triples(rules: dict[tuple[str, str], frozenset[str]]) -> set[tuple[str, str, str]]:
    """{(apiGroup, resource, verb)} of `rules`."""
    return {(group, resource, verb) for (group, resource), verbs in rules.items() for verb in verbs}

"""Training stages as Kubeflow Trainer v2 TrainJobs, through the Kubeflow SDK (`kubeflow` 0.5.0).

The job is built from SDK inputs only (`sdk_inputs`): `CustomTrainerContainer(image, num_nodes,
resources_per_node, env)` and the options `Name`, `Labels`, `ActiveDeadlineSeconds`,
`TrainerCommand` (torchrun ...) and a `RuntimePatch` on the runtime's `node` replicated job for
what the trainer spec cannot say: pod labels, the ServiceAccount, the workspace PVC and
/dev/shm, Secrets as env, node selector and tolerations. The TrainJob refers to the
ClusterTrainingRuntime `cluster.training_runtime` (`cello-torch`, installed by k8s/), whose
replicated job and container are both named `node`, as in Kubeflow's torch-distributed.

`render_trainjob` runs the SDK's own builder (`KubernetesBackend.train`) offline against a
recorder, so the YAML printed for review is exactly what `TrainJobHandle.create` submits.

    cello k8s render trainjob --run-id r1 --stage sft -- train sft /mnt/cello/data/records/sft -o /mnt/cello/runs/r1/sft
"""

from __future__ import annotations

from typing import Any

from cello.config import ClusterConfig
from cello.deps import require
from cello.k8s import podspec
from cello.k8s.api import Clients, call
from cello.k8s.jobspec import TrainingSpec
from cello.k8s.wait import State, state_from_conditions

GROUP, VERSION, PLURAL = "trainer.kubeflow.org", "v1alpha1", "trainjobs"
NODE = "node"  # the replicated job and container of the torch runtime
JOBSET_NAME_LABEL = "jobset.sigs.k8s.io/jobset-name"
RJOB_LABEL = "jobset.sigs.k8s.io/replicatedjob-name"
INDEX_LABEL = "batch.kubernetes.io/job-completion-index"


def _sdk():
    return require("kubeflow.trainer", "pipeline")


def sdk_inputs(spec: TrainingSpec, cfg: ClusterConfig) -> tuple[Any, list[Any]]:
    """(trainer, options) for `TrainerClient.train`."""
    _sdk()
    from kubeflow.trainer import CustomTrainerContainer
    from kubeflow.trainer import options as o

    resources: dict[str, Any] = {"cpu": cfg.cpu_per_node, "memory": cfg.memory_per_node}
    if spec.gpus_per_node > 0:
        resources[cfg.gpu_resource] = str(spec.gpus_per_node)  # an int would become the float 8.0
    trainer = CustomTrainerContainer(image=spec.image, num_nodes=spec.num_nodes, resources_per_node=resources,
                                     env=spec.env)
    sched = podspec.scheduling(cfg)
    pod = o.PodSpecPatch(
        service_account_name=cfg.service_account,
        volumes=podspec.volumes(cfg),
        node_selector=sched.get("nodeSelector"),
        tolerations=sched.get("tolerations"),
        security_context=podspec.security_context(cfg),
        containers=[o.ContainerPatch(name=NODE, env=spec.env_from or None, volume_mounts=podspec.volume_mounts(cfg))],
    )
    node = o.ReplicatedJobPatch(name=NODE, template=o.JobTemplatePatch(
        metadata={"labels": dict(spec.labels)},
        spec=o.JobSpecPatch(template=o.PodTemplatePatch(metadata={"labels": dict(spec.labels)}, spec=pod)),
    ))
    patch = o.RuntimePatch(training_runtime_spec=o.TrainingRuntimeSpecPatch(
        template=o.JobSetTemplatePatch(spec=o.JobSetSpecPatch(replicated_jobs=[node])),
    ))
    options = [o.Name(spec.name), o.Labels(dict(spec.labels)), o.ActiveDeadlineSeconds(cfg.active_deadline_s),
               o.TrainerCommand(list(spec.command)), patch]
    return trainer, options


class _Recorder:
    """Stands in for CustomObjectsApi: keeps the body the SDK would create."""

    body: dict[str, Any] | None = None

    def create_namespaced_custom_object(self, group, version, namespace, plural, body, **_):
        self.body = body
        return body


def render_trainjob(spec: TrainingSpec, cfg: ClusterConfig) -> dict[str, Any]:
    """The TrainJob as the SDK builds it, without a cluster."""
    sdk = _sdk()
    from kubeflow.trainer.backends.kubernetes.backend import KubernetesBackend

    runtime = sdk.Runtime(
        name=cfg.training_runtime,
        kind=sdk.RuntimeKind.CLUSTER_TRAINING_RUNTIME,
        trainer=sdk.RuntimeTrainer(trainer_type=sdk.TrainerType.CUSTOM_TRAINER, framework="torch", image=spec.image),
    )
    backend = KubernetesBackend.__new__(KubernetesBackend)  # no __init__: it would load a kubeconfig
    backend.namespace = spec.namespace
    backend.custom_api = recorder = _Recorder()
    trainer, options = sdk_inputs(spec, cfg)
    backend.train(runtime=runtime, trainer=trainer, options=options)
    obj = dict(recorder.body or {})
    obj["metadata"] = {**obj["metadata"], "namespace": spec.namespace}
    return obj


class TrainJobHandle:
    """A TrainJob on the cluster: created, read, followed and deleted through the SDK's client."""

    kind = "TrainJob"
    log_container = NODE

    def __init__(self, spec: TrainingSpec, cfg: ClusterConfig, api: Clients):
        sdk = _sdk()
        self.spec, self.cfg, self.api = spec, cfg, api
        self.name, self.namespace = spec.name, spec.namespace
        self.pod_selector = f"{JOBSET_NAME_LABEL}={spec.name}"
        config = sdk.KubernetesBackendConfig(namespace=spec.namespace,
                                             client_configuration=api.core.api_client.configuration)
        self.client = sdk.TrainerClient(config)

    def create(self) -> None:
        runtime = call(self.client.get_runtime, self.cfg.training_runtime, retries=self.cfg.api_retries,
                       what=f"get the training runtime {self.cfg.training_runtime!r} (k8s/base installs it)")
        trainer, options = sdk_inputs(self.spec, self.cfg)
        call(self.client.train, runtime=runtime, trainer=trainer, options=options, retries=self.cfg.api_retries,
             what=f"create TrainJob {self.namespace}/{self.name}")

    def read(self) -> dict[str, Any] | None:
        return call(self.api.custom.get_namespaced_custom_object, GROUP, VERSION, self.namespace, PLURAL, self.name,
                    what=f"get TrainJob {self.namespace}/{self.name}", retries=self.cfg.api_retries, missing_ok=True)

    def state(self, obj: dict[str, Any]) -> State:
        return state_from_conditions(obj, complete="Complete")

    def is_node0(self, pod: Any) -> bool:
        labels = pod.metadata.labels or {}
        return labels.get(RJOB_LABEL) == NODE and labels.get(INDEX_LABEL) == "0"

    def follow_logs(self, pod_name: str):
        return self.client.get_job_logs(self.name, step=f"{NODE}-0", follow=True)

    def delete(self) -> None:
        call(self.client.delete_job, self.name, what=f"delete TrainJob {self.namespace}/{self.name}",
             retries=self.cfg.api_retries, missing_ok=True)

"""The Cello pipeline: data (DVC) -> [distill] -> SFT -> merge -> GRPO -> evaluate (candidate,
incumbent, baseline) -> gate -> deploy if it passed, inside an exit handler that cleans up.

    cello pipeline compile -o pipelines/cello.yaml          # the IR YAML a Kubeflow cluster runs
    cello pipeline run --local --profile local              # the same DAG on this machine
    cello pipeline submit --host https://kfp.example.com    # a run on a cluster

`make(params)` builds the pipeline; the cluster settings (volume, GPUs, node selector,
tolerations, secrets, timeouts) and the parameter defaults come from `params`, so the
compiled YAML follows params.yaml. Every step is a component in `components/`. (No `from __future__
import annotations` here: KFP reads the parameter types from the annotations.)
"""


from kfp import dsl

from cello.config import Params


def make(params: Params):
    """The pipeline function for these params (defaults and cluster settings)."""
    from cello.pipeline.platform import on_cluster
    from components import data, deploy, distill, evaluate, gate, grpo, merge, sft

    cluster, pipe = params.cluster, params.pipeline
    step_timeout = pipe.step_timeout_s

    @dsl.pipeline(name="cello",
                  description="Cell-o1 recipe: DVC data -> SFT -> merge -> GRPO -> eval -> gate -> deploy.")
    def cello(
        repo: str = "",
        revision: str = "",
        profile: str = "",
        overrides: dict = {},  # noqa: B006 - a KFP parameter default (never mutated)
        workdir: str = cluster.mount_path,
        run_id: str = "",
        backend: str = "kubernetes",
        base_model: str = "",
        distill_traces: bool = False,
        teacher: str = "",
        incumbent: str = "",
        num_nodes: int = cluster.num_nodes,
        gpus_per_node: int = cluster.gpus_per_node,
        step_gpus: int = 0,
        eval_gpus: int = 1,
    ):
        """Parameters:
        repo: the Cello project (git URL; a local path for local runs), whose params.yaml and dvc.yaml the run uses.
        revision: commit, tag or branch of repo to pin the data and settings to ("": a local working tree).
        profile: params.yaml profile ("local": the tiny CPU model).
        overrides: params.yaml keys, {"gate.min_accuracy": 0.2}.
        workdir: the shared volume (data/, dvc-cache/, <run id>/). run_id: "" = the KFP job name.
        backend: where training runs: kubernetes (Trainer jobs on GPU nodes) or local (in the step's own pod).
        base_model: SFT's starting model ("": pipeline.base_model / train.sft.model; "tiny": built offline).
        distill_traces / teacher: distill reasoning traces from a teacher endpoint first ("template": format-only).
        incumbent: checkpoint the candidate must not regress against, a path or a Hub model such as
        hf://ncbi/Cell-o1 ("": the deployed one on a cluster).
        num_nodes / gpus_per_node: training jobs' shape. step_gpus: GPUs of a training step's own pod
        (backend local on a cluster). eval_gpus: GPUs of a model evaluation step.
        """
        cleanup = deploy.cleanup(workdir=workdir, run_id=run_id, job_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
                                 backend=backend)
        on_cluster(cleanup, cluster)
        with dsl.ExitHandler(cleanup, name="run"):
            prep = on_cluster(data.prepare(repo=repo, revision=revision, profile=profile, overrides=overrides,
                                           workdir=workdir, run_id=run_id, job_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER),
                              cluster)
            run_dir, data_dir = prep.outputs["run_dir"], prep.outputs["data_dir"]
            inputs = on_cluster(data.list_inputs(data_dir=data_dir), cluster).output
            with dsl.ParallelFor(inputs, parallelism=pipe.fan_out, name="each-input-file") as item:
                part = on_cluster(data.cells_part(data_dir=item.data_dir, source=item.source), cluster, cache=True)
            built = on_cluster(data.build_data(data_dir=data_dir, parts=dsl.Collected(part.output)), cluster,
                               cache=True)
            data_uri = built.outputs["Output"]

            with dsl.If(distill_traces == True, name="distill-traces"):  # noqa: E712 - a KFP condition, not Python
                traces = on_cluster(distill.distill(run_dir=run_dir, data_dir=data_uri, teacher=teacher,
                                                    backend=backend),
                                    cluster, timeout_s=step_timeout)
            with dsl.Else(name="data-records"):
                plain = on_cluster(distill.sft_records(run_dir=run_dir, data_dir=data_uri), cluster)
            records = dsl.OneOf(traces.outputs["Output"], plain.outputs["Output"])

            base = on_cluster(sft.base_model(run_dir=run_dir, data_dir=data_uri, model=base_model), cluster)
            tuned = on_cluster(sft.sft(run_dir=run_dir, data_dir=data_uri, records=records,
                                       model=base.outputs["Output"], backend=backend,
                                       num_nodes=num_nodes, gpus_per_node=gpus_per_node, step_gpus=step_gpus),
                               cluster, gpus=step_gpus, timeout_s=step_timeout)
            merged = on_cluster(merge.merge(run_dir=run_dir, data_dir=data_uri, adapter=tuned.outputs["Output"],
                                            backend=backend),
                                cluster, gpus=step_gpus, timeout_s=step_timeout)
            policy = on_cluster(grpo.grpo(run_dir=run_dir, data_dir=data_uri, model=merged.outputs["Output"],
                                          backend=backend, num_nodes=num_nodes, gpus_per_node=gpus_per_node,
                                          step_gpus=step_gpus),
                                cluster, gpus=step_gpus, timeout_s=step_timeout)

            candidate = on_cluster(evaluate.evaluate_model(run_dir=run_dir, data_dir=data_uri,
                                                           model=policy.outputs["Output"], role="candidate",
                                                           gpus=eval_gpus),
                                   cluster, gpus=eval_gpus, timeout_s=step_timeout)
            floor = on_cluster(evaluate.evaluate_baseline(run_dir=run_dir, data_dir=data_uri), cluster)
            found = on_cluster(evaluate.find_incumbent(run_dir=run_dir, incumbent=incumbent, backend=backend), cluster)
            with dsl.If(found.outputs["Output"] != "", name="incumbent-given"):
                against = on_cluster(evaluate.evaluate_model(run_dir=run_dir, data_dir=data_uri,
                                                             model=found.outputs["Output"], role="incumbent",
                                                             gpus=eval_gpus),
                                     cluster, gpus=eval_gpus, timeout_s=step_timeout)
            with dsl.Else(name="first-deployment"):
                none = on_cluster(evaluate.no_incumbent(run_dir=run_dir, data_dir=data_uri), cluster)

            decision = on_cluster(gate.gate(run_dir=run_dir, data_dir=data_uri, candidate=candidate.outputs["Output"],
                                            baseline=floor.outputs["Output"],
                                            incumbent=dsl.OneOf(against.outputs["Output"], none.outputs["Output"])),
                                  cluster)
            with dsl.If(decision.outputs["Output"] == True, name="gate-passed"):  # noqa: E712 - a KFP condition
                on_cluster(deploy.deploy(run_dir=run_dir, data_dir=data_uri, model=policy.outputs["Output"],
                                         backend=backend),
                           cluster, timeout_s=step_timeout)

    return cello

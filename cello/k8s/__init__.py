"""Cello on Kubernetes: the objects it runs as, and the steps that run them on a cluster.

Objects (plain dicts, validated offline against the upstream CRDs and Kubernetes schemas):
- `images`: every container image reference, overridable by env vars;
- `inference`: the KServe InferenceService (vLLM predictor + `cello serve` transformer) and
  a ServingRuntime pinning the vLLM-capable runtime image;
- `labels`, `podspec`, `jobspec`: names, labels and pod pieces every run object shares, and
  what a training job runs (torchrun reads the PET_* rendezvous);
- `trainjob` (Kubeflow SDK), `pytorchjob`, `grpo`: the training jobs and GRPO's vLLM rollouts;
- `validate`, `manifests`: strict validation and YAML output; `permissions`: the RBAC they need.

Steps (the pipeline's `kubernetes` backend; they need a cluster, or the API double in tests):
- `launch.run_training`, `grpo.run_grpo`: create or re-attach, stream node 0's logs, return only
  when the job completed (`wait`: Failed, deadline, vanished and Pending fail the step);
- `deploy.deploy`, `deploy.deployed_model_uri`: KServe rollout, smoke test, rollback;
- `cleanup.cleanup`: delete what a run created (the exit handler).

Nothing here imports `kubernetes`, `kubeflow` or `kserve` at module level; a missing one is an
error naming the extra to install.

    cello k8s render isvc s3://models/cello-7b -o isvc.yaml
    cello k8s render trainjob --run-id r1 -- train sft /mnt/cello/data/records/sft -o /mnt/cello/runs/r1/sft
"""

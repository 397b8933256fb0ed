"""Typed builders for the Kubernetes objects Cello runs as, validated offline against CRDs.

- `cello.k8s.images`: every container image reference, overridable by env vars.
- `cello.k8s.inference`: the KServe InferenceService (vLLM predictor + `cello serve`
  transformer) and a ServingRuntime pinning the vLLM-capable runtime image.
- `cello.k8s.validate`: jsonschema validation against the upstream CRD YAML files, strict
  about unknown fields.

Builders return plain dicts (what `kubectl apply` and the Kubernetes client take); nothing
here needs a cluster, and nothing imports `kubernetes` or `kserve` at module level.

    cello k8s render isvc s3://models/cello-7b -o isvc.yaml
"""

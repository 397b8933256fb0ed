"""Container images, named in one place and overridable by environment variables.

Every Kubernetes object Cello renders takes its image from `image(key)`, so a cluster with a
private registry or pinned digests changes one env var, not code:

    CELLO_IMAGE_REGISTRY=registry.example.com/ml   # prefix of every Cello image
    CELLO_IMAGE_TAG=0.2.0-rc1                      # tag of every Cello image (default: the package version)
    CELLO_IMAGE_SERVE=registry.example.com/ml/cello-serve@sha256:...   # one image, verbatim
    CELLO_IMAGE_VLLM=vllm/vllm-openai:v0.24.0

    python -c "from cello.k8s.images import images; print(images())"

Cello images are tagged with the package version; third-party images are pinned to the
versions the project was checked against (KServe 0.20, vLLM 0.24).
"""

from __future__ import annotations

import os

from cello import __version__

DEFAULT_REGISTRY = "ghcr.io/cello-ml"

# key -> (image name under the Cello registry, or a full third-party reference)
_CELLO = {
    "cello": "cello",  # the library + CLI (data, eval, pipeline steps)
    "train": "cello-train",  # torch + trl + deepspeed (GPU)
    "serve": "cello-serve",  # `cello serve`: the KServe model server / transformer
}
_THIRD_PARTY = {
    # KServe's Hugging Face runtime with vLLM inside (the predictor of the InferenceService)
    "kserve-huggingfaceserver": "kserve/huggingfaceserver:v0.20.0-gpu",
    # plain vLLM OpenAI server (GRPO rollout sidecar)
    "vllm": "vllm/vllm-openai:v0.24.0",
}


def _env_name(key: str) -> str:
    return "CELLO_IMAGE_" + key.upper().replace("-", "_")


def image(key: str) -> str:
    """The image reference for `key` (see `images()`); `CELLO_IMAGE_<KEY>` overrides it."""
    override = os.environ.get(_env_name(key), "").strip()
    if override:
        return override
    if key in _CELLO:
        registry = os.environ.get("CELLO_IMAGE_REGISTRY", "").strip().rstrip("/") or DEFAULT_REGISTRY
        tag = os.environ.get("CELLO_IMAGE_TAG", "").strip() or __version__
        return f"{registry}/{_CELLO[key]}:{tag}"
    if key in _THIRD_PARTY:
        return _THIRD_PARTY[key]
    known = ", ".join(sorted([*_CELLO, *_THIRD_PARTY]))
    msg = f"no image named {key!r}; known images: {known}."
    raise KeyError(msg)


def images() -> dict[str, str]:
    """Every image key with its current reference (after env overrides)."""
    return {key: image(key) for key in sorted([*_CELLO, *_THIRD_PARTY])}

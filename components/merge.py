"""Merge: the SFT adapter folded into its base, a plain model for GRPO and serving."""

from kfp import dsl

from cello.k8s.images import image


@dsl.component(base_image=image("train"), install_kfp_package=False)
def merge(run_dir: str, data_dir: str, adapter: str, backend: str) -> str:
    """SFT output -> merged model URI."""
    from cello.pipeline.train import merge

    return merge(run_dir, data_dir=data_dir, adapter=adapter, backend=backend)

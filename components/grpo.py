"""GRPO: the batch-level reward, rollouts by transformers or a vLLM server."""

from kfp import dsl
from kfp.dsl import Metrics, Output

from cello.k8s.images import image


@dsl.component(base_image=image("train"), install_kfp_package=False)
def grpo(run_dir: str, data_dir: str, model: str, backend: str, num_nodes: int, gpus_per_node: int,
         step_gpus: int, metrics: Output[Metrics]) -> str:
    """GRPO from the merged SFT model -> the policy's URI; last reward/accuracy as metrics."""
    from cello.pipeline.outputs import publish
    from cello.pipeline.run import Run
    from cello.pipeline.train import curve_ends, grpo

    out = grpo(run_dir, data_dir=data_dir, model=model, backend=backend, num_nodes=num_nodes,
               gpus_per_node=gpus_per_node, step_gpus=step_gpus)
    publish(lineage=Run.open(run_dir).lineage_for(data_dir), metrics=metrics, values=curve_ends(out["summary"]))
    return out["uri"]

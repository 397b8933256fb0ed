"""SFT: the base model (a hub id, a path, or the tiny offline model), then LoRA SFT."""

from kfp import dsl
from kfp.dsl import Metrics, Output

from cello.k8s.images import image


@dsl.component(base_image=image("train"), install_kfp_package=False)
def base_model(run_dir: str, data_dir: str, model: str) -> str:
    """The model SFT starts from ('tiny': built offline from the SFT records)."""
    from cello.pipeline.train import base_model

    return base_model(run_dir, data_dir=data_dir, model=model)


@dsl.component(base_image=image("train"), install_kfp_package=False)
def sft(run_dir: str, data_dir: str, records: str, model: str, backend: str, num_nodes: int,
        gpus_per_node: int, step_gpus: int, metrics: Output[Metrics]) -> str:
    """LoRA SFT (TRL) -> the checkpoint URI; last loss/accuracy as metrics. Backend kubernetes:
    a job of num_nodes x gpus_per_node; local: here, torchrun over this pod's step_gpus."""
    from cello.pipeline.outputs import publish
    from cello.pipeline.run import Run
    from cello.pipeline.train import curve_ends, sft

    out = sft(run_dir, data_dir=data_dir, records=records, model=model, backend=backend, num_nodes=num_nodes,
              gpus_per_node=gpus_per_node, step_gpus=step_gpus)
    publish(lineage=Run.open(run_dir).lineage_for(data_dir), metrics=metrics, values=curve_ends(out["summary"]))
    return out["uri"]

"""Gate: the promotion decision, as a plain boolean (for dsl.If) and a Markdown table of every rule."""

from kfp import dsl
from kfp.dsl import Markdown, Output

from cello.k8s.images import image


@dsl.component(base_image=image("cello"), install_kfp_package=False)
def gate(run_dir: str, data_dir: str, candidate: str, incumbent: str, baseline: str,
         decision: Output[Markdown]) -> bool:
    """Floor, no regression against the incumbent, beats the baseline -> passed?"""
    from cello.pipeline.evaluate import gate
    from cello.pipeline.outputs import publish

    out = gate(run_dir, data_dir=data_dir, candidate=candidate, incumbent=incumbent, baseline=baseline)
    publish(lineage=out["lineage"], markdown=decision, text=out["markdown"])
    return out["passed"]

"""Evaluate: the candidate, the incumbent (when there is one) and the non-LLM baseline."""

from kfp import dsl
from kfp.dsl import HTML, Markdown, Metrics, Output

from cello.k8s.images import image


@dsl.component(base_image=image("train"), install_kfp_package=False)
def evaluate_model(run_dir: str, data_dir: str, model: str, role: str, gpus: int, metrics: Output[Metrics],
                   report: Output[Markdown], plot: Output[HTML]) -> str:
    """A checkpoint on the eval split -> its metrics.json URI; metrics, report, accuracy by N."""
    from cello.pipeline.evaluate import model as evaluate
    from cello.pipeline.outputs import publish

    out = evaluate(run_dir, data_dir=data_dir, model=model, role=role, gpus=gpus)
    publish(lineage=out["lineage"], metrics=metrics, values=out["metrics"], markdown=report, text=out["markdown"],
            html=plot, page=out["html"])
    return out["metrics_uri"]


@dsl.component(base_image=image("cello"), install_kfp_package=False)
def evaluate_baseline(run_dir: str, data_dir: str, metrics: Output[Metrics], report: Output[Markdown],
                      plot: Output[HTML]) -> str:
    """The marker-gene baseline (fitted on train) on the eval split -> its metrics.json URI."""
    from cello.pipeline.evaluate import baseline
    from cello.pipeline.outputs import publish

    out = baseline(run_dir, data_dir=data_dir)
    publish(lineage=out["lineage"], metrics=metrics, values=out["metrics"], markdown=report, text=out["markdown"],
            html=plot, page=out["html"])
    return out["metrics_uri"]


@dsl.component(base_image=image("cello"), install_kfp_package=False)
def find_incumbent(run_dir: str, incumbent: str, backend: str) -> str:
    """The incumbent to compare with: the one given, else (on a cluster) the deployed checkpoint."""
    from cello.pipeline.evaluate import find_incumbent

    return find_incumbent(run_dir, incumbent=incumbent, backend=backend)


@dsl.component(base_image=image("cello"), install_kfp_package=False)
def no_incumbent(run_dir: str, data_dir: str, report: Output[Markdown]) -> str:
    """No incumbent: a first deployment; the gate's no-regression rule passes."""
    from cello.pipeline.evaluate import no_incumbent
    from cello.pipeline.outputs import publish

    out = no_incumbent(run_dir, data_dir=data_dir)
    publish(lineage=out["lineage"], markdown=report, text=out["markdown"])
    return ""

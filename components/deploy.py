"""Deploy: serve the promoted checkpoint and prove it answers; the run's exit handler."""

from kfp import dsl
from kfp.dsl import Markdown, Output

from cello.k8s.images import image


@dsl.component(base_image=image("cello"), install_kfp_package=False)
def deploy(run_dir: str, data_dir: str, model: str, backend: str, report: Output[Markdown]) -> str:
    """Local `cello serve` or KServe; one real puzzle must get a valid assignment -> the served route."""
    from cello.pipeline.deploy import deploy
    from cello.pipeline.outputs import publish

    out = deploy(run_dir, data_dir=data_dir, model=model, backend=backend)
    publish(lineage=out["lineage"], markdown=report, text=out["markdown"])
    return str(out.get("url") or "")


@dsl.component(base_image=image("cello"), install_kfp_package=False)
def cleanup(workdir: str, run_id: str, job_name: str, backend: str, status: dsl.PipelineTaskFinalStatus):
    """Exit handler: record how the run ended; on a cluster delete the jobs it launched."""
    from cello.pipeline.deploy import cleanup
    from cello.pipeline.run import run_id_for

    cleanup(workdir, run_id=run_id_for(run_id, job_name), backend=backend,
            status={"state": status.state, "error": status.error_message})

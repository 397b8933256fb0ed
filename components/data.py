"""Data: the project's DVC pipeline at a pinned revision, the cells stage fanned out per file."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Markdown, Metrics, Output

from cello.k8s.images import image


@dsl.component(base_image=image("cello"), install_kfp_package=False)
def prepare(repo: str, revision: str, profile: str, overrides: dict, workdir: str, run_id: str,
            job_name: str) -> NamedTuple("Outputs", [("run_dir", str), ("data_dir", str)]):
    """Source at `revision` -> run folder (resolved params, lineage) + data folder."""
    from cello.pipeline.data import prepare

    p = prepare(repo=repo, revision=revision, profile=profile, overrides=overrides, workdir=workdir,
                run_id=run_id, job_name=job_name)
    return (p.run_dir, p.data_dir)


@dsl.component(base_image=image("cello"), install_kfp_package=False)
def list_inputs(data_dir: str) -> list:
    """The input files of the data (data.inputs, directories expanded): one fan-out task each,
    as {"data_dir", "source"} items (a loop task then needs nothing from outside the loop)."""
    from cello.pipeline.data import list_inputs

    return [{"data_dir": data_dir, "source": source} for source in list_inputs(data_dir)]


@dsl.component(base_image=image("cello"), install_kfp_package=False)
def cells_part(data_dir: str, source: str) -> str:
    """One input file -> its cells part (ranked top genes + donor context)."""
    from cello.pipeline.data import cells_part

    return cells_part(data_dir=data_dir, source=source)


@dsl.component(base_image=image("cello"), install_kfp_package=False)
def build_data(data_dir: str, parts: list, report: Output[Markdown], metrics: Output[Metrics]) -> str:
    """`dvc commit` the parts, `dvc repro` split -> records; the data version."""
    from cello.pipeline.data import build, card
    from cello.pipeline.outputs import publish

    summary = build(data_dir=data_dir, parts=parts)
    text, numbers = card(summary)
    publish(lineage={"data": summary["version"]}, metrics=metrics, values=numbers, markdown=report, text=text)
    return data_dir

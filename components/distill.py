"""Distill (optional branch): reasoning traces from a teacher, or the data's SFT records as they are."""

from kfp import dsl
from kfp.dsl import Markdown, Output

from cello.k8s.images import image


@dsl.component(base_image=image("train"), install_kfp_package=False)
def distill(run_dir: str, data_dir: str, teacher: str, backend: str, report: Output[Markdown]) -> str:
    """Teacher traces by rejection sampling on the reward -> SFT records (their URI)."""
    from pathlib import Path

    from cello.pipeline.outputs import publish
    from cello.pipeline.run import Run
    from cello.pipeline.train import distill

    records = distill(run_dir, data_dir=data_dir, teacher=teacher, backend=backend)
    summary = (Path(records) / "summary.json").read_text()
    publish(lineage=Run.open(run_dir).lineage_for(data_dir), markdown=report,
            text=f"## Distilled SFT records\n\n`{records}`\n\n```json\n{summary}\n```")
    return records


@dsl.component(base_image=image("cello"), install_kfp_package=False)
def sft_records(run_dir: str, data_dir: str) -> str:
    """No distillation: the data's SFT records, checked (their URI)."""
    from cello.pipeline.train import sft_records

    return sft_records(run_dir, data_dir=data_dir)

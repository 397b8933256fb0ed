"""scripts/reproduce_paper.sh on a published-layout dataset built in tmp: import -> audit ->
(evaluations) -> the table beside the paper's figures. The Hub is offline: the "published" models
are the tiny model in a Hub cache; without a GPU the evaluations are skipped with a message."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO, hub_cache
from tests.data.test_hub import hub_dir


def _run(tmp_path, **env):
    base = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1",
            "HF_DATASETS_CACHE": str(tmp_path / "datasets-cache"), "DATA": str(hub_dir(tmp_path / "CellPuzzles"))}
    return subprocess.run(["bash", "scripts/reproduce_paper.sh", str(tmp_path / "paper")], cwd=REPO, text=True,
                          capture_output=True, env={**base, **env}, check=False, timeout=600)


def test_cpu_parts_run_and_the_gpu_parts_are_skipped_with_a_message(tmp_path):
    proc = _run(tmp_path, GPU="0")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "== 3/4 skipped: hf://ncbi/Cell-o1 and hf://Qwen/Qwen2.5-7B-Instruct were not evaluated" in proc.stderr
    table = (tmp_path / "paper" / "table.md").read_text()
    assert "| o1 | the paper | - | 19.0% |" in table and "> 32.9% (o1 + over 73%)" in table
    assert "| train (4 puzzles) | 1 of 3 (33.3%) |" in table and "| reasoning (5 puzzles) | 0 of 3 (0.0%) |" in table
    assert "version `dir:" in table and "not evaluated: no CUDA GPU here" in table
    assert "test puzzles sharing an identical cell (same ranked gene list) with train: 1 (33.3%)" in proc.stdout


@pytest.mark.slow
def test_end_to_end_with_models_from_the_hub_cache(tmp_path, tiny_model_dir):
    cache = hub_cache(tiny_model_dir, tmp_path, repos=("cello-test/Cell-o1", "cello-test/tiny-base"))
    proc = _run(tmp_path, GPU="1", MODEL="hf://cello-test/Cell-o1", BASE="hf://cello-test/tiny-base@main",
                HF_HUB_CACHE=str(cache), LIMIT="2", MAX_NEW_TOKENS="4")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    table = (tmp_path / "paper" / "table.md").read_text()
    rows = [line for line in table.splitlines() if "measured here" in line]
    assert [r.split(" | ")[0] for r in rows] == ["| Cell-o1", "| tiny-base"]
    assert all(" | 2 | " in r for r in rows) and rows[0].endswith("| > 32.9% (o1 + over 73%) |")
    metrics = (tmp_path / "paper" / "eval" / "Cell-o1" / "metrics.json").read_text()
    assert '"version": "dir:' in metrics  # the eval names the imported data's version


def test_paper_table_puts_each_run_beside_the_papers_figure():
    from cello.report import PAPER, paper_table

    o = {"count": 1095, "batch_accuracy": 0.351, "batch_accuracy_ci": [0.323, 0.379], "cell_accuracy": 0.62,
         "cell_accuracy_ci": [0.6, 0.64], "format_rate": 0.99}
    text = paper_table([("Cell-o1", {"overall": o}), ("Qwen2.5-7B-Instruct", {"overall": o})],
                       data={"source": "hf://ncbi/CellPuzzles", "version": "ncbi/CellPuzzles@0a1b2c3d4e5f"})
    assert "| Cell-o1 | measured here | 1095 | 35.1% [32.3%, 37.9%] | 62.0% [60.0%, 64.0%] | 99.0% | > 32.9%" in text
    assert "| Qwen2.5-7B-Instruct | measured here | 1095 |" in text and text.count("| - |\n") == 1
    assert "version `ncbi/CellPuzzles@0a1b2c3d4e5f`" in text
    assert PAPER["Cell-o1"][0] == pytest.approx(0.3287)  # "outperforms o1 (19.0%) by over 73%"

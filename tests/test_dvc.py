"""`dvc repro` end to end on the demo, in a temporary copy of the repository."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _copy_repo(dest: Path) -> None:
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, check=True, capture_output=True, text=True
    ).stdout.split()
    for rel in files:
        src = REPO / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.invalid",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.invalid"}
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    subprocess.run(["git", "add", "-A"], cwd=dest, check=True, env=env)
    subprocess.run(["git", "commit", "-qm", "copy"], cwd=dest, check=True, env=env)


def _repro(cwd: Path) -> str:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "DVC_NO_ANALYTICS": "1"}
    proc = subprocess.run([str(BIN / "dvc"), "repro"], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


@pytest.mark.slow
def test_dvc_repro_builds_demo_then_is_a_noop_then_reruns_only_downstream(tmp_path):
    if not (BIN / "dvc").exists():
        pytest.skip("dvc is not installed in this environment")
    _copy_repo(tmp_path)
    first = _repro(tmp_path)
    for stage in ("cells", "puzzles", "split", "export@sft", "export@grpo", "export@eval"):
        assert f"Running stage '{stage}'" in first
    for split in ("train", "test"):
        for fmt in ("sft", "grpo", "eval"):
            assert (tmp_path / "data" / "records" / fmt / f"{split}.jsonl").stat().st_size > 0
    assert (tmp_path / "dvc.lock").exists()

    second = _repro(tmp_path)
    assert "Running stage" not in second

    params = yaml.safe_load((tmp_path / "params.yaml").read_text())
    params["data"]["split"]["seed"] = 1
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    third = _repro(tmp_path)
    assert "Running stage 'cells'" not in third and "Running stage 'puzzles'" not in third
    assert "Running stage 'split'" in third and "Running stage 'export@sft'" in third

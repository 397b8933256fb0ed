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
    for stage in ("cells", "split", "export@sft", "export@grpo", "export@eval"):
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
    assert "Running stage 'cells'" not in third
    assert "Running stage 'split'" in third and "Running stage 'export@sft'" in third


def _run(cwd: Path, *cmd: str) -> str:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "DVC_NO_ANALYTICS": "1",
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.invalid",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.invalid"}
    exe = str(BIN / "dvc") if cmd[0] == "dvc" else cmd[0]
    proc = subprocess.run([exe, *cmd[1:]], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{' '.join(cmd)}:\n{proc.stdout}{proc.stderr}"
    return proc.stdout


@pytest.mark.slow
def test_the_readme_dvc_loop_from_repro_to_a_clean_clone(tmp_path):
    """README "Versioned with DVC": repro, commit dvc.lock and DVC's .gitignore files, push to a
    remote; elsewhere clone, pull, and `dvc status` is clean with the same data version."""
    from cello.lineage import data_version_of, dvc_data_version

    if not (BIN / "dvc").exists():
        pytest.skip("dvc is not installed in this environment")
    work, remote, clone = tmp_path / "work", tmp_path / "remote", tmp_path / "clone"
    work.mkdir()
    _copy_repo(work)
    _repro(work)
    _run(work, "dvc", "remote", "add", "-d", "storage", str(remote))
    changed = sorted(line[3:] for line in _run(work, "git", "status", "--porcelain").splitlines())
    assert changed == [".dvc/config", "data/", "dvc.lock"]
    ignores = ["data/.gitignore", "data/records/.gitignore"]  # all that git sees of data/: DVC's .gitignore files
    assert sorted(_run(work, "git", "ls-files", "--others", "--exclude-standard", "data").split()) == ignores
    _run(work, "git", "add", "dvc.lock", *ignores, ".dvc/config")
    _run(work, "git", "commit", "-qm", "data: dvc.lock")
    _run(work, "dvc", "push")

    _run(tmp_path, "git", "clone", "-q", str(work), str(clone))
    assert not (clone / "data" / "records" / "eval").exists()  # only the .gitignore files came with git
    _run(clone, "dvc", "pull")
    assert "Data and pipelines are up to date" in _run(clone, "dvc", "status")
    version = dvc_data_version(work / "dvc.lock")["version"]
    assert dvc_data_version(clone / "dvc.lock")["version"] == version
    assert data_version_of(clone / "data" / "records" / "eval" / "test.jsonl")["version"] == version
    for kind in ("sft", "grpo", "eval"):
        rel = Path("data") / "records" / kind / "train.jsonl"
        assert (clone / rel).read_bytes() == (work / rel).read_bytes()

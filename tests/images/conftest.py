"""Fixtures for the image tests: the container engine, and the CPU images built once a session.

The `image` tests build `cello` and `cello-serve` with scripts/build-images.sh (what
`make images` runs) and run them; they skip where neither a Docker daemon nor podman exists.
A cold build takes minutes (a local Debian base where no registry answers, CPU torch, the
stack); a warm one reuses every layer and takes seconds.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from cello.k8s.images import image

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "build-images.sh"
CPU_IMAGES = {"cello": "cello", "cello-serve": "serve"}  # Dockerfile folder -> images.py key


@dataclass(frozen=True)
class Engine:
    """docker or podman, with the environment its commands need on this host."""

    name: str
    env: dict[str, str]

    def __call__(self, *args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run([self.name, *args], env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            pytest.fail(f"{self.name} {' '.join(args)} exited {proc.returncode}:\n"
                        f"{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
        return proc


def _docker_answers() -> bool:
    if not shutil.which("docker"):
        return False
    return subprocess.run(["docker", "info"], capture_output=True, timeout=60).returncode == 0


@pytest.fixture(scope="session")
def engine(tmp_path_factory) -> Engine:
    """docker when its daemon answers, else podman (with the script's containers.conf)."""
    env = dict(os.environ)
    if _docker_answers():
        return Engine("docker", env)
    if not shutil.which("podman"):
        pytest.skip("neither a Docker daemon nor podman: install one to run the image tests (.ci/run installs podman)")
    if "CONTAINERS_CONF" not in env:  # runc and the ulimits this host allows, as the build uses them
        conf = tmp_path_factory.mktemp("podman") / "containers.conf"
        conf.write_text(subprocess.run(["bash", str(SCRIPT), "--containers-conf"], capture_output=True, text=True,
                                       check=True).stdout)
        env["CONTAINERS_CONF"] = str(conf)
    return Engine("podman", env)


@pytest.fixture(scope="session")
def built_images(engine, tmp_path_factory) -> dict[str, str]:
    """`cello` and `cello-serve` built by scripts/build-images.sh; folder name -> reference."""
    log = tmp_path_factory.mktemp("build") / "build.log"
    with log.open("w") as f:
        proc = subprocess.run(
            ["bash", str(SCRIPT), *CPU_IMAGES], cwd=REPO, env={**engine.env, "ENGINE": engine.name},
            stdout=f, stderr=subprocess.STDOUT, timeout=1500,
        )
    if proc.returncode != 0:
        pytest.fail(f"scripts/build-images.sh failed ({proc.returncode}); the end of {log}:\n{log.read_text()[-5000:]}")
    return {name: image(key) for name, key in CPU_IMAGES.items()}


@pytest.fixture
def out_dir(tmp_path) -> Path:
    """An output folder the image's user (uid 1000) may write, as a cluster volume would be."""
    out = tmp_path / "out"
    out.mkdir()
    if os.geteuid() == 0:
        os.chown(out, 1000, 0)
    else:  # a rootless engine maps uid 1000 elsewhere: let anyone write
        out.chmod(0o777)
    return out

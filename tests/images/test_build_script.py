"""scripts/build-images.sh as a user sees it, without building: DRY_RUN=1 prints each command.

Checks that the host's pip configuration reaches the build (index URLs, find-links, CA bundle;
local folders mounted read-only with podman, dropped with a warning for docker), that images
are tagged as cello.k8s.images names them, and images/requirements.py.
"""

from __future__ import annotations

import os
import resource
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "build-images.sh"
sys.path.insert(0, str(REPO / "images"))
from requirements import keep_installed, write_requirements  # noqa: E402


def dry_run(tmp_path: Path, engine: str, *names: str, **env: str) -> tuple[list[list[str]], str]:
    """Run the script with DRY_RUN=1 under a pip configuration of our own; (commands, log)."""
    if not shutil.which(engine):
        pytest.skip(f"{engine} is not installed (the script checks that the engine exists)")
    (tmp_path / "home").mkdir(exist_ok=True)
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "CELLO_IMAGE", "CONTAINERS_CONF"))}
    base.update(HOME=str(tmp_path / "home"), XDG_CONFIG_HOME=str(tmp_path / "home"), PYTHON=sys.executable,
                DRY_RUN="1", ENGINE=engine, BASE_IMAGE="localhost/base:test", TORCH_INDEX_URL="", **env)
    proc = subprocess.run(["bash", str(SCRIPT), *names], cwd=REPO, env=base, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    commands = [shlex.split(line[2:]) for line in proc.stderr.splitlines() if line.startswith("+ ")]
    return commands, proc.stderr


def build_args(command: list[str]) -> dict[str, str]:
    return dict(command[i + 1].split("=", 1) for i, a in enumerate(command) if a == "--build-arg")


def mounts(command: list[str]) -> list[str]:
    return [command[i + 1] for i, a in enumerate(command) if a == "-v"]


@pytest.fixture
def pip_setup(tmp_path) -> dict[str, Path]:
    """A pip.conf naming a local wheel folder, a local file index and a remote index, and a CA."""
    wheels, index, ca = tmp_path / "wheels", tmp_path / "mirror" / "simple", tmp_path / "ca.pem"
    wheels.mkdir()
    index.mkdir(parents=True)
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    conf = tmp_path / "pip.conf"
    conf.write_text(f"[global]\nfind-links = {wheels}\n"
                    f"extra-index-url = file://{index} https://pypi.example.test/simple\ncert = {ca}\n")
    return {"conf": conf, "wheels": wheels, "index": index, "ca": ca}


def test_podman_build_sees_the_hosts_pip_setup(tmp_path, pip_setup):
    commands, _ = dry_run(tmp_path, "podman", "cello", PIP_CONFIG_FILE=str(pip_setup["conf"]),
                          CELLO_IMAGE_REGISTRY="registry.test/ml")
    [build] = [c for c in commands if c[:2] == ["podman", "build"]]
    args = build_args(build)
    assert args["PIP_FIND_LINKS"] == str(pip_setup["wheels"])
    assert args["PIP_EXTRA_INDEX_URL"] == f"file://{pip_setup['index']} https://pypi.example.test/simple"
    assert args["PIP_CERT"] == "/etc/ssl/certs/ca-certificates.crt"
    assert args["BASE_IMAGE"] == "localhost/base:test"
    mirror = pip_setup["index"].parent  # a file index's files sit beside simple/
    assert set(mounts(build)) == {
        f"{pip_setup['wheels']}:{pip_setup['wheels']}:ro",
        f"{mirror}:{mirror}:ro",
        f"{pip_setup['ca']}:/etc/ssl/certs/ca-certificates.crt:ro",
    }
    assert build[build.index("-t") + 1] == "registry.test/ml/cello:0.1.0"
    assert build[build.index("-f") + 1] == "images/cello/Dockerfile"
    assert "--format" in build and build[build.index("--format") + 1] == "docker"  # keeps HEALTHCHECK


def test_docker_build_drops_local_folders_it_cannot_mount(tmp_path, pip_setup):
    commands, log = dry_run(tmp_path, "docker", "cello-serve", PIP_CONFIG_FILE=str(pip_setup["conf"]))
    [build] = [c for c in commands if c[:2] == ["docker", "build"]]
    args = build_args(build)
    assert args["PIP_EXTRA_INDEX_URL"] == "https://pypi.example.test/simple"
    assert "PIP_FIND_LINKS" not in args and not mounts(build)
    assert f"{pip_setup['wheels']} is a local folder" in log


def test_environment_overrides_pip_config_and_push_pushes(tmp_path, pip_setup):
    commands, _ = dry_run(tmp_path, "podman", "cello", PIP_CONFIG_FILE=str(pip_setup["conf"]),
                          PIP_INDEX_URL="https://index.example.test/simple", PIP_FIND_LINKS="", PUSH="1")
    build, push = commands
    assert build_args(build)["PIP_INDEX_URL"] == "https://index.example.test/simple"
    assert push == ["podman", "push", build[build.index("-t") + 1]]


def test_an_image_without_a_dockerfile_is_named_with_the_fix(tmp_path):
    if not shutil.which("podman") and not shutil.which("docker"):
        pytest.skip("no engine installed")
    env = {k: v for k, v in os.environ.items() if k != "ENGINE"}
    proc = subprocess.run(["bash", str(SCRIPT), "cello-gui"], cwd=REPO,
                          env={**env, "DRY_RUN": "1", "PYTHON": sys.executable},
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "no images/cello-gui/Dockerfile" in proc.stderr and "cello-serve" in proc.stderr


def test_containers_conf_stays_within_this_hosts_limits():
    conf = subprocess.run(["bash", str(SCRIPT), "--containers-conf"], capture_output=True, text=True, check=True).stdout
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if nofile != resource.RLIM_INFINITY:
        assert f'"nofile={nofile}:{nofile}"' in conf
    assert ('runtime = "runc"' in conf) == bool(shutil.which("runc"))


def test_requirements_are_written_by_extra(tmp_path):
    paths = write_requirements(str(REPO / "pyproject.toml"), str(tmp_path))
    assert {p.stem for p in paths} == {"base", "data", "train", "serve", "pipeline", "gpu", "dev"}
    names = {group: {r.split(">")[0].split("=")[0] for r in (tmp_path / f"{group}.txt").read_text().split()}
             for group in ("base", "serve", "pipeline")}
    assert {"numpy", "pydantic"} <= names["base"]
    assert "kserve" in names["serve"]
    assert {"kfp", "kfp-kubernetes", "kubernetes", "kubeflow"} <= names["pipeline"]


def test_keep_installed_keeps_the_base_images_versions():
    installed = ["torch==2.11.0+cu128", "vllm==0.24.0", "Transformers==5.6.0"]
    pins = ["transformers==5.24.0", "trl==1.16.0", "# a comment", "kfp==2.17.3"]
    assert keep_installed(installed, pins) == ["torch==2.11.0+cu128", "vllm==0.24.0", "Transformers==5.6.0",
                                               "trl==1.16.0", "kfp==2.17.3"]

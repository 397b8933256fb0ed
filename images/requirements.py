"""Requirements and constraints for the image builds (standard library only, Python 3.11+).

    python3 images/requirements.py pyproject.toml DIR        # DIR/base.txt, DIR/<extra>.txt
    python3 -m pip list --format=freeze | python3 images/requirements.py --keep - constraints.txt

The first form writes Cello's dependencies (base.txt) and those of each extra (data.txt,
serve.txt, ...), read from pyproject.toml. The images copy the files they need into their last
stage and install them before Cello's own wheel (--no-deps): a layer is rebuilt only when its
files' contents change, so neither a code change nor an edit elsewhere in pyproject.toml
reinstalls a gigabyte of dependencies.

The second form (cello-train, built on the vLLM image) prints constraints in which every
package the base image already has keeps its installed version (torch, vLLM and what they
pinned stay as shipped), and every other package gets the version tested on CPU.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import tomllib


def requirements(pyproject: str) -> dict[str, list[str]]:
    """{"base": the dependencies, <extra>: its dependencies, ...}."""
    with open(pyproject, "rb") as f:
        project = tomllib.load(f)["project"]
    groups = {"base": list(project.get("dependencies", []))}
    groups.update(project.get("optional-dependencies", {}))
    return groups


def write_requirements(pyproject: str, out_dir: str) -> list[Path]:
    """One file per group of `requirements(pyproject)`, in `out_dir`; returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for group, reqs in requirements(pyproject).items():
        path = out / f"{group}.txt"
        path.write_text("".join(f"{r}\n" for r in reqs))
        paths.append(path)
    return paths


def _name(line: str) -> str | None:
    """The normalized project name of a `name==version` line (PEP 503), None for other lines."""
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*==", line)
    return re.sub(r"[-_.]+", "-", match.group(1)).lower() if match else None


def keep_installed(installed: list[str], pins: list[str]) -> list[str]:
    """`installed` (pip freeze lines) as they are, then the `pins` of packages not among them."""
    kept = [line.strip() for line in installed if _name(line)]
    have = {_name(line) for line in kept}
    return kept + [line.strip() for line in pins if _name(line) and _name(line) not in have]


def _read(path: str) -> list[str]:
    if path == "-":
        return sys.stdin.read().splitlines()
    with open(path) as f:
        return f.read().splitlines()


if __name__ == "__main__":
    args = sys.argv[1:]
    if len(args) == 3 and args[0] == "--keep":
        print(*keep_installed(_read(args[1]), _read(args[2])), sep="\n")
    elif len(args) == 2 and not args[0].startswith("-"):
        write_requirements(args[0], args[1])
    else:
        raise SystemExit(__doc__)

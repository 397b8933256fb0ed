"""The project's source at a revision: what the data step runs `dvc repro` in.

A pipeline run pins its data to a revision of the Cello project (its params.yaml, dvc.yaml
and DVC config). `revision` names a commit, tag or branch of `repo` (a git URL, or a local
clone); an empty revision means the working tree of a local `repo` as it is now, uncommitted
edits included (what a local run wants), recorded with a digest of its files.

    from cello.pipeline.source import snapshot
    info = snapshot(".", "", dest)          # the working tree
    info = snapshot("https://github.com/org/cello.git", "v0.2.0", dest)
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cello.errors import InputError


@dataclass
class SourceInfo:
    repo: str
    requested: str  # the revision asked for ("" = the working tree)
    revision: str | None  # the commit sha
    dirty: bool  # the working tree differed from the commit
    tree: str  # digest of the files copied (identifies a dirty tree)

    @property
    def key(self) -> str:
        """What identifies the content: the commit when clean, else the files' digest."""
        return self.revision if self.revision and not self.dirty else f"tree-{self.tree}"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "key": self.key}


def _git(args: list[str], *, cwd: str | os.PathLike | None = None, what: str) -> str:
    proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        msg = f"{what} failed: git {' '.join(args)}: {proc.stderr.strip() or proc.stdout.strip()}"
        raise InputError(msg)
    return proc.stdout


def _tree_digest(root: Path, files: list[str]) -> str:
    h = hashlib.sha256()
    for rel in sorted(files):
        h.update(rel.encode() + b"\0" + (root / rel).read_bytes() + b"\0")
    return h.hexdigest()[:16]


def snapshot(repo: str, revision: str, dest: str | os.PathLike) -> SourceInfo:
    """Copy `repo` at `revision` (or its working tree when `revision` is "") into `dest`."""
    dest = Path(dest)
    if not repo:
        msg = "no source repository given; pass the Cello project's git URL or local path (pipeline parameter `repo`)."
        raise InputError(msg)
    if not revision:
        root = Path(repo)
        if not root.is_dir():
            msg = (f"{repo}: not a local directory; an empty revision means a local working tree. "
                   "Give a revision for a remote repository.")
            raise InputError(msg)
        listed = _git(["ls-files", "-z", "-co", "--exclude-standard"], cwd=root, what=f"listing the files of {repo}")
        files = [f for f in listed.split("\0") if f and (root / f).is_file()]
        for rel in files:
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(root / rel, dest / rel)
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=False)
        sha = head.stdout.strip() if head.returncode == 0 else None
        dirty = bool(_git(["status", "--porcelain"], cwd=root, what="git status")) if sha else True
        return SourceInfo(str(root.resolve()), "", sha, dirty, _tree_digest(dest, files))
    _git(["clone", "--quiet", "--no-checkout", repo, str(dest)], what=f"cloning {repo}")
    _git(["checkout", "--quiet", revision], cwd=dest, what=f"checking out {revision!r} of {repo}")
    sha = _git(["rev-parse", "HEAD"], cwd=dest, what="git rev-parse").strip()
    files = [f for f in _git(["ls-files", "-z"], cwd=dest, what="git ls-files").split("\0") if f]
    return SourceInfo(repo, revision, sha, False, _tree_digest(dest, files))

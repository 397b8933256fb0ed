"""Atomic file outputs, small JSON helpers, and append-only journals.

Every stage writes through `atomic_path`: the output appears under its final name only when
the stage succeeded, so a crash never leaves a half-written file that a later stage (or DVC)
could mistake for a good one. Long runs that must survive a crash (eval predictions, distilled
traces) append to a journal instead (`append_journal`, `read_journal`): a rerun reads what is
there, drops a torn last line, and goes on.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, is_dir: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of `path`; move it to `path` on success, delete it on error.

    For a directory output (`is_dir=True`), the temporary directory is created and an existing
    `path` is replaced as a whole.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    if is_dir:
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
        tmp.chmod(0o755)
    else:
        fd, name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
        os.close(fd)
        tmp = Path(name)
        tmp.chmod(0o644)  # mkstemp makes 0600; outputs are read by other users/steps (shared volumes)
    try:
        yield tmp
        if is_dir:
            if final.exists():
                shutil.rmtree(final) if final.is_dir() else final.unlink()
            tmp.rename(final)
        else:
            os.replace(tmp, final)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise


def write_json(obj: Any, path: str | os.PathLike) -> None:
    """Write `obj` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")


def write_jsonl(records: Iterable[dict], path: str | os.PathLike) -> int:
    """Write one JSON object per line, atomically; return the number of records."""
    n = 0
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        for rec in records:
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
            n += 1
    return n


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Read a JSONL file; blank lines are skipped."""
    from cello.errors import InputError

    out = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as exc:
                msg = f"{path}:{lineno}: not valid JSON ({exc.msg}); fix or remove that line."
                raise InputError(msg) from exc
    return out


# ---------------------------------------------------------------- append-only journals
def append_journal(path: str | os.PathLike, records: Iterable[dict]) -> None:
    """Append records as JSON lines, flushed and fsynced: a crash loses at most this call's
    records, and can leave only a torn last line (which `read_journal` drops)."""
    data = "".join(json.dumps(rec, ensure_ascii=False) + "\n" for rec in records)
    if not data:
        return
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def read_journal(path: str | os.PathLike, *, repair: bool = False, what: str = "record",
                 fix: str = "remove that line") -> list[dict]:
    """Records of an append-only JSONL journal (each a JSON object with an "id"); [] if absent.

    A last line that is not such a record (a crash mid-write) is skipped with a warning, and cut
    from the file when `repair`, so that appends start on a fresh line; a complete last record
    whose newline was lost gets it back. A bad line before the last is damage, not a crash: an
    `InputError` naming the line, the `what` it should be and the `fix`.
    """
    from cello.errors import InputError

    path = Path(path)
    if not path.exists():
        return []
    data = path.read_bytes()
    lines = data.split(b"\n")
    records, good_end, pos = [], 0, 0
    for lineno, raw in enumerate(lines, 1):
        end = pos + len(raw) + 1
        if raw.strip():
            try:
                rec = json.loads(raw)
                if not isinstance(rec, dict) or "id" not in rec:
                    msg = f"not a {what} (no 'id')"
                    raise ValueError(msg)
            except ValueError as exc:
                if any(rest.strip() for rest in lines[lineno:]):
                    msg = f"{path}:{lineno}: not a valid {what} ({exc}); {fix}."
                    raise InputError(msg) from exc
                log.warning("%s:%d: incomplete last line (an interrupted run?); ignoring it", path, lineno)
                break
            records.append(rec)
        good_end = min(end, len(data))
        pos = end
    if repair and good_end < len(data):
        with open(path, "r+b") as fh:
            fh.truncate(good_end)
    if repair and good_end and not data[:good_end].endswith(b"\n"):
        with open(path, "ab") as fh:  # a complete record whose newline was lost
            fh.write(b"\n")
    return records

"""The published CellPuzzles on the Hugging Face Hub as a first-class input, and `hf://` references.

    cello data import hf://ncbi/CellPuzzles -o data/hub                 # reasoning, train, test at once
    cello data import hf://ncbi/CellPuzzles@<commit>:test -o data/hub   # one split, pinned
    cello data import path/to/CellPuzzles -o data/hub                   # a local copy in the Hub layout

A reference is `hf://ORG/NAME[@REVISION][:SPLIT]`; a local directory in the Hub's dataset
layout (`data/<split>-00000-of-00001.parquet`, fields system_msg, user_msg, assistant_msg) is
read through the same `datasets.load_dataset` call. The Hub's revision is resolved to its commit
first and the download pinned to it, so what lineage.json records is exactly what was read
(a local directory is recorded by the hash of its data files). OUT receives:

- splits/<split>.parquet: the puzzles table of each split (cells, candidates, answer), for the
  leakage audit and the baseline;
- records/sft/train.jsonl (from `reasoning`: the messages verbatim, distilled traces kept),
  records/grpo/train.jsonl (`train`), records/eval/test.jsonl (`test`): the published prompts
  verbatim, so a model sees exactly what the paper's models saw;
- audit.json: test puzzles sharing an identical cell with train / reasoning;
- lineage.json: the source, its revision or content hash, the data version, the counts.

The same module resolves `hf://` model references (the published `ncbi/Cell-o1`):
`fetch_hub_model` downloads a snapshot for the transformers and vLLM backends, and
`HubRef.kserve_uri` writes the form KServe's storage initializer reads (`hf://ORG/NAME:REV`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cello.data.prompt import PromptTemplate
from cello.errors import CelloError, ConfigError, InputError
from cello.lineage import HUB_LINEAGE

log = logging.getLogger(__name__)

SCHEME = "hf://"
FIELDS = ("system_msg", "user_msg", "assistant_msg")
# Published split -> (record set, file): reasoning holds the distilled traces for SFT.
RECORD_SETS = {"reasoning": ("sft", "train.jsonl"), "train": ("grpo", "train.jsonl"), "test": ("eval", "test.jsonl")}
_REF = re.compile(r"^(?P<repo>[\w.-]+/[\w.-]+)(?:@(?P<rev>[\w./-]+?))?(?::(?P<split>[\w.-]+))?$")
_OFFLINE_FIX = ("download it where the network reaches the Hub (`hf download --repo-type dataset {repo} "
                "--local-dir DIR`) and import DIR instead")


@dataclass(frozen=True)
class HubRef:
    """A Hub repository, at a revision (None: the default branch), optionally one split."""

    repo: str
    revision: str | None = None
    split: str | None = None

    def __str__(self) -> str:
        return SCHEME + self.repo + (f"@{self.revision}" if self.revision else "") + (
            f":{self.split}" if self.split else "")

    def kserve_uri(self) -> str:
        """The storageUri KServe's storage initializer reads: hf://ORG/NAME[:REVISION]."""
        return SCHEME + self.repo + (f":{self.revision}" if self.revision else "")


def is_hub_uri(text: Any) -> bool:
    return isinstance(text, str) and text.strip().startswith(SCHEME)


def parse_hub_uri(text: str, *, model: bool = False) -> HubRef:
    """Read `hf://ORG/NAME[@REVISION][:SPLIT]`; for a model (`model=True`) the part after ':' is
    a revision too (KServe's `hf://ORG/NAME:HASH`) and there is no split."""
    body = text.strip()[len(SCHEME):] if is_hub_uri(text) else ""
    m = _REF.match(body)
    if not m or (model and m["rev"] and m["split"]):
        form = "hf://ORG/NAME[@REVISION]" if model else "hf://ORG/NAME[@REVISION][:SPLIT]"
        msg = f"{text!r} is not a Hub reference; write {form}, e.g. hf://ncbi/{'Cell-o1' if model else 'CellPuzzles'}."
        raise ConfigError(msg)
    if model:
        return HubRef(m["repo"], m["rev"] or m["split"])
    return HubRef(m["repo"], m["rev"], m["split"])


def is_hub_dir(path: str | os.PathLike) -> bool:
    """Whether `path` is a directory in the Hub's dataset layout (Parquet files under data/)."""
    return Path(path).is_dir() and any((Path(path) / "data").glob("*.parquet"))


def is_hub_source(text: str) -> bool:
    """A Hub reference, or a Hub-layout directory (optionally DIR:SPLIT): what `import_hub` reads."""
    return is_hub_uri(text) or is_hub_dir(text) or (":" in text and is_hub_dir(text.rpartition(":")[0]))


def _hub_error(exc: BaseException, repo: str, *, kind: str) -> InputError | None:
    """A Hub failure as an error that says which case it is and what to do; None: not a Hub failure."""
    from huggingface_hub import constants
    from huggingface_hub import errors as E

    page = f"https://huggingface.co/{'datasets/' if kind == 'dataset' else ''}{repo}"
    name = type(exc).__name__
    if isinstance(exc, E.GatedRepoError):
        msg = (f"{page}: no access (a gated repository); accept its terms on that page, then set HF_TOKEN "
               "or run `hf auth login`.")
    elif isinstance(exc, E.RevisionNotFoundError):
        msg = f"{page}: no such revision ({exc}); give a branch, tag or commit of that repository after '@'."
    elif isinstance(exc, E.RepositoryNotFoundError) or name == "DatasetNotFoundError":
        msg = (f"{page}: not found, or private without access; check the name, or log in "
               "(HF_TOKEN / `hf auth login`).")
    elif isinstance(exc, (ConnectionError, TimeoutError, E.OfflineModeIsEnabled, E.LocalEntryNotFoundError)) or (
            "connect" in name.lower() or "timeout" in name.lower()):
        fix = _OFFLINE_FIX.format(repo=repo) if kind == "dataset" else (
            f"download it where the network reaches the Hub (`hf download {repo} --local-dir DIR`) and pass DIR")
        offline = " (HF_HUB_OFFLINE is set)" if constants.HF_HUB_OFFLINE else ""
        msg = f"{SCHEME}{repo}: cannot reach the Hugging Face Hub{offline}: {exc}. No network? {fix}."
    else:
        return None
    return InputError(msg)


def resolve_revision(repo: str, revision: str | None, *, kind: str = "dataset") -> str:
    """The commit `revision` (None: the default branch) of a Hub repository points to now."""
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        info = (api.dataset_info if kind == "dataset" else api.model_info)(repo, revision=revision)
    except Exception as exc:
        err = _hub_error(exc, repo, kind=kind)
        if err is None:
            raise
        raise err from exc
    return str(info.sha)


def content_hash(folder: str | os.PathLike) -> str:
    """sha256 over the data files of a local Hub-layout directory (relative paths and bytes)."""
    folder = Path(folder)
    h = hashlib.sha256()
    for path in sorted(p for p in (folder / "data").rglob("*") if p.is_file()):
        h.update(path.relative_to(folder).as_posix().encode() + b"\0")
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


@dataclass
class HubSplits:
    """What `load_hub_splits` read: records per split (file order) and where they came from."""

    records: dict[str, list[dict[str, Any]]]
    origin: dict[str, Any] = field(default_factory=dict)


def _source(source: str | os.PathLike) -> tuple[HubRef | None, Path | None, str | None]:
    text = str(source)
    if is_hub_uri(text):
        return parse_hub_uri(text), None, None
    path, split = Path(text), None
    if not path.exists() and ":" in path.name:  # DIR:SPLIT
        name, _, split = path.name.rpartition(":")
        path = path.with_name(name)
    if not is_hub_dir(path):
        msg = (f"{text}: neither hf://ORG/NAME[@REVISION][:SPLIT] nor a directory in the Hub's dataset layout "
               "(data/<split>-00000-of-00001.parquet); pass the published dataset, e.g. hf://ncbi/CellPuzzles.")
        raise InputError(msg)
    return None, path, split


def load_hub_splits(source: str | os.PathLike, *, cache_dir: str | os.PathLike | None = None) -> HubSplits:
    """Read a published dataset (a Hub reference or a local Hub-layout directory, optionally
    `:SPLIT`) with `datasets.load_dataset`: every split, or the one named."""
    import datasets

    ref, path, split = _source(source)
    if ref is not None:
        sha = resolve_revision(ref.repo, ref.revision)
        where, split = ref.repo, ref.split
        origin = {"source": str(ref), "repo": ref.repo, "revision": ref.revision or "default branch", "commit": sha,
                  "version": f"{ref.repo}@{sha[:12]}"}
    else:
        digest = content_hash(path)
        where, sha = str(path), None
        origin = {"source": str(source), "path": str(path.resolve()), "content_sha256": digest,
                  "version": f"dir:{digest[:16]}"}
    try:
        loaded = datasets.load_dataset(where, revision=sha, cache_dir=None if cache_dir is None else str(cache_dir))
    except Exception as exc:
        err = _hub_error(exc, where, kind="dataset") if ref is not None else None
        if err is not None:
            raise err from exc
        if isinstance(exc, CelloError):
            raise
        msg = f"{source}: the datasets library could not read it ({type(exc).__name__}: {exc})."
        raise InputError(msg) from exc
    available = list(loaded)
    wanted = [split] if split else [s for s in available if s in RECORD_SETS]
    if split and split not in available:
        msg = f"{source}: no split {split!r}; it has {available}. Name one of them after ':' or none for all."
        raise InputError(msg)
    if not wanted:
        msg = f"{source}: none of the splits {list(RECORD_SETS)} (it has {available}); is this CellPuzzles?"
        raise InputError(msg)
    ignored = sorted(set(available) - set(wanted))
    if ignored and not split:
        log.warning("%s: split(s) %s not imported (Cello reads %s)", source, ignored, list(RECORD_SETS))
    records = {}
    for name in wanted:
        missing = [f for f in FIELDS if f not in loaded[name].column_names]
        if missing:
            msg = (f"{source}: split {name!r} lacks field(s) {missing} (it has {loaded[name].column_names}); "
                   f"published CellPuzzles records carry {list(FIELDS)}.")
            raise InputError(msg)
        records[name] = loaded[name].to_list()
    origin["splits"] = {name: len(recs) for name, recs in records.items()}
    return HubSplits(records, origin)



def _messages(rec: dict[str, Any], *, assistant: bool) -> list[dict[str, str]]:
    """The published messages verbatim (a blank system message is left out)."""
    roles = [("system", "system_msg"), ("user", "user_msg")] + ([("assistant", "assistant_msg")] if assistant else [])
    return [{"role": role, "content": str(rec[key])} for role, key in roles
            if role != "system" or str(rec.get(key) or "").strip()]


def _record(rec: dict[str, Any], row: dict[str, Any], *, kind: str) -> dict[str, Any]:
    """One training/eval record (the shapes of `cello.data.records`) with the published prompt."""
    from cello.data import schema as S
    from cello.data.records import to_list

    base = {"id": str(row[S.PUZZLE_ID]), "dataset": str(row[S.DATASET]), "n": int(row[S.N])}
    answer, candidates = to_list(row[S.ANSWER]), to_list(row[S.CANDIDATES])
    if kind == "sft":
        return {**base, "messages": _messages(rec, assistant=True)}
    if kind == "grpo":
        return {**base, "prompt": _messages(rec, assistant=False), "answer": answer, "candidates": candidates}
    return {"id": base["id"], "dataset": base["dataset"], "group": str(row[S.GROUP]), "n": base["n"],
            "messages": _messages(rec, assistant=False), "answer": answer, "candidates": candidates}


@dataclass
class HubImport:
    """What `import_hub` wrote: counts per split, the audit, where it came from."""

    out: Path
    counts: dict[str, int]
    origin: dict[str, Any]
    audit: dict[str, Any]
    traces: dict[str, int]

    def render(self) -> str:
        lines = [f"imported {self.origin['source']} ({self.origin['version']}) -> {self.out}"]
        for split, n in self.counts.items():
            kind, name = RECORD_SETS[split]
            lines.append(f"  {split}: {n} puzzles -> splits/{split}.parquet, records/{kind}/{name}")
        if self.traces:
            lines.append(f"  reasoning traces in the paper's format: {self.traces['valid']} of {self.traces['total']}; "
                         f"answer correct: {self.traces['correct']}")
        for side, rep in self.audit.items():
            pct = 100.0 * rep["test_sharing_identical_cell"] / max(rep["test_puzzles"], 1)
            lines.append(f"  audit vs {side}: {rep['test_sharing_identical_cell']} of {rep['test_puzzles']} "
                         f"test puzzles ({pct:.1f}%) share an identical cell")
        return "\n".join(lines)


def import_hub(source: str | os.PathLike, out_dir: str | os.PathLike, *, dataset: str, template: PromptTemplate,
               cache_dir: str | os.PathLike | None = None) -> HubImport:
    """Import a published dataset into OUT (layout in the module doc), atomically as a whole.

    `template` parses each user_msg into the structured puzzle (cells, candidates) that the
    audit and the baseline need; the records keep the published messages verbatim."""
    import pandas as pd

    from cello._io import atomic_path, write_json, write_jsonl
    from cello.data.records import records_to_puzzles
    from cello.data.split import audit_overlap
    from cello.scoring import score

    loaded = load_hub_splits(source, cache_dir=cache_dir)
    tables: dict[str, pd.DataFrame] = {}
    traces: dict[str, int] = {}
    with atomic_path(out_dir, is_dir=True) as tmp:
        for split, recs in loaded.records.items():
            recs = [{**r, "id": r.get("id") or f"{split}-{i:05d}"} for i, r in enumerate(recs)]
            table = records_to_puzzles(recs, dataset=dataset, template=template, source=f"{source} (split {split})")
            tables[split] = table
            (tmp / "splits").mkdir(exist_ok=True)
            table.to_parquet(tmp / "splits" / f"{split}.parquet", index=False)
            kind, name = RECORD_SETS[split]
            rows = table.to_dict("records")
            write_jsonl((_record(r, row, kind=kind) for r, row in zip(recs, rows, strict=True)),
                        tmp / "records" / kind / name)
            if split == "reasoning":
                scored = [score(str(r["assistant_msg"]), row["answer"]) for r, row in zip(recs, rows, strict=True)]
                traces = {"total": len(scored), "valid": sum(s.valid for s in scored),
                          "correct": sum(bool(s.exact) and s.valid for s in scored)}
        audit = {side: audit_overlap(tables[side], tables["test"]).to_dict()
                 for side in ("train", "reasoning") if side in tables and "test" in tables}
        if audit:
            write_json(audit, tmp / "audit.json")
        counts = {split: len(t) for split, t in tables.items()}
        write_json({"hub": loaded.origin, "dataset": dataset, "counts": counts, "traces": traces or None},
                   tmp / HUB_LINEAGE)
    log.info("imported %s (%s): %s -> %s", source, loaded.origin["version"], counts, out_dir)
    return HubImport(Path(out_dir), counts, loaded.origin, audit, traces)


def fetch_hub_model(uri: str, *, cache_dir: str | os.PathLike | None = None) -> Path:
    """A local snapshot of the model `hf://ORG/NAME[@REVISION]` (downloaded once, then cached)."""
    from huggingface_hub import snapshot_download

    ref = parse_hub_uri(uri, model=True)
    try:
        return Path(snapshot_download(ref.repo, revision=ref.revision, cache_dir=cache_dir))
    except Exception as exc:
        err = _hub_error(exc, ref.repo, kind="model")
        if err is None:
            raise
        raise err from exc


__all__ = [
    "SCHEME", "FIELDS", "RECORD_SETS", "HubRef", "HubSplits", "HUB_LINEAGE", "is_hub_uri", "parse_hub_uri",
    "is_hub_dir", "is_hub_source", "resolve_revision", "content_hash", "load_hub_splits", "HubImport", "import_hub",
    "fetch_hub_model",
]

"""Model cards: the README.md every checkpoint Cello writes (SFT, merged, GRPO) carries, in the
Hugging Face format (YAML metadata, then Markdown), so it renders on the Hub unchanged.

The card says what the checkpoint was made from: the data version (the DVC md5 of the records
it trained on), the git revision, the settings that differ from Cello's defaults and the
training curves' last values. `cello eval` and the gate add their own sections (metrics with
intervals; the decision); rerunning either replaces its section, so a card never repeats one.

    from cello.card import write_card, update_section, read_card
    write_card("runs/grpo/model", stage="grpo", base_model="runs/sft-merged", records="data/records/grpo",
               changed={"epochs": 2}, curves={"reward": [[10, 0.4]]})
    update_section("runs/grpo/model", "eval", "## Evaluation\\n...")
    read_card("runs/grpo/model")["cello"]["data_version"]
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from cello import __version__
from cello._io import atomic_path
from cello.lineage import data_version_of, git_revision

log = logging.getLogger(__name__)

__all__ = ["CARD", "write_card", "read_card", "update_section", "find_card_dir", "changed_settings"]

CARD = "README.md"
MARK = "<!-- cello:card -->"  # what tells a Cello card from any other README
TAGS = ["cello", "cell-type-annotation", "single-cell", "cellpuzzles", "cell-o1"]
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_FRONT = re.compile(r"\A---\n(.*?)\n---\n", re.DOTALL)


def _section_marks(name: str) -> tuple[str, str]:
    return f"<!-- cello:{name} -->", f"<!-- /cello:{name} -->"


def read_card(model_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The YAML metadata of the Cello card in `model_dir`; None when there is none."""
    path = Path(model_dir) / CARD
    if not path.is_file():
        return None
    text = path.read_text(encoding="utf-8")
    m = _FRONT.match(text)
    if MARK not in text or not m:
        return None
    return yaml.safe_load(m.group(1)) or {}


def find_card_dir(model: str | os.PathLike | None) -> Path | None:
    """The folder holding the Cello card of `model` (a checkpoint dir or a training run's OUT,
    with a backend prefix such as hf: or vllm: allowed); None for URLs and other models."""
    if not model:
        return None
    text = str(model)
    if "://" in text:
        return None
    text = re.sub(r"^(hf|vllm|transformers):", "", text)
    for folder in (Path(text), Path(text) / "model"):
        if read_card(folder) is not None:
            return folder
    return None


def changed_settings(cfg: Any, *, skip: tuple[str, ...] = ("model",)) -> dict[str, Any]:
    """The fields of a pydantic config that differ from its class defaults, as dotted keys."""
    def flat(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}{k}.") if isinstance(v, Mapping) and v else {f"{prefix}{k}": v})
        return out

    now, default = flat(cfg.model_dump()), flat(type(cfg)().model_dump())
    return {k: v for k, v in now.items() if k not in skip and default.get(k, object()) != v}


def _base_model(base: str | None) -> str | None:
    """A Hub id for the metadata: `base` itself, or what a local base's own card names."""
    if not base:
        return None
    meta = read_card(base) or read_card(Path(base) / "model") or {}
    if meta.get("base_model"):
        return str(meta["base_model"])
    return base if _HUB_ID.match(base) and not Path(base).exists() else None


def _front_matter(meta: dict[str, Any]) -> str:
    return "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True).strip() + "\n---\n"


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def write_card(
    model_dir: str | os.PathLike, *, stage: str, base_model: str | None, records: str | os.PathLike | None,
    changed: Mapping[str, Any] | None = None, curves: Mapping[str, list] | None = None, adapter: bool = False,
    parent: Mapping[str, Any] | None = None, license: str = "other",
) -> Path:
    """Write `model_dir`/README.md (atomically), replacing any card there (PEFT writes a blank one).

    `records`: what the model trained on (its DVC data version is looked up from the dvc.lock
    above it); `parent`: the card metadata of the checkpoint this one was made from (a merge)."""
    data = data_version_of(records) if records else None
    parent_info = (parent or {}).get("cello") or {}
    if changed is None:
        changed = parent_info.get("settings_changed") or {}
    if curves is None:
        curves = {k: [[0, v]] for k, v in (parent_info.get("curves_last") or {}).items()}
    if data is None and parent_info.get("data_version"):
        data = {"version": parent_info["data_version"], "records": parent_info.get("records"),
                "md5": parent_info.get("records_md5")}
    git = git_revision()
    hub_base = _base_model(base_model) or (parent or {}).get("base_model")
    meta: dict[str, Any] = {}
    if hub_base:
        meta["base_model"] = hub_base
    meta.update({
        "datasets": [f"cellpuzzles-{data['version']}" if data else "cellpuzzles"],
        "library_name": "peft" if adapter else "transformers",
        "license": license,
        "pipeline_tag": "text-generation",
        "tags": [*TAGS, stage, *(["trl", "grpo"] if stage == "grpo" else ["trl", "sft"] if stage == "sft" else [])],
        "cello": {
            "stage": stage, "data_version": data and data["version"], "records": data and data.get("records"),
            "records_md5": data and data.get("md5"), "git_revision": git["revision"], "git_dirty": git["dirty"],
            "cello_version": __version__, "base_model_path": str(base_model) if base_model else None,
            "settings_changed": dict(changed or {}),
            "curves_last": {k: pts[-1][1] for k, pts in (curves or {}).items() if pts},
        },
    })
    lines = [MARK, f"# {Path(model_dir).resolve().name}: Cello {stage} checkpoint", "",
             "A Cell-o1-style cell-type annotator (CellPuzzles: assign N candidate cell types to N cells of one "
             "donor) trained with [Cello](https://arxiv.org/abs/2506.02911)'s recipe.", "", "## Provenance", "",
             f"- stage: `{stage}`; base model: `{base_model or '?'}`",
             "- data version: " + (f"`{data['version']}` (DVC md5 of `{data.get('records')}`: `{data.get('md5')}`)"
                                   if data else "not versioned (no dvc.lock lists the training records)"),
             f"- code: git `{git['revision'] or 'unknown'}`{' (uncommitted changes)' if git['dirty'] else ''}, "
             f"cello {__version__}"]
    if parent_info:
        lines.append(f"- made from a `{parent_info.get('stage')}` checkpoint at git "
                     f"`{parent_info.get('git_revision')}`")
    lines += ["", "## Settings that differ from Cello's defaults", ""]
    if changed:
        lines += ["| setting | value |", "|---|---|",
                  *(f"| `{k}` | `{_cell(v)}` |" for k, v in sorted(changed.items()))]
    else:
        lines.append("None: the defaults, which follow the released Cell-o1 scripts (docs/paper-fidelity.md).")
    if curves:
        lines += ["", "## Training curves (last values)", "", "| curve | step | value |", "|---|--:|--:|"]
        lines += [f"| {name} | {pts[-1][0]:g} | {pts[-1][1]:.4g} |" for name, pts in curves.items() if pts]
    path = Path(model_dir) / CARD
    with atomic_path(path) as tmp:
        tmp.write_text(_front_matter(meta) + "\n" + "\n".join(lines) + "\n", encoding="utf-8")
    log.info("model card -> %s (data version %s)", path, data and data["version"])
    return path


def update_section(model_dir: str | os.PathLike, name: str, markdown: str) -> Path | None:
    """Put `markdown` into the card's section `name` (eval, gate), replacing what an earlier run
    wrote there; None (and nothing written) when `model_dir` holds no Cello card."""
    if read_card(model_dir) is None:
        log.info("%s: no Cello model card; the %s section is not recorded", model_dir, name)
        return None
    path = Path(model_dir) / CARD
    text = path.read_text(encoding="utf-8")
    start, end = _section_marks(name)
    block = f"{start}\n{markdown.strip()}\n{end}"
    if start in text and end in text:
        text = text[:text.index(start)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path

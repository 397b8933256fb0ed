"""Merge a LoRA/DoRA adapter into its base model: one standalone checkpoint for GRPO and serving.

vLLM, KServe and GRPO's reference model all want a plain model directory; this writes one
(weights + tokenizer + generation config) that loads with `from_pretrained` alone.

    cello train merge outputs/sft -o outputs/sft-merged          # OUT of `cello train sft`
    cello train merge outputs/sft/model --base Qwen/Qwen2.5-7B-Instruct -o outputs/sft-merged

A directory that already holds a full model (SFT without LoRA) is re-saved as is, so the
pipeline is the same either way.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from cello._io import atomic_path
from cello.errors import InputError
from cello.llm.device import PRECISIONS, precision_dtype
from cello.train.common import MODEL_SUBDIR

log = logging.getLogger(__name__)

_DTYPES = ("auto", *PRECISIONS)


def _adapter_dir(path: Path) -> Path:
    if (path / MODEL_SUBDIR).is_dir():  # the OUT dir of `cello train sft`
        path = path / MODEL_SUBDIR
    if not (path / "adapter_config.json").exists() and not (path / "config.json").exists():
        msg = (f"{path}: neither an adapter (adapter_config.json) nor a model (config.json); "
               "pass the output of `cello train sft`.")
        raise InputError(msg)
    return path


def load_adapted(adapter: str | os.PathLike, *, base: str | None = None, dtype: str = "auto"):
    """(model, tokenizer): base + adapter as a PeftModel, or a full model when there is no adapter."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if dtype not in _DTYPES:
        msg = f"dtype={dtype!r}; use one of {_DTYPES}."
        raise InputError(msg)
    path = _adapter_dir(Path(adapter))
    torch_dtype = "auto" if dtype == "auto" else precision_dtype(dtype)  # auto: the checkpoint's own dtype
    tokenizer = AutoTokenizer.from_pretrained(path)
    if not (path / "adapter_config.json").exists():
        return AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype), tokenizer
    from peft import PeftModel

    base = base or json.loads((path / "adapter_config.json").read_text()).get("base_model_name_or_path")
    if not base:
        msg = f"{path}/adapter_config.json names no base model; pass --base (the model SFT started from)."
        raise InputError(msg)
    base_model = AutoModelForCausalLM.from_pretrained(base, dtype=torch_dtype)
    return PeftModel.from_pretrained(base_model, str(path)), tokenizer


def merge_adapter(
    adapter: str | os.PathLike, out_dir: str | os.PathLike, *, base: str | None = None, dtype: str = "auto"
) -> Path:
    """Write base + adapter merged into `out_dir` (atomically); return it."""
    from peft import PeftModel

    model, tokenizer = load_adapted(adapter, base=base, dtype=dtype)
    merged = model.merge_and_unload() if isinstance(model, PeftModel) else model
    merged.eval()
    with atomic_path(out_dir, is_dir=True) as tmp:
        tmp.chmod(0o755)
        merged.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    n = sum(p.numel() for p in merged.parameters())
    log.info("merged %s (%s parameters) -> %s", adapter, f"{n:,}", out_dir)
    _card(_adapter_dir(Path(adapter)), Path(out_dir), base=base)
    return Path(out_dir)


def _card(source: Path, out_dir: Path, *, base: str | None) -> None:
    """The merged model's card: the source checkpoint's provenance (data version, settings,
    curves) carried over, with the base model the adapter names."""
    from cello.card import read_card, write_card

    parent = read_card(source) or {}
    config = source / "adapter_config.json"
    base = base or (json.loads(config.read_text()).get("base_model_name_or_path") if config.is_file() else None)
    write_card(out_dir, stage="merged", base_model=base or (parent.get("cello") or {}).get("base_model_path"),
               records=None, parent=parent)

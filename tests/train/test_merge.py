"""Merge: the merged checkpoint computes the same logits as base + adapter."""

from __future__ import annotations

import json

import pytest
import torch

from cello.errors import InputError
from cello.train.merge import load_adapted, merge_adapter


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory, tiny_model_dir):
    """A LoRA adapter with non-zero weights on every linear layer, plus trained (tied) embeddings."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False,
                     modules_to_save=["embed_tokens"], ensure_weight_tying=True, task_type="CAUSAL_LM")
    model = get_peft_model(base, cfg)
    with torch.no_grad():  # a "trained" embedding copy, so modules_to_save matters too
        emb = model.base_model.model.model.embed_tokens.modules_to_save["default"].weight
        emb.add_(0.05 * torch.randn_like(emb))
    out = tmp_path_factory.mktemp("adapter") / "model"
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(out)
    return out


def _logits(model, tokenizer):
    enc = tokenizer(
        ["Cell 1: CD3E, LYZ\nB cell", "<answer>T cell | NK cell</answer>"], return_tensors="pt", padding=True
    )
    with torch.no_grad():
        return model.eval()(**enc).logits


def test_merged_logits_equal_base_plus_adapter(tmp_path, adapter_dir, tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    peft_model, tok = load_adapted(adapter_dir)
    expected = _logits(peft_model, tok)
    plain = _logits(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tok)
    assert (expected - plain).abs().max() > 1e-2  # the adapter really changes the output

    out = merge_adapter(adapter_dir.parent, tmp_path / "merged")  # the OUT dir of `cello train sft`
    assert not (out / "adapter_config.json").exists()
    merged = AutoModelForCausalLM.from_pretrained(out)
    torch.testing.assert_close(_logits(merged, AutoTokenizer.from_pretrained(out)), expected, atol=1e-4, rtol=1e-4)
    assert json.loads((out / "config.json").read_text())["model_type"] == "qwen2"
    from cello.card import read_card

    card = read_card(out)  # the SFT card's provenance, carried over
    assert card["cello"]["stage"] == "merged" and card["library_name"] == "transformers"


def test_full_model_is_resaved(tmp_path, tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = merge_adapter(tiny_model_dir, tmp_path / "copy")
    tok = AutoTokenizer.from_pretrained(out)
    torch.testing.assert_close(
        _logits(AutoModelForCausalLM.from_pretrained(out), tok),
        _logits(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tok),
    )


def test_not_a_model_dir(tmp_path):
    with pytest.raises(InputError, match="neither an adapter"):
        merge_adapter(tmp_path, tmp_path / "x")

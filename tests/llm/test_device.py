"""cello.llm.device: one rule for device, dtype and attention, checked on a CPU machine
(CUDA and flash-attn are faked where the rule needs them).

    .venv/bin/pytest tests/llm/test_device.py -q
"""

from __future__ import annotations

import pytest
import torch

from cello.errors import ConfigError
from cello.llm import device as D
from cello.train.common import device_settings


@pytest.fixture
def gpu(monkeypatch):
    """A visible CUDA GPU without bfloat16 (an older card) and with flash-attn installed."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    monkeypatch.setattr(D, "is_available", lambda module: module == "flash_attn")


def test_cpu_choices(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert D.resolve_device("auto") == "cpu" and D.resolve_device("cpu") == "cpu"
    with pytest.raises(ConfigError, match="no CUDA GPU"):
        D.resolve_device("cuda:0")
    assert D.resolve_dtype("auto", "cpu") == torch.float32
    assert D.resolve_dtype("bfloat16", "cpu") == torch.bfloat16  # an explicit dtype is passed on
    assert D.pick_attention("cpu") == "sdpa" and D.pick_attention("cpu", "eager") == "eager"
    assert not D.bf16_supported("cpu") and not D.flash_attention_usable("cpu")


def test_precision_names():
    assert [D.precision_dtype(p) for p in D.PRECISIONS] == [torch.bfloat16, torch.float16, torch.float32]


def test_an_older_gpu_generates_in_float16_but_trains_in_fp32(gpu):
    assert D.resolve_device("auto") == "cuda"
    assert D.resolve_dtype("auto", "cuda") == torch.float16
    s = device_settings("auto", "auto")
    assert (s["bf16"], s["fp16"], s["use_cpu"], s["dtype"]) == (False, False, False, torch.float32)
    assert s["attn_implementation"] == D.pick_attention("cuda") == "flash_attention_2"


def test_a_bf16_gpu_uses_bfloat16_everywhere(gpu, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert D.resolve_dtype("auto", "cuda") == torch.bfloat16
    s = device_settings("auto", "sdpa")
    assert (s["bf16"], s["dtype"], s["attn_implementation"]) == (True, torch.bfloat16, "sdpa")

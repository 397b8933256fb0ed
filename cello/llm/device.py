"""Where a model runs and in what precision: one rule for generation, training and merging.

'auto' means the same everywhere: a CUDA GPU when one is visible; bfloat16 on a GPU that
supports it; flash_attention_2 on a GPU when flash-attn imports, sdpa otherwise; float32 on
CPU. Where they differ, it is on purpose: generation falls back to float16 on an older GPU,
training to fp32 (fp16 mixed precision is asked for by name, never picked).

    from cello.llm.device import pick_attention, precision_dtype, resolve_device, resolve_dtype
    dev = resolve_device("auto")                      # 'cuda' or 'cpu'
    resolve_dtype("auto", dev), pick_attention(dev)   # e.g. (torch.float32, 'sdpa') on CPU
    precision_dtype("bf16")                           # torch.bfloat16 (training's names)
"""

from __future__ import annotations

from cello.deps import is_available
from cello.errors import ConfigError

# Training's precision names -> torch dtype names.
PRECISIONS = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def resolve_device(device: str) -> str:
    """'auto' -> 'cuda' when a GPU is visible, else 'cpu'; anything else is checked and passed on."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        msg = f"device={device!r} but no CUDA GPU is visible; use device='cpu' or 'auto'."
        raise ConfigError(msg)
    return device


def bf16_supported(device: str) -> bool:
    """Whether `device` is a CUDA GPU that runs bfloat16 (asks CUDA only for a CUDA device)."""
    import torch

    return device.startswith("cuda") and torch.cuda.is_bf16_supported()


def resolve_dtype(dtype: str, device: str):
    """'auto' -> bfloat16 on a GPU that supports it (float16 on older ones), float32 on CPU."""
    import torch

    if dtype != "auto":
        return getattr(torch, dtype)
    if device.startswith("cuda"):
        return torch.bfloat16 if bf16_supported(device) else torch.float16
    return torch.float32


def precision_dtype(precision: str):
    """The torch dtype of a precision name ('bf16', 'fp16', 'fp32')."""
    import torch

    return getattr(torch, PRECISIONS[precision])


def flash_attention_usable(device: str) -> bool:
    """flash_attention_2 needs a CUDA device and the flash-attn package."""
    return device.startswith("cuda") and is_available("flash_attn")


def pick_attention(device: str, requested: str | None = None) -> str:
    """flash_attention_2 on a GPU when the package imports, else sdpa (an explicit choice wins)."""
    if requested:
        return requested
    return "flash_attention_2" if flash_attention_usable(device) else "sdpa"

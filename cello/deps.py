"""Optional dependencies: probe without importing, import with an error that names the extra.

Heavy or platform-specific packages (vllm, flash-attn, deepspeed, kfp, kserve, the Kubeflow SDK)
are imported inside the functions that need them, through these two, so `cello --help` and every
stage that does not use them stay fast, and a missing one says which extra to install.

    from cello.deps import is_available, require
    if is_available("flash_attn"): ...
    kfp = require("kfp", "pipeline")          # MissingDependencyError: pip install 'cello[pipeline]'
"""

from __future__ import annotations

from cello.errors import MissingDependencyError


def require(module: str, extra: str):
    """Import an optional dependency, or raise an error that names the extra to install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        msg = f"`{module}` is not installed: run `pip install 'cello[{extra}]'` ({exc})."
        raise MissingDependencyError(msg) from exc


def is_available(module: str) -> bool:
    """True when `module` can be imported; imports nothing."""
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False

"""Seeds for numpy generators: the same seed and name give the same stream on any machine.

Python's `hash()` changes between processes, so names are hashed with SHA-256 instead.
"""

from __future__ import annotations

import hashlib


def stable_seed(seed: int, name: str) -> list[int]:
    """Seed material for `np.random.default_rng` from `seed` and a stable hash of `name`."""
    digest = hashlib.sha256(name.encode("utf-8")).digest()
    return [int(seed) % 2**63, int.from_bytes(digest[:8], "little")]

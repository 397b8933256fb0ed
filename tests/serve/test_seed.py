"""Sampling seeds at the serve boundary: bounded to 0..2**63-1 in SamplingParams (the OpenAI route
checks the same bound), and the transformers backend never overflows torch's 64-bit seed, even
for a SamplingParams built with model_copy(update=...) (which skips validation)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from cello.config import SamplingParams


@pytest.mark.parametrize("seed", [2**63, 2**64, -1, -(2**63) - 1])
def test_sampling_params_bound_the_seed(seed):
    with pytest.raises(ValidationError, match="seed"):
        SamplingParams(seed=seed)


def test_sampling_params_accept_the_int64_range():
    assert SamplingParams(seed=2**63 - 1).seed == 2**63 - 1
    assert SamplingParams(seed=0).seed == 0 and SamplingParams(seed=None).seed is None


def test_transformers_backend_takes_any_seed(model_dir):
    from cello.llm import make_backend

    with make_backend(str(model_dir), device="cpu") as backend:
        for seed in (2**64, -(2**63) - 1, 2**63 - 1):
            params = SamplingParams(max_new_tokens=2, temperature=0.8).model_copy(update={"seed": seed})
            (gen,) = backend.generate_full([[{"role": "user", "content": "Cell 1: CD3E"}]], params)
            assert len(gen.texts) == 1 and gen.completion_tokens <= 2

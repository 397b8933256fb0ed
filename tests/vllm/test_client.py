"""cello.llm's OpenAI client against vLLM's own OpenAI route (the route the KServe transformer,
`cello eval --model URL` and the distill teacher all go through).

What only a real vLLM does, and the client now handles: it refuses n > 1 at temperature 0 and a
max_tokens above its max_model_len (both 400), it requires the bearer token on /v1 but not on
/health, and it reports usage and finish reasons itself.
"""

from __future__ import annotations

import httpx
import pytest

from cello.config import SamplingParams
from cello.errors import UpstreamError
from cello.llm import make_backend
from tests.vllm.conftest import CONTEXT, SERVED

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

CONV = [{"role": "system", "content": "Assign each cell a type."},
        {"role": "user", "content": "Cell 1: CD3E, CD3D, IL7R\nCell 2: MS4A1, CD79A\nCandidates: B cell, T cell"}]


def test_health_is_open_and_the_api_needs_the_token(vllm):
    assert httpx.get(f"{vllm.base}/health", timeout=5).status_code == 200
    assert httpx.get(f"{vllm.url}/models", timeout=5).status_code == 401
    r = httpx.get(f"{vllm.url}/models", headers={"Authorization": f"Bearer {vllm.api_key}"}, timeout=5)
    assert r.status_code == 200 and r.json()["data"][0]["id"] == SERVED


def test_greedy_n_sampling_stop_strings_and_usage(vllm, api_key):
    with make_backend(vllm.url, max_retries=0) as b:
        assert b.model == SERVED
        (greedy,) = b.generate_full([CONV], SamplingParams(max_new_tokens=8, temperature=0.0, n=3))
        assert len(set(greedy.texts)) == 1 and len(greedy.texts) == 3  # one asked for, copied
        assert greedy.prompt_tokens > 10 and 3 <= greedy.completion_tokens <= 24
        (sampled,) = b.generate_full([CONV], SamplingParams(max_new_tokens=8, temperature=1.0, n=3, seed=1))
        assert len(sampled.texts) == 3 and all(r in ("stop", "length") for r in sampled.finish_reasons)
        (again,) = b.generate_full([CONV], SamplingParams(max_new_tokens=8, temperature=1.0, n=3, seed=1))
        assert again.texts == sampled.texts  # seeded
        text = greedy.texts[0]
        stop = text[len(text) // 2:][:3]
        if stop.strip():
            (cut,) = b.generate_full([CONV], SamplingParams(max_new_tokens=8, temperature=0.0, stop=[stop]))
            assert cut.texts[0] == text[: text.find(stop)] and cut.finish_reasons == ["stop"]
    assert b.usage.requests >= 4


def test_vllm_scores_its_tokens_as_transformers_does(vllm, vllm_model):
    """The same weights, chat template and tokens both ways: the log-probabilities vLLM reports
    for its greedy tokens match transformers' on the same ids, and each is (near) the argmax.
    (Greedy texts themselves may part after a few tokens: a random model has near-ties, and
    the two runtimes' float kernels break them differently.)"""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    body = {"model": SERVED, "messages": CONV, "max_tokens": 8, "temperature": 0.0, "logprobs": True,
            "top_logprobs": 1, "return_tokens_as_token_ids": True}
    r = httpx.post(f"{vllm.url}/chat/completions", json=body, headers={"Authorization": f"Bearer {vllm.api_key}"},
                   timeout=60)
    assert r.status_code == 200, r.text
    steps = r.json()["choices"][0]["logprobs"]["content"]
    ids = [int(s["token"].removeprefix("token_id:")) for s in steps]
    tok, model = AutoTokenizer.from_pretrained(vllm_model), AutoModelForCausalLM.from_pretrained(vllm_model)
    prompt = tok.apply_chat_template(CONV, add_generation_prompt=True, return_dict=True)["input_ids"]
    with torch.no_grad():
        logits = model(torch.tensor([prompt + ids])).logits[0, len(prompt) - 1:-1].float()
    logp = torch.log_softmax(logits, dim=-1)
    for i, (tid, step) in enumerate(zip(ids, steps, strict=True)):
        assert abs(logp[i, tid].item() - step["logprob"]) < 1e-2, (i, logp[i, tid].item(), step["logprob"])
        assert logp[i, tid].item() >= logp[i].max().item() - 1e-2


def test_max_new_tokens_above_the_context_is_capped(vllm, vllm_model, api_key):
    """A budget above the server's context (vLLM: 400 "max_tokens ... cannot be greater than
    max_model_len") is capped at the context the server lists; vLLM then stops at the context.
    The prompt fills most of the context, so that little is left to generate."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(vllm_model)
    unit = "CD3E, MS4A1, LYZ, NKG7, "
    per_unit = len(tok(unit * 100)["input_ids"]) / 100
    long = [{"role": "user", "content": unit * int((CONTEXT - 200) / per_unit)}]
    with make_backend(vllm.url, max_retries=0) as b:
        (gen,) = b.generate_full([long], SamplingParams(max_new_tokens=CONTEXT + 1000, temperature=0.0))
    assert CONTEXT - 400 < gen.prompt_tokens < CONTEXT
    assert gen.prompt_tokens + gen.completion_tokens <= CONTEXT
    assert gen.finish_reasons[0] in ("stop", "length")


def test_a_wrong_key_is_a_clear_error(vllm, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "not-the-token")
    with make_backend(vllm.url, max_retries=0) as b, pytest.raises(UpstreamError, match=r"401.*OPENAI_API_KEY"):
        b.generate([CONV])

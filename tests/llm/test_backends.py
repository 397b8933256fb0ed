"""cello.llm backends: transformers in process, OpenAI HTTP over real loopback, vLLM (GPU only)."""

from __future__ import annotations

import logging
import threading
import time

import pytest

from cello.config import BackendConfig, SamplingParams
from cello.data.prompt import PromptTemplate
from cello.deps import is_available
from cello.errors import CelloError, ConfigError, InputError, MissingDependencyError
from cello.llm import OpenAIHTTPBackend, TransformersBackend, make_backend, parse_spec
from tests.llm_server import serve_openai

P = PromptTemplate()
CONVS = [
    P.messages("donor A", [["CD3E", "LYZ"], ["MS4A1", "CD79A"]], ["B cell", "T cell"]),
    P.messages("donor B", [["NKG7"]] * 3, ["B cell", "NK cell", "T cell"]),
    [{"role": "user", "content": "Cell 1: LYZ"}],
    P.messages("", [["PPBP", "PF4"], ["HBB"], ["CD14"], ["FCGR3A"]], ["a", "b", "c", "d"]),
    [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "CD3E?"},
    ],
]
GREEDY = SamplingParams(max_new_tokens=8)
FAST = {"backoff_s": 0.01, "backoff_max_s": 0.05}


@pytest.fixture(scope="module")
def hf(tiny_model_dir):
    return TransformersBackend(tiny_model_dir, batch_size=4)


# ------------------------------------------------------------------ spec parsing and factory
@pytest.mark.parametrize(
    ("spec", "kind", "target", "model"),
    [
        ("http://127.0.0.1:8000/v1", "openai-http", "http://127.0.0.1:8000/v1", None),
        ("openai:gpt-x@https://api.example.com/v1", "openai-http", "https://api.example.com/v1", "gpt-x"),
        ("openai:https://h/openai/v1", "openai-http", "https://h/openai/v1", None),
        ("vllm:/models/m", "vllm", "/models/m", None),
        ("hf:/models/m", "transformers", "/models/m", None),
        ("hf://ncbi/Cell-o1@abc", "transformers", "hf://ncbi/Cell-o1@abc", None),
        ("vllm:hf://ncbi/Cell-o1", "vllm", "hf://ncbi/Cell-o1", None),
    ],
)
def test_parse_spec(spec, kind, target, model):
    s = parse_spec(spec)
    assert (s.kind, s.target, s.model) == (kind, target, model)


def test_parse_spec_errors_list_the_forms(tmp_path):
    assert parse_spec(str(tmp_path)).kind == "transformers"
    for bad in ["", "no/such/dir", "openai:model-without-url"]:
        with pytest.raises(ConfigError, match="http"):
            parse_spec(bad)


def test_hub_models_load_from_the_hub_cache_and_fail_clearly_offline(hub_model):
    b = make_backend(hub_model, device="cpu")
    assert isinstance(b, TransformersBackend) and b.model_dir.name == "0123456789abcdef0123456789abcdef01234567"
    assert b.generate([CONVS[0]], GREEDY)[0]  # the snapshot generates
    with pytest.raises(InputError, match=r"cannot reach the Hugging Face Hub.*hf download cello-test/absent"):
        make_backend("hf://cello-test/absent")
    with pytest.raises(ConfigError, match="not a Hub reference"):
        parse_spec("hf://ncbi")


def test_make_backend_from_config_and_overrides(tiny_model_dir):
    b = make_backend(BackendConfig(spec=str(tiny_model_dir), batch_size=3), device="cpu")
    assert isinstance(b, TransformersBackend) and b.batch_size == 3 and b.attn_implementation == "sdpa"
    with pytest.raises(ConfigError, match="no_such_setting"):
        make_backend(str(tiny_model_dir), no_such_setting=1)
    with pytest.raises(InputError, match="config.json"):
        make_backend(f"hf:{tiny_model_dir.parent}")


# ------------------------------------------------------------------ transformers
def test_greedy_is_deterministic_and_depends_on_prompt(hf):
    a, b = hf.generate(CONVS, GREEDY), hf.generate(CONVS, GREEDY)
    assert a == b
    assert all(len(x) == 1 and isinstance(x[0], str) for x in a)
    assert len({x[0] for x in a}) > 1  # the random model still reacts to its prompt


def test_batched_equals_unbatched_for_greedy(hf, tiny_model_dir):
    one = TransformersBackend(tiny_model_dir, batch_size=1)
    assert hf.generate(CONVS, GREEDY) == one.generate(CONVS, GREEDY)
    assert hf.generate(CONVS[::-1], GREEDY) == hf.generate(CONVS, GREEDY)[::-1]  # input order kept


def test_sampling_n_seeded(hf):
    params = SamplingParams(max_new_tokens=8, temperature=1.0, top_p=0.95, n=3, seed=7)
    a = hf.generate(CONVS[:2], params)
    assert [len(x) for x in a] == [3, 3]
    assert a == hf.generate(CONVS[:2], params)
    assert len(set(a[0])) > 1
    assert a != hf.generate(CONVS[:2], params.model_copy(update={"seed": 8}))


def test_wraps_objects_in_memory(hf):
    b = TransformersBackend.from_objects(hf.model, hf.tokenizer, batch_size=2)
    assert b.generate(CONVS[:3], GREEDY) == hf.generate(CONVS[:3], GREEDY)


def test_greedy_n_gives_n_copies(hf):
    one = hf.generate(CONVS[:2], GREEDY)
    assert hf.generate(CONVS[:2], GREEDY.model_copy(update={"n": 2})) == [x * 2 for x in one]


def test_token_counts_stop_strings_and_progress(hf):
    seen = []
    full = hf.generate_full(CONVS, SamplingParams(max_new_tokens=6), progress=seen.append)
    assert sum(seen) == len(CONVS)
    for g in full:
        assert 1 <= g.completion_tokens <= 6 and g.prompt_tokens > 10
        assert g.finish_reasons[0] in {"stop", "length"}
    text = hf.generate(CONVS[:1], SamplingParams(max_new_tokens=12))[0][0]
    stop = text[3:5]
    cut = hf.generate(CONVS[:1], SamplingParams(max_new_tokens=12, stop=[stop]))[0][0]
    assert cut == text[: text.find(stop)]
    before = hf.usage.conversations
    hf.generate(CONVS[:2], GREEDY)
    assert hf.usage.conversations == before + 2


def test_rejects_bad_conversations(hf):
    assert hf.generate([], GREEDY) == []
    with pytest.raises(InputError, match="list of conversations"):
        hf.generate(CONVS[0], GREEDY)
    with pytest.raises(InputError, match="conversation 1, message 0"):
        hf.generate([CONVS[0], [{"role": "user"}]], GREEDY)


# ------------------------------------------------------------------ OpenAI-compatible HTTP over loopback
def test_http_serving_the_tiny_model_matches_in_process(hf, tiny_model_dir):
    with serve_openai(model_dir=tiny_model_dir) as url, make_backend(url, concurrency=3) as b:
        full = b.generate_full(CONVS, GREEDY)
        assert b.model == "tiny"  # asked from GET /models
    assert [g.texts for g in full] == hf.generate(CONVS, GREEDY)
    assert all(g.prompt_tokens > 0 and g.completion_tokens > 0 for g in full)
    assert b.usage.completion_tokens == sum(g.completion_tokens for g in full)
    assert all(r.body["max_tokens"] == 8 and r.body["temperature"] == 0 for r in url.chat_requests)


def test_http_retries_429_and_500_then_succeeds():
    with serve_openai(fail_first=[429, 500], retry_after=0) as url:
        b = OpenAIHTTPBackend(url, model="tiny", max_retries=3, **FAST)
        out = b.generate([[{"role": "user", "content": "Cell 1: CD3E"}]], GREEDY)
    assert out == [["echo: Cell 1: CD3E"]]
    assert len(url.chat_requests) == 3 and b.usage.requests == 3


def test_http_honours_retry_after():
    times = []

    def responder(messages, body):
        return "ok"

    with serve_openai(responder=responder, fail_first=[503], retry_after=0.3) as url:
        b = OpenAIHTTPBackend(url, model="tiny", max_retries=1, backoff_s=0.0, backoff_max_s=5)
        t0 = time.monotonic()
        assert b.generate([[{"role": "user", "content": "x"}]]) == [["ok"]]
        times.append(time.monotonic() - t0)
    assert times[0] >= 0.3  # waited as told (a lower bound, not a timing benchmark)


def test_http_always_failing_gives_clear_error_after_bounded_retries():
    with serve_openai(fail_always=500) as url:
        b = OpenAIHTTPBackend(url, model="tiny", max_retries=2, **FAST)
        with pytest.raises(CelloError) as err:
            b.generate([[{"role": "user", "content": "x"}]] * 2)
        assert len(url.chat_requests) <= 2 * 3
    text = str(err.value)
    assert f"{url}/chat/completions" in text and "3 attempt(s)" in text and "HTTP 500" in text
    assert "scripted failure" in text  # the body excerpt
    assert err.value.status_code == 500  # an outage, told apart from a refused request


def test_http_client_errors_are_not_retried():
    with serve_openai() as url:
        b = OpenAIHTTPBackend(url, model="other-model", max_retries=5, **FAST)
        with pytest.raises(CelloError, match="404.*does not exist") as err:
            b.generate([[{"role": "user", "content": "x"}]])
        assert len(url.chat_requests) == 1
    assert err.value.status_code == 404


def test_http_timeout_is_retried_then_reported():
    with serve_openai(delay_s=1.0) as url:
        b = OpenAIHTTPBackend(url, model="tiny", timeout_s=0.2, max_retries=1, **FAST)
        either_order = r"timed out after 0.2 s.*2 attempt\(s\)|2 attempt\(s\).*timed out after 0.2 s"
        with pytest.raises(CelloError, match=either_order):
            b.generate([[{"role": "user", "content": "x"}]])
    assert len(url.chat_requests) == 2


def test_http_connection_refused():
    with serve_openai() as url:
        pass  # the server is gone: its port refuses connections
    b = OpenAIHTTPBackend(url, model="tiny", max_retries=1, **FAST)
    with pytest.raises(CelloError, match="connection failed") as err:
        b.generate([[{"role": "user", "content": "x"}]])
    assert err.value.status_code is None


def test_http_sends_api_key_from_env_and_never_logs_it(monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("CELLO_TEST_KEY", "s3cret-value")
    with serve_openai(api_key="s3cret-value") as url:
        b = make_backend(f"openai:tiny@{url}", api_key_env="CELLO_TEST_KEY", **FAST)
        assert b.generate([[{"role": "user", "content": "x"}]]) == [["echo: x"]]
        assert url.chat_requests[0].headers["authorization"] == "Bearer s3cret-value"
        monkeypatch.delenv("CELLO_TEST_KEY")
        nokey = make_backend(f"openai:tiny@{url}", api_key_env="CELLO_TEST_KEY", **FAST)
        with pytest.raises(CelloError, match=r"401.*\$CELLO_TEST_KEY") as err:
            nokey.generate([[{"role": "user", "content": "x"}]])
    assert "s3cret" not in str(err.value) and "s3cret" not in caplog.text
    assert "authorization" not in {k.lower() for k in url.chat_requests[-1].headers}


def test_http_requests_run_concurrently_and_keep_order():
    barrier = threading.Barrier(3, timeout=10)  # breaks unless 3 requests are in flight together

    def responder(messages, body):
        barrier.wait()
        return messages[-1]["content"].upper()

    convs = [[{"role": "user", "content": f"cell {i}"}] for i in range(6)]
    with serve_openai(responder=responder) as url:
        b = OpenAIHTTPBackend(url, concurrency=3, **FAST)
        seen = []
        out = b.generate(convs, progress=seen.append)
    assert out == [[f"CELL {i}"] for i in range(6)] and sum(seen) == 6


def test_http_n_when_server_ignores_it_and_stop_strings():
    with serve_openai(responder=lambda m, b: "abc STOP def", honour_n=False) as url:
        b = OpenAIHTTPBackend(url, **FAST)
        out = b.generate([[{"role": "user", "content": "x"}]], SamplingParams(n=3, temperature=1.0, stop=["STOP"]))
        assert out == [["abc "] * 3] and len(url.chat_requests) == 3
        assert url.chat_requests[0].body["n"] == 3 and url.chat_requests[0].body["stop"] == ["STOP"]


def test_http_greedy_n_asks_once_and_copies():
    """vLLM answers 400 to n > 1 at temperature 0: greedy asks for one completion, copied n times."""
    with serve_openai(responder=lambda m, b: "same") as url:
        b = OpenAIHTTPBackend(url, **FAST)
        (gen,) = b.generate_full([[{"role": "user", "content": "x"}]], SamplingParams(n=3, temperature=0.0))
        assert gen.texts == ["same"] * 3 and len(gen.finish_reasons) == 3
        assert len(url.chat_requests) == 1 and url.chat_requests[0].body["n"] == 1


def test_http_kserve_route_prefix():
    with serve_openai(prefix="/openai/v1", model_name="cello") as url:
        assert url.endswith("/openai/v1")
        b = make_backend(url)
        assert b.generate([[{"role": "user", "content": "y"}]]) == [["echo: y"]] and b.model == "cello"


# ------------------------------------------------------------------ vLLM
@pytest.mark.skipif(is_available("vllm"), reason="vllm is installed")
def test_vllm_missing_gives_clear_error(tmp_path):
    with pytest.raises(MissingDependencyError, match=r"cello\[gpu\]"):
        make_backend(f"vllm:{tmp_path}")


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:  # pragma: no cover
        return False


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda(), reason="needs a CUDA GPU")
def test_transformers_on_gpu_bf16(tiny_model_dir):
    import torch

    b = TransformersBackend(tiny_model_dir, device="cuda")
    assert b.dtype in (torch.bfloat16, torch.float16)
    out = b.generate(CONVS, GREEDY)
    assert len(out) == len(CONVS) and out == b.generate(CONVS, GREEDY)


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda() or not is_available("vllm"), reason="needs a CUDA GPU and vllm")
def test_vllm_engine_generates(tmp_path):
    from cello.config import TinyModelConfig
    from cello.llm.tiny import build_tiny_model

    cfg = TinyModelConfig(hidden_size=128, num_heads=2, num_kv_heads=1, init_std=0.2)
    model = build_tiny_model(tmp_path / "m", cfg=cfg)
    with make_backend(f"vllm:{model}", gpu_memory_utilization=0.3, max_model_len=2048) as b:
        out = b.generate_full(CONVS, SamplingParams(max_new_tokens=8, temperature=1.0, n=2, seed=0))
    assert [len(g.texts) for g in out] == [2] * len(CONVS)
    assert all(0 < g.completion_tokens <= 16 for g in out)

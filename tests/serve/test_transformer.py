"""Upstream (KServe transformer) mode: `cello serve` in front of an OpenAI-compatible server.

- against a real OpenAI-compatible server on loopback (the tiny model behind /openai/v1, with
  a token the transformer forwards): the same completions as the in-process `cello serve`;
- against a scripted upstream started the way KServe starts a transformer (--predictor_host,
  --model_name, --http_port): valid answers pass through unrepaired, a hanging upstream gives
  504 after serve.timeout_s, a failing one 503, a refusing one 400, a down one not-ready.
"""

from __future__ import annotations

import json
import time

import httpx

from tests.serve.conftest import TOKEN, puzzle


def test_transformer_matches_the_upstream_model(servers, client):
    transformer = servers["transformer"]
    body = {"instances": [puzzle(0)]}
    via = httpx.post(transformer.url + "/v1/models/cello:predict", json=body, timeout=60)  # no auth on this one
    assert via.status_code == 200, via.text
    direct = client.post("/v1/models/cello:predict", json=body)
    assert direct.status_code == 200
    (a,), (b,) = via.json()["predictions"], direct.json()["predictions"]
    assert a["completion"] == b["completion"]  # greedy, same prompt, same model
    assert a["assignment"] == b["assignment"] and a["valid"] == b["valid"]


def test_transformer_v2_and_readiness(servers):
    transformer = servers["transformer"]
    assert httpx.get(transformer.url + "/v1/models/cello").status_code == 200
    body = {"inputs": [{"name": "puzzles", "datatype": "BYTES", "shape": [1], "data": [json.dumps(puzzle(3))]}]}
    r = httpx.post(transformer.url + "/v2/models/cello/infer", json=body, timeout=60)
    assert r.status_code == 200, r.text
    assert json.loads(r.json()["outputs"][0]["data"][0])["id"] == "p3"


def test_llm_http_backend_speaks_to_the_openai_route(server, monkeypatch):
    """Cello's own OpenAI client (cello.llm) against `cello serve`'s /openai/v1 route."""
    from cello.llm import SamplingParams, make_backend

    monkeypatch.setenv("CELLO_TEST_KEY", TOKEN)
    with make_backend(f"{server.url}/openai/v1", api_key_env="CELLO_TEST_KEY", max_retries=0) as backend:
        (gen,) = backend.generate_full(
            [[{"role": "user", "content": "Cell 1: CD3E"}]], SamplingParams(max_new_tokens=3)
        )
    assert backend.model == "cello" and gen.completion_tokens == 3 and gen.finish_reasons == ["length"]


def test_transformer_has_no_openai_route(servers):
    r = httpx.post(servers["transformer"].url + "/openai/v1/chat/completions", json={"model": "cello", "messages": []})
    assert r.status_code == 404


def test_valid_upstream_answer_is_kept(servers, fake_upstream):
    fake_upstream["mode"] = "ok"
    r = httpx.post(servers["gateway"].url + "/v1/models/cello:predict", json={"instances": [puzzle(7)]}, timeout=30)
    assert r.status_code == 200, r.text
    (result,) = r.json()["predictions"]
    assert result["valid"] is True and result["repaired"] is False
    assert result["assignment"] == {
        "c1": "B cell",
        "c2": "CD4-positive, alpha-beta T cell",
        "cell_3": "classical monocyte",
    }
    sent = fake_upstream["requests"][-1]
    assert sent["model"] == "fake" and sent["max_tokens"] == 16 and sent["temperature"] == 0.0
    assert sent["messages"][0]["role"] == "system" and "Cell 1: MS4A1, CD79A, CD19" in sent["messages"][1]["content"]


def test_upstream_failures_map_to_clear_statuses(servers, fake_upstream):
    url = servers["gateway"].url + "/v1/models/cello:predict"
    body = {"instances": [puzzle()]}
    try:
        fake_upstream["mode"] = "hang"
        r = httpx.post(url, json=body, timeout=30)
        assert r.status_code == 504 and "serve.timeout_s" in r.json()["error"]
        fake_upstream["mode"] = "fail"
        r = httpx.post(url, json=body, timeout=30)
        assert r.status_code == 503 and "unavailable" in r.json()["error"]
        fake_upstream["mode"] = "refuse"
        r = httpx.post(url, json=body, timeout=30)
        assert r.status_code == 400 and "prompt is too long" in r.json()["error"]
        fake_upstream["mode"] = "down"
        time.sleep(1.2)  # the readiness of the upstream is cached for 1 s
        assert httpx.get(servers["gateway"].url + "/v1/models/cello").status_code == 503
        assert httpx.post(url, json=body, timeout=30).status_code == 503
        assert httpx.get(servers["gateway"].url + "/v2/health/live").status_code == 200
    finally:
        fake_upstream["mode"] = "ok"
        fake_upstream["release"].set()
    time.sleep(1.2)
    r = httpx.post(url, json=body, timeout=30)
    assert r.status_code == 200, r.text  # the gateway recovers with its upstream


def test_text_that_is_not_unicode_never_reaches_the_upstream(servers, fake_upstream):
    """A lone surrogate was a 500 in transformer mode (httpx cannot encode it); now a 400 before any upstream call."""
    fake_upstream["mode"] = "ok"
    before = len(fake_upstream["requests"])
    for name in ("transformer", "gateway"):
        url = servers[name].url + "/v1/models/cello:predict"
        for bad in (
            puzzle(cells=[["\ud800"], ["X"], ["Y"]]),
            puzzle(context="donor \udfff"),
            puzzle(candidates=["B cell", "x\u2028y", "z"]),
        ):
            r = httpx.post(
                url,
                content=json.dumps({"instances": [bad]}).encode(),
                headers={"Content-Type": "application/json"},
                timeout=30,
            )
            assert r.status_code == 400, (name, r.text)
            assert "not valid Unicode" in r.json()["error"] or "would break the prompt" in r.json()["error"]
    assert len(fake_upstream["requests"]) == before


def test_upstream_url_keeps_the_scheme():
    from cello.serve.server import upstream_url

    assert upstream_url(None, "cello-predictor.ml") == "http://cello-predictor.ml/openai/v1"
    assert upstream_url(None, "http://cello-predictor.ml/") == "http://cello-predictor.ml/openai/v1"
    assert (
        upstream_url(None, "https://cello-predictor.ml") == "https://cello-predictor.ml/openai/v1"
    )  # was http://https://...
    assert upstream_url(None, " HTTPS://h:8443/ ") == "https://h:8443/openai/v1"
    assert upstream_url("https://h/openai/v1/", "ignored") == "https://h/openai/v1"
    assert upstream_url("models/tiny", None) is None

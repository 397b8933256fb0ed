"""`cello serve` with the tiny model, over real HTTP on loopback: v1, v2, OpenAI routes, auth,
health, metrics, concurrency, and bad requests that all get a 4xx with a clear message."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.serve.conftest import MAX_NEW_TOKENS, TOKEN, puzzle


def check_result(result: dict, request_puzzle: dict) -> None:
    """A result: an assignment of every cell to a distinct candidate (repair is on), plus diagnostics."""
    cell_ids = [
        c["id"] if isinstance(c, dict) and "id" in c else f"cell_{i}" for i, c in enumerate(request_puzzle["cells"], 1)
    ]
    assert result["id"] == request_puzzle["id"]
    assert list(result["assignment"]) == cell_ids
    assert sorted(result["assignment"].values()) == sorted(request_puzzle["candidates"])
    assert isinstance(result["completion"], str)
    assert isinstance(result["valid"], bool) and isinstance(result["repaired"], bool)
    assert result["valid"] or result["reason"]  # an invalid completion says why
    assert result["latency_ms"] > 0


def test_v1_predict(client):
    body = {"instances": [puzzle(0), puzzle(1)], "parameters": {"max_new_tokens": 4}}
    r = client.post("/v1/models/cello:predict", json=body)
    assert r.status_code == 200, r.text
    predictions = r.json()["predictions"]
    assert len(predictions) == 2
    for result, p in zip(predictions, body["instances"], strict=True):
        check_result(result, p)
    # greedy decoding: the same puzzle gives the same completion
    assert predictions[0]["completion"] == predictions[1]["completion"]


def test_v2_infer_with_bytes_tensor(client):
    puzzles = [puzzle(0), puzzle(5, context={"sex": "male", "tissue": "blood"})]
    body = {
        "id": "req-1",
        "inputs": [{"name": "puzzles", "datatype": "BYTES", "shape": [2], "data": [json.dumps(p) for p in puzzles]}],
    }
    r = client.post("/v2/models/cello/infer", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["id"] == "req-1" and out["model_name"] == "cello"
    (tensor,) = out["outputs"]
    assert tensor["name"] == "predictions" and tensor["datatype"] == "BYTES" and tensor["shape"] == [2]
    for data, p in zip(tensor["data"], puzzles, strict=True):
        check_result(json.loads(data), p)


def test_openai_routes(client):
    models = client.get("/openai/v1/models").json()
    assert [m["id"] for m in models["data"]] == ["cello"]
    r = client.post(
        "/openai/v1/chat/completions",
        json={
            "model": "cello",
            "messages": [{"role": "user", "content": "Cell 1: CD3E, CD4"}],
            "max_tokens": 5,
            "temperature": 0,
            "user": "ignored-extra-field",
        },
    )
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["object"] == "chat.completion"
    assert out["choices"][0]["message"]["role"] == "assistant"
    assert 0 < out["usage"]["completion_tokens"] <= 5
    assert out["usage"]["total_tokens"] == out["usage"]["prompt_tokens"] + out["usage"]["completion_tokens"]


def test_health_is_open_and_metrics_count_requests(server, client):
    for path in ("/v2/health/live", "/v2/health/ready", "/v1/models/cello", "/v2/models/cello/ready"):
        assert httpx.get(server.url + path).status_code == 200, path  # probes send no token
    client.post("/v1/models/cello:predict", json={"instances": [puzzle()], "parameters": {"max_new_tokens": 1}})
    metrics = httpx.get(server.url + "/metrics").text
    assert 'cello_requests_total{route="v1_predict",status="200"}' in metrics
    assert "cello_batch_conversations_count" in metrics
    assert "request_predict_seconds" in metrics  # KServe's own histograms, per step


def test_auth(server):
    body = {"instances": [puzzle()], "parameters": {"max_new_tokens": 1}}
    url = server.url + "/v1/models/cello:predict"
    r = httpx.post(url, json=body)
    assert r.status_code == 401 and "bearer token" in r.json()["error"]
    assert r.headers["www-authenticate"] == "Bearer"
    assert httpx.post(url, json=body, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert httpx.post(url, json=body, headers={"Authorization": TOKEN}).status_code == 401  # no scheme
    assert httpx.post(url, json=body, headers={"Authorization": f"bearer {TOKEN}"}).status_code == 200
    assert httpx.get(server.url + "/openai/v1/models").status_code == 401


def test_concurrent_requests_are_all_answered(client):
    def call(i):  # prompts of different lengths: batches need padding
        cells = [[f"G{j}" for j in range(1 + i % 7)], ["CD3E"], ["LYZ", "CD14"]]
        body = {"instances": [puzzle(i, cells=cells)], "parameters": {"max_new_tokens": 2}}
        return client.post("/v1/models/cello:predict", json=body)

    with ThreadPoolExecutor(max_workers=12) as pool:
        responses = list(pool.map(call, range(24)))
    assert [r.status_code for r in responses] == [200] * 24
    assert [r.json()["predictions"][0]["id"] for r in responses] == [f"p{i}" for i in range(24)]


V1 = "/v1/models/cello:predict"
V2 = "/v2/models/cello/infer"
CHAT = "/openai/v1/chat/completions"
BIG = {"instances": [puzzle(i) for i in range(8)], "pad": "x" * (5 * 2**20)}


def v2(data, **over):
    tensor = {"name": "puzzles", "datatype": "BYTES", "shape": [len(data)], "data": data}
    tensor.update(over)
    return {"inputs": [tensor]}


def escaped(body) -> bytes:
    """JSON with ASCII escapes: how a client sends a lone surrogate ("\\ud800"), which httpx's json= cannot."""
    return json.dumps(body).encode()


HI = [{"role": "user", "content": "hi"}]


BAD_REQUESTS = [
    # (name, path, json body or raw bytes, extra headers, status, text in the message)
    ("invalid json", V1, b'{"instances": [', {}, 400, "not valid JSON"),
    ("not an object", V1, [1, 2], {}, 400, "JSON object"),
    ("deep nesting", V1, b"[" * 100_000, {}, 400, "nested too deeply"),
    ("deep nesting v2", V2, b'{"inputs": ' + b"[" * 100_000, {}, 400, "nested too deeply"),
    ("deep nesting chat", CHAT, b"{" * 50_000, {}, 400, ""),
    ("deep element v2", V2, v2(["[" * 100_000]), {}, 400, "nested too deeply"),
    ("not utf-8", V1, b'{"instances": "\xff\xfe"}', {}, 400, "not valid JSON"),
    ("missing instances", V1, {"puzzles": []}, {}, 400, "unknown field"),
    ("no instances", V1, {"parameters": {}}, {}, 400, "missing 'instances'"),
    ("wrong type", V1, {"instances": [puzzle(cells="CD3E")]}, {}, 400, "puzzle 0, cells"),
    (
        "too many cells",
        V1,
        {"instances": [puzzle(cells=[[f"G{i}"] for i in range(33)], candidates=[f"t{i}" for i in range(33)])]},
        {},
        400,
        "33 cells",
    ),
    ("too many puzzles", V1, {"instances": [puzzle(i) for i in range(9)]}, {}, 400, "9 puzzles"),
    (
        "duplicate candidates",
        V1,
        {"instances": [puzzle(candidates=["B cell", "B cell", "monocyte"])]},
        {},
        400,
        "appears twice",
    ),
    ("candidate count", V1, {"instances": [puzzle(candidates=["B cell"])]}, {}, 400, "1 candidates for 3 cells"),
    ("empty genes", V1, {"instances": [puzzle(cells=[[], ["A"], ["B"]])]}, {}, 400, "'genes' is empty"),
    ("unknown parameter", V1, {"instances": [puzzle()], "parameters": {"top_k": 5}}, {}, 400, "parameters.top_k"),
    (
        "too many tokens",
        V1,
        {"instances": [puzzle()], "parameters": {"max_new_tokens": MAX_NEW_TOKENS + 1}},
        {},
        400,
        "serve.max_new_tokens",
    ),
    ("huge body", V1, BIG, {}, 413, "serve.max_body_bytes"),
    ("text/plain body", V1, b"hello", {"Content-Type": "text/plain"}, 400, "not valid JSON"),
    ("unknown model", "/v1/models/other:predict", {"instances": [puzzle()]}, {}, 404, "other"),
    ("unknown model v2", "/v2/models/other/infer", v2([json.dumps(puzzle())]), {}, 404, "other"),
    ("explain", "/v1/models/cello:explain", {"instances": [puzzle()]}, {}, 404, "not served"),
    ("v2 versions", "/v2/models/cello/versions/2/infer", v2([json.dumps(puzzle())]), {}, 404, "not served"),
    ("v2 invalid json", V2, b"{nope", {}, 400, "not valid JSON"),
    ("v2 binary extension", V2, b"{}", {"inference-header-content-length": "abc"}, 400, "binary tensor extension"),
    ("v2 no inputs", V2, {"id": "x"}, {}, 400, "inputs"),
    ("v2 two inputs", V2, {"inputs": v2(["{}"])["inputs"] * 2}, {}, 400, "expected 1 input"),
    ("v2 wrong datatype", V2, v2([1, 2], datatype="INT32"), {}, 400, "datatype INT32"),
    ("v2 wrong shape", V2, v2([json.dumps(puzzle())], shape=[3]), {}, 400, "shape"),
    ("v2 element not json", V2, v2(["{oops"]), {}, 400, "puzzle 0: the element is not valid JSON"),
    ("v2 bad puzzle", V2, v2([json.dumps(puzzle(candidates=[]))]), {}, 400, "0 candidates"),
    ("v2 unknown output", V2, {**v2([json.dumps(puzzle())]), "outputs": [{"name": "logits"}]}, {}, 400, "logits"),
    ("chat invalid json", CHAT, b"[", {}, 400, "not valid JSON"),
    ("chat unknown model", CHAT, {"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]}, {}, 404, "gpt-4"),
    ("chat bad role", CHAT, {"model": "cello", "messages": [{"role": "tool", "content": "hi"}]}, {}, 400, "role"),
    ("chat n>1", CHAT, {"model": "cello", "messages": [{"role": "user", "content": "hi"}], "n": 3}, {}, 400, "n=3"),
    ("chat no messages", CHAT, {"model": "cello", "messages": []}, {}, 400, "messages"),
    ("unknown route", "/v3/anything", {}, {}, 404, ""),
    # a lone UTF-16 surrogate anywhere: was a 500 (the tokenizer's TypeError), now a 400 naming the field
    (
        "gene surrogate",
        V1,
        escaped({"instances": [{"cells": [["\ud800"], ["X"]], "candidates": ["a", "b"]}]}),
        {},
        400,
        "instances[0].cells[0][0] is not valid Unicode",
    ),
    (
        "candidate surrogate",
        V1,
        escaped({"instances": [puzzle(candidates=["B cell", "T\udfff", "x"])]}),
        {},
        400,
        "instances[0].candidates[1] is not valid Unicode",
    ),
    (
        "context surrogate",
        V1,
        escaped({"instances": [puzzle(context="a donor \ud800")]}),
        {},
        400,
        "instances[0].context",
    ),
    (
        "expression gene surrogate",
        V1,
        escaped({"instances": [puzzle(cells=[{"expression": {"A\udc00": 1}}, ["B"], ["C"]])]}),
        {},
        400,
        "the key 'instances[0].cells[0].expression.A\\udc00'",
    ),
    (
        "v2 element surrogate",
        V2,
        v2([json.dumps(puzzle(candidates=["\ud800", "T cell", "x"]))]),
        {},
        400,
        "puzzle 0: the element: candidates[0] is not valid Unicode",
    ),
    (
        "v2 id surrogate",
        V2,
        escaped({**v2([json.dumps(puzzle())]), "id": "\ud800"}),
        {},
        400,
        "id is not valid Unicode",
    ),
    (
        "chat surrogate",
        CHAT,
        escaped({"model": "cello", "messages": [{"role": "user", "content": "\ud800"}]}),
        {},
        400,
        "messages[0].content is not valid Unicode",
    ),
    (
        "chat part surrogate",
        CHAT,
        escaped({"model": "cello", "messages": [{"role": "user", "content": [{"type": "text", "text": "x\udfff"}]}]}),
        {},
        400,
        "messages[0].content[0].text",
    ),
    (
        "surrogate bytes",
        V1,
        b'{"instances": [{"cells": [["\xed\xa0\x80"], ["X"]], "candidates": ["a", "b"]}]}',
        {},
        400,
        "not valid Unicode",
    ),
    # OpenAI seed outside int64: was a 500 (torch.manual_seed overflow)
    ("chat seed 2**64", CHAT, {"model": "cello", "messages": HI, "seed": 2**64}, {}, 400, "seed"),
    ("chat seed below int64", CHAT, {"model": "cello", "messages": HI, "seed": -(2**63) - 1}, {}, 400, "seed"),
    ("chat seed negative", CHAT, {"model": "cello", "messages": HI, "seed": -1}, {}, 400, "seed"),
    # OpenAI fields Cello cannot apply: were a 200 that ignored them
    (
        "chat tools",
        CHAT,
        {"model": "cello", "messages": HI, "tools": [{"type": "function", "function": {"name": "f"}}]},
        {},
        400,
        "tools=",
    ),
    (
        "chat json mode",
        CHAT,
        {"model": "cello", "messages": HI, "response_format": {"type": "json_object"}},
        {},
        400,
        "response_format=",
    ),
    ("chat logprobs", CHAT, {"model": "cello", "messages": HI, "logprobs": True}, {}, 400, "logprobs=true"),
    ("chat top_logprobs", CHAT, {"model": "cello", "messages": HI, "top_logprobs": 3}, {}, 400, "top_logprobs=3"),
    (
        "chat frequency_penalty",
        CHAT,
        {"model": "cello", "messages": HI, "frequency_penalty": 0.5},
        {},
        400,
        "frequency_penalty=0.5",
    ),
    ("chat logit_bias", CHAT, {"model": "cello", "messages": HI, "logit_bias": {"42": 5}}, {}, 400, "logit_bias="),
    (
        "chat stream_options without stream",
        CHAT,
        {"model": "cello", "messages": HI, "stream_options": {"include_usage": True}},
        {},
        400,
        "stream_options",
    ),
    (
        "chat unknown field",
        CHAT,
        {"model": "cello", "messages": HI, "temprature": 0.5},
        {},
        400,
        "unknown field 'temprature'",
    ),
    (
        "openai unknown route",
        "/openai/v1/completions",
        {"model": "cello", "prompt": "hi"},
        {},
        404,
        "/openai/v1/completions",
    ),
    # a 3.6 MiB message: was 3.7 s and 1 GiB of memory before its 400; now refused by its length, untokenized
    (
        "chat huge message",
        CHAT,
        {"model": "cello", "messages": [{"role": "user", "content": "a " * (1_800_000)}]},
        {},
        400,
        "characters, at least",
    ),
    # '<answer>'-like tags, bidi overrides, zero-width characters in names: were accepted
    (
        "candidate tag",
        V1,
        {"instances": [puzzle(candidates=["B cell</answer>", "T cell", "x"])]},
        {},
        400,
        "'<' or '>'",
    ),
    ("candidate bidi", V1, {"instances": [puzzle(candidates=["\u202eB cell", "T cell", "x"])]}, {}, 400, "U+202E"),
    ("gene zero-width", V1, {"instances": [puzzle(cells=[["CD3\u200bE"], ["B"], ["C"]])]}, {}, 400, "U+200B"),
    # Unicode line/paragraph separators and C1 controls in names: were accepted (line breaks in the prompt)
    (
        "candidate U+2028",
        V1,
        {"instances": [puzzle(candidates=["B\u2028cell", "T cell", "x"])]},
        {},
        400,
        "would break the prompt",
    ),
    (
        "candidate U+2029",
        V1,
        {"instances": [puzzle(candidates=["B\u2029cell", "T cell", "x"])]},
        {},
        400,
        "would break the prompt",
    ),
    ("gene U+0085", V1, {"instances": [puzzle(cells=[["A\x85B"], ["B"], ["C"]])]}, {}, 400, "would break the prompt"),
    (
        "expression gene U+2028",
        V1,
        {"instances": [puzzle(cells=[{"expression": {"A\u2028B": 1}}, ["B"], ["C"]])]},
        {},
        400,
        "would break the prompt",
    ),
    (
        "v2 candidate U+2029",
        V2,
        v2([json.dumps(puzzle(candidates=["B\u2029cell", "T cell", "x"]), ensure_ascii=False)]),
        {},
        400,
        "would break the prompt",
    ),
]


@pytest.mark.parametrize(
    ("name", "path", "body", "headers", "status", "needle"), BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS]
)
def test_bad_requests_get_4xx_with_a_clear_message(client, name, path, body, headers, status, needle):
    if isinstance(body, bytes):
        r = client.post(path, content=body, headers=headers)
    else:
        r = client.post(path, json=body, headers=headers)
    assert r.status_code == status, r.text
    error = r.json().get("error", r.json().get("detail"))
    message = error["message"] if isinstance(error, dict) else str(error)
    assert needle in message


def test_declared_body_over_the_limit_is_refused_before_reading(server):
    import socket

    head = (
        f"POST {V1} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n"
        "Content-Type: application/json\r\nContent-Length: 999999999\r\n\r\n{}"
    )
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(head.encode())
        reply = b""
        while b"max_body_bytes" not in reply:
            chunk = sock.recv(65536)
            if not chunk:
                break
            reply += chunk
        reply = reply.decode()
    assert reply.startswith("HTTP/1.1 413") and "serve.max_body_bytes" in reply


def test_still_answers_after_bad_requests(client):
    r = client.post(V1, json={"instances": [puzzle()], "parameters": {"max_new_tokens": 1}})
    assert r.status_code == 200
    check_result(r.json()["predictions"][0], puzzle())


def test_largest_seed_is_accepted(client):
    r = client.post(
        CHAT, json={"model": "cello", "messages": HI, "max_tokens": 2, "temperature": 0.7, "seed": 2**63 - 1}
    )
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] > 0


def test_model_repository_routes_are_not_served(server, client):
    """KServe's load/unload would let any client take the model offline (predict 503, ready still 200)."""
    for action in ("unload", "load"):
        for url in (f"/v2/repository/models/cello/{action}", f"/v2/repository/models/other/{action}"):
            r = client.post(url, json={})
            assert r.status_code == 404, (url, r.text)
            assert "not served" in r.json()["error"]
    assert client.get("/v2/repository/index").status_code == 404
    assert httpx.post(server.url + "/v2/repository/models/cello/unload").status_code in (401, 404)  # no token
    assert httpx.get(server.url + "/v2/health/ready").status_code == 200
    assert httpx.get(server.url + "/v1/models/cello").status_code == 200
    r = client.post(V1, json={"instances": [puzzle()], "parameters": {"max_new_tokens": 1}})
    assert r.status_code == 200, r.text  # the model is still loaded
    check_result(r.json()["predictions"][0], puzzle())


def test_openai_errors_have_openai_shape(client):
    for method, path in (
        ("GET", "/openai/v1/models/other"),
        ("POST", "/openai/v1/completions"),
        ("GET", "/openai/v1/chat/completions"),
    ):
        r = client.request(method, path)
        assert r.status_code in (404, 405), (method, path, r.text)
        error = r.json()["error"]
        assert error["message"] and error["type"] == "invalid_request_error" and error["code"] == r.status_code


def test_openai_model_by_id(client):
    r = client.get("/openai/v1/models/cello")
    assert r.status_code == 200 and r.json()["id"] == "cello" and r.json()["object"] == "model"


def test_openai_no_op_values_are_accepted(client):
    """Fields Cello cannot apply are fine at their no-op value (clients send defaults)."""
    r = client.post(
        CHAT,
        json={
            "model": "cello",
            "messages": HI,
            "max_tokens": 2,
            "tools": [],
            "logprobs": False,
            "frequency_penalty": 0,
            "presence_penalty": 0.0,
            "logit_bias": {},
            "response_format": {"type": "text"},
            "user": "u1",
            "metadata": {"k": "v"},
        },
    )
    assert r.status_code == 200, r.text


def test_seeded_request_is_the_same_alone_and_in_a_burst(client):
    """Issue: the same seeded request alone and in a concurrent burst gave five different outputs."""
    body = {
        "model": "cello",
        "messages": [{"role": "user", "content": "Cell 1: CD3E, CD4, IL7R"}],
        "max_tokens": 8,
        "temperature": 1.0,
        "seed": 1234,
    }
    alone = client.post(CHAT, json=body).json()["choices"][0]["message"]["content"]
    with ThreadPoolExecutor(max_workers=5) as pool:
        burst = list(pool.map(lambda _: client.post(CHAT, json=body), range(5)))
    assert [r.status_code for r in burst] == [200] * 5
    assert [r.json()["choices"][0]["message"]["content"] for r in burst] == [alone] * 5


def test_smaller_http_contract_fixes(server, client):
    """GET on :predict is 405 (was 404), HEAD on probes works, v2 metadata names the real tensors,
    /v2 does not advertise the blocked repository extension."""
    r = client.get(V1)
    assert r.status_code == 405 and r.headers["allow"] == "POST" and "POST" in r.json()["error"]
    assert client.get(V2).status_code == 405
    for path in ("/v2/health/live", "/v2/health/ready", "/v1/models/cello", "/v2/models/cello/ready"):
        r = httpx.head(server.url + path)
        assert r.status_code == 200 and r.content == b"", path
    meta = client.get("/v2/models/cello").json()
    assert meta["inputs"] == [{"name": "puzzles", "datatype": "BYTES", "shape": [-1]}]
    assert meta["outputs"] == [{"name": "predictions", "datatype": "BYTES", "shape": [-1]}]
    assert "model_repository_extension" not in client.get("/v2").json()["extensions"]


def test_openai_sdk_plain_streamed_and_errors(server):
    """The official SDK: a plain completion, the same completion streamed (usage in the last chunk),
    and an unknown model raised as its NotFoundError."""
    import openai

    sdk = openai.OpenAI(base_url=server.url + "/openai/v1", api_key=TOKEN, max_retries=0, timeout=60)
    messages = [{"role": "user", "content": "Cell 1: CD3E, CD4"}]
    plain = sdk.chat.completions.create(model="cello", messages=messages, max_tokens=6, temperature=0)
    chunks = list(
        sdk.chat.completions.create(
            model="cello",
            messages=messages,
            max_tokens=6,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == plain.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == plain.usage.completion_tokens
    assert [m.id for m in sdk.models.list()] == ["cello"] and sdk.models.retrieve("cello").id == "cello"
    with pytest.raises(openai.NotFoundError, match="not found"):
        sdk.chat.completions.create(model="gpt-4", messages=messages)
    with pytest.raises(openai.BadRequestError, match="tools"):
        sdk.chat.completions.create(
            model="cello", messages=messages, tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}]
        )


def test_the_model_warms_up_at_load():
    """Issue: the first request was about 10x slower than the next (lazy initialisation). The
    in-process model generates once at load, before it reports ready."""
    from types import SimpleNamespace

    from cello.config import SamplingParams, ServeConfig
    from cello.data.prompt import PromptTemplate
    from cello.serve.model import make_model

    calls = []

    class Backend:
        def generate_full(self, conversations, params):
            calls.append((len(conversations), params.max_new_tokens))
            return [SimpleNamespace(texts=["x"], finish_reasons=["stop"]) for _ in conversations]

    model = make_model("cello", backend_factory=Backend, cfg=ServeConfig(), prompt=PromptTemplate(),
                       sampling=SamplingParams())
    assert model.load() and calls == [(1, 2)]
